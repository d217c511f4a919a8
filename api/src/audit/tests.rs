//! Queries through `audit_keys` against a plain scan, the plans they use,
//! the upgrades of databases written before `0005_audit_keys`,
//! `0007_audit_hash_blobs` and `0008_audit_texts`, key ranges extended
//! across batches,
//! and the wal-index reading behind the checkpointer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;

use super::{
    Actor, AuditConfig, AuditEvent, AuditFilter, AuditStore, Decision, EventId, query_sql,
};
use crate::db::Db;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

/// Back to the schema before `0008_audit_texts` (and before
/// `0009_audit_resource_roots`): the texts in the event rows, no dictionary,
/// the resource index instead of root ranges, the migrations not applied.
const UNDO_0008: &str = "DELETE FROM audit_keys WHERE field = 'root'; \
     DELETE FROM _sqlx_migrations WHERE version = 9; \
     CREATE TABLE old (id INTEGER NOT NULL PRIMARY KEY, \
     ts_us BIGINT NOT NULL, actor_kind TEXT NOT NULL, actor_plugin_id TEXT, \
     actor_plugin_version TEXT, actor_instance TEXT, actor_user TEXT, task_id TEXT, \
     operation TEXT NOT NULL, resource TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT, \
     outcome TEXT NOT NULL, before_version BIGINT, after_version BIGINT, \
     details TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL); \
     INSERT INTO old SELECT id, ts_us, actor_kind, actor_plugin_id, actor_plugin_version, \
     actor_instance, actor_user, task_id, operation, resource, decision, reason, outcome, \
     before_version, after_version, details, prev_hash, hash FROM audit_events_full; \
     DROP VIEW audit_events_full; DROP TABLE audit_events; DROP TABLE audit_texts; \
     ALTER TABLE old RENAME TO audit_events; \
     CREATE INDEX audit_events_ts ON audit_events (ts_us); \
     CREATE INDEX audit_events_resource ON audit_events (resource); \
     DELETE FROM _sqlx_migrations WHERE version = 8; ";

/// Event `i` of writer `w`: plugins, users and tasks interleave, some
/// events have no task or user (daemon actors) and some are denied.
fn event(w: usize, i: usize) -> AuditEvent {
    if i % 7 == 3 {
        return AuditEvent::new(Actor::daemon(), "daemon.tick", format!("daemon/{w}"));
    }
    let actor = Actor::plugin(
        format!("org.example.p{}", w % 3),
        "1.0.0",
        format!("inst-{w}"),
        Some(format!("user{}", (w + i) % 4)),
    );
    let e = AuditEvent::new(
        actor,
        "data.object.put",
        format!("dataset/ds{}/object/k{i}", w % 2),
    )
    .with_task(format!("task-{}", (w * 5 + i) % 6));
    if i.is_multiple_of(5) {
        e.denied("no grant")
    } else {
        e
    }
}

/// Records `per` events from each of `writers` concurrent writers (so
/// batches mix values), in `record` and `record_batch` calls.
async fn fill(audit: &AuditStore, writers: usize, per: usize) -> Result {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per {
                if w % 2 == 0 {
                    audit.record(event(w, i)).await?;
                    i += 1;
                } else {
                    let n = 5.min(per - i);
                    audit
                        .record_batch((i..i + n).map(|j| event(w, j)).collect())
                        .await?;
                    i += n;
                }
            }
            Ok::<_, super::AuditError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The filters every query mode uses, alone and combined.
fn filters() -> Vec<AuditFilter> {
    let mut v = Vec::new();
    for t in 0..6 {
        v.push(AuditFilter {
            task_id: Some(format!("task-{t}")),
            ..AuditFilter::default()
        });
    }
    for p in 0..3 {
        v.push(AuditFilter {
            plugin_id: Some(format!("org.example.p{p}")),
            ..AuditFilter::default()
        });
    }
    for u in 0..4 {
        v.push(AuditFilter {
            user: Some(format!("user{u}")),
            ..AuditFilter::default()
        });
    }
    v.push(AuditFilter {
        plugin_id: Some("org.example.p1".into()),
        user: Some("user2".into()),
        decision: Some(Decision::Denied),
        ..AuditFilter::default()
    });
    v.push(AuditFilter {
        task_id: Some("task-3".into()),
        plugin_id: Some("org.example.p0".into()),
        operation: Some("data.object.put".into()),
        ..AuditFilter::default()
    });
    v.push(AuditFilter {
        user: Some("user1".into()),
        resource_prefix: Some("dataset/ds1/".into()),
        ..AuditFilter::default()
    });
    v.push(AuditFilter {
        task_id: Some("task-9".into()),
        ..AuditFilter::default()
    });
    // Resources: exact (through their root's ranges) and by prefix, longer
    // than a root (one root) or shorter (every root starting with it).
    for r in [
        "dataset/ds0/object/k3",
        "dataset/ds1/object/k0",
        "daemon/1",
        "dataset/ds9/object/k1",
    ] {
        v.push(AuditFilter {
            resource: Some(r.into()),
            ..AuditFilter::default()
        });
    }
    for p in [
        "dataset/ds1/object/k1",
        "dataset/ds0/",
        "dataset/ds0",
        "dataset/",
        "daemon",
        "d",
        "",
        "nothing/",
    ] {
        v.push(AuditFilter {
            resource_prefix: Some(p.into()),
            ..AuditFilter::default()
        });
    }
    v.push(AuditFilter {
        resource: Some("dataset/ds1/object/k2".into()),
        task_id: Some("task-2".into()),
        ..AuditFilter::default()
    });
    v
}

fn matches(f: &AuditFilter, e: &super::StoredEvent) -> bool {
    let eq = |want: &Option<String>, got: &Option<String>| want.is_none() || want == got;
    eq(&f.plugin_id, &e.event.actor.plugin_id)
        && eq(&f.user, &e.event.actor.user)
        && eq(&f.task_id, &e.event.task_id)
        && f.operation.as_ref().is_none_or(|o| *o == e.event.operation)
        && f.resource.as_ref().is_none_or(|r| *r == e.event.resource)
        && f.decision.is_none_or(|d| d == e.event.decision)
        && f.resource_prefix
            .as_ref()
            .is_none_or(|p| e.event.resource.starts_with(p.as_str()))
        && f.since_us.is_none_or(|t| e.event.ts_us >= t)
        && f.after_id.is_none_or(|a| e.id > a)
}

/// Each filter's query equals a scan of every event, whole and paged
/// (`after_id` + `limit`, as export pages), and with a time bound.
/// An upgraded store: its `events` verify, `writers` × `per` new events
/// chain on from its head and verify with them, and every query mode still
/// agrees with a full scan.
async fn verifies_then_chains_on(
    audit: &AuditStore,
    events: usize,
    writers: usize,
    per: usize,
) -> Result {
    let report = audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked as usize, events);
    fill(audit, writers, per).await?;
    let report = audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked as usize, events + writers * per);
    check_queries(audit).await
}

async fn check_queries(audit: &AuditStore) -> Result {
    let all = audit.query(&AuditFilter::default()).await?;
    assert!(!all.is_empty());
    let mid_ts = all[all.len() / 2].event.ts_us;
    for f in filters() {
        for since in [None, Some(mid_ts)] {
            let f = AuditFilter {
                since_us: since,
                ..f.clone()
            };
            let want: Vec<EventId> = all
                .iter()
                .filter(|e| matches(&f, e))
                .map(|e| e.id)
                .collect();
            let got: Vec<EventId> = audit.query(&f).await?.iter().map(|e| e.id).collect();
            assert_eq!(got, want, "{f:?}");
            let mut paged = Vec::new();
            let mut page = AuditFilter {
                limit: Some(7),
                ..f.clone()
            };
            loop {
                let evs = audit.query(&page).await?;
                let Some(last) = evs.last() else { break };
                page.after_id = Some(last.id);
                paged.extend(evs.iter().map(|e| e.id));
            }
            assert_eq!(paged, want, "paged {f:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_queries_equal_a_scan_under_concurrent_batches_and_after_retention() -> Result {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    fill(&audit, 12, 40).await?;
    // Batches held several events with the same value: fewer key ranges
    // than events carrying a task.
    let ranges: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_keys WHERE field = 'task'")
        .fetch_one(db.pool())
        .await?;
    let tasked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE task_ref IS NOT NULL")
            .fetch_one(db.pool())
            .await?;
    assert!(
        ranges > 0 && ranges <= tasked,
        "{ranges} ranges for {tasked} events"
    );
    check_queries(&audit).await?;
    // Retention purges a prefix (and the ranges wholly inside it).
    let all = audit.query(&AuditFilter::default()).await?;
    let cut = all[all.len() / 3].event.ts_us;
    audit.purge_before(cut, Actor::admin("root")).await?;
    check_queries(&audit).await?;
    assert!(audit.verify().await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn key_queries_use_the_key_index_and_no_sort() -> Result {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    fill(&audit, 2, 20).await?;
    for f in [
        AuditFilter {
            task_id: Some("task-1".into()),
            ..AuditFilter::default()
        },
        AuditFilter {
            plugin_id: Some("org.example.p0".into()),
            after_id: Some(EventId(10)),
            limit: Some(5),
            ..AuditFilter::default()
        },
        AuditFilter {
            user: Some("user1".into()),
            since_us: Some(0),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource: Some("dataset/ds1/object/k3".into()),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource_prefix: Some("dataset/ds0/".into()),
            after_id: Some(EventId(10)),
            ..AuditFilter::default()
        },
    ] {
        let head = format!("EXPLAIN QUERY PLAN {}", super::SELECT_COLUMNS);
        let mut qb = query_sql(&head, &f);
        let rows: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(db.pool()).await?;
        let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        let text = plan.join("\n");
        assert!(
            text.contains(
                "SEARCH audit_keys USING INDEX sqlite_autoindex_audit_keys_1 (field=? AND value=?"
            ),
            "{f:?}:\n{text}"
        );
        assert!(
            text.contains("SEARCH audit_events USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{f:?}:\n{text}"
        );
        assert!(!text.contains("TEMP B-TREE"), "{f:?}:\n{text}");
    }
    Ok(())
}

/// `resource_root` and its SQL twin (migration 0009, verify) agree.
#[tokio::test]
async fn resource_root_in_rust_and_sql_agree() -> Result {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    for r in [
        "",
        "audit",
        "task/t1",
        "task/t1/",
        "dataset/ds_1/object/a/b",
        "/",
        "//",
        "/x/y",
        "a//b",
        "dätä/ßet/ö/ü",
        "plugin/org.example.p/",
        // NUL characters (a refused call's resource holds what the plugin sent).
        "dataset/a\0b/object/k",
        "\0/x/y",
        "a\0/b",
        "dataset/\0",
    ] {
        let sql: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM (SELECT ? AS resource)",
            super::ROOT_SQL
        )))
        .bind(r)
        .fetch_one(db.pool())
        .await?;
        assert_eq!(sql, super::resource_root(r), "{r:?}");
    }
    assert_eq!(
        super::resource_root("dataset/ds_1/object/k"),
        "dataset/ds_1"
    );
    assert_eq!(super::resource_root("task/t1"), "task/t1");
    db.close().await;
    Ok(())
}

#[tokio::test]
async fn events_written_before_the_key_migration_verify_and_query_after_it() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hutch.db");
    {
        let db = Db::open(&path).await?;
        let audit = AuditStore::open(&db, AuditConfig::default()).await?;
        fill(&audit, 4, 15).await?;
        drop(audit);
        // Back to the schema before 0005: no key table, the three indexes,
        // the migration not applied.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "{UNDO_0008}DROP TABLE audit_keys; \
             CREATE INDEX audit_events_task ON audit_events (task_id); \
             CREATE INDEX audit_events_plugin ON audit_events (actor_plugin_id); \
             CREATE INDEX audit_events_user ON audit_events (actor_user); \
             DELETE FROM _sqlx_migrations WHERE version = 5"
        )))
        .execute(db.pool())
        .await?;
        db.close().await;
    }
    let db = Db::open(&path).await?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' \
         AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(indexes, ["audit_events_ts"]);
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    check_queries(&audit).await?;
    // New events chain on and are found together with the old ones.
    verifies_then_chains_on(&audit, 60, 4, 10).await?;
    Ok(())
}

#[tokio::test]
async fn wal_progress_reads_the_wal_index_header() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hutch.db");
    let db = Db::open(&path).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    fill(&audit, 2, 50).await?;
    let shm = super::sibling(&path, "-shm");
    let (frames, copied) = super::writer::wal_progress(&shm).ok_or("no wal-index")?;
    let mut conn = db.pool().acquire().await?;
    // (busy, frames in the WAL, frames checkpointed)
    let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    assert!(frames > 0 && copied <= frames, "{frames} {copied}");
    assert_eq!(i64::from(frames), log);
    let (frames2, copied2) = super::writer::wal_progress(&shm).ok_or("no wal-index")?;
    assert_eq!((frames2, copied2), (frames, frames));
    Ok(())
}

#[tokio::test]
async fn consecutive_batches_extend_the_last_key_range_and_queries_still_match() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hutch.db");
    let db = Db::open(&path).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    // One event per batch (each awaited): plugin and user repeat, the task
    // changes every fifth event.
    let ev = |i: usize| {
        AuditEvent::new(
            Actor::plugin("org.example.p0", "1.0.0", "inst-0", Some("user0".into())),
            "data.object.put",
            format!("dataset/ds0/object/k{i}"),
        )
        .with_task(format!("task-{}", (i / 5) % 3))
    };
    for i in 0..30 {
        audit.record(ev(i)).await?;
    }
    let ranges = |field: &'static str| {
        let pool = db.pool().clone();
        async move {
            sqlx::query_as::<_, (String, i64, i64)>(
                "SELECT value, first_id, last_id FROM audit_keys WHERE field = ? ORDER BY first_id",
            )
            .bind(field)
            .fetch_all(&pool)
            .await
        }
    };
    assert_eq!(ranges("plugin").await?, [("org.example.p0".into(), 1, 30)]);
    assert_eq!(ranges("user").await?, [("user0".into(), 1, 30)]);
    let tasks = ranges("task").await?;
    assert_eq!(tasks.len(), 6, "{tasks:?}");
    assert_eq!(tasks[1], ("task-1".into(), 6, 10));
    // Another writer on the same file (another process) moves the head:
    // this writer's next range starts anew instead of spanning its event.
    {
        let other_db = Db::open(&path).await?;
        let other = AuditStore::open(&other_db, AuditConfig::default()).await?;
        other
            .record(
                AuditEvent::new(Actor::user("user1"), "data.object.get", "dataset/ds1")
                    .with_task("task-4"),
            )
            .await?;
        drop(other);
        other_db.close().await;
    }
    audit.record(ev(30)).await?;
    audit.record(ev(31)).await?;
    assert_eq!(
        ranges("plugin").await?,
        [
            ("org.example.p0".into(), 1, 30),
            ("org.example.p0".into(), 32, 33)
        ]
    );
    assert_eq!(
        ranges("user").await?,
        [
            ("user0".into(), 1, 30),
            ("user1".into(), 31, 31),
            ("user0".into(), 32, 33)
        ]
    );
    check_queries(&audit).await?;
    assert!(audit.verify().await?.is_ok());
    Ok(())
}

/// A database at `path` with `writers` x `per` events, the oldest five
/// purged (so the chain starts at an anchor), then taken back to an older
/// schema by `undo`; returns it still open (for checks of the old schema)
/// and the events as queried before the undo.
async fn downgraded(
    path: &std::path::Path,
    writers: usize,
    per: usize,
    undo: &str,
) -> Result<(Db, Vec<super::StoredEvent>)> {
    let db = Db::open(path).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    fill(&audit, writers, per).await?;
    let all = audit.query(&AuditFilter::default()).await?;
    audit
        .purge_before(all[5].event.ts_us, Actor::admin("root"))
        .await?;
    let before = audit.query(&AuditFilter::default()).await?;
    drop(audit);
    sqlx::raw_sql(sqlx::AssertSqlSafe(undo.to_owned()))
        .execute(db.pool())
        .await?;
    Ok((db, before))
}

#[tokio::test]
async fn events_written_with_hex_hashes_verify_and_chain_on_after_the_blob_migration() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hutch.db");
    let before;
    {
        // Back to the schema before 0007: hashes as lowercase hex text.
        let db;
        (db, before) = downgraded(&path, 3, 12, &format!(
            "{UNDO_0008}CREATE TABLE old (id INTEGER NOT NULL PRIMARY KEY, ts_us BIGINT NOT NULL, \
             actor_kind TEXT NOT NULL, actor_plugin_id TEXT, actor_plugin_version TEXT, \
             actor_instance TEXT, actor_user TEXT, task_id TEXT, operation TEXT NOT NULL, \
             resource TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT, outcome TEXT NOT NULL, \
             before_version BIGINT, after_version BIGINT, details TEXT NOT NULL, \
             prev_hash TEXT NOT NULL, hash TEXT NOT NULL); \
             INSERT INTO old SELECT id, ts_us, actor_kind, actor_plugin_id, actor_plugin_version, \
             actor_instance, actor_user, task_id, operation, resource, decision, reason, outcome, \
             before_version, after_version, details, lower(hex(prev_hash)), lower(hex(hash)) \
             FROM audit_events; \
             DROP TABLE audit_events; ALTER TABLE old RENAME TO audit_events; \
             CREATE INDEX audit_events_ts ON audit_events (ts_us); \
             CREATE INDEX audit_events_resource ON audit_events (resource); \
             CREATE TABLE old_head (singleton INTEGER NOT NULL PRIMARY KEY, \
             last_id BIGINT NOT NULL, last_hash TEXT NOT NULL); \
             INSERT INTO old_head SELECT singleton, last_id, lower(hex(last_hash)) FROM audit_head; \
             DROP TABLE audit_head; ALTER TABLE old_head RENAME TO audit_head; \
             CREATE TABLE old_anchor (singleton INTEGER NOT NULL PRIMARY KEY, \
             last_purged_id BIGINT NOT NULL, last_purged_hash TEXT NOT NULL); \
             INSERT INTO old_anchor SELECT singleton, last_purged_id, lower(hex(last_purged_hash)) \
             FROM audit_anchor; \
             DROP TABLE audit_anchor; ALTER TABLE old_anchor RENAME TO audit_anchor; \
             DELETE FROM _sqlx_migrations WHERE version = 7"
        ))
        .await?;
        let kinds: Vec<(String, i64)> =
            sqlx::query_as("SELECT typeof(hash), length(hash) FROM audit_events LIMIT 1")
                .fetch_all(db.pool())
                .await?;
        assert_eq!(kinds, [("text".to_owned(), 64)]);
        db.close().await;
    }
    let db = Db::open(&path).await?;
    let kinds: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT DISTINCT typeof(prev_hash), typeof(hash), length(hash) FROM audit_events",
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(kinds, [("blob".to_owned(), "blob".to_owned(), 32)]);
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    // The same events, hashes and chain (from the anchor), as hex again.
    assert_eq!(audit.query(&AuditFilter::default()).await?, before);
    // New events chain on (from the migrated head).
    verifies_then_chains_on(&audit, before.len(), 2, 5).await?;
    // Tampering still shows: a hash overwritten with text (not hex).
    let victim = before[3].id.0;
    sqlx::query("UPDATE audit_events SET hash = 'not a hash' WHERE id = ?")
        .bind(victim)
        .execute(db.pool())
        .await?;
    let report = audit.verify().await?;
    assert_eq!(
        report.problems.first(),
        Some(&super::VerifyProblem::Edited {
            id: EventId(victim)
        }),
        "{report:?}"
    );
    Ok(())
}

#[tokio::test]
async fn events_written_with_texts_in_their_rows_verify_and_query_after_the_dictionary_migration()
-> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hutch.db");
    let before;
    {
        let db;
        (db, before) = downgraded(&path, 4, 15, UNDO_0008).await?;
        let kinds: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT typeof(actor_plugin_id), typeof(operation) FROM audit_events \
             WHERE actor_plugin_id IS NOT NULL",
        )
        .fetch_all(db.pool())
        .await?;
        assert_eq!(kinds, [("text".to_owned(), "text".to_owned())]);
        db.close().await;
    }
    let db = Db::open(&path).await?;
    let kinds: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT typeof(plugin_ref), typeof(operation_ref) FROM audit_events \
         WHERE plugin_ref IS NOT NULL",
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(kinds, [("integer".to_owned(), "integer".to_owned())]);
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    // The same events, the chain verifies, new events chain on.
    assert_eq!(audit.query(&AuditFilter::default()).await?, before);
    verifies_then_chains_on(&audit, before.len(), 3, 10).await?;
    // One text per value, shared by old and new events.
    let dupes: i64 = sqlx::query_scalar("SELECT COUNT(*) - COUNT(DISTINCT text) FROM audit_texts")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(dupes, 0);
    // An edited dictionary row is an edit of every event using it, a
    // deleted one too (the operation reads as '', not a decode error).
    let first = before[0].id;
    let users: Vec<EventId> = audit
        .query(&AuditFilter {
            user: Some("user3".into()),
            ..AuditFilter::default()
        })
        .await?
        .iter()
        .map(|e| e.id)
        .collect();
    assert!(!users.is_empty());
    sqlx::query("UPDATE audit_texts SET text = 'mallory' WHERE text = 'user3'")
        .execute(db.pool())
        .await?;
    let report = audit.verify().await?;
    let edited: Vec<EventId> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            super::VerifyProblem::Edited { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(edited, users, "{report:?}");
    sqlx::query("UPDATE audit_texts SET text = 'user3' WHERE text = 'mallory'")
        .execute(db.pool())
        .await?;
    assert!(audit.verify().await?.is_ok());
    sqlx::query("DELETE FROM audit_texts WHERE text = 'data.object.put'")
        .execute(db.pool())
        .await?;
    let report = audit.verify().await?;
    assert!(!report.is_ok(), "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .all(|p| matches!(p, super::VerifyProblem::Edited { id } if *id >= first)),
        "{report:?}"
    );
    Ok(())
}

/// The writer keeps its own settings (a small page cache, no sync at
/// COMMIT) only while it holds a pool connection: once it has been idle for
/// `HOLD_IDLE` it gives the connection back with the pool's settings, so
/// every connection the pool hands out afterwards has them.
#[tokio::test]
async fn the_writer_gives_its_connection_back_with_the_pools_settings() -> Result {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    fill(&audit, 4, 10).await?;
    tokio::time::sleep(super::writer::HOLD_IDLE * 6).await;
    // Every connection the pool may hold, so the writer's is among them.
    let mut conns = Vec::new();
    for _ in 0..crate::db::MAX_CONNECTIONS {
        conns.push(db.pool().acquire().await?);
    }
    for c in &mut conns {
        let mut settings = Vec::new();
        for pragma in ["cache_size", "synchronous", "wal_autocheckpoint"] {
            let sql = format!("PRAGMA {pragma}");
            let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut **c)
                .await?;
            settings.push(v);
        }
        // FULL is 2.
        let pool: i64 = crate::db::pool_cache_size!().parse()?;
        assert_eq!(settings, [pool, 2, 4000]);
    }
    drop(conns);
    db.close().await;
    Ok(())
}

/// Under a steady stream of events from concurrent writers the WAL starts
/// over (once the checkpointer, or the writer's catch-up when the
/// checkpointer cannot finish beside it, has copied all of it back, the
/// writer's next transaction starts the WAL from its beginning), so the WAL
/// file stays bounded however much is written; the chain verifies
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_starts_over_under_steady_writes() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hutch.db");
    let db = Db::open(&path).await?;
    let audit = AuditStore::open(&db, AuditConfig::default()).await?;
    let shm = super::sibling(&path, "-shm");
    let wal = super::sibling(&path, "-wal");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Events of four 4 KiB pages and more each (their details overflow).
    let big = std::sync::Arc::new("x".repeat(16 * 1024));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (audit, done, big) = (audit.clone(), done.clone(), big.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                let e = event(w, i).with_details(serde_json::json!({ "pad": *big }));
                audit.record(e).await?;
                i += 1;
            }
            Ok::<_, super::AuditError>(())
        }));
    }
    let (mut restarts, mut last, mut longest) = (0, 0u32, 0u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while restarts < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let Some((frames, _)) = super::writer::wal_progress(&shm) else {
            continue;
        };
        if frames < last {
            restarts += 1;
        }
        last = frames;
        longest = longest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    assert!(restarts >= 1, "the WAL never started over");
    // It started over before twice the length at which the writer catches
    // up; frames are 4 KiB pages plus a 24-byte header.
    let bound = u64::from(2 * super::writer::WAL_RESTART_FRAMES) * (4096 + 24);
    assert!(
        longest <= bound,
        "WAL grew to {longest} bytes (bound {bound})"
    );
    let report = audit.verify().await?;
    assert!(report.is_ok(), "{report:?}");
    db.close().await;
    Ok(())
}
