//! Namespace steps: which namespaces a sandbox gets and the user-namespace maps.

use std::path::Path;

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

/// Write the user-namespace maps of process `pid` (run by the launcher, in
/// the parent user namespace: the kernel only accepts maps naming other ids
/// from a writer with `CAP_SETUID`/`CAP_SETGID` there). Root and the
/// plugin's uid/gid map to themselves, so host file ownership is unchanged;
/// every other id is unmapped.
///
/// # Errors
/// A write was refused.
pub fn write_id_maps(proc_root: &Path, pid: i32, uid: u32, gid: u32) -> Result<(), StepError> {
    let dir = proc_root.join(pid.to_string());
    let write = |name: &str, data: String| {
        let path = dir.join(name);
        std::fs::write(&path, data.as_bytes()).step("write", path.display())
    };
    write("setgroups", "allow".into())?;
    write("uid_map", format!("0 0 1\n{uid} {uid} 1\n"))?;
    write("gid_map", format!("0 0 1\n{gid} {gid} 1\n"))
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
