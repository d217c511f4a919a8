//! Revert: restore the before-state recorded by data-change events.
//!
//! A data-change event (allowed, outcome `ok`, resource
//! `dataset/<id>/object/<key>`, `after_version` set) names the version the
//! object had before (`before_version`, `None` if it did not exist) and the
//! version it created. Reverting it means making the content and metadata of
//! `before_version` current again as a new version; if the object did not
//! exist before, or `before_version` is a deletion, the object is deleted; a
//! delete is undone by restoring the version it deleted.
//!
//! Steps of [`Reverter::revert_event`]:
//! 1. load the event and check it is a revertible data change;
//! 2. restore through [`Backend::restore_version`] with compare-and-set on
//!    the event's `after_version` (or unconditionally when forced): a later
//!    change to the object makes this a conflict, checked atomically with the
//!    write, and the refused attempt is itself recorded as a failed event;
//! 3. the restore records a `data.object.revert` event whose details name the
//!    reverted event and whether it was forced.
//!
//! [`Reverter::revert_task`] reverts every data change of a task at once: per
//! object, back to the before-state of the task's first change to it,
//! expecting the after-version of the task's last change. It checks every
//! object first and refuses the whole task (recording the refusal) if any
//! object was changed later, unless forced.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{
    Actor, AuditError, AuditEvent, AuditFilter, AuditStore, Decision, EventId, Outcome,
    StoredEvent, ops,
};
use crate::store::{
    Backend, DatasetId, Expect, ObjectKey, StoreError, Version, parse_object_resource,
};

/// Errors of revert.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    /// No such event.
    #[error("revert: event {0} not found")]
    EventNotFound(EventId),
    /// The event is not a data change that can be reverted.
    #[error("revert: event {id} cannot be reverted: {reason}")]
    NotRevertible {
        /// The event.
        id: EventId,
        /// Why.
        reason: &'static str,
    },
    /// The task made no data changes.
    #[error("revert: task {0} made no data changes")]
    NothingToRevert(String),
    /// A later change touched the object; use force to revert anyway.
    #[error(
        "revert: {resource} changed after the reverted change (expected version {expected}, now {}; later events {later:?}); use force to revert anyway",
        current.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
    )]
    Conflict {
        /// The object.
        resource: String,
        /// The version the reverted change left.
        expected: Version,
        /// The current version.
        current: Option<Version>,
        /// Later events that changed it.
        later: Vec<EventId>,
    },
    /// The store failed (including: the before-version was removed by retention).
    #[error("revert: {0}")]
    Store(#[from] StoreError),
    /// The audit store failed.
    #[error("revert: {0}")]
    Audit(#[from] AuditError),
}

/// One object a revert restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertedObject {
    /// The dataset.
    pub dataset: DatasetId,
    /// The key.
    pub key: ObjectKey,
    /// The version whose state was restored (None: the object was deleted).
    pub restored: Option<Version>,
    /// The object's version after the revert.
    pub new_version: Version,
    /// The events reverted on this object.
    pub reverted_events: Vec<EventId>,
    /// The `data.object.revert` event recording it.
    pub event_id: EventId,
}

/// The result of a revert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertReport {
    /// Objects restored.
    pub objects: Vec<RevertedObject>,
    /// Whether conflicts were overridden.
    pub forced: bool,
}

/// Reverts events through a backend; every revert is audited.
#[derive(Clone)]
pub struct Reverter {
    audit: AuditStore,
    backend: Arc<dyn Backend>,
}

/// A data change, parsed from an event.
struct ChangeEvent {
    id: EventId,
    dataset: DatasetId,
    key: ObjectKey,
    resource: String,
    before: Option<Version>,
    after: Version,
}

fn as_change(e: &StoredEvent) -> Result<ChangeEvent, &'static str> {
    let ev = &e.event;
    if ev.decision != Decision::Allowed || !ev.outcome.is_ok() {
        return Err("it did not change anything (denied or failed)");
    }
    let (dataset, key) = parse_object_resource(&ev.resource).ok_or("it is not about an object")?;
    let after = ev.after_version.ok_or("it records no version change")?;
    if ev.before_version == Some(after) {
        return Err("it changed nothing");
    }
    Ok(ChangeEvent {
        id: e.id,
        dataset,
        key,
        resource: ev.resource.clone(),
        before: ev.before_version.map(Version),
        after: Version(after),
    })
}

impl Reverter {
    /// A reverter over `backend`, reading events from `audit`.
    pub fn new(audit: AuditStore, backend: Arc<dyn Backend>) -> Reverter {
        Reverter { audit, backend }
    }

    /// Reverts one event (steps in the module doc). `actor` is who asked
    /// (usually an admin); `force` overrides a conflict.
    ///
    /// # Errors
    /// [`RevertError::EventNotFound`], [`RevertError::NotRevertible`],
    /// [`RevertError::Conflict`] (recorded as a failed revert event),
    /// [`RevertError::Store`] (e.g. the before-version was removed by retention).
    pub async fn revert_event(
        &self,
        id: EventId,
        actor: Actor,
        force: bool,
    ) -> Result<RevertReport, RevertError> {
        let stored = self
            .audit
            .get(id)
            .await?
            .ok_or(RevertError::EventNotFound(id))?;
        let change =
            as_change(&stored).map_err(|reason| RevertError::NotRevertible { id, reason })?;
        let event = AuditEvent::new(actor, ops::OBJECT_REVERT, change.resource.clone())
            .with_details(serde_json::json!({ "reverts_event": id, "forced": force }));
        let expect = if force {
            Expect::Any
        } else {
            Expect::Version(change.after)
        };
        let done = self
            .backend
            .restore_version(event, &change.dataset, &change.key, change.before, expect)
            .await;
        match done {
            Ok(a) => Ok(RevertReport {
                objects: vec![RevertedObject {
                    dataset: change.dataset,
                    key: change.key,
                    restored: change.before,
                    new_version: a.value.version,
                    reverted_events: vec![id],
                    event_id: a.event_id,
                }],
                forced: force,
            }),
            Err(StoreError::Conflict { current, .. }) => Err(RevertError::Conflict {
                later: self.later_changes(&change.resource, id).await?,
                resource: change.resource,
                expected: change.after,
                current,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Reverts every data change of `task_id` (see the module doc).
    ///
    /// # Errors
    /// [`RevertError::NothingToRevert`], [`RevertError::Conflict`] (nothing
    /// was changed; the refusal is recorded), [`RevertError::Store`].
    pub async fn revert_task(
        &self,
        task_id: &str,
        actor: Actor,
        force: bool,
    ) -> Result<RevertReport, RevertError> {
        let events = self
            .audit
            .query(&AuditFilter {
                task_id: Some(task_id.to_owned()),
                ..AuditFilter::default()
            })
            .await?;
        // Per object, in id order: (first change, last change, all ids).
        let mut per_object: BTreeMap<String, (ChangeEvent, Version, Vec<EventId>)> =
            BTreeMap::new();
        for e in &events {
            let Ok(c) = as_change(e) else { continue };
            match per_object.get_mut(&c.resource) {
                Some((_, last, ids)) => {
                    *last = c.after;
                    ids.push(c.id);
                }
                None => {
                    let (after, id) = (c.after, c.id);
                    per_object.insert(c.resource.clone(), (c, after, vec![id]));
                }
            }
        }
        if per_object.is_empty() {
            return Err(RevertError::NothingToRevert(task_id.to_owned()));
        }
        if !force {
            for (first, last, ids) in per_object.values() {
                let current = self
                    .backend
                    .current_version(&first.dataset, &first.key)
                    .await?;
                if current != Some(*last) {
                    let later = self
                        .later_changes(&first.resource, ids.last().copied().unwrap_or(first.id))
                        .await?;
                    let err = RevertError::Conflict {
                        resource: first.resource.clone(),
                        expected: *last,
                        current,
                        later,
                    };
                    let mut refusal = AuditEvent::new(
                        actor.clone(),
                        ops::OBJECT_REVERT,
                        format!("task/{task_id}"),
                    )
                    .with_details(serde_json::json!({ "reverts_task": task_id, "forced": false }));
                    refusal.outcome = Outcome::Error(err.to_string());
                    self.audit.record(refusal).await?;
                    return Err(err);
                }
            }
        }
        let mut report = RevertReport {
            objects: Vec::new(),
            forced: force,
        };
        for (first, last, ids) in per_object.into_values() {
            let event = AuditEvent::new(actor.clone(), ops::OBJECT_REVERT, first.resource.clone()).with_details(
                serde_json::json!({ "reverts_task": task_id, "reverts_events": ids, "forced": force }),
            );
            let expect = if force {
                Expect::Any
            } else {
                Expect::Version(last)
            };
            let done = self
                .backend
                .restore_version(event, &first.dataset, &first.key, first.before, expect)
                .await;
            match done {
                Ok(a) => report.objects.push(RevertedObject {
                    dataset: first.dataset,
                    key: first.key,
                    restored: first.before,
                    new_version: a.value.version,
                    reverted_events: ids,
                    event_id: a.event_id,
                }),
                // Changed between the check and the restore.
                Err(StoreError::Conflict { current, .. }) => {
                    return Err(RevertError::Conflict {
                        later: self
                            .later_changes(&first.resource, ids.last().copied().unwrap_or(first.id))
                            .await?,
                        resource: first.resource,
                        expected: last,
                        current,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
    }

    /// Data changes to `resource` after event `after`.
    async fn later_changes(
        &self,
        resource: &str,
        after: EventId,
    ) -> Result<Vec<EventId>, RevertError> {
        let events = self
            .audit
            .query(&AuditFilter {
                resource: Some(resource.to_owned()),
                after_id: Some(after),
                limit: Some(100),
                ..AuditFilter::default()
            })
            .await?;
        Ok(events
            .iter()
            .filter(|e| as_change(e).is_ok())
            .map(|e| e.id)
            .collect())
    }
}
