//! A pool slot's zygote: a small process that sits in the slot's cgroup and
//! forks each pre-warmed init of that slot (docs/sandbox.md "The spawn
//! pool").
//!
//! The zygote is the launcher's child. It closes every other descriptor,
//! sets its parent-death signal, sets its `oom_score_adj` to -1000 (the
//! memory cgroup's OOM killer never picks it; its inits get the old value
//! back; best effort, it needs `CAP_SYS_RESOURCE`), and joins the slot's cgroup **once** (on v1, and on v2 without
//! `CLONE_INTO_CGROUP`, every `cgroup.procs` write takes the cgroup
//! threadgroup lock for write and waits for an RCU grace period, stalling
//! every fork and exit on the host; a child forked inside the cgroup
//! inherits it without any migration), and trims its own copy of the host's
//! mount table to what its inits need before their `pivot_root`
//! ([`crate::mounts::trim_host_mounts`]). Then it forks a pre-warmed init
//! ([`spawn::fork_pool_init`]) right away and again on every
//! [`ZygoteRequest::Fork`], each time handing the launcher, with
//! [`ZygoteReply::Forked`], the init's pidfd (`pidfd_open` of its own
//! unreaped child: no pid-reuse race), the init's setup channel and the read
//! ends of its stdout and stderr. It reaps each init when it exits (the last
//! one may still be exiting when the next is forked). It exits when the
//! launcher closes the channel, after killing and reaping its inits; it
//! never exits with an init unreaped (a failed hand-over or `poll` kills
//! and reaps them too), so once the launcher has reaped a zygote, every
//! init it forked is gone.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use serde::{Deserialize, Serialize};

use crate::channel::{self, Channel};
use crate::error::{StepContext, StepError};
use crate::mounts::MountPlan;
use crate::spawn::{self, SpawnError};
use crate::{identity, namespaces};

/// A request from the launcher to a zygote.
#[derive(Debug, Serialize, Deserialize)]
pub enum ZygoteRequest {
    /// Fork the next pre-warmed init, with this spec-independent mount plan.
    /// Sent once the previous init's sandbox is over (every plugin process
    /// gone); that init may still be exiting.
    Fork {
        /// The base mount plan, prepared by the launcher just now.
        base: Box<MountPlan>,
    },
}

/// A message from a zygote to the launcher.
#[derive(Debug, Serialize, Deserialize)]
pub enum ZygoteReply {
    /// A pre-warmed init was forked. Carries, in order, its pidfd, its
    /// setup channel ([`spawn::ParentChannel`]) and the read ends of its
    /// stdout and stderr.
    Forked {
        /// Host pid of the init.
        init: i32,
    },
    /// The zygote failed; it exits.
    Failed(StepError),
    /// The base plan's bind sources are not, in the zygote's mount
    /// namespace, the objects the launcher checked (a host mount changed
    /// and did not propagate into it): no init was forked, and the zygote
    /// exits; the slot is replaced, which is not a failure.
    Stale,
}

/// The launcher's end of a zygote's channel.
pub type ZygoteChannel = Channel<ZygoteRequest, ZygoteReply>;
type OwnEnd = Channel<ZygoteReply, ZygoteRequest>;

/// A forked zygote, seen from the launcher.
#[derive(Debug)]
pub struct Zygote {
    /// Its pid (the launcher's child).
    pub pid: Pid,
    /// Its channel.
    pub chan: ZygoteChannel,
}

/// Fork a zygote in the slot's cgroup and let it fork its first pre-warmed
/// init with `base`. With `into` (cgroup v2: an `O_DIRECTORY` fd of the
/// cgroup, [`crate::cgroup::SandboxCgroup::v2_dir_fd`]) the zygote is born
/// there (`clone3(CLONE_INTO_CGROUP)`: no migration, no threadgroup-lock
/// stall of the host's forks); otherwise, or where the kernel refuses that,
/// it joins by writing its `cgroup.procs` files (`cgroup_procs`). Must be
/// called from a single-threaded process (the launcher).
///
/// # Errors
/// The channel, `clone3` or `fork` failed, or a path holds a NUL byte.
pub fn fork_zygote(
    cgroup_procs: &[PathBuf],
    into: Option<BorrowedFd<'_>>,
    base: &MountPlan,
) -> Result<Zygote, SpawnError> {
    let procs: Vec<CString> = cgroup_procs
        .iter()
        .map(|p| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| SpawnError::Spec {
                field: "cgroup",
                reason: "contains a NUL byte".into(),
            })
        })
        .collect::<Result<_, _>>()?;
    let (ours, theirs) = channel::pair::<ZygoteRequest, ZygoteReply>()?;
    let launcher = getpid();
    let (forked, procs) = match into.map(clone_into_cgroup) {
        Some(Ok(forked)) => (forked, Vec::new()),
        Some(Err(e @ (Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL | Errno::EOPNOTSUPP))) => {
            tracing::debug!(error = %e, "clone3(CLONE_INTO_CGROUP) refused; fork and join");
            (fork_plain()?, procs)
        }
        Some(Err(errno)) => {
            return Err(SpawnError::Sys {
                op: "clone3",
                errno,
            });
        }
        None => (fork_plain()?, procs),
    };
    match forked {
        ForkResult::Child => {
            drop(ours);
            let code = match zygote_main(&theirs, &procs, base, launcher) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = theirs.send(&ZygoteReply::Failed(e), &[]);
                    1
                }
            };
            spawn::exit_now(code)
        }
        ForkResult::Parent { child } => Ok(Zygote {
            pid: child,
            chan: ours,
        }),
    }
}

/// glibc `fork`.
fn fork_plain() -> Result<ForkResult, SpawnError> {
    // SAFETY: the launcher is single-threaded, so the child's copy of every lock and allocator is consistent.
    unsafe { fork() }.map_err(|errno| SpawnError::Sys { op: "fork", errno })
}

/// `struct clone_args` of clone3(2), up to `cgroup` (kernel >= 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A fork (no `CLONE_VM`, exit signal `SIGCHLD`) whose child starts in the
/// cgroup of `dir`. Like `fork` from a single-threaded process, minus
/// glibc's fork handlers (none are registered in the launcher) and its
/// update of the child's cached thread id (glibc >= 2.34 asks the kernel
/// where it matters, e.g. `raise`; the zygote creates no threads).
pub(crate) fn clone_into_cgroup(dir: BorrowedFd<'_>) -> Result<ForkResult, Errno> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(dir.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        ..CloneArgs::default()
    };
    // SAFETY: args is a fully initialised clone_args of the size passed; without CLONE_VM the child gets a copy of the single-threaded launcher's memory, as with fork.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(rc)? {
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?),
        }),
    }
}

fn zygote_main(
    chan: &OwnEnd,
    procs: &[CString],
    base: &MountPlan,
    launcher: Pid,
) -> Result<(), StepError> {
    identity::close_fds_except(&[chan.as_raw_fd()])?;
    identity::die_with_parent(launcher)?;
    let old_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
        .step("read", "/proc/self/oom_score_adj")?
        .trim()
        .parse::<i32>()
        .unwrap_or(0);
    // Best effort: lowering it needs CAP_SYS_RESOURCE (a container may
    // lack it; then the zygote is as exposed as a cold sandbox's stub).
    let restore = spawn::set_oom_score_adj(-1000).ok().map(|()| old_adj);
    // (Born in the slot's cgroup with clone3: nothing to join.)
    spawn::join_cgroup(procs)?;
    crate::mounts::trim_host_mounts(base)?;
    let own_ns = namespaces::own_pid_namespace()?;
    let me = pidfd_open(getpid()).step("pidfd_open", "self")?;
    // The inits not reaped yet: the newest, and the one before while it
    // finishes exiting (the launcher may ask for the next init as soon as
    // the last one reported its sandbox over).
    let Some(first) = fork_init(chan, base, &own_ns, &me, restore)? else {
        return Ok(());
    };
    let mut inits = vec![first];
    loop {
        let mut fds = vec![PollFd::new(chan.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            inits
                .iter()
                .map(|(_, pidfd)| PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                drop(fds);
                kill_and_reap(inits);
                return Err(StepError::sys("poll", "zygote", e));
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        let mut exited = ready.iter().skip(1).copied();
        inits.retain(|(pid, _)| {
            let gone = exited.next().unwrap_or(false);
            if gone {
                reap(*pid);
            }
            !gone
        });
        if !ready.first().copied().unwrap_or(false) {
            continue;
        }
        match chan.recv() {
            Ok(Some((ZygoteRequest::Fork { base }, _))) => {
                match fork_init(chan, &base, &own_ns, &me, restore) {
                    Ok(Some(init)) => inits.push(init),
                    Ok(None) => {
                        kill_and_reap(inits);
                        return Ok(());
                    }
                    Err(e) => {
                        kill_and_reap(inits);
                        return Err(e);
                    }
                }
            }
            // The launcher closed the channel (the slot is buried, or the
            // launcher exits): kill and reap the inits, so none outlives
            // the zygote unreaped, then exit.
            Ok(None) | Err(_) => {
                kill_and_reap(inits);
                return Ok(());
            }
        }
    }
}

/// Kill and reap every init of the zygote's: it never exits with one
/// unreaped (a zygote's exit then means its inits are gone, which the
/// launcher's own exit relies on).
fn kill_and_reap(inits: Vec<(Pid, OwnedFd)>) {
    for (_, pidfd) in &inits {
        let _ = pidfd_send_signal_kill(pidfd);
    }
    for (pid, _) in inits {
        reap(pid);
    }
}

/// Wait for init `pid` (it has exited or is about to).
fn reap(pid: Pid) {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// Fork one pre-warmed init and hand it to the launcher; keep its pid and a
/// pidfd of it (to reap it when it exits). `None` when the base plan's
/// sources are not what the launcher checked, in this zygote's mount
/// namespace: it answered [`ZygoteReply::Stale`] instead, and exits.
fn fork_init(
    chan: &OwnEnd,
    base: &MountPlan,
    own_ns: &OwnedFd,
    me: &OwnedFd,
    oom_score_adj: Option<i32>,
) -> Result<Option<(Pid, OwnedFd)>, StepError> {
    if !crate::mounts::base_sources_match(base) {
        let _ = chan.send(&ZygoteReply::Stale, &[]);
        return Ok(None);
    }
    let forked = spawn::fork_pool_init(&[], base, own_ns, me, oom_score_adj)
        .map_err(|e| StepError::other("fork pre-warmed init", e.to_string()))?;
    let pidfd = match pidfd_open(forked.pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = nix::sys::signal::kill(forked.pid, nix::sys::signal::Signal::SIGKILL);
            reap(forked.pid);
            return Err(StepError::sys("pidfd_open", forked.pid, e));
        }
    };
    let fds: [RawFd; 4] = [
        pidfd.as_raw_fd(),
        forked.channel.as_raw_fd(),
        forked.stdout.as_raw_fd(),
        forked.stderr.as_raw_fd(),
    ];
    if let Err(e) = chan.send(
        &ZygoteReply::Forked {
            init: forked.pid.as_raw(),
        },
        &fds,
    ) {
        // The launcher is gone or buried the slot: this init is nobody's.
        kill_and_reap(vec![(forked.pid, pidfd)]);
        return Err(StepError::other("hand over pre-warmed init", e.to_string()));
    }
    Ok(Some((forked.pid, pidfd)))
}

/// SIGKILL through a pidfd.
fn pidfd_send_signal_kill(pidfd: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo (NULL) and no flags.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// `pidfd_open(pid, 0)`.
///
/// # Errors
/// The call failed.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    // SAFETY: the kernel just created `fd` for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
