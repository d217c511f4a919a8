//! The built-in store on a real SQLite file and blob directory: versions,
//! compare-and-set (including races), deletes, metadata, audit of every
//! mutation, content addressing, retention and blob GC.

mod common;

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hutch_api::audit::{Actor, AuditEvent, AuditFilter, AuditStore, Decision, Outcome, ops};
use hutch_api::db::Db;
use hutch_api::store::{
    Backend, BuiltinStore, ByteStream, DEFAULT_INLINE_MAX_BYTES, DatasetId, Expect, ListObjects,
    Metadata, NewDataset, ObjectKey, RetentionPolicy, StoreConfig, StoreError, Version,
};
use sha2::Digest;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

struct Env {
    dir: tempfile::TempDir,
    audit: AuditStore,
    store: BuiltinStore,
    ds: DatasetId,
}

async fn env() -> Result<Env> {
    env_with(DEFAULT_INLINE_MAX_BYTES).await
}

/// A store keeping objects up to `inline_max` bytes inline (0: every
/// non-empty object in a blob file).
async fn env_with(inline_max: usize) -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let (audit, store) = common::stores(&db, dir.path()).await?;
    let store = store.with_inline_max(inline_max);
    let ds = DatasetId::new("ds1")?;
    store
        .create_dataset(
            ev(),
            NewDataset {
                id: Some(ds.clone()),
                name: "one".into(),
                owner: Some("alice".into()),
                metadata: Metadata::new(),
            },
        )
        .await?;
    Ok(Env {
        dir,
        audit,
        store,
        ds,
    })
}

fn ev() -> AuditEvent {
    AuditEvent::new(
        Actor::plugin("org.example.p", "1.0.0", "i1", Some("alice".into())),
        "",
        "",
    )
    .with_task("t1")
}

fn bytes(b: &[u8]) -> ByteStream {
    // Split into small chunks to exercise streaming.
    let chunks: Vec<_> = b.chunks(3).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(chunks).boxed()
}

fn key(k: &str) -> Result<ObjectKey> {
    Ok(ObjectKey::new(k)?)
}

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn read_all(mut s: ByteStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend(c?);
    }
    Ok(out)
}

async fn content(e: &Env, k: &str, v: Option<Version>) -> Result<Vec<u8>> {
    let (_, s) = e.store.get_object(&e.ds, &key(k)?, v).await?;
    read_all(s).await
}

#[tokio::test]
async fn put_get_versions_and_metadata() -> Result {
    let e = env().await?;
    let k = key("dir/a.txt")?;
    let v1 = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &k,
            Expect::Absent,
            Some(md(&[("kind", "raw")])),
            bytes(b"hello"),
        )
        .await?;
    assert_eq!(v1.value.version, Version(1));
    assert_eq!(v1.value.size, 5);
    let v2 = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &k,
            Expect::Version(Version(1)),
            None,
            bytes(b"hello, world"),
        )
        .await?;
    assert_eq!(v2.value.version, Version(2));
    // metadata None keeps the previous version's
    assert_eq!(v2.value.metadata, md(&[("kind", "raw")]));
    assert_eq!(content(&e, "dir/a.txt", None).await?, b"hello, world");
    assert_eq!(content(&e, "dir/a.txt", Some(Version(1))).await?, b"hello");
    let v3 = e
        .store
        .set_metadata(ev(), &e.ds, &k, Expect::Any, md(&[("kind", "processed")]))
        .await?;
    assert_eq!(v3.value.version, Version(3));
    assert_eq!(v3.value.sha256, v2.value.sha256);
    let head = e.store.head_object(&e.ds, &k, None).await?;
    assert_eq!(head.metadata, md(&[("kind", "processed")]));
    assert_eq!(
        e.store
            .head_object(&e.ds, &k, Some(Version(1)))
            .await?
            .metadata,
        md(&[("kind", "raw")])
    );
    let versions = e.store.list_versions(&e.ds, &k).await?;
    assert_eq!(
        versions.iter().map(|v| v.version.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(e.store.current_version(&e.ds, &k).await?, Some(Version(3)));

    // Each mutation recorded exactly one event, with the versions.
    for (id, before, after) in [
        (v1.event_id, None, 1),
        (v2.event_id, Some(1), 2),
        (v3.event_id, Some(2), 3),
    ] {
        let s = e.audit.get(id).await?.ok_or("event missing")?;
        assert_eq!(s.event.before_version, before);
        assert_eq!(s.event.after_version, Some(after));
        assert_eq!(s.event.resource, "dataset/ds1/object/dir/a.txt");
        assert_eq!(s.event.task_id.as_deref(), Some("t1"));
        assert!(s.event.outcome.is_ok());
    }
    assert_eq!(
        e.store.get_dataset(&e.ds).await?.owner.as_deref(),
        Some("alice")
    );
    assert_eq!(e.store.list_datasets().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn list_delete_and_recreate() -> Result {
    let e = env().await?;
    for k in ["a/1", "a/2", "b/1"] {
        e.store
            .put_object(
                ev(),
                &e.ds,
                &key(k)?,
                Expect::Any,
                None,
                bytes(k.as_bytes()),
            )
            .await?;
    }
    let all = e.store.list_objects(&e.ds, &ListObjects::default()).await?;
    assert_eq!(
        all.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        vec!["a/1", "a/2", "b/1"]
    );
    let a = e
        .store
        .list_objects(
            &e.ds,
            &ListObjects {
                prefix: Some("a/".into()),
                ..ListObjects::default()
            },
        )
        .await?;
    assert_eq!(a.len(), 2);
    let paged = e
        .store
        .list_objects(
            &e.ds,
            &ListObjects {
                after: Some(key("a/1")?),
                limit: 1,
                ..ListObjects::default()
            },
        )
        .await?;
    assert_eq!(
        paged.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        vec!["a/2"]
    );

    let del = e
        .store
        .delete_object(ev(), &e.ds, &key("a/1")?, Expect::Version(Version(1)))
        .await?;
    assert!(del.value.deleted);
    assert_eq!(del.value.version, Version(2));
    assert!(matches!(
        e.store.get_object(&e.ds, &key("a/1")?, None).await,
        Err(StoreError::ObjectNotFound { .. })
    ));
    assert!(matches!(
        e.store.head_object(&e.ds, &key("a/1")?, None).await,
        Err(StoreError::ObjectNotFound { .. })
    ));
    // The deleted content is still there as version 1.
    assert_eq!(content(&e, "a/1", Some(Version(1))).await?, b"a/1");
    assert_eq!(
        e.store
            .list_objects(&e.ds, &ListObjects::default())
            .await?
            .len(),
        2
    );
    // Deleting again: not found, and audited as a failure.
    assert!(matches!(
        e.store
            .delete_object(ev(), &e.ds, &key("a/1")?, Expect::Any)
            .await,
        Err(StoreError::ObjectNotFound { .. })
    ));
    // Recreate: Absent holds for a deleted object; versions continue.
    let again = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &key("a/1")?,
            Expect::Absent,
            None,
            bytes(b"new"),
        )
        .await?;
    assert_eq!(again.value.version, Version(3));
    assert!(again.value.metadata.is_empty());
    Ok(())
}

#[tokio::test]
async fn failed_mutations_are_audited_and_change_nothing() -> Result {
    let e = env().await?;
    let k = key("x")?;
    e.store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"one"))
        .await?;
    let err = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &k,
            Expect::Version(Version(7)),
            None,
            bytes(b"two"),
        )
        .await;
    match err {
        Err(StoreError::Conflict {
            current, expected, ..
        }) => {
            assert_eq!(current, Some(Version(1)));
            assert_eq!(expected, Expect::Version(Version(7)));
        }
        other => return Err(format!("expected conflict, got {other:?}").into()),
    }
    assert!(matches!(
        e.store
            .put_object(ev(), &e.ds, &k, Expect::Absent, None, bytes(b"two"))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // A failing content stream.
    let broken: ByteStream = futures::stream::iter(vec![
        Ok(b"part".to_vec()),
        Err(StoreError::Input("client went away".into())),
    ])
    .boxed();
    assert!(matches!(
        e.store
            .put_object(ev(), &e.ds, &k, Expect::Any, None, broken)
            .await,
        Err(StoreError::Input(_))
    ));
    // Missing dataset.
    let nope = DatasetId::new("nope")?;
    assert!(matches!(
        e.store
            .put_object(ev(), &nope, &k, Expect::Any, None, bytes(b"z"))
            .await,
        Err(StoreError::DatasetNotFound(_))
    ));
    // Duplicate dataset.
    assert!(matches!(
        e.store
            .create_dataset(
                ev(),
                NewDataset {
                    id: Some(e.ds.clone()),
                    name: "dup".into(),
                    ..NewDataset::default()
                }
            )
            .await,
        Err(StoreError::DatasetExists(_))
    ));
    assert_eq!(e.store.current_version(&e.ds, &k).await?, Some(Version(1)));
    assert_eq!(content(&e, "x", None).await?, b"one");

    let puts = e
        .audit
        .query(&AuditFilter {
            operation: Some(ops::OBJECT_PUT.into()),
            ..AuditFilter::default()
        })
        .await?;
    let outcomes: Vec<bool> = puts.iter().map(|s| s.event.outcome.is_ok()).collect();
    assert_eq!(outcomes, vec![true, false, false, false, false]);
    for failed in &puts[1..] {
        assert_eq!(failed.event.after_version, None);
        assert_eq!(failed.event.decision, Decision::Allowed);
    }
    assert!(
        matches!(&puts[1].event.outcome, Outcome::Error(m) if m.contains("expected version 7"))
    );
    assert!(matches!(&puts[3].event.outcome, Outcome::Error(m) if m.contains("client went away")));
    let creates = e
        .audit
        .query(&AuditFilter {
            operation: Some(ops::DATASET_CREATE.into()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(creates.len(), 2);
    assert!(!creates[1].event.outcome.is_ok());
    // No temp file left behind by the failed upload.
    let tmp = std::fs::read_dir(e.dir.path().join("blobs/tmp"))?.count();
    assert_eq!(tmp, 0);
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_writes_one_winner_per_version() -> Result {
    let e = env().await?;
    let store = Arc::new(e.store.clone());
    let k = key("contended")?;
    store
        .put_object(ev(), &e.ds, &k, Expect::Absent, None, bytes(b"v1"))
        .await?;
    for round in 1..=5i64 {
        let mut tasks = Vec::new();
        for w in 0..32 {
            let (store, ds, k) = (store.clone(), e.ds.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                let body = format!("round {round} writer {w}").into_bytes();
                let r = match w % 3 {
                    0 | 1 => {
                        store
                            .put_object(
                                ev(),
                                &ds,
                                &k,
                                Expect::Version(Version(round)),
                                None,
                                bytes(&body),
                            )
                            .await
                    }
                    _ => {
                        let m: Metadata = [("w".to_owned(), w.to_string())].into();
                        store
                            .set_metadata(ev(), &ds, &k, Expect::Version(Version(round)), m)
                            .await
                    }
                };
                (w, r)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await? {
                (w, Ok(a)) => winners.push((w, a.value.version)),
                (_, Err(StoreError::Conflict { current, .. })) => {
                    assert_eq!(current, Some(Version(round + 1)))
                }
                (_, Err(other)) => return Err(other.into()),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(winners[0].1, Version(round + 1));
    }
    assert_eq!(store.current_version(&e.ds, &k).await?, Some(Version(6)));
    // An object created concurrently with Absent: exactly one creator.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (store, ds) = (store.clone(), e.ds.clone());
        tasks.push(tokio::spawn(async move {
            let k = ObjectKey::new("fresh")?;
            Ok::<_, StoreError>(
                store
                    .put_object(ev(), &ds, &k, Expect::Absent, None, bytes(&[w]))
                    .await
                    .is_ok(),
            )
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await?? {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

/// Many writes of objects the writer does not know yet (it looks up their
/// current versions together, see `store/builtin.rs`): new objects, objects
/// written before this store instance existed and deleted ones, raced by
/// conflicting writes in the same batches, each get exactly the outcome the
/// current version allows.
#[tokio::test]
async fn writes_of_unknown_objects_looked_up_together_keep_compare_and_set() -> Result {
    let e = env().await?;
    // Written, and some deleted, through another store instance on the same
    // database (its writer state is shared, so drop what it knows by
    // opening a second audit store: a fresh writer).
    for i in 0..40 {
        let k = key(&format!("old{i}"))?;
        e.store
            .put_object(ev(), &e.ds, &k, Expect::Absent, None, bytes(b"v1"))
            .await?;
        if i % 4 == 0 {
            e.store.delete_object(ev(), &e.ds, &k, Expect::Any).await?;
        }
    }
    let db = Db::open(e.dir.path().join("hutch.db")).await?;
    let (audit, store) = common::stores(&db, e.dir.path()).await?;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..40 {
        for (n, expect) in [
            (0, Expect::Absent),
            (1, Expect::Version(Version(1))),
            (2, Expect::Version(Version(2))),
        ] {
            for prefix in ["old", "new"] {
                let (store, ds) = (store.clone(), e.ds.clone());
                let k = key(&format!("{prefix}{i}"))?;
                tasks.push(tokio::spawn(async move {
                    let r = store
                        .put_object(ev(), &ds, &k, expect, None, bytes(&[n]))
                        .await;
                    (prefix, i, n, r.map(|a| a.value.version))
                }));
            }
        }
    }
    // Per object: the versions its successful writes produced.
    let mut won: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for t in tasks {
        let (prefix, i, n, r) = t.await?;
        let name = format!("{prefix}{i}");
        // The version a write of this kind can produce: "new" objects do
        // not exist, "old" ones are at version 1, deleted ones at version 2
        // (a tombstone: Absent holds there too).
        let deleted = prefix == "old" && i % 4 == 0;
        let base = match (prefix, deleted) {
            ("new", _) => 0,
            (_, false) => 1,
            (_, true) => 2,
        };
        let possible = match n {
            0 if base != 1 => Some(base + 1),
            0 => None,
            v => Some(i64::from(v) + 1),
        };
        match r {
            Ok(v) => {
                assert_eq!(Some(v.0), possible, "{name} write {n}");
                won.entry(name).or_default().push(v.0);
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    for (name, mut versions) in won {
        versions.sort_unstable();
        let len = versions.len();
        versions.dedup();
        assert_eq!(versions.len(), len, "{name}: two writes made one version");
        let current = store.current_version(&e.ds, &key(&name)?).await?;
        assert_eq!(current.map(|v| v.0), versions.last().copied(), "{name}");
    }
    // A new object's creation always wins; a live old object's Version(1) too.
    for i in 0..40 {
        let new = store
            .current_version(&e.ds, &key(&format!("new{i}"))?)
            .await?;
        assert!(new >= Some(Version(1)), "new{i}: {new:?}");
        let old = store
            .current_version(&e.ds, &key(&format!("old{i}"))?)
            .await?;
        assert!(
            old >= Some(Version(if i % 4 == 0 { 3 } else { 2 })),
            "old{i}: {old:?}"
        );
    }
    assert!(audit.verify().await?.is_ok());
    Ok(())
}

fn blob_files(e: &Env) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(e.dir.path().join("blobs"))? {
        let d = d?;
        let name = d.file_name().to_string_lossy().into_owned();
        if name == "tmp" {
            continue;
        }
        for f in std::fs::read_dir(d.path())? {
            out.push(format!("{name}{}", f?.file_name().to_string_lossy()));
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn blobs_are_content_addressed_and_fsynced_in_place() -> Result {
    let e = env_with(0).await?;
    let a = e
        .store
        .put_object(ev(), &e.ds, &key("a")?, Expect::Any, None, bytes(b"same"))
        .await?;
    let b = e
        .store
        .put_object(ev(), &e.ds, &key("b")?, Expect::Any, None, bytes(b"same"))
        .await?;
    assert_eq!(a.value.sha256, b.value.sha256);
    let hash = a.value.sha256.clone().ok_or("no hash")?;
    // sha256("same")
    assert_eq!(
        hash,
        "0967115f2813a3541eaef77de9d9d5773f1c0c04314b0bbfe4ff3b3b1c55b5d5"
    );
    assert_eq!(blob_files(&e)?, vec![hash.clone()]);
    assert!(
        e.dir
            .path()
            .join("blobs")
            .join(&hash[..2])
            .join(&hash[2..])
            .is_file()
    );
    Ok(())
}

#[tokio::test]
async fn retention_and_gc_remove_only_unreferenced_blobs() -> Result {
    let e = env_with(0).await?;
    let k = key("k")?;
    let old = e
        .store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"old content"))
        .await?;
    let shared = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &key("other")?,
            Expect::Any,
            None,
            bytes(b"shared"),
        )
        .await?;
    e.store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"shared"))
        .await?;
    let gone = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &key("gone")?,
            Expect::Any,
            None,
            bytes(b"deleted later"),
        )
        .await?;
    e.store
        .delete_object(ev(), &e.ds, &key("gone")?, Expect::Any)
        .await?;
    // A stray blob no version references (e.g. a write whose transaction failed).
    let stray = "ab".to_owned() + &"c".repeat(62);
    std::fs::create_dir_all(e.dir.path().join("blobs/ab"))?;
    std::fs::write(e.dir.path().join("blobs/ab").join(&stray[2..]), b"stray")?;
    assert_eq!(blob_files(&e)?.len(), 4);

    // GC with a long min_age leaves fresh blobs alone.
    let report = e
        .store
        .gc(Actor::daemon(), Duration::from_secs(3600))
        .await?;
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(blob_files(&e)?.len(), 4);
    // GC now: only the stray blob goes (old versions still reference the rest).
    let report = e.store.gc(Actor::daemon(), Duration::ZERO).await?;
    assert_eq!(report.blobs_removed, 1);
    assert!(!blob_files(&e)?.contains(&stray));
    assert_eq!(content(&e, "k", Some(Version(1))).await?, b"old content");

    // Retention with keep 0: old versions go, current ones (and the tombstone) stay.
    let policy = RetentionPolicy {
        keep_old_versions_for: Duration::ZERO,
        gc_min_age: Duration::ZERO,
    };
    let report = e.store.apply_retention(&policy, Actor::daemon()).await?;
    assert_eq!(report.versions_removed, 2); // k v1, gone v1
    assert_eq!(report.gc.blobs_removed, 2); // "old content", "deleted later"
    let left = blob_files(&e)?;
    assert_eq!(left, vec![shared.value.sha256.clone().ok_or("no hash")?]);
    assert!(!left.contains(&old.value.sha256.clone().ok_or("no hash")?));
    assert!(!left.contains(&gone.value.sha256.clone().ok_or("no hash")?));
    assert!(matches!(
        e.store.get_object(&e.ds, &k, Some(Version(1))).await,
        Err(StoreError::Purged { .. })
    ));
    assert_eq!(content(&e, "k", None).await?, b"shared");
    assert_eq!(content(&e, "other", None).await?, b"shared");
    assert_eq!(
        e.store.current_version(&e.ds, &key("gone")?).await?,
        Some(Version(2))
    );
    let retention = e
        .audit
        .query(&AuditFilter {
            operation: Some(ops::STORE_RETENTION.into()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(retention.len(), 1);
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn small_objects_live_inline_large_ones_in_blobs() -> Result {
    let e = env().await?;
    let k = key("small")?;
    let v1 = e
        .store
        .put_object(ev(), &e.ds, &k, Expect::Absent, None, bytes(b"first"))
        .await?;
    // sha256("first"): the same content address as a blob would have.
    assert_eq!(
        v1.value.sha256.as_deref(),
        Some("a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e")
    );
    assert!(blob_files(&e)?.is_empty(), "a small put wrote a blob file");
    e.store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"second"))
        .await?;
    e.store
        .set_metadata(
            ev(),
            &e.ds,
            &k,
            Expect::Version(Version(2)),
            md(&[("m", "1")]),
        )
        .await?;
    assert_eq!(content(&e, "small", None).await?, b"second");
    assert_eq!(content(&e, "small", Some(Version(1))).await?, b"first");
    assert_eq!(content(&e, "small", Some(Version(2))).await?, b"second");
    // Restore (revert's primitive) brings old inline content back, also after a delete.
    e.store
        .restore_version(
            ev(),
            &e.ds,
            &k,
            Some(Version(1)),
            Expect::Version(Version(3)),
        )
        .await?;
    assert_eq!(content(&e, "small", None).await?, b"first");
    e.store.delete_object(ev(), &e.ds, &k, Expect::Any).await?;
    assert!(e.store.get_object(&e.ds, &k, None).await.is_err());
    let undone = e
        .store
        .restore_version(
            ev(),
            &e.ds,
            &k,
            Some(Version(4)),
            Expect::Version(Version(5)),
        )
        .await?;
    assert_eq!(undone.value.version, Version(6));
    assert_eq!(content(&e, "small", None).await?, b"first");
    // Empty objects are inline too.
    e.store
        .put_object(ev(), &e.ds, &key("empty")?, Expect::Any, None, bytes(b""))
        .await?;
    assert_eq!(content(&e, "empty", None).await?, b"");

    // One byte over the limit: a blob file, streamed in from the buffered prefix.
    let big: Vec<u8> = (0..=DEFAULT_INLINE_MAX_BYTES)
        .map(|i| (i % 251) as u8)
        .collect();
    let chunks: Vec<_> = big.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    let b = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &key("big")?,
            Expect::Any,
            None,
            futures::stream::iter(chunks).boxed(),
        )
        .await?;
    assert_eq!(b.value.size, big.len() as u64);
    assert_eq!(
        blob_files(&e)?,
        vec![b.value.sha256.clone().ok_or("no hash")?]
    );
    assert_eq!(content(&e, "big", None).await?, big);
    // Exactly at the limit: inline.
    let at = vec![9u8; DEFAULT_INLINE_MAX_BYTES];
    e.store
        .put_object(ev(), &e.ds, &key("at")?, Expect::Any, None, bytes(&at))
        .await?;
    assert_eq!(blob_files(&e)?.len(), 1);
    assert_eq!(content(&e, "at", None).await?, at);

    // Retention removes old inline versions with their rows; GC keeps the big blob.
    let policy = RetentionPolicy {
        keep_old_versions_for: Duration::ZERO,
        gc_min_age: Duration::ZERO,
    };
    let report = e.store.apply_retention(&policy, Actor::daemon()).await?;
    assert_eq!(report.versions_removed, 5);
    assert_eq!(report.gc.blobs_removed, 0);
    assert!(matches!(
        e.store.get_object(&e.ds, &k, Some(Version(2))).await,
        Err(StoreError::Purged { .. })
    ));
    assert_eq!(content(&e, "small", None).await?, b"first");
    assert_eq!(content(&e, "big", None).await?, big);
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

/// Puts, metadata changes and restores of one object racing into the same
/// audit batches: the writer plans them in memory and inserts the puts'
/// rows later (before any change that reads rows, and before the events),
/// so every version must still be written once, in order, with its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_batch_mixes_puts_metadata_changes_and_restores_of_one_object() -> Result {
    let e = env().await?;
    let k = key("k")?;
    let first = e
        .store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"v1"))
        .await?
        .value;
    let mut calls = Vec::new();
    for i in 0..16u32 {
        let (store, ds, k) = (e.store.clone(), e.ds.clone(), k.clone());
        calls.push(tokio::spawn(async move {
            match i % 4 {
                0 => store
                    .set_metadata(ev(), &ds, &k, Expect::Any, md(&[("i", &i.to_string())]))
                    .await
                    .map(|a| a.value),
                1 => store
                    .restore_version(ev(), &ds, &k, Some(Version(1)), Expect::Any)
                    .await
                    .map(|a| a.value),
                _ => store
                    .put_object(
                        ev(),
                        &ds,
                        &k,
                        Expect::Any,
                        None,
                        bytes(format!("put {i}").as_bytes()),
                    )
                    .await
                    .map(|a| a.value),
            }
        }));
    }
    let mut written = vec![first];
    for c in calls {
        written.push(c.await??);
    }
    written.sort_by_key(|i| i.version);
    let versions: Vec<i64> = written.iter().map(|i| i.version.0).collect();
    assert_eq!(
        versions,
        (1..=17).collect::<Vec<_>>(),
        "one version per write"
    );
    let stored = e.store.list_versions(&e.ds, &k).await?;
    assert_eq!(stored.len(), 17);
    for (w, s) in written.iter().zip(&stored) {
        assert_eq!(w.version, s.version);
        assert_eq!(w.sha256, s.sha256, "version {} content", w.version.0);
        assert_eq!(w.metadata, s.metadata, "version {} metadata", w.version.0);
        let body = content(&e, "k", Some(s.version)).await?;
        assert_eq!(
            s.sha256.as_deref(),
            Some(hex::encode(sha2::Sha256::digest(&body)).as_str())
        );
    }
    let head = e.store.head_object(&e.ds, &k, None).await?;
    assert_eq!(head.version, Version(17));
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

/// A second audit store on the same file (as another process would be)
/// moves the chain head; the first store's writer notices it and drops
/// what it remembered of the objects, so its next write builds on the
/// other store's version instead of colliding with it.
#[tokio::test]
async fn writes_by_another_writer_on_the_same_file_are_seen() -> Result {
    let e = env().await?;
    let k = key("k")?;
    e.store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"a1"))
        .await?;
    let db2 = Db::open(e.dir.path().join("hutch.db")).await?;
    let (_, store2) = common::stores(&db2, e.dir.path()).await?;
    let b = store2
        .put_object(
            ev(),
            &e.ds,
            &k,
            Expect::Version(Version(1)),
            None,
            bytes(b"b2"),
        )
        .await?
        .value;
    assert_eq!(b.version, Version(2));
    let a = e
        .store
        .put_object(
            ev(),
            &e.ds,
            &k,
            Expect::Version(Version(2)),
            None,
            bytes(b"a3"),
        )
        .await?
        .value;
    assert_eq!(a.version, Version(3));
    assert_eq!(content(&e, "k", None).await?, b"a3");
    assert!(e.audit.verify().await?.is_ok());
    db2.close().await;
    Ok(())
}

/// A reserve larger than any free space refuses every call that writes new
/// bytes (puts inline or to a blob, metadata, a new dataset) with
/// `DiskReserve`: nothing is stored or changed, no blob or temp file is
/// left, and each refusal is an audited failure. Reads and deletes still
/// work. (The root
/// test in `proxy.rs` fills a real small filesystem through the socket.)
#[tokio::test]
async fn writes_into_the_free_space_reserve_are_refused_audited_and_store_nothing() -> Result {
    let e = env().await?;
    let k = key("x")?;
    e.store
        .put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(b"before"))
        .await?;
    // The same database and blobs, through a store whose reserve no
    // filesystem can keep.
    let db = Db::open(e.dir.path().join("hutch.db")).await?;
    let mut config = StoreConfig::new(e.dir.path().join("blobs"));
    config.min_free_bytes = u64::MAX;
    let full = BuiltinStore::open(&db, e.audit.clone(), config).await?;
    let refused = |r: std::result::Result<_, StoreError>| match r {
        Err(StoreError::DiskReserve { free, min_free, .. }) if free < min_free => Ok(()),
        other => Err(format!("expected DiskReserve, got {other:?}")),
    };
    let big = vec![7u8; DEFAULT_INLINE_MAX_BYTES + 1];
    for content in [b"small".to_vec(), big] {
        refused(
            full.put_object(ev(), &e.ds, &k, Expect::Any, None, bytes(&content))
                .await
                .map(|_| ()),
        )?;
    }
    refused(
        full.set_metadata(ev(), &e.ds, &k, Expect::Any, md(&[("a", "b")]))
            .await
            .map(|_| ()),
    )?;
    refused(
        full.create_dataset(ev(), NewDataset::default())
            .await
            .map(|_| ()),
    )?;
    assert_eq!(content(&e, "x", None).await?, b"before");
    let head = full.head_object(&e.ds, &k, None).await?;
    assert_eq!((head.version, head.metadata.len()), (Version(1), 0));
    assert_eq!(full.list_datasets().await?.len(), 1);
    assert_eq!(
        std::fs::read_dir(e.dir.path().join("blobs/tmp"))?.count(),
        0
    );
    assert!(blob_files(&e)?.is_empty(), "{:?}", blob_files(&e)?);
    let failed = e.audit.query(&AuditFilter::default()).await?;
    let reasons: Vec<_> = failed
        .iter()
        .filter_map(|s| match &s.event.outcome {
            Outcome::Error(msg) => Some((s.event.operation.as_str(), msg.as_str())),
            Outcome::Ok => None,
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    for (op, msg) in &reasons {
        assert!(msg.contains("free-space reserve"), "{op}: {msg}");
    }
    // A delete is how room is made again: never refused.
    full.delete_object(ev(), &e.ds, &k, Expect::Version(Version(1)))
        .await?;
    assert!(matches!(
        full.head_object(&e.ds, &k, None).await,
        Err(StoreError::ObjectNotFound { .. })
    ));
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}
