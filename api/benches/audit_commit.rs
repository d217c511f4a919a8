//! Audit events committed durably per second: group commit (the real
//! writer) against one event per transaction (the same writer with
//! `max_batch = 1`) as the reference, in one run, on a real SQLite file.
//!
//! Run: `cargo bench -p hutch-api --bench audit_commit` (HUTCH_BENCH_EVENTS
//! scales the group-commit event counts; default 400000; HUTCH_BENCH_ONLY=text
//! runs only the modes whose name contains it, HUTCH_BENCH_NO_VERIFY=1 skips
//! the chain verification after each mode, for profiling).

use std::error::Error;
use std::time::{Duration, Instant};

use hutch_api::audit::{Actor, AuditConfig, AuditEvent, AuditStore};
use hutch_api::db::Db;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn event(w: usize, i: usize) -> AuditEvent {
    AuditEvent::new(
        Actor::plugin(
            "org.example.bench",
            "1.0.0",
            format!("inst-{w}"),
            Some("alice".into()),
        ),
        "data.object.put",
        format!("dataset/ds_bench/object/w{w}/o{i}"),
    )
    .with_task(format!("task-{}", w % 8))
    .with_details(serde_json::json!({ "size": 1024 }))
}

struct Run {
    name: String,
    events: usize,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// `writers` tasks each record `per_writer` events one `record()` at a time
/// (each awaits its COMMIT), or in `batch`-sized `record_batch` calls.
async fn run(
    name: &str,
    config: AuditConfig,
    writers: usize,
    per_writer: usize,
    batch: usize,
) -> Result<Run> {
    if let Ok(only) = std::env::var("HUTCH_BENCH_ONLY")
        && !name.contains(&only)
    {
        return Ok(Run {
            name: format!("{name} (skipped)"),
            events: 0,
            elapsed: Duration::from_secs(1),
        });
    }
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let audit = AuditStore::open(&db, config).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per_writer {
                if batch <= 1 {
                    audit.record(event(w, i)).await?;
                    i += 1;
                } else {
                    let n = batch.min(per_writer - i);
                    audit
                        .record_batch((i..i + n).map(|j| event(w, j)).collect())
                        .await?;
                    i += n;
                }
            }
            Ok::<_, hutch_api::audit::AuditError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    if std::env::var_os("HUTCH_BENCH_NO_VERIFY").is_some() {
        return Ok(Run {
            name: name.to_owned(),
            events: writers * per_writer,
            elapsed,
        });
    }
    let report = audit.verify().await?;
    if !report.is_ok() || report.checked as usize != writers * per_writer {
        return Err(format!("{name}: verify failed: {report:?}").into());
    }
    Ok(Run {
        name: name.to_owned(),
        events: writers * per_writer,
        elapsed,
    })
}

fn main() -> Result {
    let rt = tokio::runtime::Runtime::new()?;
    let total: usize = std::env::var("HUTCH_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    rt.block_on(async {
        let one = AuditConfig {
            max_batch: 1,
            ..AuditConfig::default()
        };
        let group = AuditConfig::default;
        let runs = vec![
            run("one event per transaction, 64 writers", one, 64, 40, 1).await?,
            run(
                "group commit, 64 writers x record()",
                group(),
                64,
                (total / 400).max(1),
                1,
            )
            .await?,
            run(
                "group commit, 1024 writers x record()",
                group(),
                1024,
                (total / 2048).max(1),
                1,
            )
            .await?,
            run(
                "group commit, 4096 writers x record()",
                group(),
                4096,
                (total / 4096).max(1),
                1,
            )
            .await?,
            run(
                "group commit, 16 writers x record_batch(256)",
                group(),
                16,
                total / 16,
                256,
            )
            .await?,
        ];
        let reference = runs[0].rate();
        println!();
        println!(
            "audit events committed durably (WAL synced before every answer), {} cores",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        println!(
            "{:<46} {:>9} {:>9} {:>12} {:>9}",
            "mode", "events", "seconds", "events/s", "x ref"
        );
        for r in &runs {
            println!(
                "{:<46} {:>9} {:>9.3} {:>12.0} {:>9.1}",
                r.name,
                r.events,
                r.elapsed.as_secs_f64(),
                r.rate(),
                r.rate() / reference
            );
        }
        println!("target: >= 100000 events/s with group commit");
        Ok(())
    })
}
