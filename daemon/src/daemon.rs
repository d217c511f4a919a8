//! [`Daemon`]: the running daemon's state and the async operations the
//! control server (`control.rs`) calls.
//!
//! One `Daemon` per process, cheap to clone. It owns:
//! - the database, audit store, built-in store and [`ApiCore`] (hutch-api);
//! - the plugin registry ([`crate::registry`]);
//! - the supervisor ([`crate::supervisor`]) driving the sandbox launcher;
//! - the task table ([`crate::tasks`]);
//! - the kill switch and admin policies (through hutch-api's `Authz`).
//!
//! Every method that changes something records its own audit event with the
//! caller as actor (`admin` for admins, `user` otherwise); the control server
//! need not audit those again, only its own refusals. Methods that need admin
//! rights check [`Caller::admin`] themselves too (defence in depth) and return
//! [`DaemonError::PermissionDenied`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use hutch_api::audit::{Actor, AuditEvent, AuditStore};
use hutch_api::authz::policy::{PolicySubject, blocking_policy};
use hutch_api::authz::{Effect, OpClass, Policy};
use hutch_api::db::Db;
use hutch_api::server::ApiCore;
use hutch_sandbox::cgroup::{CgroupConfig, CgroupManager};
use hutch_sandbox::launcher::Launcher;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::config::Config;
use crate::registry::{PluginRecord, Registry};
use crate::supervisor::{LauncherDriver, Supervisor};
use crate::tasks::TaskManager;

pub use crate::registry::{InstallRequest, LimitOverrides, PluginInfo, PluginLimits};
pub use crate::supervisor::{LogLine, LogStream, PluginState, RuntimeStatus};
pub use crate::tasks::{
    InputRef, TaskFilter, TaskInfo, TaskLog, TaskOutput, TaskRequest, TaskState,
};

/// What kind of failure a [`DaemonError`] is; the control server maps it to a
/// gRPC code and `hutchctl` to an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input (exit 2 / `INVALID_ARGUMENT`).
    Invalid,
    /// The caller may not do this (exit 3 / `PERMISSION_DENIED`).
    PermissionDenied,
    /// No such plugin, task, policy (exit 4 / `NOT_FOUND`).
    NotFound,
    /// The state does not allow it: already installed, not enabled, kill
    /// switch on (exit 1 / `FAILED_PRECONDITION`).
    Conflict,
    /// Something broke inside the daemon (exit 1 / `INTERNAL`).
    Internal,
}

/// Errors of [`Daemon`] operations. Messages are for humans and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The current state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// A feature that is not built yet.
    #[error("not yet implemented: {0}")]
    NotYet(&'static str),
    /// An internal failure (database, launcher, I/O).
    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DaemonError::Invalid(_) => ErrorKind::Invalid,
            DaemonError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            DaemonError::NotFound(_) => ErrorKind::NotFound,
            DaemonError::Conflict(_) => ErrorKind::Conflict,
            DaemonError::NotYet(_) | DaemonError::Internal(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> DaemonError {
        DaemonError::Internal(format!("{what}: {e}"))
    }
}

/// Who is calling, as the control server resolved it from `SO_PEERCRED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The Hutch user name (for uid 0 and `hutch-admin` members without a
    /// registered user: the Unix account name, e.g. `root`).
    pub name: String,
    /// Whether the caller is an admin (uid 0, group `hutch-admin`, or role
    /// admin).
    pub admin: bool,
    /// The peer uid.
    pub uid: u32,
}

impl Caller {
    /// The audit actor for this caller.
    pub fn actor(&self) -> Actor {
        if self.admin {
            Actor::admin(self.name.clone())
        } else {
            Actor::user(self.name.clone())
        }
    }

    /// The daemon itself (startup, signals).
    pub fn daemon() -> Caller {
        Caller {
            name: "hutchd".into(),
            admin: true,
            uid: 0,
        }
    }

    pub(crate) fn require_admin(&self, what: &str) -> Result<(), DaemonError> {
        if self.admin {
            Ok(())
        } else {
            Err(DaemonError::PermissionDenied(format!(
                "{what} is for admins only; you are uid {} ({})",
                self.uid, self.name
            )))
        }
    }
}

/// The kill switch state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitch {
    /// Why it was engaged.
    pub reason: String,
    /// Who engaged it.
    pub by: String,
    /// When (ms since the epoch).
    pub since_ms: i64,
}

/// `hutchctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// hutchd version.
    pub version: String,
    /// Daemon pid.
    pub pid: u32,
    /// Start time (ms since the epoch).
    pub started_at_ms: i64,
    /// Installed plugins.
    pub plugins_installed: usize,
    /// Plugins with a running instance.
    pub plugins_running: usize,
    /// Tasks queued or running.
    pub tasks_active: usize,
    /// Set while the kill switch is engaged.
    pub kill_switch: Option<KillSwitch>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The control socket.
    pub control_socket: PathBuf,
    /// Resident memory of the daemon process in bytes (from /proc).
    pub rss_bytes: u64,
    /// The config file in use, if any.
    pub config_path: Option<PathBuf>,
}

/// Lines of a plugin's log already in the ring plus a live follower.
#[derive(Debug)]
pub struct LogFollow {
    /// The last lines (oldest first).
    pub lines: Vec<LogLine>,
    /// New lines as they come (lagging receivers skip lines).
    pub follow: broadcast::Receiver<LogLine>,
}

/// How [`Daemon::open`] finds its configuration.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The config.
    pub config: Config,
    /// Where it came from (re-read on reload), if from a file.
    pub config_path: Option<PathBuf>,
}

/// The daemon. Cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub config: Arc<std::sync::RwLock<Arc<Config>>>,
    pub config_path: Option<PathBuf>,
    pub db: Db,
    pub core: ApiCore,
    pub started_at_ms: i64,
    pub registry: Registry,
    pub sup: Arc<Supervisor>,
    pub tasks: Arc<TaskManager>,
    pub kill: std::sync::Mutex<Option<KillSwitch>>,
    pub shutting_down: AtomicBool,
    pub recovery: RecoveryReport,
    /// `state_dir/hutchd.lock`, held while the daemon runs.
    pub state_lock: std::sync::Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

/// What the start-up sweep found left by a previous run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Sandbox cgroups killed and removed.
    pub cgroups: Vec<String>,
    /// Instance socket directories removed.
    pub sockets: Vec<String>,
    /// Tasks marked failed.
    pub tasks: Vec<String>,
}

impl RecoveryReport {
    /// Whether anything was left over.
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.sockets.is_empty() && self.tasks.is_empty()
    }
}

const KILL_SWITCH_KEY: &str = "kill_switch";

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)
        .map_err(|e| DaemonError::internal(&format!("create {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DaemonError::internal(&format!("chmod {}", path.display()), e))
}

impl Daemon {
    /// Opens the state (database, store), runs the crash-recovery sweep,
    /// takes the launcher (forked by the caller before any runtime existed)
    /// and starts every enabled plugin in the background.
    ///
    /// # Errors
    /// The state dir or database cannot be opened, or the sweep failed.
    pub async fn open(options: DaemonOptions, launcher: Launcher) -> Result<Daemon, DaemonError> {
        let config = options.config;
        let paths = config.paths.clone();
        mkdir(&paths.state_dir, 0o755)?;
        // One daemon per state dir: a second one would sweep the first's
        // sandboxes as leftovers.
        let state_lock = lock_state(&paths.state_dir)?;
        mkdir(&paths.plugins_dir(), 0o755)?;
        mkdir(&paths.data_dir(), 0o711)?;
        mkdir(&paths.runtime_dir, 0o755)?;
        mkdir(&paths.instances_dir(), 0o711)?;
        let db = Db::open(paths.database())
            .await
            .map_err(|e| DaemonError::internal("open database", e))?;
        let audit = AuditStore::open(&db, hutch_api::audit::AuditConfig::default())
            .await
            .map_err(|e| DaemonError::internal("open audit store", e))?;
        let store = hutch_api::store::BuiltinStore::open(
            &db,
            audit.clone(),
            hutch_api::store::StoreConfig {
                blob_dir: paths.blobs_dir(),
                min_free_bytes: config.store.min_free,
            },
        )
        .await
        .map_err(|e| DaemonError::internal("open store", e))?;
        let core = ApiCore::new(Arc::new(store.clone()), audit)
            .await
            .map_err(|e| DaemonError::internal("start api", e))?;
        let registry = Registry::new(
            db.pool().clone(),
            paths.plugins_dir(),
            (config.sandbox.uid_base, config.sandbox.uid_count),
        );
        let config = Arc::new(std::sync::RwLock::new(Arc::new(config)));
        // The sweep runs before the first spawn of this run.
        let cfg = config_of(&config);
        let mut recovery = sweep_runtime(&cfg).await?;
        let driver = LauncherDriver::start(launcher)?;
        let sup = Supervisor::new(driver, core.clone(), registry.clone(), config.clone());
        let tasks = TaskManager::new(
            db.pool().clone(),
            core.clone(),
            sup.clone(),
            registry.clone(),
            config.clone(),
        );
        recovery.tasks = tasks.fail_leftovers().await?;
        let kill: Option<KillSwitch> = registry
            .setting(KILL_SWITCH_KEY)
            .await?
            .and_then(|v| serde_json::from_str(&v).ok());
        if let Some(k) = &kill {
            sup.set_refusing(Some(kill_message(k)));
        }
        let inner = Inner {
            config,
            config_path: options.config_path,
            db,
            core,
            started_at_ms: now_ms(),
            registry,
            sup,
            tasks,
            kill: std::sync::Mutex::new(kill),
            shutting_down: AtomicBool::new(false),
            recovery: recovery.clone(),
            state_lock: std::sync::Mutex::new(Some(state_lock)),
        };
        let d = Daemon {
            inner: Arc::new(inner),
        };
        if !recovery.is_empty() {
            tracing::warn!(
                cgroups = recovery.cgroups.len(),
                sockets = recovery.sockets.len(),
                tasks = recovery.tasks.len(),
                "recovered leftovers of a previous run"
            );
            d.audit(
                AuditEvent::new(Actor::daemon(), "daemon.recovery", "daemon")
                    .with_details(serde_json::to_value(&recovery).unwrap_or_default()),
            )
            .await?;
        }
        d.audit(
            AuditEvent::new(Actor::daemon(), "daemon.start", "daemon").with_details(
                serde_json::json!({
                    "pid": std::process::id(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "config": d.inner.config_path,
                    "kill_switch": d.kill_switch(),
                }),
            ),
        )
        .await?;
        d.start_enabled();
        spawn_retention(Arc::downgrade(&d.inner), store);
        Ok(d)
    }

    /// Starts every enabled plugin in the background (at open and when the
    /// kill switch is lifted).
    fn start_enabled(&self) {
        let d = self.clone();
        tokio::spawn(async move {
            match d.inner.registry.list().await {
                Ok(all) => all.iter().for_each(|r| d.inner.sup.track(&r.id)),
                Err(e) => tracing::error!(error = %e, "list plugins"),
            }
            let ids = match d.inner.registry.enabled_ids().await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "list enabled plugins");
                    return;
                }
            };
            let starts = ids.iter().map(|id| d.inner.sup.start(id));
            for (id, r) in ids.iter().zip(futures::future::join_all(starts).await) {
                if let Err(e) = r {
                    tracing::error!(plugin = %id, error = %e, "start enabled plugin");
                }
            }
        });
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        config_of(&self.inner.config)
    }

    /// The API core: audit store (`core().audit()`), authorization tables
    /// (`core().authz()`: users, teams, datasets) for the control server.
    pub fn core(&self) -> &ApiCore {
        &self.inner.core
    }

    /// The shared database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// What the start-up sweep recovered.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Records a daemon-side audit event and waits until it is durable.
    ///
    /// # Errors
    /// The audit store failed.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), DaemonError> {
        self.inner
            .core
            .audit()
            .record(event)
            .await
            .map(drop)
            .map_err(|e| DaemonError::internal("audit", e))
    }

    /// Resolves if the sandbox launcher process dies: the daemon cannot run
    /// plugins any more and should exit (systemd restarts it).
    pub async fn launcher_gone(&self) {
        self.inner.sup.driver.wait_gone().await;
    }

    /// The kill switch, if engaged.
    pub fn kill_switch(&self) -> Option<KillSwitch> {
        lock(&self.inner.kill).clone()
    }

    /// Daemon status.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn status(&self) -> Result<DaemonStatus, DaemonError> {
        let c = self.config();
        let installed = self.inner.registry.list().await?.len();
        Ok(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at_ms: self.inner.started_at_ms,
            plugins_installed: installed,
            plugins_running: self.inner.sup.running_count(),
            tasks_active: self.inner.tasks.active(),
            kill_switch: self.kill_switch(),
            state_dir: c.paths.state_dir.clone(),
            control_socket: c.paths.control_socket(),
            rss_bytes: rss_bytes(Path::new("/proc/self/status")),
            config_path: self.inner.config_path.clone(),
        })
    }

    fn refuse_when_stopping(&self) -> Result<(), DaemonError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(DaemonError::Conflict("the daemon is shutting down".into()));
        }
        Ok(())
    }

    async fn info(&self, rec: &PluginRecord) -> PluginInfo {
        rec.info(&self.config().limits, self.inner.sup.status(&rec.id))
    }

    async fn audit_admin(
        &self,
        caller: &Caller,
        op: &str,
        resource: String,
        details: serde_json::Value,
    ) -> Result<(), DaemonError> {
        self.audit(AuditEvent::new(caller.actor(), op, resource).with_details(details))
            .await
    }

    // ------------------------------------------------------------ registry

    /// Installs a plugin directory (admin): validates the manifest, copies
    /// it to `plugins/<id>/<version>/` read-only, records its hash, grants
    /// `req.grant` (a subset of the requested scopes) and the limits.
    ///
    /// # Errors
    /// Invalid manifest or grant ([`ErrorKind::Invalid`]), already installed
    /// ([`ErrorKind::Conflict`]), not an admin.
    pub async fn install(
        &self,
        caller: &Caller,
        req: InstallRequest,
    ) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin install")?;
        self.refuse_when_stopping()?;
        let cfg = self.config();
        let (rec, _) = self
            .inner
            .registry
            .install(&req, &caller.name, false, &cfg)
            .await?;
        self.inner.sup.track(&rec.id);
        self.audit_admin(
            caller,
            "plugin.install",
            format!("plugin/{}", rec.id),
            serde_json::json!({
                "version": rec.version, "content_hash": rec.content_hash, "uid": rec.uid,
                "requested_scopes": rec.manifest.scopes, "granted_scopes": rec.granted,
                "limit_overrides": rec.overrides, "source": req.dir, "enabled": rec.enabled,
            }),
        )
        .await?;
        if rec.enabled
            && self.kill_switch().is_none()
            && let Err(e) = self.inner.sup.start(&rec.id).await
        {
            // Installed all the same; the status shows how the start failed.
            tracing::warn!(plugin = %rec.id, error = %e, "start after install");
        }
        Ok(self.info(&rec).await)
    }

    /// Upgrades an installed plugin to the version in `req.dir` (admin).
    /// Grants carry over only for scopes still requested; new scopes are
    /// granted only if listed in `req.grant`. A running instance restarts
    /// on the new version. The plugin upgraded is the one `req.dir`'s
    /// manifest names: callers that expect a given id check the manifest
    /// (`Manifest::load`) first.
    ///
    /// # Errors
    /// As [`Daemon::install`]; not installed ([`ErrorKind::NotFound`]); not
    /// a newer version ([`ErrorKind::Conflict`]).
    pub async fn upgrade(
        &self,
        caller: &Caller,
        req: InstallRequest,
    ) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin upgrade")?;
        self.refuse_when_stopping()?;
        let cfg = self.config();
        let (rec, prev) = self
            .inner
            .registry
            .install(&req, &caller.name, true, &cfg)
            .await?;
        let prev_granted = prev.as_ref().map(|p| p.granted.clone()).unwrap_or_default();
        let not_granted: Vec<&String> = rec
            .manifest
            .scopes
            .iter()
            .filter(|s| !rec.granted.contains(s))
            .collect();
        self.audit_admin(
            caller,
            "plugin.upgrade",
            format!("plugin/{}", rec.id),
            serde_json::json!({
                "from": prev.as_ref().map(|p| p.version.clone()), "to": rec.version,
                "content_hash": rec.content_hash, "granted_before": prev_granted,
                "granted_scopes": rec.granted, "requested_not_granted": not_granted,
                "source": req.dir,
            }),
        )
        .await?;
        let was_running = self.inner.sup.status(&rec.id).instance.is_some();
        if was_running || (rec.enabled && self.kill_switch().is_none()) {
            self.inner.sup.stop(&rec.id).await;
            self.inner.sup.start(&rec.id).await?;
        }
        Ok(self.info(&rec).await)
    }

    /// Every installed plugin with its runtime status.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>, DaemonError> {
        let caps = self.config().limits.clone();
        Ok(self
            .inner
            .registry
            .list()
            .await?
            .iter()
            .map(|r| r.info(&caps, self.inner.sup.status(&r.id)))
            .collect())
    }

    /// One plugin with its runtime status (`hutchctl plugin status`).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn plugin(&self, id: &str) -> Result<PluginInfo, DaemonError> {
        let rec = self.inner.registry.require(id).await?;
        Ok(self.info(&rec).await)
    }

    /// Replaces the granted scopes (admin); each must be requested by the
    /// manifest. A running instance restarts to pick them up.
    ///
    /// # Errors
    /// A scope not requested ([`ErrorKind::Invalid`]), not installed.
    pub async fn set_grants(
        &self,
        caller: &Caller,
        id: &str,
        scopes: Vec<String>,
    ) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin grants")?;
        let before = self.inner.registry.require(id).await?.granted;
        let rec = self.inner.registry.set_grants(id, &scopes).await?;
        self.audit_admin(
            caller,
            "plugin.grants",
            format!("plugin/{id}"),
            serde_json::json!({ "before": before, "after": rec.granted }),
        )
        .await?;
        self.restart_if_running(id).await?;
        Ok(self.info(&rec).await)
    }

    async fn restart_if_running(&self, id: &str) -> Result<(), DaemonError> {
        if self.inner.sup.status(id).instance.is_some() {
            self.inner.sup.stop(id).await;
            self.inner.sup.start(id).await?;
        }
        Ok(())
    }

    /// Sets admin limits (admin); each may only lower what the manifest and
    /// daemon defaults give. `None` fields reset to the default.
    ///
    /// A running instance is not restarted: its memory, CPU and pids limits
    /// change live in its cgroup; `wall_timeout` applies to tasks assigned
    /// from now on; `tmp_size` at the next start. The audit event
    /// (`plugin.limits`) records the effective limits and what was written
    /// live.
    ///
    /// # Errors
    /// A limit above the default ([`ErrorKind::Invalid`]), not installed;
    /// [`ErrorKind::Conflict`] when the new limits were saved but writing
    /// them to the running instance's cgroup failed (e.g. memory that cannot
    /// be reclaimed below the new limit on cgroup v1).
    pub async fn set_limits(
        &self,
        caller: &Caller,
        id: &str,
        limits: LimitOverrides,
    ) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin limits")?;
        let caps = self.config().limits.clone();
        let old = self.inner.registry.require(id).await?;
        let rec = self
            .inner
            .registry
            .set_overrides(id, &limits, &caps)
            .await?;
        let effective = rec.limits(&caps);
        let live = self.inner.sup.apply_limits(id, &effective).await;
        self.audit_admin(
            caller,
            "plugin.limits",
            format!("plugin/{id}"),
            serde_json::json!({
                "before": old.overrides,
                "after": rec.overrides,
                "effective_before": old.limits(&caps),
                "effective": effective,
                "live": live.as_ref().map(crate::supervisor::LiveLimitsChange::details),
            }),
        )
        .await?;
        if let Some(err) = live.and_then(|l| l.error.map(|e| (l.instance, e))) {
            return Err(DaemonError::Conflict(format!(
                "the new limits of {id} are saved and apply at its next start, but changing \
                 them on the running instance {} failed: {}; run `hutchctl plugin restart {id}` \
                 to apply them now",
                err.0, err.1
            )));
        }
        Ok(self.info(&rec).await)
    }

    /// After a config reload: running instances whose effective memory, CPU
    /// or pids limit changed with the new `[limits]` get it live
    /// (`plugin.limits.live`, actor daemon).
    async fn apply_default_limits_live(&self) {
        let caps = self.config().limits.clone();
        let Ok(list) = self.inner.registry.list().await else {
            return;
        };
        for rec in list {
            let effective = rec.limits(&caps);
            if let Some(change) = self.inner.sup.apply_limits(&rec.id, &effective).await {
                let mut details = change.details();
                details["effective"] = serde_json::json!(effective);
                details["cause"] = serde_json::json!("config reload");
                let mut ev = AuditEvent::new(
                    Actor::daemon(),
                    "plugin.limits.live",
                    format!("plugin/{}", rec.id),
                )
                .with_details(details);
                if let Some(e) = &change.error {
                    ev.outcome = hutch_api::audit::Outcome::Error(e.clone());
                }
                if let Err(e) = self.audit(ev).await {
                    tracing::error!(plugin = %rec.id, error = %e, "audit a live limit change");
                }
            }
        }
    }

    /// Stops and uninstalls a plugin (admin); its audit trail, task history
    /// and uid allocation stay.
    ///
    /// # Errors
    /// Not installed.
    pub async fn remove(&self, caller: &Caller, id: &str) -> Result<(), DaemonError> {
        caller.require_admin("plugin remove")?;
        self.inner.registry.require(id).await?;
        self.inner.registry.set_enabled(id, false, None).await?;
        self.inner
            .tasks
            .cancel_all(Some(id), &format!("plugin {id} is being removed"));
        self.inner.sup.forget(id).await;
        let rec = self.inner.registry.remove(id).await?;
        self.audit_admin(
            caller,
            "plugin.remove",
            format!("plugin/{id}"),
            serde_json::json!({ "version": rec.version, "versions": rec.versions, "uid": rec.uid }),
        )
        .await
    }

    // ---------------------------------------------------------- supervisor

    /// Starts a plugin's instance now (admin); does not change `enabled`.
    /// Returns once the sandbox runs (not waiting for the agent hello).
    ///
    /// # Errors
    /// Not installed, kill switch engaged, the sandbox failed to start.
    pub async fn start(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin start")?;
        self.refuse_when_stopping()?;
        let rec = self.inner.registry.require(id).await?;
        self.audit_admin(
            caller,
            "plugin.start_requested",
            format!("plugin/{id}"),
            serde_json::Value::Null,
        )
        .await?;
        self.inner.sup.start(id).await?;
        Ok(self.info(&rec).await)
    }

    /// Stops a plugin's instance gracefully (SIGTERM, grace, cgroup kill)
    /// and waits until it is gone (admin).
    ///
    /// # Errors
    /// Not installed.
    pub async fn stop(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin stop")?;
        let rec = self.inner.registry.require(id).await?;
        self.audit_admin(
            caller,
            "plugin.stop_requested",
            format!("plugin/{id}"),
            serde_json::Value::Null,
        )
        .await?;
        self.inner.sup.stop(id).await;
        Ok(self.info(&rec).await)
    }

    /// Stop then start (admin).
    ///
    /// # Errors
    /// As [`Daemon::stop`] and [`Daemon::start`].
    pub async fn restart(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin restart")?;
        self.refuse_when_stopping()?;
        let rec = self.inner.registry.require(id).await?;
        self.audit_admin(
            caller,
            "plugin.restart_requested",
            format!("plugin/{id}"),
            serde_json::Value::Null,
        )
        .await?;
        self.inner.sup.stop(id).await;
        self.inner.sup.start(id).await?;
        Ok(self.info(&rec).await)
    }

    /// Enables a plugin (admin): it starts now and with the daemon, and tasks
    /// may run on it. Clears a crash-loop disable.
    ///
    /// # Errors
    /// Not installed.
    pub async fn enable(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin enable")?;
        self.refuse_when_stopping()?;
        self.inner.registry.set_enabled(id, true, None).await?;
        self.audit_admin(
            caller,
            "plugin.enable",
            format!("plugin/{id}"),
            serde_json::Value::Null,
        )
        .await?;
        if self.kill_switch().is_none() {
            self.inner.sup.start(id).await?;
        }
        self.plugin(id).await
    }

    /// Disables a plugin (admin): stops it; no tasks run on it.
    ///
    /// # Errors
    /// Not installed.
    pub async fn disable(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin disable")?;
        self.inner.registry.set_enabled(id, false, None).await?;
        self.audit_admin(
            caller,
            "plugin.disable",
            format!("plugin/{id}"),
            serde_json::Value::Null,
        )
        .await?;
        self.inner.tasks.cancel_all(
            Some(id),
            &format!("plugin {id} was disabled by {}", caller.name),
        );
        self.inner.sup.stop(id).await;
        self.plugin(id).await
    }

    /// The last `tail` lines of a plugin's stdout/stderr (control characters
    /// neutralised) and a receiver for new ones (admin).
    ///
    /// # Errors
    /// Not installed.
    pub fn logs(&self, caller: &Caller, id: &str, tail: usize) -> Result<LogFollow, DaemonError> {
        caller.require_admin("plugin logs")?;
        self.inner
            .sup
            .logs(id, tail)
            .ok_or_else(|| crate::registry::not_installed(id))
    }

    // --------------------------------------------------------------- tasks

    /// Runs an action of an enabled plugin for the caller (any registered
    /// user); starts the plugin if needed. Returns at once with the task
    /// queued; follow it with [`Daemon::watch_task`].
    ///
    /// # Errors
    /// Unknown plugin or action, plugin disabled, kill switch, a policy
    /// blocks it, the caller is not a registered user or may not read an
    /// input.
    pub async fn run_task(
        &self,
        caller: &Caller,
        req: TaskRequest,
    ) -> Result<TaskInfo, DaemonError> {
        self.refuse_when_stopping()?;
        let refuse = |why: String| async {
            let _ = self
                .audit(
                    AuditEvent::new(
                        caller.actor(),
                        "task.submit",
                        format!("plugin/{}", req.plugin_id),
                    )
                    .denied(why.clone())
                    .with_details(serde_json::json!({ "action": req.action })),
                )
                .await;
            why
        };
        if let Some(k) = self.kill_switch() {
            return Err(DaemonError::Conflict(refuse(kill_message(&k)).await));
        }
        let snap = self.inner.core.authz().snapshot();
        if snap.role(&caller.name).is_none() && !caller.admin {
            return Err(DaemonError::PermissionDenied(
                refuse(format!(
                    "you (uid {}, {}) are not a registered Hutch user; ask an admin to add you",
                    caller.uid, caller.name
                ))
                .await,
            ));
        }
        let rec = self.inner.registry.require(&req.plugin_id).await?;
        if !rec.enabled {
            let why = match &rec.disabled_reason {
                Some(r) => format!(
                    "plugin {} is disabled ({r}); an admin can `hutchctl plugin enable` it",
                    rec.id
                ),
                None => format!(
                    "plugin {} is disabled; an admin can `hutchctl plugin enable` it",
                    rec.id
                ),
            };
            return Err(DaemonError::Conflict(refuse(why).await));
        }
        if !rec.manifest.actions.is_empty()
            && !rec.manifest.actions.iter().any(|a| a.name == req.action)
        {
            let names: Vec<&str> = rec
                .manifest
                .actions
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            return Err(DaemonError::Invalid(format!(
                "plugin {} has no action {:?} (actions: {})",
                rec.id,
                req.action,
                names.join(", ")
            )));
        }
        let cfg = self.config();
        if req.args_json.len() > cfg.tasks.max_args_bytes {
            return Err(DaemonError::Invalid(format!(
                "--args is larger than tasks.max_args_bytes ({})",
                cfg.tasks.max_args_bytes
            )));
        }
        if !req.args_json.trim().is_empty()
            && let Err(e) = serde_json::from_str::<serde_json::Value>(&req.args_json)
        {
            return Err(DaemonError::Invalid(format!("--args is not JSON: {e}")));
        }
        for i in &req.inputs {
            if !caller.admin && !snap.may_read(&caller.name, &i.dataset) {
                return Err(DaemonError::PermissionDenied(
                    refuse(format!(
                        "you ({}) may not read dataset '{}'",
                        caller.name, i.dataset
                    ))
                    .await,
                ));
            }
        }
        if let Err(e) = task_policy_check(self.inner.db.pool(), &rec.id, &caller.name).await {
            return Err(DaemonError::PermissionDenied(refuse(e.to_string()).await));
        }
        let info = self.inner.tasks.submit(req, &caller.name).await?;
        self.audit(
            AuditEvent::new(caller.actor(), "task.submit", format!("task/{}", info.id))
                .with_task(info.id.clone())
                .with_details(serde_json::json!({
                    "plugin_id": info.plugin_id, "action": info.action,
                    "args_json": info.args_json, "inputs": info.inputs,
                })),
        )
        .await?;
        Ok(info)
    }

    /// The users whose tasks `caller` may see: `None` = everyone (admins),
    /// else the caller and the members of the caller's teams.
    async fn visible_users(&self, caller: &Caller) -> Result<Option<Vec<String>>, DaemonError> {
        if caller.admin {
            return Ok(None);
        }
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT m2.user_name FROM team_members m1
             JOIN team_members m2 ON m1.team = m2.team WHERE m1.user_name = ?",
        )
        .bind(caller.name.clone())
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(|e| DaemonError::internal("read teams", e))?;
        let mut users = users;
        users.push(caller.name.clone());
        Ok(Some(users))
    }

    /// Tasks visible to the caller (admins: all; others: their own and their
    /// teams' members'), newest first.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn list_tasks(
        &self,
        caller: &Caller,
        filter: TaskFilter,
    ) -> Result<Vec<TaskInfo>, DaemonError> {
        let users = self.visible_users(caller).await?;
        self.inner.tasks.list(&filter, users.as_deref()).await
    }

    async fn visible_task(&self, caller: &Caller, id: &str) -> Result<TaskInfo, DaemonError> {
        let not_found = || DaemonError::NotFound(format!("task {id} not found"));
        let t = self.inner.tasks.get(id).await?.ok_or_else(not_found)?;
        match self.visible_users(caller).await? {
            Some(users) if !users.contains(&t.user) => Err(not_found()),
            _ => Ok(t),
        }
    }

    /// One task, if visible to the caller (its audit trail: query the audit
    /// store with `AuditFilter { task_id }`).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] (also when not visible).
    pub async fn task(&self, caller: &Caller, id: &str) -> Result<TaskInfo, DaemonError> {
        self.visible_task(caller, id).await
    }

    /// A receiver that sees every change of a task until it ends (the
    /// sender is dropped after the final state).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn watch_task(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<watch::Receiver<TaskInfo>, DaemonError> {
        let t = self.visible_task(caller, id).await?;
        Ok(match self.inner.tasks.watch(id) {
            Some(rx) => rx,
            // Ended: a receiver holding the final state whose sender is gone.
            None => watch::channel(t).1,
        })
    }

    /// Cancels a task (its submitter or an admin). Returns at once; the task
    /// ends as cancelled once the plugin stops it (or its instance is killed
    /// after the stop grace).
    ///
    /// # Errors
    /// Not found, not the caller's, already ended ([`ErrorKind::Conflict`]).
    pub async fn cancel_task(&self, caller: &Caller, id: &str) -> Result<TaskInfo, DaemonError> {
        let t = self.visible_task(caller, id).await?;
        if !caller.admin && t.user != caller.name {
            return Err(DaemonError::PermissionDenied(format!(
                "task {id} belongs to {}; only they or an admin may cancel it",
                t.user
            )));
        }
        if t.state.is_final()
            || !self
                .inner
                .tasks
                .cancel(id, format!("cancelled by {}", caller.name))
        {
            return Err(DaemonError::Conflict(format!(
                "task {id} has already ended ({})",
                t.state.as_str()
            )));
        }
        self.audit(
            AuditEvent::new(caller.actor(), "task.cancel", format!("task/{id}")).with_task(id),
        )
        .await?;
        self.visible_task(caller, id).await
    }

    // ------------------------------------------------- policies, kill switch

    /// Adds an admin policy (admin), effective immediately for running
    /// plugins and queued tasks. Returns its id.
    ///
    /// # Errors
    /// Invalid policy or duplicate name.
    pub async fn add_policy(&self, caller: &Caller, policy: Policy) -> Result<i64, DaemonError> {
        caller.require_admin("policy add")?;
        validate_policy(&policy)?;
        let id = self
            .inner
            .core
            .authz()
            .add_policy(&policy)
            .await
            .map_err(|e| {
                let msg = e.to_string();
                if msg.contains("UNIQUE") {
                    DaemonError::Conflict(format!(
                        "a policy named {:?} already exists",
                        policy.name
                    ))
                } else {
                    DaemonError::internal("add policy", msg)
                }
            })?;
        self.audit_admin(
            caller,
            "policy.add",
            format!("policy/{}", policy.name),
            serde_json::json!({ "id": id, "policy": policy }),
        )
        .await?;
        Ok(id)
    }

    /// Removes a policy (admin).
    ///
    /// # Errors
    /// Not found.
    pub async fn remove_policy(&self, caller: &Caller, id: i64) -> Result<(), DaemonError> {
        caller.require_admin("policy remove")?;
        let all = load_policies(self.inner.db.pool()).await?;
        let Some(p) = all.into_iter().find(|p| p.id == id) else {
            return Err(DaemonError::NotFound(format!("policy #{id} not found")));
        };
        self.inner
            .core
            .authz()
            .remove_policy(id)
            .await
            .map_err(|e| DaemonError::internal("remove policy", e))?;
        self.audit_admin(
            caller,
            "policy.remove",
            format!("policy/{}", p.name),
            serde_json::json!({ "id": id, "policy": p }),
        )
        .await
    }

    /// Every policy.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn list_policies(&self) -> Result<Vec<Policy>, DaemonError> {
        load_policies(self.inner.db.pool()).await
    }

    /// Engages (`Some(reason)`) or lifts (`None`) the kill switch (admin).
    /// Engaging stops every plugin and refuses new tasks until lifted; it
    /// survives a daemon restart.
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_kill_switch(
        &self,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<Option<KillSwitch>, DaemonError> {
        caller.require_admin("kill switch")?;
        match reason {
            Some(reason) => {
                let k = KillSwitch {
                    reason,
                    by: caller.name.clone(),
                    since_ms: now_ms(),
                };
                let text = serde_json::to_string(&k)
                    .map_err(|e| DaemonError::internal("kill switch", e))?;
                self.inner
                    .registry
                    .set_setting(KILL_SWITCH_KEY, Some(&text))
                    .await?;
                *lock(&self.inner.kill) = Some(k.clone());
                self.inner.sup.set_refusing(Some(kill_message(&k)));
                self.audit_admin(
                    caller,
                    "killswitch.engage",
                    "daemon".into(),
                    serde_json::to_value(&k).unwrap_or_default(),
                )
                .await?;
                self.inner.tasks.cancel_all(None, &kill_message(&k));
                self.inner.sup.stop_all().await;
                Ok(Some(k))
            }
            None => {
                let was = self.kill_switch();
                self.inner
                    .registry
                    .set_setting(KILL_SWITCH_KEY, None)
                    .await?;
                *lock(&self.inner.kill) = None;
                self.inner.sup.set_refusing(None);
                self.audit_admin(
                    caller,
                    "killswitch.lift",
                    "daemon".into(),
                    serde_json::json!({ "was": was }),
                )
                .await?;
                self.start_enabled();
                Ok(None)
            }
        }
    }

    // ----------------------------------------------------------- lifecycle

    /// Re-reads the config file (SIGHUP). A bad file keeps the old config
    /// and returns why. Changes to `[paths]` and the cgroup parent need a
    /// restart and are refused.
    ///
    /// # Errors
    /// The file is unreadable or invalid.
    pub async fn reload_config(&self) -> Result<(), DaemonError> {
        let Some(path) = self.inner.config_path.clone() else {
            return Err(DaemonError::Conflict(
                "hutchd runs on built-in defaults (no --config file); nothing to reload".into(),
            ));
        };
        let new = Config::load(Some(&path)).map_err(|e| DaemonError::Invalid(e.to_string()))?;
        let old = self.config();
        if new.paths != old.paths
            || new.sandbox.cgroup_parent != old.sandbox.cgroup_parent
            || new.sandbox.cgroup_root != old.sandbox.cgroup_root
            || new.sandbox.uid_base != old.sandbox.uid_base
            || new.sandbox.uid_count != old.sandbox.uid_count
            || new.sandbox.spawn_pool != old.sandbox.spawn_pool
            || new.store != old.store
        {
            return Err(DaemonError::Invalid(format!(
                "{}: [paths], [store], sandbox.cgroup_*, sandbox.uid_* and sandbox.spawn_pool need a daemon restart; keeping the running config",
                path.display()
            )));
        }
        match self.inner.config.write() {
            Ok(mut g) => *g = Arc::new(new),
            Err(p) => *p.into_inner() = Arc::new(new),
        }
        self.audit(
            AuditEvent::new(Actor::daemon(), "config.reload", "daemon")
                .with_details(serde_json::json!({ "path": path })),
        )
        .await?;
        self.apply_default_limits_live().await;
        Ok(())
    }

    /// Graceful shutdown: refuse new work, cancel tasks, stop every plugin
    /// (SIGTERM, grace, kill), close the launcher, flush the audit store.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner
            .sup
            .set_refusing(Some("the daemon is shutting down".into()));
        self.inner
            .tasks
            .cancel_all(None, "the daemon is shutting down");
        let grace = self.config().supervisor.stop_grace;
        self.inner.tasks.drain(grace + Duration::from_secs(1)).await;
        self.inner.sup.stop_all().await;
        self.inner.sup.driver.shutdown().await;
        let _ = self
            .audit(
                AuditEvent::new(Actor::daemon(), "daemon.stop", "daemon")
                    .with_details(serde_json::json!({ "pid": std::process::id() })),
            )
            .await;
        self.inner.core.audit_sink().flush();
        remove_cgroup_parent(&self.config());
        lock(&self.inner.state_lock).take();
    }
}

/// Takes `state_dir/hutchd.lock` (exclusive, non-blocking) and writes our
/// pid into it.
fn lock_state(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use std::io::Write;
    let path = state_dir.join("hutchd.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| DaemonError::internal(&format!("open {}", path.display()), e))?;
    let mut locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            DaemonError::Conflict(format!(
                "another hutchd (pid {}) uses the state dir {} ({errno}); stop it first",
                holder.trim(),
                state_dir.display()
            ))
        })?;
    let _ = locked.set_len(0);
    let _ = writeln!(*locked, "{}", std::process::id());
    Ok(locked)
}

fn config_of(c: &std::sync::RwLock<Arc<Config>>) -> Arc<Config> {
    match c.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn kill_message(k: &KillSwitch) -> String {
    format!(
        "the kill switch is engaged by {} ({}); an admin can lift it with `hutchctl kill-switch off`",
        k.by, k.reason
    )
}

fn cgroup_manager(cfg: &Config) -> Result<CgroupManager, DaemonError> {
    CgroupManager::new(CgroupConfig {
        parent: cfg.sandbox.cgroup_parent.clone(),
        cgroup_root: cfg.sandbox.cgroup_root.clone(),
        ..CgroupConfig::default()
    })
    .map_err(|e| DaemonError::internal("cgroups", e))
}

/// Kills and removes sandbox cgroups and instance sockets left by a previous
/// run (crash, `kill -9`). Runs before the first spawn.
async fn sweep_runtime(cfg: &Config) -> Result<RecoveryReport, DaemonError> {
    let cfg2 = cfg.clone();
    let cgroups = tokio::task::spawn_blocking(move || -> Result<Vec<String>, DaemonError> {
        let m = cgroup_manager(&cfg2)?;
        m.sweep_stale()
            .map_err(|e| DaemonError::internal("sweep stale cgroups", e))
    })
    .await
    .map_err(|e| DaemonError::internal("sweep", e))??;
    let mut sockets = Vec::new();
    let dir = cfg.paths.instances_dir();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            sockets.push(e.file_name().to_string_lossy().into_owned());
            let r = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = r {
                tracing::error!(path = %p.display(), error = %err, "remove stale instance dir");
            }
        }
    }
    Ok(RecoveryReport {
        cgroups,
        sockets,
        tasks: Vec::new(),
    })
}

/// Applies `[retention]` every `retention.interval` (first run one interval
/// after start) until the daemon is gone or shutting down.
fn spawn_retention(inner: std::sync::Weak<Inner>, store: hutch_api::store::BuiltinStore) {
    tokio::spawn(async move {
        loop {
            let interval = match inner.upgrade() {
                Some(i) => config_of(&i.config).retention.interval,
                None => return,
            };
            tokio::time::sleep(interval.max(Duration::from_secs(1))).await;
            let Some(i) = inner.upgrade() else { return };
            if i.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            let r = config_of(&i.config).retention.clone();
            let policy = hutch_api::store::RetentionPolicy {
                keep_old_versions_for: r.keep_old_versions_for,
                ..hutch_api::store::RetentionPolicy::default()
            };
            match store.apply_retention(&policy, Actor::daemon()).await {
                Ok(rep) => tracing::info!(
                    versions_removed = rep.versions_removed,
                    blobs_removed = rep.gc.blobs_removed,
                    "retention"
                ),
                Err(e) => tracing::error!(error = %e, "object retention"),
            }
            if !r.audit_keep_for.is_zero() {
                let keep = i64::try_from(r.audit_keep_for.as_micros()).unwrap_or(i64::MAX);
                let cutoff = hutch_api::audit::now_us().saturating_sub(keep);
                if let Err(e) = i.core.audit().purge_before(cutoff, Actor::daemon()).await {
                    tracing::error!(error = %e, "audit retention");
                }
            }
        }
    });
}

/// Best-effort removal of the (empty) cgroup parent at shutdown.
fn remove_cgroup_parent(cfg: &Config) {
    if let Ok(m) = cgroup_manager(cfg) {
        for d in m.parent_dirs() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn validate_policy(p: &Policy) -> Result<(), DaemonError> {
    let bad = |m: &str| Err(DaemonError::Invalid(format!("policy {:?}: {m}", p.name)));
    if p.name.trim().is_empty() || p.name.len() > 128 {
        return bad("name must be 1 to 128 characters");
    }
    if p.plugin_pattern.is_empty() || p.plugin_pattern.len() > 256 {
        return bad("plugin pattern must be 1 to 256 characters");
    }
    if p.hour_start.is_some_and(|h| h > 23) || p.hour_end.is_some_and(|h| h == 0 || h > 24) {
        return bad("hours must be start 0..=23 and end 1..=24");
    }
    if p.weekdays.is_some_and(|w| w == 0 || w > 127) {
        return bad("weekdays must name at least one day");
    }
    if let (Some(a), Some(b)) = (p.not_before_ms, p.not_after_ms)
        && a >= b
    {
        return bad("the time window is empty (from must be before until)");
    }
    Ok(())
}

/// Every admin policy, from the `policies` table.
///
/// # Errors
/// The database could not be read.
pub(crate) async fn load_policies(pool: &sqlx::SqlitePool) -> Result<Vec<Policy>, DaemonError> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT * FROM policies ORDER BY id")
        .fetch_all(pool)
        .await
        .map_err(|e| DaemonError::internal("read policies", e))?;
    let e = |e: sqlx::Error| DaemonError::internal("read policies", e);
    let small = |v: Option<i64>| v.and_then(|x| u8::try_from(x).ok());
    rows.iter()
        .map(|r| {
            let effect: String = r.try_get("effect").map_err(e)?;
            let class: Option<String> = r.try_get("operation_class").map_err(e)?;
            Ok(Policy {
                id: r.try_get("id").map_err(e)?,
                name: r.try_get("name").map_err(e)?,
                effect: Effect::parse(&effect).unwrap_or(Effect::Deny),
                plugin_pattern: r.try_get("plugin_pattern").map_err(e)?,
                user: r.try_get("user_name").map_err(e)?,
                team: r.try_get("team").map_err(e)?,
                operation_class: class.as_deref().and_then(OpClass::parse),
                not_before_ms: r.try_get("not_before_ms").map_err(e)?,
                not_after_ms: r.try_get("not_after_ms").map_err(e)?,
                weekdays: small(r.try_get("weekdays").map_err(e)?),
                hour_start: small(r.try_get("hour_start").map_err(e)?),
                hour_end: small(r.try_get("hour_end").map_err(e)?),
                reason: r.try_get("reason").map_err(e)?,
            })
        })
        .collect()
}

/// Whether a policy without an operation class (a policy on the plugin as a
/// whole) blocks `user` from running tasks of `plugin` now (policy clock).
///
/// # Errors
/// [`DaemonError::PermissionDenied`] citing the rule.
pub(crate) async fn task_policy_check(
    pool: &sqlx::SqlitePool,
    plugin: &str,
    user: &str,
) -> Result<(), DaemonError> {
    let policies: Vec<Policy> = load_policies(pool)
        .await?
        .into_iter()
        .filter(|p| p.operation_class.is_none())
        .collect();
    if policies.is_empty() {
        return Ok(());
    }
    let teams: Vec<String> =
        sqlx::query_scalar("SELECT team FROM team_members WHERE user_name = ?")
            .bind(user.to_owned())
            .fetch_all(pool)
            .await
            .map_err(|e| DaemonError::internal("read teams", e))?;
    let subject = PolicySubject {
        plugin_id: plugin,
        user,
        teams: &teams,
        class: OpClass::Read,
        now_ms: hutch_api::clock::now_ms(),
    };
    match blocking_policy(&policies, &subject) {
        Some(p) => Err(DaemonError::PermissionDenied(p.denial())),
        None => Ok(()),
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `VmRSS` from a `/proc/<pid>/status` file, in bytes (0 if unreadable).
pub fn rss_bytes(status: &Path) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
