//! Identity steps: parent-death signal, uid/gid, capabilities,
//! `no_new_privs`, session, standard streams and descriptor hygiene.

use std::os::fd::RawFd;

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid, getppid, setresgid, setresuid};

use crate::error::{StepContext, StepError};

/// Step: die with SIGKILL when the parent dies, robustly: if the parent
/// already died before the `prctl` (so the signal will never come), fail.
///
/// # Errors
/// `prctl` failed or the parent is already gone.
pub fn die_with_parent(expected_parent: Pid) -> Result<(), StepError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).step("prctl PR_SET_PDEATHSIG", "")?;
    if getppid() != expected_parent {
        return Err(StepError::other(
            "prctl PR_SET_PDEATHSIG",
            "parent died before setup",
        ));
    }
    Ok(())
}

/// Step: die with SIGKILL when the parent dies, for a process in a pid
/// namespace below its parent's (where `getppid()` is 0, so
/// [`die_with_parent`]'s check cannot work): `parent` is a pidfd of the
/// parent, opened before the fork, or the read end of a lifeline pipe whose
/// only write end the parent holds; once the `prctl` is in force, a readable
/// `parent` (pidfd of an exited process, or EOF) means the parent already
/// exited and the signal will never come.
///
/// # Errors
/// `prctl` or `poll` failed, or the parent is already gone.
pub fn die_with_parent_pidfd(parent: &std::os::fd::OwnedFd) -> Result<(), StepError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).step("prctl PR_SET_PDEATHSIG", "")?;
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(parent),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).step("poll", "parent fd")?;
    if n > 0 {
        return Err(StepError::other(
            "prctl PR_SET_PDEATHSIG",
            "parent died before setup",
        ));
    }
    Ok(())
}

/// Step: empty the capability bounding set, so no later `execve` (of a
/// setuid or file-capability binary) can regain anything. Needs
/// `CAP_SETPCAP`, so it runs before the uid switch.
///
/// # Errors
/// `prctl(PR_CAPBSET_DROP)` failed.
pub fn drop_bounding_set() -> Result<(), StepError> {
    for cap in caps::all() {
        match caps::drop(None, CapSet::Bounding, cap) {
            Ok(()) => {}
            // Capabilities newer than the running kernel are not in its set.
            Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
            Err(e) => {
                return Err(StepError::other(
                    "drop bounding capability",
                    format!("{cap}: {e}"),
                ));
            }
        }
    }
    Ok(())
}

/// Step: supplementary groups, then gid, then uid, all to the per-plugin
/// ids (real, effective and saved), so there is no way back to root.
///
/// # Errors
/// `setgroups`, `setresgid` or `setresuid` failed.
pub fn switch_ids(uid: u32, gid: u32) -> Result<(), StepError> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[g]).step("setgroups", gid)?;
    setresgid(g, g, g).step("setresgid", gid)?;
    setresuid(u, u, u).step("setresuid", uid)
}

/// Step: clear the ambient, inheritable, effective and permitted sets and
/// check that all five sets (with bounding) are now empty.
///
/// # Errors
/// A set could not be cleared, or a capability remains.
pub fn clear_capabilities() -> Result<(), StepError> {
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| StepError::other("clear ambient capabilities", e.to_string()))?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set)
            .map_err(|e| StepError::other("clear capabilities", format!("{set:?}: {e}")))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Bounding,
    ] {
        let held = caps::read(None, set)
            .map_err(|e| StepError::other("read capabilities", e.to_string()))?;
        if let Some(cap) = held.iter().next() {
            return Err(StepError::other(
                "clear capabilities",
                format!("{cap} still in {set:?}"),
            ));
        }
    }
    Ok(())
}

/// Step (init only): keep `CAP_KILL` in the effective and permitted sets
/// (to forward signals to the plugin, which runs under another uid) and
/// nothing else; inheritable and ambient empty.
///
/// # Errors
/// A set could not be changed.
pub fn keep_only_kill_capability() -> Result<(), StepError> {
    let kill: caps::CapsHashSet = [Capability::CAP_KILL].into_iter().collect();
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| StepError::other("clear ambient capabilities", e.to_string()))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| StepError::other("clear inheritable capabilities", e.to_string()))?;
    caps::set(None, CapSet::Effective, &kill)
        .map_err(|e| StepError::other("set effective capabilities", e.to_string()))?;
    caps::set(None, CapSet::Permitted, &kill)
        .map_err(|e| StepError::other("set permitted capabilities", e.to_string()))
}

/// Whether `cap` is in the effective set (for tests and the init process).
pub fn has_effective(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Step: `PR_SET_NO_NEW_PRIVS`, so `execve` can never add privileges and an
/// unprivileged process may install seccomp filters.
///
/// # Errors
/// `prctl` failed.
pub fn set_no_new_privs() -> Result<(), StepError> {
    nix::sys::prctl::set_no_new_privs().step("prctl PR_SET_NO_NEW_PRIVS", "")
}

/// Step: not dumpable, so a same-uid process cannot ptrace it or read its
/// `/proc/PID/mem` (used by the sandbox's init).
///
/// # Errors
/// `prctl` failed.
pub fn set_not_dumpable() -> Result<(), StepError> {
    nix::sys::prctl::set_dumpable(false).step("prctl PR_SET_DUMPABLE", "")
}

/// Step: a new session without controlling terminal (TIOCSTI needs one).
///
/// # Errors
/// `setsid` failed.
pub fn new_session() -> Result<(), StepError> {
    nix::unistd::setsid().step("setsid", "").map(drop)
}

/// Step: stdin from `/dev/null`, stdout and stderr to the given pipe ends.
///
/// # Errors
/// `open` or `dup2` failed.
pub fn setup_stdio(stdout: RawFd, stderr: RawFd) -> Result<(), StepError> {
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .step("open", "/dev/null")?;
    dup2_raw(std::os::fd::AsRawFd::as_raw_fd(&null), 0).step("dup2 stdin", "/dev/null")?;
    dup2_raw(stdout, 1).step("dup2 stdout", "")?;
    dup2_raw(stderr, 2).step("dup2 stderr", "")?;
    Ok(())
}

fn dup2_raw(from: RawFd, to: RawFd) -> Result<(), Errno> {
    if from == to {
        // dup2 would keep FD_CLOEXEC; clear it explicitly.
        return nix::fcntl::fcntl(
            // SAFETY: `from` is a descriptor of this process that stays open for the duration of this call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(from) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map(drop);
    }
    // SAFETY: plain dup2 on descriptor numbers; `to` is a standard stream slot this process owns.
    Errno::result(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Step: close every descriptor >= 3 except those in `keep`.
///
/// # Errors
/// `close_range` failed.
pub fn close_fds_except(keep: &[RawFd]) -> Result<(), StepError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd >= 3)
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for &k in &keep {
        if k > first {
            close_range(first, k - 1).step("close_range", format!("{first}..{}", k - 1))?;
        }
        first = k + 1;
    }
    close_range(first, u32::MAX).step("close_range", format!("{first}.."))
}

fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: close_range only closes descriptors; callers own every descriptor in the range and hold no borrows of them.
    Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// Step: unblock all signals and reset the handlers we set, so the plugin
/// starts with the default signal state.
///
/// # Errors
/// `sigprocmask` failed.
pub fn reset_signals() -> Result<(), StepError> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).step("sigprocmask", "")
}
