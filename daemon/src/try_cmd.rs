//! `hutchd try PLUGIN_DIR`: run a plugin directory once, in the foreground,
//! under exactly the production sandbox (SPEC §8), with a real API socket.
//!
//! `try` is an embedded daemon: it opens the daemon's own core
//! ([`Daemon::open`]: database, audit store, built-in store, `ApiCore`, the
//! launcher driver) on a throw-away state dir (or `--state DIR`), registers
//! the invoking user, serves the instance's API socket with every scope the
//! manifest requests granted (`ApiCore::serve_instance`, bound at
//! `/run/hutch/api.sock` inside), builds the sandbox with the supervisor's
//! own `plugin_spec::build`, and runs it through the daemon's launcher driver.
//! What it does not take from the daemon is the supervisor's restart loop and
//! log ring: the plugin runs once, its stdout/stderr pass through unchanged,
//! and the sandbox's [`Outcome`] is reported. With `--task` it also loads
//! input files into the store, assigns one task through the instance's
//! `TaskHub`, follows it and writes its outputs (`try_task.rs`); the closing
//! summary is read from the audit store (`try_summary.rs`).

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hutch_api::authz::{Role, ScopeSet};
use hutch_api::server::InstanceSpec;
use hutch_sandbox::launcher::{Event, LaunchError, Launcher};
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::seccomp::DenialMonitor;
use hutch_sandbox::spec::SandboxSpec;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, DaemonOptions};
use crate::manifest::{Exec, Manifest, ManifestError};
use crate::registry::PluginLimits;
use crate::try_summary::{ApiUsage, Summary};
use crate::try_task::{TaskPlan, TaskRun};

/// Exit status for a broken manifest or bad usage.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the sandbox could not be set up (as `env`/`docker` use).
pub const EXIT_SETUP: i32 = 125;

/// Default memory limit when the manifest sets none.
pub const DEFAULT_MEMORY_MAX: u64 = 512 << 20;
/// Default pids limit when the manifest sets none.
pub const DEFAULT_PIDS_MAX: u64 = 256;

/// Start of the uid/gid range reserved for plugins (`0x7e000000`, far above
/// any regular or system account and below the 2^31 limit of some tools).
pub const PLUGIN_ID_BASE: u32 = 0x7e00_0000;
/// Size of the reserved range (2^20 ids).
pub const PLUGIN_ID_RANGE: u32 = 1 << 20;

/// The dataset `--input` files are loaded into.
pub const TRY_DATASET: &str = "try";

/// Default `--output` directory.
pub const DEFAULT_OUTPUT_DIR: &str = "hutch-try-out";

/// Arguments of `hutchd try`.
#[derive(Debug, Clone, clap::Args)]
pub struct TryArgs {
    /// The plugin directory (holding hutch-plugin.toml).
    pub plugin_dir: PathBuf,
    /// Write how the run ended (and the task summary) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Wall timeout (e.g. "2s", "1h"); overrides the manifest's.
    #[arg(long, value_name = "DUR", value_parser = crate::manifest::parse_duration)]
    pub timeout: Option<Duration>,
    /// Keep the state (database, store, the plugin's /data) in this
    /// directory instead of a throw-away one.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Run one task of this action once the plugin said hello, then stop it.
    #[arg(long, value_name = "ACTION")]
    pub task: Option<String>,
    /// The task's arguments, a JSON object (default `{}`).
    #[arg(long = "args", value_name = "JSON", requires = "task")]
    pub task_args: Option<String>,
    /// A file to load into dataset `try` (key = its file name) and pass as a
    /// task input; repeatable.
    #[arg(long = "input", value_name = "FILE", requires = "task")]
    pub inputs: Vec<PathBuf>,
    /// Where to write the task's output objects (default ./hutch-try-out).
    #[arg(long, value_name = "DIR", requires = "task")]
    pub output: Option<PathBuf>,
    /// Arguments passed to the plugin after the manifest's `args`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Why `try` could not run the plugin.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// The manifest is broken (exit 2).
    #[error("{dir}/hutch-plugin.toml: {source}")]
    Manifest {
        /// The plugin dir.
        dir: String,
        /// What is wrong, naming the key.
        source: ManifestError,
    },
    /// The plugin directory or a flag is unusable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The launcher failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The embedded daemon core failed (database, store, API socket).
    #[error("{0}")]
    Daemon(#[from] DaemonError),
    /// Preparing a dir, reading an input or writing the report failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl TryError {
    /// The exit status `hutchd try` should use for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            TryError::Manifest { .. } | TryError::Usage(_) => EXIT_USAGE,
            _ => 1,
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TryError {
        let path = path.to_owned();
        move |source| TryError::Io { op, path, source }
    }
}

/// A stable, unprivileged uid (and gid of the same value) for a plugin id:
/// `PLUGIN_ID_BASE + fnv1a(id) % PLUGIN_ID_RANGE`, stepping on while the
/// number is taken by an account in `passwd` or a group in `group` (read from
/// `etc`, normally `/etc`). Never 0.
pub fn plugin_uid(id: &str, etc: &Path) -> u32 {
    plugin_uid_in(id, etc, PLUGIN_ID_BASE, PLUGIN_ID_RANGE, &|_| false)
}

/// As [`plugin_uid`] in the range `base..base+count`, also skipping numbers
/// for which `taken` is true (the registry's allocations).
pub fn plugin_uid_in(
    id: &str,
    etc: &Path,
    base: u32,
    count: u32,
    taken: &dyn Fn(u32) -> bool,
) -> u32 {
    let read = |file: &str| -> Vec<u32> {
        std::fs::read_to_string(etc.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let mut used = read("passwd");
    used.extend(read("group"));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let count = count.max(1);
    let mut off = (h % u64::from(count)) as u32;
    for _ in 0..count {
        let uid = base.saturating_add(off);
        if uid != 0 && !used.contains(&uid) && !taken(uid) {
            return uid;
        }
        off = (off + 1) % count;
    }
    base.max(1)
}

/// What `try` checked before starting anything: every error here is a usage
/// error (exit 2) and nothing has been created yet.
#[derive(Debug)]
pub struct Plan {
    /// The canonical plugin dir.
    pub dir: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
    /// The plugin's uid (= gid).
    pub uid: u32,
    /// Effective limits (manifest request capped by the daemon defaults).
    pub limits: PluginLimits,
    /// The task to run, with `--task`.
    pub task: Option<TaskPlan>,
}

/// Validates the plugin dir, its manifest and the task flags.
///
/// # Errors
/// [`TryError::Manifest`] or [`TryError::Usage`], naming the problem.
pub fn plan(args: &TryArgs) -> Result<Plan, TryError> {
    let dir = std::fs::canonicalize(&args.plugin_dir)
        .map_err(|e| TryError::Usage(format!("plugin dir {}: {e}", args.plugin_dir.display())))?;
    let manifest = Manifest::load(&dir).map_err(|source| TryError::Manifest {
        dir: dir.display().to_string(),
        source,
    })?;
    if let Exec::Relative(rel) = &manifest.exec {
        let host = dir.join(rel);
        if !host.is_file() {
            return Err(TryError::Usage(format!(
                "{}/hutch-plugin.toml: exec: {} is not a file in the plugin dir",
                dir.display(),
                rel.display()
            )));
        }
    }
    let uid = plugin_uid(&manifest.id, Path::new("/etc"));
    let limits = crate::plugin_spec::resolve_limits(
        &manifest.resources,
        &Config::default().limits,
        &crate::registry::LimitOverrides::default(),
    )
    .map_err(TryError::Usage)?;
    let task = match &args.task {
        Some(action) => Some(TaskPlan::new(action, args, &manifest)?),
        None => None,
    };
    Ok(Plan {
        dir,
        manifest,
        uid,
        limits,
        task,
    })
}

/// The embedded daemon's config: the production defaults on `state`, with a
/// cgroup parent of this run's own (a daemon's start-up sweep of its parent
/// never touches a `try`, nor one `try` another's; the launcher removes it
/// when the run ends).
pub fn config_for(state: &Path) -> Config {
    let mut config = Config::default();
    config.paths.state_dir = state.to_owned();
    config.paths.runtime_dir = state.join("run");
    config.paths.control_socket = Some(state.join("run/control.sock"));
    config.sandbox.cgroup_parent = format!("hutch-try-{}", std::process::id());
    config
}

/// Build the sandbox spec `try` runs: the supervisor's `plugin_spec::build`
/// with the run's data dir and API socket, the manifest's (or `--timeout`)
/// wall timeout for the whole sandbox, and the cgroup parent at the root of
/// each hierarchy (run from a login shell, not a delegated systemd unit).
pub fn build_spec(
    plan: &Plan,
    args: &TryArgs,
    config: &Config,
    instance: &str,
    data_dir: Option<PathBuf>,
    api_socket: Option<PathBuf>,
) -> SandboxSpec {
    let mut spec = crate::plugin_spec::build(&crate::plugin_spec::SpecInput {
        manifest: &plan.manifest,
        plugin_dir: plan.dir.clone(),
        uid: plan.uid,
        instance,
        extra_args: &args.args,
        limits: &plan.limits,
        sandbox_wall_timeout: args.timeout.or(plan.manifest.resources.wall_timeout),
        data_dir,
        api_socket,
        config,
    });
    if let Some(c) = spec.cgroup.as_mut() {
        c.base = hutch_sandbox::cgroup::Placement::HierarchyRoot;
    }
    spec
}

/// Create `/data`'s host dir, owned by the plugin, mode 0700.
fn prepare_data_dir(path: &Path, uid: u32) -> Result<(), TryError> {
    std::fs::create_dir_all(path).map_err(TryError::io("create", path))?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(TryError::io("chown", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(TryError::io("chmod", path))
}

/// Where the throw-away state goes: `$TMPDIR` if set, else `/dev/shm` when
/// it exists (a tmpfs: the database's fsyncs cost nothing there, which keeps
/// `try`'s start-up cheap), else the system temp dir.
fn scratch_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && shm.is_dir() {
        return shm.to_owned();
    }
    std::env::temp_dir()
}

/// Removes throw-away state dirs left by `try` runs that were killed
/// (SIGKILL leaves no chance to clean up; under `/dev/shm` they would hold
/// memory): a `hutch-try-*` dir of ours, older than a minute, whose
/// `hutchd.lock` nobody holds (a running `try` holds it for its whole run).
fn sweep_stale_scratch(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        let path = e.path();
        let stale = e.file_name().to_string_lossy().starts_with("hutch-try-")
            && std::fs::symlink_metadata(&path).is_ok_and(|m| {
                m.is_dir()
                    && m.uid() == me
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(60))
            });
        if !stale {
            continue;
        }
        let Ok(lock) = std::fs::File::open(path.join("hutchd.lock")) else {
            continue;
        };
        if let Ok(held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            let _ = std::fs::remove_dir_all(&path);
            drop(held);
        }
    }
}

/// The Hutch user `try` acts as: the invoking account's name.
fn acting_user() -> String {
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(u)) if !u.name.is_empty() => u.name,
        _ => "try".into(),
    }
}

/// Run the plugin once: its stdout/stderr pass through, `hutch: ...` lines
/// on stderr say how it ended, what it called and what was denied (with
/// `--task`, also the task's progress, logs and outputs). Returns the exit
/// status for `hutchd`: the plugin's, 128+N for signal N, 125 if the
/// sandbox could not be set up; with `--task`, 0 when the task completed
/// and 1 when it failed (a plugin killed during the task keeps 128+N).
///
/// # Errors
/// The manifest, plugin dir or a flag is broken (exit 2), the embedded
/// daemon could not start, or the report could not be written.
pub fn run(launcher: Launcher, args: &TryArgs) -> Result<i32, TryError> {
    let plan = plan(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("hutchd-try")
        .build()
        .map_err(TryError::io("start runtime", Path::new("-")))?;
    rt.block_on(run_async(launcher, args, plan))
}

async fn run_async(launcher: Launcher, args: &TryArgs, plan: Plan) -> Result<i32, TryError> {
    let (state, _scratch) = match &args.state {
        Some(s) => {
            std::fs::create_dir_all(s).map_err(TryError::io("create", s))?;
            (s.clone(), None)
        }
        None => {
            let parent = scratch_parent();
            sweep_stale_scratch(&parent);
            let t = tempfile::Builder::new()
                .prefix("hutch-try-")
                .tempdir_in(&parent)
                .map_err(TryError::io("create", &parent))?;
            (t.path().to_owned(), Some(t))
        }
    };
    let config = config_for(&state);
    let daemon = Daemon::open(
        DaemonOptions {
            config: config.clone(),
            config_path: None,
        },
        launcher,
    )
    .await?;
    let r = run_in(&daemon, args, &plan, &config).await;
    daemon.shutdown().await;
    r
}

async fn run_in(
    daemon: &Daemon,
    args: &TryArgs,
    plan: &Plan,
    config: &Config,
) -> Result<i32, TryError> {
    let user = acting_user();
    let since_us = hutch_api::audit::now_us();
    daemon
        .core()
        .authz()
        .set_user(&user, Role::Member)
        .await
        .map_err(|e| DaemonError::internal("register the acting user", e))?;
    let inputs = match &plan.task {
        Some(t) => t.load_inputs(daemon, &user).await?,
        None => Vec::new(),
    };
    let instance = format!("try-{}", std::process::id());
    let socket_dir = config.paths.instances_dir().join(&instance);
    let socket = socket_dir.join("api.sock");
    std::fs::create_dir_all(config.paths.instances_dir())
        .map_err(TryError::io("create", &config.paths.instances_dir()))?;
    let granted = ScopeSet::parse(&plan.manifest.scopes).map_err(TryError::Usage)?;
    let handle = daemon
        .core()
        .serve_instance(InstanceSpec {
            plugin_id: plan.manifest.id.clone(),
            version: plan.manifest.version.to_string(),
            instance_id: instance.clone(),
            uid: plan.uid,
            socket_path: socket.clone(),
            granted_scopes: granted,
            installing_user: user.clone(),
            limits: config.api.clone(),
        })
        .await
        .map_err(|e| DaemonError::internal("API socket", e))?;
    let data_dir = if plan.manifest.persistent_data {
        let d = config.paths.data_dir().join(&plan.manifest.id);
        prepare_data_dir(&d, plan.uid)?;
        Some(d)
    } else {
        None
    };
    let spec = build_spec(plan, args, config, &instance, data_dir, Some(socket));
    let driver = daemon.inner.sup.driver.clone();
    // Ctrl-C and SIGTERM are counted (and no longer end hutchd at once), so
    // an interrupted run still reports, stops the plugin and cleans up.
    let (intr_tx, intr) = tokio::sync::watch::channel(0u32);
    let signals = tokio::spawn(count_interrupts(intr_tx));
    let (sid, events) = driver.spawn(&spec)?;
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let fg = tokio::spawn(foreground(events, spec.name.clone(), ended_tx));
    let stopper = plan
        .task
        .is_none()
        .then(|| tokio::spawn(stop_on_interrupt(driver.clone(), sid, intr.clone())));
    let task = match &plan.task {
        Some(t) => Some(
            t.drive(
                daemon,
                handle.hub(),
                &user,
                inputs,
                &instance,
                &plan.manifest,
                ended.clone(),
                intr.clone(),
                config.supervisor.agent_connect_timeout,
                since_us,
            )
            .await,
        ),
        None => None,
    };
    // With a task, the plugin is stopped once the task is over (SIGTERM,
    // `stop_grace`, then the cgroup is killed by the launcher).
    let stopped_by_us = task.is_some() && !*ended.borrow();
    if stopped_by_us {
        driver.stop(sid);
    }
    let outcome = fg.await;
    signals.abort();
    if let Some(s) = stopper {
        s.abort();
    }
    let outcome = match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(DaemonError::internal("sandbox task", e).into()),
    };
    handle.stop().await;
    let _ = std::fs::remove_dir_all(&socket_dir);
    let mut task = match task {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            // The task could not even be assigned: say how the plugin ended.
            print_outcome(&outcome, &spec, stopped_by_us);
            return Err(e);
        }
        None => None,
    };
    if let Some(t) = task.as_mut()
        && let Some(tp) = &plan.task
    {
        tp.write_outputs(daemon, &user, t).await;
    }
    let api = ApiUsage::collect(daemon, &plan.manifest.id, &instance, since_us).await;
    let summary = Summary {
        outcome: &outcome,
        spec: &spec,
        manifest: &plan.manifest,
        stopped_by_hutch: stopped_by_us,
        task: task.as_ref(),
        api: &api,
    };
    let lines = summary.lines();
    print_lines(&lines);
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&summary.report())
            .map_err(|e| TryError::io("encode report", path)(std::io::Error::other(e)))?;
        std::fs::write(path, json).map_err(TryError::io("write", path))?;
    }
    Ok(exit_status(&outcome, task.as_ref(), stopped_by_us))
}

/// The exit status of a run: see [`run`].
fn exit_status(outcome: &Outcome, task: Option<&TaskRun>, stopped_by_hutch: bool) -> i32 {
    if outcome.setup_error.is_some() {
        return EXIT_SETUP;
    }
    let Some(t) = task else {
        return outcome.shell_status();
    };
    if t.completed() {
        return 0;
    }
    // The plugin died during the task (signal, OOM, timeout): as without a
    // task. A task that failed while the plugin lived on: 1.
    let died =
        !stopped_by_hutch && (outcome.signal.is_some() || outcome.timed_out || outcome.oom_killed);
    if died { outcome.shell_status() } else { 1 }
}

fn print_lines(lines: &[String]) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    for l in lines {
        let _ = writeln!(err, "hutch: {l}");
    }
}

fn print_outcome(outcome: &Outcome, spec: &SandboxSpec, stopped: bool) {
    let mut lines = outcome.describe(&spec.limits);
    if stopped {
        lines.push("(stopped by hutch)".into());
    }
    print_lines(&lines);
}

/// Counts SIGINT and SIGTERM on `count`.
async fn count_interrupts(count: tokio::sync::watch::Sender<u32>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        count.send_modify(|n| *n += 1);
    }
}

/// Without a task: the first interrupt stops the plugin (SIGTERM, grace,
/// kill), the second kills it now.
async fn stop_on_interrupt(
    driver: Arc<crate::supervisor::LauncherDriver>,
    sid: u64,
    mut intr: tokio::sync::watch::Receiver<u32>,
) {
    while intr.changed().await.is_ok() {
        if *intr.borrow() == 1 {
            crate::try_task::say("interrupted: stopping the plugin (interrupt again to kill it)");
            driver.stop(sid);
        } else {
            driver.kill(sid);
            return;
        }
    }
}

/// Runs one sandbox to its end through the daemon's launcher driver: its
/// stdout and stderr are copied unchanged to ours, seccomp denials are
/// collected by a [`DenialMonitor`], and the outcome is returned once every
/// process is gone and both pipes are drained.
async fn foreground(
    mut events: mpsc::UnboundedReceiver<(Event, Vec<OwnedFd>)>,
    label: String,
    ended: tokio::sync::watch::Sender<bool>,
) -> Result<Outcome, TryError> {
    let mut pumps = Vec::new();
    let mut monitor: Option<DenialMonitor> = None;
    let mut outcome = None;
    while let Some((event, mut fds)) = events.recv().await {
        match event {
            Event::Spawned { .. } => {
                for (i, fd) in fds.into_iter().take(2).enumerate() {
                    pumps.push(tokio::spawn(pass_through(fd, i == 0)));
                }
            }
            Event::Started { seccomp_notify, .. } => {
                if seccomp_notify && let Some(listener) = fds.pop() {
                    match DenialMonitor::spawn(listener, label.clone()) {
                        Ok(m) => monitor = Some(m),
                        Err(e) => tracing::error!(error = %e, "seccomp denial monitor"),
                    }
                }
            }
            Event::Exited { outcome: o, .. } => {
                outcome = Some(*o);
                ended.send_replace(true);
                break;
            }
        }
    }
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    ended.send_replace(true);
    let mut outcome = outcome.ok_or(TryError::Launch(LaunchError::Gone))?;
    if let Some(m) = monitor {
        outcome.denials = tokio::task::spawn_blocking(move || m.finish())
            .await
            .unwrap_or_default();
    }
    Ok(outcome)
}

/// Copies one of the plugin's output pipes to our stdout or stderr as is.
async fn pass_through(fd: OwnedFd, stdout: bool) {
    use tokio::io::AsyncReadExt;
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "plugin output pipe");
            return;
        }
    };
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(tokio::io::stderr())
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = out.write_all(&buf[..n]).await;
                let _ = out.flush().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_uid_is_stable_in_range_and_skips_taken_ids() -> Result<(), std::io::Error> {
        let etc = tempfile::tempdir()?;
        std::fs::write(etc.path().join("passwd"), "root:x:0:0::/:/bin/sh\n")?;
        std::fs::write(etc.path().join("group"), "root:x:0:\n")?;
        let a = plugin_uid("org.example.a", etc.path());
        assert_eq!(a, plugin_uid("org.example.a", etc.path()));
        assert!((PLUGIN_ID_BASE..PLUGIN_ID_BASE + PLUGIN_ID_RANGE).contains(&a));
        assert_ne!(a, plugin_uid("org.example.b", etc.path()));
        std::fs::write(
            etc.path().join("passwd"),
            format!("root:x:0:0::/:/bin/sh\nx:x:{a}:1::/:/bin/sh\n"),
        )?;
        let moved = plugin_uid("org.example.a", etc.path());
        assert_ne!(moved, a);
        assert!((PLUGIN_ID_BASE..PLUGIN_ID_BASE + PLUGIN_ID_RANGE).contains(&moved));
        Ok(())
    }
}
