//! The launcher: a small single-threaded process that forks sandboxes.
//!
//! `fork` from a multi-threaded process (a tokio daemon) can leave the child
//! with locks held by threads that no longer exist; so the daemon forks the
//! launcher once, *before* starting any runtime ([`Launcher::start`]), and
//! asks it over a socketpair to spawn sandboxes ([`Request`]), getting typed
//! [`Event`]s back, with the plugin's stdout/stderr pipes and the seccomp
//! listener as descriptors. The launcher stays single-threaded: it polls its
//! control socket, each sandbox's setup channel and a pidfd per sandbox,
//! enforces wall timeouts (SIGTERM, grace period, cgroup kill), reads cgroup
//! stats and removes the cgroup when a sandbox ends. When the daemon goes
//! away (control socket EOF) it kills every sandbox, cleans up and exits.
//!
//! It also keeps a small **pool of pre-warmed inits** per cgroup placement
//! ([`LauncherConfig::pool_size`], docs/sandbox.md "The spawn pool"): each is
//! pid 1 of a fresh pid namespace (no stub), in fresh mount, net (`lo` up),
//! ipc and uts namespaces with the spec-independent root built. With a
//! cgroup placement it comes from a **pool slot**: a cgroup created once and
//! a zygote in it ([`crate::zygote`]) that forks the slot's inits, so no
//! spawn migrates a process or creates a cgroup; a slot is reused after a
//! normal end (limits changed, stats reset per sandbox) and buried after any
//! other. A spawn claims an init (writing the sandbox's limits to its cgroup
//! first), sends it the prepared spec, and init goes on from the spec's
//! binds; the pool is refilled while the launcher is otherwise idle.
//! Finished sandboxes' cgroups and mount namespaces are likewise released
//! when idle, after the outcome was reported.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{ForkResult, Pid, fork};
use serde::{Deserialize, Serialize};

use crate::cgroup::{
    CgroupConfig, CgroupLimits, CgroupManager, Controller, Placement, SandboxCgroup, StatsBaseline,
};
use crate::channel::{self, Channel, ChannelError};
use crate::mounts::{BaseFingerprint, MountPlan};
use crate::outcome::{LandlockReport, Outcome};
use crate::seccomp::DenialMonitor;
use crate::spawn::{self, ChildMsg, Forked, LauncherMsg, ParentChannel, Prepared};
use crate::spec::{CgroupPlacement, SandboxSpec};
use crate::trace::{TracePoint, now_ns};
use crate::zygote::{self, ZygoteChannel, ZygoteReply, ZygoteRequest};

/// A request from the daemon to the launcher.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Start a sandbox; `id` is chosen by the caller and names it in events.
    Spawn {
        /// Caller-chosen id.
        id: u64,
        /// What to run.
        spec: Box<SandboxSpec>,
    },
    /// SIGTERM to the plugin (through its init), then after the spec's
    /// grace period kill the whole sandbox.
    Stop {
        /// The sandbox.
        id: u64,
    },
    /// Kill the whole sandbox now.
    Kill {
        /// The sandbox.
        id: u64,
    },
    /// Fill the spawn pool for this cgroup placement (`None`: sandboxes
    /// without a cgroup) now rather than after its first spawn.
    Prewarm {
        /// The placement later specs will name.
        placement: Option<CgroupPlacement>,
    },
}

/// Default [`LauncherConfig::pool_size`]: three pre-warmed inits per cgroup
/// placement in use (each is one sleeping process and its namespaces, plus a
/// zygote and a cgroup per slot). Three rather than two: with two, 15-23 % of
/// back-to-back spawns found their init still warming up; with three, 3-4 %
/// (docs/sandbox.md, "Session 6").
pub const DEFAULT_POOL_SIZE: usize = 3;

/// How the launcher runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherConfig {
    /// Pre-warmed inits kept ready per cgroup placement; 0 turns the pool
    /// off (every spawn is cold). A placement's pool is filled after its
    /// first spawn or on [`Launcher::prewarm`].
    pub pool_size: usize,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

/// An event from the launcher to the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    /// The sandbox was forked; carries the read ends of the plugin's stdout
    /// and stderr (in that order) as descriptors.
    Spawned {
        /// The sandbox.
        id: u64,
    },
    /// Setup finished and the plugin is being executed; carries the seccomp
    /// listener as a descriptor when `seccomp_notify`.
    Started {
        /// The sandbox.
        id: u64,
        /// Host pid of the sandbox's init.
        init_pid: i32,
        /// What Landlock enforced.
        landlock: Option<LandlockReport>,
        /// Denials come through seccomp user notification.
        seccomp_notify: bool,
    },
    /// The sandbox ended (or could not be set up): every process of the
    /// plugin is gone (the sandbox's init may still be exiting; the
    /// launcher reaps it and releases the sandbox). The launcher removes its cgroup right after sending this (it
    /// exits only once that is done, so dropping the [`Launcher`] waits
    /// for it).
    Exited {
        /// The sandbox.
        id: u64,
        /// How it ended.
        outcome: Box<Outcome>,
    },
}

/// Errors talking to the launcher.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The control channel failed.
    #[error("launcher channel: {0}")]
    Channel(#[from] ChannelError),
    /// `fork` of the launcher failed.
    #[error("fork launcher: {0:?}")]
    Fork(Errno),
    /// The launcher went away.
    #[error("launcher exited unexpectedly")]
    Gone,
    /// `poll` or `read` on the plugin's pipes failed.
    #[error("{op}: {errno:?}")]
    Io {
        /// The call.
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
}

/// The daemon's handle on its launcher process.
#[derive(Debug)]
pub struct Launcher {
    chan: Channel<Request, Event>,
    pid: Pid,
    next_id: u64,
}

impl Launcher {
    /// Fork the launcher. Call it early, before any thread or async runtime
    /// exists in the caller (tests may call it from their harness thread:
    /// glibc `fork` keeps the allocator consistent, and the launcher touches
    /// no other lock).
    ///
    /// # Errors
    /// The socketpair or `fork` failed.
    pub fn start() -> Result<Self, LaunchError> {
        Self::start_with(LauncherConfig::default())
    }

    /// [`Launcher::start`] with a configuration (pool size).
    ///
    /// # Errors
    /// The socketpair or `fork` failed.
    pub fn start_with(config: LauncherConfig) -> Result<Self, LaunchError> {
        let (daemon_end, launcher_end) = channel::pair::<Request, Event>()?;
        // SAFETY: the child only runs the launcher loop, which uses no lock another thread of the caller could hold (glibc fork resets malloc's).
        match unsafe { fork() }.map_err(LaunchError::Fork)? {
            ForkResult::Child => {
                drop(daemon_end);
                let code = match serve(launcher_end, config) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!(error = %e, "launcher failed");
                        1
                    }
                };
                spawn::exit_now(code)
            }
            ForkResult::Parent { child } => Ok(Self {
                chan: daemon_end,
                pid: child,
                next_id: 1,
            }),
        }
    }

    /// Pid of the launcher process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Ask for a sandbox; returns its id. Events follow on [`Launcher::recv`].
    ///
    /// # Errors
    /// The launcher is gone.
    pub fn spawn(&mut self, spec: &SandboxSpec) -> Result<u64, LaunchError> {
        let id = self.next_id;
        self.next_id += 1;
        self.chan.send(
            &Request::Spawn {
                id,
                spec: Box::new(spec.clone()),
            },
            &[],
        )?;
        Ok(id)
    }

    /// Ask the launcher to stop a sandbox (SIGTERM, grace, kill).
    ///
    /// # Errors
    /// The launcher is gone.
    pub fn stop(&self, id: u64) -> Result<(), LaunchError> {
        Ok(self.chan.send(&Request::Stop { id }, &[])?)
    }

    /// Fill the spawn pool for `placement` (the `cgroup` of the specs to
    /// come; `None` for sandboxes without one) now: the launcher forks the
    /// stubs when it reads this request and each warms up on its own, so
    /// even the first spawn with it is warm (it may claim a stub still
    /// warming up, which then reads the claim when it is ready). Does
    /// nothing when the pool is off.
    ///
    /// # Errors
    /// The launcher is gone.
    pub fn prewarm(&self, placement: Option<&CgroupPlacement>) -> Result<(), LaunchError> {
        Ok(self.chan.send(
            &Request::Prewarm {
                placement: placement.cloned(),
            },
            &[],
        )?)
    }

    /// Ask the launcher to kill a sandbox now.
    ///
    /// # Errors
    /// The launcher is gone.
    pub fn kill(&self, id: u64) -> Result<(), LaunchError> {
        Ok(self.chan.send(&Request::Kill { id }, &[])?)
    }

    /// Next event, with its descriptors (blocking).
    ///
    /// # Errors
    /// The launcher is gone or sent garbage.
    pub fn recv(&self) -> Result<(Event, Vec<OwnedFd>), LaunchError> {
        self.chan.recv()?.ok_or(LaunchError::Gone)
    }

    /// Run one sandbox to its end in the foreground: copy its stdout and
    /// stderr to the given writers, run the seccomp denial monitor, and
    /// return the outcome. Meant for `hutchd try` and tests: events of other
    /// sandboxes of this launcher are dropped meanwhile.
    ///
    /// # Errors
    /// The launcher is gone, or polling the pipes failed.
    pub fn run(
        &mut self,
        spec: &SandboxSpec,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<Outcome, LaunchError> {
        let id = self.spawn(spec)?;
        let mut pipes: [Option<OwnedFd>; 2] = [None, None];
        let mut monitor: Option<DenialMonitor> = None;
        let mut outcome: Option<Outcome> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while outcome.is_none() || pipes.iter().any(Option::is_some) {
            let mut fds = Vec::new();
            if outcome.is_none() {
                fds.push(PollFd::new(self.chan.as_fd(), PollFlags::POLLIN));
            }
            for p in pipes.iter().flatten() {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => return Err(LaunchError::Io { op: "poll", errno }),
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
            drop(fds);
            let mut idx = 0;
            if outcome.is_none() {
                if ready[0] {
                    let (event, mut descriptors) = self.recv()?;
                    match event {
                        Event::Spawned { id: got } if got == id => {
                            let mut it = descriptors.drain(..);
                            pipes = [it.next(), it.next()];
                        }
                        Event::Started {
                            id: got,
                            seccomp_notify: true,
                            ..
                        } if got == id => {
                            if let Some(listener) = descriptors.pop() {
                                match DenialMonitor::spawn(listener, spec.name.clone()) {
                                    Ok(m) => monitor = Some(m),
                                    Err(e) => tracing::error!(error = %e, "seccomp denial monitor"),
                                }
                            }
                        }
                        Event::Exited {
                            id: got,
                            outcome: o,
                        } if got == id => outcome = Some(*o),
                        _ => {}
                    }
                    continue;
                }
                idx = 1;
            }
            for (slot, pipe) in pipes.iter_mut().enumerate() {
                let Some(fd) = pipe else { continue };
                let is_ready = ready.get(idx).copied().unwrap_or(false);
                idx += 1;
                if !is_ready {
                    continue;
                }
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => *pipe = None,
                    Ok(n) => {
                        let out: &mut dyn Write = if slot == 0 {
                            &mut *stdout
                        } else {
                            &mut *stderr
                        };
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(errno) => {
                        return Err(LaunchError::Io {
                            op: "read plugin output",
                            errno,
                        });
                    }
                }
            }
        }
        let mut outcome = outcome.ok_or(LaunchError::Gone)?;
        if let Some(m) = monitor {
            outcome.denials = m.finish();
        }
        Ok(outcome)
    }
}

impl AsFd for Launcher {
    /// The control socket: readable when an event waits, so an async caller
    /// can wait for readiness and then [`Launcher::recv`] without blocking.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.chan.as_fd()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // EOF on the control socket: the launcher kills what is left,
        // cleans up and exits.
        let _ = nix::sys::socket::shutdown(self.chan.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

// ------------------------------------------------------------ launcher side

/// One sandbox the launcher is responsible for.
struct Running {
    stub: Pid,
    pidfd: OwnedFd,
    chan: Option<ParentChannel>,
    init: Option<Pid>,
    /// pidfd of init, so a late signal cannot hit a recycled pid.
    init_pidfd: Option<OwnedFd>,
    cgroup: Option<SandboxCgroup>,
    started: Instant,
    /// When to send SIGTERM (wall timeout).
    deadline: Option<Instant>,
    /// When to kill everything (after SIGTERM).
    kill_at: Option<Instant>,
    grace: Duration,
    outcome: Outcome,
    /// The sandbox's mount namespace, released after the exit is reported.
    mount_ns: Option<std::fs::File>,
    /// The plugin's ids, for user-namespace maps.
    ids: (u32, u32),
    /// A cgroup attach failure; reported only if the child reported nothing
    /// (an early setup failure makes the attach fail with ESRCH too).
    attach_error: Option<String>,
    /// Claimed from the pool: the stub joined its cgroup before it was
    /// claimed, so there is nothing to attach.
    pooled: bool,
    /// No `Executing` yet: pool refills wait (they would compete for CPU).
    setting_up: bool,
    /// Launcher-side and child-side trace points.
    trace: Vec<TracePoint>,
    /// The pool slot it runs in (its cgroup is `cgroup`), with its pool;
    /// `None` again once the slot went back to the pool.
    slot: Option<(PoolKey, PoolSlot)>,
    /// It ran in a pool slot: init is the zygote's child, not the
    /// launcher's.
    in_slot: bool,
    /// The slot's counters when this sandbox was claimed.
    baseline: Option<StatsBaseline>,
    /// Stopped or killed by the launcher: its slot is never reused.
    dirty: bool,
    /// Init reported the plugin's end.
    plugin_ended: bool,
    /// The outcome was sent (the sandbox may still be exiting).
    reported: bool,
    /// Why its end was not normal (see `report`), if it was not: its slot
    /// is buried then (logged at debug level).
    abnormal: Option<&'static str>,
}

/// How a sandbox's stub came to be (the only difference between the two
/// spawn paths once the stub runs).
struct StubStart {
    stub: Pid,
    pidfd: OwnedFd,
    chan: ParentChannel,
    cgroup: Option<SandboxCgroup>,
    attach_error: Option<String>,
    pooled: bool,
    /// A pooled init's mount namespace (a cold one's is opened when init's
    /// pid arrives).
    mount_ns: Option<std::fs::File>,
    trace: Vec<TracePoint>,
    slot: Option<(PoolKey, PoolSlot)>,
    baseline: Option<StatsBaseline>,
}

impl Running {
    /// A sandbox whose stub was just started (cold) or claimed (pool),
    /// setting up, its wall deadline counted from `started`.
    fn new(spec: &SandboxSpec, started: Instant, s: StubStart) -> Self {
        // A pooled sandbox's child is its init: known from the start.
        let (init, init_pidfd) = if s.pooled {
            (Some(s.stub), s.pidfd.try_clone().ok())
        } else {
            (None, None)
        };
        Running {
            stub: s.stub,
            pidfd: s.pidfd,
            chan: Some(s.chan),
            init,
            init_pidfd,
            cgroup: s.cgroup,
            started,
            deadline: spec
                .limits
                .wall_timeout
                .filter(|d| !d.is_zero())
                .map(|d| started + d),
            kill_at: None,
            grace: spec.stop_grace,
            outcome: Outcome::default(),
            mount_ns: s.mount_ns,
            ids: (spec.uid, spec.gid),
            attach_error: s.attach_error,
            pooled: s.pooled,
            setting_up: true,
            trace: s.trace,
            in_slot: s.slot.is_some(),
            slot: s.slot,
            baseline: s.baseline,
            dirty: false,
            plugin_ended: false,
            reported: false,
            abnormal: Some("not reported"),
        }
    }
}

/// A pre-warmed init in the pool (see [`spawn::fork_pool_init`]).
struct Pooled {
    init: Pid,
    pidfd: OwnedFd,
    chan: ParentChannel,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// Its own cgroup, without limits until claimed.
    cgroup: Option<SandboxCgroup>,
    /// It reported `PoolReady` (a claim may also go to one still warming
    /// up: it reads the claim when it gets there).
    ready: bool,
    /// Its pre-warm steps.
    trace: Vec<TracePoint>,
    /// The spec-independent binds of its pre-built root.
    base: BaseFingerprint,
    /// Its mount namespace, opened when it reported ready.
    mount_ns: Option<std::fs::File>,
    /// The slot whose zygote forked it (cgroup placements).
    slot: Option<PoolSlot>,
    /// It runs at `SCHED_BATCH` (it was forked at `SCHED_IDLE`; see
    /// [`Server::raise_if_hungry`]).
    raised: bool,
}

/// A pool slot (cgroup placements): a cgroup created once and the zygote
/// in it ([`zygote`]) that forks each of the slot's pre-warmed inits, so no
/// spawn migrates a process between cgroups or creates or removes one. The
/// cgroup itself travels next to it (`Pooled::cgroup`, `Running::cgroup`,
/// or the pairs in [`Pool`]).
struct PoolSlot {
    zygote: Pid,
    chan: ZygoteChannel,
    /// The limits written to the cgroup now (none when fresh).
    limits: CgroupLimits,
    /// Sandboxes claimed in it so far.
    uses: u64,
    /// The base mount plan of the init it forks next.
    base: BaseFingerprint,
    /// Back in the pool since (a free slot waits until its last sandbox's
    /// tmpfs pages are no longer charged to it).
    freed: Instant,
    next_try: Instant,
    /// The pidfd of the slot's last init when the slot came back before
    /// that init's exit (it had reported every plugin process gone): the
    /// slot's next init may warm up meanwhile, but is claimed only once
    /// that init is gone too ([`Server::claim`]), so the next sandbox's
    /// tasks and counters are its own.
    predecessor: Option<OwnedFd>,
}

/// The pre-warmed stubs for one cgroup placement.
struct Pool {
    placement: Option<CgroupPlacement>,
    stubs: Vec<Pooled>,
    /// Slots whose zygote is forking an init (reply pending).
    warming: Vec<(SandboxCgroup, PoolSlot)>,
    /// Slots back from a sandbox that ended normally, to re-warm.
    free: Vec<(SandboxCgroup, PoolSlot)>,
    /// Pre-warms that failed in a row; the pool stops refilling at
    /// [`MAX_POOL_FAILURES`] (spawns are then cold).
    failures: u32,
    /// A spawn took its last ready init and none is ready since (see
    /// [`Server::raise_if_hungry`]).
    hungry: bool,
    /// When a spawn last claimed one of its inits.
    last_claim: Option<Instant>,
    /// That claim came less than [`BURST_GAP`] after the one before: a
    /// burst of spawns, which refills at once ([`Server::may_refill`]).
    burst: bool,
}

impl Pool {
    /// An empty pool for `placement`.
    fn new(placement: Option<CgroupPlacement>) -> Self {
        Pool {
            placement,
            stubs: Vec::new(),
            warming: Vec::new(),
            free: Vec::new(),
            failures: 0,
            hungry: false,
            last_claim: None,
            burst: false,
        }
    }
}

/// How long a spawn waits for a warming pool slot's init before it goes
/// cold, in ms.
const WARMING_WAIT_MS: u8 = 20;

/// tmpfs pages (bytes) of a slot's last sandbox that may still be charged
/// to the slot when it is re-warmed: its `/etc` files (4 pages) are freed
/// only one RCU grace period after its mount namespace, 10-50 ms on the lab
/// host, which back-to-back spawns would otherwise wait for. The next
/// sandbox's memory limit is that much smaller until they are gone; more
/// (the last sandbox's `/tmp`) is waited for.
const SHMEM_SLACK: u64 = 64 << 10;

/// How long a claim waits for its slot's last init to finish exiting
/// ([`PoolSlot::predecessor`]) before it spawns cold instead.
const PREDECESSOR_WAIT: Duration = Duration::from_millis(100);

/// The trace point of a spawn that went cold because its claimed slot's
/// last init was still exiting after `PREDECESSOR_WAIT` (100 ms).
pub const PREDECESSOR_GAVE_UP: &str = "launcher: slot's last init still exiting; spawning cold";

/// Consecutive pre-warm failures after which a placement's pool gives up.
const MAX_POOL_FAILURES: u32 = 3;

/// What is left of a sandbox after its outcome was reported, released when
/// the launcher is idle: the mount namespace (its teardown waits for an RCU
/// grace period), the cgroup (v1 `rmdir` can be `EBUSY` for a moment), or a
/// killed pool stub to reap.
struct Grave {
    cgroup: Option<SandboxCgroup>,
    mount_ns: Option<std::fs::File>,
    reap: Option<Pid>,
    since: Instant,
    next_try: Instant,
}

/// How long a grave is retried without blocking before the launcher waits.
const GRAVE_PATIENCE: Duration = Duration::from_secs(2);

type PoolKey = Option<(String, PathBuf, Placement)>;

/// How long the launcher reuses a base mount plan (system trees, devices,
/// `/etc` files: resolved, opened and stat'ed, ~50 syscalls) before it
/// resolves the base again. A claim compares its base with the pooled init's
/// ([`BaseFingerprint`]), so an `/etc/ld.so.cache` rewritten by `ldconfig`,
/// or a replaced time zone file, reaches every sandbox claimed more than
/// this long after the change; before, a claim and the refill after it each
/// resolved the base (docs/sandbox.md "Session 9").
pub const BASE_PLAN_TTL: Duration = Duration::from_secs(1);

/// The launcher's last base mount plan and when it was resolved.
#[derive(Default)]
struct BaseCache {
    last: Option<(Instant, MountPlan)>,
}

impl BaseCache {
    /// When the cached plan was resolved (the `now` of that [`BaseCache::get`]).
    fn resolved_at(&self) -> Option<Instant> {
        self.last.as_ref().map(|(at, _)| *at)
    }

    /// Resolve the base plan again at the next [`BaseCache::get`].
    fn invalidate(&mut self) {
        self.last = None;
    }

    /// The base plan resolved at most [`BASE_PLAN_TTL`] before `now`,
    /// resolving it again when older.
    fn get(&mut self, now: Instant) -> Result<MountPlan, crate::mounts::PrepareError> {
        match &self.last {
            Some((at, plan)) if now.saturating_duration_since(*at) < BASE_PLAN_TTL => {
                Ok(plan.clone())
            }
            _ => {
                let plan = MountPlan::prepare_base()?;
                self.last = Some((now, plan.clone()));
                Ok(plan)
            }
        }
    }
}

fn pool_key(p: Option<&CgroupPlacement>) -> PoolKey {
    p.map(|p| (p.parent.clone(), p.root.clone(), p.base))
}

struct Server {
    ctrl: Channel<Event, Request>,
    ctrl_open: bool,
    running: HashMap<u64, Running>,
    managers: HashMap<(String, PathBuf, Placement), CgroupManager>,
    seccomp_cache: crate::policy::SeccompCache,
    base: BaseCache,
    config: LauncherConfig,
    pools: HashMap<PoolKey, Pool>,
    pool_seq: u64,
    graveyard: Vec<Grave>,
    /// Sandboxes reported at their plugin's end whose pool slot may go back
    /// early ([`Server::return_slot_early`]): done as background work, so a
    /// request that came meanwhile (the next back-to-back spawn) is served
    /// first.
    early_returns: Vec<u64>,
    janitor: Option<Janitor>,
    /// The launcher's scheduling policy, which a pre-warmed init gets when
    /// it is claimed (it warms up at `SCHED_IDLE`).
    policy: Option<spawn::SchedPolicy>,
    /// The launcher's own pid namespace, to return to after forking a
    /// pooled init into a new one.
    own_pid_ns: Option<OwnedFd>,
    /// A pidfd of the launcher itself: a pooled init checks it after
    /// setting its parent-death signal.
    self_pidfd: Option<OwnedFd>,
}

/// A helper process that closes the descriptors it is sent: the last
/// reference to a finished sandbox's mount namespace goes there, so the
/// namespace's teardown (`umount_tree`, then an RCU grace period) blocks the
/// janitor, never the launcher.
struct Janitor {
    chan: Channel<(), ()>,
    pid: Pid,
}

impl Janitor {
    fn start() -> Result<Self, String> {
        let (ours, theirs) = channel::pair::<(), ()>().map_err(|e| e.to_string())?;
        let launcher = nix::unistd::getpid();
        // SAFETY: the launcher is single-threaded, so the child's copy of every lock and allocator is consistent.
        match unsafe { fork() }.map_err(|e| format!("fork janitor: {e:?}"))? {
            ForkResult::Child => {
                drop(ours);
                let _ = crate::identity::close_fds_except(&[theirs.as_raw_fd()]);
                let _ = crate::identity::die_with_parent(launcher);
                // Each message's descriptors are dropped (closed) here.
                while let Ok(Some(_)) = theirs.recv() {}
                spawn::exit_now(0)
            }
            ForkResult::Parent { child } => Ok(Self {
                chan: ours,
                pid: child,
            }),
        }
    }

    /// Hand `fd` over; `false` if the janitor is gone (the caller closes it).
    fn close(&self, fd: &impl AsRawFd) -> bool {
        self.chan.send(&(), &[fd.as_raw_fd()]).is_ok()
    }

    /// Close the channel and wait until every handed-over descriptor is closed.
    fn stop(self) {
        drop(self.chan);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

fn serve(ctrl: Channel<Event, Request>, config: LauncherConfig) -> Result<(), LaunchError> {
    // Leave the caller's process group, so a terminal's Ctrl-C reaches the
    // daemon (which then closes the channel) and not the sandboxes directly.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = crate::identity::close_fds_except(&[ctrl.as_raw_fd()]);
    let mut server = Server {
        ctrl,
        ctrl_open: true,
        running: HashMap::new(),
        managers: HashMap::new(),
        seccomp_cache: crate::policy::SeccompCache::default(),
        base: BaseCache::default(),
        config,
        pools: HashMap::new(),
        pool_seq: 0,
        graveyard: Vec::new(),
        early_returns: Vec::new(),
        janitor: Janitor::start()
            .map_err(
                |e| tracing::warn!(error = %e, "janitor; mount namespaces are released inline"),
            )
            .ok(),
        policy: spawn::SchedPolicy::current()
            .map_err(|e| tracing::warn!(error = %e, "scheduling policy of the launcher"))
            .ok(),
        own_pid_ns: crate::namespaces::own_pid_namespace()
            .map_err(|e| tracing::warn!(error = %e, "no spawn pool"))
            .ok(),
        self_pidfd: pidfd_open(nix::unistd::getpid())
            .map_err(|e| tracing::warn!(error = ?e, "pidfd of the launcher; no spawn pool"))
            .ok(),
    };
    let result = loop {
        if !server.ctrl_open && server.running.is_empty() {
            break Ok(());
        }
        if let Err(e) = server.turn() {
            break Err(e);
        }
    };
    server.drain_pools();
    server.bury_all();
    if let Some(j) = server.janitor.take() {
        j.stop();
    }
    // Every sandbox cgroup is gone by now; drop the parents too unless
    // someone else still uses them.
    for manager in server.managers.values() {
        manager.remove_parent_if_empty();
    }
    result
}

/// Claims of one pool closer together than this are a burst
/// ([`Pool::burst`]).
const BURST_GAP: Duration = Duration::from_millis(20);

/// How long after its spawn a running sandbox holds back the refill of a
/// pool that lacks only the init it took ([`Server::young_running`]).
const YOUNG: Duration = Duration::from_secs(1);

/// How long the launcher, exiting, waits for each of its children to exit
/// (a zygote kills and reaps its inits first) before it SIGKILLs it.
const EXIT_PATIENCE: Duration = Duration::from_secs(5);

/// Reap child `pid` (a zygote or a pooled init, killed or told to exit):
/// wait up to `wait` for it to exit, then SIGKILL it, then reap it. So the
/// launcher never hangs on a stuck child, and a zygote that exits on its own
/// has reaped its inits by then.
fn reap_bounded(pid: Pid, wait: Duration) {
    let exited = pidfd_open(pid).map_or(true, |fd| exited_within(&fd, wait));
    if !exited {
        tracing::warn!(pid = pid.as_raw(), "a child did not exit in time; killed");
        let _ = kill(pid, Signal::SIGKILL);
    }
    while let Err(Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
}

/// `true` once the process of `pidfd` has exited, waiting up to `wait`.
fn exited_within(pidfd: &OwnedFd, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::EINTR) if !left.is_zero() => {}
            Err(_) => return false,
        }
    }
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    // SAFETY: the kernel just created `fd` for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `wait4(pid, WNOHANG)`: `Some((status, rusage))` once it ended.
fn wait4_nohang(pid: Pid) -> Result<Option<(libc::c_int, libc::rusage)>, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are live locals the kernel writes into.
    let rc = Errno::result(unsafe {
        libc::wait4(pid.as_raw(), &mut status, libc::WNOHANG, &mut usage)
    })?;
    Ok((rc != 0).then_some((status, usage)))
}

/// Tasks of Hutch's own in every sandbox cgroup (the stub and init cold, the
/// zygote and init in a pool slot), added to the spec's `pids_max`.
pub const SANDBOX_OVERHEAD_TASKS: u64 = 2;

/// The cgroup name of a pool slot: `hutch-pool-<launcher pid>-<n>`.
pub const POOL_SLOT_PREFIX: &str = "hutch-pool-";

/// `pids.max` of a sandbox cgroup, cold or pool slot, for the plugin's own
/// task budget `pids_max` (+ [`SANDBOX_OVERHEAD_TASKS`]).
pub fn sandbox_pids_max(pids_max: u64) -> u64 {
    pids_max.saturating_add(SANDBOX_OVERHEAD_TASKS)
}

/// A launcher-side trace point, now.
fn point(step: &str) -> TracePoint {
    TracePoint {
        step: step.to_owned(),
        ns: now_ns(),
    }
}

/// The label of a sandbox's cgroup name (`<label>-<launcher pid>-<id>`).
pub(crate) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if s.is_empty() { "sandbox".into() } else { s }
}

/// The cgroup limits of a spec (the stub and init count against `pids_max`).
fn cgroup_limits(spec: &SandboxSpec) -> CgroupLimits {
    CgroupLimits {
        memory_max: spec.limits.memory_max,
        swap_max: spec.limits.swap_max,
        cpu_max: spec.limits.cpu_max,
        pids_max: spec.limits.pids_max.map(sandbox_pids_max),
    }
}

/// Which file descriptors of one poll round belong to what.
enum Slot {
    Ctrl,
    Chan(u64),
    Exit(u64),
    PoolChan(PoolKey, Pid),
    PoolExit(PoolKey, Pid),
    Zygote(PoolKey, Pid),
}

impl Server {
    fn send(&mut self, event: &Event, fds: &[RawFd]) {
        if self.ctrl_open && self.ctrl.send(event, fds).is_err() {
            self.ctrl_open = false;
        }
    }

    /// When the next piece of background work (a pool refill, a grave) may
    /// run; `None` when there is none.
    fn background_due(&self, now: Instant) -> Option<Instant> {
        if !self.early_returns.is_empty() {
            return Some(now);
        }
        let grave = self.graveyard.iter().map(|g| g.next_try).min();
        let refill = if self.ctrl_open {
            let setting_up = self.setting_up();
            self.pools
                .values()
                .filter(|p| self.may_refill(p, setting_up))
                .map(|p| p.free.iter().map(|(_, s)| s.next_try).min().unwrap_or(now))
                .min()
        } else {
            None
        };
        // A refill held back by a young sandbox (`young_running`) is due
        // once that sandbox is a second old, if it has not ended by then.
        let young = if self.ctrl_open && self.pools.values().any(|p| self.short(p)) {
            self.running
                .values()
                .filter(|r| !r.reported)
                .map(|r| r.started + YOUNG)
                .filter(|t| *t > now)
                .min()
        } else {
            None
        };
        [grave, refill, young].into_iter().flatten().min()
    }

    /// One poll round: control requests, setup messages, exits, pool stubs,
    /// timers; background work when nothing else is ready.
    fn turn(&mut self) -> Result<(), LaunchError> {
        let now = Instant::now();
        let next = self
            .running
            .values()
            .filter_map(|r| r.kill_at.or(r.deadline))
            .chain(self.background_due(now))
            .min();
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(t) if t <= now => PollTimeout::ZERO,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis().min(60_000) as i32;
                PollTimeout::try_from(ms.max(0) + 1).unwrap_or(PollTimeout::NONE)
            }
        };
        let mut fds = Vec::new();
        let mut slots = Vec::new();
        if self.ctrl_open {
            fds.push(PollFd::new(self.ctrl.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Ctrl);
        }
        for (id, r) in &self.running {
            if let Some(c) = &r.chan {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Chan(*id));
            }
            fds.push(PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Exit(*id));
        }
        for (key, pool) in &self.pools {
            for p in &pool.stubs {
                fds.push(PollFd::new(p.chan.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::PoolChan(key.clone(), p.init));
                fds.push(PollFd::new(p.pidfd.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::PoolExit(key.clone(), p.init));
            }
            for (_, z) in &pool.warming {
                fds.push(PollFd::new(z.chan.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Zygote(key.clone(), z.zygote));
            }
        }
        let n = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(errno) => return Err(LaunchError::Io { op: "poll", errno }),
        };
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        if n == 0 {
            self.background(Instant::now());
        }
        for (slot, is_ready) in slots.into_iter().zip(ready) {
            if !is_ready {
                continue;
            }
            match slot {
                Slot::Ctrl => self.on_request(),
                Slot::Chan(id) => self.on_child_message(id),
                Slot::Exit(id) => self.on_stub_exit(id),
                Slot::PoolChan(key, stub) => self.on_pool_message(&key, stub),
                Slot::Zygote(key, zygote) => self.on_zygote_message(&key, zygote),
                Slot::PoolExit(key, stub) => {
                    tracing::warn!(init = stub.as_raw(), "pre-warmed sandbox init died");
                    self.discard_pooled(&key, stub, true);
                }
            }
        }
        self.on_timers();
        Ok(())
    }

    /// One piece of background work, if one is due: a slot's early return
    /// first, then a grave (it frees resources), else one pool refill.
    fn background(&mut self, now: Instant) {
        if let Some(id) = self.early_returns.pop() {
            self.return_slot_early(id);
            return;
        }
        if let Some(i) = self.graveyard.iter().position(|g| g.next_try <= now) {
            if self.bury(i, false) {
                self.graveyard.swap_remove(i);
            }
            return;
        }
        if self.background_due(now).is_some_and(|t| t <= now) {
            self.refill_one();
        }
    }

    /// Try to release grave `i`; `true` when it is gone. Without `block`,
    /// a cgroup `rmdir` that is still `EBUSY` is retried later (for up to
    /// [`GRAVE_PATIENCE`], then the removal waits).
    fn bury(&mut self, i: usize, block: bool) -> bool {
        let Some(g) = self.graveyard.get_mut(i) else {
            return true;
        };
        let t = Instant::now();
        if let Some(ns) = g.mount_ns.take() {
            if let Some(j) = &self.janitor
                && !j.close(&ns)
            {
                self.janitor = None;
            }
            drop(ns);
            tracing::debug!(
                us = t.elapsed().as_micros() as u64,
                "mount namespace released"
            );
        }
        if let Some(pid) = g.reap {
            let reaped = if block {
                reap_bounded(pid, EXIT_PATIENCE);
                true
            } else {
                !matches!(wait4_nohang(pid), Ok(None))
            };
            if !reaped {
                g.next_try = Instant::now() + Duration::from_millis(1);
                return false;
            }
            g.reap = None;
        }
        let patient = !block && g.since.elapsed() < GRAVE_PATIENCE;
        if patient && let Some(cg) = g.cgroup.as_mut() {
            match cg.try_remove() {
                Ok(true) => {}
                Ok(false) => {
                    g.next_try = Instant::now() + Duration::from_millis(1);
                    return false;
                }
                Err(e) => tracing::error!(error = %e, "cgroup removal"),
            }
        }
        if let Some(cg) = g.cgroup.take()
            && let Err(e) = cg.remove()
        {
            tracing::error!(error = %e, "cgroup removal");
        }
        tracing::debug!(us = t.elapsed().as_micros() as u64, "sandbox released");
        true
    }

    /// Release every grave, waiting as needed (launcher exit).
    fn bury_all(&mut self) {
        while !self.graveyard.is_empty() {
            self.bury(0, true);
            self.graveyard.swap_remove(0);
        }
    }

    /// A pool below its size that may still be refilled.
    fn short(&self, p: &Pool) -> bool {
        p.stubs.len() + p.warming.len() < self.config.pool_size && p.failures < MAX_POOL_FAILURES
    }

    /// A sandbox is between its spawn and its `execve`: refills wait (they
    /// would compete for CPU), unless a pool has no ready init left.
    fn setting_up(&self) -> bool {
        self.running
            .values()
            .any(|r| r.setting_up && r.started.elapsed() < Duration::from_secs(1))
    }

    /// Pool `p` is short and may be refilled now: no sandbox is setting
    /// up, or `p` has no ready init (the next spawn would wait for one);
    /// and `p` lacks more than one init, or is in a burst of spawns, or no
    /// sandbox is young ([`Server::young_running`]).
    fn may_refill(&self, p: &Pool, setting_up: bool) -> bool {
        let ready = p.stubs.iter().filter(|s| s.ready).count();
        self.short(p)
            && (!setting_up || ready == 0)
            && (ready == 0 || ready + 1 < self.config.pool_size || p.burst || !self.young_running())
    }

    /// A sandbox started less than a second ago has not ended yet: a pool
    /// that lacks only the init it took (and whose last spawn was not part
    /// of a burst) waits for that end (or that second) before it re-warms,
    /// so the pre-warm (the launcher's `prepare_base`, the zygote's `fork`)
    /// does not delay the plugin's end on its way to the caller
    /// (docs/sandbox.md "Session 7"). A pool missing more, with nothing
    /// ready, or in a burst refills at once (back-to-back spawns need the
    /// refill to overlap the running plugin).
    fn young_running(&self) -> bool {
        self.running
            .values()
            .any(|r| !r.reported && r.started.elapsed() < YOUNG)
    }

    /// While `key`'s pool is hungry (a spawn took its last ready init, and
    /// none is ready since), the inits warming up in it run at
    /// `SCHED_BATCH` instead of `SCHED_IDLE`: the next spawn needs one of
    /// them, and at `SCHED_IDLE` a busy host would leave it unfinished (the
    /// spawn would then wait for the rest of its pre-warm). Back-to-back
    /// spawns are what makes a pool hungry; with gaps between spawns, the
    /// pool has a ready init at every claim and pre-warm stays idle work.
    fn raise_if_hungry(&mut self, key: &PoolKey) {
        let (Some(policy), Some(pool)) = (&self.policy, self.pools.get_mut(key)) else {
            return;
        };
        if pool.stubs.iter().any(|p| p.ready) {
            pool.hungry = false;
        }
        if !pool.hungry {
            return;
        }
        let batch = policy.batch();
        for p in pool.stubs.iter_mut().filter(|p| !p.raised) {
            match batch.set_for(p.init) {
                Ok(()) => p.raised = true,
                Err(e) => tracing::debug!(error = %e, "raising a warming init's policy"),
            }
        }
    }

    /// Pre-warm one init for the first pool below its size: without a
    /// cgroup forked by the launcher itself; with one, by the zygote of a
    /// free slot (re-warm) or of a new slot.
    fn refill_one(&mut self) {
        let now = Instant::now();
        let due = |p: &Pool| p.free.is_empty() || p.free.iter().any(|(_, s)| s.next_try <= now);
        let setting_up = self.setting_up();
        let Some(key) = self
            .pools
            .iter()
            .find(|(_, p)| self.may_refill(p, setting_up) && due(p))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.refill(&key, now);
    }

    /// Pre-warm one init for pool `key` (see [`Server::refill_one`]).
    fn refill(&mut self, key: &PoolKey, now: Instant) {
        let Some(placement) = self.pools.get(key).map(|p| p.placement.clone()) else {
            return;
        };
        let key = key.clone();
        let result = match &placement {
            None => self.prewarm_stub().map(Some),
            Some(pl) => self.warm_slot(&key, pl, now),
        };
        let Some(pool) = self.pools.get_mut(&key) else {
            return;
        };
        match result {
            Ok(Some(p)) => {
                pool.stubs.push(p);
                self.raise_if_hungry(&key);
            }
            Ok(None) => {}
            Err(e) => {
                pool.failures += 1;
                tracing::warn!(error = %e, failures = pool.failures, "pre-warming a sandbox");
                self.base.invalidate();
            }
        }
    }

    /// Ask a free slot's zygote for a new init, or start a new slot; the
    /// init arrives with [`ZygoteReply::Forked`]. `Ok(None)` when nothing
    /// failed (the init comes later, or the free slot is not ready yet, or
    /// it was replaced).
    fn warm_slot(
        &mut self,
        key: &PoolKey,
        placement: &CgroupPlacement,
        now: Instant,
    ) -> Result<Option<Pooled>, String> {
        let plan = self.base.get(now).map_err(|e| e.to_string())?;
        let free = self.pools.get_mut(key).and_then(|p| {
            let i = p.free.iter().position(|(_, s)| s.next_try <= now)?;
            Some(p.free.swap_remove(i))
        });
        if let Some((cg, mut slot)) = free {
            // The last sandbox's tmpfs pages (its root, /tmp) leave the
            // cgroup when its mount namespace is gone, one RCU grace period
            // after its release (10-50 ms here): wait for that, so the next
            // sandbox's memory limit is its own, except for a few pages
            // (its `/etc` files: 16 KiB), which would hold the slot for
            // several back-to-back spawns.
            match cg.shmem_bytes() {
                Ok(bytes) if bytes <= SHMEM_SLACK => {}
                Ok(_) if slot.freed.elapsed() < GRAVE_PATIENCE => {
                    slot.next_try = now + Duration::from_millis(1);
                    if let Some(p) = self.pools.get_mut(key) {
                        p.free.push((cg, slot));
                    }
                    return Ok(None);
                }
                Ok(bytes) => {
                    tracing::debug!(bytes, "pool slot still holds tmpfs pages; replaced");
                    self.bury_slot(cg, slot);
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pool slot memory.stat; replaced");
                    self.bury_slot(cg, slot);
                    return Ok(None);
                }
            }
            slot.base = plan.base_fingerprint();
            let sent = slot.chan.send(
                &ZygoteRequest::Fork {
                    base: Box::new(plan),
                },
                &[],
            );
            match sent {
                Ok(()) => {
                    if let Some(p) = self.pools.get_mut(key) {
                        p.warming.push((cg, slot));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pool slot zygote gone; replaced");
                    self.bury_slot(cg, slot);
                }
            }
            return Ok(None);
        }
        self.pool_seq += 1;
        let name = format!("{POOL_SLOT_PREFIX}{}-{}", std::process::id(), self.pool_seq);
        let cg = self
            .manager(placement)?
            .create_unlimited(&name)
            .map_err(|e| format!("cgroup: {e}"))?;
        let into = cg.v2_dir_fd().map_err(|e| format!("cgroup: {e}"))?;
        let z = zygote::fork_zygote(&cg.procs_paths(), into.as_ref().map(AsFd::as_fd), &plan)
            .map_err(|e| e.to_string())?;
        drop(into);
        let slot = PoolSlot {
            zygote: z.pid,
            chan: z.chan,
            limits: CgroupLimits::default(),
            uses: 0,
            base: plan.base_fingerprint(),
            freed: now,
            next_try: now,
            predecessor: None,
        };
        if let Some(p) = self.pools.get_mut(key) {
            p.warming.push((cg, slot));
        }
        Ok(None)
    }

    /// A slot's zygote reported: its new init joins the pool, or the slot
    /// is buried.
    fn on_zygote_message(&mut self, key: &PoolKey, zygote: Pid) {
        let Some(pool) = self.pools.get_mut(key) else {
            return;
        };
        let Some(i) = pool.warming.iter().position(|(_, s)| s.zygote == zygote) else {
            return;
        };
        let (cg, slot) = pool.warming.swap_remove(i);
        let fds = match slot.chan.recv() {
            Ok(Some((ZygoteReply::Forked { init }, fds))) => Some((init, fds)),
            Ok(Some((ZygoteReply::Failed(e), _))) => {
                tracing::warn!(error = %e, "pool slot zygote failed");
                None
            }
            Ok(Some((ZygoteReply::Stale, _))) => {
                // The next slot is forked from the launcher's current mount
                // table, with a base plan resolved again after this.
                tracing::debug!("pool slot's mount namespace is behind the host's; replaced");
                self.base.invalidate();
                self.bury_slot(cg, slot);
                return;
            }
            Ok(None) => {
                tracing::warn!("pool slot zygote exited");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "pool slot zygote");
                None
            }
        };
        if let Some((init, fds)) = fds {
            let mut it = fds.into_iter();
            if let (Some(pidfd), Some(chan), Some(stdout), Some(stderr), None) =
                (it.next(), it.next(), it.next(), it.next(), it.next())
            {
                let base = slot.base.clone();
                pool.stubs.push(Pooled {
                    init: Pid::from_raw(init),
                    pidfd,
                    chan: Channel::from_fd(chan),
                    stdout,
                    stderr,
                    cgroup: Some(cg),
                    ready: false,
                    trace: Vec::new(),
                    base,
                    mount_ns: None,
                    slot: Some(slot),
                    raised: false,
                });
                self.raise_if_hungry(key);
                return;
            }
        }
        pool.failures += 1;
        self.base.invalidate();
        self.bury_slot(cg, slot);
    }

    /// Take in the inits the zygotes of `key`'s pool have forked but the
    /// poll loop has not seen yet; when there is none, wait a little
    /// ([`WARMING_WAIT_MS`]) for a slot that is warming (a zygote forks an
    /// init in well under a millisecond; a new slot's zygote first joins
    /// its cgroup), rather than spawning cold.
    fn collect_warming(&mut self, key: &PoolKey) {
        let mut waited = false;
        loop {
            let Some(pool) = self.pools.get(key) else {
                return;
            };
            let timeout = if pool.stubs.is_empty() && !waited {
                PollTimeout::from(WARMING_WAIT_MS)
            } else {
                PollTimeout::ZERO
            };
            let zygotes: Vec<Pid> = pool.warming.iter().map(|(_, s)| s.zygote).collect();
            let mut fds: Vec<PollFd<'_>> = pool
                .warming
                .iter()
                .map(|(_, s)| PollFd::new(s.chan.as_fd(), PollFlags::POLLIN))
                .collect();
            if fds.is_empty() || !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
                return;
            }
            let which: Vec<Pid> = fds
                .iter()
                .zip(zygotes)
                .filter(|(f, _)| f.any().unwrap_or(false))
                .map(|(_, z)| z)
                .collect();
            drop(fds);
            for z in which {
                self.on_zygote_message(key, z);
            }
            waited = true;
        }
    }

    /// Bury a slot with its cgroup: its channel is closed, so the zygote
    /// kills and reaps its init, if any, and exits (the grave reaps it, then
    /// kills whatever is left in the cgroup and removes it).
    fn bury_slot(&mut self, cg: SandboxCgroup, slot: PoolSlot) {
        let PoolSlot { zygote, chan, .. } = slot;
        drop(chan);
        let now = Instant::now();
        self.graveyard.push(Grave {
            cgroup: Some(cg),
            mount_ns: None,
            reap: Some(zygote),
            since: now,
            next_try: now,
        });
    }

    /// Fork a pre-warmed init without a cgroup (the launcher's own child).
    fn prewarm_stub(&mut self) -> Result<Pooled, String> {
        let plan = self.base.get(Instant::now()).map_err(|e| e.to_string())?;
        let (Some(own_ns), Some(me)) = (&self.own_pid_ns, &self.self_pidfd) else {
            return Err("no pid namespace or pidfd of the launcher's own".into());
        };
        let forked =
            spawn::fork_pool_init(&[], &plan, own_ns, me, None).map_err(|e| e.to_string())?;
        let pidfd = match pidfd_open(forked.pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = kill(forked.pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(forked.pid, None);
                return Err(format!("pidfd_open: {e:?}"));
            }
        };
        Ok(Pooled {
            init: forked.pid,
            pidfd,
            chan: forked.channel,
            stdout: forked.stdout,
            stderr: forked.stderr,
            cgroup: None,
            ready: false,
            trace: Vec::new(),
            base: plan.base_fingerprint(),
            mount_ns: None,
            slot: None,
            raised: false,
        })
    }

    fn on_pool_message(&mut self, key: &PoolKey, stub: Pid) {
        let Some(pool) = self.pools.get_mut(key) else {
            return;
        };
        let Some(p) = pool.stubs.iter_mut().find(|p| p.init == stub) else {
            return;
        };
        match p.chan.recv() {
            Ok(Some((ChildMsg::PoolReady { trace }, _))) => {
                // Held so the namespace's teardown waits until the outcome
                // is reported (as for a cold sandbox's).
                p.mount_ns = std::fs::File::open(format!("/proc/{}/ns/mnt", p.init)).ok();
                p.ready = true;
                p.trace = trace;
                pool.failures = 0;
                pool.hungry = false;
            }
            Ok(Some((ChildMsg::Failed(e), _))) => {
                tracing::warn!(error = %e, "pre-warming a sandbox stub");
                self.discard_pooled(key, stub, true);
            }
            Ok(Some((other, _))) => {
                tracing::warn!(message = ?other, "unexpected message from a pooled stub");
                self.discard_pooled(key, stub, true);
            }
            Ok(None) | Err(_) => self.discard_pooled(key, stub, true),
        }
    }

    /// Take a pooled stub out, kill it and bury it with its cgroup.
    fn discard_pooled(&mut self, key: &PoolKey, stub: Pid, failed: bool) {
        let Some(pool) = self.pools.get_mut(key) else {
            return;
        };
        let Some(i) = pool.stubs.iter().position(|p| p.init == stub) else {
            return;
        };
        let p = pool.stubs.remove(i);
        if failed {
            pool.failures += 1;
            // Perhaps a base source changed since the cached plan (its
            // pre-warm re-opens them): the next refill resolves it again.
            self.base.invalidate();
        }
        self.bury_pooled(p);
    }

    fn bury_pooled(&mut self, p: Pooled) {
        let _ = pidfd_send_signal(&p.pidfd, Signal::SIGKILL);
        if let (Some(cg), Some(slot)) = (p.cgroup, p.slot) {
            return self.bury_slot(cg, slot);
        }
        let now = Instant::now();
        self.graveyard.push(Grave {
            cgroup: None,
            mount_ns: None,
            reap: Some(p.init),
            since: now,
            next_try: now,
        });
    }

    /// Kill every pooled stub (launcher exit, or the daemon went away).
    fn drain_pools(&mut self) {
        let stubs: Vec<Pooled> = self
            .pools
            .values_mut()
            .flat_map(|p| p.stubs.drain(..))
            .collect();
        for p in stubs {
            self.bury_pooled(p);
        }
        let slots: Vec<(SandboxCgroup, PoolSlot)> = self
            .pools
            .values_mut()
            .flat_map(|p| p.warming.drain(..).chain(p.free.drain(..)))
            .collect();
        for (cg, slot) in slots {
            self.bury_slot(cg, slot);
        }
    }

    fn on_request(&mut self) {
        match self.ctrl.recv() {
            Ok(Some((Request::Spawn { id, spec }, _))) => self.spawn(id, &spec),
            // A reported sandbox is over (its init is exiting): nothing to
            // stop any more.
            Ok(Some((Request::Stop { id }, _))) => {
                if let Some(r) = self.running.get_mut(&id).filter(|r| !r.reported) {
                    terminate(r);
                }
            }
            Ok(Some((Request::Kill { id }, _))) => {
                if let Some(r) = self.running.get_mut(&id).filter(|r| !r.reported) {
                    kill_now(r);
                }
            }
            Ok(Some((Request::Prewarm { placement }, _))) => {
                if self.config.pool_size > 0 {
                    let pool = self
                        .pools
                        .entry(pool_key(placement.as_ref()))
                        .or_insert_with(|| Pool::new(placement));
                    // Fork the stubs now (each warms up on its own): a
                    // spawn right after this finds them, ready or not.
                    for _ in pool.stubs.len()..self.config.pool_size {
                        self.refill_one();
                    }
                }
            }
            Ok(None) | Err(_) => {
                // The daemon is gone: nobody will ever read an outcome.
                self.ctrl_open = false;
                for r in self.running.values_mut() {
                    kill_now(r);
                }
                self.drain_pools();
            }
        }
    }

    fn manager(&mut self, placement: &CgroupPlacement) -> Result<&CgroupManager, String> {
        let key = (
            placement.parent.clone(),
            placement.root.clone(),
            placement.base,
        );
        if !self.managers.contains_key(&key) {
            let config = CgroupConfig {
                parent: placement.parent.clone(),
                cgroup_root: placement.root.clone(),
                placement: placement.base,
                ..CgroupConfig::default()
            };
            let m = CgroupManager::new(config).map_err(|e| e.to_string())?;
            self.managers.insert(key.clone(), m);
        }
        self.managers
            .get(&key)
            .ok_or_else(|| "cgroup manager missing".to_string())
    }

    fn fail_spawn(&mut self, id: u64, started: Instant, error: String) {
        let outcome = Outcome {
            setup_error: Some(error),
            wall_time_ms: started.elapsed().as_millis() as u64,
            ..Outcome::default()
        };
        self.send(
            &Event::Exited {
                id,
                outcome: Box::new(outcome),
            },
            &[],
        );
    }

    /// A pooled stub for `spec`, if its placement has one that fits (no
    /// user namespace: its maps name the plugin's ids; a CPU limit needs a
    /// cgroup with the cpu controller). Registers the placement's pool, so
    /// it is filled for the next spawns.
    fn take_pooled(&mut self, spec: &SandboxSpec, prepared: &Prepared) -> Option<Pooled> {
        if self.config.pool_size == 0
            || spec.user_namespace
            || prepared.plan().spec_bind_count() > crate::channel::MAX_FDS
        {
            return None;
        }
        let base = prepared.plan().base_fingerprint();
        let pool = self
            .pools
            .entry(pool_key(spec.cgroup.as_ref()))
            .or_insert_with(|| Pool::new(spec.cgroup.clone()));
        // Inits built on other system trees, devices or /etc files than the
        // claim's (an upgrade replaced one) never fit again: they go, so the
        // pool refills with current ones.
        let (stale, current): (Vec<Pooled>, Vec<Pooled>) =
            pool.stubs.drain(..).partition(|p| p.base != base);
        pool.stubs = current;
        if !stale.is_empty() {
            tracing::info!(
                inits = stale.len(),
                "system trees, devices or /etc files changed; pooled inits replaced"
            );
            for p in stale {
                self.bury_pooled(p);
            }
        }
        let pool = self.pools.get_mut(&pool_key(spec.cgroup.as_ref()))?;
        // The cpu controller when a CPU limit is asked for.
        let fits = |p: &Pooled| {
            spec.limits.cpu_max.is_none()
                || p.cgroup
                    .as_ref()
                    .is_none_or(|cg| cg.has_controller(Controller::Cpu))
        };
        // The oldest ready stub, else the oldest still warming up.
        let i = pool
            .stubs
            .iter()
            .position(|p| p.ready && fits(p))
            .or_else(|| pool.stubs.iter().position(fits))?;
        Some(pool.stubs.remove(i))
    }

    /// `spec` prepared on the base plan [`BaseCache::get`] gives at `now`,
    /// with the launcher's compiled seccomp filters.
    fn prepare(&mut self, spec: &SandboxSpec, now: Instant) -> Result<Prepared, spawn::SpawnError> {
        let base = self.base.get(now)?;
        Prepared::on_base(spec, &mut self.seccomp_cache, base)
    }

    fn spawn(&mut self, id: u64, spec: &SandboxSpec) {
        let started = Instant::now();
        let mut trace = vec![point("launcher: request received")];
        let prepared = match self.prepare(spec, started) {
            Ok(p) => p,
            Err(e) => return self.fail_spawn(id, started, e.to_string()),
        };
        trace.push(point("launcher: prepared"));
        let limits = cgroup_limits(spec);
        let key = pool_key(spec.cgroup.as_ref());
        if self.config.pool_size > 0 && !spec.user_namespace {
            // Nothing ready or warming, but a free slot: re-warm it now
            // and claim its init as it warms up (far less to wait for than
            // a cold spawn).
            let now = Instant::now();
            if self.pools.get(&key).is_some_and(|p| {
                p.stubs.is_empty()
                    && p.warming.is_empty()
                    && self.short(p)
                    && p.free.iter().any(|(_, s)| s.next_try <= now)
            }) {
                self.refill(&key, now);
            }
            self.collect_warming(&key);
        }
        let prepared = match self.take_pooled(spec, &prepared) {
            None => prepared,
            Some(stub) => match self.claim(id, spec, prepared, stub, &limits, &mut trace) {
                Ok(()) => {
                    if let Some(pool) = self.pools.get_mut(&key) {
                        pool.hungry = !pool.stubs.iter().any(|p| p.ready);
                        let now = Instant::now();
                        pool.burst = pool.last_claim.is_some_and(|t| now - t < BURST_GAP);
                        pool.last_claim = Some(now);
                    }
                    self.raise_if_hungry(&key);
                    return;
                }
                Err(Some(prepared)) => *prepared,
                Err(None) => return,
            },
        };
        if let Some(pool) = self.pools.get(&pool_key(spec.cgroup.as_ref())) {
            tracing::debug!(
                sandbox = id,
                stubs = pool.stubs.len(),
                warming = pool.warming.len(),
                free = pool.free.len(),
                failures = pool.failures,
                "no pre-warmed init fits; cold spawn"
            );
        }
        // A cold sandbox opens the base sources itself and refuses any that
        // changed since the plan: not on a cached plan up to a second old
        // (an `ldconfig` meanwhile would fail its setup), on one resolved
        // now, which also refreshes the cache.
        let prepared = if self.base.resolved_at() == Some(started) {
            prepared
        } else {
            self.base.invalidate();
            match self.prepare(spec, Instant::now()) {
                Ok(p) => p,
                Err(e) => return self.fail_spawn(id, started, e.to_string()),
            }
        };
        self.spawn_cold(id, spec, &prepared, &limits, trace, started);
    }

    /// Hand the sandbox to a pre-warmed stub: limits on its cgroup first,
    /// then the prepared spec. `Err(Some(prepared))`: the claim message could
    /// not be sent (too large, stub gone); spawn cold instead. `Err(None)`:
    /// the spawn failed and was reported.
    fn claim(
        &mut self,
        id: u64,
        spec: &SandboxSpec,
        prepared: Prepared,
        stub: Pooled,
        limits: &CgroupLimits,
        trace: &mut Vec<TracePoint>,
    ) -> Result<(), Option<Box<Prepared>>> {
        let started = Instant::now();
        let mut stub = stub;
        // The slot's last init must be gone (it normally is, long since):
        // its task would count against this sandbox's `pids_max`.
        if let Some(slot) = stub.slot.as_mut()
            && let Some(pidfd) = slot.predecessor.take()
            && !exited_within(&pidfd, Duration::ZERO)
        {
            if !exited_within(&pidfd, PREDECESSOR_WAIT) {
                trace.push(point(PREDECESSOR_GAVE_UP));
                tracing::warn!("a pool slot's last init is still exiting; spawning cold");
                self.bury_pooled(stub);
                return Err(Some(Box::new(prepared)));
            }
            trace.push(point("launcher: waited for the slot's last init"));
        }
        // Back from SCHED_IDLE (pre-warm) to the launcher's own policy, so
        // the claimed stub runs like a cold one.
        let raised = match &self.policy {
            Some(policy) => policy.set_for(stub.init),
            None => spawn::SchedPolicy::current().and_then(|p| p.set_for(stub.init)),
        };
        if let Err(e) = raised {
            tracing::warn!(error = %e, "scheduling policy of a pre-warmed stub; spawning cold");
            self.bury_pooled(stub);
            return Err(Some(Box::new(prepared)));
        }
        // The stub's root was pivoted long ago: it gets the spec's bind
        // sources as detached mounts, checked here (device and inode).
        let trees = match crate::mounts::clone_spec_sources(prepared.plan()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "bind sources for a pre-warmed stub; spawning cold");
                self.bury_pooled(stub);
                return Err(Some(Box::new(prepared)));
            }
        };
        trace.push(point("launcher: spec bind sources cloned (open_tree)"));
        let raw: Vec<RawFd> = trees.iter().map(AsRawFd::as_raw_fd).collect();
        let msg = LauncherMsg::Claim(Box::new(prepared));
        let sent = stub.chan.send(&msg, &raw);
        drop(trees);
        if let Err(e) = sent {
            tracing::warn!(error = %e, "claiming a pre-warmed stub; spawning cold");
            self.bury_pooled(stub);
            return match msg {
                LauncherMsg::Claim(p) => Err(Some(p)),
                _ => Err(None),
            };
        }
        trace.push(point(if stub.ready {
            "launcher: claim sent"
        } else {
            "launcher: claim sent (stub still warming up)"
        }));
        // The limits, written while init attaches the spec's binds: init
        // creates the plugin only once `LimitsSet` came (it waits for it),
        // so no plugin code ever runs without them. A reused slot's cgroup
        // has the last sandbox's: only what differs is written. Then the
        // slot's counters are reset or recorded, so the stats are this
        // sandbox's own. On a failure init is killed before it gets there.
        let mut baseline = None;
        if let Some(cg) = &stub.cgroup {
            let set = match stub.slot.as_mut() {
                Some(slot) => cg
                    .change_limits(&slot.limits, limits)
                    .map(|()| slot.limits = limits.clone())
                    .and_then(|()| cg.begin_stats().map(Some)),
                None => cg.set_limits(limits).map(|()| None),
            };
            match set {
                Ok(b) => baseline = b,
                Err(e) => {
                    self.bury_pooled(stub);
                    self.fail_spawn(id, started, format!("cgroup: {e}"));
                    return Err(None);
                }
            }
        }
        let reused = stub.slot.as_ref().is_some_and(|s| s.uses > 0);
        if let Some(slot) = stub.slot.as_mut() {
            slot.uses += 1;
        }
        if let Err(e) = stub.chan.send(&LauncherMsg::LimitsSet, &[]) {
            self.bury_pooled(stub);
            self.fail_spawn(id, started, format!("claim: {e}"));
            return Err(None);
        }
        trace.push(point(if reused {
            "launcher: limits set on reused slot"
        } else {
            "launcher: limits set on pooled cgroup"
        }));
        let Pooled {
            init: pid,
            pidfd,
            chan,
            stdout,
            stderr,
            cgroup,
            trace: prewarm,
            mount_ns,
            slot,
            ..
        } = stub;
        trace.extend(prewarm);
        self.send(
            &Event::Spawned { id },
            &[stdout.as_raw_fd(), stderr.as_raw_fd()],
        );
        drop((stdout, stderr));
        self.running.insert(
            id,
            Running::new(
                spec,
                started,
                StubStart {
                    stub: pid,
                    pidfd,
                    chan,
                    cgroup,
                    attach_error: None,
                    pooled: true,
                    mount_ns,
                    trace: std::mem::take(trace),
                    slot: slot.map(|s| (pool_key(spec.cgroup.as_ref()), s)),
                    baseline,
                },
            ),
        );
        Ok(())
    }

    /// The cold path: cgroup created, stub forked and attached now.
    fn spawn_cold(
        &mut self,
        id: u64,
        spec: &SandboxSpec,
        prepared: &Prepared,
        limits: &CgroupLimits,
        mut trace: Vec<TracePoint>,
        started: Instant,
    ) {
        let cgroup = match &spec.cgroup {
            None => None,
            Some(placement) => {
                let name = format!("{}-{}-{id}", sanitize(&spec.name), std::process::id());
                match self
                    .manager(placement)
                    .and_then(|m| m.create(&name, limits).map_err(|e| e.to_string()))
                {
                    Ok(cg) => Some(cg),
                    Err(e) => return self.fail_spawn(id, started, format!("cgroup: {e}")),
                }
            }
        };
        trace.push(point("launcher: cgroup created"));
        let forked = match spawn::fork_sandbox(prepared) {
            Ok(f) => f,
            Err(e) => return self.fail_spawn(id, started, e.to_string()),
        };
        trace.push(point("launcher: stub forked"));
        let Forked {
            pid: stub,
            channel,
            stdout,
            stderr,
        } = forked;
        let pidfd = match pidfd_open(stub) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = kill(stub, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(stub, None);
                return self.fail_spawn(id, started, format!("pidfd_open: {e:?}"));
            }
        };
        // Attach the stub now. On a v1 host the first cgroup.procs write
        // after an idle period waits for an RCU grace period (10-15 ms);
        // this one overlaps the stub's unshare and init's mount setup, and
        // leaves the lock warm for init's own attach (see on_child_message).
        let attach_error = match &cgroup {
            Some(cg) => cg
                .attach(stub.as_raw())
                .err()
                .map(|e| format!("cgroup attach: {e}")),
            None => None,
        };
        if attach_error.is_some() {
            let _ = kill(stub, Signal::SIGKILL);
        }
        trace.push(point("launcher: stub attached"));
        self.send(
            &Event::Spawned { id },
            &[stdout.as_raw_fd(), stderr.as_raw_fd()],
        );
        drop((stdout, stderr));
        self.running.insert(
            id,
            Running::new(
                spec,
                started,
                StubStart {
                    stub,
                    pidfd,
                    chan: channel,
                    cgroup,
                    attach_error,
                    pooled: false,
                    mount_ns: None,
                    trace,
                    slot: None,
                    baseline: None,
                },
            ),
        );
    }

    fn on_child_message(&mut self, id: u64) {
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        let Some(chan) = &r.chan else { return };
        let msg = chan.recv();
        let mut started: Option<(Event, Vec<OwnedFd>)> = None;
        let mut report_now = false;
        match msg {
            Ok(Some((ChildMsg::InitForked { pid }, _))) => {
                r.trace.push(point("launcher: init pid received"));
                let init = Pid::from_raw(pid);
                r.init = Some(init);
                r.init_pidfd = pidfd_open(init).ok();
                // Hold the sandbox's mount namespace, so its teardown (an
                // RCU grace period) happens after the exit is reported.
                r.mount_ns = std::fs::File::open(format!("/proc/{}/ns/mnt", r.stub)).ok();
                if !r.pooled {
                    // Init may have been forked before the stub's attach
                    // took effect: attach it too (fast now), then let it go
                    // on. (A pooled stub joined its cgroup before it forked
                    // init; its init does not wait.)
                    let attached = match &r.cgroup {
                        Some(cg) => cg.attach(pid).map_err(|e| e.to_string()),
                        None => Ok(()),
                    };
                    r.trace.push(point("launcher: init attached"));
                    match attached {
                        Ok(()) => {
                            if chan.send(&LauncherMsg::Attached, &[]).is_err() {
                                kill_now(r);
                            }
                        }
                        Err(e) => {
                            r.attach_error = Some(format!("cgroup attach: {e}"));
                            kill_now(r);
                        }
                    }
                }
            }
            Ok(Some((ChildMsg::Failed(e), _))) => {
                r.outcome.setup_error.get_or_insert(e.to_string());
                r.setting_up = false;
            }
            Ok(Some((ChildMsg::NeedIdMaps, _))) => {
                let (uid, gid) = r.ids;
                let reply = match crate::namespaces::write_id_maps(
                    std::path::Path::new("/proc"),
                    r.stub.as_raw(),
                    uid,
                    gid,
                ) {
                    Ok(()) => LauncherMsg::IdMapsWritten,
                    Err(e) => LauncherMsg::IdMapsFailed(e),
                };
                if chan.send(&reply, &[]).is_err() {
                    kill_now(r);
                }
            }
            Ok(Some((
                ChildMsg::Executing {
                    landlock,
                    seccomp_notify,
                    trace,
                },
                fds,
            ))) => {
                r.trace.extend(trace);
                r.trace.push(point("launcher: executing received"));
                r.setting_up = false;
                r.outcome.landlock = landlock.clone();
                r.outcome.seccomp_notify = seccomp_notify;
                let init_pid = r.init.map(Pid::as_raw).unwrap_or(0);
                started = Some((
                    Event::Started {
                        id,
                        init_pid,
                        landlock,
                        seccomp_notify,
                    },
                    fds,
                ));
            }
            Ok(Some((
                ChildMsg::PluginEnded {
                    exit_code,
                    signal,
                    at_ns,
                    all_gone,
                },
                _,
            ))) => {
                r.outcome.exit_code = exit_code;
                r.outcome.signal = signal;
                r.plugin_ended = true;
                r.trace.push(TracePoint {
                    step: "init: plugin reaped".into(),
                    ns: at_ns,
                });
                // With a cgroup the stats are final now: report without
                // waiting for init's own exit (it follows; the sandbox is
                // released then). Without one, the CPU time comes from the
                // stub's rusage at its exit.
                if all_gone && r.cgroup.is_some() && !r.reported {
                    r.trace.push(point("launcher: plugin end received"));
                    report_now = true;
                }
            }
            Ok(Some((ChildMsg::PoolReady { .. }, _))) => {}
            Ok(None) => r.chan = None,
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "bad message from sandbox");
                r.chan = None;
            }
        }
        if let Some((event, fds)) = started {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            self.send(&event, &raw);
        }
        if report_now {
            self.report(id, None, None);
            self.early_returns.push(id);
        }
    }

    fn on_stub_exit(&mut self, id: u64) {
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        // A slot's init is its zygote's child (the zygote reaps it): its
        // pidfd said it exited; its CPU time comes from the cgroup.
        let (status, usage) = if r.in_slot {
            (None, None)
        } else {
            match wait4_nohang(r.stub) {
                Ok(Some((status, usage))) => (Some(status), Some(usage)),
                Ok(None) | Err(Errno::EINTR) => return,
                Err(e) => {
                    tracing::error!(sandbox = id, error = ?e, "wait4 on sandbox stub");
                    (None, None)
                }
            }
        };
        r.trace.push(point(if r.pooled {
            "launcher: init reaped"
        } else {
            "launcher: stub reaped"
        }));
        // Every writer of the setup channel is dead by now (init's exit waits
        // for its whole pid namespace): drain what is left.
        if let Some(chan) = r.chan.take() {
            while let Ok(Some((msg, _))) = chan.recv() {
                match msg {
                    ChildMsg::PluginEnded {
                        exit_code,
                        signal,
                        at_ns,
                        ..
                    } if !r.plugin_ended => {
                        r.outcome.exit_code = exit_code;
                        r.outcome.signal = signal;
                        r.plugin_ended = true;
                        r.trace.push(TracePoint {
                            step: "init: plugin reaped".into(),
                            ns: at_ns,
                        });
                    }
                    ChildMsg::Failed(e) => {
                        r.outcome.setup_error.get_or_insert(e.to_string());
                    }
                    // Not read before the exit (same poll round): keep what
                    // it reports (the sandbox is over; no `Started` now).
                    ChildMsg::Executing {
                        landlock,
                        seccomp_notify,
                        trace,
                    } if !r.reported => {
                        r.trace.extend(trace);
                        r.outcome.landlock = landlock;
                        r.outcome.seccomp_notify = seccomp_notify;
                    }
                    _ => {}
                }
            }
        }
        if !r.reported {
            self.report(id, status, usage);
        }
        let Some(mut r) = self.running.remove(&id) else {
            return;
        };
        let now = Instant::now();
        // A slot goes back to the pool only after a normal end and when
        // nothing but its zygote is left in its cgroup; any other end
        // buries it whole (zygote included).
        let cgroup = match (r.slot.take(), r.cgroup.take()) {
            (Some((key, mut slot)), Some(cg)) => {
                let keep = self.keep_slot(r.abnormal, &key, &cg, &slot, None);
                match (keep, self.pools.get_mut(&key)) {
                    (Ok(()), Some(pool)) => {
                        slot.freed = now;
                        slot.next_try = now;
                        pool.free.push((cg, slot));
                    }
                    (why, _) => {
                        tracing::debug!(
                            sandbox = id,
                            reason = why.err().unwrap_or_default(),
                            "pool slot buried after its sandbox"
                        );
                        self.bury_slot(cg, slot);
                    }
                }
                None
            }
            (_, cg) => cg,
        };
        self.graveyard.push(Grave {
            cgroup,
            mount_ns: r.mount_ns.take(),
            reap: None,
            since: now,
            next_try: now,
        });
    }

    /// A sandbox in a pool slot ended normally and its init reported every
    /// plugin process gone: the slot goes back to the pool now, while init
    /// still exits (pid namespace teardown, 0.5-1 ms here), so its next
    /// init can start warming up that much earlier. Only when nothing but
    /// the zygote and that init is left in the cgroup; the init's pidfd
    /// goes along ([`PoolSlot::predecessor`]). Otherwise the slot stays
    /// with the sandbox, for [`Server::on_stub_exit`].
    fn return_slot_early(&mut self, id: u64) {
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        if r.abnormal.is_some() || r.slot.is_none() {
            return;
        }
        let Ok(predecessor) = r.pidfd.try_clone() else {
            return;
        };
        let (Some((key, mut slot)), Some(cg)) = (r.slot.take(), r.cgroup.take()) else {
            return;
        };
        let (abnormal, init) = (r.abnormal, r.stub.as_raw());
        match self.keep_slot(abnormal, &key, &cg, &slot, Some(init)) {
            Ok(()) => {
                let now = Instant::now();
                slot.freed = now;
                slot.next_try = now;
                slot.predecessor = Some(predecessor);
                if let Some(pool) = self.pools.get_mut(&key) {
                    pool.free.push((cg, slot));
                }
            }
            Err(_) => {
                // Decided again (and logged) at init's exit.
                if let Some(r) = self.running.get_mut(&id) {
                    r.slot = Some((key, slot));
                    r.cgroup = Some(cg);
                }
            }
        }
    }

    /// Whether a slot whose sandbox ended may go back to the pool: a
    /// normal end, the launcher not closing, nothing in the cgroup but the
    /// zygote (and `init`, the sandbox's init, which reported every plugin
    /// process gone and is exiting), the idle-slot cap, and the limits
    /// rewritten to the slot's record.
    fn keep_slot(
        &self,
        abnormal: Option<&'static str>,
        key: &PoolKey,
        cg: &SandboxCgroup,
        slot: &PoolSlot,
        init: Option<i32>,
    ) -> Result<(), String> {
        let size = self.config.pool_size;
        let pids = cg.pids();
        let ours = |p: &i32| *p == slot.zygote.as_raw() || Some(*p) == init;
        if !self.ctrl_open {
            Err("the launcher is closing".to_owned())
        } else if let Some(why) = abnormal {
            Err(why.to_owned())
        } else if !pids.contains(&slot.zygote.as_raw()) || !pids.iter().all(ours) {
            Err(format!("cgroup holds {pids:?}, zygote {}", slot.zygote))
        } else {
            match self.pools.get(key) {
                None => Err("no pool".to_owned()),
                // Idle slots (with an init ready or warming up, or
                // free) are capped at twice the pool size: a free
                // slot not re-warmed yet (its last sandbox's tmpfs
                // pages are still being released) does not make
                // this one surplus; the pool needs both soon.
                Some(pool)
                    if pool.stubs.len() + pool.warming.len() + pool.free.len() >= 2 * size =>
                {
                    Err(format!(
                        "{} ready or warming inits and {} free slots kept already",
                        pool.stubs.len() + pool.warming.len(),
                        pool.free.len()
                    ))
                }
                // Its limits may have been changed live
                // (`cgroup::live`) since the claim: every file is
                // rewritten to what `slot.limits` records, so the
                // next claim (which writes only what differs from
                // that record) leaks nothing.
                Some(_) => cg
                    .rewrite_limits(&slot.limits)
                    .map_err(|e| format!("limits: {e}")),
            }
        }
    }

    /// Report sandbox `id`'s outcome: when its init said every plugin
    /// process is gone ([`ChildMsg::PluginEnded`], sandboxes with a cgroup:
    /// the stats are final then, so the report does not wait for init's own
    /// exit), or when init (or the stub) exited. `status`/`usage`: the
    /// launcher's child's, when it was reaped.
    fn report(&mut self, id: u64, status: Option<libc::c_int>, usage: Option<libc::rusage>) {
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        r.reported = true;
        let o = &mut r.outcome;
        if o.setup_error.is_none() {
            o.setup_error = r.attach_error.take();
        }
        if o.exit_code.is_none() && o.signal.is_none() && o.setup_error.is_none() {
            // Init did not report: it was killed (timeout escalation, OOM,
            // stop). A pooled init is the launcher's child itself; a cold
            // stub exits with 128+N for init's signal N.
            if let Some(status) = status.filter(|s| !libc::WIFSIGNALED(*s)) {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::SIGKILL
                };
                if code > 128 {
                    o.signal = Some(code - 128);
                } else {
                    o.exit_code = Some(code);
                }
            } else {
                // Killed (a pooled init is the launcher's child or the
                // zygote's; unknown status counts as SIGKILL).
                o.signal = Some(status.map_or(libc::SIGKILL, |s| libc::WTERMSIG(s)));
            }
        }
        o.wall_time_ms = r.started.elapsed().as_millis() as u64;
        let rusage_ns =
            |t: libc::timeval| (t.tv_sec as u64) * 1_000_000_000 + (t.tv_usec as u64) * 1000;
        o.cpu_time_ns = usage.map_or(0, |u| rusage_ns(u.ru_utime) + rusage_ns(u.ru_stime));
        if let Some(cg) = &r.cgroup {
            let stats = match r.baseline.as_mut() {
                Some(base) => cg.stats_since(base),
                None => cg.stats(),
            };
            match stats {
                Ok(stats) => {
                    o.oom_killed = stats.oom_kills > 0;
                    o.pids_limit_hit = stats.pids_limit_hits > 0;
                    o.peak_memory_bytes = stats.memory_peak;
                    if stats.cpu_usage_ns > 0 {
                        o.cpu_time_ns = stats.cpu_usage_ns;
                    }
                }
                Err(e) => tracing::warn!(sandbox = id, error = %e, "cgroup stats"),
            }
        }
        r.trace.push(point("launcher: cgroup stats read"));
        // The outcome is final (no process of the plugin is left): report
        // it first; the now empty cgroup and the mount namespace are
        // released when the launcher is idle (the launcher exits only after
        // that, so `Launcher`'s drop still waits for it).
        let mut trace = std::mem::take(&mut r.trace);
        trace.sort_by_key(|p| p.ns);
        r.outcome.spawn_trace = trace;
        let o = &r.outcome;
        r.abnormal = if r.dirty {
            Some("stopped or killed by the launcher")
        } else if !r.plugin_ended {
            Some("init did not report the plugin's end")
        } else if o.setup_error.is_some() {
            Some("setup error")
        } else if o.timed_out {
            Some("wall timeout")
        } else if o.oom_killed {
            Some("OOM kill")
        } else if o.pids_limit_hit {
            Some("pids limit hit")
        } else if !r.baseline.as_ref().is_some_and(StatsBaseline::peak_reset) {
            Some("peak memory not reset")
        } else {
            None
        };
        // No more timers: the sandbox is over.
        r.deadline = None;
        r.kill_at = None;
        let outcome = Box::new(std::mem::take(&mut r.outcome));
        self.send(&Event::Exited { id, outcome }, &[]);
        // The caller's wake-up (a sync one: it is often placed on this
        // CPU) comes before the rest of the launcher's work (background:
        // the slot's early return, refills): one yield, 0.1-0.2 ms less to
        // the caller back-to-back (docs/sandbox.md "Session 7").
        let _ = nix::sched::sched_yield();
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        for r in self.running.values_mut() {
            if r.kill_at.is_some_and(|t| t <= now) {
                r.kill_at = None;
                kill_now(r);
            } else if r.deadline.is_some_and(|t| t <= now) {
                r.deadline = None;
                r.outcome.timed_out = true;
                terminate(r);
            }
        }
    }
}

/// SIGTERM to the plugin through init (which forwards it); kill after grace.
fn terminate(r: &mut Running) {
    r.deadline = None;
    r.dirty = true;
    match &r.init_pidfd {
        Some(init) if r.outcome.setup_error.is_none() => {
            let _ = pidfd_send_signal(init, Signal::SIGTERM);
            r.kill_at = Some(Instant::now() + r.grace);
        }
        _ => kill_now(r),
    }
}

/// Kill the whole sandbox: the cgroup if there is one, init (which takes its
/// pid namespace down) and the stub (unreaped, so its pid cannot be reused).
fn kill_now(r: &mut Running) {
    r.deadline = None;
    r.dirty = true;
    r.kill_at = None;
    if let Some(Err(e)) = r.cgroup.as_ref().map(SandboxCgroup::kill_all) {
        tracing::warn!(error = %e, "cgroup kill");
    }
    if let Some(init) = &r.init_pidfd {
        let _ = pidfd_send_signal(init, Signal::SIGKILL);
    }
    if !r.pooled {
        // The cold stub: the launcher's unreaped child, so its pid is
        // still its own (a pooled init was signalled through its pidfd;
        // a slot's init is not the launcher's child).
        let _ = kill(r.stub, Signal::SIGKILL);
    }
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: Signal) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo (NULL) and no flags.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}
