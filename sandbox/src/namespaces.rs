//! Namespace steps: which namespaces a sandbox gets and the user-namespace maps.

use std::fs::File;
use std::io::Write;

use nix::sched::{CloneFlags, unshare};

use crate::error::{StepContext, StepError};

/// The namespaces every sandbox gets at once (SPEC §5): mount, pid, net, ipc
/// and uts. The cgroup namespace comes later, after the cgroup attach, so that
/// its root is the sandbox's own cgroup.
pub const SANDBOX_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS);

/// Files to write a user namespace's maps through, opened before `unshare`
/// while the process still has `CAP_SETUID`/`CAP_SETGID` in the parent user
/// namespace (the kernel checks the opener's credentials).
#[derive(Debug)]
pub struct IdMapFiles {
    uid_map: File,
    gid_map: File,
    setgroups: File,
}

impl IdMapFiles {
    /// Open `/proc/self/{uid_map,gid_map,setgroups}` for writing.
    ///
    /// # Errors
    /// One of the files could not be opened.
    pub fn open() -> Result<Self, StepError> {
        let open = |p: &str| File::options().write(true).open(p).step("open", p);
        Ok(Self {
            uid_map: open("/proc/self/uid_map")?,
            gid_map: open("/proc/self/gid_map")?,
            setgroups: open("/proc/self/setgroups")?,
        })
    }

    /// Map root and the plugin's uid/gid to themselves (identity maps, so
    /// file ownership on the host is unchanged).
    ///
    /// # Errors
    /// A write was refused.
    pub fn write(mut self, uid: u32, gid: u32) -> Result<(), StepError> {
        self.setgroups
            .write_all(b"allow")
            .step("write", "/proc/self/setgroups")?;
        let uids = format!("0 0 1\n{uid} {uid} 1\n");
        self.uid_map
            .write_all(uids.as_bytes())
            .step("write", "/proc/self/uid_map")?;
        let gids = format!("0 0 1\n{gid} {gid} 1\n");
        self.gid_map
            .write_all(gids.as_bytes())
            .step("write", "/proc/self/gid_map")?;
        Ok(())
    }
}

/// Step: unshare the sandbox namespaces (plus a user namespace if asked).
/// Runs in the stub process; its next child becomes pid 1 of the new pid
/// namespace.
///
/// # Errors
/// `unshare` failed.
pub fn unshare_sandbox_namespaces(user_namespace: bool) -> Result<(), StepError> {
    let mut flags = SANDBOX_NAMESPACES;
    if user_namespace {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).step("unshare", format!("{flags:?}"))
}

/// Step: a new cgroup namespace rooted at the cgroup the process is in now.
///
/// # Errors
/// `unshare(CLONE_NEWCGROUP)` failed.
pub fn unshare_cgroup_namespace() -> Result<(), StepError> {
    unshare(CloneFlags::CLONE_NEWCGROUP).step("unshare", "CLONE_NEWCGROUP")
}
