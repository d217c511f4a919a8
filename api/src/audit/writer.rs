//! The single writer task: group commit of audit events and the data changes
//! that travel with them.
//!
//! Steps per batch (one SQLite transaction):
//! 1. take the first queued job (waiting), then every job already queued, up
//!    to `max_batch` events: whatever arrived while the previous COMMIT was
//!    syncing rides in this one;
//! 2. `BEGIN IMMEDIATE`, then re-read the chain head (so another writer on the
//!    same file cannot fork the chain);
//! 3. for each job carrying a data change: `SAVEPOINT`, run it, and `ROLLBACK TO`
//!    it when it reports failure (its event then records the error), so one
//!    failed change does not sink the batch;
//! 4. assign consecutive ids, hash-chain the events, insert them with
//!    multi-row `INSERT`s, update the head;
//! 5. `COMMIT` (durable: `synchronous=FULL`), and only then answer every
//!    caller's oneshot. If anything in 2-5 fails, the whole batch is rolled
//!    back and every caller gets the error: nothing was recorded or changed.

use std::any::Any;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::AuditError;
use super::event::{AuditEvent, EventId, GENESIS_HASH, HashInput, Outcome};

/// What a data change reports back to the writer.
pub struct Mutated<T> {
    /// The value handed back to the caller after COMMIT.
    pub value: T,
    /// `Some(message)` if the change failed: it is rolled back and the event
    /// records `error: message`.
    pub failed: Option<String>,
    /// The object's version before the change.
    pub before_version: Option<i64>,
    /// The object's version after the change.
    pub after_version: Option<i64>,
}

pub(crate) type ErasedMutation = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Mutated<Box<dyn Any + Send>>>
        + Send,
>;

pub(crate) type Reply =
    oneshot::Sender<Result<(Vec<EventId>, Option<Box<dyn Any + Send>>), AuditError>>;

pub(crate) struct Job {
    pub events: Vec<AuditEvent>,
    pub mutation: Option<ErasedMutation>,
    pub reply: Reply,
}

/// Rows per INSERT statement (18 binds each; well under SQLite's limit).
const ROWS_PER_INSERT: usize = 256;

pub(crate) struct Writer {
    pub pool: SqlitePool,
    pub rx: mpsc::Receiver<Job>,
    pub max_batch: usize,
}

struct Prepared {
    id: i64,
    event: AuditEvent,
    details: String,
    outcome: String,
    prev_hash: String,
    hash: String,
}

impl Writer {
    pub async fn run(mut self) {
        let mut conn: Option<PoolConnection<Sqlite>> = None;
        while let Some(first) = self.rx.recv().await {
            let mut n = first.events.len();
            let mut jobs = vec![first];
            while n < self.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => {
                        n += job.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let c = match conn.take() {
                Some(c) => c,
                None => match self.pool.acquire().await {
                    Ok(c) => c,
                    Err(source) => {
                        let e = AuditError::Db {
                            op: "acquire writer connection",
                            source,
                        };
                        fail_all(jobs, &e);
                        continue;
                    }
                },
            };
            let mut c = c;
            match commit_batch(&mut c, &mut jobs).await {
                Ok(results) => {
                    for (job, (ids, value)) in jobs.into_iter().zip(results) {
                        // A caller that went away still had its event committed.
                        let _ = job.reply.send(Ok((ids, value)));
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
                    tracing::error!(error = %e, events = n, "audit batch failed; rolled back");
                    fail_all(jobs, &e);
                    // Drop the connection: it may be in an unknown state.
                    c.close_on_drop();
                }
            }
        }
    }
}

fn fail_all(jobs: Vec<Job>, e: &AuditError) {
    for job in jobs {
        let _ = job.reply.send(Err(e.duplicate()));
    }
}

type JobResult = (Vec<EventId>, Option<Box<dyn Any + Send>>);

async fn commit_batch(
    conn: &mut SqliteConnection,
    jobs: &mut [Job],
) -> Result<Vec<JobResult>, AuditError> {
    let db = |op: &'static str| move |source| AuditError::Db { op, source };
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(db("begin audit batch"))?;
    let (mut last_id, mut last_hash) = read_head(conn).await?;

    let mut prepared: Vec<Prepared> = Vec::new();
    let mut results: Vec<JobResult> = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        let mut value = None;
        if let Some(mutation) = job.mutation.take() {
            sqlx::query("SAVEPOINT hutch_mutation")
                .execute(&mut *conn)
                .await
                .map_err(db("savepoint"))?;
            let m = mutation(&mut *conn).await;
            if m.failed.is_some() {
                sqlx::query("ROLLBACK TO hutch_mutation")
                    .execute(&mut *conn)
                    .await
                    .map_err(db("rollback to savepoint"))?;
            }
            sqlx::query("RELEASE hutch_mutation")
                .execute(&mut *conn)
                .await
                .map_err(db("release savepoint"))?;
            if let Some(ev) = job.events.first_mut() {
                ev.before_version = m.before_version;
                ev.after_version = m.after_version;
                if let Some(msg) = m.failed {
                    ev.outcome = Outcome::Error(msg);
                }
            }
            value = Some(m.value);
        }
        let mut ids = Vec::with_capacity(job.events.len());
        for event in std::mem::take(&mut job.events) {
            last_id += 1;
            let details = event.details.to_string();
            let outcome = event.outcome.to_stored();
            let hash = hash_input(last_id, &event, &details, &outcome, &last_hash).hash();
            prepared.push(Prepared {
                id: last_id,
                event,
                details,
                outcome,
                prev_hash: std::mem::replace(&mut last_hash, hash.clone()),
                hash,
            });
            ids.push(EventId(last_id));
        }
        results.push((ids, value));
    }

    for chunk in prepared.chunks(ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO audit_events (id, ts_us, actor_kind, actor_plugin_id, actor_plugin_version, \
             actor_instance, actor_user, task_id, operation, resource, decision, reason, outcome, \
             before_version, after_version, details, prev_hash, hash) ",
        );
        qb.push_values(chunk, |mut b, p| {
            let e = &p.event;
            b.push_bind(p.id)
                .push_bind(e.ts_us)
                .push_bind(e.actor.kind.as_str())
                .push_bind(e.actor.plugin_id.clone())
                .push_bind(e.actor.plugin_version.clone())
                .push_bind(e.actor.instance.clone())
                .push_bind(e.actor.user.clone())
                .push_bind(e.task_id.clone())
                .push_bind(e.operation.clone())
                .push_bind(e.resource.clone())
                .push_bind(e.decision.as_str())
                .push_bind(e.reason.clone())
                .push_bind(p.outcome.clone())
                .push_bind(e.before_version)
                .push_bind(e.after_version)
                .push_bind(p.details.clone())
                .push_bind(p.prev_hash.clone())
                .push_bind(p.hash.clone());
        });
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(db("insert audit events"))?;
    }
    if !prepared.is_empty() {
        sqlx::query(
            "INSERT INTO audit_head (singleton, last_id, last_hash) VALUES (1, ?, ?) \
             ON CONFLICT (singleton) DO UPDATE SET last_id = excluded.last_id, last_hash = excluded.last_hash",
        )
        .bind(last_id)
        .bind(&last_hash)
        .execute(&mut *conn)
        .await
        .map_err(db("update audit head"))?;
    }
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .map_err(db("commit audit batch"))?;
    Ok(results)
}

/// The chain head: the last event's id and hash, or where retention left
/// the chain, or the genesis.
pub(crate) async fn read_head(conn: &mut SqliteConnection) -> Result<(i64, String), AuditError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT last_id, last_hash FROM audit_head WHERE singleton = 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|source| AuditError::Db {
                op: "read audit head",
                source,
            })?;
    if let Some(h) = head {
        return Ok(h);
    }
    let anchor: Option<(i64, String)> = sqlx::query_as(
        "SELECT last_purged_id, last_purged_hash FROM audit_anchor WHERE singleton = 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|source| AuditError::Db {
        op: "read audit anchor",
        source,
    })?;
    Ok(anchor.unwrap_or_else(|| (0, GENESIS_HASH.to_owned())))
}

pub(crate) fn hash_input<'a>(
    id: i64,
    e: &'a AuditEvent,
    details: &'a str,
    outcome: &'a str,
    prev_hash: &'a str,
) -> HashInput<'a> {
    HashInput {
        id,
        ts_us: e.ts_us,
        actor_kind: e.actor.kind.as_str(),
        actor_plugin_id: e.actor.plugin_id.as_deref(),
        actor_plugin_version: e.actor.plugin_version.as_deref(),
        actor_instance: e.actor.instance.as_deref(),
        actor_user: e.actor.user.as_deref(),
        task_id: e.task_id.as_deref(),
        operation: &e.operation,
        resource: &e.resource,
        decision: e.decision.as_str(),
        reason: e.reason.as_deref(),
        outcome,
        before_version: e.before_version,
        after_version: e.after_version,
        details,
        prev_hash,
    }
}
