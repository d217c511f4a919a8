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

use hutch_api::audit::{Actor, AuditEvent, AuditStore};
use hutch_api::authz::Policy;
use hutch_api::db::Db;
use hutch_api::server::ApiCore;
use hutch_sandbox::launcher::Launcher;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::config::Config;

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
    pub config: std::sync::RwLock<Arc<Config>>,
    pub config_path: Option<PathBuf>,
    pub db: Db,
    pub core: ApiCore,
    pub started_at_ms: i64,
    #[allow(dead_code)] // driven by the supervisor (next commit)
    pub launcher: std::sync::Mutex<Option<Launcher>>,
}

impl Daemon {
    /// Opens the state (database, store), runs the crash-recovery sweep,
    /// takes the launcher (forked by the caller before any runtime existed)
    /// and starts every enabled plugin.
    ///
    /// # Errors
    /// The state dir or database cannot be opened, or the sweep failed.
    pub async fn open(options: DaemonOptions, launcher: Launcher) -> Result<Daemon, DaemonError> {
        let config = options.config;
        let state = config.paths.state_dir.clone();
        std::fs::create_dir_all(&state)
            .map_err(|e| DaemonError::internal(&format!("create {}", state.display()), e))?;
        let db = Db::open(state.join("hutch.db"))
            .await
            .map_err(|e| DaemonError::internal("open database", e))?;
        let audit = AuditStore::open(&db, hutch_api::audit::AuditConfig::default())
            .await
            .map_err(|e| DaemonError::internal("open audit store", e))?;
        let store = hutch_api::store::BuiltinStore::open(
            &db,
            audit.clone(),
            hutch_api::store::StoreConfig {
                blob_dir: state.join("blobs"),
            },
        )
        .await
        .map_err(|e| DaemonError::internal("open store", e))?;
        let core = ApiCore::new(Arc::new(store), audit)
            .await
            .map_err(|e| DaemonError::internal("start api", e))?;
        let inner = Inner {
            config: std::sync::RwLock::new(Arc::new(config)),
            config_path: options.config_path,
            db,
            core,
            started_at_ms: now_ms(),
            launcher: std::sync::Mutex::new(Some(launcher)),
        };
        Ok(Daemon {
            inner: Arc::new(inner),
        })
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        match self.inner.config.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
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

    /// Daemon status.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn status(&self) -> Result<DaemonStatus, DaemonError> {
        let c = self.config();
        Ok(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at_ms: self.inner.started_at_ms,
            plugins_installed: 0,
            plugins_running: 0,
            tasks_active: 0,
            kill_switch: None,
            state_dir: c.paths.state_dir.clone(),
            control_socket: c.paths.control_socket(),
            rss_bytes: rss_bytes(Path::new("/proc/self/status")),
            config_path: self.inner.config_path.clone(),
        })
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
        let _ = req;
        Err(DaemonError::NotYet("plugin install"))
    }

    /// Upgrades an installed plugin to the version in `req.dir` (admin).
    /// Grants carry over only for scopes still requested; new scopes are
    /// granted only if listed in `req.grant`. A running instance restarts
    /// on the new version.
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
        let _ = req;
        Err(DaemonError::NotYet("plugin upgrade"))
    }

    /// Every installed plugin with its runtime status.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>, DaemonError> {
        Err(DaemonError::NotYet("plugin list"))
    }

    /// One plugin with its runtime status (`hutchctl plugin status`).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn plugin(&self, id: &str) -> Result<PluginInfo, DaemonError> {
        Err(DaemonError::NotFound(format!(
            "plugin {id} is not installed"
        )))
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
        let _ = (id, scopes);
        Err(DaemonError::NotYet("plugin grants"))
    }

    /// Sets admin limits (admin); each may only lower what the manifest and
    /// daemon defaults give. `None` fields reset to the default.
    ///
    /// # Errors
    /// A limit above the default ([`ErrorKind::Invalid`]), not installed.
    pub async fn set_limits(
        &self,
        caller: &Caller,
        id: &str,
        limits: LimitOverrides,
    ) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin limits")?;
        let _ = (id, limits);
        Err(DaemonError::NotYet("plugin limits"))
    }

    /// Stops and uninstalls a plugin (admin); its audit trail, task history
    /// and uid allocation stay.
    ///
    /// # Errors
    /// Not installed.
    pub async fn remove(&self, caller: &Caller, id: &str) -> Result<(), DaemonError> {
        caller.require_admin("plugin remove")?;
        let _ = id;
        Err(DaemonError::NotYet("plugin remove"))
    }

    // ---------------------------------------------------------- supervisor

    /// Starts a plugin's instance now (admin); does not change `enabled`.
    /// Returns once the sandbox runs (not waiting for the agent hello).
    ///
    /// # Errors
    /// Not installed, kill switch engaged, the sandbox failed to start.
    pub async fn start(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin start")?;
        let _ = id;
        Err(DaemonError::NotYet("plugin start"))
    }

    /// Stops a plugin's instance gracefully (SIGTERM, grace, cgroup kill)
    /// and waits until it is gone (admin).
    ///
    /// # Errors
    /// Not installed.
    pub async fn stop(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin stop")?;
        let _ = id;
        Err(DaemonError::NotYet("plugin stop"))
    }

    /// Stop then start (admin).
    ///
    /// # Errors
    /// As [`Daemon::stop`] and [`Daemon::start`].
    pub async fn restart(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin restart")?;
        let _ = id;
        Err(DaemonError::NotYet("plugin restart"))
    }

    /// Enables a plugin (admin): it starts now and with the daemon, and tasks
    /// may run on it. Clears a crash-loop disable.
    ///
    /// # Errors
    /// Not installed.
    pub async fn enable(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin enable")?;
        let _ = id;
        Err(DaemonError::NotYet("plugin enable"))
    }

    /// Disables a plugin (admin): stops it; no tasks run on it.
    ///
    /// # Errors
    /// Not installed.
    pub async fn disable(&self, caller: &Caller, id: &str) -> Result<PluginInfo, DaemonError> {
        caller.require_admin("plugin disable")?;
        let _ = id;
        Err(DaemonError::NotYet("plugin disable"))
    }

    /// The last `tail` lines of a plugin's stdout/stderr (control characters
    /// neutralised) and a receiver for new ones (admin).
    ///
    /// # Errors
    /// Not installed.
    pub fn logs(&self, caller: &Caller, id: &str, tail: usize) -> Result<LogFollow, DaemonError> {
        caller.require_admin("plugin logs")?;
        let _ = (id, tail);
        Err(DaemonError::NotYet("plugin logs"))
    }

    // --------------------------------------------------------------- tasks

    /// Runs an action of an enabled plugin for the caller (any registered
    /// user); starts the plugin if needed. Returns at once with the task
    /// queued or running; follow it with [`Daemon::watch_task`].
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
        let _ = (caller, req);
        Err(DaemonError::NotYet("task run"))
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
        let _ = (caller, filter);
        Err(DaemonError::NotYet("task list"))
    }

    /// One task, if visible to the caller (its audit trail: query the audit
    /// store with `AuditFilter { task_id }`).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] (also when not visible).
    pub async fn task(&self, caller: &Caller, id: &str) -> Result<TaskInfo, DaemonError> {
        let _ = caller;
        Err(DaemonError::NotFound(format!("task {id} not found")))
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
        let _ = caller;
        Err(DaemonError::NotFound(format!("task {id} not found")))
    }

    /// Cancels a task (its submitter or an admin).
    ///
    /// # Errors
    /// Not found, not the caller's, already ended ([`ErrorKind::Conflict`]).
    pub async fn cancel_task(&self, caller: &Caller, id: &str) -> Result<TaskInfo, DaemonError> {
        let _ = (caller, id);
        Err(DaemonError::NotYet("task cancel"))
    }

    // ------------------------------------------------- policies, kill switch

    /// Adds an admin policy (admin), effective immediately for running
    /// plugins and queued tasks. Returns its id.
    ///
    /// # Errors
    /// Invalid policy or duplicate name.
    pub async fn add_policy(&self, caller: &Caller, policy: Policy) -> Result<i64, DaemonError> {
        caller.require_admin("policy add")?;
        let _ = policy;
        Err(DaemonError::NotYet("policy add"))
    }

    /// Removes a policy (admin).
    ///
    /// # Errors
    /// Not found.
    pub async fn remove_policy(&self, caller: &Caller, id: i64) -> Result<(), DaemonError> {
        caller.require_admin("policy remove")?;
        let _ = id;
        Err(DaemonError::NotYet("policy remove"))
    }

    /// Every policy.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn list_policies(&self) -> Result<Vec<Policy>, DaemonError> {
        Err(DaemonError::NotYet("policy list"))
    }

    /// Engages (`Some(reason)`) or lifts (`None`) the kill switch (admin).
    /// Engaging stops every plugin and refuses new tasks until lifted.
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_kill_switch(
        &self,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<Option<KillSwitch>, DaemonError> {
        caller.require_admin("kill switch")?;
        let _ = reason;
        Err(DaemonError::NotYet("kill switch"))
    }

    // ----------------------------------------------------------- lifecycle

    /// Re-reads the config file (SIGHUP). A bad file keeps the old config
    /// and returns why. Changes to paths need a restart and are refused.
    ///
    /// # Errors
    /// The file is unreadable or invalid.
    pub async fn reload_config(&self) -> Result<(), DaemonError> {
        Err(DaemonError::NotYet("config reload"))
    }

    /// Graceful shutdown: refuse new work, stop every plugin (SIGTERM,
    /// grace, kill), fail what is still running, flush the audit store.
    pub async fn shutdown(&self) {
        let grace = self.config().supervisor.stop_grace;
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), async {}).await;
        self.inner.core.audit_sink().flush();
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
