//! The audit store: hash-chained events in `hutch.db`, committed in groups.
//!
//! Every event gets a monotonically increasing id (1, 2, 3, … without gaps)
//! and `hash = sha256(canonical encoding of every field, prev_hash)`, where
//! `prev_hash` is the previous event's hash (64 zeros for the first). See
//! `docs/audit.md` for the encoding and what [`AuditStore::verify`] reports.
//!
//! # Group commit
//! One writer task, on a thread of its own, owns all audit writes (see
//! `writer.rs` for its steps).
//! [`AuditStore::record`] queues the event on a bounded channel (a full queue
//! makes callers wait: backpressure) and awaits a oneshot that fires only
//! after the batch holding the event has COMMITted and the WAL holding that
//! COMMIT has been synced (the writer commits with `synchronous=NORMAL` and a
//! syncer task runs the fdatasync while the next batch is built, one sync
//! for every batch committed before it started). So an `Ok(id)` means the
//! event is durable.
//!
//! # Data changes and their events commit together
//! The built-in store and the audit store share the database. A data change
//! is handed to the writer together with its event
//! ([`AuditStore::record_with`]); the writer runs the change inside the batch
//! transaction (under a savepoint), fills in the event's before/after
//! versions and outcome from it, and commits both at once. Therefore no
//! acknowledged change is unaudited and no event claims a change that did
//! not happen: either both are in the COMMIT or neither is. Blob content is
//! written (content-addressed, fsynced) before the transaction; a blob whose
//! transaction failed is unreferenced and garbage collection removes it.
//! A remote backend without access to this transaction would instead record
//! the event with the intended change first and make its write idempotent.
//!
//! Open exactly one [`AuditStore`] per database in a process; the writer
//! re-reads the chain head inside each transaction, so another process
//! writing the same file cannot fork the chain either.

mod event;
mod rows;
mod writer;

#[cfg(test)]
mod tests;

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub use event::{
    Actor, ActorKind, AuditEvent, Decision, EventId, GENESIS_HASH, Outcome, StoredEvent, now_us,
    ops,
};
pub use writer::Mutated;

use crate::db::Db;
use event::HashInput;
pub(crate) use rows::{Deferred, DeferredArg, JsonRows};
pub(crate) use writer::AfterBatch;

use writer::{ErasedMutation, Job, Writer};

/// Errors of the audit store.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A database operation failed.
    #[error("audit {op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// A batch failed; the original error was reported to another caller.
    #[error("audit batch failed: {0}")]
    BatchFailed(String),
    /// The WAL holding the event's COMMIT could not be synced: the event is
    /// recorded but may not survive a power loss.
    #[error("audit sync wal: {0}")]
    Sync(String),
    /// The writer task is gone.
    #[error("audit writer stopped")]
    WriterStopped,
    /// The writer's thread could not be started.
    #[error("audit writer thread: {0}")]
    WriterStart(#[source] std::io::Error),
    /// Writing an export failed.
    #[error("audit export write: {0}")]
    Export(#[source] std::io::Error),
    /// A stored row could not be decoded.
    #[error("audit event {id}: corrupt field {field}")]
    Corrupt {
        /// The event id.
        id: i64,
        /// The field.
        field: &'static str,
    },
    /// `record_with` was given no event or more than one.
    #[error("audit record_with needs exactly one event")]
    BadRequest,
}

impl AuditError {
    /// A copy for the other callers of a failed batch.
    fn duplicate(&self) -> AuditError {
        AuditError::BatchFailed(self.to_string())
    }
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The most events in one transaction.
    pub max_batch: usize,
    /// How many jobs may wait for the writer before callers block.
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_batch: 8192,
            queue: 16384,
        }
    }
}

/// Which events to query or export. Every set field must match (AND).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Actor plugin id.
    pub plugin_id: Option<String>,
    /// Actor user (acting user for plugins).
    pub user: Option<String>,
    /// Task id.
    pub task_id: Option<String>,
    /// Exact resource.
    pub resource: Option<String>,
    /// Resource prefix, e.g. `dataset/ds_1/`.
    pub resource_prefix: Option<String>,
    /// Exact operation.
    pub operation: Option<String>,
    /// Allowed or denied.
    pub decision: Option<Decision>,
    /// Events at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Events before this time (µs since the epoch).
    pub until_us: Option<i64>,
    /// Events with an id greater than this (paging).
    pub after_id: Option<EventId>,
    /// At most this many events (default: all).
    pub limit: Option<u32>,
}

/// One problem [`AuditStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifyProblem {
    /// The event's content no longer matches its hash.
    Edited {
        /// The event.
        id: EventId,
    },
    /// Events before `id` are missing (ids `from..=to`).
    Deleted {
        /// The event after the gap.
        id: EventId,
        /// First missing id.
        from: i64,
        /// Last missing id.
        to: i64,
    },
    /// The event's `prev_hash` names event `follows`, which is not the event before it.
    Reordered {
        /// The event.
        id: EventId,
        /// The event whose hash it chains to.
        follows: EventId,
    },
    /// The event's `prev_hash` matches no stored event, ids have no gap:
    /// a predecessor was replaced or deleted and the ids renumbered.
    ChainBroken {
        /// The event.
        id: EventId,
    },
    /// Events after `last` are missing: the head recorded `head`.
    Truncated {
        /// The last event present.
        last: i64,
        /// The last event the head records.
        head: i64,
    },
    /// The event is intact but no key range of `audit_keys` covers it for
    /// `field` (`plugin`, `user`, `task`, or `root` for its resource):
    /// queries by that field would not show it (the key table was edited).
    Unlisted {
        /// The event.
        id: EventId,
        /// `plugin`, `user`, `task` or `root`.
        field: String,
        /// The event's value of that field.
        value: String,
    },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyProblem::Edited { id } => {
                write!(f, "event {id}: edited (content does not match its hash)")
            }
            VerifyProblem::Deleted { id, from, to } => {
                write!(f, "event {id}: events {from}..={to} before it were deleted")
            }
            VerifyProblem::Reordered { id, follows } => {
                write!(f, "event {id}: reordered (it chains to event {follows})")
            }
            VerifyProblem::ChainBroken { id } => {
                write!(
                    f,
                    "event {id}: chain broken (its predecessor was replaced or deleted)"
                )
            }
            VerifyProblem::Truncated { last, head } => {
                write!(
                    f,
                    "events {}..={head} after event {last} were deleted",
                    last + 1
                )
            }
            VerifyProblem::Unlisted { id, field, value } => {
                write!(
                    f,
                    "event {id}: missing from the {field} key ranges (audit_keys edited): \
                     queries by {field} {value:?} do not show it"
                )
            }
        }
    }
}

/// The result of [`AuditStore::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Events checked.
    pub checked: u64,
    /// Id of the last event checked (0 if none).
    pub last_id: i64,
    /// Problems found: the chain's in id order, then events missing from
    /// the key ranges (at most [`MAX_VERIFY_PROBLEMS`]).
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// Whether the chain is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verify stops collecting problems after this many.
pub const MAX_VERIFY_PROBLEMS: usize = 100;

/// Takes the rows deferring changes left for later (see
/// [`AuditStore::writer_state`]) as one statement, `None` if there are none;
/// the writer runs it before any SQL that may read those rows, else with the
/// batch's events in its last round trip. It is given the writer's current
/// epoch (see [`WriterShared::epoch`]).
pub(crate) type FlushHook = Arc<dyn Fn(u64) -> Option<Deferred> + Send + Sync>;

/// What the writer task and the store handles share.
pub(crate) struct WriterShared {
    /// Bumped by the writer whenever state a change planned in memory may be
    /// stale: a batch was rolled back, or the chain head moved under the
    /// writer (another process wrote the database).
    pub epoch: AtomicU64,
    /// Run before SQL that may read deferred rows (see [`FlushHook`]).
    pub hooks: Mutex<Vec<FlushHook>>,
    /// The built-in store's writer-side state, shared by every store on
    /// this audit store (see [`AuditStore::writer_state`]).
    slot: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for WriterShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterShared")
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl WriterShared {
    pub(crate) fn hooks(&self) -> Vec<FlushHook> {
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The audit store handle. Cheap to clone; all clones share one writer task.
#[derive(Debug, Clone)]
pub struct AuditStore {
    db: Db,
    tx: mpsc::Sender<Job>,
    shared: Arc<WriterShared>,
}

impl AuditStore {
    /// Starts the writer task on a thread of its own (`hutch-audit-writer`,
    /// with a single-threaded tokio runtime), so that its turns between
    /// SQL round trips never wait behind the callers' tasks: with the
    /// writer on the callers' runtime, 1 KiB puts at 64 callers through
    /// the plugin socket reached 13 700 puts/s, on its own thread 16 300
    /// (`proxy` bench, `docs/api.md` "Session 10"). The thread ends when the
    /// last handle is dropped and every queued job is answered.
    ///
    /// # Errors
    /// [`AuditError::WriterStart`] if the thread or its runtime cannot be
    /// created.
    pub async fn open(db: &Db, config: AuditConfig) -> Result<AuditStore, AuditError> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let shared = Arc::new(WriterShared {
            epoch: AtomicU64::new(0),
            hooks: Mutex::new(Vec::new()),
            slot: OnceLock::new(),
        });
        let writer = Writer {
            pool: db.pool().clone(),
            rx,
            max_batch: config.max_batch.max(1),
            shared: shared.clone(),
            wal_path: sibling(db.path(), "-wal"),
            shm_path: sibling(db.path(), "-shm"),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AuditError::WriterStart)?;
        std::thread::Builder::new()
            .name("hutch-audit-writer".into())
            .spawn(move || runtime.block_on(writer.run()))
            .map_err(AuditError::WriterStart)?;
        Ok(AuditStore {
            db: db.clone(),
            tx,
            shared,
        })
    }

    /// The writer's epoch: it changes whenever in-memory state planned by
    /// changes may be stale (a rolled-back batch, a foreign write).
    pub(crate) fn writer_epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// The one `T` shared by every user of this audit store (and its writer
    /// task), created by `init` on first use together with its flush hook.
    /// `None` if the slot holds another type.
    pub(crate) fn writer_state<T: Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> (Arc<T>, FlushHook),
    ) -> Option<Arc<T>> {
        let any = self.shared.slot.get_or_init(|| {
            let (state, hook) = init();
            self.shared
                .hooks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(hook);
            state
        });
        any.clone().downcast::<T>().ok()
    }

    /// The database this store writes to.
    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn submit(
        &self,
        events: Vec<AuditEvent>,
        mutation: Option<ErasedMutation>,
        savepoint: bool,
        defers: bool,
        after: Option<AfterBatch>,
    ) -> Result<(Vec<EventId>, Option<Box<dyn Any + Send>>), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                events,
                mutation,
                savepoint,
                defers,
                after,
                reply,
            })
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        rx.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Records one event; resolves after the transaction holding it has
    /// durably committed.
    ///
    /// # Errors
    /// [`AuditError::Db`] / [`AuditError::BatchFailed`] if the batch could not
    /// be committed (then the event was not recorded).
    ///
    /// # Cancel safety
    /// Once the event is queued, dropping the future does not withdraw it: it
    /// is committed anyway, the caller just does not learn its id.
    pub async fn record(&self, event: AuditEvent) -> Result<EventId, AuditError> {
        let (ids, _) = self.submit(vec![event], None, false, false, None).await?;
        ids.first().copied().ok_or(AuditError::WriterStopped)
    }

    /// Records several events with consecutive ids in one transaction.
    ///
    /// # Errors
    /// As [`AuditStore::record`]; all or none are recorded.
    pub async fn record_batch(&self, events: Vec<AuditEvent>) -> Result<Vec<EventId>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.submit(events, None, false, false, None).await?.0)
    }

    /// Records `event` together with the data change `change`, in one
    /// transaction (see the module doc). `change` runs on the writer's
    /// connection inside that transaction; its [`Mutated`] report fills in
    /// the event's versions and, if it failed, the outcome (the change is then
    /// rolled back but the event is still recorded). Returns the event id and
    /// the change's value after COMMIT.
    ///
    /// `change` must only touch the database through the connection it is
    /// given and should be quick: it runs inside the writer.
    ///
    /// # Errors
    /// As [`AuditStore::record`]: on error neither the change nor the event
    /// was committed.
    ///
    /// # Cancel safety
    /// As [`AuditStore::record`]: once queued, the change and its event commit.
    pub async fn record_with<T, F>(
        &self,
        event: AuditEvent,
        change: F,
    ) -> Result<(EventId, T), AuditError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Mutated<T>> + Send + 'static,
    {
        self.record_change(
            event,
            move |conn| Box::pin(async move { Ok(change(conn).await) }),
            true,
            false,
            None,
        )
        .await
    }

    /// [`AuditStore::record_with`] for the built-in store's hot path:
    /// `change` may abort the whole batch with `Err` (after a partial write);
    /// without `savepoint` it must have written nothing when it reports
    /// failure (no `SAVEPOINT`/`RELEASE` round trips); `after` runs in the
    /// writer once the batch ended (`true`: committed), before the caller
    /// is answered, even if the caller went away. With `defers`, `change` may
    /// leave its rows to a flush hook registered through
    /// [`AuditStore::writer_state`] (the writer runs the hooks before any
    /// other change and before the batch's events are inserted).
    pub(crate) async fn record_change<T, F>(
        &self,
        event: AuditEvent,
        change: F,
        savepoint: bool,
        defers: bool,
        after: Option<AfterBatch>,
    ) -> Result<(EventId, T), AuditError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut SqliteConnection,
            ) -> BoxFuture<'c, Result<Mutated<T>, AuditError>>
            + Send
            + 'static,
    {
        let erased: ErasedMutation = Box::new(move |conn| {
            Box::pin(async move {
                let m = change(conn).await?;
                Ok(Mutated {
                    value: Box::new(m.value) as Box<dyn Any + Send>,
                    failed: m.failed,
                    before_version: m.before_version,
                    after_version: m.after_version,
                })
            })
        });
        let (ids, value) = self
            .submit(vec![event], Some(erased), savepoint, defers, after)
            .await?;
        let id = ids.first().copied().ok_or(AuditError::BadRequest)?;
        let value = value
            .and_then(|v| v.downcast::<T>().ok())
            .ok_or(AuditError::BadRequest)?;
        Ok((id, *value))
    }

    /// One event by id.
    ///
    /// # Errors
    /// [`AuditError::Db`] if the query fails.
    pub async fn get(&self, id: EventId) -> Result<Option<StoredEvent>, AuditError> {
        let row: Option<Row> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_EVENTS} WHERE id = ?")))
                .bind(id.0)
                .fetch_optional(self.db.pool())
                .await
                .map_err(|source| AuditError::Db {
                    op: "get event",
                    source,
                })?;
        row.map(Row::into_event).transpose()
    }

    /// Events matching `filter`, in id order.
    ///
    /// # Errors
    /// [`AuditError::Db`] if the query fails.
    pub async fn query(&self, filter: &AuditFilter) -> Result<Vec<StoredEvent>, AuditError> {
        let rows: Vec<Row> = query_sql(SELECT_COLUMNS, filter)
            .build_query_as()
            .fetch_all(self.db.pool())
            .await
            .map_err(|source| AuditError::Db {
                op: "query events",
                source,
            })?;
        rows.into_iter().map(Row::into_event).collect()
    }

    /// Writes the events matching `filter` as JSON lines (one [`StoredEvent`]
    /// per line plus a readable `ts`), paging through the table so memory
    /// stays bounded. Returns the number of events written.
    ///
    /// # Errors
    /// [`AuditError::Db`] if a query fails, [`AuditError::Export`] if writing fails.
    pub async fn export_jsonl<W: AsyncWrite + Unpin>(
        &self,
        filter: &AuditFilter,
        out: &mut W,
    ) -> Result<u64, AuditError> {
        const PAGE: u32 = 1000;
        let mut page_filter = filter.clone();
        let mut remaining = filter.limit.map(u64::from);
        let mut written = 0u64;
        loop {
            let page = match remaining {
                Some(0) => break,
                Some(r) => PAGE.min(u32::try_from(r).unwrap_or(PAGE)),
                None => PAGE,
            };
            page_filter.limit = Some(page);
            let events = self.query(&page_filter).await?;
            let Some(last) = events.last() else { break };
            page_filter.after_id = Some(last.id);
            let mut buf = Vec::new();
            for e in &events {
                let line = ExportLine {
                    ts: humantime::format_rfc3339_micros(
                        UNIX_EPOCH
                            + Duration::from_micros(u64::try_from(e.event.ts_us).unwrap_or(0)),
                    )
                    .to_string(),
                    event: e,
                };
                serde_json::to_writer(&mut buf, &line).map_err(|e| AuditError::Export(e.into()))?;
                buf.push(b'\n');
            }
            out.write_all(&buf).await.map_err(AuditError::Export)?;
            written += events.len() as u64;
            remaining = remaining.map(|r| r.saturating_sub(events.len() as u64));
            if events.len() < page as usize {
                break;
            }
        }
        out.flush().await.map_err(AuditError::Export)?;
        Ok(written)
    }

    /// Re-computes every event's hash and checks the chain links, the id
    /// sequence and the recorded head; reports where it is broken and how
    /// (edited, deleted, reordered, truncated). Reads in pages; memory stays
    /// bounded.
    ///
    /// # Errors
    /// [`AuditError::Db`] if a query fails.
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        const PAGE: i64 = 5000;
        let pool = self.db.pool();
        let dberr = |op: &'static str| move |source| AuditError::Db { op, source };
        let anchor: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT last_purged_id, CAST(last_purged_hash AS BLOB) FROM audit_anchor \
             WHERE singleton = 1",
        )
        .fetch_optional(pool)
        .await
        .map_err(dberr("read anchor"))?;
        let (mut prev_id, mut expected_prev) =
            anchor.unwrap_or_else(|| (0, event::GENESIS_BYTES.to_vec()));
        let mut report = VerifyReport::default();
        let problem = |report: &mut VerifyReport, p: VerifyProblem| {
            if report.problems.len() < MAX_VERIFY_PROBLEMS {
                report.problems.push(p);
            }
        };
        // The head first, and only the events up to it: events committed
        // while this runs (the head and its event commit together) are past
        // it, so a busy daemon is not reported as truncated.
        let head: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT last_id, CAST(last_hash AS BLOB) FROM audit_head WHERE singleton = 1",
        )
        .fetch_optional(pool)
        .await
        .map_err(dberr("read head"))?;
        let upto = head.as_ref().map_or(i64::MAX, |(id, _)| *id);
        let mut after = i64::MIN;
        loop {
            let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_EVENTS} WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"
            )))
            .bind(after)
            .bind(upto)
            .bind(PAGE)
            .fetch_all(pool)
            .await
            .map_err(dberr("read events"))?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let n = rows.len();
            for row in rows {
                report.checked += 1;
                let self_ok = row.recompute_hash()[..] == row.hash[..];
                if row.prev_hash != expected_prev {
                    let gap = row.id != prev_id + 1;
                    let owner: Option<i64> =
                        sqlx::query_scalar("SELECT id FROM audit_events WHERE hash = ? LIMIT 1")
                            .bind(&row.prev_hash)
                            .fetch_optional(pool)
                            .await
                            .map_err(dberr("find chained event"))?;
                    match owner {
                        Some(o) if o != prev_id => problem(
                            &mut report,
                            VerifyProblem::Reordered {
                                id: EventId(row.id),
                                follows: EventId(o),
                            },
                        ),
                        _ if gap => problem(
                            &mut report,
                            VerifyProblem::Deleted {
                                id: EventId(row.id),
                                from: prev_id + 1,
                                to: row.id - 1,
                            },
                        ),
                        _ if !self_ok => problem(
                            &mut report,
                            VerifyProblem::Edited {
                                id: EventId(row.id),
                            },
                        ),
                        _ => problem(
                            &mut report,
                            VerifyProblem::ChainBroken {
                                id: EventId(row.id),
                            },
                        ),
                    }
                } else if !self_ok {
                    problem(
                        &mut report,
                        VerifyProblem::Edited {
                            id: EventId(row.id),
                        },
                    );
                } else if row.id != prev_id + 1 {
                    problem(
                        &mut report,
                        VerifyProblem::ChainBroken {
                            id: EventId(row.id),
                        },
                    );
                }
                prev_id = row.id;
                expected_prev = row.hash;
            }
            if n < PAGE as usize {
                break;
            }
        }
        report.last_id = prev_id;
        if let Some((head_id, head_hash)) = head {
            if head_id > prev_id {
                problem(
                    &mut report,
                    VerifyProblem::Truncated {
                        last: prev_id,
                        head: head_id,
                    },
                );
            } else if head_id == prev_id && head_hash != expected_prev {
                problem(
                    &mut report,
                    VerifyProblem::Edited {
                        id: EventId(prev_id),
                    },
                );
            }
        }
        // The key ranges queries by plugin, user, task and resource go
        // through are not part of the chain: every event up to the head
        // must be covered by a range of its value (one index seek per
        // event). The value is the dictionary text (an event whose text is
        // missing from the dictionary failed its hash above), or the root
        // of its resource.
        let text = |column: &str| {
            format!(
                "SELECT e.id AS id, t.text AS value FROM audit_events e CROSS JOIN audit_texts t \
                 WHERE e.id <= ? AND t.id = e.{column}"
            )
        };
        for (field, values) in [
            (KEY_PLUGIN, text("plugin_ref")),
            (KEY_USER, text("user_ref")),
            (KEY_TASK, text("task_ref")),
            (
                KEY_ROOT,
                format!("SELECT id, {ROOT_SQL} AS value FROM audit_events WHERE id <= ?"),
            ),
        ] {
            let missing: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT x.id, x.value FROM ({values}) x \
                 WHERE COALESCE((SELECT k.last_id FROM audit_keys k WHERE k.field = ? \
                 AND k.value = x.value AND k.first_id <= x.id \
                 ORDER BY k.first_id DESC LIMIT 1), -1) < x.id \
                 ORDER BY x.id LIMIT ?"
            )))
            .bind(upto)
            .bind(field)
            .bind(MAX_VERIFY_PROBLEMS as i64)
            .fetch_all(pool)
            .await
            .map_err(dberr("check key ranges"))?;
            for (id, value) in missing {
                problem(
                    &mut report,
                    VerifyProblem::Unlisted {
                        id: EventId(id),
                        field: field.to_owned(),
                        value,
                    },
                );
            }
        }
        Ok(report)
    }

    /// Retention: deletes the events older than `cutoff_us` (a prefix of the
    /// chain: every id up to the newest such event), remembering the last
    /// purged event's id and hash as the chain's new anchor, and records an
    /// `audit.retention` event by `actor` in the same transaction.
    /// Returns that event's id and how many events were purged.
    ///
    /// # Errors
    /// As [`AuditStore::record`].
    pub async fn purge_before(
        &self,
        cutoff_us: i64,
        actor: Actor,
    ) -> Result<(EventId, u64), AuditError> {
        let event = AuditEvent::new(actor, ops::AUDIT_RETENTION, "audit")
            .with_details(serde_json::json!({ "cutoff_us": cutoff_us }));
        self.record_with(event, move |conn| {
            Box::pin(async move {
                match purge(conn, cutoff_us).await {
                    Ok(n) => Mutated {
                        value: n,
                        failed: None,
                        before_version: None,
                        after_version: None,
                    },
                    Err(e) => Mutated {
                        value: 0,
                        failed: Some(e.to_string()),
                        before_version: None,
                        after_version: None,
                    },
                }
            })
        })
        .await
    }
}

/// The SELECT of [`AuditStore::query`], after `head` (the column list,
/// or `EXPLAIN QUERY PLAN` and the list).
fn query_sql(head: &str, filter: &AuditFilter) -> QueryBuilder<Sqlite> {
    // Every lookup goes through `audit_keys` (see
    // `api/migrations/0005_audit_keys.sql` and `0009_audit_resource_roots.sql`):
    // a resource by its root, else the task, plugin or user (in that order).
    // The outer loop walks that value's ranges in id order, the inner one
    // the events of each range by id, and the other filters apply to those.
    // A resource prefix shorter than a root (fewer than two '/') matches
    // every root that starts with it: the events of those roots' ranges.
    let prefix_roots = filter
        .resource_prefix
        .as_ref()
        .filter(|p| filter.resource.is_none() && p.matches('/').count() < 2);
    let key = if let Some(r) = &filter.resource {
        Some((KEY_ROOT, resource_root(r).to_owned()))
    } else if let Some(p) = &filter.resource_prefix {
        prefix_roots
            .is_none()
            .then(|| (KEY_ROOT, resource_root(p).to_owned()))
    } else {
        [
            (KEY_TASK, &filter.task_id),
            (KEY_PLUGIN, &filter.plugin_id),
            (KEY_USER, &filter.user),
        ]
        .into_iter()
        .find_map(|(f, v)| v.as_ref().map(|v| (f, v.clone())))
    };
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(head);
    match (&key, prefix_roots) {
        // CROSS JOIN: SQLite keeps the written order (keys outer), which
        // also yields the rows in id order without a sort.
        (Some((field, value)), _) => {
            qb.push(" FROM audit_keys CROSS JOIN audit_events_full WHERE field = ")
                .push_bind(*field)
                .push(" AND value = ")
                .push_bind(value.clone())
                .push(" AND id >= first_id AND id <= last_id");
            if let Some(after) = filter.after_id {
                // Start at the range holding `after` (one index seek),
                // not at the value's first range.
                qb.push(
                    " AND first_id >= COALESCE((SELECT MAX(k.first_id) FROM audit_keys k \
                     WHERE k.field = ",
                )
                .push_bind(*field)
                .push(" AND k.value = ")
                .push_bind(value.clone())
                .push(" AND k.first_id <= ")
                .push_bind(after.0)
                .push("), 0)");
            }
        }
        (None, Some(p)) => {
            // Ranges of several roots may overlap: the ids as a set.
            qb.push(
                " FROM audit_events_full WHERE id IN (SELECT e.id FROM audit_keys k \
                 CROSS JOIN audit_events e WHERE k.field = ",
            )
            .push_bind(KEY_ROOT)
            .push(" AND k.value >= ")
            .push_bind(p.clone())
            .push(" AND k.value < ")
            .push_bind(format!("{p}\u{10FFFF}"))
            .push(" AND e.id >= k.first_id AND e.id <= k.last_id");
            if let Some(after) = filter.after_id {
                qb.push(" AND e.id > ").push_bind(after.0);
            }
            qb.push(")");
        }
        (None, None) => {
            qb.push(" FROM audit_events_full WHERE 1 = 1");
        }
    }
    let eq = |qb: &mut QueryBuilder<Sqlite>, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            qb.push(format!(" AND {col} = ")).push_bind(v.clone());
        }
    };
    // Dictionary texts (see `api/migrations/0008_audit_texts.sql`): one
    // lookup of the text's id, then integer comparisons (a text not in the
    // dictionary is NULL: no event matches).
    let text_eq = |qb: &mut QueryBuilder<Sqlite>, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            qb.push(format!(
                " AND {col} = (SELECT t.id FROM audit_texts t WHERE t.text = "
            ))
            .push_bind(v.clone())
            .push(")");
        }
    };
    text_eq(&mut qb, "plugin_ref", &filter.plugin_id);
    text_eq(&mut qb, "user_ref", &filter.user);
    text_eq(&mut qb, "task_ref", &filter.task_id);
    eq(&mut qb, "resource", &filter.resource);
    text_eq(&mut qb, "operation_ref", &filter.operation);
    if let Some(p) = &filter.resource_prefix {
        // A range instead of LIKE: no escaping.
        qb.push(" AND resource >= ").push_bind(p.clone());
        qb.push(" AND resource < ")
            .push_bind(format!("{p}\u{10FFFF}"));
    }
    if let Some(d) = filter.decision {
        qb.push(" AND decision = ").push_bind(d.as_str());
    }
    if let Some(t) = filter.since_us {
        qb.push(" AND ts_us >= ").push_bind(t);
    }
    if let Some(t) = filter.until_us {
        qb.push(" AND ts_us < ").push_bind(t);
    }
    if let Some(id) = filter.after_id {
        qb.push(" AND id > ").push_bind(id.0);
    }
    qb.push(if key.is_some() {
        " ORDER BY first_id, id"
    } else {
        " ORDER BY id"
    });
    if let Some(l) = filter.limit {
        qb.push(" LIMIT ").push_bind(i64::from(l));
    }
    qb
}

/// `<path><suffix>`: the database's WAL and wal-index files.
fn sibling(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    std::path::PathBuf::from(p)
}

async fn purge(conn: &mut SqliteConnection, cutoff_us: i64) -> Result<u64, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM audit_events WHERE ts_us < ?")
        .bind(cutoff_us)
        .fetch_one(&mut *conn)
        .await?;
    let Some(last) = last else { return Ok(0) };
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT CAST(hash AS BLOB) FROM audit_events WHERE id = ?")
            .bind(last)
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query(
        "INSERT INTO audit_anchor (singleton, last_purged_id, last_purged_hash) VALUES (1, ?, ?) \
         ON CONFLICT (singleton) DO UPDATE SET last_purged_id = excluded.last_purged_id, \
         last_purged_hash = excluded.last_purged_hash",
    )
    .bind(last)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query("DELETE FROM audit_events WHERE id <= ?")
        .bind(last)
        .execute(&mut *conn)
        .await?;
    // Key ranges wholly purged (one straddling the cut stays: it finds only
    // the events still there).
    sqlx::query("DELETE FROM audit_keys WHERE last_id <= ?")
        .bind(last)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

#[derive(Serialize)]
struct ExportLine<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a StoredEvent,
}

/// The `audit_keys` field of `actor_plugin_id`.
pub(crate) const KEY_PLUGIN: &str = "plugin";
/// The `audit_keys` field of `actor_user`.
pub(crate) const KEY_USER: &str = "user";
/// The `audit_keys` field of `task_id`.
pub(crate) const KEY_TASK: &str = "task";
/// The `audit_keys` field of the resource's root ([`resource_root`]).
pub(crate) const KEY_ROOT: &str = "root";

/// The part of `resource` its `audit_keys` ranges are kept by: the text
/// before its second '/' ("dataset/<id>" for a dataset and each of its
/// objects, "task/<id>"), or all of it if it has fewer than two (see
/// `api/migrations/0009_audit_resource_roots.sql`; [`ROOT_SQL`] is the
/// same in SQL).
pub(crate) fn resource_root(resource: &str) -> &str {
    match resource.match_indices('/').nth(1) {
        Some((at, _)) => resource.get(..at).unwrap_or(resource),
        None => resource,
    }
}

/// [`resource_root`] of the column `resource`, in SQL. It works on the
/// bytes (a BLOB cast): SQLite's `substr` of a TEXT stops at a NUL
/// character, which a resource built from what a plugin sent may hold (the
/// resource of a refused call), and would make verify report the event
/// unlisted. Migration 0009 computed the same for the events before it,
/// with `substr` on the text (equal unless a NUL comes before the second
/// '/').
const ROOT_SQL: &str = "CASE WHEN instr(CAST(resource AS BLOB), X'2F') = 0 \
     OR instr(substr(CAST(resource AS BLOB), instr(CAST(resource AS BLOB), X'2F') + 1), X'2F') = 0 \
     THEN resource \
     ELSE CAST(substr(CAST(resource AS BLOB), 1, instr(CAST(resource AS BLOB), X'2F') + \
     instr(substr(CAST(resource AS BLOB), instr(CAST(resource AS BLOB), X'2F') + 1), X'2F') - 1) \
     AS TEXT) END";

const SELECT_COLUMNS: &str = "SELECT id, ts_us, actor_kind, actor_plugin_id, actor_plugin_version, \
     actor_instance, actor_user, task_id, operation, resource, decision, reason, outcome, \
     before_version, after_version, details, CAST(prev_hash AS BLOB) AS prev_hash, \
     CAST(hash AS BLOB) AS hash";

const SELECT_EVENTS: &str = "SELECT id, ts_us, actor_kind, actor_plugin_id, actor_plugin_version, \
     actor_instance, actor_user, task_id, operation, resource, decision, reason, outcome, \
     before_version, after_version, details, CAST(prev_hash AS BLOB) AS prev_hash, \
     CAST(hash AS BLOB) AS hash FROM audit_events_full";

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: i64,
    ts_us: i64,
    actor_kind: String,
    actor_plugin_id: Option<String>,
    actor_plugin_version: Option<String>,
    actor_instance: Option<String>,
    actor_user: Option<String>,
    task_id: Option<String>,
    operation: String,
    resource: String,
    decision: String,
    reason: Option<String>,
    outcome: String,
    before_version: Option<i64>,
    after_version: Option<i64>,
    details: String,
    /// 32 bytes unless tampered with (read through `CAST(.. AS BLOB)`, so
    /// a text written over it is its bytes, not an error).
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl Row {
    /// The hash of the row's stored fields (no parsing: a mangled field is
    /// just a mismatch).
    fn recompute_hash(&self) -> [u8; 32] {
        let prev_hash = event::hash_hex(&self.prev_hash);
        HashInput {
            id: self.id,
            ts_us: self.ts_us,
            actor_kind: &self.actor_kind,
            actor_plugin_id: self.actor_plugin_id.as_deref(),
            actor_plugin_version: self.actor_plugin_version.as_deref(),
            actor_instance: self.actor_instance.as_deref(),
            actor_user: self.actor_user.as_deref(),
            task_id: self.task_id.as_deref(),
            operation: &self.operation,
            resource: &self.resource,
            decision: &self.decision,
            reason: self.reason.as_deref(),
            outcome: &self.outcome,
            before_version: self.before_version,
            after_version: self.after_version,
            details: &self.details,
            prev_hash: &prev_hash,
        }
        .hash()
    }

    fn into_event(self) -> Result<StoredEvent, AuditError> {
        let id = self.id;
        let corrupt = |field| AuditError::Corrupt { id, field };
        Ok(StoredEvent {
            id: EventId(self.id),
            event: AuditEvent {
                ts_us: self.ts_us,
                actor: Actor {
                    kind: ActorKind::parse(&self.actor_kind)
                        .ok_or_else(|| corrupt("actor_kind"))?,
                    plugin_id: self.actor_plugin_id,
                    plugin_version: self.actor_plugin_version,
                    instance: self.actor_instance,
                    user: self.actor_user,
                },
                task_id: self.task_id,
                operation: self.operation,
                resource: self.resource,
                decision: Decision::parse(&self.decision).ok_or_else(|| corrupt("decision"))?,
                reason: self.reason,
                outcome: Outcome::from_stored(&self.outcome),
                before_version: self.before_version,
                after_version: self.after_version,
                details: serde_json::from_str(&self.details).map_err(|_| corrupt("details"))?,
            },
            prev_hash: event::hash_hex(&self.prev_hash),
            hash: event::hash_hex(&self.hash),
        })
    }
}
