//! Migration 0006 (no `objects` head table, partial blob index) upgrades a
//! populated database: a file written by the schema before it, filled the
//! way the store filled it (blob-file and inline versions, tombstones, heads
//! in `objects`), opens with every object, version and content readable, and
//! compare-and-set, revert, retention and blob GC keep working on it.

mod common;

use std::borrow::Cow;
use std::error::Error;
use std::time::Duration;

use futures::StreamExt;
use hutch_api::audit::{Actor, AuditEvent};
use hutch_api::db::{Db, MIGRATOR};
use hutch_api::store::{
    Backend, BuiltinStore, ByteStream, DatasetId, Expect, ListObjects, ObjectKey, RetentionPolicy,
    StoreError, Version,
};
use sha2::Digest;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn ev() -> AuditEvent {
    AuditEvent::new(
        Actor::plugin("org.example.p", "1.0.0", "i1", Some("alice".into())),
        "",
        "",
    )
}

fn key(k: &str) -> Result<ObjectKey> {
    Ok(ObjectKey::new(k)?)
}

fn bytes(b: &[u8]) -> ByteStream {
    futures::stream::iter([Ok(b.to_vec())]).boxed()
}

async fn content(s: &BuiltinStore, ds: &DatasetId, k: &str, v: Option<u64>) -> Result<Vec<u8>> {
    let v = v.map(|v| Version(v as i64));
    let (_, mut stream) = s.get_object(ds, &key(k)?, v).await?;
    let mut out = Vec::new();
    while let Some(c) = stream.next().await {
        out.extend(c?);
    }
    Ok(out)
}

fn hash(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// One version row as the store before 0006 wrote it.
struct Old<'a> {
    key: &'a str,
    version: i64,
    /// None: a tombstone.
    content: Option<&'a [u8]>,
    /// Content in a blob file instead of the row.
    in_file: bool,
}

/// Writes a database with every migration but 0006 and later store ones,
/// holding dataset `ds1` with the versions of `rows` (heads in `objects`)
/// and the blob files of the file-backed ones.
async fn old_database(dir: &std::path::Path, rows: &[Old<'_>]) -> Result {
    let old = Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version <= 5 || m.version >= 100)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.join("hutch.db"))
                .create_if_missing(true)
                .foreign_keys(true),
        )
        .await?;
    old.run(&pool).await?;
    sqlx::query("INSERT INTO datasets (id, name, owner, metadata, created_us) VALUES ('ds1', 'one', 'alice', '{}', 1)")
        .execute(&pool)
        .await?;
    for r in rows {
        let (blob, size, inline) = match r.content {
            None => (None, 0, None),
            Some(c) if r.in_file => {
                let h = hash(c);
                let d = dir.join("blobs").join(&h[..2]);
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join(&h[2..]), c)?;
                (Some(h), c.len() as i64, None)
            }
            Some(c) => (Some(hash(c)), c.len() as i64, Some(c.to_vec())),
        };
        sqlx::query(
            "INSERT INTO object_versions (dataset_id, key, version, deleted, blob, size, metadata, created_us, content) \
             VALUES ('ds1', ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.key)
        .bind(r.version)
        .bind(i64::from(r.content.is_none()))
        .bind(blob)
        .bind(size)
        .bind(format!(r#"{{"v":"{}"}}"#, r.version))
        .bind(1_000 + r.version)
        .bind(inline)
        .execute(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO objects (dataset_id, key, version) VALUES ('ds1', ?, ?) \
             ON CONFLICT (dataset_id, key) DO UPDATE SET version = excluded.version",
        )
        .bind(r.key)
        .bind(r.version)
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

fn blob_count(dir: &std::path::Path) -> Result<usize> {
    let mut n = 0;
    for d in std::fs::read_dir(dir.join("blobs"))? {
        let d = d?;
        if d.file_name() != "tmp" {
            n += std::fs::read_dir(d.path())?.count();
        }
    }
    Ok(n)
}

#[tokio::test]
async fn migration_0006_keeps_objects_versions_revert_retention_and_gc() -> Result {
    let dir = tempfile::tempdir()?;
    let row = |key, version, content, in_file| Old {
        key,
        version,
        content,
        in_file,
    };
    old_database(
        dir.path(),
        &[
            row("a", 1, Some(&b"first, in a blob file"[..]), true),
            row("a", 2, Some(&b"second, inline"[..]), false),
            row("a", 3, None, false),
            row("a", 4, Some(&b"fourth"[..]), false),
            row("b", 1, Some(&b"bee"[..]), false),
            row("c", 1, Some(&b"sea"[..]), false),
            row("c", 2, None, false),
        ],
    )
    .await?;

    let db = Db::open(dir.path().join("hutch.db")).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE name IN ('objects', 'object_versions')",
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(tables, vec!["object_versions".to_owned()]);
    let index: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'object_versions_blob'",
    )
    .fetch_one(db.pool())
    .await?;
    assert!(index.contains("WHERE content IS NULL"), "{index}");
    let (audit, store) = common::stores(&db, dir.path()).await?;
    let ds = DatasetId::new("ds1")?;

    // Heads, old versions and contents as before the migration.
    assert_eq!(
        store.current_version(&ds, &key("a")?).await?,
        Some(Version(4))
    );
    assert_eq!(
        store.current_version(&ds, &key("c")?).await?,
        Some(Version(2))
    );
    assert_eq!(store.current_version(&ds, &key("z")?).await?, None);
    assert_eq!(content(&store, &ds, "a", None).await?, b"fourth");
    assert_eq!(
        content(&store, &ds, "a", Some(1)).await?,
        b"first, in a blob file"
    );
    assert_eq!(content(&store, &ds, "a", Some(2)).await?, b"second, inline");
    let a = store.head_object(&ds, &key("a")?, None).await?;
    assert_eq!((a.version, a.size), (Version(4), 6));
    assert_eq!(a.metadata.get("v").map(String::as_str), Some("4"));
    assert!(
        store
            .head_object(&ds, &key("a")?, Some(Version(3)))
            .await?
            .deleted
    );
    assert!(matches!(
        store.head_object(&ds, &key("c")?, None).await,
        Err(StoreError::ObjectNotFound { .. })
    ));
    let listed: Vec<String> = store
        .list_objects(&ds, &ListObjects::default())
        .await?
        .into_iter()
        .map(|o| format!("{}@{}", o.key, o.version))
        .collect();
    assert_eq!(listed, vec!["a@4", "b@1"]);
    let versions = store.list_versions(&ds, &key("a")?).await?;
    assert_eq!(versions.len(), 4);

    // Compare-and-set on a migrated head, then its race loser.
    let v5 = store
        .put_object(
            ev(),
            &ds,
            &key("a")?,
            Expect::Version(Version(4)),
            None,
            bytes(b"fifth"),
        )
        .await?;
    assert_eq!(v5.value.version, Version(5));
    // The new version keeps the migrated head's metadata.
    assert_eq!(v5.value.metadata.get("v").map(String::as_str), Some("4"));
    assert!(matches!(
        store
            .put_object(
                ev(),
                &ds,
                &key("a")?,
                Expect::Version(Version(4)),
                None,
                bytes(b"late")
            )
            .await,
        Err(StoreError::Conflict {
            current: Some(Version(5)),
            ..
        })
    ));
    // A deleted object (migrated tombstone head) can be created again.
    let c3 = store
        .put_object(
            ev(),
            &ds,
            &key("c")?,
            Expect::Absent,
            None,
            bytes(b"sea again"),
        )
        .await?;
    assert_eq!(c3.value.version, Version(3));

    // Revert to the blob-file version: a new version sharing the file.
    let v6 = store
        .restore_version(
            ev(),
            &ds,
            &key("a")?,
            Some(Version(1)),
            Expect::Version(Version(5)),
        )
        .await?;
    assert_eq!(v6.value.version, Version(6));
    assert_eq!(
        content(&store, &ds, "a", None).await?,
        b"first, in a blob file"
    );

    // Retention: every old version goes, the current ones stay; the blob
    // file stays while the current version refers to it.
    let policy = RetentionPolicy {
        keep_old_versions_for: Duration::ZERO,
        gc_min_age: Duration::ZERO,
    };
    let report = store.apply_retention(&policy, Actor::daemon()).await?;
    assert_eq!(report.versions_removed, 5 + 2); // a v1..v5, c v1..v2
    assert_eq!(report.gc.blobs_removed, 0);
    assert_eq!(blob_count(dir.path())?, 1);
    assert_eq!(
        content(&store, &ds, "a", None).await?,
        b"first, in a blob file"
    );
    assert_eq!(content(&store, &ds, "b", None).await?, b"bee");
    assert!(matches!(
        store.get_object(&ds, &key("a")?, Some(Version(4))).await,
        Err(StoreError::Purged { .. })
    ));
    // Version numbers go on from the newest (retention never removes it).
    let v7 = store
        .delete_object(ev(), &ds, &key("a")?, Expect::Version(Version(6)))
        .await?;
    assert_eq!(v7.value.version, Version(7));
    let report = store.apply_retention(&policy, Actor::daemon()).await?;
    assert_eq!(report.versions_removed, 1);
    assert_eq!(report.gc.blobs_removed, 1);
    assert_eq!(blob_count(dir.path())?, 0);
    assert_eq!(
        store.current_version(&ds, &key("a")?).await?,
        Some(Version(7))
    );
    assert!(audit.verify().await?.is_ok());
    db.close().await;
    Ok(())
}
