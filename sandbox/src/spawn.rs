//! The spawn: everything prepared in the parent, then the ordered child-side
//! steps, one function per step (the order and its reasons are in the crate
//! doc and docs/sandbox.md).
//!
//! Every process is forked with glibc `fork` from a single-threaded process
//! (never a raw `clone`). Two paths:
//!
//! **Cold** ([`fork_sandbox`]: no pool, or a user namespace), three
//! processes:
//! - **stub** (launcher's child, host pid namespace): parent-death signal,
//!   `unshare` of the namespaces, forks init, relays init's end to the
//!   launcher (exit code = init's code, or 128+N if init was killed).
//! - **init** (pid 1 of the new pid namespace): builds the mount tree, sets
//!   hostname and `lo`, waits for the cgroup attach, then as below.
//! - **plugin** (pid 2), as below.
//!
//! **Pre-warmed** ([`fork_pool_init`]), two processes: **init** is forked
//! straight into a new pid namespace (`unshare(CLONE_NEWPID)`, `fork`,
//! `setns` back), so there is no stub: it unshares mount, net, ipc and uts
//! itself, builds the spec-independent tree, mounts `/proc`, brings `lo` up
//! and waits for its claim; then the spec's binds, `/tmp`, `/etc`.
//!
//! On both paths init then enters a cgroup namespace, empties the
//! capability bounding set, creates the plugin (`clone(CLONE_VM |
//! CLONE_VFORK)`: it shares init's memory until its `execve`), keeps only
//! `CAP_KILL` (it stays uid 0, so the plugin can neither signal nor trace it, and `/proc`
//! is mounted `hidepid=invisible`, so the plugin does not even see it),
//! reaps zombies and forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2
//! until the plugin exits, reports its status and exits (the kernel then
//! kills whatever the plugin left). The **plugin** gets its per-plugin
//! uid/gid, no capabilities, `no_new_privs`, a new session, stdio, closes
//! every other descriptor, then Landlock, seccomp, `execve`.

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
use crate::trace::{Trace, TracePoint, now_ns};
use crate::{identity, namespaces, net, policy};

/// Messages from the sandbox's processes to the launcher.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildMsg {
    /// The stub entered a new user namespace; the launcher must write its
    /// uid/gid maps (answered with [`LauncherMsg::IdMapsWritten`]).
    NeedIdMaps,
    /// A pre-warmed init (see [`fork_pool_init`]) is in its cgroup and its
    /// namespaces and waits for [`LauncherMsg::Claim`].
    PoolReady {
        /// Its pre-warm steps.
        trace: Vec<TracePoint>,
    },
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
        /// When the stub's, init's and the plugin's steps finished.
        trace: Vec<TracePoint>,
    },
    /// The plugin process ended (sent by init).
    PluginEnded {
        /// Exit status, if it exited.
        exit_code: Option<i32>,
        /// Terminating signal, if one killed it.
        signal: Option<i32>,
        /// When init reaped the plugin (`CLOCK_MONOTONIC` ns).
        at_ns: u64,
        /// Init killed and reaped every other process of the sandbox
        /// before sending this: the outcome is final.
        all_gone: bool,
    },
}

/// Messages from the launcher to the sandbox's init.
#[derive(Debug, Serialize, Deserialize)]
pub enum LauncherMsg {
    /// Init is in the sandbox's cgroup (or there is none); go on.
    Attached,
    /// (After a [`Claim`](Self::Claim).) The sandbox's cgroup limits are
    /// written (or there is no cgroup): init may create the plugin.
    LimitsSet,
    /// The stub's user-namespace maps are written.
    IdMapsWritten,
    /// Writing the maps failed.
    IdMapsFailed(StepError),
    /// A pre-warmed stub is claimed for this sandbox: everything the child
    /// needs. The launcher writes the sandbox's limits to the cgroup while
    /// init attaches the spec's binds, then sends [`LimitsSet`](Self::LimitsSet).
    Claim(Box<Prepared>),
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
    /// A parent-side step (the pid namespace switch) failed.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// Everything the child needs, built before `fork` so the child only makes
/// syscalls on ready data. Serializable for [`LauncherMsg::Claim`] (a
/// pre-warmed stub was forked before the spec was known); it holds no
/// descriptors.
#[derive(Debug, Serialize, Deserialize)]
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
        Self::with_cache(spec, &mut policy::SeccompCache::default())
    }

    /// [`Prepared::new`], reusing seccomp filters compiled earlier.
    ///
    /// # Errors
    /// See [`Prepared::new`].
    pub fn with_cache(
        spec: &SandboxSpec,
        cache: &mut policy::SeccompCache,
    ) -> Result<Self, SpawnError> {
        Self::on_base(spec, cache, MountPlan::prepare_base()?)
    }

    /// [`Prepared::with_cache`] on a base mount plan resolved earlier
    /// ([`MountPlan::prepare_base`]).
    pub(crate) fn on_base(
        spec: &SandboxSpec,
        cache: &mut policy::SeccompCache,
        base: MountPlan,
    ) -> Result<Self, SpawnError> {
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
            plan: MountPlan::prepare_on(base, spec)?,
            exec,
            argv,
            envp,
            policy: policy::Prepared::new(spec, cache)?,
        })
    }
}

impl Prepared {
    /// The mount plan.
    pub fn plan(&self) -> &MountPlan {
        &self.plan
    }
}

/// A forked sandbox, seen from the launcher.
#[derive(Debug)]
pub struct Forked {
    /// The forked process: a stub (cold path) or a pre-warmed init.
    pub pid: Pid,
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
            let mut trace = Trace::new();
            trace.mark("stub: forked");
            let code = stub_steps(prepared, &child, io, launcher, &mut trace);
            finish(&child, code)
        }
        ForkResult::Parent { child } => Ok(Forked {
            pid: child,
            channel: parent_end,
            stdout: out_r,
            stderr: err_r,
        }),
    }
}

/// Fork a pre-warmed init for the launcher's pool (`docs/sandbox.md`,
/// "The spawn pool"), straight into a new pid namespace
/// ([`namespaces::fork_into_new_pid_namespace`]; `own_pid_ns` is the
/// caller's): the child is pid 1 of it, with no stub in between. It does
/// every spec-independent step ahead of time, at `SCHED_IDLE`: closes
/// foreign fds, sets its parent-death signal (checked through
/// `parent_pidfd`, a pidfd of the caller), joins its cgroup by writing `0` to
/// each of `cgroup_procs` (none when the caller already put it there, or
/// there is no cgroup), unshares the mount, net, ipc and uts namespaces,
/// builds the spec-independent part of the mount tree (`base`) and pivots
/// into it ([`mounts::prewarm_root`]), mounts `/proc` (its pid namespace is
/// final), brings `lo` up, and reports [`ChildMsg::PoolReady`]. Then it
/// blocks until the launcher sends [`LauncherMsg::Claim`] with the spec's
/// bind sources as detached mounts (and goes on: spec binds, then as a cold
/// init from the read-only root on) or closes the channel (it exits). Used
/// once. The caller must be single-threaded. `oom_score_adj`: written to
/// init's own first (a zygote runs at -1000 and gives its inits back the
/// value it had).
///
/// # Errors
/// A pipe, the channel, `fork` or the pid namespace switch failed.
pub fn fork_pool_init(
    cgroup_procs: &[std::path::PathBuf],
    base: &MountPlan,
    own_pid_ns: &OwnedFd,
    parent_pidfd: &OwnedFd,
    oom_score_adj: Option<i32>,
) -> Result<Forked, SpawnError> {
    let procs: Vec<CString> = cgroup_procs
        .iter()
        .map(|p| cstr("cgroup", p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()?;
    let (parent_end, child_end) = channel::pair::<LauncherMsg, ChildMsg>()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    match namespaces::fork_into_new_pid_namespace(own_pid_ns)? {
        ForkResult::Child => {
            let child = child_end;
            let io = ChildIo {
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
            };
            let code = pool_init_steps(&procs, base, &child, io, parent_pidfd, oom_score_adj);
            finish(&child, code)
        }
        ForkResult::Parent { child } => {
            // Pre-warm work must not take CPU from running sandboxes:
            // SCHED_IDLE until the launcher raises it (the next spawn needs
            // it, or it is claimed). Set here, before the caller learns
            // the pid, so a raise can never come before it.
            if let Err(e) = SchedPolicy::idle().set_for(child) {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(SpawnError::Step(e));
            }
            Ok(Forked {
                pid: child,
                channel: parent_end,
                stdout: out_r,
                stderr: err_r,
            })
        }
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

/// End a stub or init: its exit code, or the failed step reported.
fn finish(chan: &ChildChannel, result: Result<i32, StepError>) -> ! {
    match result {
        Ok(code) => exit_now(code),
        Err(e) => fail(chan, e),
    }
}

/// The cold stub: returns its exit code (init's).
fn stub_steps(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    launcher: Pid,
    trace: &mut Trace,
) -> Result<i32, StepError> {
    let mut keep = vec![chan.as_raw_fd(), io.stdout, io.stderr];
    keep.extend(p.policy.fds());
    identity::close_fds_except(&keep)?;
    identity::die_with_parent(launcher)?;
    trace.mark("stub: fds closed, pdeathsig");
    namespaces::unshare_sandbox_namespaces(p.user_namespace)?;
    trace.mark("stub: unshare mnt,pid,net,ipc,uts");
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
    stub_fork_init(p, chan, io, trace)
}

/// The pre-warmed init (see [`fork_pool_init`]): returns its exit code (0
/// after reporting the plugin's end, or when the pool is drained unclaimed).
fn pool_init_steps(
    cgroup_procs: &[CString],
    base: &MountPlan,
    chan: &ChildChannel,
    io: ChildIo,
    parent_pidfd: &OwnedFd,
    oom_score_adj: Option<i32>,
) -> Result<i32, StepError> {
    let mut trace = Trace::new();
    trace.mark("prewarm: forked (pid 1)");
    // A stop may come before init's loop runs: held pending (not dropped,
    // as a pid namespace's init drops default-action signals), then
    // forwarded to the plugin.
    block_init_signals()?;
    if let Some(adj) = oom_score_adj {
        set_oom_score_adj(adj)?;
    }
    identity::close_fds_except(&[
        chan.as_raw_fd(),
        io.stdout,
        io.stderr,
        parent_pidfd.as_raw_fd(),
    ])?;
    identity::die_with_parent_pidfd(parent_pidfd)?;
    identity::close_fds_except(&[chan.as_raw_fd(), io.stdout, io.stderr])?;
    trace.mark("prewarm: fds closed, pdeathsig");
    if !cgroup_procs.is_empty() {
        join_cgroup(cgroup_procs)?;
        trace.mark("prewarm: joined cgroup");
    }
    nix::sched::unshare(namespaces::INIT_NAMESPACES)
        .step("unshare", format!("{:?}", namespaces::INIT_NAMESPACES))?;
    trace.mark("prewarm: unshare mnt,net,ipc,uts");
    mounts::prewarm_root(base)?;
    trace.mark("prewarm: base tree, pivot_root, detach old root");
    mounts::mount_proc()?;
    mounts::prewarm_tmp_and_etc(base)?;
    mounts::seal_dev()?;
    net::bring_up_loopback()?;
    trace.mark("prewarm: /proc, /tmp, /etc, seal /dev, lo up");
    // Its cgroup is final (the zygote's, or none), so the cgroup namespace
    // and the rest of init's own confinement come before the claim too.
    let forwarded = init_seal()?;
    let stack = PluginStack::new(true)?;
    trace.mark("prewarm: cgroup ns, bounding set, plugin stack");
    chan.send(
        &ChildMsg::PoolReady {
            trace: trace.points(),
        },
        &[],
    )
    .map_err(|e| StepError::other("report pool init ready", e.to_string()))?;
    // The pre-warm marks went with `PoolReady`; the rest starts afresh.
    let mut trace = Trace::new();
    let (p, trees) = match chan.recv() {
        Ok(Some((LauncherMsg::Claim(p), trees))) => (p, trees),
        // Drained or the launcher is gone: leave without a trace.
        Ok(None) => return Ok(0),
        Ok(Some((other, _))) => {
            return Err(StepError::other(
                "wait for claim",
                format!("unexpected {other:?}"),
            ));
        }
        Err(e) => return Err(StepError::other("wait for claim", e.to_string())),
    };
    trace.mark("init: claimed");
    mounts::check_base(&p.plan)?;
    mounts::attach_spec_binds(&p.plan, &trees)?;
    mounts::mask_sockets(&p.plan)?;
    trace.mark("init: spec binds attached (move_mount)");
    drop(trees);
    mounts::finish_prewarmed_root(&p.plan, base)?;
    trace.mark("init: /tmp size, /etc/passwd and group");
    mounts::make_root_read_only()?;
    nix::unistd::sethostname(&p.hostname).step("sethostname", &p.hostname)?;
    trace.mark("init: root read-only, hostname");
    // No plugin without its limits: the launcher wrote them meanwhile.
    expect(chan, "wait for cgroup limits", |m| {
        matches!(m, LauncherMsg::LimitsSet)
    })?;
    trace.mark("init: limits set (launcher)");
    init_fork_plugin(&p, chan, io, &mut trace, &forwarded, &stack)
}

/// Step: this process's `oom_score_adj` (a pool zygote sets -1000, so the
/// memory cgroup's OOM killer never picks it; its inits get the old value
/// back).
pub(crate) fn set_oom_score_adj(adj: i32) -> Result<(), StepError> {
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .step("write", "/proc/self/oom_score_adj")
}

/// A scheduling policy and nice value (the pool stub's pre-warm runs as
/// `SCHED_IDLE` and gets the launcher's back when claimed).
pub(crate) struct SchedPolicy {
    policy: libc::c_int,
    nice: libc::c_int,
}

impl SchedPolicy {
    /// The calling process's policy and nice value.
    pub(crate) fn current() -> Result<Self, StepError> {
        // SAFETY: sched_getscheduler takes a pid (0 = self) and only returns a value.
        let policy =
            Errno::result(unsafe { libc::sched_getscheduler(0) }).step("sched_getscheduler", "")?;
        Errno::clear();
        // SAFETY: getpriority takes a which/who pair and only returns a value (errno tells -1 apart).
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        if nice == -1 && Errno::last_raw() != 0 {
            return Err(StepError::sys("getpriority", "", Errno::last()));
        }
        Ok(Self { policy, nice })
    }

    fn idle() -> Self {
        Self {
            policy: libc::SCHED_IDLE,
            nice: 19,
        }
    }

    /// `SCHED_BATCH` at this nice value: a fair share of the CPU, but no
    /// preemption of a running task on wake-up (a pre-warmed init the next
    /// spawn needs; `SCHED_IDLE` would starve it on a busy host).
    pub(crate) fn batch(&self) -> Self {
        Self {
            policy: libc::SCHED_BATCH,
            nice: self.nice,
        }
    }

    /// Give process `pid` (0: the caller) this policy and nice value.
    pub(crate) fn set_for(&self, pid: Pid) -> Result<(), StepError> {
        let param = libc::sched_param { sched_priority: 0 };
        let who = pid.as_raw();
        // SAFETY: `param` is a live sched_param; `who` is a pid (0 = this process).
        Errno::result(unsafe { libc::sched_setscheduler(who, self.policy, &raw const param) })
            .step("sched_setscheduler", who)?;
        let id = libc::id_t::try_from(who).unwrap_or(0);
        // SAFETY: setpriority takes plain integers.
        Errno::result(unsafe { libc::setpriority(libc::PRIO_PROCESS, id, self.nice) })
            .step("setpriority", who)?;
        Ok(())
    }
}

/// Step (pre-warmed stub): move this process into its cgroup, in every
/// hierarchy, by writing `0` to each `cgroup.procs`.
pub(crate) fn join_cgroup(cgroup_procs: &[CString]) -> Result<(), StepError> {
    for path in cgroup_procs {
        let shown = path.to_string_lossy();
        let fd = nix::fcntl::open(
            path.as_c_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .step("open", &shown)?;
        nix::unistd::write(&fd, b"0").step("join cgroup, write 0 to", &shown)?;
    }
    Ok(())
}

/// The stub's last steps, cold or warm: fork init (pid 1 of the new pid
/// namespace), report its pid, relay its end.
fn stub_fork_init(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    trace: &mut Trace,
) -> Result<i32, StepError> {
    // Lifeline: init learns reliably whether the stub died before init's
    // PR_SET_PDEATHSIG took effect (getppid() is 0 across pid namespaces).
    let (life_r, life_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).step("pipe2", "lifeline")?;
    // SAFETY: the stub is single-threaded (forked from the single-threaded launcher).
    match unsafe { fork() }.step("fork", "init")? {
        ForkResult::Child => {
            drop(life_w);
            trace.mark("init: forked");
            let code = init_steps(p, chan, io, &life_r, trace);
            finish(chan, code)
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

/// Step: PDEATHSIG for init, checked through the lifeline pipe (EOF once
/// the stub is gone).
fn init_die_with_stub(lifeline: &OwnedFd) -> Result<(), StepError> {
    identity::die_with_parent_pidfd(lifeline)
}

/// Init's setup (cold path), in order, then the plugin fork and the init
/// loop.
fn init_steps(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    lifeline: &OwnedFd,
    trace: &mut Trace,
) -> Result<i32, StepError> {
    init_die_with_stub(lifeline)?;
    // As in the pre-warmed init: an early stop stays pending.
    block_init_signals()?;
    trace.mark("init: pdeathsig");
    build_mount_tree(p, trace)?;
    identity::close_fds_except(&[chan.as_raw_fd(), io.stdout, io.stderr, lifeline.as_raw_fd()])?;
    mounts::pivot()?;
    trace.mark("init: pivot_root, detach old root");
    mounts::make_root_read_only()?;
    nix::unistd::sethostname(&p.hostname).step("sethostname", &p.hostname)?;
    net::bring_up_loopback()?;
    trace.mark("init: root read-only, hostname, lo");
    wait_for_attach(chan)?;
    trace.mark("init: cgroup attach waited");
    let forwarded = init_seal()?;
    trace.mark("init: cgroup ns, bounding set");
    let stack = PluginStack::new(false)?;
    init_fork_plugin(p, chan, io, trace, &forwarded, &stack)
}

/// Init's own confinement, once it is in the sandbox's cgroup: a cgroup
/// namespace rooted there, an empty capability bounding set (init never
/// executes anything; its effective capabilities stay for the mounts still
/// to come), not dumpable, and the signals its loop waits for blocked.
fn init_seal() -> Result<SigSet, StepError> {
    namespaces::unshare_cgroup_namespace()?;
    identity::drop_bounding_set()?;
    identity::set_not_dumpable()?;
    block_init_signals()
}

/// Init's last step, cold or pre-warmed, with its root read-only: the
/// plugin process ([`spawn_plugin`] on `stack`), then the init loop.
fn init_fork_plugin(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    trace: &mut Trace,
    forwarded: &SigSet,
    stack: &PluginStack,
) -> Result<i32, StepError> {
    let pin = CpuPin::here()?;
    let child = spawn_plugin(stack, || {
        trace.mark("plugin: forked");
        plugin_main(p, chan, io, trace, pin.as_ref())
    })
    .step("clone", "plugin")?;
    if let Some(pin) = &pin {
        pin.restore()?;
    }
    identity::close_fds_except(&[chan.as_raw_fd()])?;
    identity::keep_only_kill_capability()?;
    identity::set_no_new_privs()?;
    init_loop(chan, child, forwarded)
}

/// Init's CPU affinity while it creates the plugin: pinned to the CPU it
/// runs on, so the plugin process (which inherits the mask) starts there.
/// Init sleeps until the plugin's `execve` (`CLONE_VFORK`), so that CPU is
/// free; left to itself, the kernel's fork balancing places the new
/// process on the least loaded CPU, which on this VM is often a halted
/// vCPU to wake (0.1-1 ms) or a CPU busy with other work (up to a
/// scheduler tick; docs/sandbox.md, "Session 6"). The plugin's first step
/// restores the original mask, and init restores its own once the plugin
/// is created: the plugin runs with exactly the affinity it had before.
pub(crate) struct CpuPin {
    original: nix::sched::CpuSet,
}

impl CpuPin {
    /// Pin the calling process to its current CPU; `None` when it may run
    /// on one CPU only anyway.
    ///
    /// # Errors
    /// `sched_getaffinity`, `sched_getcpu` or `sched_setaffinity` failed.
    fn here() -> Result<Option<Self>, StepError> {
        use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
        let me = Pid::from_raw(0);
        let original = sched_getaffinity(me).step("sched_getaffinity", "init")?;
        let allowed = (0..CpuSet::count())
            .filter(|c| original.is_set(*c).unwrap_or(false))
            .count();
        if allowed <= 1 {
            return Ok(None);
        }
        let cpu = sched_getcpu().step("sched_getcpu", "init")?;
        let mut one = CpuSet::new();
        one.set(cpu).step("cpu set", cpu)?;
        sched_setaffinity(me, &one).step("sched_setaffinity", cpu)?;
        Ok(Some(Self { original }))
    }

    /// Give the calling process its original mask back.
    ///
    /// # Errors
    /// `sched_setaffinity` failed.
    fn restore(&self) -> Result<(), StepError> {
        nix::sched::sched_setaffinity(Pid::from_raw(0), &self.original)
            .step("sched_setaffinity", "restore")
    }
}

/// Size of the stack the plugin process runs its setup steps on (mapped
/// lazily; the setup needs a few dozen KiB).
const PLUGIN_STACK_SIZE: usize = 1 << 20;
/// How much of its top a pre-warmed init touches ahead of time.
const PLUGIN_STACK_PREFAULT: usize = 128 << 10;

/// The stack of the plugin process between its creation and its `execve`
/// ([`spawn_plugin`]): a private mapping of init's with a guard page at the
/// bottom (an overflow faults instead of writing below it). A pre-warmed
/// init maps it and touches its top before its claim, so the plugin's setup
/// takes no page fault on it.
pub(crate) struct PluginStack {
    base: std::ptr::NonNull<libc::c_void>,
}

impl PluginStack {
    /// Map the stack; `prefault`: touch its top [`PLUGIN_STACK_PREFAULT`]
    /// bytes now.
    fn new(prefault: bool) -> Result<Self, StepError> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
        let len = std::num::NonZeroUsize::MIN.saturating_add(PLUGIN_STACK_SIZE - 1);
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK | MapFlags::MAP_NORESERVE;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a new private anonymous mapping at an address the kernel picks; it aliases nothing.
        let base =
            unsafe { mmap_anonymous(None, len, prot, flags) }.step("mmap", "plugin stack")?;
        let stack = Self { base };
        let page = page_size();
        // SAFETY: the lowest page of this mapping, which nothing uses: it becomes the guard page.
        unsafe { mprotect(base, page, ProtFlags::PROT_NONE) }.step("mprotect", "plugin stack")?;
        if prefault {
            let bottom = PLUGIN_STACK_SIZE - PLUGIN_STACK_PREFAULT;
            for offset in (bottom..PLUGIN_STACK_SIZE).step_by(page) {
                // SAFETY: `offset` < PLUGIN_STACK_SIZE is inside the read-write part of this mapping, which nothing else uses yet.
                unsafe { base.cast::<u8>().add(offset).write_volatile(0) };
            }
        }
        Ok(stack)
    }

    /// The initial stack pointer (the stack grows down; page-aligned).
    fn top(&self) -> *mut libc::c_void {
        self.base
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(PLUGIN_STACK_SIZE)
            .cast()
    }
}

impl Drop for PluginStack {
    fn drop(&mut self) {
        // SAFETY: the whole mapping `new` made; nothing runs on it any more (the plugin process has called execve or exited before `spawn_plugin` returned).
        let _ = unsafe { nix::sys::mman::munmap(self.base, PLUGIN_STACK_SIZE) };
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096)
}

/// Create the plugin process: `child` runs in a new process (exit signal
/// `SIGCHLD`, so init reaps it like any child) that shares init's memory
/// until it calls `execve` or exits, on `stack`; init sleeps until then
/// (`clone(CLONE_VM | CLONE_VFORK)`, what `posix_spawn` does). Compared with
/// `fork` this copies no page tables, write-protects nothing, and leaves
/// neither process a copy-on-write fault to take nor the plugin's `execve`
/// an address space to tear down: 0.3-0.5 ms less per spawn on the lab host
/// (docs/sandbox.md, "Spawn latency").
///
/// Safe because init is single-threaded and asleep meanwhile (nothing else
/// touches the shared memory, its heap included, while the child allocates),
/// the child never returns into init's frames (own stack, `_exit` if
/// `child` returns), and everything the plugin's setup changes is per
/// process and not shared without the matching `CLONE_*` flag: credentials,
/// capabilities, `no_new_privs`, seccomp and Landlock (no `TSYNC`), the
/// descriptor table (no `CLONE_FILES`), cwd (no `CLONE_FS`), signal
/// handlers (no `CLONE_SIGHAND`), the signal mask and session. The one
/// shared attribute is the memory's "dumpable" flag, which the uid switch
/// can only clear, and init cleared it already (`init_seal`). Nothing can
/// reach the shared memory through the child: it is alone in its pid
/// namespace with init, not dumpable after the uid switch, and under
/// seccomp (no `ptrace`, `process_vm_writev`) before anything but Hutch code
/// runs in it; `execve` gives it a fresh address space.
fn spawn_plugin<F: FnOnce() -> i32>(stack: &PluginStack, child: F) -> Result<Pid, Errno> {
    extern "C" fn trampoline<F: FnOnce() -> i32>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is spawn_plugin's `Option<F>`, which stays alive and untouched while spawn_plugin sleeps (CLONE_VFORK) until this child has called execve or exited.
        let child = unsafe { &mut *arg.cast::<Option<F>>() }.take();
        exit_now(child.map_or(127, |f| f()))
    }
    let mut slot = Some(child);
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    let arg: *mut Option<F> = &raw mut slot;
    // SAFETY: single-threaded caller; the child gets its own stack (`stack`, alive until this returns) and ends with execve or _exit; `arg` outlives the child's use of it (see `trampoline`).
    let pid = unsafe { libc::clone(trampoline::<F>, stack.top(), flags, arg.cast()) };
    Errno::result(pid).map(Pid::from_raw)
}

/// Steps: the mount tree, built in the staging tmpfs (see [`mounts`]).
fn build_mount_tree(p: &Prepared, trace: &mut Trace) -> Result<(), StepError> {
    mounts::make_root_private()?;
    trace.mark("init: root rprivate");
    let sources = mounts::open_sources(&p.plan)?;
    trace.mark("init: bind sources opened");
    mounts::mount_root_tmpfs(&p.plan)?;
    mounts::create_skeleton(&p.plan)?;
    mounts::mount_dev(&p.plan)?;
    mounts::create_mount_points(&p.plan)?;
    trace.mark("init: root tmpfs, skeleton, /dev");
    mounts::bind_all(&p.plan, &sources)?;
    mounts::mask_sockets(&p.plan)?;
    trace.mark("init: binds");
    mounts::mount_tmp(&p.plan)?;
    mounts::write_etc(&p.plan)?;
    mounts::mount_proc()?;
    mounts::seal_dev()?;
    trace.mark("init: /tmp, /etc, /proc, seal /dev");
    Ok(())
}

/// Step: block until the launcher says init is in the sandbox's cgroup.
fn wait_for_attach(chan: &ChildChannel) -> Result<(), StepError> {
    expect(chan, "wait for cgroup attach", |m| {
        matches!(m, LauncherMsg::Attached)
    })
}

/// Block until the launcher's next message, which must be the one `want`
/// accepts (`op` names the wait in the error).
fn expect(
    chan: &ChildChannel,
    op: &'static str,
    want: fn(&LauncherMsg) -> bool,
) -> Result<(), StepError> {
    match chan.recv() {
        Ok(Some((msg, _))) if want(&msg) => Ok(()),
        Ok(None) => Err(StepError::other(op, "launcher went away")),
        Ok(Some((other, _))) => Err(StepError::other(op, format!("unexpected {other:?}"))),
        Err(e) => Err(StepError::other(op, e.to_string())),
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
            let (exit_code, signal) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == plugin => (Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == plugin => (None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(StepError::sys("waitpid", "", e)),
            };
            let at_ns = now_ns();
            // The plugin is gone: kill what it left (everything in the pid
            // namespace but init) and reap it all, so that when the
            // launcher reads this, no plugin process is left and the
            // outcome is final (init's own exit follows).
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            while let Ok(_) | Err(Errno::EINTR) = waitpid(None, None) {}
            let _ = chan.send(
                &ChildMsg::PluginEnded {
                    exit_code,
                    signal,
                    at_ns,
                    all_gone: true,
                },
                &[],
            );
            return Ok(0);
        }
    }
}

fn plugin_main(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    trace: &mut Trace,
    pin: Option<&CpuPin>,
) -> ! {
    let err = match pin
        .map_or(Ok(()), CpuPin::restore)
        .and_then(|()| plugin_steps(p, chan, io, trace))
    {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = chan.send(&ChildMsg::Failed(err), &[]);
    exit_now(127)
}

/// The plugin starts in `/plugin` (its own files), so a manifest's relative
/// `args` (`args = ["main.py"]`) name files there; `/` when the spec has no
/// plugin dir. Done as the plugin's uid: it must be able to enter it.
fn enter_plugin_dir() -> Result<(), StepError> {
    match nix::unistd::chdir("/plugin") {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(StepError::sys("chdir", "/plugin", e)),
    }
}

/// The plugin process: last steps, then `execve`.
fn plugin_steps(
    p: &Prepared,
    chan: &ChildChannel,
    io: ChildIo,
    trace: &mut Trace,
) -> Result<std::convert::Infallible, StepError> {
    identity::switch_ids(p.uid, p.gid)?;
    enter_plugin_dir()?;
    identity::clear_capabilities()?;
    identity::set_no_new_privs()?;
    identity::reset_signals()?;
    identity::new_session()?;
    identity::setup_stdio(io.stdout, io.stderr)?;
    identity::close_fds_except(&[chan.as_raw_fd()])?;
    trace.mark("plugin: ids, caps, no_new_privs, session, stdio");
    let landlock = policy::apply_landlock(&p.policy)?;
    trace.mark("plugin: landlock");
    let listener = policy::apply_seccomp(&p.policy)?;
    trace.mark("plugin: seccomp");
    let fds: Vec<RawFd> = listener.iter().map(|l| l.as_raw_fd()).collect();
    let seccomp_notify = listener.is_some();
    chan.send(
        &ChildMsg::Executing {
            landlock,
            seccomp_notify,
            trace: trace.points(),
        },
        &fds,
    )
    .map_err(|e| StepError::other("hand over seccomp listener", e.to_string()))?;
    drop(listener);
    let Err(e) = nix::unistd::execve(&p.exec, &p.argv, &p.envp);
    Err(StepError::sys("execve", p.exec.to_string_lossy(), e))
}
