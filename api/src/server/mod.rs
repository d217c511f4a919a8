//! One gRPC server per plugin instance, on its own Unix socket.
//!
//! The flow of a plugin call (see `docs/api.md` for the invariants and the
//! tests that prove them):
//!
//! 1. **Connection**: [`socket::peer_filtered_incoming`] accepts on the
//!    instance's socket and closes any connection whose `SO_PEERCRED` uid is
//!    not the instance uid (audited as `api.connection.refused`), or beyond
//!    [`Limits::max_connections`].
//! 2. **Identity**: the service objects are built per instance, so *which
//!    socket* the call arrived on is the plugin id, version and instance.
//!    Nothing in the payload or metadata can change that.
//! 3. **Gate** (`Instance::gate`): the peer uid from tonic's `UdsConnectInfo`
//!    is checked again; then the rate limit and concurrency limit; then the
//!    task id from the `hutch-task-id` metadata, which must name a running
//!    task assigned to this instance (its submitter is the acting user;
//!    without it, the installing admin); then [`crate::authz`] (scope, user
//!    rights, admin policies). A refusal is recorded through the aggregating
//!    [`AuditSink`] and returned as `RESOURCE_EXHAUSTED`/`PERMISSION_DENIED`
//!    with the reason.
//! 4. **Execution**: reads call the backend and queue their audit event;
//!    mutations hand their audit event to the backend, which commits it with
//!    the change in one transaction; the response is sent only after that
//!    COMMIT.
//!
//! The public surface is [`ApiCore`], [`InstanceSpec`] and [`InstanceHandle`]
//! (with its [`TaskHub`]).

mod agent;
pub mod audit_sink;
mod data;
mod reject;
pub mod socket;
pub mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hutch_plugin_protocol::plugin::v1 as pb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Extensions, Status};

pub use audit_sink::AuditSink;
pub use socket::SocketError;
pub use tasks::{Task, TaskError, TaskEvent, TaskHub};

use crate::audit::{Actor, AuditEvent, AuditStore};
use crate::authz::{Authz, AuthzError, AuthzRequest, Operation, ScopeSet};
use crate::limits::{CallPermit, Limiter, Limits};
use crate::store::Backend;

/// The gRPC metadata key naming the task a Data call works for.
pub const TASK_ID_METADATA: &str = hutch_plugin_protocol::client::TASK_ID_METADATA;

/// Errors of [`ApiCore`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Loading the authorization tables failed.
    #[error("load authorization tables: {0}")]
    Authz(#[from] AuthzError),
    /// Preparing the socket failed.
    #[error("instance {instance}: {source}")]
    Socket {
        /// The instance id.
        instance: String,
        /// The socket error.
        #[source]
        source: SocketError,
    },
}

/// What the daemon knows about a running instance; the proxy trusts only this.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Plugin id, e.g. `org.example.threshold`.
    pub plugin_id: String,
    /// Plugin version.
    pub version: String,
    /// Unique id of this running instance.
    pub instance_id: String,
    /// The uid the plugin's processes run as; the only uid admitted.
    pub uid: u32,
    /// Where to create the socket (e.g. `/run/hutch/plugins/<instance>/api.sock`).
    pub socket_path: PathBuf,
    /// Scopes the admin granted to this install.
    pub granted_scopes: ScopeSet,
    /// The admin who installed the plugin; calls outside a task act as them.
    pub installing_user: String,
    /// Rate, concurrency, size and duration limits.
    pub limits: Limits,
}

/// The shared part of the proxy: database-backed authorization, the backend,
/// the audit store. Cheap to clone.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use hutch_api::audit::{AuditConfig, AuditStore};
/// use hutch_api::authz::{Scope, ScopeSet};
/// use hutch_api::db::Db;
/// use hutch_api::limits::Limits;
/// use hutch_api::server::{ApiCore, InstanceSpec, Task};
/// use hutch_api::store::{BuiltinStore, StoreConfig};
///
/// let db = Db::open("/var/lib/hutch/hutch.db").await?;
/// let audit = AuditStore::open(&db, AuditConfig::default()).await?;
/// let store = BuiltinStore::open(&db, audit.clone(), StoreConfig::new("/var/lib/hutch/blobs")).await?;
/// let core = ApiCore::new(Arc::new(store), audit).await?;
/// let handle = core.serve_instance(InstanceSpec {
///     plugin_id: "org.example.threshold".into(),
///     version: "1.2.0".into(),
///     instance_id: "i-1".into(),
///     uid: 61_000,
///     socket_path: "/run/hutch/plugins/i-1/api.sock".into(),
///     granted_scopes: [Scope::DataRead].into_iter().collect::<ScopeSet>(),
///     installing_user: "root".into(),
///     limits: Limits::default(),
/// }).await?;
/// handle.hub().wait_agent(std::time::Duration::from_secs(10)).await?;
/// let mut events = handle.hub().assign(Task {
///     task_id: "t-1".into(), action: "threshold".into(), args_json: "{}".into(),
///     acting_user: "alice".into(), inputs: vec![],
/// })?;
/// while let Some(ev) = events.recv().await { println!("{ev:?}"); }
/// handle.stop().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ApiCore {
    backend: Arc<dyn Backend>,
    audit: AuditStore,
    authz: Authz,
    sink: AuditSink,
}

impl std::fmt::Debug for ApiCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCore").finish_non_exhaustive()
    }
}

impl ApiCore {
    /// Builds the core on the audit store's database: loads the
    /// authorization tables and starts the queued audit recorder.
    ///
    /// # Errors
    /// [`ServeError::Authz`] if the tables cannot be read.
    pub async fn new(backend: Arc<dyn Backend>, audit: AuditStore) -> Result<ApiCore, ServeError> {
        let authz = Authz::load(audit.db().pool().clone()).await?;
        let sink = AuditSink::start(audit.clone());
        Ok(ApiCore {
            backend,
            audit,
            authz,
            sink,
        })
    }

    /// The authorization tables (users, teams, dataset ACLs, policies).
    pub fn authz(&self) -> &Authz {
        &self.authz
    }

    /// The data backend (the daemon's control socket serves admin dataset
    /// commands and revert through it).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The audit store.
    pub fn audit(&self) -> &AuditStore {
        &self.audit
    }

    /// The queued audit recorder (flush it before reading the audit store
    /// to see aggregated denials immediately).
    pub fn audit_sink(&self) -> &AuditSink {
        &self.sink
    }

    /// Starts the server of one instance on `spec.socket_path`.
    ///
    /// # Errors
    /// [`ServeError::Socket`] if the socket cannot be created safely.
    pub async fn serve_instance(&self, spec: InstanceSpec) -> Result<InstanceHandle, ServeError> {
        let listener =
            socket::bind_instance_socket(&spec.socket_path, spec.uid).map_err(|source| {
                ServeError::Socket {
                    instance: spec.instance_id.clone(),
                    source,
                }
            })?;
        let hub = TaskHub::new(&spec.instance_id);
        let inst = Arc::new(Instance {
            limiter: Limiter::new(spec.limits.clone()),
            spec: spec.clone(),
            hub: hub.clone(),
            authz: self.authz.clone(),
            backend: self.backend.clone(),
            sink: self.sink.clone(),
        });
        let refused_inst = inst.clone();
        let on_refused = Arc::new(move |peer: socket::RefusedPeer, why: &'static str| {
            let ev = AuditEvent::new(
                refused_inst.actor(None),
                "api.connection.refused",
                format!("socket/{}", refused_inst.spec.instance_id),
            )
            .denied(why)
            .with_details(serde_json::json!({ "peer_uid": peer.uid, "peer_pid": peer.pid }));
            refused_inst.sink.deny(ev);
        });
        let connections = Arc::new(socket::Connections::default());
        let incoming = socket::peer_filtered_incoming(
            listener,
            spec.uid,
            spec.limits.max_connections,
            connections.clone(),
            on_refused,
        );
        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::data_server::DataServer<data::DataSvc>>()
            .await;
        health
            .set_serving::<pb::agent_server::AgentServer<agent::AgentSvc>>()
            .await;
        let max = spec.limits.max_message_bytes;
        let data_svc = pb::data_server::DataServer::new(data::DataSvc(inst.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let agent_svc = pb::agent_server::AgentServer::new(agent::AgentSvc(inst.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(spec.limits.max_concurrent_calls.saturating_add(4))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(reject::RejectAuditLayer(inst.clone()))
            .add_service(health_svc)
            .add_service(data_svc)
            .add_service(agent_svc);
        let instance_id = spec.instance_id.clone();
        let join = tokio::spawn(async move {
            let shutdown = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(instance = %instance_id, error = %e, "plugin API server ended");
            }
        });
        Ok(InstanceHandle {
            spec,
            hub,
            connections,
            stop: Some(stop_tx),
            join: Some(join),
        })
    }
}

/// A running instance server. Dropping it stops the server, cuts every open
/// connection (so no stream or call outlives it) and removes the socket;
/// [`InstanceHandle::stop`] does the same and waits for the server to end.
#[derive(Debug)]
pub struct InstanceHandle {
    spec: InstanceSpec,
    hub: TaskHub,
    connections: Arc<socket::Connections>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl InstanceHandle {
    /// The instance's task hub.
    pub fn hub(&self) -> &TaskHub {
        &self.hub
    }

    /// The spec it serves.
    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// How many plugin connections are open.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Stops the server, cuts open connections and removes the socket.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.connections.shutdown_all();
        if let Some(j) = self.join.take() {
            // Open streams could keep a graceful shutdown waiting: bound it.
            let abort = j.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), j)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let _ = std::fs::remove_file(&self.spec.socket_path);
    }
}

impl Drop for InstanceHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.connections.shutdown_all();
        if let Some(j) = self.join.take() {
            j.abort();
        }
        let _ = std::fs::remove_file(&self.spec.socket_path);
    }
}

/// Per-instance state shared by the services of one socket.
pub(crate) struct Instance {
    pub spec: InstanceSpec,
    pub limiter: Limiter,
    pub hub: TaskHub,
    pub authz: Authz,
    pub backend: Arc<dyn Backend>,
    pub sink: AuditSink,
}

/// An admitted call.
pub(crate) struct Call {
    /// Held until the call ends.
    pub permit: CallPermit,
    /// The acting user.
    pub user: String,
    /// The allowed-event template (actor, task, operation, resource).
    pub event: AuditEvent,
}

/// A refused call, for [`Instance::refuse`].
pub(crate) struct Refusal<'a> {
    pub code: Code,
    pub op: &'a str,
    pub resource: &'a str,
    pub user: Option<String>,
    pub task_id: Option<&'a str>,
    pub reason: String,
    pub details: serde_json::Value,
}

impl<'a> Refusal<'a> {
    /// A refusal with no acting user, task or details.
    pub fn new(code: Code, op: &'a str, resource: &'a str, reason: String) -> Refusal<'a> {
        Refusal {
            code,
            op,
            resource,
            user: None,
            task_id: None,
            reason,
            details: serde_json::Value::Null,
        }
    }
}

/// Milliseconds since the epoch, by the policy clock ([`crate::clock`]).
pub(crate) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Truncates a client-controlled string for the audit log.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    format!("{}…", &s[..i])
}

impl Instance {
    pub fn actor(&self, user: Option<String>) -> Actor {
        Actor::plugin(
            self.spec.plugin_id.clone(),
            self.spec.version.clone(),
            self.spec.instance_id.clone(),
            user,
        )
    }

    /// Records a refusal (aggregated) and returns the status for it.
    pub fn refuse(&self, r: Refusal<'_>) -> Status {
        let mut ev = AuditEvent::new(self.actor(r.user), r.op, clip(r.resource, 1100))
            .denied(r.reason.clone())
            .with_details(r.details);
        if let Some(t) = r.task_id {
            ev = ev.with_task(t);
        }
        self.sink.deny(ev);
        Status::new(r.code, r.reason)
    }

    /// Admits a call or refuses it (see the module doc, step 3).
    pub fn gate(
        &self,
        metadata: &MetadataMap,
        extensions: &Extensions,
        op: Operation,
        dataset: Option<&str>,
        resource: &str,
    ) -> Result<Call, Status> {
        let name = op.name();
        let peer = extensions
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid());
        if peer != Some(self.spec.uid) {
            return Err(self.refuse(Refusal {
                details: serde_json::json!({ "peer_uid": peer }),
                ..Refusal::new(
                    Code::PermissionDenied,
                    name,
                    resource,
                    "peer uid does not match the instance uid".into(),
                )
            }));
        }
        let permit = self.limiter.admit().map_err(|e| {
            self.refuse(Refusal::new(
                Code::ResourceExhausted,
                name,
                resource,
                e.to_string(),
            ))
        })?;
        let (user, task) = match metadata.get(TASK_ID_METADATA) {
            None => (self.spec.installing_user.clone(), None),
            Some(v) => {
                let claimed = v.to_str().map(str::to_owned).unwrap_or_default();
                match self.hub.task_user(&claimed).filter(|_| !claimed.is_empty()) {
                    Some(u) => (u, Some(claimed)),
                    None => {
                        let shown = clip(&claimed, 128);
                        return Err(self.refuse(Refusal {
                            details: serde_json::json!({ "claimed_task_id": shown }),
                            ..Refusal::new(
                                Code::PermissionDenied,
                                name,
                                resource,
                                format!("task '{shown}' is not a running task of this instance"),
                            )
                        }));
                    }
                }
            }
        };
        let req = AuthzRequest {
            plugin_id: &self.spec.plugin_id,
            user: &user,
            op,
            dataset,
            now_ms: now_ms(),
        };
        if let Err(reason) = self
            .authz
            .snapshot()
            .authorize(&self.spec.granted_scopes, &req)
        {
            return Err(self.refuse(Refusal {
                user: Some(user),
                task_id: task.as_deref(),
                ..Refusal::new(Code::PermissionDenied, name, resource, reason)
            }));
        }
        let mut event = AuditEvent::new(self.actor(Some(user.clone())), name, clip(resource, 1100));
        if let Some(t) = task {
            event = event.with_task(t);
        }
        Ok(Call {
            permit,
            user,
            event,
        })
    }
}
