//! Revert per event and per task on a real SQLite file: put (create),
//! overwrite, delete, metadata; conflicts refused (and audited) unless forced.

mod common;

use std::error::Error;
use std::sync::Arc;

use futures::StreamExt;
use hutch_api::audit::{Actor, AuditEvent, AuditFilter, AuditStore, EventId, ops};
use hutch_api::db::Db;
use hutch_api::revert::{RevertError, Reverter};
use hutch_api::store::{
    Backend, BuiltinStore, ByteStream, DatasetId, Expect, Metadata, NewDataset, ObjectKey,
    RetentionPolicy, StoreError, Version,
};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

struct Env {
    _dir: tempfile::TempDir,
    audit: AuditStore,
    store: BuiltinStore,
    reverter: Reverter,
    ds: DatasetId,
}

async fn env() -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let (audit, store) = common::stores(&db, dir.path()).await?;
    let backend: Arc<dyn Backend> = Arc::new(store.clone());
    let reverter = Reverter::new(audit.clone(), backend);
    let ds = DatasetId::new("ds")?;
    store
        .create_dataset(
            ev(None),
            NewDataset {
                id: Some(ds.clone()),
                name: "ds".into(),
                ..NewDataset::default()
            },
        )
        .await?;
    Ok(Env {
        _dir: dir,
        audit,
        store,
        reverter,
        ds,
    })
}

fn ev(task: Option<&str>) -> AuditEvent {
    let e = AuditEvent::new(
        Actor::plugin("org.example.p", "1.0.0", "i1", Some("bob".into())),
        "",
        "",
    );
    match task {
        Some(t) => e.with_task(t),
        None => e,
    }
}

fn admin() -> Actor {
    Actor::admin("root")
}

fn body(b: &[u8]) -> ByteStream {
    futures::stream::iter([Ok(b.to_vec())]).boxed()
}

fn key(k: &str) -> Result<ObjectKey> {
    Ok(ObjectKey::new(k)?)
}

fn md(k: &str, v: &str) -> Metadata {
    [(k.to_owned(), v.to_owned())].into()
}

impl Env {
    async fn put(
        &self,
        task: Option<&str>,
        k: &str,
        b: &[u8],
        m: Option<Metadata>,
    ) -> Result<EventId> {
        Ok(self
            .store
            .put_object(ev(task), &self.ds, &key(k)?, Expect::Any, m, body(b))
            .await?
            .event_id)
    }

    async fn delete(&self, task: Option<&str>, k: &str) -> Result<EventId> {
        Ok(self
            .store
            .delete_object(ev(task), &self.ds, &key(k)?, Expect::Any)
            .await?
            .event_id)
    }

    async fn set_md(&self, task: Option<&str>, k: &str, m: Metadata) -> Result<EventId> {
        Ok(self
            .store
            .set_metadata(ev(task), &self.ds, &key(k)?, Expect::Any, m)
            .await?
            .event_id)
    }

    /// Current content and metadata, or None if absent/deleted.
    async fn state(&self, k: &str) -> Result<Option<(Vec<u8>, Metadata)>> {
        match self.store.get_object(&self.ds, &key(k)?, None).await {
            Ok((info, mut s)) => {
                let mut out = Vec::new();
                while let Some(c) = s.next().await {
                    out.extend(c?);
                }
                Ok(Some((out, info.metadata)))
            }
            Err(StoreError::ObjectNotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn revert_events(&self) -> Result<Vec<hutch_api::audit::StoredEvent>> {
        Ok(self
            .audit
            .query(&AuditFilter {
                operation: Some(ops::OBJECT_REVERT.into()),
                ..AuditFilter::default()
            })
            .await?)
    }
}

#[tokio::test]
async fn revert_each_kind_of_event() -> Result {
    let e = env().await?;
    // create
    let create = e.put(None, "a", b"first", Some(md("v", "1"))).await?;
    // overwrite
    let overwrite = e.put(None, "a", b"second", Some(md("v", "2"))).await?;
    // metadata
    let meta = e.set_md(None, "a", md("v", "3")).await?;
    assert_eq!(
        e.state("a").await?,
        Some((b"second".to_vec(), md("v", "3")))
    );

    let r = e.reverter.revert_event(meta, admin(), false).await?;
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0].restored, Some(Version(2)));
    assert_eq!(r.objects[0].new_version, Version(4));
    assert_eq!(
        e.state("a").await?,
        Some((b"second".to_vec(), md("v", "2")))
    );

    // The overwrite is now followed by the metadata revert: a conflict.
    let conflict = e.reverter.revert_event(overwrite, admin(), false).await;
    match conflict {
        Err(RevertError::Conflict {
            expected,
            current,
            later,
            ..
        }) => {
            assert_eq!(expected, Version(2));
            assert_eq!(current, Some(Version(4)));
            assert_eq!(later, vec![meta, r.objects[0].event_id]);
        }
        other => return Err(format!("expected conflict, got {other:?}").into()),
    }
    assert_eq!(
        e.state("a").await?,
        Some((b"second".to_vec(), md("v", "2")))
    );
    // Forced: back to the state before the overwrite.
    e.reverter.revert_event(overwrite, admin(), true).await?;
    assert_eq!(e.state("a").await?, Some((b"first".to_vec(), md("v", "1"))));

    // delete, then undo it
    let del = e.delete(None, "a").await?;
    assert_eq!(e.state("a").await?, None);
    e.reverter.revert_event(del, admin(), false).await?;
    assert_eq!(e.state("a").await?, Some((b"first".to_vec(), md("v", "1"))));

    // undo a create by deleting (forced: later changes happened)
    assert!(matches!(
        e.reverter.revert_event(create, admin(), false).await,
        Err(RevertError::Conflict { .. })
    ));
    e.reverter.revert_event(create, admin(), true).await?;
    assert_eq!(e.state("a").await?, None);

    // a fresh create, reverted right away, needs no force
    let b = e.put(None, "b", b"bee", None).await?;
    e.reverter.revert_event(b, admin(), false).await?;
    assert_eq!(e.state("b").await?, None);

    // Every revert (refused ones included) is an audited event.
    let reverts = e.revert_events().await?;
    let ok: Vec<bool> = reverts.iter().map(|s| s.event.outcome.is_ok()).collect();
    assert_eq!(ok, vec![true, false, true, true, false, true, true]);
    assert_eq!(
        reverts[0].event.details["reverts_event"],
        serde_json::json!(meta.0)
    );
    assert_eq!(reverts[2].event.details["forced"], serde_json::json!(true));
    assert!(reverts.iter().all(|s| s.event.actor == admin()));
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn events_that_changed_nothing_are_not_revertible() -> Result {
    let e = env().await?;
    let denied = e.audit.record(ev(None).denied("no scope")).await?;
    assert!(matches!(
        e.reverter.revert_event(denied, admin(), false).await,
        Err(RevertError::NotRevertible { .. })
    ));
    assert!(matches!(
        e.reverter.revert_event(EventId(999), admin(), false).await,
        Err(RevertError::EventNotFound(_))
    ));
    // The dataset creation (event 1) is not an object change.
    assert!(matches!(
        e.reverter.revert_event(EventId(1), admin(), false).await,
        Err(RevertError::NotRevertible { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn revert_a_whole_task() -> Result {
    let e = env().await?;
    // Before the task: z exists, w exists.
    e.put(None, "z", b"zed", Some(md("keep", "z"))).await?;
    e.put(None, "w", b"double-u", None).await?;
    // Task T: create x, overwrite x, set metadata on x, create y, delete z, overwrite w.
    let t = Some("T");
    e.put(t, "x", b"x1", None).await?;
    e.put(t, "x", b"x2", None).await?;
    e.set_md(t, "x", md("m", "x")).await?;
    e.put(t, "y", b"y1", None).await?;
    e.delete(t, "z").await?;
    e.put(t, "w", b"changed", Some(md("by", "T"))).await?;
    // Another task touches only unrelated objects.
    e.put(Some("U"), "u", b"u", None).await?;

    let r = e.reverter.revert_task("T", admin(), false).await?;
    assert_eq!(r.objects.len(), 4);
    let x = r
        .objects
        .iter()
        .find(|o| o.key.as_str() == "x")
        .ok_or("x not reverted")?;
    assert_eq!(x.reverted_events.len(), 3);
    assert_eq!(x.restored, None);
    assert_eq!(e.state("x").await?, None);
    assert_eq!(e.state("y").await?, None);
    assert_eq!(
        e.state("z").await?,
        Some((b"zed".to_vec(), md("keep", "z")))
    );
    assert_eq!(
        e.state("w").await?,
        Some((b"double-u".to_vec(), Metadata::new()))
    );
    assert_eq!(e.state("u").await?, Some((b"u".to_vec(), Metadata::new())));
    let reverts = e.revert_events().await?;
    assert_eq!(reverts.len(), 4);
    assert!(
        reverts
            .iter()
            .all(|s| s.event.details["reverts_task"] == "T")
    );
    // The revert events do not belong to the task: reverting T again finds
    // its changes superseded by the revert, a conflict.
    assert!(matches!(
        e.reverter.revert_task("T", admin(), false).await,
        Err(RevertError::Conflict { .. })
    ));
    assert!(matches!(
        e.reverter.revert_task("nothing", admin(), false).await,
        Err(RevertError::NothingToRevert(_))
    ));
    assert!(e.audit.verify().await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn task_revert_refuses_on_a_later_change_unless_forced() -> Result {
    let e = env().await?;
    let t = Some("T");
    e.put(t, "x", b"x1", None).await?;
    e.put(t, "y", b"y1", None).await?;
    // Someone else changes y after the task.
    let later = e.put(None, "y", b"someone else", None).await?;

    match e.reverter.revert_task("T", admin(), false).await {
        Err(RevertError::Conflict {
            resource, later: l, ..
        }) => {
            assert_eq!(resource, "dataset/ds/object/y");
            assert_eq!(l, vec![later]);
        }
        other => return Err(format!("expected conflict, got {other:?}").into()),
    }
    // Nothing changed, and the refusal was recorded.
    assert_eq!(e.state("x").await?, Some((b"x1".to_vec(), Metadata::new())));
    assert_eq!(
        e.state("y").await?,
        Some((b"someone else".to_vec(), Metadata::new()))
    );
    let reverts = e.revert_events().await?;
    assert_eq!(reverts.len(), 1);
    assert!(!reverts[0].event.outcome.is_ok());
    assert_eq!(reverts[0].event.resource, "task/T");

    let r = e.reverter.revert_task("T", admin(), true).await?;
    assert!(r.forced);
    assert_eq!(e.state("x").await?, None);
    assert_eq!(e.state("y").await?, None);
    Ok(())
}

#[tokio::test]
async fn revert_fails_cleanly_when_retention_removed_the_before_state() -> Result {
    let e = env().await?;
    e.put(None, "a", b"old", None).await?;
    let overwrite = e.put(None, "a", b"new", None).await?;
    let policy = RetentionPolicy {
        keep_old_versions_for: std::time::Duration::ZERO,
        gc_min_age: std::time::Duration::ZERO,
    };
    e.store.apply_retention(&policy, Actor::daemon()).await?;
    match e.reverter.revert_event(overwrite, admin(), false).await {
        Err(RevertError::Store(StoreError::Purged { version, .. })) => {
            assert_eq!(version, Version(1))
        }
        other => return Err(format!("expected purged, got {other:?}").into()),
    }
    assert_eq!(
        e.state("a").await?,
        Some((b"new".to_vec(), Metadata::new()))
    );
    Ok(())
}
