//! The per-instance proxy over REAL Unix sockets, a real SQLite file and the
//! built-in store, driven by a tonic client exactly as a plugin would.
//!
//! Covers: the scope x operation matrix (each decision audited), acting-user
//! rights under tasks, task-id and identity spoofing, admin policies with a
//! time window, peer-uid refusal (root test, real second uid), malformed
//! protobuf, oversized messages, slow-loris streams, a rate-limit flood with
//! bounded audit rows while another instance stays responsive, the health
//! service, protocol version mismatch and the task event flow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hutch_api::audit::{AuditFilter, AuditStore, Decision, StoredEvent};
use hutch_api::authz::{Effect, OpClass, Operation, Owner, Policy, Role, Scope, ScopeSet};
use hutch_api::db::Db;
use hutch_api::limits::Limits;
use hutch_api::server::{ApiCore, InstanceHandle, InstanceSpec, Task, TaskEvent};
use hutch_plugin_protocol::client::{self, AgentSession, Incoming};
use hutch_plugin_protocol::plugin::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const ADMIN: &str = "admin";

struct Env {
    dir: tempfile::TempDir,
    core: ApiCore,
    audit: AuditStore,
}

async fn env() -> Result<Env> {
    env_storing_in(None, hutch_api::store::DEFAULT_MIN_FREE_BYTES).await
}

/// [`env`] with the database and blobs in `state` (default: beside the
/// sockets) and a free-space reserve of `min_free` bytes.
async fn env_storing_in(state: Option<&Path>, min_free: u64) -> Result<Env> {
    let dir = tempfile::tempdir()?;
    // Traversable by a plugin uid (the sockets below have their own 0600).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let state = state.unwrap_or(dir.path());
    let db = Db::open(state.join("hutch.db")).await?;
    let mut config = hutch_api::store::StoreConfig::new(state.join("blobs"));
    config.min_free_bytes = min_free;
    let (audit, store) = common::stores_with(&db, config).await?;
    let core = ApiCore::new(Arc::new(store), audit.clone()).await?;
    let a = core.authz();
    a.set_user(ADMIN, Role::Admin).await?;
    a.set_user("alice", Role::Member).await?;
    a.set_user("bob", Role::Member).await?;
    a.set_user("vic", Role::Viewer).await?;
    a.add_team_member("lab", "vic").await?;
    Ok(Env { dir, core, audit })
}

fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

impl Env {
    fn socket(&self, instance: &str) -> PathBuf {
        self.dir
            .path()
            .join("plugins")
            .join(instance)
            .join("api.sock")
    }

    fn spec(&self, plugin: &str, instance: &str, scopes: &[Scope], limits: Limits) -> InstanceSpec {
        InstanceSpec {
            plugin_id: plugin.into(),
            version: "1.0.0".into(),
            instance_id: instance.into(),
            uid: my_uid(),
            socket_path: self.socket(instance),
            granted_scopes: scopes.iter().copied().collect::<ScopeSet>(),
            installing_user: ADMIN.into(),
            limits,
        }
    }

    async fn serve(
        &self,
        plugin: &str,
        instance: &str,
        scopes: &[Scope],
    ) -> Result<(InstanceHandle, Channel)> {
        self.serve_with(plugin, instance, scopes, Limits::default())
            .await
    }

    async fn serve_with(
        &self,
        plugin: &str,
        instance: &str,
        scopes: &[Scope],
        limits: Limits,
    ) -> Result<(InstanceHandle, Channel)> {
        let h = self
            .core
            .serve_instance(self.spec(plugin, instance, scopes, limits))
            .await?;
        let ch = client::connect(self.socket(instance)).await?;
        Ok((h, ch))
    }

    /// Waits (up to 10 s) until the audit store holds events matching
    /// `filter` for which `done` holds; returns them.
    async fn events_until(
        &self,
        filter: AuditFilter,
        done: impl Fn(&[StoredEvent]) -> bool,
    ) -> Result<Vec<StoredEvent>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.core.audit_sink().flush();
            let evs = self.audit.query(&filter).await?;
            if done(&evs) {
                return Ok(evs);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("audit events never matched; have {evs:#?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn plugin_filter(plugin: &str) -> AuditFilter {
    AuditFilter {
        plugin_id: Some(plugin.into()),
        ..AuditFilter::default()
    }
}

fn data(ch: &Channel) -> pb::data_client::DataClient<Channel> {
    client::data_client(ch.clone())
}

/// Creates a dataset named `name` through `d`.
async fn new_dataset(
    d: &mut pb::data_client::DataClient<Channel>,
    name: &str,
) -> Result<pb::Dataset> {
    let r = d
        .create_dataset(pb::CreateDatasetRequest { name: name.into() })
        .await?;
    Ok(r.into_inner())
}

/// Creates dataset + objects as the installing admin through an all-scope
/// instance; returns the dataset id.
async fn seed(env: &Env, keys: &[&str]) -> Result<String> {
    let all = [
        Scope::DataRead,
        Scope::DataWrite,
        Scope::DataDelete,
        Scope::DatasetsCreate,
    ];
    let (h, ch) = env.serve("org.hutch.seed", "seed", &all).await?;
    let mut d = data(&ch);
    let ds = new_dataset(&mut d, "seed").await?;
    for k in keys {
        client::put_bytes(&mut d, None, &ds.id, k, None, b"hello").await?;
    }
    h.stop().await;
    Ok(ds.id)
}

/// Calls `op` once; Ok(code) is the status code (Ok for success).
async fn call(
    d: &mut pb::data_client::DataClient<Channel>,
    op: Operation,
    ds: &str,
    tag: &str,
) -> Code {
    let r: std::result::Result<(), tonic::Status> = match op {
        Operation::DatasetCreate => d
            .create_dataset(pb::CreateDatasetRequest { name: tag.into() })
            .await
            .map(drop),
        Operation::DatasetList => d.list_datasets(pb::ListDatasetsRequest {}).await.map(drop),
        Operation::DatasetGet => d
            .get_dataset(pb::GetDatasetRequest {
                dataset_id: ds.into(),
            })
            .await
            .map(drop),
        Operation::ObjectPut => client::put_bytes(d, None, ds, &format!("put-{tag}"), None, b"x")
            .await
            .map(drop)
            .map_err(|e| match e {
                client::ClientError::Status { status, .. } => *status,
                other => tonic::Status::unknown(other.to_string()),
            }),
        Operation::ObjectGet => client::get_bytes(d, None, ds, "k")
            .await
            .map(drop)
            .map_err(|e| match e {
                client::ClientError::Status { status, .. } => *status,
                other => tonic::Status::unknown(other.to_string()),
            }),
        Operation::ObjectList => d
            .list_objects(pb::ListObjectsRequest {
                dataset_id: ds.into(),
                prefix: String::new(),
            })
            .await
            .map(drop),
        Operation::ObjectDelete => d
            .delete_object(pb::DeleteObjectRequest {
                dataset_id: ds.into(),
                key: format!("del-{tag}"),
                expected_version: None,
            })
            .await
            .map(drop),
        Operation::MetadataGet => d
            .get_metadata(pb::GetMetadataRequest {
                dataset_id: ds.into(),
                key: "k".into(),
            })
            .await
            .map(drop),
        Operation::MetadataSet => d
            .set_metadata(pb::SetMetadataRequest {
                dataset_id: ds.into(),
                key: "k".into(),
                metadata: HashMap::from([("by".to_string(), tag.to_string())]),
                expected_version: None,
            })
            .await
            .map(drop),
        Operation::VersionList => d
            .list_versions(pb::ListVersionsRequest {
                dataset_id: ds.into(),
                key: "k".into(),
            })
            .await
            .map(drop),
    };
    match r {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_operation_matrix_each_decision_audited() -> Result {
    let env = env().await?;
    let grants: Vec<(&str, Vec<Scope>)> = vec![
        ("none", vec![]),
        ("read", vec![Scope::DataRead]),
        ("write", vec![Scope::DataWrite]),
        ("delete", vec![Scope::DataDelete]),
        ("create", vec![Scope::DatasetsCreate]),
        ("spawn", vec![Scope::TasksSpawn]),
    ];
    let keys: Vec<String> = ["k".to_string()]
        .into_iter()
        .chain(grants.iter().map(|(t, _)| format!("del-{t}")))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let ds = seed(&env, &key_refs).await?;

    for (tag, scopes) in &grants {
        let plugin = format!("org.matrix.{tag}");
        let (h, ch) = env.serve(&plugin, &format!("m-{tag}"), scopes).await?;
        let mut d = data(&ch);
        let mut expected = Vec::new();
        for op in Operation::ALL {
            let allowed = scopes.contains(&op.scope());
            let code = call(&mut d, op, &ds, tag).await;
            if allowed {
                assert_eq!(code, Code::Ok, "{tag}: {op:?} should be allowed");
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{tag}: {op:?} should be denied"
                );
            }
            expected.push((op.name(), allowed));
        }
        // Every call left its decision in the audit store.
        let evs = env
            .events_until(plugin_filter(&plugin), |evs| {
                expected
                    .iter()
                    .all(|(name, _)| evs.iter().any(|e| e.event.operation == *name))
            })
            .await?;
        for (name, allowed) in &expected {
            let e = evs
                .iter()
                .find(|e| e.event.operation == *name)
                .ok_or("missing event")?;
            let want = if *allowed {
                Decision::Allowed
            } else {
                Decision::Denied
            };
            assert_eq!(e.event.decision, want, "{tag}: audit decision of {name}");
            assert_eq!(
                e.event.actor.instance.as_deref(),
                Some(format!("m-{tag}").as_str())
            );
            assert_eq!(e.event.actor.user.as_deref(), Some(ADMIN));
            if !allowed {
                let reason = e.event.reason.clone().unwrap_or_default();
                assert!(reason.contains("is not granted"), "{reason}");
            }
        }
        h.stop().await;
    }
    assert!(env.audit.verify().await?.is_ok());
    Ok(())
}

/// Connects an agent, assigns a task as `user`, returns (agent, events, task id).
async fn start_task(
    h: &InstanceHandle,
    ch: &Channel,
    task_id: &str,
    user: &str,
) -> Result<(AgentSession, tokio::sync::mpsc::Receiver<TaskEvent>)> {
    let agent = if h.hub().agent_connected() {
        return Err("agent already connected".into());
    } else {
        AgentSession::hello(ch.clone(), &["work"]).await?
    };
    h.hub().wait_agent(Duration::from_secs(5)).await?;
    let events = h.hub().assign(Task {
        task_id: task_id.into(),
        action: "work".into(),
        args_json: "{}".into(),
        acting_user: user.into(),
        inputs: vec![],
    })?;
    Ok((agent, events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_user_rights_and_task_id_spoofing() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    // The seed dataset is owned by the admin; give one to alice.
    env.core
        .authz()
        .set_dataset_owner(&ds, &Owner::User("alice".into()))
        .await?;
    let all = [Scope::DataRead, Scope::DataWrite, Scope::DataDelete];
    let (h, ch) = env.serve("org.example.worker", "w1", &all).await?;
    let (h2, ch2) = env.serve("org.example.other", "w2", &all).await?;
    let mut d = data(&ch);

    let (mut agent, mut events) = start_task(&h, &ch, "t-alice", "alice").await?;
    let Some(Incoming::Task(t)) = agent.next().await? else {
        return Err("no task".into());
    };
    assert_eq!(
        (t.task_id.as_str(), t.acting_user.as_str()),
        ("t-alice", "alice")
    );
    let rep = agent.reporter("t-alice");
    rep.started().await?;
    // Alice owns the dataset: her task may read and write it.
    assert_eq!(
        client::get_bytes(&mut d, Some("t-alice"), &ds, "k").await?,
        b"hello"
    );
    client::put_bytes(&mut d, Some("t-alice"), &ds, "k", None, b"by alice").await?;

    // Bob has no right on it: his task fails even with every scope granted.
    h.hub().assign(Task {
        task_id: "t-bob".into(),
        action: "work".into(),
        args_json: "{}".into(),
        acting_user: "bob".into(),
        inputs: vec![],
    })?;
    let e = client::get_bytes(&mut d, Some("t-bob"), &ds, "k")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("user 'bob' may not read dataset"), "{msg}");
    // Vic (viewer) may not write, whatever the scopes.
    h.hub().assign(Task {
        task_id: "t-vic".into(),
        action: "work".into(),
        args_json: "{}".into(),
        acting_user: "vic".into(),
        inputs: vec![],
    })?;
    let e = client::put_bytes(&mut d, Some("t-vic"), &ds, "k", None, b"v")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("viewer"), "{e}");

    // A task id never assigned, or assigned to another instance, is refused.
    let e = client::get_bytes(&mut d, Some("t-nope"), &ds, "k")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a running task"), "{e}");
    let (_agent2, _ev2) = start_task(&h2, &ch2, "t-other", ADMIN).await?;
    let e = client::get_bytes(&mut d, Some("t-other"), &ds, "k")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a running task"), "{e}");

    // Metadata claiming another plugin or instance is ignored.
    let mut req = client::with_task(
        pb::GetMetadataRequest {
            dataset_id: ds.clone(),
            key: "k".into(),
        },
        Some("t-alice"),
    );
    req.metadata_mut()
        .insert("hutch-plugin-id", "org.example.other".parse()?);
    req.metadata_mut().insert("hutch-instance", "w2".parse()?);
    req.metadata_mut().insert("hutch-user", ADMIN.parse()?);
    d.get_metadata(req).await?;

    // Task events reach the daemon; after completion the task id is dead.
    rep.progress(50.0, "half").await?;
    rep.log(pb::LogLevel::Info, "line").await?;
    rep.completed("{\"ok\":true}").await?;
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await? {
        seen.push(ev);
    }
    assert_eq!(seen.first(), Some(&TaskEvent::Started));
    assert!(seen.contains(&TaskEvent::Progress {
        percent: 50.0,
        message: "half".into()
    }));
    assert_eq!(
        seen.last(),
        Some(&TaskEvent::Completed {
            result_json: "{\"ok\":true}".into()
        })
    );
    let e = client::get_bytes(&mut d, Some("t-alice"), &ds, "k")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a running task"), "{e}");

    // The audit trail: acting users, task ids, actor from the socket.
    let evs = env
        .events_until(plugin_filter("org.example.worker"), |evs| {
            evs.iter().any(|e| {
                e.event
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("t-other"))
            }) && evs
                .iter()
                .any(|e| e.event.operation == "data.object.metadata.get")
        })
        .await?;
    let md = evs
        .iter()
        .find(|e| e.event.operation == "data.object.metadata.get")
        .ok_or("no metadata.get event")?;
    assert_eq!(
        md.event.actor.plugin_id.as_deref(),
        Some("org.example.worker")
    );
    assert_eq!(md.event.actor.instance.as_deref(), Some("w1"));
    assert_eq!(md.event.actor.user.as_deref(), Some("alice"));
    assert_eq!(md.event.task_id.as_deref(), Some("t-alice"));
    let put = evs
        .iter()
        .find(|e| e.event.operation == "data.object.put" && e.event.decision == Decision::Allowed)
        .ok_or("no put event")?;
    assert_eq!(put.event.task_id.as_deref(), Some("t-alice"));
    assert!(put.event.after_version > put.event.before_version);
    let bob = evs
        .iter()
        .find(|e| e.event.actor.user.as_deref() == Some("bob"))
        .ok_or("no bob event")?;
    assert_eq!(bob.event.decision, Decision::Denied);
    assert_eq!(bob.event.task_id.as_deref(), Some("t-bob"));
    assert!(
        !evs.iter()
            .any(|e| e.event.actor.plugin_id.as_deref() != Some("org.example.worker"))
    );
    drop(agent);
    h.stop().await;
    h2.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_on_plugin_pattern_and_date_window_denies_citing_the_rule() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let id = env
        .core
        .authz()
        .add_policy(&Policy {
            id: 0,
            name: "example-freeze".into(),
            effect: Effect::Deny,
            plugin_pattern: "org.example.*".into(),
            user: None,
            team: None,
            operation_class: None,
            not_before_ms: Some(now_ms - 3_600_000),
            not_after_ms: Some(now_ms + 3_600_000),
            weekdays: None,
            hour_start: None,
            hour_end: None,
            reason: "maintenance freeze".into(),
        })
        .await?;
    // An allow exception for reads of one user (the admin).
    env.core
        .authz()
        .add_policy(&Policy {
            id: 0,
            name: "admin-reads".into(),
            effect: Effect::Allow,
            plugin_pattern: "org.example.*".into(),
            user: Some(ADMIN.into()),
            team: None,
            operation_class: Some(OpClass::Read),
            not_before_ms: None,
            not_after_ms: None,
            weekdays: None,
            hour_start: None,
            hour_end: None,
            reason: String::new(),
        })
        .await?;
    // An expired window blocks nothing.
    env.core
        .authz()
        .add_policy(&Policy {
            id: 0,
            name: "old".into(),
            effect: Effect::Deny,
            plugin_pattern: "*".into(),
            user: None,
            team: None,
            operation_class: None,
            not_before_ms: Some(now_ms - 7_200_000),
            not_after_ms: Some(now_ms - 3_600_000),
            weekdays: None,
            hour_start: None,
            hour_end: None,
            reason: "past".into(),
        })
        .await?;
    let scopes = [Scope::DataRead, Scope::DataWrite];
    let (h1, ch1) = env.serve("org.example.thresh", "p1", &scopes).await?;
    let (h2, ch2) = env.serve("org.other.thresh", "p2", &scopes).await?;
    let (mut d1, mut d2) = (data(&ch1), data(&ch2));

    let e = client::put_bytes(&mut d1, None, &ds, "k", None, b"x")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("PermissionDenied") || msg.contains("permission"),
        "{msg}"
    );
    assert!(
        msg.contains("'example-freeze'") && msg.contains("maintenance freeze"),
        "{msg}"
    );
    assert!(msg.contains(&format!("#{id}")), "{msg}");
    // The read exception applies; the other plugin is not matched at all.
    client::get_bytes(&mut d1, None, &ds, "k").await?;
    client::put_bytes(&mut d2, None, &ds, "k", None, b"y").await?;

    let evs = env
        .events_until(plugin_filter("org.example.thresh"), |evs| {
            evs.iter().any(|e| e.event.decision == Decision::Denied)
        })
        .await?;
    let denied = evs
        .iter()
        .find(|e| e.event.decision == Decision::Denied)
        .ok_or("no denial")?;
    assert_eq!(denied.event.operation, "data.object.put");
    assert!(
        denied
            .event
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("example-freeze") && r.contains("maintenance freeze"))
    );
    h1.stop().await;
    h2.stop().await;
    Ok(())
}

fn privileged(name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("{name} needs root (HUTCH_REQUIRE_PRIVILEGED_TESTS=1)");
    }
    println!("SKIP {name}: needs root");
    false
}

/// Runs this test binary's `uid_probe_helper` as `uid` against `socket`;
/// returns whether the helper reached the health service.
fn probe_as(uid: u32, socket: &Path) -> Result<bool> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "uid_probe_helper", "--nocapture"])
        .env("HUTCH_PROBE_SOCKET", socket)
        .uid(uid)
        .gid(uid)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.contains("PROBE SERVING"))
}

use std::os::unix::process::CommandExt;

/// Not a test on its own: run by `probe_as` under another uid.
#[test]
#[ignore = "helper run by peer_uid_must_match_instance_uid"]
fn uid_probe_helper() -> Result {
    let Some(sock) = std::env::var_os("HUTCH_PROBE_SOCKET") else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res: Result<i32> = rt.block_on(async move {
        let ch = client::connect(PathBuf::from(sock)).await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(r.into_inner().status)
    });
    match res {
        Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 => {
            println!("PROBE SERVING");
        }
        other => println!("PROBE FAILED {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_uid_must_match_instance_uid() -> Result {
    if !privileged("peer_uid_must_match_instance_uid") {
        return Ok(());
    }
    let env = env().await?;
    const PLUGIN_UID: u32 = 61_234;
    let mut spec = env.spec(
        "org.example.uid",
        "u1",
        &[Scope::DataRead],
        Limits::default(),
    );
    spec.uid = PLUGIN_UID;
    let h = env.core.serve_instance(spec).await?;
    let sock = env.socket("u1");
    // The socket belongs to the plugin uid, mode 0600.
    let md = std::fs::metadata(&sock)?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.mode() & 0o777), (PLUGIN_UID, 0o600));

    // The plugin's uid gets through (a real process running as that uid).
    let s2 = sock.clone();
    assert!(tokio::task::spawn_blocking(move || probe_as(PLUGIN_UID, &s2)).await??);
    // Another unprivileged uid cannot even open the socket file.
    let s3 = sock.clone();
    assert!(!tokio::task::spawn_blocking(move || probe_as(PLUGIN_UID + 1, &s3)).await??);
    // Root can open it (file permissions do not stop root), but SO_PEERCRED
    // does: the connection is closed and the refusal audited.
    let refused = async {
        let ch = client::connect(&sock).await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Result::Ok(())
    }
    .await;
    assert!(refused.is_err(), "root connection must be refused");
    let evs = env
        .events_until(
            AuditFilter {
                operation: Some("api.connection.refused".into()),
                ..plugin_filter("org.example.uid")
            },
            |evs| !evs.is_empty(),
        )
        .await?;
    assert_eq!(evs[0].event.decision, Decision::Denied);
    assert_eq!(
        evs[0].event.details["peer_uid"],
        serde_json::json!(my_uid())
    );
    // Defence in depth: even if the socket file were world-accessible, an
    // unprivileged stranger is refused by SO_PEERCRED, and audited.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let s4 = sock.clone();
    assert!(!tokio::task::spawn_blocking(move || probe_as(PLUGIN_UID + 1, &s4)).await??);
    env.events_until(
        AuditFilter {
            operation: Some("api.connection.refused".into()),
            ..plugin_filter("org.example.uid")
        },
        |evs| {
            evs.iter()
                .any(|e| e.event.details["peer_uid"] == serde_json::json!(PLUGIN_UID + 1))
        },
    )
    .await?;
    h.stop().await;
    assert!(!sock.exists(), "socket removed on stop");
    Ok(())
}

/// A codec that sends and receives raw bytes, to put malformed protobuf on
/// the wire.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEnc;
struct RawDec;

impl tonic::codec::Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> std::result::Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> std::result::Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

async fn raw_unary(
    ch: &Channel,
    path: &'static str,
    body: Vec<u8>,
) -> std::result::Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

async fn health_ok(ch: &Channel) -> Result {
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "hutch.plugin.v1.Data", "hutch.plugin.v1.Agent"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_errors_not_crashes() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    let limits = Limits {
        max_message_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    };
    let (h, ch) = env
        .serve_with(
            "org.example.fuzz",
            "f1",
            &[Scope::DataRead, Scope::DataWrite],
            limits,
        )
        .await?;
    let bad: Vec<Vec<u8>> = vec![
        vec![0xff; 7],                            // invalid tag/wire type
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // length beyond the buffer
        vec![0x0a, 0x02, 0xc3, 0x28],             // invalid UTF-8 in a string
        vec![0x08],                               // truncated varint
    ];
    for b in bad {
        let e = raw_unary(&ch, "/hutch.plugin.v1.Data/GetDataset", b.clone())
            .await
            .unwrap_err();
        assert_ne!(e.code(), Code::Ok, "{b:?}");
        assert_ne!(
            e.code(),
            Code::Unavailable,
            "server must survive {b:?}: {e}"
        );
    }
    let e = raw_unary(&ch, "/hutch.plugin.v1.Data/NoSuchMethod", vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);

    // An oversized unary message: OUT_OF_RANGE from the decoder.
    let huge = pb::GetDatasetRequest {
        dataset_id: "x".repeat(3 * 1024 * 1024),
    };
    let e = data(&ch).get_dataset(huge).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e}"
    );
    // A chunk above MAX_CHUNK_SIZE but under the message limit: OUT_OF_RANGE.
    let mut d = data(&ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Header(pb::PutObjectHeader {
            dataset_id: ds.clone(),
            key: "big".into(),
            expected_version: None,
            metadata: HashMap::new(),
        })),
    })
    .await?;
    tx.send(pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Chunk(vec![
            1;
            client::MAX_CHUNK_SIZE
                + 1
        ])),
    })
    .await?;
    drop(tx);
    let e = d.put_object(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e}");
    // An invalid dataset id is refused (and audited), not passed on; so is
    // one with control characters, NUL among them: its refusal records what
    // was sent, and verify must not mistake that for tampering (below).
    for bad in ["../../etc", "a\0b/\u{1}/c"] {
        let e = data(&ch)
            .get_dataset(pb::GetDatasetRequest {
                dataset_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
    }

    // Calls tonic rejected before any handler ran are audited too.
    let evs = env
        .events_until(
            AuditFilter {
                operation: Some("api.call.rejected".into()),
                ..plugin_filter("org.example.fuzz")
            },
            |evs| {
                ["malformed protobuf", "message too large", "unknown method"]
                    .iter()
                    .all(|r| {
                        evs.iter()
                            .any(|e| e.event.reason.as_deref().is_some_and(|x| x.starts_with(r)))
                    })
            },
        )
        .await?;
    assert!(evs.iter().all(|e| e.event.decision == Decision::Denied));

    // Still serving.
    health_ok(&ch).await?;
    client::put_bytes(&mut d, None, &ds, "after", None, b"fine").await?;
    assert!(
        env.audit
            .query(&AuditFilter {
                operation: Some("data.object.put".into()),
                ..plugin_filter("org.example.fuzz")
            })
            .await?
            .iter()
            .any(|e| !e.event.outcome.is_ok()),
        "the cut put is audited with its error"
    );
    let nul = env
        .audit
        .query(&plugin_filter("org.example.fuzz"))
        .await?
        .into_iter()
        .find(|e| e.event.resource.contains('\0'))
        .ok_or("the refusal of the NUL dataset id is not audited")?;
    assert_eq!(nul.event.resource, "dataset/a\0b/\u{1}/c");
    assert_eq!(nul.event.decision, Decision::Denied);
    let report = env.audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_streams_are_cut() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    let limits = Limits {
        stream_idle_timeout: Duration::from_millis(300),
        max_stream_duration: Duration::from_millis(1500),
        ..Limits::default()
    };
    let (h, ch) = env
        .serve_with(
            "org.example.slow",
            "s1",
            &[Scope::DataRead, Scope::DataWrite],
            limits,
        )
        .await?;
    let header = || pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Header(pb::PutObjectHeader {
            dataset_id: ds.clone(),
            key: "slow".into(),
            expected_version: None,
            metadata: HashMap::new(),
        })),
    };
    // 1. Opens a put and never sends the header.
    let (tx0, rx0) = tokio::sync::mpsc::channel::<pb::PutObjectRequest>(1);
    let e = data(&ch)
        .put_object(ReceiverStream::new(rx0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    drop(tx0);
    // 2. Header, then silence.
    let (tx1, rx1) = tokio::sync::mpsc::channel(1);
    tx1.send(header()).await?;
    let e = data(&ch)
        .put_object(ReceiverStream::new(rx1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("idle"), "{e}");
    drop(tx1);
    // 3. A trickle: one byte every 100 ms, never idle, but too long overall.
    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
    tx2.send(header()).await?;
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let m = pb::PutObjectRequest {
                part: Some(pb::put_object_request::Part::Chunk(vec![b'.'])),
            };
            if tx2.send(m).await.is_err() {
                return;
            }
        }
    });
    let e = data(&ch)
        .put_object(ReceiverStream::new(rx2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("maximum duration"), "{e}");
    trickle.abort();
    // Nothing was stored, and the cut puts are audited.
    let e = client::get_bytes(&mut data(&ch), None, &ds, "slow")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let evs = env
        .events_until(plugin_filter("org.example.slow"), |evs| {
            evs.iter()
                .filter(|e| {
                    e.event.operation == "data.object.put"
                        && e.event.outcome.to_stored().contains("stream")
                })
                .count()
                >= 3
        })
        .await?;
    assert!(!evs.is_empty());
    health_ok(&ch).await?;
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_rate_limited_other_instances_stay_responsive_audit_bounded() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    let limits = Limits {
        rate_per_sec: 50.0,
        burst: 50,
        ..Limits::default()
    };
    let (ha, cha) = env
        .serve_with("org.example.flood", "fl", &[Scope::DataRead], limits)
        .await?;
    let (hb, chb) = env
        .serve("org.example.calm", "ca", &[Scope::DataRead])
        .await?;
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let mut d = data(&cha);
        let ds = ds.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut exhausted, mut other) = (0u64, 0u64, 0u64);
            for _ in 0..250 {
                match d
                    .get_dataset(pb::GetDatasetRequest {
                        dataset_id: ds.clone(),
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
                    Err(_) => other += 1,
                }
            }
            (ok, exhausted, other)
        }));
    }
    // Meanwhile the other instance answers every call.
    let mut db = data(&chb);
    for _ in 0..50 {
        db.get_dataset(pb::GetDatasetRequest {
            dataset_id: ds.clone(),
        })
        .await?;
    }
    let (mut ok, mut exhausted, mut other) = (0, 0, 0);
    for w in workers {
        let (a, b, c) = w.await?;
        ok += a;
        exhausted += b;
        other += c;
    }
    let secs = started.elapsed().as_secs() + 2;
    assert_eq!(other, 0);
    assert_eq!(ok + exhausted, 4000);
    assert!(exhausted > 0, "the flood must hit the rate limit");
    assert!(ok <= 50 + 50 * secs + 5, "ok {ok} exceeds the token bucket");
    // Audit rows for the flood: one per allowed call plus at most two per
    // (operation, reason) per second for the denials.
    env.core.audit_sink().flush();
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.core.audit_sink().flush();
    let evs = env
        .events_until(plugin_filter("org.example.flood"), |evs| {
            evs.iter()
                .filter(|e| e.event.decision == Decision::Allowed)
                .count() as u64
                >= ok
        })
        .await?;
    let denied: Vec<_> = evs
        .iter()
        .filter(|e| e.event.decision == Decision::Denied)
        .collect();
    let bound = 2 * (secs + 1);
    assert!(
        (denied.len() as u64) <= bound,
        "{} denial rows for {exhausted} denials (bound {bound})",
        denied.len()
    );
    // The rows account for every denial: a window's first denial is a row
    // of its own, the rest are counted in the window's aggregated row.
    let counted: u64 = denied
        .iter()
        .map(|e| e.event.details["aggregated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(counted, exhausted);
    assert!(denied.iter().all(|e| {
        e.event
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("rate limit"))
    }));
    ha.stop().await;
    hb.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_mismatch_and_one_agent_per_instance() -> Result {
    let env = env().await?;
    let (h, ch) = env.serve("org.example.h", "h1", &[]).await?;
    health_ok(&ch).await?;
    let e = AgentSession::hello_with_version(ch.clone(), &[], 2)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("protocol version mismatch: plugin speaks 2, hutch speaks 1"),
        "{msg}"
    );
    let a = AgentSession::hello(ch.clone(), &["x"]).await?;
    assert_eq!(a.welcome.instance_id, "h1");
    assert_eq!(a.welcome.plugin_id, "org.example.h");
    let e = AgentSession::hello(ch.clone(), &["x"]).await.unwrap_err();
    assert!(e.to_string().contains("already open"), "{e}");
    // Closing the session fails running tasks and frees the slot.
    h.hub().wait_agent(Duration::from_secs(5)).await?;
    let mut ev = h.hub().assign(Task {
        task_id: "t1".into(),
        action: "x".into(),
        args_json: "{}".into(),
        acting_user: ADMIN.into(),
        inputs: vec![],
    })?;
    drop(a);
    let last = tokio::time::timeout(Duration::from_secs(5), ev.recv()).await?;
    assert!(matches!(last, Some(TaskEvent::Failed { .. })), "{last:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.hub().agent_connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = AgentSession::hello(ch.clone(), &["x"]).await?;
    let evs = env
        .events_until(plugin_filter("org.example.h"), |evs| {
            evs.iter()
                .any(|e| e.event.operation == "agent.session.close")
        })
        .await?;
    assert!(evs.iter().any(|e| {
        e.event.decision == Decision::Denied
            && e.event
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("version mismatch"))
    }));
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_stream_in_chunks_and_conditional_writes_hold() -> Result {
    let env = env().await?;
    let all = [
        Scope::DataRead,
        Scope::DataWrite,
        Scope::DataDelete,
        Scope::DatasetsCreate,
    ];
    let (h, ch) = env.serve("org.example.io", "io", &all).await?;
    let mut d = data(&ch);
    let ds = new_dataset(&mut d, "io").await?;
    assert_eq!(ds.owner_user, ADMIN);
    // 5 MiB + 3 bytes: several chunks each way.
    let content: Vec<u8> = (0..5 * 1024 * 1024 + 3).map(|i| (i % 251) as u8).collect();
    let v1 = client::put_bytes(&mut d, None, &ds.id, "big", Some(0), &content).await?;
    assert_eq!(v1.size, content.len() as u64);
    assert_eq!(
        client::get_bytes(&mut d, None, &ds.id, "big").await?,
        content
    );
    // Create-only and compare-and-set.
    let e = client::put_bytes(&mut d, None, &ds.id, "big", Some(0), b"x")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("FailedPrecondition") || e.to_string().contains("expected"),
        "{e}"
    );
    let v2 = client::put_bytes(&mut d, None, &ds.id, "big", Some(v1.version), b"v2").await?;
    let e = client::put_bytes(&mut d, None, &ds.id, "big", Some(v1.version), b"x")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
    let versions = d
        .list_versions(pb::ListVersionsRequest {
            dataset_id: ds.id.clone(),
            key: "big".into(),
        })
        .await?
        .into_inner()
        .versions;
    assert_eq!(versions.first().map(|v| v.version), Some(v2.version));
    // The old version is still readable.
    let mut old = Vec::new();
    client::get_object(
        &mut d,
        None,
        pb::GetObjectRequest {
            dataset_id: ds.id.clone(),
            key: "big".into(),
            version: v1.version,
        },
        &mut old,
    )
    .await?;
    assert_eq!(old, content);
    let del = d
        .delete_object(pb::DeleteObjectRequest {
            dataset_id: ds.id.clone(),
            key: "big".into(),
            expected_version: Some(v2.version),
        })
        .await?
        .into_inner();
    assert!(del.version > v2.version);
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cuts_open_connections_and_streams() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    let (h, ch) = env
        .serve("org.example.stop", "st", &[Scope::DataRead])
        .await?;
    let mut agent = AgentSession::hello(ch.clone(), &["x"]).await?;
    let mut d = data(&ch);
    client::get_bytes(&mut d, None, &ds, "k").await?;
    assert!(h.open_connections() >= 1);
    let sock = env.socket("st");
    h.stop().await;
    // The open agent session ends, and the old connection takes no new call.
    let next = tokio::time::timeout(Duration::from_secs(5), agent.next()).await?;
    assert!(!matches!(next, Ok(Some(_))), "{next:?}");
    assert!(client::get_bytes(&mut d, None, &ds, "k").await.is_err());
    assert!(!sock.exists());
    Ok(())
}

/// Not a test on its own: a plugin process run by
/// `a_plugin_process_runs_and_cancels_tasks`, built on the client helper's
/// task loop. Actions: `copy` (each input to `<key>.copy`), `sleep`.
#[test]
#[ignore = "helper run by a_plugin_process_runs_and_cancels_tasks"]
fn plugin_process_helper() -> Result {
    if std::env::var_os("HUTCH_PLUGIN_HELPER").is_none() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = client::connect_from_env().await?;
        let agent = AgentSession::hello(channel.clone(), &["copy", "sleep"]).await?;
        agent
            .run_tasks(move |task, report| {
                let mut data = client::data_client(channel.clone());
                async move {
                    if task.action == "sleep" {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        return Ok("{}".into());
                    }
                    let tid = Some(task.task_id.as_str());
                    for input in &task.inputs {
                        let content =
                            client::get_bytes(&mut data, tid, &input.dataset_id, &input.key)
                                .await
                                .map_err(|e| e.to_string())?;
                        let key = format!("{}.copy", input.key);
                        let info = client::put_bytes(
                            &mut data,
                            tid,
                            &input.dataset_id,
                            &key,
                            None,
                            &content,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        let made = pb::ObjectRef {
                            dataset_id: info.dataset_id,
                            key: info.key,
                            version: info.version,
                        };
                        report
                            .output("copy", "null", Some(made))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok("{\"done\":true}".into())
                }
            })
            .await?;
        Result::Ok(())
    })
}

async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<TaskEvent>) -> Result<TaskEvent> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await? {
            Some(TaskEvent::Heartbeat) => continue,
            Some(e) => return Ok(e),
            None => return Err("task event stream ended".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_process_runs_and_cancels_tasks() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["in"]).await?;
    env.core
        .authz()
        .set_dataset_owner(&ds, &Owner::User("alice".into()))
        .await?;
    // As root the plugin runs as its own uid, as in production.
    let uid = if nix::unistd::geteuid().is_root() {
        61_234
    } else {
        my_uid()
    };
    let mut spec = env.spec(
        "org.example.copy",
        "cp",
        &[Scope::DataRead, Scope::DataWrite],
        Limits::default(),
    );
    spec.uid = uid;
    let h = env.core.serve_instance(spec).await?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--ignored",
        "--exact",
        "plugin_process_helper",
        "--nocapture",
    ])
    .env("HUTCH_PLUGIN_HELPER", "1")
    .env("HUTCH_SOCKET", env.socket("cp"))
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    if uid != my_uid() {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn()?;
    h.hub().wait_agent(Duration::from_secs(20)).await?;

    let mut ev = h.hub().assign(Task {
        task_id: "copy-1".into(),
        action: "copy".into(),
        args_json: "{}".into(),
        acting_user: "alice".into(),
        inputs: vec![pb::ObjectRef {
            dataset_id: ds.clone(),
            key: "in".into(),
            version: 0,
        }],
    })?;
    assert_eq!(next_event(&mut ev).await?, TaskEvent::Started);
    let TaskEvent::Output { object, .. } = next_event(&mut ev).await? else {
        return Err("expected an output".into());
    };
    assert_eq!(object.map(|o| o.key), Some("in.copy".to_string()));
    assert_eq!(
        next_event(&mut ev).await?,
        TaskEvent::Completed {
            result_json: "{\"done\":true}".into()
        }
    );
    // The write was made as alice, under the task, by this plugin.
    let evs = env
        .events_until(
            AuditFilter {
                resource: Some(format!("dataset/{ds}/object/in.copy")),
                ..AuditFilter::default()
            },
            |evs| !evs.is_empty(),
        )
        .await?;
    let put = &evs[0].event;
    assert_eq!(put.decision, Decision::Allowed);
    assert_eq!(put.task_id.as_deref(), Some("copy-1"));
    assert_eq!(put.actor.user.as_deref(), Some("alice"));
    assert_eq!(put.actor.plugin_id.as_deref(), Some("org.example.copy"));

    // Cancel: the handler is aborted and the task reported failed.
    let mut ev = h.hub().assign(Task {
        task_id: "sleep-1".into(),
        action: "sleep".into(),
        args_json: "{}".into(),
        acting_user: "alice".into(),
        inputs: vec![],
    })?;
    assert_eq!(next_event(&mut ev).await?, TaskEvent::Started);
    h.hub().cancel("sleep-1", "admin said so")?;
    assert_eq!(
        next_event(&mut ev).await?,
        TaskEvent::Failed {
            error: "cancelled: admin said so".into()
        }
    );
    // Stopping the instance cuts the plugin's session: its task loop returns
    // (with the transport error) and the process exits instead of hanging.
    h.stop().await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(status.code().is_some(), "{status}");
    Ok(())
}

/// The decision cache (`Authz`'s in-memory snapshot) never outlives a change:
/// a policy, a role change and a removed policy take effect on the very next
/// call of an instance that is already running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_changes_apply_to_running_instances_immediately() -> Result {
    let env = env().await?;
    let ds = seed(&env, &["k"]).await?;
    let scopes = [Scope::DataRead, Scope::DataWrite];
    let (h, ch) = env.serve("org.example.live", "live", &scopes).await?;
    let mut d = data(&ch);
    client::put_bytes(&mut d, None, &ds, "k", None, b"before").await?;

    let id = env
        .core
        .authz()
        .add_policy(&Policy {
            id: 0,
            name: "live-freeze".into(),
            effect: Effect::Deny,
            plugin_pattern: "org.example.live".into(),
            user: None,
            team: None,
            operation_class: Some(OpClass::Write),
            not_before_ms: None,
            not_after_ms: None,
            weekdays: None,
            hour_start: None,
            hour_end: None,
            reason: "frozen now".into(),
        })
        .await?;
    let e = client::put_bytes(&mut d, None, &ds, "k", None, b"during")
        .await
        .err()
        .ok_or("put allowed right after a blocking policy was added")?;
    assert!(e.to_string().contains("live-freeze"), "{e}");
    client::get_bytes(&mut d, None, &ds, "k").await?;

    env.core.authz().remove_policy(id).await?;
    client::put_bytes(&mut d, None, &ds, "k", None, b"after").await?;

    // The acting user (the installing admin) becomes a viewer: the next write fails.
    env.core.authz().set_user(ADMIN, Role::Viewer).await?;
    let e = client::put_bytes(&mut d, None, &ds, "k", None, b"viewer")
        .await
        .err()
        .ok_or("put allowed right after the user became a viewer")?;
    assert!(e.to_string().contains("viewer"), "{e}");
    env.core.authz().set_user(ADMIN, Role::Admin).await?;
    assert_eq!(client::get_bytes(&mut d, None, &ds, "k").await?, b"after");
    h.stop().await;
    Ok(())
}

/// A tmpfs of `size` on a fresh directory, for one test; lazily unmounted
/// when dropped (also when the test fails).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs> {
        use nix::mount::MsFlags;
        let dir = tempfile::tempdir()?;
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("size={size},mode=0711").as_str()),
        )?;
        Ok(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Bytes an unprivileged writer could still use on `path`'s filesystem.
fn free_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(st.blocks_available() * st.fragment_size())
}

/// A hostile plugin streams more content than the disk holds: the store
/// keeps its free-space reserve on a real (tmpfs) filesystem holding the
/// database and the blobs. The put fails with RESOURCE_EXHAUSTED, the free
/// space never drops more than one check interval into the reserve,
/// nothing of the object stays on disk, the refusal is audited with its
/// reason, and the plugin can still read and write small objects. Then the
/// host's own files take the filesystem below the reserve: puts, metadata
/// changes and new datasets are refused, reads work, and writes work again
/// once the space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_fill_the_disk_through_puts() -> Result {
    if !privileged("a_plugin_cannot_fill_the_disk_through_puts") {
        return Ok(());
    }
    const MIN_FREE: u64 = 24 << 20;
    let fs = Tmpfs::mount("48m")?;
    let env = env_storing_in(Some(fs.path()), MIN_FREE).await?;
    let scopes = [Scope::DataRead, Scope::DataWrite, Scope::DatasetsCreate];
    let (h, ch) = env.serve("org.example.filler", "filler", &scopes).await?;
    let mut d = data(&ch);
    let ds = new_dataset(&mut d, "f").await?;
    client::put_bytes(&mut d, None, &ds.id, "small", None, b"fits").await?;
    // The least free space seen while the hostile put streams.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (path, stop) = (fs.path().to_path_buf(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut least = u64::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                least = least.min(free_bytes(&path).map_err(|e| e.to_string())?);
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok::<_, String>(least)
        })
    };
    // 64 MiB: more than the whole filesystem.
    let huge = vec![0x5a; 64 << 20];
    let err = client::put_bytes(&mut d, None, &ds.id, "huge", None, &huge)
        .await
        .expect_err("a put beyond the reserve must fail");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let least = sampler.await??;
    // The store checks every 4 MiB written; a chunk and the file buffer
    // may come on top.
    assert!(
        least + (5 << 20) >= MIN_FREE,
        "the put went {} bytes into the reserve",
        MIN_FREE.saturating_sub(least)
    );
    assert!(
        err.to_string().contains("storage is full"),
        "expected RESOURCE_EXHAUSTED (storage is full), got {err}"
    );
    let free = free_bytes(fs.path())?;
    assert!(free >= MIN_FREE, "{free} bytes free after the refusal");
    assert_eq!(
        std::fs::read_dir(fs.path().join("blobs/tmp"))?.count(),
        0,
        "the refused content's temp file must be removed"
    );
    let refused = env
        .events_until(plugin_filter("org.example.filler"), |evs| {
            evs.iter().any(|e| {
                e.event.resource.ends_with("/huge")
                    && e.event.outcome.to_stored().contains("free-space reserve")
            })
        })
        .await?;
    assert!(
        !refused
            .iter()
            .any(|e| e.event.resource.ends_with("/huge") && e.event.outcome.is_ok()),
        "{refused:#?}"
    );
    assert_eq!(
        client::get_bytes(&mut d, None, &ds.id, "small").await?,
        b"fits"
    );
    let e = client::get_bytes(&mut d, None, &ds.id, "huge")
        .await
        .expect_err("the refused object must not exist");
    assert!(e.to_string().contains("not found"), "{e}");
    client::put_bytes(&mut d, None, &ds.id, "small2", None, b"still fits").await?;

    // The host's own files take the filesystem below the reserve: every
    // call that writes new bytes is refused, reads still work, and freeing
    // the space lets writes through again.
    let filler = fs.path().join("host-file");
    let over = free_bytes(fs.path())? - MIN_FREE + (1 << 20);
    std::fs::write(&filler, vec![1u8; usize::try_from(over)?])?;
    let full = |r: std::result::Result<(), tonic::Status>, what: &str| match r {
        Err(s) if s.code() == Code::ResourceExhausted => Ok(()),
        other => Err(format!(
            "{what}: expected RESOURCE_EXHAUSTED, got {other:?}"
        )),
    };
    let e = client::put_bytes(&mut d, None, &ds.id, "small3", None, b"x")
        .await
        .expect_err("a put below the reserve must fail");
    assert!(e.to_string().contains("storage is full"), "{e}");
    full(
        d.set_metadata(pb::SetMetadataRequest {
            dataset_id: ds.id.clone(),
            key: "small".into(),
            metadata: HashMap::from([("k".into(), "v".into())]),
            expected_version: None,
        })
        .await
        .map(|_| ()),
        "set metadata",
    )?;
    full(
        d.create_dataset(pb::CreateDatasetRequest { name: "g".into() })
            .await
            .map(|_| ()),
        "create dataset",
    )?;
    assert_eq!(
        client::get_bytes(&mut d, None, &ds.id, "small").await?,
        b"fits"
    );
    std::fs::remove_file(&filler)?;
    client::put_bytes(&mut d, None, &ds.id, "small3", None, b"fits again").await?;
    assert!(env.audit.verify().await?.is_ok());
    h.stop().await;
    Ok(())
}
