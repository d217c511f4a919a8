//! Audit store on a real SQLite file: hash chain, verify against raw-SQL
//! tampering, group commit under concurrency, query/export, retention,
//! schema-version refusal.

use std::collections::HashSet;
use std::error::Error;

use hutch_api::audit::{
    Actor, AuditConfig, AuditEvent, AuditFilter, AuditStore, Decision, EventId, GENESIS_HASH,
    VerifyProblem,
};
use hutch_api::db::{Db, DbError};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

struct Env {
    dir: tempfile::TempDir,
    db: Db,
    audit: AuditStore,
}

async fn env() -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    Ok(Env { dir, db, audit })
}

fn event(n: usize) -> AuditEvent {
    let actor = Actor::plugin(
        "org.example.p",
        "1.0.0",
        "inst-1",
        Some(format!("user{}", n % 3)),
    );
    AuditEvent::new(actor, "data.object.put", format!("dataset/ds1/object/k{n}"))
        .with_task(format!("task-{}", n % 5))
        .with_details(serde_json::json!({ "n": n }))
}

async fn record_n(audit: &AuditStore, n: usize) -> Result<Vec<EventId>> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(audit.record(event(i)).await?);
    }
    Ok(ids)
}

async fn exec(db: &Db, sql: &'static str) -> Result {
    sqlx::query(sql).execute(db.pool()).await?;
    Ok(())
}

#[tokio::test]
async fn chain_links_and_verifies() -> Result {
    let e = env().await?;
    let ids = record_n(&e.audit, 10).await?;
    assert_eq!(ids, (1..=10).map(EventId).collect::<Vec<_>>());
    let first = e.audit.get(EventId(1)).await?.ok_or("event 1 missing")?;
    assert_eq!(first.prev_hash, GENESIS_HASH);
    for id in 2..=10 {
        let prev = e.audit.get(EventId(id - 1)).await?.ok_or("missing")?;
        let this = e.audit.get(EventId(id)).await?.ok_or("missing")?;
        assert_eq!(this.prev_hash, prev.hash);
        assert_ne!(this.hash, prev.hash);
    }
    let report = e.audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 10);
    assert_eq!(report.last_id, 10);
    Ok(())
}

#[tokio::test]
async fn verify_catches_an_edited_row() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    exec(
        &e.db,
        "UPDATE audit_events SET decision = 'denied' WHERE id = 4",
    )
    .await?;
    let report = e.audit.verify().await?;
    assert_eq!(
        report.problems,
        vec![VerifyProblem::Edited { id: EventId(4) }]
    );
    Ok(())
}

#[tokio::test]
async fn verify_catches_an_edited_row_even_with_its_hash_recomputed_naively() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    // An attacker who edits a row and replaces its hash (without knowing the
    // encoding, or knowing it) breaks the next row's link.
    exec(
        &e.db,
        "UPDATE audit_events SET outcome = 'ok', hash = 'ff' WHERE id = 6",
    )
    .await?;
    let report = e.audit.verify().await?;
    assert_eq!(
        report.problems.first(),
        Some(&VerifyProblem::Edited { id: EventId(6) })
    );
    assert!(!report.is_ok());
    Ok(())
}

#[tokio::test]
async fn verify_catches_a_deleted_row() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    exec(&e.db, "DELETE FROM audit_events WHERE id = 5").await?;
    let report = e.audit.verify().await?;
    assert_eq!(
        report.problems,
        vec![VerifyProblem::Deleted {
            id: EventId(6),
            from: 5,
            to: 5
        }]
    );
    Ok(())
}

#[tokio::test]
async fn verify_catches_a_swapped_pair() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    exec(&e.db, "UPDATE audit_events SET id = -1 WHERE id = 5").await?;
    exec(&e.db, "UPDATE audit_events SET id = 5 WHERE id = 6").await?;
    exec(&e.db, "UPDATE audit_events SET id = 6 WHERE id = -1").await?;
    let report = e.audit.verify().await?;
    assert_eq!(
        report.problems.first(),
        Some(&VerifyProblem::Reordered {
            id: EventId(5),
            follows: EventId(6)
        }),
        "{report:?}"
    );
    Ok(())
}

#[tokio::test]
async fn verify_catches_a_truncated_tail() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    exec(&e.db, "DELETE FROM audit_events WHERE id >= 9").await?;
    let report = e.audit.verify().await?;
    assert_eq!(
        report.problems,
        vec![VerifyProblem::Truncated { last: 8, head: 10 }]
    );
    Ok(())
}

#[tokio::test]
async fn verify_catches_events_hidden_from_key_queries() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    assert!(e.audit.verify().await?.is_ok());
    // The chain is intact, but deleting key rows would hide events from
    // queries by task (and shrinking a range, by user).
    let by_task = |t: &str| AuditFilter {
        task_id: Some(t.to_owned()),
        ..AuditFilter::default()
    };
    assert_eq!(e.audit.query(&by_task("task-2")).await?.len(), 2);
    exec(
        &e.db,
        "DELETE FROM audit_keys WHERE field = 'task' AND value = 'task-2'",
    )
    .await?;
    exec(
        &e.db,
        "UPDATE audit_keys SET last_id = first_id - 1 WHERE field = 'user' AND first_id = 4",
    )
    .await?;
    assert!(e.audit.query(&by_task("task-2")).await?.is_empty());
    let report = e.audit.verify().await?;
    let unlisted = |id: i64, field: &str, value: &str| VerifyProblem::Unlisted {
        id: EventId(id),
        field: field.to_owned(),
        value: value.to_owned(),
    };
    assert_eq!(
        report.problems,
        vec![
            unlisted(4, "user", "user0"),
            unlisted(3, "task", "task-2"),
            unlisted(8, "task", "task-2"),
        ],
        "{report:?}"
    );
    assert!(
        report.problems[0]
            .to_string()
            .contains("queries by user \"user0\"")
    );
    Ok(())
}

#[tokio::test]
async fn verify_catches_events_hidden_from_resource_queries() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    let by_resource = |r: &str| AuditFilter {
        resource: Some(r.to_owned()),
        ..AuditFilter::default()
    };
    // Event 10 is the put of k9; queries by resource go through the ranges
    // of its root, "dataset/ds1".
    let found = e.audit.query(&by_resource("dataset/ds1/object/k9")).await?;
    assert_eq!(
        found.iter().map(|s| s.id).collect::<Vec<_>>(),
        [EventId(10)]
    );
    assert!(e.audit.verify().await?.is_ok());
    exec(
        &e.db,
        "UPDATE audit_keys SET last_id = 9 WHERE field = 'root' AND value = 'dataset/ds1'",
    )
    .await?;
    assert!(
        e.audit
            .query(&by_resource("dataset/ds1/object/k9"))
            .await?
            .is_empty()
    );
    let report = e.audit.verify().await?;
    assert_eq!(
        report.problems,
        vec![VerifyProblem::Unlisted {
            id: EventId(10),
            field: "root".to_owned(),
            value: "dataset/ds1".to_owned(),
        }],
        "{report:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_under_64_concurrent_writers_loses_nothing() -> Result {
    let e = env().await?;
    const WRITERS: usize = 64;
    const EACH: usize = 300;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let audit = e.audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let ev = event(i).with_details(serde_json::json!({ "writer": w, "i": i }));
                ids.push(audit.record(ev).await?);
            }
            Ok::<_, hutch_api::audit::AuditError>(ids)
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let ids = t.await??;
        // Each writer's events got increasing ids in the order it recorded them.
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids not monotonic: {ids:?}"
        );
        all.extend(ids);
    }
    assert_eq!(all.len(), WRITERS * EACH);
    let expected: HashSet<EventId> = (1..=(WRITERS * EACH) as i64).map(EventId).collect();
    assert_eq!(all, expected, "ids are not exactly 1..=N");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(e.db.pool())
        .await?;
    assert_eq!(count as usize, WRITERS * EACH);
    // Every acknowledged event is the one its writer sent.
    let stored = e
        .audit
        .query(&AuditFilter {
            limit: Some(5),
            ..AuditFilter::default()
        })
        .await?;
    assert!(
        stored
            .iter()
            .all(|s| s.event.details.get("writer").is_some())
    );
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn record_batch_gets_consecutive_ids() -> Result {
    let e = env().await?;
    e.audit.record(event(0)).await?;
    let ids = e.audit.record_batch((1..=5).map(event).collect()).await?;
    assert_eq!(ids, (2..=6).map(EventId).collect::<Vec<_>>());
    assert!(e.audit.record_batch(Vec::new()).await?.is_empty());
    assert!(e.audit.verify().await?.is_ok());
    // A batch longer than one insert statement (the writer sends 256
    // events per statement, the last ones with the COMMIT): the chain runs
    // on across the statements' borders.
    let ids = e.audit.record_batch((7..=606).map(event).collect()).await?;
    assert_eq!(ids, (7..=606).map(EventId).collect::<Vec<_>>());
    for id in [7, 262, 263, 518, 519, 606] {
        let prev = e.audit.get(EventId(id - 1)).await?.ok_or("missing")?;
        let this = e.audit.get(EventId(id)).await?.ok_or("missing")?;
        assert_eq!(this.prev_hash, prev.hash, "event {id}");
        assert_eq!(this.event.resource, format!("dataset/ds1/object/k{id}"));
    }
    let report = e.audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 606);
    // A batch bringing 150 texts the dictionary lacks (one task id each).
    let fresh: Vec<AuditEvent> = (0..150)
        .map(|n| event(n).with_task(format!("fresh-task-{n}")))
        .collect();
    let ids = e.audit.record_batch(fresh).await?;
    for (n, id) in ids.iter().enumerate() {
        let got = e.audit.get(*id).await?.ok_or("missing")?;
        assert_eq!(got.event.task_id, Some(format!("fresh-task-{n}")));
    }
    let report = e.audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 756);
    Ok(())
}

#[tokio::test]
async fn query_filters_and_export() -> Result {
    let e = env().await?;
    record_n(&e.audit, 30).await?;
    let denied = AuditEvent::new(
        Actor::plugin("org.example.q", "2.0.0", "inst-2", None),
        "data.object.get",
        "dataset/ds2/object/x",
    )
    .denied("scope data:read not granted");
    let denied_id = e.audit.record(denied).await?;

    let by_task = e
        .audit
        .query(&AuditFilter {
            task_id: Some("task-2".into()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(by_task.len(), 6);
    assert!(
        by_task
            .iter()
            .all(|s| s.event.task_id.as_deref() == Some("task-2"))
    );

    let by_user_and_task = e
        .audit
        .query(&AuditFilter {
            task_id: Some("task-1".into()),
            user: Some("user1".into()),
            ..AuditFilter::default()
        })
        .await?;
    // n % 5 == 1 and n % 3 == 1: n = 1, 16.
    assert_eq!(
        by_user_and_task.iter().map(|s| s.id.0).collect::<Vec<_>>(),
        vec![2, 17]
    );

    let denied = e
        .audit
        .query(&AuditFilter {
            decision: Some(Decision::Denied),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].id, denied_id);
    assert_eq!(
        denied[0].event.reason.as_deref(),
        Some("scope data:read not granted")
    );

    let by_plugin = e
        .audit
        .query(&AuditFilter {
            plugin_id: Some("org.example.q".into()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(by_plugin.len(), 1);

    let by_prefix = e
        .audit
        .query(&AuditFilter {
            resource_prefix: Some("dataset/ds1/object/k1".into()),
            ..AuditFilter::default()
        })
        .await?;
    // k1, k10..k19
    assert_eq!(by_prefix.len(), 11);

    let by_resource_and_op = e
        .audit
        .query(&AuditFilter {
            resource: Some("dataset/ds1/object/k7".into()),
            operation: Some("data.object.put".into()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(by_resource_and_op.len(), 1);

    let all = e.audit.query(&AuditFilter::default()).await?;
    let mid = all[10].event.ts_us;
    let since = e
        .audit
        .query(&AuditFilter {
            since_us: Some(mid),
            ..AuditFilter::default()
        })
        .await?;
    assert!(since.iter().all(|s| s.event.ts_us >= mid));
    assert!(since.len() >= 21 && since.len() < all.len() + 1);
    let until = e
        .audit
        .query(&AuditFilter {
            until_us: Some(mid),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(until.len() + since.len(), all.len());

    let page = e
        .audit
        .query(&AuditFilter {
            after_id: Some(EventId(5)),
            limit: Some(3),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(
        page.iter().map(|s| s.id.0).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );

    let mut out = Vec::new();
    let n = e
        .audit
        .export_jsonl(&AuditFilter::default(), &mut out)
        .await?;
    assert_eq!(n, 31);
    let text = String::from_utf8(out)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 31);
    for (line, stored) in lines.iter().zip(&all) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!(v["id"], serde_json::json!(stored.id.0));
        assert_eq!(v["hash"], serde_json::json!(stored.hash));
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
        let back: hutch_api::audit::StoredEvent = serde_json::from_value(v)?;
        assert_eq!(&back, stored);
    }
    Ok(())
}

#[tokio::test]
async fn chain_continues_across_reopen() -> Result {
    let e = env().await?;
    record_n(&e.audit, 5).await?;
    let path = e.db.path().to_path_buf();
    drop(e.audit);
    e.db.close().await;
    let db = Db::open(&path).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    assert_eq!(audit.record(event(99)).await?, EventId(6));
    assert!(audit.verify().await?.is_ok());
    drop(e.dir);
    Ok(())
}

#[tokio::test]
async fn retention_purges_a_prefix_and_the_chain_still_verifies() -> Result {
    let e = env().await?;
    record_n(&e.audit, 10).await?;
    let cutoff = e.audit.get(EventId(7)).await?.ok_or("missing")?.event.ts_us;
    let (purge_event, purged) = e.audit.purge_before(cutoff, Actor::daemon()).await?;
    let remaining = e.audit.query(&AuditFilter::default()).await?;
    assert_eq!(
        remaining.first().map(|s| s.id),
        Some(EventId(purged as i64 + 1))
    );
    assert!(purged >= 6, "purged {purged}");
    assert_eq!(remaining.last().map(|s| s.id), Some(purge_event));
    assert!(e.audit.verify().await?.is_ok());
    // The anchor does not hide tampering with what remains.
    sqlx::query("DELETE FROM audit_events WHERE id = ?")
        .bind(purged as i64 + 1)
        .execute(e.db.pool())
        .await?;
    let report = e.audit.verify().await?;
    assert!(
        matches!(report.problems.first(), Some(VerifyProblem::Deleted { .. })),
        "{report:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_newer_schema_is_refused() -> Result {
    let e = env().await?;
    let path = e.db.path().to_path_buf();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(e.db.pool())
    .await?;
    drop(e.audit);
    e.db.close().await;
    match Db::open(&path).await {
        Err(DbError::SchemaTooNew { found, .. }) => assert_eq!(found, 99999),
        other => return Err(format!("expected SchemaTooNew, got {other:?}").into()),
    }
    Ok(())
}

#[tokio::test]
async fn closing_the_database_does_not_wait_for_an_idle_writer() -> Result {
    let e = env().await?;
    record_n(&e.audit, 3).await?;
    // A hang guard, not a timing assertion.
    let guard = std::time::Duration::from_secs(30);
    tokio::time::timeout(guard, e.db.close()).await?;
    let after = tokio::time::timeout(guard, e.audit.record(event(9))).await?;
    assert!(after.is_err(), "recorded into a closed database: {after:?}");
    Ok(())
}

/// `verify` while events keep being committed: the head and its event commit
/// together, so a verify that reads the events and then the head must not
/// call the chain truncated because a newer event arrived in between (the
/// daemon records events while `hutchctl audit verify` runs).
#[tokio::test]
async fn verify_during_concurrent_writes_is_not_fooled() -> Result {
    let e = env().await?;
    // Enough events that a verify reads several pages.
    let batch: Vec<AuditEvent> = (0..12_000).map(event).collect();
    e.audit.record_batch(batch).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let audit = e.audit.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                audit.record(event(n)).await?;
                n += 1;
            }
            Ok::<_, hutch_api::audit::AuditError>(n)
        })
    };
    let mut reports = Vec::new();
    for _ in 0..5 {
        reports.push(e.audit.verify().await?);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await??;
    assert!(written > 0, "the writer committed nothing meanwhile");
    for r in &reports {
        assert!(
            r.is_ok(),
            "verify under concurrent writes: {:?}",
            r.problems
        );
    }
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

/// Every text of an event reaches SQLite exactly as recorded, whatever its
/// characters (NUL and control characters, quotes, backslashes, non-ASCII):
/// the stored events read back equal, and verify re-hashes them as recorded
/// and finds each in its key ranges.
#[tokio::test]
async fn odd_texts_are_stored_exactly_and_verify() -> Result {
    let e = env().await?;
    let odd = [
        "quote \" backslash \\ end\\",
        "nul \0 and controls \u{1}\u{8}\n\r\t\u{1f}",
        "unicode é 😀 \u{2028} \u{feff}",
        "",
    ];
    let mut sent = Vec::new();
    for (i, s) in odd.iter().enumerate() {
        let actor = Actor::plugin(
            format!("org.{s}"),
            *s,
            format!("inst {s}"),
            Some(s.to_string()),
        );
        let ev = AuditEvent::new(actor, format!("op {s}"), format!("dataset/{s}/object/{i}"))
            .with_task(format!("task {s}"))
            .with_details(serde_json::json!({ "text": s }))
            .denied(format!("reason {s}"));
        sent.push(ev.clone());
    }
    // One batch with all of them, then one event per batch.
    let ids = e.audit.record_batch(sent.clone()).await?;
    for ev in &sent {
        e.audit.record(ev.clone()).await?;
    }
    assert_eq!(ids.len(), odd.len());
    for (n, ev) in sent.iter().chain(&sent).enumerate() {
        let id = EventId(i64::try_from(n)? + 1);
        let got = e.audit.get(id).await?.ok_or("event missing")?;
        assert_eq!(got.event.actor, ev.actor, "event {id:?}");
        assert_eq!(got.event.operation, ev.operation);
        assert_eq!(got.event.resource, ev.resource);
        assert_eq!(got.event.task_id, ev.task_id);
        assert_eq!(got.event.reason, ev.reason);
        assert_eq!(got.event.details, ev.details);
        assert_eq!(got.event.decision, Decision::Denied);
    }
    let report = e.audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 2 * odd.len() as u64);
    Ok(())
}
