//! Round-trip latency and throughput of plugin calls over a Unix socket.
//!
//! Prints one table: median and p99 latency and calls/s at 1, 8 and 64
//! concurrent callers (one HTTP/2 connection, as a plugin would hold) for
//! (a) a bare tonic unary service (grpc.health.v1 Check) on its own socket,
//! no Hutch; (b) `Data.GetMetadata` through identity, limits, authorization
//! and (queued) audit; (c) `Data.PutObject` of 1 KiB through authorization,
//! the built-in store and the durable (committed before the answer) audit
//! event; plus the ratios to (a). Two diagnostic rows split (b): the
//! health service on the Hutch socket (peer filter + reject layer, no gate)
//! and a call the gate denies (limits + authz + aggregated audit, no backend);
//! a third times the store's `head_object` called in-process, and a last
//! one `put_object` of 1 KiB in-process (row (c) without gRPC, gate and
//! handler: the store, the audit writer and SQLite). A last row, (r), is
//! row (c)'s work without Hutch, a reference for it: a tonic unary call
//! carrying 1 KiB that is appended to a file and answered after an
//! `fdatasync` shared by the calls queued meanwhile (`DurableAppend`).
//!
//! Each cell also shows the whole process's CPU time per call (callers,
//! server, store, SQLite's and the audit writer's threads: `getrusage`
//! around the timed part) and the most calls/s that CPU cost allows on
//! this machine's cores (cores x 1 s / CPU per call), as a ratio to (a)'s
//! measured calls/s: a row cannot pass that ceiling however its waiting is
//! arranged.
//!
//! Run: `cargo bench -p hutch-api --bench proxy` (BENCH_SECS=N per cell, default 2;
//! BENCH_ROWS=ac measures only rows (a) and (c), for profiling: the letters
//! a h g s b c p r name the rows in table order; BENCH_CONC=64 only that many
//! concurrent callers, comma-separated).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::error::Error;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hutch_api::audit::{AuditConfig, AuditStore};
use hutch_api::authz::{Role, Scope, ScopeSet};
use hutch_api::db::Db;
use hutch_api::limits::Limits;
use hutch_api::server::{ApiCore, InstanceSpec};
use hutch_api::store::{Backend, BuiltinStore, StoreConfig};
use hutch_plugin_protocol::client;
use hutch_plugin_protocol::plugin::v1 as pb;
use tonic::transport::Channel;

/// The allocator hutchd uses (see `daemon/src/bin/hutchd.rs`), so the bench
/// measures the same per-call allocation costs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
type CallFn =
    Arc<dyn Fn(Channel, usize, u64) -> Pin<Box<dyn Future<Output = Result> + Send>> + Send + Sync>;

struct Cell {
    median_us: f64,
    p99_us: f64,
    per_sec: f64,
    /// Process CPU time per call (all threads).
    cpu_us: f64,
}

/// Latencies and time of one runner, accumulated over interleaved rounds.
#[derive(Default)]
struct Samples {
    lat_us: Vec<f64>,
    secs: f64,
    cpu_secs: f64,
}

/// One round's latencies (µs), elapsed seconds and process CPU seconds.
type Round = (Vec<f64>, f64, f64);

impl Samples {
    fn add(&mut self, (lat, secs, cpu): Round) {
        self.lat_us.extend(lat);
        self.secs += secs;
        self.cpu_secs += cpu;
    }

    fn cell(mut self) -> Cell {
        let all = &mut self.lat_us;
        if all.is_empty() {
            // A row left out of BENCH_ROWS.
            return Cell {
                median_us: f64::NAN,
                p99_us: f64::NAN,
                per_sec: f64::NAN,
                cpu_us: f64::NAN,
            };
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| all[((all.len() as f64 - 1.0) * q).round() as usize];
        Cell {
            median_us: pick(0.5),
            p99_us: pick(0.99),
            per_sec: all.len() as f64 / self.secs,
            cpu_us: self.cpu_secs * 1e6 / all.len() as f64,
        }
    }
}

/// User plus system CPU time of the whole process so far, in seconds.
fn process_cpu_secs() -> Result<f64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// One round of `conc` callers for `secs`: every latency (µs), the elapsed
/// time and the process CPU time it took.
async fn run(ch: &Channel, conc: usize, secs: f64, f: CallFn) -> Result<Round> {
    // Warm up.
    for i in 0..20 {
        f(ch.clone(), 0, 1_000_000 + i).await?;
    }
    let cpu = process_cpu_secs()?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..conc {
        let ch = ch.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                f(ch.clone(), w, n).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                n += 1;
            }
            Result::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((
        all,
        start.elapsed().as_secs_f64(),
        process_cpu_secs()? - cpu,
    ))
}

fn main() -> Result {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench())
}

async fn bench() -> Result {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rows = std::env::var("BENCH_ROWS").unwrap_or_else(|_| "ahgsbcpr".into());
    let concs: Vec<usize> = std::env::var("BENCH_CONC")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64]);
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;

    // (a) A bare tonic server on its own socket.
    let bare_sock = dir.path().join("bare.sock");
    let listener = tokio::net::UnixListener::bind(&bare_sock)?;
    let (_health, health_svc) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let bare = client::connect(&bare_sock).await?;

    // (r) The same work without Hutch: tonic, a 1 KiB payload, durable.
    let ref_sock = dir.path().join("ref.sock");
    let ref_listener = tokio::net::UnixListener::bind(&ref_sock)?;
    let journal = std::fs::File::create(dir.path().join("ref.journal"))?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                DurableAppend::start(journal),
            ))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(
                ref_listener,
            )),
    );
    let reference = client::connect(&ref_sock).await?;

    // (b), (c): Hutch.
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    let store = BuiltinStore::open(
        &db,
        audit.clone(),
        StoreConfig::new(dir.path().join("blobs")),
    )
    .await?;
    let store = Arc::new(store);
    let core = ApiCore::new(store.clone(), audit.clone()).await?;
    core.authz().set_user("admin", Role::Admin).await?;
    let sock = dir.path().join("plugins/bench/api.sock");
    let handle = core
        .serve_instance(InstanceSpec {
            plugin_id: "org.example.bench".into(),
            version: "1.0.0".into(),
            instance_id: "bench".into(),
            uid: nix::unistd::geteuid().as_raw(),
            socket_path: sock.clone(),
            granted_scopes: [Scope::DataRead, Scope::DataWrite, Scope::DatasetsCreate]
                .into_iter()
                .collect::<ScopeSet>(),
            installing_user: "admin".into(),
            limits: Limits {
                rate_per_sec: 1e9,
                burst: u32::MAX,
                max_concurrent_calls: 1024,
                ..Limits::default()
            },
        })
        .await?;
    let hutch = client::connect(&sock).await?;
    let mut d = client::data_client(hutch.clone());
    let ds = d
        .create_dataset(pb::CreateDatasetRequest {
            name: "bench".into(),
        })
        .await?
        .into_inner()
        .id;
    client::put_bytes(&mut d, None, &ds, "k", None, &[7u8; 1024]).await?;

    let health: CallFn = Arc::new(|ch, _, _| {
        Box::pin(async move {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            c.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
            Ok(())
        })
    });
    let ref_payload = "x".repeat(1024);
    let durable: CallFn = Arc::new(move |ch, _, _| {
        let service = ref_payload.clone();
        Box::pin(async move {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            c.check(tonic_health::pb::HealthCheckRequest { service })
                .await?;
            Ok(())
        })
    });
    let ds_b = ds.clone();
    let read: CallFn = Arc::new(move |ch, _, _| {
        let ds = ds_b.clone();
        Box::pin(async move {
            let mut c = client::data_client(ch);
            c.get_metadata(pb::GetMetadataRequest {
                dataset_id: ds,
                key: "k".into(),
            })
            .await?;
            Ok(())
        })
    });
    let ds_d = ds.clone();
    let denied: CallFn = Arc::new(move |ch, _, _| {
        let ds = ds_d.clone();
        Box::pin(async move {
            let mut c = client::data_client(ch);
            let r = c
                .delete_object(pb::DeleteObjectRequest {
                    dataset_id: ds,
                    key: "k".into(),
                    expected_version: None,
                })
                .await;
            match r {
                Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(()),
                other => Err(format!("expected a denial, got {other:?}").into()),
            }
        })
    });
    let store_p = store.clone();
    let ds_s = hutch_api::store::DatasetId::new(ds.clone())?;
    let key_s = hutch_api::store::ObjectKey::new("k")?;
    let direct: CallFn = Arc::new(move |_, _, _| {
        let (store, ds, key) = (store.clone(), ds_s.clone(), key_s.clone());
        Box::pin(async move {
            store.head_object(&ds, &key, None).await?;
            Ok(())
        })
    });
    let ds_p = hutch_api::store::DatasetId::new(ds.clone())?;
    let payload_p = Arc::new(vec![42u8; 1024]);
    let direct_put: CallFn = Arc::new(move |_, w, n| {
        let (store, ds) = (store_p.clone(), ds_p.clone());
        let payload = payload_p.clone();
        Box::pin(async move {
            let key = hutch_api::store::ObjectKey::new(format!("p{w}-{}", n % 64))?;
            let event = hutch_api::audit::AuditEvent::new(
                hutch_api::audit::Actor::plugin("org.example.bench", "1.0.0", "bench", None),
                "",
                "",
            );
            let content = futures::stream::iter([Ok(payload.to_vec())]).boxed();
            store
                .put_object(
                    event,
                    &ds,
                    &key,
                    hutch_api::store::Expect::Any,
                    None,
                    content,
                )
                .await?;
            Ok(())
        })
    });
    let ds_c = ds.clone();
    let payload = Arc::new(vec![42u8; 1024]);
    let put: CallFn = Arc::new(move |ch, w, n| {
        let ds = ds_c.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let mut c = client::data_client(ch);
            client::put_bytes(
                &mut c,
                None,
                &ds,
                &format!("w{w}-{}", n % 64),
                None,
                &payload,
            )
            .await?;
            Ok(())
        })
    });

    println!(
        "\nplugin call round trip over a Unix socket ({secs} s per cell in 4 interleaved rounds, release build)\n"
    );
    println!(
        "{:<44} {:>5} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "call",
        "conc",
        "median µs",
        "p99 µs",
        "calls/s",
        "med/(a)",
        "tput/(a)",
        "CPU µs",
        "ceil/(a)"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Each cell is measured in ROUNDS slices interleaved with the other rows,
    // so load drift on this shared machine hits every row alike.
    const ROUNDS: usize = 4;
    let slice = secs / ROUNDS as f64;
    for &conc in &concs {
        let runners = [
            (&bare, health.clone()),
            (&hutch, health.clone()),
            (&hutch, denied.clone()),
            (&hutch, direct.clone()),
            (&hutch, read.clone()),
            (&hutch, put.clone()),
            (&hutch, direct_put.clone()),
            (&reference, durable.clone()),
        ];
        let mut samples: Vec<Samples> = runners.iter().map(|_| Samples::default()).collect();
        for _ in 0..ROUNDS {
            for (((ch, f), acc), tag) in runners
                .iter()
                .zip(samples.iter_mut())
                .zip("ahgsbcpr".chars())
            {
                // Rows left out of BENCH_ROWS only run their warm-up calls.
                let t = if rows.contains(tag) { slice } else { 0.0 };
                acc.add(run(ch, conc, t, f.clone()).await?);
            }
        }
        let mut cells = samples.into_iter().map(Samples::cell);
        let mut next = || cells.next().ok_or("missing cell");
        let (a, h, g, s, b, c) = (next()?, next()?, next()?, next()?, next()?, next()?);
        let (p, r) = (next()?, next()?);
        for (name, cell) in [
            ("(a) bare tonic unary (health Check)", &a),
            ("    Hutch socket, health Check (no gate)", &h),
            ("    Hutch gate only (denied: scope)", &g),
            ("    store head_object in-process (no gRPC)", &s),
            ("(b) Hutch GetMetadata: authz + audit", &b),
            ("(c) Hutch PutObject 1 KiB: authz+store+audit", &c),
            ("    store put_object 1 KiB in-process", &p),
            ("(r) ref: tonic + 1 KiB append, group fsync", &r),
        ] {
            println!(
                "{:<44} {:>5} {:>11.0} {:>11.0} {:>11.0} {:>8.2}x {:>8.2}x {:>9.1} {:>8.2}x",
                name,
                conc,
                cell.median_us,
                cell.p99_us,
                cell.per_sec,
                cell.median_us / a.median_us,
                cell.per_sec / a.per_sec,
                cell.cpu_us,
                cores * 1e6 / cell.cpu_us / a.per_sec
            );
        }
        println!();
    }
    handle.stop().await;
    Ok(())
}

/// Row (r)'s service: the work of a durable 1 KiB put without Hutch. Each
/// `Check` carries 1 KiB (its `service` text), which is appended to a
/// journal file and answered once an `fdatasync` covering it returned; the
/// calls queued while a sync runs share the next one (group commit, like
/// the audit writer's, on a blocking thread). No authorization, no
/// SQLite, no hash chain, no object versions.
struct DurableAppend {
    tx: tokio::sync::mpsc::UnboundedSender<(String, tokio::sync::oneshot::Sender<()>)>,
}

impl DurableAppend {
    fn start(journal: std::fs::File) -> DurableAppend {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(String, tokio::sync::oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let journal = Arc::new(journal);
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while let Ok(next) = rx.try_recv() {
                    group.push(next);
                }
                let file = journal.clone();
                let (payloads, replies): (Vec<String>, Vec<_>) = group.into_iter().unzip();
                let synced = tokio::task::spawn_blocking(move || {
                    use std::io::Write as _;
                    let mut f = &*file;
                    for p in &payloads {
                        f.write_all(p.as_bytes())?;
                    }
                    f.sync_data()
                })
                .await;
                if !matches!(synced, Ok(Ok(()))) {
                    return;
                }
                for reply in replies {
                    let _ = reply.send(());
                }
            }
        });
        DurableAppend { tx }
    }
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for DurableAppend {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> std::result::Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status>
    {
        let (done, synced) = tokio::sync::oneshot::channel();
        self.tx
            .send((request.into_inner().service, done))
            .map_err(|_| tonic::Status::unavailable("journal stopped"))?;
        synced
            .await
            .map_err(|_| tonic::Status::internal("journal write failed"))?;
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse {
                status: tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            },
        ))
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = std::result::Result<
                        tonic_health::pb::HealthCheckResponse,
                        tonic::Status,
                    >,
                > + Send,
        >,
    >;

    async fn watch(
        &self,
        _request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> std::result::Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not part of the bench"))
    }
}
