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

/// Mount, net, ipc and uts: what a pre-forked init unshares itself (its pid
/// namespace came with its fork, see [`fork_into_new_pid_namespace`]).
pub const INIT_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS);

/// The caller's own pid namespace (`/proc/self/ns/pid`), kept open so that
/// [`fork_into_new_pid_namespace`] can return to it.
///
/// # Errors
/// The open failed.
pub fn own_pid_namespace() -> Result<std::os::fd::OwnedFd, StepError> {
    let f = std::fs::File::open("/proc/self/ns/pid").step("open", "/proc/self/ns/pid")?;
    Ok(f.into())
}

/// `fork` whose child is pid 1 of a new pid namespace: `unshare(CLONE_NEWPID)`
/// (which only changes where the caller's *next* child goes), glibc `fork`,
/// then, in the parent, `setns(own, CLONE_NEWPID)` so its later children are
/// in its own namespace again. The caller must be single-threaded.
///
/// # Errors
/// `unshare`, `fork` or the `setns` back failed (after a failed `setns` the
/// caller's children would all land in the new namespace: treat it as fatal).
pub fn fork_into_new_pid_namespace(
    own: &std::os::fd::OwnedFd,
) -> Result<nix::unistd::ForkResult, StepError> {
    unshare(CloneFlags::CLONE_NEWPID).step("unshare", "CLONE_NEWPID")?;
    // SAFETY: the caller is single-threaded (documented precondition), so the child's copy of every lock and allocator is consistent.
    let forked = unsafe { nix::unistd::fork() };
    if let Ok(nix::unistd::ForkResult::Child) = forked {
        return Ok(nix::unistd::ForkResult::Child);
    }
    nix::sched::setns(own, CloneFlags::CLONE_NEWPID).step("setns back to", "own pid namespace")?;
    forked.step("fork", "init")
}
