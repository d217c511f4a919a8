//! The spawn: everything prepared in the parent, then the ordered child-side
//! steps, one function per step (the order and its reasons are in the crate
//! doc and docs/sandbox.md).
//!
//! Three processes are forked per sandbox, all with glibc `fork` from the
//! single-threaded launcher (never a raw `clone`):
//! - **stub** (launcher's child, host pid namespace): parent-death signal,
//!   `unshare` of the namespaces, forks init, relays init's end to the
//!   launcher (exit code = init's code, or 128+N if init was killed).
//! - **init** (pid 1 of the new pid namespace): builds the mount tree, sets
//!   hostname and `lo`, waits for the cgroup attach, enters a cgroup
//!   namespace, empties the capability bounding set, forks the plugin, then
//!   keeps only `CAP_KILL` (it stays uid 0, so the plugin can neither signal
//!   nor trace it, and `/proc` is mounted `hidepid=invisible`, so the plugin
//!   does not even see it), reaps zombies and forwards SIGTERM/SIGINT/
//!   SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 until the plugin exits, reports its
//!   status and exits (the kernel then kills whatever the plugin left).
//! - **plugin** (pid 2): per-plugin uid/gid, no capabilities,
//!   `no_new_privs`, new session, stdio, closes every other descriptor,
//!   Landlock, seccomp, `execve`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use serde::{Deserialize, Serialize};

use crate::channel::{self, Channel};
use crate::error::{StepContext, StepError};
use crate::mounts::{self, MountPlan, PrepareError};
use crate::outcome::LandlockReport;
use crate::spec::SandboxSpec;
use crate::{identity, namespaces, net, policy};

/// Messages from the sandbox's processes to the launcher.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildMsg {
    /// The stub entered a new user namespace; the launcher must write its
    /// uid/gid maps (answered with [`LauncherMsg::IdMapsWritten`]).
    NeedIdMaps,
    /// The stub forked init; its pid in the launcher's pid namespace.
    InitForked {
        /// Host pid of init.
        pid: i32,
    },
    /// A setup step failed; the process reporting it exits.
    Failed(StepError),
    /// Every step is done and the plugin is about to `execve`. Carries the
    /// seccomp listener as a descriptor when notification is on.
    Executing {
        /// What Landlock enforced.
        landlock: Option<LandlockReport>,
        /// Seccomp denials are reported through user notification.
        seccomp_notify: bool,
    },
    /// The plugin process ended (sent by init).
    PluginEnded {
        /// Exit status, if it exited.
        exit_code: Option<i32>,
        /// Terminating signal, if one killed it.
        signal: Option<i32>,
    },
}

/// Messages from the launcher to the sandbox's init.
#[derive(Debug, Serialize, Deserialize)]
pub enum LauncherMsg {
    /// Init is in the sandbox's cgroup (or there is none); go on.
    Attached,
    /// The stub's user-namespace maps are written.
    IdMapsWritten,
    /// Writing the maps failed.
    IdMapsFailed(StepError),
}

/// The launcher's end of a sandbox's setup channel.
pub type ParentChannel = Channel<LauncherMsg, ChildMsg>;
type ChildChannel = Channel<ChildMsg, LauncherMsg>;

/// Why a sandbox could not be prepared in the parent.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The mount tree could not be planned.
    #[error(transparent)]
    Mounts(#[from] PrepareError),
    /// The spec is unusable.
    #[error("spec {field}: {reason}")]
    Spec {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Seccomp or Landlock preparation failed.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A pipe, socket or fork failed.
    #[error("{op}: {errno:?}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// The setup channel failed.
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
}

/// Everything the child needs, built before `fork` so the child only makes
/// syscalls on ready data.
#[derive(Debug)]
pub struct Prepared {
    uid: u32,
    gid: u32,
    user_namespace: bool,
    hostname: String,
    plan: MountPlan,
    exec: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    policy: policy::Prepared,
}

fn cstr(field: &'static str, s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Spec {
        field,
        reason: "contains a NUL byte".into(),
    })
}

impl Prepared {
    /// Check and prepare a spec: mount plan (paths resolved and opened),
    /// argv/envp, seccomp BPF, Landlock rules.
    ///
    /// # Errors
    /// A path is refused, a string holds NUL, uid/gid is 0, or the seccomp
    /// profile does not compile.
    pub fn new(spec: &SandboxSpec) -> Result<Self, SpawnError> {
        if spec.uid == 0 || spec.gid == 0 {
            return Err(SpawnError::Spec {
                field: "uid",
                reason: "a plugin never runs as uid or gid 0".into(),
            });
        }
        if !spec.exec.is_absolute() {
            return Err(SpawnError::Spec {
                field: "exec",
                reason: "must be an absolute in-sandbox path".into(),
            });
        }
        let exec = cstr("exec", spec.exec.as_os_str().as_bytes())?;
        let mut argv = vec![exec.clone()];
        for a in &spec.args {
            argv.push(cstr("args", a.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(SpawnError::Spec {
                    field: "env",
                    reason: format!("bad variable name {k:?}"),
                });
            }
            envp.push(cstr("env", format!("{k}={v}").as_bytes())?);
        }
        Ok(Self {
            uid: spec.uid,
            gid: spec.gid,
            user_namespace: spec.user_namespace,
            hostname: spec.hostname.clone(),
            plan: MountPlan::prepare(spec)?,
            exec,
            argv,
            envp,
            policy: policy::Prepared::new(spec)?,
        })
    }
}

/// A forked sandbox, seen from the launcher.
#[derive(Debug)]
pub struct Forked {
    /// The stub process (the launcher's child).
    pub stub: Pid,
    /// Setup channel: step failures, init's pid, `Executing`, the plugin's end.
    pub channel: ParentChannel,
    /// Read end of the plugin's stdout.
    pub stdout: OwnedFd,
    /// Read end of the plugin's stderr.
    pub stderr: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| SpawnError::Sys { op: "pipe2", errno })
}

/// Fork the stub for a prepared sandbox. Must be called from a
/// single-threaded process (the launcher).
///
/// # Errors
/// A pipe, the channel or `fork` failed.
pub fn fork_sandbox(prepared: &Prepared) -> Result<Forked, SpawnError> {
    let (parent_end, child_end) = channel::pair::<LauncherMsg, ChildMsg>()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let launcher = getpid();
    // SAFETY: the launcher is single-threaded, so the child's copy of every lock and allocator is consistent.
    match unsafe { fork() }.map_err(|errno| SpawnError::Sys { op: "fork", errno })? {
        ForkResult::Child => {
            let child = child_end;
            let io = ChildIo {
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
            };
            stub_main(prepared, &child, io, launcher)
        }
        ForkResult::Parent { child } => Ok(Forked {
            stub: child,
            channel: parent_end,
            stdout: out_r,
            stderr: err_r,
        }),
    }
}

/// Write ends of the plugin's stdout/stderr pipes, in the child.
#[derive(Clone, Copy)]
struct ChildIo {
    stdout: RawFd,
    stderr: RawFd,
}

/// `_exit(2)`: leave now, without atexit handlers or flushing stdio buffers
/// copied from the launcher.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Report a failed step and exit (child side). `_exit`: no atexit handlers,
/// no flushing of buffers copied from the launcher.
fn fail(chan: &ChildChannel, err: StepError) -> ! {
    let _ = chan.send(&ChildMsg::Failed(err), &[]);
    exit_now(126)
}

fn stub_main(p: &Prepared, chan: &ChildChannel, io: ChildIo, launcher: Pid) -> ! {
    match stub_steps(p, chan, io, launcher) {
        Ok(code) => exit_now(code),
        Err(e) => fail(chan, e),
    }
}

/// The stub: returns its exit code (init's).
fn stub_steps(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    launcher: Pid,
) -> Result<i32, StepError> {
    let mut keep = vec![chan.as_raw_fd(), io.stdout, io.stderr];
    keep.extend(p.policy.fds());
    identity::close_fds_except(&keep)?;
    identity::die_with_parent(launcher)?;
    namespaces::unshare_sandbox_namespaces(p.user_namespace)?;
    if p.user_namespace {
        // Only a process in the parent user namespace may write our maps.
        chan.send(&ChildMsg::NeedIdMaps, &[])
            .map_err(|e| StepError::other("ask for id maps", e.to_string()))?;
        match chan.recv() {
            Ok(Some((LauncherMsg::IdMapsWritten, _))) => {}
            Ok(Some((LauncherMsg::IdMapsFailed(e), _))) => return Err(e),
            _ => return Err(StepError::other("wait for id maps", "launcher went away")),
        }
    }
    // Lifeline: init learns reliably whether the stub died before init's
    // PR_SET_PDEATHSIG took effect (getppid() is 0 across pid namespaces).
    let (life_r, life_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).step("pipe2", "lifeline")?;
    let stub = getpid();
    // SAFETY: the stub is single-threaded (forked from the single-threaded launcher).
    match unsafe { fork() }.step("fork", "init")? {
        ForkResult::Child => {
            drop(life_w);
            init_main(p, chan, io, stub, life_r)
        }
        ForkResult::Parent { child } => {
            drop(life_r);
            chan.send(
                &ChildMsg::InitForked {
                    pid: child.as_raw(),
                },
                &[],
            )
            .map_err(|e| StepError::other("report init pid", e.to_string()))?;
            identity::close_fds_except(&[life_w.as_raw_fd()])?;
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => return Err(StepError::sys("waitpid", "init", e)),
                }
            }
        }
    }
}

fn init_main(p: &Prepared, chan: &ChildChannel, io: ChildIo, stub: Pid, lifeline: OwnedFd) -> ! {
    let _ = stub;
    match init_steps(p, chan, io, &lifeline) {
        Ok(code) => exit_now(code),
        Err(e) => fail(chan, e),
    }
}

/// Step: PDEATHSIG for init, checked through the lifeline pipe.
fn init_die_with_stub(lifeline: &OwnedFd) -> Result<(), StepError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).step("prctl PR_SET_PDEATHSIG", "")?;
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(lifeline),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).step("poll", "lifeline")?;
    if n > 0 {
        return Err(StepError::other(
            "prctl PR_SET_PDEATHSIG",
            "stub died before setup",
        ));
    }
    Ok(())
}

/// Init's setup, in order, then the plugin fork and the init loop.
fn init_steps(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    lifeline: &OwnedFd,
) -> Result<i32, StepError> {
    init_die_with_stub(lifeline)?;
    build_mount_tree(p)?;
    identity::close_fds_except(&[chan.as_raw_fd(), io.stdout, io.stderr, lifeline.as_raw_fd()])?;
    mounts::pivot()?;
    mounts::make_root_read_only()?;
    nix::unistd::sethostname(&p.hostname).step("sethostname", &p.hostname)?;
    net::bring_up_loopback()?;
    wait_for_attach(chan)?;
    namespaces::unshare_cgroup_namespace()?;
    identity::drop_bounding_set()?;
    identity::set_not_dumpable()?;
    let forwarded = block_init_signals()?;
    // SAFETY: init is single-threaded (forked from the single-threaded stub).
    match unsafe { fork() }.step("fork", "plugin")? {
        ForkResult::Child => plugin_main(p, chan, io),
        ForkResult::Parent { child } => {
            identity::close_fds_except(&[chan.as_raw_fd()])?;
            identity::keep_only_kill_capability()?;
            identity::set_no_new_privs()?;
            init_loop(chan, child, &forwarded)
        }
    }
}

/// Steps: the mount tree, built in the staging tmpfs (see [`mounts`]).
fn build_mount_tree(p: &Prepared) -> Result<(), StepError> {
    mounts::make_root_private()?;
    let sources = mounts::open_sources(&p.plan)?;
    mounts::mount_root_tmpfs(&p.plan)?;
    mounts::create_skeleton(&p.plan)?;
    mounts::mount_dev(&p.plan)?;
    mounts::create_mount_points(&p.plan)?;
    mounts::bind_all(&p.plan, &sources)?;
    mounts::mount_tmp(&p.plan)?;
    mounts::write_etc(&p.plan)?;
    mounts::mount_proc()?;
    mounts::seal_dev()
}

/// Step: block until the launcher says init is in the sandbox's cgroup.
fn wait_for_attach(chan: &ChildChannel) -> Result<(), StepError> {
    match chan.recv() {
        Ok(Some((LauncherMsg::Attached, _))) => Ok(()),
        Ok(None) => Err(StepError::other(
            "wait for cgroup attach",
            "launcher went away",
        )),
        Ok(Some((other, _))) => Err(StepError::other(
            "wait for cgroup attach",
            format!("unexpected {other:?}"),
        )),
        Err(e) => Err(StepError::other("wait for cgroup attach", e.to_string())),
    }
}

const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Step: block the signals init waits for (SIGCHLD and the forwarded ones);
/// the plugin unblocks them before `execve`.
fn block_init_signals() -> Result<SigSet, StepError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block().step("sigprocmask", "block")?;
    Ok(set)
}

/// Init after the fork: reap everything, forward signals to the plugin,
/// report the plugin's end and exit (taking the pid namespace down with it).
fn init_loop(chan: &ChildChannel, plugin: Pid, set: &SigSet) -> Result<i32, StepError> {
    loop {
        let sig = set.wait().step("sigwait", "")?;
        if sig != Signal::SIGCHLD {
            let _ = kill(plugin, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == plugin => {
                    let _ = chan.send(
                        &ChildMsg::PluginEnded {
                            exit_code: Some(code),
                            signal: None,
                        },
                        &[],
                    );
                    return Ok(0);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == plugin => {
                    let _ = chan.send(
                        &ChildMsg::PluginEnded {
                            exit_code: None,
                            signal: Some(sig as i32),
                        },
                        &[],
                    );
                    return Ok(0);
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(StepError::sys("waitpid", "", e)),
            }
        }
    }
}

fn plugin_main(p: &Prepared, chan: &ChildChannel, io: ChildIo) -> ! {
    let err = match plugin_steps(p, chan, io) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = chan.send(&ChildMsg::Failed(err), &[]);
    exit_now(127)
}

/// The plugin process: last steps, then `execve`.
fn plugin_steps(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
) -> Result<std::convert::Infallible, StepError> {
    identity::switch_ids(p.uid, p.gid)?;
    identity::clear_capabilities()?;
    identity::set_no_new_privs()?;
    identity::reset_signals()?;
    identity::new_session()?;
    identity::setup_stdio(io.stdout, io.stderr)?;
    identity::close_fds_except(&[chan.as_raw_fd()])?;
    let landlock = policy::apply_landlock(&p.policy)?;
    let listener = policy::apply_seccomp(&p.policy)?;
    let fds: Vec<RawFd> = listener.iter().map(|l| l.as_raw_fd()).collect();
    let seccomp_notify = listener.is_some();
    chan.send(
        &ChildMsg::Executing {
            landlock,
            seccomp_notify,
        },
        &fds,
    )
    .map_err(|e| StepError::other("hand over seccomp listener", e.to_string()))?;
    drop(listener);
    let Err(e) = nix::unistd::execve(&p.exec, &p.argv, &p.envp);
    Err(StepError::sys("execve", p.exec.to_string_lossy(), e))
}
