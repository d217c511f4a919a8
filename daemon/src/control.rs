//! The control socket: `hutch.admin.v1.Admin` served on a Unix socket.
//!
//! The socket is mode 0666: anybody on the host may connect, and the daemon
//! decides per call from the peer's `SO_PEERCRED` uid (never from anything in
//! the request) who the caller is. Steps of every call:
//!
//! 1. [`peer_uid`]: the uid tonic captured from the connection
//!    (`UdsConnectInfo`); a connection without credentials is refused;
//! 2. [`Control::identify`]: uid 0 and members of the Unix group
//!    `hutch-admin` (by `getgrouplist` of the uid's login, so `/etc/group`
//!    and NSS both count) are admins; any uid is then mapped to a Hutch user
//!    (table `user_uids`, else the login name) with its role; role `admin`
//!    also makes an admin;
//! 3. the method checks what the identity may do ([`Identity::require_admin`],
//!    [`Identity::caller`] for registered users; steps 1-3 are
//!    `Control::handle`, which every method but `WhoAmI` goes through, and
//!    names given in requests are checked the same way everywhere by
//!    `user_name` and `team_name`); a refusal is audited
//!    (`control.refused`, denied, aggregated like plugin denials) and returned as `PERMISSION_DENIED` with a
//!    message that says who the caller is and what to do;
//! 4. the work is done by [`Daemon`] (registry, supervisor, tasks, policies,
//!    kill switch: those methods audit themselves), by hutch-api directly
//!    (audit query/export/verify, revert, datasets through the backend) or by
//!    [`Accounts`] (users, teams); changes made here are audited here with
//!    the caller as actor.
//!
//! [`bind`] creates the socket (refusing to steal one a live daemon still
//! serves) and [`serve`] runs the server until its shutdown future resolves.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use hutch_api::audit::{Actor, AuditEvent, AuditFilter, Decision, EventId, StoredEvent, ops};
use hutch_api::authz::{Access, Effect, OpClass, Operation, Owner, Policy, Role};
use hutch_api::revert::{RevertError, Reverter};
use hutch_api::store::{
    ByteStream, DatasetId, DatasetInfo, ListObjects, NewDataset, ObjectKey, StoreError, Version,
};
use hutch_plugin_protocol::admin::v1 as pb;
use hutch_plugin_protocol::admin::v1::admin_server::{Admin, AdminServer};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use crate::accounts::{AccountError, Accounts, UserRow};
use crate::config::Config;
use crate::daemon::{
    Caller, Daemon, DaemonError, ErrorKind, InputRef, LimitOverrides, PluginInfo, TaskFilter,
    TaskInfo, TaskRequest, TaskState,
};

/// The Unix group whose members are Hutch admins.
pub const ADMIN_GROUP: &str = "hutch-admin";

/// Test-only: set the policy clock to this instant (RFC 3339, e.g.
/// `2026-12-24T10:00:00Z`) when hutchd starts; it then runs on from there.
/// Lets tests check time-window policies without waiting for the window.
/// Never set in production (only the daemon's own environment can set it).
pub const TEST_CLOCK_ENV: &str = "HUTCH_TEST_CLOCK";

/// Largest chunk sent in object and export streams.
const CHUNK: usize = 1 << 20;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A file operation on the socket path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("control socket {0} is in use by a running hutchd; stop it first")]
    InUse(PathBuf),
    /// The gRPC server failed.
    #[error("control server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The test clock variable is malformed.
    #[error("{TEST_CLOCK_ENV}={value:?}: expected an RFC 3339 time like 2026-12-24T10:00:00Z")]
    BadTestClock {
        /// The value.
        value: String,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ControlError + 'a {
    move |source| ControlError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Applies [`TEST_CLOCK_ENV`] to hutch-api's policy clock, if set. Returns
/// the offset applied (ms).
///
/// # Errors
/// [`ControlError::BadTestClock`] if the value is not an RFC 3339 time.
pub fn apply_test_clock_from_env() -> Result<Option<i64>, ControlError> {
    let Ok(value) = std::env::var(TEST_CLOCK_ENV) else {
        return Ok(None);
    };
    let t = humantime::parse_rfc3339_weak(&value).map_err(|_| ControlError::BadTestClock {
        value: value.clone(),
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or(ControlError::BadTestClock { value })?;
    let offset = ms - hutch_api::clock::system_ms();
    hutch_api::clock::set_offset_ms(offset);
    tracing::warn!(
        offset_ms = offset,
        "{TEST_CLOCK_ENV} is set: the policy clock is shifted (tests only)"
    );
    Ok(Some(offset))
}

/// Creates the control socket at `path`, mode 0666, its directory 0755.
/// A stale socket file (no daemon answering) is replaced; a live one is not.
///
/// # Errors
/// [`ControlError::InUse`] when a daemon answers there, [`ControlError::Io`].
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", dir))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io_err("chmod", path))?;
    Ok(listener)
}

/// Serves the admin API on `listener` until `shutdown` resolves. Applies
/// [`TEST_CLOCK_ENV`] first, if set.
///
/// # Errors
/// [`ControlError::Serve`] if the server fails, [`ControlError::BadTestClock`].
///
/// # Cancel safety
/// Dropping the future stops accepting; in-flight calls are dropped.
pub async fn serve(
    daemon: Daemon,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControlError> {
    apply_test_clock_from_env()?;
    let control = Control::new(daemon);
    tonic::transport::Server::builder()
        .add_service(
            AdminServer::new(control)
                .max_decoding_message_size(CHUNK + 64 * 1024)
                .max_encoding_message_size(16 << 20),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// The peer uid of a call, from the connection's `SO_PEERCRED`.
///
/// # Errors
/// `PERMISSION_DENIED` when the connection carries no credentials.
pub fn peer_uid<T>(req: &Request<T>) -> Result<u32, Status> {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid())
        .ok_or_else(|| {
            Status::permission_denied(
                "permission denied: no peer credentials on the control socket",
            )
        })
}

/// Who a caller is, resolved from their uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The peer uid.
    pub uid: u32,
    /// The uid's login name, if it has a passwd entry.
    pub unix_name: Option<String>,
    /// The Hutch user it maps to, with the role.
    pub user: Option<(String, Role)>,
    /// Why it is an admin (`None`: not an admin).
    pub admin_reason: Option<&'static str>,
}

impl Identity {
    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.admin_reason.is_some()
    }

    /// "uid 1000 (alice, role member)" for messages.
    pub fn describe(&self) -> String {
        match (&self.user, &self.unix_name) {
            (Some((name, role)), _) => format!("uid {} ({name}, role {})", self.uid, role.as_str()),
            (None, Some(login)) if self.is_admin() => format!("uid {} ({login}, admin)", self.uid),
            (None, Some(login)) => format!("uid {} ({login}, not a Hutch user)", self.uid),
            (None, None) => format!("uid {} (no login name, not a Hutch user)", self.uid),
        }
    }

    /// The name used in audit events and task ownership.
    pub fn name(&self) -> String {
        match (&self.user, &self.unix_name) {
            (Some((n, _)), _) => n.clone(),
            (None, Some(l)) => l.clone(),
            (None, None) => format!("uid-{}", self.uid),
        }
    }

    /// The caller as [`Daemon`] methods take it, if they may do anything:
    /// admins and registered users.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` saying how to get registered.
    pub fn caller(&self) -> Result<Caller, Status> {
        if self.user.is_none() && !self.is_admin() {
            return Err(Status::permission_denied(format!(
                "permission denied: you are {}; ask an admin to register you: \
                 hutchctl user add NAME --uid {} --role member",
                self.describe(),
                self.uid
            )));
        }
        Ok(Caller {
            name: self.name(),
            admin: self.is_admin(),
            uid: self.uid,
        })
    }

    /// Admins only.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` naming the caller.
    pub fn require_admin(&self, what: &str) -> Result<Caller, Status> {
        if self.is_admin() {
            return self.caller();
        }
        Err(Status::permission_denied(format!(
            "permission denied: {what} is for admins only; you are {}. \
             Run it as root or as a member of group {ADMIN_GROUP}, or ask an admin",
            self.describe()
        )))
    }
}

/// Whether `login` (primary gid `gid`) is a member of `group` by the
/// system's group database (files and NSS).
fn in_group(login: &str, gid: nix::unistd::Gid, group: &str) -> bool {
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    if g.gid == gid || g.mem.iter().any(|m| m == login) {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(login) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, gid).is_ok_and(|gs| gs.contains(&g.gid))
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Admins only ([`Identity::require_admin`]).
    Admin,
    /// Admins and registered users ([`Identity::caller`]).
    User,
}

/// A user name as given to the control API: trimmed, 1 to 64 characters,
/// no `/` or control characters.
fn user_name(name: &str) -> Result<String, Status> {
    let n = name.trim();
    if n.is_empty() || n.len() > 64 || n.chars().any(|ch| ch.is_control() || ch == '/') {
        return Err(Status::invalid_argument(format!(
            "user name {name:?}: 1..64 characters, no '/' or control characters"
        )));
    }
    Ok(n.to_owned())
}

/// A team name as given to the control API: not blank (kept as given).
fn team_name(name: &str) -> Result<String, Status> {
    if name.trim().is_empty() {
        return Err(Status::invalid_argument("team name must not be empty"));
    }
    Ok(name.to_owned())
}

/// The admin service.
#[derive(Clone)]
pub struct Control {
    daemon: Daemon,
    accounts: Accounts,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn daemon_status(e: DaemonError) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::Invalid => Status::invalid_argument(msg),
        ErrorKind::PermissionDenied => Status::permission_denied(msg),
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::Conflict => Status::failed_precondition(msg),
        ErrorKind::Internal => Status::internal(msg),
    }
}

fn account_status(e: AccountError) -> Status {
    match e {
        AccountError::NotFound(m) => Status::not_found(m),
        AccountError::UidTaken { .. } => Status::failed_precondition(e.to_string()),
        AccountError::Db { .. } | AccountError::Authz(_) => Status::internal(e.to_string()),
    }
}

fn store_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::InvalidName { .. } | StoreError::Input(_) => Status::invalid_argument(msg),
        StoreError::DatasetNotFound(_)
        | StoreError::ObjectNotFound { .. }
        | StoreError::Purged { .. } => Status::not_found(msg),
        StoreError::DatasetExists(_) => Status::already_exists(msg),
        StoreError::Conflict { .. } => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

fn revert_status(e: RevertError) -> Status {
    let msg = e.to_string();
    match e {
        RevertError::EventNotFound(_) => Status::not_found(msg),
        RevertError::NotRevertible { .. } | RevertError::NothingToRevert(_) => {
            Status::invalid_argument(msg)
        }
        RevertError::Conflict { .. } => Status::failed_precondition(msg),
        RevertError::Store(e) => store_status(e),
        RevertError::Audit(_) => Status::internal(msg),
    }
}

fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn ms_opt(v: i64) -> Option<i64> {
    if v == 0 { None } else { Some(v) }
}

impl Control {
    /// `team add-member` (`add`) or `team remove-member`: the same checks,
    /// audit and answer; only the accounts call differs.
    async fn team_member(
        &self,
        req: Request<pb::TeamMemberRequest>,
        add: bool,
    ) -> Result<Response<pb::Team>, Status> {
        let (what, op) = if add {
            ("team add-member", "admin.team.add_member")
        } else {
            ("team remove-member", "admin.team.remove_member")
        };
        self.handle(req, Need::Admin, what, |c, r| async move {
            let (team, user) = (team_name(&r.team)?, user_name(&r.user)?);
            let members = if add {
                self.accounts.add_member(&team, &user).await
            } else {
                self.accounts.remove_member(&team, &user).await
            }
            .map_err(account_status)?;
            self.record(
                &c,
                op,
                format!("team/{team}"),
                serde_json::json!({ "user": user }),
            )
            .await?;
            Ok::<_, Status>(pb::Team {
                name: team,
                members,
            })
        })
        .await
    }

    /// The service over `daemon`.
    pub fn new(daemon: Daemon) -> Control {
        let accounts = Accounts::new(daemon.db().pool().clone(), daemon.core().authz().clone());
        Control { daemon, accounts }
    }

    /// Resolves the caller of `req`.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` without peer credentials, `INTERNAL` if the user
    /// tables cannot be read.
    pub async fn identify<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let uid = peer_uid(req)?;
        let account = tokio::task::spawn_blocking(move || {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
        })
        .await
        .ok()
        .flatten();
        let unix_name = account.as_ref().map(|a| a.name.clone());
        let user = self
            .accounts
            .resolve(uid, unix_name.as_deref())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut admin_reason = None;
        if uid == 0 {
            admin_reason = Some("uid 0");
        } else if let Some(a) = &account {
            let (login, gid) = (a.name.clone(), a.gid);
            let member = tokio::task::spawn_blocking(move || in_group(&login, gid, ADMIN_GROUP))
                .await
                .unwrap_or(false);
            if member {
                admin_reason = Some("group hutch-admin");
            }
        }
        if admin_reason.is_none() && user.as_ref().is_some_and(|(_, r)| *r == Role::Admin) {
            admin_reason = Some("role admin");
        }
        Ok(Identity {
            uid,
            unix_name,
            user,
            admin_reason,
        })
    }

    /// Audits a refusal and passes the status through. Refusals go through
    /// hutch-api's aggregating sink, so a local user hammering the socket
    /// costs at most two audit rows per second per distinct refusal.
    async fn refused(&self, who: &Identity, op: &str, status: Status) -> Status {
        let actor = Actor::user(who.name());
        let ev = AuditEvent::new(actor, "control.refused", format!("control/{op}"))
            .denied(status.message().to_owned())
            .with_details(serde_json::json!({ "uid": who.uid }));
        self.daemon.core().audit_sink().deny(ev);
        status
    }

    async fn admin<T>(&self, req: &Request<T>, what: &str) -> Result<Caller, Status> {
        let who = self.identify(req).await?;
        match who.require_admin(what) {
            Ok(c) => Ok(c),
            Err(s) => Err(self.refused(&who, what, s).await),
        }
    }

    async fn registered<T>(&self, req: &Request<T>, what: &str) -> Result<Caller, Status> {
        let who = self.identify(req).await?;
        match who.caller() {
            Ok(c) => Ok(c),
            Err(s) => Err(self.refused(&who, what, s).await),
        }
    }

    /// The shape of every method but `who_am_i`: identify the caller from
    /// the connection, check that they may do `what` (`need`; a refusal is
    /// audited and returned as `PERMISSION_DENIED`), then run `work` with
    /// the caller and the request body. `work` validates its input
    /// (`INVALID_ARGUMENT` before anything changes), calls the daemon,
    /// records what it changed and builds the reply.
    async fn handle<Req, T, F, Fut>(
        &self,
        req: Request<Req>,
        need: Need,
        what: &str,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Caller, Req) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let caller = match need {
            Need::Admin => self.admin(&req, what).await?,
            Need::User => self.registered(&req, what).await?,
        };
        work(caller, req.into_inner()).await.map(Response::new)
    }

    /// Records an admin/user change made here.
    async fn record(
        &self,
        caller: &Caller,
        op: &str,
        resource: String,
        details: serde_json::Value,
    ) -> Result<(), Status> {
        let ev = AuditEvent::new(caller.actor(), op, resource).with_details(details);
        self.daemon.audit(ev).await.map_err(daemon_status)
    }

    /// Whether `caller` may do `class` on `dataset` (admins: anything).
    fn may(&self, caller: &Caller, class: OpClass, dataset: &str) -> Result<(), Status> {
        if caller.admin {
            return Ok(());
        }
        self.daemon
            .core()
            .authz()
            .snapshot()
            .user_may(&caller.name, class, Some(dataset))
            .map_err(|r| Status::permission_denied(format!("permission denied: {r}")))
    }

    fn pb_dataset(&self, d: &DatasetInfo) -> pb::Dataset {
        let snap = self.daemon.core().authz().snapshot();
        let (owner_user, owner_team) = match snap.owner(d.id.as_str()) {
            Some(Owner::User(u)) => (u.clone(), String::new()),
            Some(Owner::Team(t)) => (String::new(), t.clone()),
            None => (d.owner.clone().unwrap_or_default(), String::new()),
        };
        pb::Dataset {
            id: d.id.to_string(),
            name: d.name.clone(),
            owner_user,
            owner_team,
            created_unix_ms: d.created_us / 1000,
            shares: Vec::new(),
        }
    }

    async fn shares_of(&self, dataset: &str) -> Vec<String> {
        sqlx::query_as::<_, (String, String)>(
            "SELECT team, access FROM dataset_shares WHERE dataset_id = ? ORDER BY team",
        )
        .bind(dataset)
        .fetch_all(self.daemon.db().pool())
        .await
        .map(|v| v.into_iter().map(|(t, a)| format!("{t}:{a}")).collect())
        .unwrap_or_default()
    }

    async fn pb_status(&self) -> Result<pb::DaemonStatus, Status> {
        let s = self.daemon.status().await.map_err(daemon_status)?;
        let head: Option<i64> =
            sqlx::query_scalar("SELECT last_id FROM audit_head WHERE singleton = 1")
                .fetch_optional(self.daemon.db().pool())
                .await
                .map_err(|e| Status::internal(format!("read audit head: {e}")))?;
        Ok(pb::DaemonStatus {
            version: s.version,
            pid: s.pid,
            started_unix_ms: s.started_at_ms,
            state_dir: s.state_dir.display().to_string(),
            control_socket: s.control_socket.display().to_string(),
            plugins_installed: u32::try_from(s.plugins_installed).unwrap_or(u32::MAX),
            plugins_running: u32::try_from(s.plugins_running).unwrap_or(u32::MAX),
            tasks_active: u32::try_from(s.tasks_active).unwrap_or(u32::MAX),
            kill_switch: s.kill_switch.is_some(),
            kill_switch_reason: s.kill_switch.map(|k| k.reason).unwrap_or_default(),
            audit_head: head.unwrap_or(0),
            config_path: s
                .config_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        })
    }

    async fn config_info(&self) -> Result<pb::ConfigInfo, Status> {
        let s = self.daemon.status().await.map_err(daemon_status)?;
        let (path, toml) = match s.config_path {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| Status::internal(format!("read config {}: {e}", p.display())))?;
                (p.display().to_string(), text)
            }
            None => (String::new(), String::new()),
        };
        Ok(pb::ConfigInfo {
            path,
            toml,
            loaded_unix_ms: hutch_api::clock::system_ms(),
        })
    }

    async fn audit_trail(&self, task_id: &str) -> Result<Vec<pb::AuditEvent>, Status> {
        self.daemon.core().audit_sink().flush();
        let events = self
            .daemon
            .core()
            .audit()
            .query(&AuditFilter {
                task_id: Some(task_id.to_owned()),
                ..AuditFilter::default()
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(events.iter().map(pb_event).collect())
    }
}

// ---------------------------------------------------------------------------
// conversions
// ---------------------------------------------------------------------------

/// A plugin as the protocol shows it.
pub fn pb_plugin(p: &PluginInfo) -> pb::Plugin {
    let rt = &p.runtime;
    let state = if !p.enabled && rt.state == crate::daemon::PluginState::Stopped {
        "disabled".to_owned()
    } else {
        serde_json::to_value(rt.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let state_reason = p
        .disabled_reason
        .clone()
        .or_else(|| rt.last_exit.clone())
        .unwrap_or_default();
    let now = hutch_api::clock::system_ms();
    pb::Plugin {
        id: p.id.clone(),
        version: p.version.clone(),
        install_dir: p.path.display().to_string(),
        content_hash: p.content_hash.clone(),
        requested_scopes: p.requested_scopes.clone(),
        granted_scopes: p.granted_scopes.clone(),
        limits: Some(pb::Limits {
            memory_max_bytes: p.limits.memory_max,
            cpu_max: p.limits.cpu_max,
            pids_max: u32::try_from(p.limits.pids_max).unwrap_or(u32::MAX),
            tmp_size_bytes: p.limits.tmp_size,
            wall_timeout_ms: p
                .limits
                .wall_timeout
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }),
        actions: p
            .actions
            .iter()
            .map(|a| pb::Action {
                name: a.name.clone(),
                description: a.description.clone(),
            })
            .collect(),
        enabled: p.enabled,
        state,
        state_reason,
        instance_id: rt.instance.clone().unwrap_or_default(),
        uid: p.uid,
        gid: p.uid,
        pid: rt.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        restarts: rt.restarts,
        installed_unix_ms: p.installed_at_ms,
        started_unix_ms: rt.started_at_ms.unwrap_or(0),
        last_heartbeat_unix_ms: rt
            .last_heartbeat_ms_ago
            .map_or(0, |ago| now - i64::try_from(ago).unwrap_or(0)),
        installed_by: p.installed_by.clone(),
    }
}

fn pb_ref(r: &InputRef) -> pb::ObjectRef {
    pb::ObjectRef {
        dataset_id: r.dataset.clone(),
        key: r.key.clone(),
        version: r.version.unwrap_or(0),
    }
}

/// A task as the protocol shows it.
pub fn pb_task(t: &TaskInfo) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        plugin_id: t.plugin_id.clone(),
        plugin_version: t.plugin_version.clone().unwrap_or_default(),
        action: t.action.clone(),
        user: t.user.clone(),
        state: t.state.as_str().to_owned(),
        progress_percent: t.progress,
        progress_message: t.progress_message.clone(),
        error: t.error.clone().unwrap_or_default(),
        result_json: t.result_json.clone().unwrap_or_default(),
        created_unix_ms: t.created_ms,
        started_unix_ms: t.started_ms.unwrap_or(0),
        ended_unix_ms: t.ended_ms.unwrap_or(0),
        args_json: t.args_json.clone(),
        inputs: t.inputs.iter().map(pb_ref).collect(),
    }
}

/// An audit event as the protocol shows it.
pub fn pb_event(e: &StoredEvent) -> pb::AuditEvent {
    let ev = &e.event;
    pb::AuditEvent {
        id: e.id.0,
        ts_unix_us: ev.ts_us,
        actor_kind: ev.actor.kind.as_str().to_owned(),
        actor_plugin_id: ev.actor.plugin_id.clone().unwrap_or_default(),
        actor_plugin_version: ev.actor.plugin_version.clone().unwrap_or_default(),
        actor_instance: ev.actor.instance.clone().unwrap_or_default(),
        actor_user: ev.actor.user.clone().unwrap_or_default(),
        task_id: ev.task_id.clone().unwrap_or_default(),
        operation: ev.operation.clone(),
        resource: ev.resource.clone(),
        decision: ev.decision.as_str().to_owned(),
        reason: ev.reason.clone().unwrap_or_default(),
        outcome: ev.outcome.to_stored(),
        before_version: ev.before_version,
        after_version: ev.after_version,
        details_json: if ev.details.is_null() {
            String::new()
        } else {
            ev.details.to_string()
        },
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

fn pb_user(u: &UserRow) -> pb::User {
    pb::User {
        name: u.name.clone(),
        role: u.role.as_str().to_owned(),
        uid: u.uid,
        teams: u.teams.clone(),
    }
}

/// Whether the policy's time selectors hold at `now_ms`.
pub fn policy_time_active(p: &Policy, now_ms: i64) -> bool {
    use hutch_api::authz::policy::{hour, weekday};
    let h = hour(now_ms);
    let hours = match (p.hour_start, p.hour_end) {
        (None, None) => true,
        (Some(a), None) => h >= a,
        (None, Some(b)) => h < b,
        (Some(a), Some(b)) if a <= b => h >= a && h < b,
        (Some(a), Some(b)) => h >= a || h < b,
    };
    p.not_before_ms.is_none_or(|t| now_ms >= t)
        && p.not_after_ms.is_none_or(|t| now_ms < t)
        && p.weekdays.is_none_or(|m| m & (1 << weekday(now_ms)) != 0)
        && hours
}

/// A policy as the protocol shows it.
pub fn pb_policy(p: &Policy, now_ms: i64) -> pb::Policy {
    pb::Policy {
        id: p.id,
        name: p.name.clone(),
        effect: p.effect.as_str().to_owned(),
        plugin_pattern: p.plugin_pattern.clone(),
        user: p.user.clone().unwrap_or_default(),
        team: p.team.clone().unwrap_or_default(),
        operation_class: p
            .operation_class
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        not_before_unix_ms: p.not_before_ms.unwrap_or(0),
        not_after_unix_ms: p.not_after_ms.unwrap_or(0),
        weekdays: p.weekdays.map_or(0, u32::from),
        hour_start: p.hour_start.map(u32::from),
        hour_end: p.hour_end.map(u32::from),
        reason: p.reason.clone(),
        active_now: policy_time_active(p, now_ms),
    }
}

/// Parses a protocol policy.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the bad field.
pub fn policy_from_pb(p: pb::Policy) -> Result<Policy, Status> {
    let bad = |f: &str, v: &str| Status::invalid_argument(format!("policy {f}: bad value {v:?}"));
    if p.name.trim().is_empty() {
        return Err(Status::invalid_argument("policy name: must not be empty"));
    }
    let effect = match p.effect.as_str() {
        "" | "deny" => Effect::Deny,
        "allow" => Effect::Allow,
        other => return Err(bad("effect", other)),
    };
    let operation_class = match p.operation_class.as_str() {
        "" => None,
        c => Some(OpClass::parse(c).ok_or_else(|| bad("operation class", c))?),
    };
    let small = |f: &str, v: Option<u32>, max: u32| -> Result<Option<u8>, Status> {
        match v {
            None => Ok(None),
            Some(x) if x <= max => Ok(u8::try_from(x).ok()),
            Some(x) => Err(bad(f, &x.to_string())),
        }
    };
    let weekdays = match p.weekdays {
        0 => None,
        w if w <= 0x7f => u8::try_from(w).ok(),
        w => return Err(bad("weekdays", &w.to_string())),
    };
    Ok(Policy {
        id: 0,
        name: p.name,
        effect,
        plugin_pattern: if p.plugin_pattern.is_empty() {
            "*".into()
        } else {
            p.plugin_pattern
        },
        user: opt(p.user),
        team: opt(p.team),
        operation_class,
        not_before_ms: ms_opt(p.not_before_unix_ms),
        not_after_ms: ms_opt(p.not_after_unix_ms),
        weekdays,
        hour_start: small("hour start", p.hour_start, 23)?,
        hour_end: small("hour end", p.hour_end, 24)?,
        reason: p.reason,
    })
}

fn filter_from_pb(q: pb::AuditQuery) -> Result<AuditFilter, Status> {
    let decision = match q.decision.as_str() {
        "" => None,
        d => Some(
            Decision::parse(d)
                .ok_or_else(|| Status::invalid_argument(format!("decision: bad value {d:?}")))?,
        ),
    };
    Ok(AuditFilter {
        plugin_id: opt(q.plugin_id),
        user: opt(q.user),
        task_id: opt(q.task_id),
        resource: opt(q.resource),
        resource_prefix: opt(q.resource_prefix),
        operation: opt(q.operation),
        decision,
        since_us: ms_opt(q.since_unix_ms).map(|m| m.saturating_mul(1000)),
        until_us: ms_opt(q.until_unix_ms).map(|m| m.saturating_mul(1000)),
        after_id: ms_opt(q.after_id).map(EventId),
        limit: if q.limit == 0 { None } else { Some(q.limit) },
    })
}

fn limits_from_pb(l: Option<pb::Limits>) -> LimitOverrides {
    let l = l.unwrap_or_default();
    LimitOverrides {
        memory_max: (l.memory_max_bytes != 0).then_some(l.memory_max_bytes),
        cpu_max: (l.cpu_max > 0.0).then_some(l.cpu_max),
        pids_max: (l.pids_max != 0).then_some(u64::from(l.pids_max)),
        tmp_size: (l.tmp_size_bytes != 0).then_some(l.tmp_size_bytes),
        wall_timeout: (l.wall_timeout_ms != 0)
            .then(|| std::time::Duration::from_millis(l.wall_timeout_ms)),
    }
}

fn absolute_dir(path: &str) -> Result<PathBuf, Status> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "plugin directory {path:?} must be an absolute path"
        )));
    }
    if !p.is_dir() {
        return Err(Status::not_found(format!(
            "plugin directory {path} does not exist or is not a directory"
        )));
    }
    Ok(p)
}

fn dataset_id(s: &str) -> Result<DatasetId, Status> {
    DatasetId::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn object_key(s: &str) -> Result<ObjectKey, Status> {
    ObjectKey::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn object_info(i: &hutch_api::store::ObjectInfo) -> pb::ObjectInfo {
    pb::ObjectInfo {
        dataset_id: i.dataset.to_string(),
        key: i.key.to_string(),
        version: u64::try_from(i.version.0).unwrap_or(0),
        size: i.size,
        sha256: i.sha256.clone().unwrap_or_default(),
        modified_unix_ms: i.created_us / 1000,
        deleted: i.deleted,
        metadata: i
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// the service
// ---------------------------------------------------------------------------

#[tonic::async_trait]
impl Admin for Control {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::DaemonStatus>, Status> {
        self.handle(req, Need::User, "status", |_, _| async move {
            self.pb_status().await
        })
        .await
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Caller>, Status> {
        let who = self.identify(&req).await?;
        Ok(Response::new(pb::Caller {
            uid: who.uid,
            unix_name: who.unix_name.clone().unwrap_or_default(),
            user: who
                .user
                .as_ref()
                .map(|(n, _)| n.clone())
                .unwrap_or_default(),
            role: who
                .user
                .as_ref()
                .map(|(_, r)| r.as_str().to_owned())
                .unwrap_or_default(),
            admin: who.is_admin(),
            admin_reason: who.admin_reason.unwrap_or_default().to_owned(),
        }))
    }

    async fn set_kill_switch(
        &self,
        req: Request<pb::SetKillSwitchRequest>,
    ) -> Result<Response<pb::DaemonStatus>, Status> {
        self.handle(
            req,
            Need::Admin,
            "the kill switch",
            |caller, r| async move {
                let reason = if r.engaged {
                    Some(if r.reason.is_empty() {
                        format!("engaged by {}", caller.name)
                    } else {
                        r.reason
                    })
                } else {
                    None
                };
                self.daemon
                    .set_kill_switch(&caller, reason)
                    .await
                    .map_err(daemon_status)?;
                self.pb_status().await
            },
        )
        .await
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigInfo>, Status> {
        self.handle(req, Need::Admin, "config show", |_, _| async move {
            self.config_info().await
        })
        .await
    }

    async fn reload_config(
        &self,
        req: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ConfigInfo>, Status> {
        self.handle(req, Need::Admin, "config reload", |caller, r| async move {
            let status = self.daemon.status().await.map_err(daemon_status)?;
            let mut details = serde_json::json!({ "replaced_file": !r.new_toml.is_empty() });
            if !r.new_toml.is_empty() {
                let Some(path) = status.config_path.clone() else {
                    return Err(Status::failed_precondition(
                        "hutchd runs on built-in defaults (no config file); start it with \
                         --config FILE to change its config remotely",
                    ));
                };
                if let Err(e) = Config::parse(&r.new_toml, &path) {
                    let ev = AuditEvent::new(
                        caller.actor(),
                        "admin.config.set",
                        format!("config/{}", path.display()),
                    )
                    .denied(e.to_string());
                    self.daemon.audit(ev).await.map_err(daemon_status)?;
                    return Err(Status::invalid_argument(format!(
                        "{e}; the config was not changed"
                    )));
                }
                let tmp = path.with_extension("toml.new");
                std::fs::write(&tmp, &r.new_toml)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|e| Status::internal(format!("write {}: {e}", path.display())))?;
                details["bytes"] = serde_json::json!(r.new_toml.len());
            }
            let outcome = self.daemon.reload_config().await;
            let resource = format!(
                "config/{}",
                status
                    .config_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            let mut ev = AuditEvent::new(caller.actor(), "admin.config.reload", resource)
                .with_details(details);
            if let Err(e) = &outcome {
                ev = ev.denied(e.to_string());
            }
            self.daemon.audit(ev).await.map_err(daemon_status)?;
            outcome.map_err(daemon_status)?;
            self.config_info().await
        })
        .await
    }

    async fn install_plugin(
        &self,
        req: Request<pb::InstallPluginRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin install", |caller, r| async move {
            let dir = absolute_dir(&r.path)?;
            let grant = if r.grant_all {
                None
            } else {
                Some(r.grant_scopes)
            };
            let info = self
                .daemon
                .install(
                    &caller,
                    crate::daemon::InstallRequest {
                        dir,
                        grant,
                        limits: limits_from_pb(r.limits),
                        enable: r.enable,
                    },
                )
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&info))
        })
        .await
    }

    async fn upgrade_plugin(
        &self,
        req: Request<pb::UpgradePluginRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin upgrade", |caller, r| async move {
            let dir = absolute_dir(&r.path)?;
            let current = self.daemon.plugin(&r.id).await.map_err(daemon_status)?;
            let info = self
                .daemon
                .upgrade(
                    &caller,
                    crate::daemon::InstallRequest {
                        dir,
                        grant: Some(r.grant_scopes),
                        limits: current.limit_overrides,
                        enable: current.enabled,
                    },
                )
                .await
                .map_err(daemon_status)?;
            if info.id != r.id {
                return Err(Status::invalid_argument(format!(
                    "the directory holds plugin {}, not {}",
                    info.id, r.id
                )));
            }
            Ok::<_, Status>(pb_plugin(&info))
        })
        .await
    }

    async fn list_plugins(
        &self,
        req: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        self.handle(req, Need::User, "plugin list", |_, _| async move {
            let list = self.daemon.list_plugins().await.map_err(daemon_status)?;
            Ok::<_, Status>(pb::ListPluginsResponse {
                plugins: list.iter().map(pb_plugin).collect(),
            })
        })
        .await
    }

    async fn get_plugin(
        &self,
        req: Request<pb::PluginRef>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::User, "plugin status", |_, r| async move {
            let p = self.daemon.plugin(&r.id).await.map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn start_plugin(
        &self,
        req: Request<pb::PluginRef>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin start", |c, r| async move {
            let p = self.daemon.start(&c, &r.id).await.map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn stop_plugin(
        &self,
        req: Request<pb::PluginRef>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin stop", |c, r| async move {
            let p = self.daemon.stop(&c, &r.id).await.map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn restart_plugin(
        &self,
        req: Request<pb::PluginRef>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin restart", |c, r| async move {
            let p = self
                .daemon
                .restart(&c, &r.id)
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn enable_plugin(
        &self,
        req: Request<pb::PluginRef>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin enable", |c, r| async move {
            let p = self.daemon.enable(&c, &r.id).await.map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn disable_plugin(
        &self,
        req: Request<pb::PluginRef>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin disable", |c, r| async move {
            let p = self
                .daemon
                .disable(&c, &r.id)
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn set_grants(
        &self,
        req: Request<pb::SetGrantsRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin grants", |c, r| async move {
            let p = self
                .daemon
                .set_grants(&c, &r.id, r.scopes)
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    async fn set_limits(
        &self,
        req: Request<pb::SetLimitsRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        self.handle(req, Need::Admin, "plugin limits", |c, r| async move {
            // 0 = keep (admin.proto): a field not given keeps its current override.
            let current = self
                .daemon
                .plugin(&r.id)
                .await
                .map_err(daemon_status)?
                .limit_overrides;
            let given = limits_from_pb(r.limits);
            let limits = LimitOverrides {
                memory_max: given.memory_max.or(current.memory_max),
                cpu_max: given.cpu_max.or(current.cpu_max),
                pids_max: given.pids_max.or(current.pids_max),
                tmp_size: given.tmp_size.or(current.tmp_size),
                wall_timeout: given.wall_timeout.or(current.wall_timeout),
            };
            let p = self
                .daemon
                .set_limits(&c, &r.id, limits)
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_plugin(&p))
        })
        .await
    }

    type PluginLogsStream = BoxStream<pb::PluginLogLine>;

    async fn plugin_logs(
        &self,
        req: Request<pb::PluginLogsRequest>,
    ) -> Result<Response<Self::PluginLogsStream>, Status> {
        self.handle(req, Need::Admin, "plugin logs", |c, r| async move {
            let tail = if r.tail == 0 {
                usize::MAX
            } else {
                r.tail as usize
            };
            let mut f = self.daemon.logs(&c, &r.id, tail).map_err(daemon_status)?;
            let (tx, rx) = mpsc::channel(256);
            let conv = |l: crate::daemon::LogLine| pb::PluginLogLine {
                unix_ms: l.ts_ms,
                stream: match l.stream {
                    crate::daemon::LogStream::Stdout => "stdout",
                    crate::daemon::LogStream::Stderr => "stderr",
                    crate::daemon::LogStream::Supervisor => "daemon",
                }
                .to_owned(),
                line: l.line,
                instance_id: l.instance,
            };
            tokio::spawn(async move {
                let mut last_seq = 0;
                for l in std::mem::take(&mut f.lines) {
                    last_seq = l.seq;
                    if tx.send(Ok(conv(l))).await.is_err() {
                        return;
                    }
                }
                if !r.follow {
                    return;
                }
                loop {
                    match f.follow.recv().await {
                        Ok(l) if l.seq <= last_seq && last_seq != 0 => {}
                        Ok(l) => {
                            if tx.send(Ok(conv(l))).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let note = pb::PluginLogLine {
                                unix_ms: hutch_api::clock::system_ms(),
                                stream: "daemon".into(),
                                line: format!("[{n} lines skipped: reader too slow]"),
                                instance_id: String::new(),
                            };
                            if tx.send(Ok(note)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok::<BoxStream<_>, Status>(Box::pin(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn remove_plugin(
        &self,
        req: Request<pb::RemovePluginRequest>,
    ) -> Result<Response<pb::RemovePluginResponse>, Status> {
        self.handle(req, Need::Admin, "plugin remove", |c, r| async move {
            let id = r.id;
            let p = self.daemon.plugin(&id).await.map_err(daemon_status)?;
            self.daemon.remove(&c, &id).await.map_err(daemon_status)?;
            Ok::<_, Status>(pb::RemovePluginResponse {
                id,
                version: p.version,
            })
        })
        .await
    }

    async fn run_task(
        &self,
        req: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.handle(req, Need::User, "task run", |c, r| async move {
            let inputs = r
                .inputs
                .into_iter()
                .map(|i| InputRef {
                    dataset: i.dataset_id,
                    key: i.key,
                    version: (i.version != 0).then_some(i.version),
                })
                .collect();
            let t = self
                .daemon
                .run_task(
                    &c,
                    TaskRequest {
                        plugin_id: r.plugin_id,
                        action: r.action,
                        args_json: if r.args_json.is_empty() {
                            "{}".into()
                        } else {
                            r.args_json
                        },
                        inputs,
                    },
                )
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_task(&t))
        })
        .await
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.handle(req, Need::User, "task list", |c, r| async move {
            let mut user = opt(r.user);
            if !c.admin {
                if user.as_ref().is_some_and(|u| *u != c.name) {
                    return Err(Status::permission_denied(format!(
                        "permission denied: only admins may list other users' tasks; you are uid {} ({})",
                        c.uid, c.name
                    )));
                }
                user = Some(c.name.clone());
            }
            let states = match r.state.as_str() {
                "" => Vec::new(),
                s => vec![TaskState::parse(s).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "state {s:?}: expected queued, running, completed, failed or cancelled"
                    ))
                })?],
            };
            let tasks = self
                .daemon
                .list_tasks(
                    &c,
                    TaskFilter {
                        plugin_id: opt(r.plugin_id),
                        user,
                        states,
                        limit: if r.limit == 0 { 100 } else { r.limit as usize },
                    },
                )
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb::ListTasksResponse {
                tasks: tasks.iter().map(pb_task).collect(),
            })
        })
        .await
    }

    async fn get_task(
        &self,
        req: Request<pb::TaskRef>,
    ) -> Result<Response<pb::TaskDetail>, Status> {
        self.handle(req, Need::User, "task show", |c, r| async move {
            let t = self.daemon.task(&c, &r.id).await.map_err(daemon_status)?;
            let audit = self.audit_trail(&t.id).await?;
            Ok::<_, Status>(pb::TaskDetail {
                task: Some(pb_task(&t)),
                outputs: t
                    .outputs
                    .iter()
                    .map(|o| pb::TaskOutput {
                        name: o.name.clone(),
                        value_json: o.value_json.clone(),
                        object: o.object.as_ref().map(pb_ref),
                    })
                    .collect(),
                log: t
                    .logs
                    .iter()
                    .map(|l| pb::TaskLogLine {
                        unix_ms: l.ts_ms,
                        level: l.level.clone(),
                        line: l.line.clone(),
                    })
                    .collect(),
                audit,
            })
        })
        .await
    }

    type WatchTaskStream = BoxStream<pb::Task>;

    async fn watch_task(
        &self,
        req: Request<pb::TaskRef>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        self.handle(req, Need::User, "task watch", |c, r| async move {
            let mut rx = self
                .daemon
                .watch_task(&c, &r.id)
                .await
                .map_err(daemon_status)?;
            let (tx, out) = mpsc::channel(64);
            tokio::spawn(async move {
                loop {
                    let t = rx.borrow_and_update().clone();
                    let done = t.state.is_final();
                    if tx.send(Ok(pb_task(&t))).await.is_err() || done {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        let t = rx.borrow().clone();
                        let _ = tx.send(Ok(pb_task(&t))).await;
                        return;
                    }
                }
            });
            Ok::<BoxStream<_>, Status>(Box::pin(ReceiverStream::new(out)))
        })
        .await
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.handle(req, Need::User, "task cancel", |c, r| async move {
            let t = self
                .daemon
                .cancel_task(&c, &r.id)
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_task(&t))
        })
        .await
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.handle(req, Need::User, "user list", |c, _| async move {
            let mut users = self.accounts.list().await.map_err(account_status)?;
            if !c.admin {
                users.retain(|u| u.name == c.name);
            }
            Ok::<_, Status>(pb::ListUsersResponse {
                users: users.iter().map(pb_user).collect(),
            })
        })
        .await
    }

    async fn set_user(
        &self,
        req: Request<pb::SetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.handle(req, Need::Admin, "user add/set", |c, r| async move {
            let name = user_name(&r.name)?;
            let role = Role::parse(&r.role).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "role {:?}: expected admin, member or viewer",
                    r.role
                ))
            })?;
            let u = self
                .accounts
                .set(&name, role, r.uid)
                .await
                .map_err(account_status)?;
            self.record(
                &c,
                "admin.user.set",
                format!("user/{name}"),
                serde_json::json!({ "role": role.as_str(), "uid": r.uid }),
            )
            .await?;
            Ok::<_, Status>(pb_user(&u))
        })
        .await
    }

    async fn remove_user(
        &self,
        req: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        self.handle(req, Need::Admin, "user remove", |c, r| async move {
            let name = user_name(&r.name)?;
            self.accounts.remove(&name).await.map_err(account_status)?;
            self.record(
                &c,
                "admin.user.remove",
                format!("user/{name}"),
                serde_json::Value::Null,
            )
            .await?;
            Ok::<_, Status>(pb::RemoveUserResponse { name })
        })
        .await
    }

    async fn list_teams(
        &self,
        req: Request<pb::ListTeamsRequest>,
    ) -> Result<Response<pb::ListTeamsResponse>, Status> {
        self.handle(req, Need::User, "team list", |c, _| async move {
            let teams = self.accounts.teams().await.map_err(account_status)?;
            Ok::<_, Status>(pb::ListTeamsResponse {
                teams: teams
                    .into_iter()
                    .filter(|(_, m)| c.admin || m.contains(&c.name))
                    .map(|(name, members)| pb::Team { name, members })
                    .collect(),
            })
        })
        .await
    }

    async fn add_team_member(
        &self,
        req: Request<pb::TeamMemberRequest>,
    ) -> Result<Response<pb::Team>, Status> {
        self.team_member(req, true).await
    }

    async fn remove_team_member(
        &self,
        req: Request<pb::TeamMemberRequest>,
    ) -> Result<Response<pb::Team>, Status> {
        self.team_member(req, false).await
    }

    async fn create_dataset(
        &self,
        req: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        self.handle(req, Need::User, "dataset create", |c, r| async move {
            let owner = if c.admin {
                match (opt(r.owner_user), opt(r.owner_team)) {
                    (Some(_), Some(_)) => {
                        return Err(Status::invalid_argument(
                            "a dataset has one owner: give --owner or --team, not both",
                        ));
                    }
                    (Some(u), None) => Owner::User(u),
                    (None, Some(t)) => Owner::Team(t),
                    (None, None) => Owner::User(c.name.clone()),
                }
            } else {
                if !r.owner_user.is_empty() || !r.owner_team.is_empty() {
                    return Err(Status::permission_denied(format!(
                        "permission denied: only admins may create datasets for others; you are uid {} ({})",
                        c.uid, c.name
                    )));
                }
                self.daemon
                    .core()
                    .authz()
                    .snapshot()
                    .user_may(&c.name, OpClass::Create, None)
                    .map_err(|r| Status::permission_denied(format!("permission denied: {r}")))?;
                Owner::User(c.name.clone())
            };
            let id = match opt(r.id) {
                Some(id) => Some(dataset_id(&id)?),
                None => None,
            };
            let name = if r.name.is_empty() {
                id.as_ref().map(ToString::to_string).unwrap_or_default()
            } else {
                r.name
            };
            let backend = self.daemon.core().backend().clone();
            let created = backend
                .create_dataset(
                    AuditEvent::new(c.actor(), ops::DATASET_CREATE, ""),
                    NewDataset {
                        id,
                        name,
                        owner: match &owner {
                            Owner::User(u) => Some(u.clone()),
                            Owner::Team(_) => None,
                        },
                        metadata: Default::default(),
                    },
                )
                .await
                .map_err(store_status)?;
            self.daemon
                .core()
                .authz()
                .set_dataset_owner(created.value.id.as_str(), &owner)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok::<_, Status>(self.pb_dataset(&created.value))
        })
        .await
    }

    async fn list_datasets(
        &self,
        req: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        self.handle(req, Need::User, "dataset list", |c, _| async move {
            let all = self
                .daemon
                .core()
                .backend()
                .list_datasets()
                .await
                .map_err(store_status)?;
            let snap = self.daemon.core().authz().snapshot();
            let mut out = Vec::new();
            for d in all
                .iter()
                .filter(|d| c.admin || snap.may_read(&c.name, d.id.as_str()))
            {
                let mut pd = self.pb_dataset(d);
                pd.shares = self.shares_of(d.id.as_str()).await;
                out.push(pd);
            }
            Ok::<_, Status>(pb::ListDatasetsResponse { datasets: out })
        })
        .await
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        self.handle(req, Need::User, "dataset objects", |c, r| async move {
            self.may(&c, OpClass::Read, &r.dataset_id)?;
            let objects = self
                .daemon
                .core()
                .backend()
                .list_objects(
                    &dataset_id(&r.dataset_id)?,
                    &ListObjects {
                        prefix: opt(r.prefix),
                        after: None,
                        limit: 0,
                    },
                )
                .await
                .map_err(store_status)?;
            Ok::<_, Status>(pb::ListObjectsResponse {
                objects: objects.iter().map(object_info).collect(),
            })
        })
        .await
    }

    async fn put_object(
        &self,
        req: Request<Streaming<pb::PutObjectRequest>>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        self.handle(req, Need::User, "dataset put", |c, r| async move {
            let mut stream = r;
            let header = match stream.message().await? {
                Some(pb::PutObjectRequest {
                    part: Some(pb::put_object_request::Part::Header(h)),
                }) => h,
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message must carry the header",
                    ));
                }
            };
            self.may(&c, OpClass::Write, &header.dataset_id)?;
            let ds = dataset_id(&header.dataset_id)?;
            let key = object_key(&header.key)?;
            let content: ByteStream = Box::pin(stream.map(|m| match m {
                Ok(pb::PutObjectRequest {
                    part: Some(pb::put_object_request::Part::Chunk(c)),
                }) => Ok(c),
                Ok(_) => Err(StoreError::Input("expected a chunk".into())),
                Err(s) => Err(StoreError::Input(s.message().to_owned())),
            }));
            let put = self
                .daemon
                .core()
                .backend()
                .put_object(
                    AuditEvent::new(c.actor(), ops::OBJECT_PUT, ""),
                    &ds,
                    &key,
                    hutch_api::store::Expect::Any,
                    (!header.metadata.is_empty()).then(|| header.metadata.into_iter().collect()),
                    content,
                )
                .await
                .map_err(store_status)?;
            Ok::<_, Status>(object_info(&put.value))
        })
        .await
    }

    type GetObjectStream = BoxStream<pb::GetObjectResponse>;

    async fn get_object(
        &self,
        req: Request<pb::GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        self.handle(req, Need::User, "dataset get", |c, r| async move {
            self.may(&c, OpClass::Read, &r.dataset_id)?;
            let ds = dataset_id(&r.dataset_id)?;
            let key = object_key(&r.key)?;
            let version = (r.version != 0)
                .then(|| i64::try_from(r.version).map(Version))
                .transpose()
                .map_err(|_| Status::invalid_argument("version out of range"))?;
            let (info, content) = self
                .daemon
                .core()
                .backend()
                .get_object(&ds, &key, version)
                .await
                .map_err(store_status)?;
            self.record(
                &c,
                Operation::ObjectGet.name(),
                hutch_api::store::object_resource(&ds, &key),
                serde_json::json!({ "version": info.version.0, "via": "control" }),
            )
            .await?;
            let first = pb::GetObjectResponse {
                part: Some(pb::get_object_response::Part::Info(object_info(&info))),
            };
            let rest = content.map(|c| match c {
                Ok(bytes) => Ok(pb::GetObjectResponse {
                    part: Some(pb::get_object_response::Part::Chunk(bytes)),
                }),
                Err(e) => Err(store_status(e)),
            });
            Ok::<BoxStream<_>, Status>(Box::pin(
                futures::stream::once(async { Ok(first) }).chain(rest),
            ))
        })
        .await
    }

    async fn get_metadata(
        &self,
        req: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        self.handle(req, Need::User, "dataset meta", |c, r| async move {
            self.may(&c, OpClass::Read, &r.dataset_id)?;
            let ds = dataset_id(&r.dataset_id)?;
            let key = object_key(&r.key)?;
            let info = self
                .daemon
                .core()
                .backend()
                .head_object(&ds, &key, None)
                .await
                .map_err(store_status)?;
            self.record(
                &c,
                Operation::MetadataGet.name(),
                hutch_api::store::object_resource(&ds, &key),
                serde_json::json!({ "version": info.version.0, "via": "control" }),
            )
            .await?;
            Ok::<_, Status>(object_info(&info))
        })
        .await
    }

    async fn set_metadata(
        &self,
        req: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        self.handle(req, Need::User, "dataset meta", |c, r| async move {
            self.may(&c, OpClass::Write, &r.dataset_id)?;
            let ds = dataset_id(&r.dataset_id)?;
            let key = object_key(&r.key)?;
            let expect = hutch_api::store::Expect::from_expected_version(r.expected_version)
                .ok_or_else(|| Status::invalid_argument("expected_version out of range"))?;
            let set = self
                .daemon
                .core()
                .backend()
                .set_metadata(
                    AuditEvent::new(c.actor(), ops::OBJECT_SET_METADATA, ""),
                    &ds,
                    &key,
                    expect,
                    r.metadata.into_iter().collect(),
                )
                .await
                .map_err(store_status)?;
            Ok::<_, Status>(object_info(&set.value))
        })
        .await
    }

    async fn share_dataset(
        &self,
        req: Request<pb::ShareDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        self.handle(req, Need::User, "dataset share", |c, r| async move {
            let access = match r.access.as_str() {
                "" | "read" => Access::Read,
                "write" => Access::Write,
                a => {
                    return Err(Status::invalid_argument(format!(
                        "access {a:?}: expected read or write"
                    )));
                }
            };
            let ds = dataset_id(&r.dataset_id)?;
            let info = self
                .daemon
                .core()
                .backend()
                .get_dataset(&ds)
                .await
                .map_err(store_status)?;
            let snap = self.daemon.core().authz().snapshot();
            let owns = matches!(snap.owner(ds.as_str()), Some(Owner::User(u)) if *u == c.name);
            if !c.admin && !owns {
                return Err(Status::permission_denied(format!(
                    "permission denied: only the dataset's owner or an admin may share it; you are uid {} ({})",
                    c.uid, c.name
                )));
            }
            self.daemon
                .core()
                .authz()
                .share_dataset(ds.as_str(), &r.team, access)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            self.record(
                &c,
                "dataset.share",
                hutch_api::store::dataset_resource(&ds),
                serde_json::json!({ "team": r.team, "access": r.access }),
            )
            .await?;
            let mut pd = self.pb_dataset(&info);
            pd.shares = self.shares_of(ds.as_str()).await;
            Ok::<_, Status>(pd)
        })
        .await
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.handle(req, Need::Admin, "policy list", |_, _| async move {
            let now = hutch_api::clock::now_ms();
            let list = self.daemon.list_policies().await.map_err(daemon_status)?;
            Ok::<_, Status>(pb::ListPoliciesResponse {
                policies: list.iter().map(|p| pb_policy(p, now)).collect(),
                now_unix_ms: now,
            })
        })
        .await
    }

    async fn add_policy(
        &self,
        req: Request<pb::AddPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.handle(req, Need::Admin, "policy add", |c, r| async move {
            let p = policy_from_pb(
                r.policy
                    .ok_or_else(|| Status::invalid_argument("no policy given"))?,
            )?;
            let id = self
                .daemon
                .add_policy(&c, p.clone())
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb_policy(&Policy { id, ..p }, hutch_api::clock::now_ms()))
        })
        .await
    }

    async fn remove_policy(
        &self,
        req: Request<pb::PolicyRef>,
    ) -> Result<Response<pb::RemovePolicyResponse>, Status> {
        self.handle(req, Need::Admin, "policy remove", |c, r| async move {
            let id = if r.name.is_empty() {
                r.id
            } else {
                self.daemon
                    .list_policies()
                    .await
                    .map_err(daemon_status)?
                    .into_iter()
                    .find(|p| p.name == r.name)
                    .map(|p| p.id)
                    .ok_or_else(|| Status::not_found(format!("no policy named {:?}", r.name)))?
            };
            self.daemon
                .remove_policy(&c, id)
                .await
                .map_err(daemon_status)?;
            Ok::<_, Status>(pb::RemovePolicyResponse { id })
        })
        .await
    }

    async fn query_audit(
        &self,
        req: Request<pb::AuditQuery>,
    ) -> Result<Response<pb::AuditEvents>, Status> {
        self.handle(req, Need::User, "audit query", |c, r| async move {
            let mut f = filter_from_pb(r)?;
            if !c.admin {
                f.user = Some(c.name.clone());
            }
            if f.limit.is_none() {
                f.limit = Some(1000);
            }
            self.daemon.core().audit_sink().flush();
            let events = self
                .daemon
                .core()
                .audit()
                .query(&f)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok::<_, Status>(pb::AuditEvents {
                events: events.iter().map(pb_event).collect(),
            })
        })
        .await
    }

    type ExportAuditStream = BoxStream<pb::ExportChunk>;

    async fn export_audit(
        &self,
        req: Request<pb::AuditQuery>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.handle(req, Need::User, "audit export", |c, r| async move {
            let mut f = filter_from_pb(r)?;
            if !c.admin {
                f.user = Some(c.name.clone());
            }
            self.daemon.core().audit_sink().flush();
            let audit = self.daemon.core().audit().clone();
            let (mut w, mut r) = tokio::io::duplex(CHUNK);
            let (tx, rx) = mpsc::channel(4);
            let err_tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.export_jsonl(&f, &mut w).await {
                    let _ = err_tx.send(Err(Status::internal(e.to_string()))).await;
                }
            });
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let chunk = pb::ExportChunk {
                                data: buf[..n].to_vec(),
                            };
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Ok::<BoxStream<_>, Status>(Box::pin(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyReport>, Status> {
        self.handle(req, Need::User, "audit verify", |_, _| async move {
            let r = self
                .daemon
                .core()
                .audit()
                .verify()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok::<_, Status>(pb::VerifyReport {
                checked: r.checked,
                last_id: r.last_id,
                ok: r.is_ok(),
                problems: r.problems.iter().map(ToString::to_string).collect(),
            })
        })
        .await
    }

    async fn revert(
        &self,
        req: Request<pb::RevertRequest>,
    ) -> Result<Response<pb::RevertReport>, Status> {
        self.handle(req, Need::Admin, "audit revert", |c, r| async move {
            let reverter = Reverter::new(
                self.daemon.core().audit().clone(),
                Arc::clone(self.daemon.core().backend()),
            );
            let report = match (r.event_id, r.task_id.is_empty()) {
                (id, true) if id > 0 => {
                    reverter.revert_event(EventId(id), c.actor(), r.force).await
                }
                (0, false) => reverter.revert_task(&r.task_id, c.actor(), r.force).await,
                _ => {
                    return Err(Status::invalid_argument(
                        "give exactly one of an event id or --task TASK",
                    ));
                }
            }
            .map_err(revert_status)?;
            Ok::<_, Status>(pb::RevertReport {
                forced: report.forced,
                objects: report
                    .objects
                    .iter()
                    .map(|o| pb::RevertedObject {
                        dataset_id: o.dataset.to_string(),
                        key: o.key.to_string(),
                        restored_version: o.restored.map(|v| v.0),
                        new_version: o.new_version.0,
                        reverted_events: o.reverted_events.iter().map(|e| e.0).collect(),
                        event_id: o.event_id.0,
                    })
                    .collect(),
            })
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(user: Option<(&str, Role)>, admin: Option<&'static str>) -> Identity {
        Identity {
            uid: 1000,
            unix_name: Some("alice".into()),
            user: user.map(|(n, r)| (n.to_owned(), r)),
            admin_reason: admin,
        }
    }

    #[test]
    fn refusals_say_who_and_what_to_do() {
        let member = id(Some(("alice", Role::Member)), None);
        let e = member.require_admin("plugin install").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("admins only; you are uid 1000 (alice, role member)"),
            "{}",
            e.message()
        );
        let stranger = id(None, None);
        let e = stranger.caller().unwrap_err();
        assert!(
            e.message().contains("hutchctl user add NAME --uid 1000"),
            "{}",
            e.message()
        );
        assert!(id(None, Some("uid 0")).require_admin("x").is_ok());
        assert_eq!(member.caller().unwrap().name, "alice");
    }

    #[test]
    fn names_are_checked_alike_for_every_method() {
        assert_eq!(user_name(" alice ").unwrap(), "alice");
        for bad in ["", "  ", "a/b", "a\u{1b}b", &"x".repeat(65)] {
            let e = user_name(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert_eq!(team_name("lab").unwrap(), "lab");
        assert_eq!(
            team_name(" ").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn root_is_in_no_admin_group_by_accident() {
        // Real group database: a group that does not exist has no members.
        assert!(!in_group(
            "root",
            nix::unistd::Gid::from_raw(0),
            "hutch-no-such-group"
        ));
        // Root's primary group is its own.
        assert!(in_group("root", nix::unistd::Gid::from_raw(0), "root"));
    }

    #[test]
    fn policies_round_trip_and_time_windows() {
        // 2026-11-30 00:00 UTC, a Monday.
        const MON: i64 = 1_795_996_800_000;
        const H: i64 = 3_600_000;
        let p = policy_from_pb(pb::Policy {
            name: "xmas".into(),
            plugin_pattern: "org.napari.*".into(),
            not_before_unix_ms: MON,
            not_after_unix_ms: MON + 24 * H,
            hour_start: Some(9),
            hour_end: Some(17),
            weekdays: 1,
            reason: "holiday".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.effect, Effect::Deny);
        assert!(policy_time_active(&p, MON + 10 * H));
        assert!(!policy_time_active(&p, MON + 8 * H));
        assert!(!policy_time_active(&p, MON + 24 * H + 10 * H));
        let back = pb_policy(&p, MON + 10 * H);
        assert!(back.active_now);
        assert_eq!(back.hour_end, Some(17));
        assert!(
            policy_from_pb(pb::Policy {
                name: "x".into(),
                effect: "maybe".into(),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            policy_from_pb(pb::Policy {
                name: "x".into(),
                hour_start: Some(24),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/control.sock");
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        assert!(matches!(bind(&path), Err(ControlError::InUse(_))));
        drop(l);
        // The file stays but nobody answers: replaced.
        assert!(path.exists());
        let _l = bind(&path).unwrap();
    }
}
