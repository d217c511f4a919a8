//! The supervisor: one sandboxed instance per started plugin, its API
//! socket, its output, restarts, crash loops and the watchdog.

use serde::{Deserialize, Serialize};

/// Where a plugin is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// No instance.
    Stopped,
    /// The sandbox is being set up.
    Starting,
    /// The instance runs.
    Running,
    /// SIGTERM sent, waiting for the end.
    Stopping,
    /// Ended with a failure; restarting after a delay.
    Backoff,
    /// Ended with a failure and will not restart (policy or crash loop).
    Failed,
}

/// The supervisor's view of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    /// Lifecycle state.
    pub state: PluginState,
    /// The running instance id.
    pub instance: Option<String>,
    /// Host pid of the sandbox's init.
    pub pid: Option<i32>,
    /// When the instance started (ms since the epoch).
    pub started_at_ms: Option<i64>,
    /// The agent stream is connected.
    pub agent_connected: bool,
    /// Milliseconds since the last heartbeat, if any arrived.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// Failures within the crash-loop window.
    pub recent_failures: u32,
    /// How the last instance ended ("exited with status 1", "killed by
    /// the watchdog", "OOM kill").
    pub last_exit: Option<String>,
    /// Tasks running on it.
    pub tasks_running: usize,
}

impl Default for RuntimeStatus {
    fn default() -> Self {
        RuntimeStatus {
            state: PluginState::Stopped,
            instance: None,
            pid: None,
            started_at_ms: None,
            agent_connected: false,
            last_heartbeat_ms_ago: None,
            restarts: 0,
            recent_failures: 0,
            last_exit: None,
            tasks_running: 0,
        }
    }
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// The plugin's stdout.
    Stdout,
    /// The plugin's stderr.
    Stderr,
    /// A line the supervisor added (started, exited, lines dropped).
    Supervisor,
}

/// One line of a plugin's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Per-plugin sequence number (gaps = lines dropped by the rate bound
    /// or a lagging follower).
    pub seq: u64,
    /// When it was read (ms since the epoch).
    pub ts_ms: i64,
    /// Stream.
    pub stream: LogStream,
    /// The instance that wrote it.
    pub instance: String,
    /// The text: UTF-8 (lossy), control characters shown as `\xNN`, cut to
    /// `logs.max_line_bytes`.
    pub line: String,
}

// ------------------------------------------------------------- machinery

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hutch_api::audit::{Actor, AuditEvent};
use hutch_api::authz::ScopeSet;
use hutch_api::limits::TokenBucket;
use hutch_api::server::{ApiCore, InstanceSpec, TaskHub};
use hutch_sandbox::launcher::{Event, Launcher};
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::seccomp::DenialMonitor;
use hutch_sandbox::spec::SandboxSpec;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::{Config, LogsConfig, RestartPolicy};
use crate::daemon::{DaemonError, LogFollow, now_ms};
use crate::registry::{PluginLimits, PluginRecord, Registry};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

type Routed = (Event, Vec<OwnedFd>);

/// Drives the single-threaded launcher process from the async daemon: the
/// launcher's control socket is watched with `AsyncFd`, and every event is
/// routed to the task that spawned that sandbox.
pub(crate) struct LauncherDriver {
    launcher: Mutex<Option<Launcher>>,
    routes: Mutex<HashMap<u64, mpsc::UnboundedSender<Routed>>>,
    gone: AtomicBool,
    gone_tx: watch::Sender<bool>,
}

impl LauncherDriver {
    /// Takes the launcher and starts the event router thread.
    pub fn start(launcher: Launcher) -> Result<Arc<LauncherDriver>, DaemonError> {
        let fd = launcher
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| DaemonError::internal("dup launcher socket", e))?;
        let me = Arc::new(LauncherDriver {
            launcher: Mutex::new(Some(launcher)),
            routes: Mutex::new(HashMap::new()),
            gone: AtomicBool::new(false),
            gone_tx: watch::channel(false).0,
        });
        let router = me.clone();
        std::thread::Builder::new()
            .name("launcher-events".into())
            .spawn(move || route_events(&router, &fd))
            .map_err(|e| DaemonError::internal("start launcher event thread", e))?;
        Ok(me)
    }

    /// Asks for a sandbox; its events arrive on the returned receiver (which
    /// ends after `Exited`, or when the launcher is gone).
    pub fn spawn(
        &self,
        spec: &SandboxSpec,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Routed>), DaemonError> {
        let mut guard = lock(&self.launcher);
        let launcher = guard
            .as_mut()
            .ok_or_else(|| DaemonError::Internal("the sandbox launcher is shut down".into()))?;
        if self.gone.load(Ordering::SeqCst) {
            return Err(DaemonError::Internal("the sandbox launcher exited".into()));
        }
        let id = launcher
            .spawn(spec)
            .map_err(|e| DaemonError::internal("spawn sandbox", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Registered while the launcher lock is held: the router receives
        // under the same lock, so no event of `id` can come before this.
        lock(&self.routes).insert(id, tx);
        Ok((id, rx))
    }

    /// SIGTERM, grace, cgroup kill.
    pub fn stop(&self, id: u64) {
        if let Some(l) = lock(&self.launcher).as_ref()
            && let Err(e) = l.stop(id)
        {
            tracing::error!(sandbox = id, error = %e, "stop sandbox");
        }
    }

    /// Cgroup kill now.
    pub fn kill(&self, id: u64) {
        if let Some(l) = lock(&self.launcher).as_ref()
            && let Err(e) = l.kill(id)
        {
            tracing::error!(sandbox = id, error = %e, "kill sandbox");
        }
    }

    /// Whether the launcher process is gone (it died, or was shut down).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Resolves when the launcher is gone.
    pub async fn wait_gone(&self) {
        let mut rx = self.gone_tx.subscribe();
        let _ = rx.wait_for(|g| *g).await;
    }

    /// Closes the launcher (it kills what is left and exits) and waits for it.
    pub async fn shutdown(&self) {
        let l = lock(&self.launcher).take();
        if let Some(l) = l {
            let _ = tokio::task::spawn_blocking(move || drop(l)).await;
        }
    }
}

fn event_id(e: &Event) -> u64 {
    match e {
        Event::Spawned { id } | Event::Started { id, .. } | Event::Exited { id, .. } => *id,
    }
}

/// The router thread: waits (without holding the lock) until the launcher
/// socket is readable, then receives one event under the launcher lock and
/// hands it to the sandbox's task. Ends when the launcher is gone or closed.
fn route_events(me: &LauncherDriver, fd: &OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "poll launcher socket");
                break;
            }
        }
        let got = {
            let l = lock(&me.launcher);
            match l.as_ref() {
                Some(l) => l.recv(),
                None => break,
            }
        };
        match got {
            Ok((event, fds)) => {
                let id = event_id(&event);
                let exited = matches!(event, Event::Exited { .. });
                let tx = {
                    let mut routes = lock(&me.routes);
                    if exited {
                        routes.remove(&id)
                    } else {
                        routes.get(&id).cloned()
                    }
                };
                match tx {
                    Some(tx) => {
                        let _ = tx.send((event, fds));
                    }
                    None => tracing::warn!(sandbox = id, "launcher event for an unknown sandbox"),
                }
            }
            Err(e) => {
                if lock(&me.launcher).is_some() {
                    tracing::error!(error = %e, "the sandbox launcher is gone");
                }
                break;
            }
        }
    }
    me.gone.store(true, Ordering::SeqCst);
    lock(&me.routes).clear();
    me.gone_tx.send_replace(true);
}

// ------------------------------------------------------------------ logs

/// A plugin's bounded log ring with live followers.
pub(crate) struct LogRing {
    lines: Mutex<(VecDeque<LogLine>, u64)>,
    tx: broadcast::Sender<LogLine>,
    cap: usize,
    plugin: String,
}

impl LogRing {
    fn new(plugin: &str, cap: usize) -> LogRing {
        LogRing {
            lines: Mutex::new((VecDeque::with_capacity(cap.min(1024)), 0)),
            tx: broadcast::channel(1024).0,
            cap: cap.max(1),
            plugin: plugin.to_owned(),
        }
    }

    pub fn push(&self, stream: LogStream, instance: &str, line: String) {
        let entry = {
            let mut g = lock(&self.lines);
            g.1 += 1;
            let entry = LogLine {
                seq: g.1,
                ts_ms: now_ms(),
                stream,
                instance: instance.to_owned(),
                line,
            };
            if g.0.len() >= self.cap {
                g.0.pop_front();
            }
            g.0.push_back(entry.clone());
            entry
        };
        let stream_name = match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Supervisor => "supervisor",
        };
        tracing::info!(target: "hutch::plugin", plugin = %self.plugin, instance, stream = stream_name, "{}", entry.line);
        let _ = self.tx.send(entry);
    }

    pub fn follow(&self, tail: usize) -> LogFollow {
        let g = lock(&self.lines);
        let follow = self.tx.subscribe();
        let skip = g.0.len().saturating_sub(tail);
        LogFollow {
            lines: g.0.iter().skip(skip).cloned().collect(),
            follow,
        }
    }
}

/// Text safe for a terminal and a log: lossy UTF-8, control characters and
/// bidirectional overrides shown as escapes, cut to `max` bytes.
pub fn neutralise(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if (c.is_control() && c != '\t') || bidi {
            let code = u32::from(c);
            if code < 0x100 {
                out.push_str(&format!("\\x{code:02x}"));
            } else {
                out.push_str(&format!("\\u{{{code:x}}}"));
            }
        } else {
            out.push(c);
        }
        if out.len() >= max {
            let mut cut = max;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("…[cut]");
            break;
        }
    }
    out
}

/// Reads one output pipe of an instance into the ring, line by line, with
/// the rate and size bounds of `[logs]`.
async fn pump(
    ring: Arc<LogRing>,
    fd: OwnedFd,
    stream: LogStream,
    instance: String,
    cfg: LogsConfig,
) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(plugin = %ring.plugin, error = %e, "plugin output pipe");
            return;
        }
    };
    let bucket = TokenBucket::new(f64::from(cfg.lines_per_sec), cfg.burst_lines);
    let mut dropped: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    let emit = |line: &[u8], dropped: &mut u64| {
        if bucket.try_take() {
            if *dropped > 0 {
                ring.push(
                    LogStream::Supervisor,
                    &instance,
                    format!("{} lines dropped (over logs.lines_per_sec)", *dropped),
                );
                *dropped = 0;
            }
            ring.push(stream, &instance, neutralise(line, cfg.max_line_bytes));
        } else {
            *dropped += 1;
        }
    };
    loop {
        // While lines are being dropped, a quiet second reports the count
        // (a flood followed by silence must not hide it until the end).
        let read = if dropped > 0 {
            match tokio::time::timeout(Duration::from_secs(1), rx.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    ring.push(
                        LogStream::Supervisor,
                        &instance,
                        format!("{dropped} lines dropped (over logs.lines_per_sec)"),
                    );
                    dropped = 0;
                    continue;
                }
            }
        } else {
            rx.read(&mut buf).await
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                if !skipping {
                    emit(&line, &mut dropped);
                }
                skipping = false;
                line.clear();
            } else if !skipping {
                line.push(b);
                if line.len() > cfg.max_line_bytes {
                    emit(&line, &mut dropped);
                    line.clear();
                    skipping = true;
                }
            }
        }
    }
    if !line.is_empty() && !skipping {
        emit(&line, &mut dropped);
    }
    if dropped > 0 {
        ring.push(
            LogStream::Supervisor,
            &instance,
            format!("{dropped} lines dropped (over logs.lines_per_sec)"),
        );
    }
}

// ------------------------------------------------------------- the slots

/// A running instance, as tasks see it.
#[derive(Debug)]
pub(crate) struct LiveInstance {
    pub instance_id: String,
    pub version: String,
    pub hub: TaskHub,
    /// The sandbox's spec name (its cgroup is named after it).
    sandbox_name: String,
    /// The limits its cgroup has now (set at spawn, changed live).
    limits: Mutex<PluginLimits>,
}

/// What [`Supervisor::apply_limits`] did to a running instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveLimitsChange {
    /// The instance changed.
    pub instance: String,
    /// The cgroup files written and their values (empty when the failure
    /// came before any write).
    pub written: Vec<hutch_sandbox::cgroup::live::Written>,
    /// Why it failed (some files may have been written before).
    pub error: Option<String>,
}

impl LiveLimitsChange {
    /// The change as audit details.
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "instance": self.instance,
            "applied": self.error.is_none(),
            "written": self.written.iter().map(|w| serde_json::json!({
                "file": w.path, "value": w.value,
            })).collect::<Vec<_>>(),
            "error": self.error,
        })
    }
}

enum Control {
    /// Kill the current instance (task wall timeout escalation).
    Kill(String),
    /// Skip a restart delay.
    Wake,
}

/// One plugin's supervision state.
pub(crate) struct Slot {
    id: String,
    desired: watch::Sender<bool>,
    status: watch::Sender<RuntimeStatus>,
    /// (attempt number, `None` once running or `Some(why)` if it never ran).
    attempts: watch::Sender<(u64, Option<String>)>,
    instance: watch::Sender<Option<Arc<LiveInstance>>>,
    control: mpsc::UnboundedSender<Control>,
    logs: Arc<LogRing>,
    failures: Mutex<VecDeque<Instant>>,
    removed: AtomicBool,
    /// Last task event from the plugin (a sign of life for the watchdog).
    activity: Mutex<Option<Instant>>,
}

impl Slot {
    fn set_state(&self, state: PluginState) {
        self.status.send_modify(|s| s.state = state);
    }
}

/// Why an instance ended.
#[derive(Debug)]
struct InstanceEnd {
    requested_stop: bool,
    failed: bool,
    summary: String,
    ran_for: Duration,
}

/// The supervisor of every plugin.
pub(crate) struct Supervisor {
    pub driver: Arc<LauncherDriver>,
    core: ApiCore,
    registry: Registry,
    config: Arc<RwLock<Arc<Config>>>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Kill switch engaged or shutting down: nothing starts.
    refusing: AtomicBool,
    refusal: Mutex<String>,
}

impl Supervisor {
    pub fn new(
        driver: Arc<LauncherDriver>,
        core: ApiCore,
        registry: Registry,
        config: Arc<RwLock<Arc<Config>>>,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            driver,
            core,
            registry,
            config,
            slots: Mutex::new(HashMap::new()),
            refusing: AtomicBool::new(false),
            refusal: Mutex::new(String::new()),
        })
    }

    fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Refuse (`Some(why)`) or allow (`None`) starting instances.
    pub fn set_refusing(&self, why: Option<String>) {
        *lock(&self.refusal) = why.clone().unwrap_or_default();
        self.refusing.store(why.is_some(), Ordering::SeqCst);
    }

    fn refusal(&self) -> Option<String> {
        self.refusing
            .load(Ordering::SeqCst)
            .then(|| lock(&self.refusal).clone())
    }

    async fn audit(&self, ev: AuditEvent) {
        if let Err(e) = self.core.audit().record(ev).await {
            tracing::error!(error = %e, "audit a supervisor event");
        }
    }

    /// The slot of `id`, created (with its loop) on first use.
    fn slot(self: &Arc<Self>, id: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(id) {
            return s.clone();
        }
        let (control, control_rx) = mpsc::unbounded_channel();
        let slot = Arc::new(Slot {
            id: id.to_owned(),
            desired: watch::channel(false).0,
            status: watch::channel(RuntimeStatus::default()).0,
            attempts: watch::channel((0, None)).0,
            instance: watch::channel(None).0,
            control,
            logs: Arc::new(LogRing::new(id, self.config().logs.ring_lines)),
            failures: Mutex::new(VecDeque::new()),
            removed: AtomicBool::new(false),
            activity: Mutex::new(None),
        });
        slots.insert(id.to_owned(), slot.clone());
        tokio::spawn(slot_loop(self.clone(), slot.clone(), control_rx));
        slot
    }

    fn existing(&self, id: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(id).cloned()
    }

    /// Runtime status of `id` (stopped if never started).
    pub fn status(&self, id: &str) -> RuntimeStatus {
        let Some(slot) = self.existing(id) else {
            return RuntimeStatus::default();
        };
        let mut s = slot.status.borrow().clone();
        if let Some(live) = slot.instance.borrow().as_ref() {
            s.agent_connected = live.hub.agent_connected();
            s.last_heartbeat_ms_ago = live
                .hub
                .last_heartbeat()
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        s
    }

    /// Count of plugins with a live instance.
    pub fn running_count(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|s| s.instance.borrow().is_some())
            .count()
    }

    /// Start `id` and wait until its sandbox runs (or failed to).
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), DaemonError> {
        if let Some(why) = self.refusal() {
            return Err(DaemonError::Conflict(why));
        }
        let slot = self.slot(id);
        if slot.instance.borrow().is_some() && *slot.desired.borrow() {
            return Ok(());
        }
        let mut attempts = slot.attempts.subscribe();
        let before = attempts.borrow_and_update().0;
        slot.desired.send_replace(true);
        let _ = slot.control.send(Control::Wake);
        let wait = attempts.wait_for(|(n, _)| *n > before);
        let grace = self.config().supervisor.agent_connect_timeout + Duration::from_secs(30);
        match tokio::time::timeout(grace, wait).await {
            Ok(Ok(a)) => match &a.1 {
                None => Ok(()),
                Some(why) => Err(DaemonError::Conflict(format!(
                    "plugin {id} did not start: {why}"
                ))),
            },
            Ok(Err(_)) => Err(DaemonError::Internal(format!(
                "plugin {id}: supervisor gone"
            ))),
            Err(_) => Err(DaemonError::Internal(format!(
                "plugin {id}: sandbox did not start within {grace:?}"
            ))),
        }
    }

    /// Stop `id` gracefully and wait until no instance is left.
    pub async fn stop(&self, id: &str) {
        let Some(slot) = self.existing(id) else {
            return;
        };
        slot.desired.send_replace(false);
        let _ = slot.control.send(Control::Wake);
        let mut status = slot.status.subscribe();
        let grace = self.config().supervisor.stop_grace + Duration::from_secs(15);
        let wait = status.wait_for(|s| {
            matches!(s.state, PluginState::Stopped | PluginState::Failed) && s.instance.is_none()
        });
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::error!(plugin = %id, "instance did not stop in time");
        }
    }

    /// Stop every plugin (kill switch, shutdown), in parallel.
    pub async fn stop_all(&self) {
        let ids: Vec<String> = lock(&self.slots).keys().cloned().collect();
        let futs = ids.iter().map(|id| self.stop(id));
        futures::future::join_all(futs).await;
    }

    /// Stop `id` and forget it (plugin removed).
    pub async fn forget(&self, id: &str) {
        if let Some(slot) = self.existing(id) {
            slot.removed.store(true, Ordering::SeqCst);
            self.stop(id).await;
            lock(&self.slots).remove(id);
            let _ = slot.control.send(Control::Wake);
        }
    }

    /// Kill the current instance of `id` (it restarts by policy).
    pub fn kill_instance(&self, id: &str, reason: String) {
        if let Some(slot) = self.existing(id) {
            let _ = slot.control.send(Control::Kill(reason));
        }
    }

    /// The running instance of `id` with its agent connected, starting the
    /// plugin if needed, within the agent-connect timeout.
    pub async fn ensure_agent(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Arc<LiveInstance>, DaemonError> {
        if let Some(why) = self.refusal() {
            return Err(DaemonError::Conflict(why));
        }
        let timeout = self.config().supervisor.agent_connect_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = self.slot(id);
        if !*slot.desired.borrow() {
            slot.desired.send_replace(true);
            let _ = slot.control.send(Control::Wake);
        }
        let mut inst = slot.instance.subscribe();
        loop {
            let live = inst.borrow_and_update().clone();
            if let Some(live) = live {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let agent = live.hub.wait_agent(left.max(Duration::from_millis(1)));
                tokio::select! {
                    r = agent => {
                        return r.map(|()| live.clone()).map_err(|_| DaemonError::Conflict(format!(
                            "plugin {id}: its agent did not connect within {timeout:?}"
                        )));
                    }
                    c = inst.changed() => { if c.is_err() { break; } continue; }
                }
            }
            match tokio::time::timeout_at(deadline, inst.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let why = self
            .status(id)
            .last_exit
            .unwrap_or_else(|| "not running".into());
        Err(DaemonError::Conflict(format!(
            "plugin {id}: no running instance with a connected agent within {timeout:?} ({why})"
        )))
    }

    /// Creates the (idle) supervision state of an installed plugin, so its
    /// log can be followed before it first starts.
    pub fn track(self: &Arc<Self>, id: &str) {
        self.slot(id);
    }

    /// Logs of `id`, if it is tracked.
    pub fn logs(&self, id: &str, tail: usize) -> Option<LogFollow> {
        self.existing(id).map(|s| s.logs.follow(tail))
    }

    /// How `instance` of `id` ended, waiting up to `timeout` for it to end.
    pub async fn instance_end(
        &self,
        id: &str,
        instance: &str,
        timeout: Duration,
    ) -> Option<String> {
        let slot = self.existing(id)?;
        let mut status = slot.status.subscribe();
        let ended = status.wait_for(|s| s.instance.as_deref() != Some(instance));
        match tokio::time::timeout(timeout, ended).await {
            Ok(Ok(s)) => s.last_exit.clone(),
            _ => None,
        }
    }

    /// Applies `limits` to the cgroup of `id`'s running instance, if it has
    /// one: memory, CPU and pids limits that differ from what it runs with
    /// are written live (`hutch_sandbox::cgroup::live`). `tmp_size` and
    /// `wall_timeout` are not cgroup limits: `/tmp` keeps its size until the
    /// next start, and the wall timeout is read when a task is assigned.
    /// Returns `None` when no instance runs or no cgroup limit changed.
    pub async fn apply_limits(&self, id: &str, limits: &PluginLimits) -> Option<LiveLimitsChange> {
        let slot = self.existing(id)?;
        let live = slot.instance.borrow().clone()?;
        let pid = slot.status.borrow().pid?;
        let update = {
            let now = lock(&live.limits);
            hutch_sandbox::cgroup::live::LiveLimits {
                memory_max: (limits.memory_max != now.memory_max).then_some(limits.memory_max),
                cpu_max: (limits.cpu_max != now.cpu_max).then_some(limits.cpu_max),
                pids_max: (limits.pids_max != now.pids_max).then_some(limits.pids_max),
            }
        };
        if update == hutch_sandbox::cgroup::live::LiveLimits::default() {
            return None;
        }
        let cfg = self.config();
        let cg = hutch_sandbox::cgroup::CgroupConfig {
            parent: cfg.sandbox.cgroup_parent.clone(),
            cgroup_root: cfg.sandbox.cgroup_root.clone(),
            placement: hutch_sandbox::cgroup::Placement::Auto,
            ..hutch_sandbox::cgroup::CgroupConfig::default()
        };
        let name = live.sandbox_name.clone();
        let u = update.clone();
        let result = tokio::task::spawn_blocking(move || {
            hutch_sandbox::cgroup::live::update_running_limits(&cg, &name, pid, &u)
        })
        .await;
        let (written, error) = match result {
            Ok(Ok(w)) => (w, None),
            Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
            Err(e) => (Vec::new(), Some(format!("limit update task: {e}"))),
        };
        if error.is_none() {
            let mut now = lock(&live.limits);
            now.memory_max = limits.memory_max;
            now.cpu_max = limits.cpu_max;
            now.pids_max = limits.pids_max;
        }
        let text = match &error {
            None => format!(
                "limits changed live: {}",
                written
                    .iter()
                    .map(|w| format!(
                        "{}={}",
                        w.path
                            .file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default(),
                        w.value
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Some(e) => format!("changing limits live failed: {e}"),
        };
        slot.logs
            .push(LogStream::Supervisor, &live.instance_id, text);
        Some(LiveLimitsChange {
            instance: live.instance_id.clone(),
            written,
            error,
        })
    }

    /// Records a task event of `id`'s plugin (keeps the watchdog calm).
    pub fn touch(&self, id: &str) {
        if let Some(slot) = self.existing(id) {
            *lock(&slot.activity) = Some(Instant::now());
        }
    }

    /// Sets the number of running tasks shown in the status.
    pub fn set_tasks_running(&self, id: &str, delta: isize) {
        if let Some(slot) = self.existing(id) {
            slot.status.send_modify(|s| {
                s.tasks_running = s.tasks_running.saturating_add_signed(delta);
            });
        }
    }
}

fn backoff(initial: Duration, max: Duration, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
    initial.saturating_mul(factor).min(max)
}

async fn slot_loop(
    sup: Arc<Supervisor>,
    slot: Arc<Slot>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut desired = slot.desired.subscribe();
    let mut consecutive: u32 = 0;
    let mut attempt: u64 = 0;
    loop {
        if !*desired.borrow_and_update() {
            slot.status.send_modify(|s| {
                if s.state != PluginState::Failed {
                    s.state = PluginState::Stopped;
                }
                s.instance = None;
                s.pid = None;
            });
            if slot.removed.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                r = desired.changed() => if r.is_err() { return },
                c = control.recv() => if c.is_none() { return },
            }
            continue;
        }
        attempt += 1;
        if let Some(why) = sup.refusal() {
            slot.desired.send_replace(false);
            slot.attempts.send_replace((attempt, Some(why)));
            continue;
        }
        let rec = match sup.registry.get(&slot.id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                slot.desired.send_replace(false);
                slot.attempts
                    .send_replace((attempt, Some("not installed".into())));
                continue;
            }
            Err(e) => {
                slot.desired.send_replace(false);
                slot.attempts.send_replace((attempt, Some(e.to_string())));
                continue;
            }
        };
        let end = run_instance(&sup, &slot, &rec, attempt, &mut desired, &mut control).await;
        slot.status.send_modify(|s| {
            s.last_exit = Some(end.summary.clone());
            s.instance = None;
            s.pid = None;
            s.agent_connected = false;
        });
        if end.requested_stop || !*desired.borrow() {
            consecutive = 0;
            slot.set_state(PluginState::Stopped);
            continue;
        }
        if sup.driver.is_gone() {
            // Not the plugin's fault: no restart, no crash-loop count. The
            // daemon exits (see `service`) and systemd restarts it.
            slot.desired.send_replace(false);
            slot.set_state(PluginState::Failed);
            continue;
        }
        let cfg = sup.config();
        let sc = &cfg.supervisor;
        if end.failed {
            let now = Instant::now();
            let count = {
                let mut f = lock(&slot.failures);
                f.push_back(now);
                while f
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > sc.crash_loop_window)
                {
                    f.pop_front();
                }
                f.len()
            };
            slot.status
                .send_modify(|s| s.recent_failures = u32::try_from(count).unwrap_or(u32::MAX));
            if count >= sc.crash_loop_failures as usize {
                let reason = format!(
                    "crash loop: {count} failures within {}; last: {}",
                    humantime::format_duration(sc.crash_loop_window),
                    end.summary
                );
                tracing::error!(plugin = %slot.id, "{reason}; disabling");
                if let Err(e) = sup
                    .registry
                    .set_enabled(&slot.id, false, Some(&reason))
                    .await
                {
                    tracing::error!(plugin = %slot.id, error = %e, "disable after crash loop");
                }
                sup.audit(
                    AuditEvent::new(
                        Actor::daemon(),
                        "plugin.crash_loop",
                        format!("plugin/{}", slot.id),
                    )
                    .with_details(serde_json::json!({
                        "failures": count,
                        "window_ms": sc.crash_loop_window.as_millis() as u64,
                        "last_exit": end.summary,
                        "action": "disabled",
                        "reason": reason,
                    })),
                )
                .await;
                slot.logs.push(
                    LogStream::Supervisor,
                    "-",
                    format!("{reason}; plugin disabled"),
                );
                lock(&slot.failures).clear();
                slot.desired.send_replace(false);
                slot.set_state(PluginState::Failed);
                continue;
            }
        }
        let restart = match sc.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => end.failed,
            RestartPolicy::Always => true,
        };
        if !restart {
            slot.desired.send_replace(false);
            slot.set_state(if end.failed {
                PluginState::Failed
            } else {
                PluginState::Stopped
            });
            continue;
        }
        if end.ran_for >= sc.backoff_reset_after {
            consecutive = 0;
        }
        consecutive += 1;
        let delay = backoff(sc.backoff_initial, sc.backoff_max, consecutive);
        slot.set_state(PluginState::Backoff);
        sup.audit(
            AuditEvent::new(
                Actor::daemon(),
                "plugin.restart",
                format!("plugin/{}", slot.id),
            )
            .with_details(serde_json::json!({
                "after": end.summary,
                "failed": end.failed,
                "consecutive": consecutive,
                "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "policy": sc.restart,
            })),
        )
        .await;
        slot.logs.push(
            LogStream::Supervisor,
            "-",
            format!("restarting in {}", humantime::format_duration(delay)),
        );
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                r = desired.changed() => { if r.is_err() || !*desired.borrow() { break; } }
                c = control.recv() => match c { Some(Control::Wake) | None => break, Some(Control::Kill(_)) => {} },
            }
        }
        slot.status.send_modify(|s| s.restarts += 1);
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    if buf.iter().all(|b| *b == 0) {
        let t = now_ms() as u64 ^ u64::from(std::process::id()) << 32;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 8) * 8)) as u8;
        }
    }
    hex::encode(buf)
}

/// A fresh id with a prefix, e.g. `i-3f9a0c1b2d4e`.
pub(crate) fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_hex(6))
}

/// How an outcome reads in `last_exit`.
fn summarize(o: &Outcome, kill_reason: Option<&str>) -> (String, bool) {
    if let Some(k) = kill_reason {
        return (format!("killed: {k}"), true);
    }
    if let Some(e) = &o.setup_error {
        return (format!("sandbox setup failed: {e}"), true);
    }
    let mut parts = Vec::new();
    if o.oom_killed {
        parts.push("OOM kill".to_owned());
    }
    if o.pids_limit_hit {
        parts.push("pids limit hit".to_owned());
    }
    let failed = match (o.exit_code, o.signal) {
        (Some(0), _) => {
            parts.push("exited with status 0".into());
            o.oom_killed
        }
        (Some(c), _) => {
            parts.push(format!("exited with status {c}"));
            true
        }
        (None, Some(s)) => {
            parts.push(format!(
                "killed by signal {s} ({})",
                hutch_sandbox::outcome::signal_name(s)
            ));
            true
        }
        (None, None) => {
            parts.push("ended".into());
            true
        }
    };
    (parts.join(", "), failed)
}

fn prepare_data_dir(path: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

async fn run_instance(
    sup: &Arc<Supervisor>,
    slot: &Arc<Slot>,
    rec: &PluginRecord,
    attempt: u64,
    desired: &mut watch::Receiver<bool>,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> InstanceEnd {
    let cfg = sup.config();
    let started = Instant::now();
    let instance_id = fresh_id("i");
    let fail_early = |why: String| {
        slot.attempts.send_replace((attempt, Some(why.clone())));
        slot.logs
            .push(LogStream::Supervisor, "-", format!("start failed: {why}"));
        InstanceEnd {
            requested_stop: false,
            failed: true,
            summary: why,
            ran_for: Duration::ZERO,
        }
    };
    slot.status.send_modify(|s| {
        s.state = PluginState::Starting;
        s.instance = Some(instance_id.clone());
        s.pid = None;
        s.started_at_ms = Some(now_ms());
    });
    let socket_dir = cfg.paths.instances_dir().join(&instance_id);
    let socket = socket_dir.join("api.sock");
    if let Err(e) = std::fs::create_dir_all(cfg.paths.instances_dir()) {
        return fail_early(format!(
            "create {}: {e}",
            cfg.paths.instances_dir().display()
        ));
    }
    let granted = ScopeSet::parse(&rec.granted).unwrap_or_default();
    let handle = match sup
        .core
        .serve_instance(InstanceSpec {
            plugin_id: rec.id.clone(),
            version: rec.version.clone(),
            instance_id: instance_id.clone(),
            uid: rec.uid,
            socket_path: socket.clone(),
            granted_scopes: granted,
            installing_user: rec.installed_by.clone(),
            limits: cfg.api.clone(),
        })
        .await
    {
        Ok(h) => h,
        Err(e) => return fail_early(format!("API socket: {e}")),
    };
    let data_dir = if rec.manifest.persistent_data {
        let d = cfg.paths.data_dir().join(&rec.id);
        if let Err(e) = prepare_data_dir(&d, rec.uid) {
            handle.stop().await;
            let _ = std::fs::remove_dir_all(&socket_dir);
            return fail_early(e);
        }
        Some(d)
    } else {
        None
    };
    let limits = rec.limits(&cfg.limits);
    let spec = crate::plugin_spec::build(&crate::plugin_spec::SpecInput {
        manifest: &rec.manifest,
        plugin_dir: rec.path.clone(),
        uid: rec.uid,
        instance: &instance_id,
        extra_args: &[],
        limits: &limits,
        sandbox_wall_timeout: None,
        data_dir,
        api_socket: Some(socket.clone()),
        config: &cfg,
    });
    let (sid, mut events) = match sup.driver.spawn(&spec) {
        Ok(x) => x,
        Err(e) => {
            handle.stop().await;
            let _ = std::fs::remove_dir_all(&socket_dir);
            return fail_early(e.to_string());
        }
    };
    let live = Arc::new(LiveInstance {
        instance_id: instance_id.clone(),
        version: rec.version.clone(),
        hub: handle.hub().clone(),
        sandbox_name: spec.name.clone(),
        limits: Mutex::new(limits.clone()),
    });
    let mut pumps = Vec::new();
    let mut monitor: Option<DenialMonitor> = None;
    let mut outcome: Option<Outcome> = None;
    let mut requested_stop = false;
    let mut kill_reason: Option<String> = None;
    let mut running = false;
    let mut busy_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some((Event::Spawned { .. }, fds)) => {
                    for (i, fd) in fds.into_iter().take(2).enumerate() {
                        let stream = if i == 0 { LogStream::Stdout } else { LogStream::Stderr };
                        pumps.push(tokio::spawn(pump(
                            slot.logs.clone(), fd, stream, instance_id.clone(), cfg.logs.clone(),
                        )));
                    }
                }
                Some((Event::Started { init_pid, seccomp_notify, .. }, mut fds)) => {
                    if seccomp_notify && let Some(listener) = fds.pop() {
                        match DenialMonitor::spawn(listener, format!("{}/{instance_id}", rec.id)) {
                            Ok(m) => monitor = Some(m),
                            Err(e) => tracing::error!(plugin = %rec.id, error = %e, "seccomp denial monitor"),
                        }
                    }
                    running = true;
                    slot.status.send_modify(|s| {
                        s.state = PluginState::Running;
                        s.pid = Some(init_pid);
                    });
                    slot.instance.send_replace(Some(live.clone()));
                    slot.attempts.send_replace((attempt, None));
                    slot.logs.push(LogStream::Supervisor, &instance_id, format!("started (version {}, pid {init_pid})", rec.version));
                    sup.audit(
                        AuditEvent::new(Actor::daemon(), "plugin.start", format!("plugin/{}", rec.id))
                            .with_details(serde_json::json!({
                                "instance": instance_id, "version": rec.version, "pid": init_pid,
                                "uid": rec.uid, "granted_scopes": rec.granted,
                            })),
                    ).await;
                }
                Some((Event::Exited { outcome: o, .. }, _)) => { outcome = Some(*o); break; }
                None => break,
            },
            r = desired.changed() => {
                if (r.is_err() || !*desired.borrow()) && !requested_stop {
                    requested_stop = true;
                    slot.set_state(PluginState::Stopping);
                    sup.driver.stop(sid);
                }
            }
            c = control.recv() => {
                if let Some(Control::Kill(reason)) = c && kill_reason.is_none() {
                    slot.logs.push(LogStream::Supervisor, &instance_id, format!("killing: {reason}"));
                    kill_reason = Some(reason);
                    sup.driver.kill(sid);
                }
            }
            _ = tick.tick() => {
                // Read each tick: a SIGHUP reload applies to running instances.
                let watchdog = sup.config().supervisor.watchdog_timeout;
                // Armed by the first heartbeat, or while a task runs (a plugin
                // that never heartbeats is left alone while idle).
                let busy = slot.status.borrow().tasks_running > 0;
                busy_since = match (busy, busy_since) {
                    (true, None) => Some(Instant::now()),
                    (true, s) => s,
                    (false, _) => None,
                };
                let activity = busy_since.and(*lock(&slot.activity));
                let last_sign = [live.hub.last_heartbeat(), busy_since, activity]
                    .into_iter()
                    .flatten()
                    .max();
                if running && !watchdog.is_zero() && kill_reason.is_none() && !requested_stop
                    && let Some(hb) = last_sign
                    && hb.elapsed() > watchdog
                {
                    let reason = format!("watchdog: no heartbeat for {}", humantime::format_duration(Duration::from_secs(hb.elapsed().as_secs())));
                    slot.logs.push(LogStream::Supervisor, &instance_id, format!("killing: {reason}"));
                    sup.audit(
                        AuditEvent::new(Actor::daemon(), "plugin.watchdog", format!("plugin/{}", rec.id))
                            .with_details(serde_json::json!({ "instance": instance_id, "reason": reason })),
                    ).await;
                    kill_reason = Some(reason);
                    sup.driver.kill(sid);
                }
            }
        }
    }
    slot.instance.send_replace(None);
    handle.stop().await;
    let _ = std::fs::remove_dir_all(&socket_dir);
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), p)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let denials = match monitor {
        Some(m) => tokio::task::spawn_blocking(move || m.finish())
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let (summary, failed) = match &outcome {
        Some(o) => summarize(o, kill_reason.as_deref()),
        None => ("the sandbox launcher is gone".to_owned(), true),
    };
    let failed = failed && !requested_stop;
    if !running {
        slot.attempts.send_replace((attempt, Some(summary.clone())));
    }
    slot.logs.push(
        LogStream::Supervisor,
        &instance_id,
        format!("ended: {summary}"),
    );
    let o = outcome.unwrap_or_default();
    sup.audit(
        AuditEvent::new(Actor::daemon(), "plugin.exit", format!("plugin/{}", rec.id)).with_details(
            serde_json::json!({
                "instance": instance_id,
                "version": rec.version,
                "summary": summary,
                "requested_stop": requested_stop,
                "exit_code": o.exit_code,
                "signal": o.signal,
                "oom_killed": o.oom_killed,
                "pids_limit_hit": o.pids_limit_hit,
                "setup_error": o.setup_error,
                "peak_memory_bytes": o.peak_memory_bytes,
                "cpu_time_ns": o.cpu_time_ns,
                "wall_time_ms": o.wall_time_ms,
                "denials": denials.iter().map(|d| serde_json::json!({"syscall": d.syscall, "count": d.count})).collect::<Vec<_>>(),
            }),
        ),
    )
    .await;
    InstanceEnd {
        requested_stop,
        failed,
        summary,
        ran_for: started.elapsed(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn neutralise_escapes_controls_and_bidi_and_cuts() {
        assert_eq!(
            neutralise(b"a\x1b[31mred\x07\tok", 100),
            "a\\x1b[31mred\\x07\tok"
        );
        assert_eq!(neutralise("x\u{202e}y".as_bytes(), 100), "x\\u{202e}y");
        assert_eq!(neutralise(b"\xff\xfeok", 100), "\u{fffd}\u{fffd}ok");
        let long = neutralise(&[b'a'; 100], 10);
        assert_eq!(long, format!("{}…[cut]", "a".repeat(10)));
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let s = Duration::from_secs(1);
        let m = Duration::from_secs(10);
        let got: Vec<u64> = (1..=6).map(|n| backoff(s, m, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
    }

    /// The pump splits lines, bounds their length and rate, and says how
    /// many it dropped.
    #[test]
    fn pump_bounds_rate_and_line_length() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::from(w);
            f.write_all(&[b'x'; 300]).unwrap();
            f.write_all(b"\nhello\x1b\n").unwrap();
            for i in 0..200 {
                writeln!(f, "line {i}").unwrap();
            }
            f.write_all(b"tail without newline").unwrap();
        });
        let ring = Arc::new(LogRing::new("org.test.pump", 1000));
        let cfg = LogsConfig {
            ring_lines: 1000,
            max_line_bytes: 64,
            lines_per_sec: 1,
            burst_lines: 10,
        };
        rt.block_on(pump(ring.clone(), r, LogStream::Stdout, "i-1".into(), cfg));
        writer.join().unwrap();
        let lines: Vec<String> = ring
            .follow(1000)
            .lines
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert!(
            lines[0].starts_with(&"x".repeat(64)) && lines[0].ends_with("…[cut]"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "hello\\x1b");
        // Burst of 10: the two above and eight numbered lines, then drops.
        assert_eq!(lines[9], "line 7");
        assert!(lines.len() <= 12, "{lines:?}");
        let last = lines.last().unwrap();
        assert!(
            last.ends_with("lines dropped (over logs.lines_per_sec)"),
            "{lines:?}"
        );
    }

    #[test]
    fn ring_keeps_the_last_lines_and_numbers_them() {
        let ring = LogRing::new("p", 3);
        let mut follower = ring.follow(0).follow;
        for i in 0..5 {
            ring.push(LogStream::Stderr, "i", format!("l{i}"));
        }
        let f = ring.follow(2);
        let got: Vec<(u64, String)> = f.lines.into_iter().map(|l| (l.seq, l.line)).collect();
        assert_eq!(got, [(4, "l3".to_owned()), (5, "l4".to_owned())]);
        assert_eq!(follower.try_recv().unwrap().line, "l0");
    }
}
