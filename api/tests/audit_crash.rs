//! Crash safety: a child process (this test binary re-executed) records
//! events and writes objects, printing every acknowledged id; the parent
//! kill -9's it mid-stream, reopens the database and checks that every
//! acknowledged event and object version is there and the chain verifies.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hutch_api::audit::{Actor, AuditConfig, AuditEvent, AuditStore, EventId};
use hutch_api::db::Db;
use hutch_api::store::{
    Backend, BuiltinStore, DatasetId, Expect, NewDataset, ObjectKey, StoreConfig, Version,
};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const CHILD_ENV: &str = "HUTCH_AUDIT_CRASH_CHILD";
const TEST_NAME: &str = "acknowledged_events_and_writes_survive_kill_9";
/// Acknowledgements the parent waits for before killing the child.
const KILL_AFTER: usize = 3000;

/// Kills and reaps the child if the test fails early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn store_config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig::new(dir.join("blobs"))
}

/// The child: records events and writes objects as fast as it can, printing
/// `EV <id>` / `PUT <key> <version> <event id>` after each acknowledgement.
async fn child(dir: std::path::PathBuf) -> Result {
    let db = Db::open(dir.join("hutch.db")).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    let store = BuiltinStore::open(&db, audit.clone(), store_config(&dir)).await?;
    let ds = DatasetId::new("crash")?;
    let new = NewDataset {
        id: Some(ds.clone()),
        name: "crash".into(),
        ..NewDataset::default()
    };
    store
        .create_dataset(AuditEvent::new(Actor::daemon(), "", ""), new)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let audit = audit.clone();
        let store = store.clone();
        let ds = ds.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let line = if w % 4 == 0 {
                    let key = ObjectKey::new(format!("w{w}/o{}", i % 7))?;
                    let body = format!("writer {w} write {i}").into_bytes();
                    let content = futures::stream::iter([Ok(body)]).boxed();
                    let ev = AuditEvent::new(Actor::daemon(), "", "");
                    let done = store
                        .put_object(ev, &ds, &key, Expect::Any, None, content)
                        .await?;
                    format!(
                        "PUT {key} {} {} {w} {i}\n",
                        done.value.version, done.event_id
                    )
                } else {
                    let ev = AuditEvent::new(Actor::daemon(), "test.event", format!("w{w}"))
                        .with_details(serde_json::json!({ "i": i }));
                    format!("EV {}\n", audit.record(ev).await?)
                };
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.flush()?;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn acknowledged_events_and_writes_survive_kill_9() -> Result {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let rt = tokio::runtime::Runtime::new()?;
        return rt.block_on(child(dir.into()));
    }
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().ok_or("no child stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut events: Vec<EventId> = Vec::new();
    let mut puts: Vec<(String, i64, EventId, String)> = Vec::new();
    let mut parse = |line: &str| -> Result {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["EV", id] => events.push(EventId(id.parse()?)),
            ["PUT", key, version, id, w, i] => puts.push((
                (*key).to_owned(),
                version.parse()?,
                EventId(id.parse()?),
                format!("writer {w} write {i}"),
            )),
            _ => {} // libtest chatter
        }
        Ok(())
    };
    let mut line = String::new();
    let mut acks = 0;
    while acks < KILL_AFTER {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err("child exited before it was killed".into());
        }
        if line.starts_with("EV ") || line.starts_with("PUT ") {
            acks += 1;
        }
        parse(&line)?;
    }
    guard.0.kill()?; // SIGKILL
    let status = guard.0.wait()?;
    assert_eq!(
        status.signal(),
        Some(9),
        "child was not killed by SIGKILL: {status:?}"
    );
    // Lines the child printed before it died are still in the pipe.
    for line in reader.lines() {
        parse(&line?)?;
    }
    assert!(!events.is_empty() && !puts.is_empty());

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let db = Db::open(dir.path().join("hutch.db")).await?;
        let audit = AuditStore::open(&db, AuditConfig::default()).await?;
        let report = audit.verify().await?;
        assert!(report.is_ok(), "{report:?}");
        for id in &events {
            let e = audit.get(*id).await?.ok_or(format!("acknowledged event {id} lost"))?;
            assert_eq!(e.event.operation, "test.event");
        }
        let store = BuiltinStore::open(&db, audit.clone(), store_config(dir.path())).await?;
        let ds = DatasetId::new("crash")?;
        for (key, version, event_id, body) in &puts {
            let key = ObjectKey::new(key.clone())?;
            let (info, mut content) = store.get_object(&ds, &key, Some(Version(*version))).await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = content.next().await {
                bytes.extend(chunk?);
            }
            assert_eq!(&String::from_utf8(bytes)?, body, "content of {key} v{}", info.version);
            let e = audit.get(*event_id).await?.ok_or(format!("event {event_id} of a put lost"))?;
            assert_eq!(e.event.after_version, Some(*version));
            assert_eq!(e.event.resource, format!("dataset/crash/object/{key}"));
        }
        println!(
            "crash test: {} events and {} writes acknowledged before kill -9, all present (chain of {} verified)",
            events.len(),
            puts.len(),
            report.checked
        );
        Ok::<_, Box<dyn Error>>(())
    })
}
