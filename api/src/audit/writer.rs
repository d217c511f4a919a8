//! The single writer task: group commit of audit events and the data changes
//! that travel with them.
//!
//! Steps per batch (one SQLite transaction):
//! 1. take the first queued job (waiting), then every job already queued, up
//!    to `max_batch` events: whatever arrived while the previous COMMIT was
//!    syncing rides in this one; then yield and take what arrived meanwhile,
//!    for as long as each scheduler turn brings more (at most
//!    `GATHER_TURNS`), so callers answered together share a batch without
//!    a timer (the writer keeps its connection, and so its page cache,
//!    while jobs keep coming);
//! 2. `BEGIN IMMEDIATE`, then re-read the chain head (so another writer on the
//!    same file cannot fork the chain);
//! 3. for each job carrying a data change: `SAVEPOINT`, run it, and `ROLLBACK TO`
//!    it when it reports failure (its event then records the error), so one
//!    failed change does not sink the batch;
//! 4. assign consecutive ids, hash-chain the events, insert them with
//!    multi-row `INSERT`s (the actor and operation texts as ids into the
//!    `audit_texts` dictionary, new texts inserted first), update the head;
//! 5. `COMMIT` with `synchronous=NORMAL` (the WAL frames are written, not
//!    synced), run the jobs' after-hooks, and hand the answers to the syncer
//!    task, which fdatasyncs the WAL (one sync for every batch committed
//!    before it started) and only then answers every caller's oneshot; the
//!    writer meanwhile runs the next batch. A sync failure answers
//!    [`AuditError::Sync`]. If anything in 2-5 fails, the whole batch is
//!    rolled back and every caller gets the error: nothing was recorded or
//!    changed.
//!
//! Changes the built-in store hands in with `defers` only plan their rows
//! in memory; the flush hooks insert them (multi-row) before any other
//! change of the batch runs and before the events are inserted.

use std::any::Any;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Execute, Row, Sqlite, SqlitePool};
use tokio::sync::{Notify, mpsc, oneshot};

use super::event::{
    ActorKind, AuditEvent, Decision, EventId, GENESIS_BYTES, HashInput, Outcome, hash_hex,
};
use super::{AuditError, KEY_PLUGIN, KEY_ROOT, KEY_TASK, KEY_USER, WriterShared, resource_root};

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

/// A data change run inside the batch transaction. `Err` aborts the whole
/// batch (it may have written part of its change); `Ok` with `failed` set
/// records the failure in its event.
pub(crate) type ErasedMutation = Box<
    dyn for<'c> FnOnce(
            &'c mut SqliteConnection,
        ) -> BoxFuture<'c, Result<Mutated<Box<dyn Any + Send>>, AuditError>>
        + Send,
>;

/// Runs once the batch holding the job has ended: `true` after its COMMIT,
/// `false` after a rollback. Runs before the job's caller is answered.
pub(crate) type AfterBatch = Box<dyn FnOnce(bool) + Send>;

pub(crate) type Reply =
    oneshot::Sender<Result<(Vec<EventId>, Option<Box<dyn Any + Send>>), AuditError>>;

pub(crate) struct Job {
    pub events: Vec<AuditEvent>,
    pub mutation: Option<ErasedMutation>,
    /// Run the mutation under a `SAVEPOINT` (rolled back alone when it
    /// reports failure). Without it, the mutation promises to have written
    /// nothing when it reports failure.
    pub savepoint: bool,
    /// The mutation may leave rows to the flush hooks (see
    /// [`super::FlushHook`]).
    pub defers: bool,
    pub after: Option<AfterBatch>,
    pub reply: Reply,
}

/// The most scheduler turns a batch waits for jobs still arriving (see
/// `Writer::run`).
const GATHER_TURNS: usize = 8;

/// How long the writer keeps its connection without a job before giving
/// it back to the pool. A connection that comes back after another one
/// wrote must drop its whole page cache; the writer's own stays valid.
const HOLD_IDLE: Duration = Duration::from_millis(50);

/// Rows per INSERT statement, largest first: a batch is cut greedily into
/// these sizes, so the writer's connection prepares (and caches) at most
/// this many distinct statements (18 parameters per row; 256 rows stay well
/// under SQLite's limit of 32766).
const ROWS_PER_INSERT: [usize; 5] = [256, 64, 16, 4, 1];

pub(crate) struct Writer {
    pub pool: SqlitePool,
    pub rx: mpsc::Receiver<Job>,
    pub max_batch: usize,
    pub shared: Arc<WriterShared>,
    /// The database's WAL file (`<db>-wal`).
    pub wal_path: PathBuf,
    /// The database's wal-index (`<db>-shm`).
    pub shm_path: PathBuf,
}

/// The writer's connection settings, set when it takes a connection from
/// the pool and kept while it holds it (not re-run per batch): COMMIT
/// writes the WAL without syncing it; the syncer task syncs it before any
/// caller is answered (SQLite still syncs the WAL and the database around
/// its checkpoints, and the WAL header when it starts over).
/// No automatic checkpoint on this connection: the checkpointer task copies
/// the WAL back on its own connection (see [`checkpointer`]), and the WAL
/// file is cut back to [`WAL_RESTART_FRAMES`] pages when it starts over.
const HOLD_SQL: &str = "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
     PRAGMA journal_size_limit = 67108864";

/// `BEGIN` and the chain head in one round trip.
const BEGIN_SQL: &str =
    "BEGIN IMMEDIATE; SELECT last_id, CAST(last_hash AS BLOB) FROM audit_head WHERE singleton = 1";

/// The pool's settings (see `db.rs`), restored before the writer gives its
/// connection back.
const RELEASE_SQL: &str =
    "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 4000; PRAGMA journal_size_limit = -1";

/// WAL pages not yet copied back into the database at which the checkpointer
/// task runs a pass (16 MiB of 4 KiB pages, what SQLite's automatic checkpoint
/// waited for here: fewer, larger passes cost fewer fsyncs).
const CHECKPOINT_BACKLOG_FRAMES: u32 = 4000;

/// WAL length (pages since it last started over) at which the writer runs a
/// catch-up checkpoint itself between two batches: a checkpoint running
/// beside a busy writer never finds the WAL fully copied (the writer
/// appends meanwhile), and SQLite starts the WAL over only when it is. The
/// catch-up copies only what the checkpointer has not yet copied, and the
/// writer's next transaction starts the WAL over (64 MiB of 4 KiB pages,
/// the `journal_size_limit` above).
const WAL_RESTART_FRAMES: u32 = 16384;

/// A committed batch waiting for its WAL sync.
struct Synced {
    wal: Arc<std::fs::File>,
    replies: Vec<(Reply, JobResult)>,
}

/// The WAL file as the writer last opened it (reopened when the path names
/// another file: SQLite deletes the WAL when its last connection closes).
#[derive(Default)]
struct WalFile {
    file: Option<(Arc<std::fs::File>, u64, u64)>,
}

impl WalFile {
    fn current(&mut self, path: &Path) -> std::io::Result<Arc<std::fs::File>> {
        let meta = std::fs::metadata(path)?;
        if let Some((f, dev, ino)) = &self.file
            && *dev == meta.dev()
            && *ino == meta.ino()
        {
            return Ok(f.clone());
        }
        let f = Arc::new(std::fs::OpenOptions::new().read(true).open(path)?);
        self.file = Some((f.clone(), meta.dev(), meta.ino()));
        Ok(f)
    }
}

/// The WAL's progress as the wal-index header in `<db>-shm` records it
/// (<https://www.sqlite.org/walformat.html>: `mxFrame`, the frames in the
/// WAL since it last started over, at offset 16, and `nBackfill`, the frames
/// already copied into the database, at offset 96; native byte order). Only
/// a hint for when to checkpoint: a stale or torn read costs one pass too
/// many or too few.
pub(super) fn wal_progress(shm: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(shm).ok()?;
    let mut b = [0u8; 100];
    f.read_exact_at(&mut b, 0).ok()?;
    let word = |at: usize| b.get(at..at + 4)?.try_into().ok().map(u32::from_ne_bytes);
    Some((word(16)?, word(96)?))
}

/// Copies the WAL back into the database beside the writer, on a pool
/// connection of its own (a `PASSIVE` checkpoint: it never blocks the
/// writer nor waits for it), whenever the writer has committed and at least
/// [`CHECKPOINT_BACKLOG_FRAMES`] pages are waiting. SQLite syncs the WAL
/// before copying and the database after, as with its automatic
/// checkpoints, so moving the work here changes nothing about durability;
/// it takes the copy off the writer's connection thread (and off the path
/// of a COMMIT).
async fn checkpointer(pool: SqlitePool, shm: PathBuf, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some((frames, copied)) = wal_progress(&shm) else {
            continue;
        };
        if frames.saturating_sub(copied) < CHECKPOINT_BACKLOG_FRAMES {
            continue;
        }
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "audit checkpointer: acquire a connection");
                continue;
            }
        };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_all(&mut *conn)
            .await
        {
            tracing::warn!(error = %e, "audit checkpointer: wal checkpoint");
        }
    }
}

/// Syncs the WAL for committed batches and only then answers their callers;
/// one sync covers every batch committed before it started.
async fn syncer(mut rx: mpsc::UnboundedReceiver<Synced>) {
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        while let Ok(b) = rx.try_recv() {
            batches.push(b);
        }
        let mut files: Vec<Arc<std::fs::File>> = Vec::new();
        for b in &batches {
            if !files.iter().any(|f| Arc::ptr_eq(f, &b.wal)) {
                files.push(b.wal.clone());
            }
        }
        let synced = tokio::task::spawn_blocking(move || {
            for f in &files {
                f.sync_data()?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match synced {
            Ok(()) => {
                for b in batches {
                    for (reply, result) in b.replies {
                        // A caller that went away still had its event committed.
                        let _ = reply.send(Ok(result));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit wal sync failed: committed events may not be durable");
                let msg = e.to_string();
                for b in batches {
                    for (reply, _) in b.replies {
                        let _ = reply.send(Err(AuditError::Sync(msg.clone())));
                    }
                }
            }
        }
    }
}

/// The INSERT of `n` events, for each size of [`ROWS_PER_INSERT`] (built
/// once: the same text each time, so the connection's statement cache
/// finds the prepared statement).
///
/// The fixed texts are SQL literals chosen by an integer (`actor_kind`,
/// `decision`) or standing for NULL (`outcome` `ok`, `details` `null`):
/// binding a text copies it into SQLite (`SQLITE_TRANSIENT`, a malloc and a
/// free per argument), binding an integer or NULL does not. (Numbered
/// parameters, which would let a row's `prev_hash` reuse the previous row's
/// `hash` argument, are no option: sqlx looks each one up by name, and
/// `sqlite3_bind_parameter_name` scans a list, quadratic in a 256-row
/// statement: ten times slower, measured.)
static INSERT_SQL: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
    let kinds = [
        ActorKind::Plugin,
        ActorKind::User,
        ActorKind::Admin,
        ActorKind::Daemon,
    ]
    .iter()
    .map(|k| format!(" WHEN {} THEN '{}'", kind_code(*k), k.as_str()))
    .collect::<String>();
    let decisions = [Decision::Allowed, Decision::Denied]
        .iter()
        .map(|d| format!(" WHEN {} THEN '{}'", decision_code(*d), d.as_str()))
        .collect::<String>();
    ROWS_PER_INSERT
        .iter()
        .map(|&n| {
            let row = format!(
                "(?, ?, CASE ?{kinds} END, ?, ?, ?, ?, ?, ?, ?, CASE ?{decisions} END, ?, \
                 COALESCE(?, 'ok'), ?, ?, COALESCE(?, 'null'), ?, ?)"
            );
            let sql = format!(
                "INSERT INTO audit_events (id, ts_us, actor_kind, plugin_ref, version_ref, \
                 instance_ref, user_ref, task_ref, operation_ref, resource, decision, reason, outcome, \
                 before_version, after_version, details, prev_hash, hash) VALUES {}",
                vec![row; n].join(", ")
            );
            (n, sql)
        })
        .collect()
});

/// The integer [`INSERT_SQL`] turns into the actor kind's text.
fn kind_code(k: ActorKind) -> i64 {
    match k {
        ActorKind::Plugin => 0,
        ActorKind::User => 1,
        ActorKind::Admin => 2,
        ActorKind::Daemon => 3,
    }
}

/// The integer [`INSERT_SQL`] turns into the decision's text.
fn decision_code(d: Decision) -> i64 {
    match d {
        Decision::Allowed => 0,
        Decision::Denied => 1,
    }
}

/// Calls `f` with the lowercase hex text of a stored hash (the form the
/// encoding hashes), without allocating for a 32-byte one.
fn with_hex<R>(bytes: &[u8], f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 64];
    if bytes.len() == 32
        && hex::encode_to_slice(bytes, &mut buf).is_ok()
        && let Ok(text) = std::str::from_utf8(&buf)
    {
        return f(text);
    }
    f(&hash_hex(bytes))
}

/// Hash-chains the next `n` events of `events` (ids after `*last_id`,
/// chained to `*last_hash`) and binds them to the INSERT of `n` rows.
fn bind_rows<'q>(
    events: &mut impl Iterator<Item = AuditEvent>,
    n: usize,
    last_id: &mut i64,
    last_hash: &mut Vec<u8>,
    texts: &TextIds,
) -> Result<
    (
        sqlx::query::Query<'q, Sqlite, SqliteArguments>,
        SqliteArguments,
    ),
    sqlx::Error,
> {
    // Every text is in the dictionary (`resolve_texts`); should one be
    // missing, the batch fails (a NULL would lose the text from the row).
    let mut recent = RecentTexts::new(texts);
    let sql = INSERT_SQL
        .iter()
        .find(|(k, _)| *k == n)
        .map_or("", |(_, s)| s.as_str());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for e in events.take(n) {
        *last_id += 1;
        let details = (!e.details.is_null()).then(|| e.details.to_string());
        let outcome = match &e.outcome {
            Outcome::Ok => None,
            o => Some(o.to_stored()),
        };
        let hash = with_hex(last_hash, |prev| {
            hash_input(
                *last_id,
                &e,
                details.as_deref().unwrap_or("null"),
                outcome.as_deref().unwrap_or("ok"),
                prev,
            )
            .hash()
        });
        let prev = std::mem::replace(last_hash, hash.to_vec());
        let mut ids = [None; 6];
        for (field, (id, text)) in ids.iter_mut().zip(event_texts(&e)).enumerate() {
            *id = match text {
                None => None,
                Some(t) => Some(recent.id(field, Some(t)).ok_or_else(|| {
                    sqlx::Error::Protocol(format!("audit text {t:?} has no dictionary id"))
                })?),
            };
        }
        let [plugin, version, instance, user, task, operation] = ids;
        q = q
            .bind(*last_id)
            .bind(e.ts_us)
            .bind(kind_code(e.actor.kind))
            .bind(plugin)
            .bind(version)
            .bind(instance)
            .bind(user)
            .bind(task)
            .bind(operation)
            .bind(e.resource)
            .bind(decision_code(e.decision))
            .bind(e.reason)
            .bind(outcome)
            .bind(e.before_version)
            .bind(e.after_version)
            .bind(details)
            .bind(prev)
            .bind(hash.to_vec());
    }
    // sqlx drops a statement's arguments on the connection's worker thread
    // once it ran, freeing every text there: the caller keeps a clone
    // (reference counts) and drops it after the statement, so those frees
    // happen on this side instead of on the one SQLite thread.
    match q.take_arguments() {
        Ok(Some(args)) => Ok((
            sqlx::query_with(sqlx::AssertSqlSafe(sql), args.clone()),
            args,
        )),
        Ok(None) => Err(sqlx::Error::Protocol(
            "audit event arguments missing".into(),
        )),
        Err(e) => Err(sqlx::Error::Encode(e)),
    }
}

impl Writer {
    pub async fn run(mut self) {
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        tokio::spawn(syncer(sync_rx));
        let wake = Arc::new(Notify::new());
        let shm = self.shm_path.clone();
        let checkpoints = tokio::spawn(checkpointer(self.pool.clone(), shm.clone(), wake.clone()));
        let mut wal = WalFile::default();
        let mut conn: Option<PoolConnection<Sqlite>> = None;
        // The chain head this writer last committed (None: not known).
        let mut head: Option<i64> = None;
        // The key ranges ending at that head (see `TailKeys`).
        let mut tail = TailKeys::new();
        // The dictionary ids this writer knows (see `TextIds`).
        let mut texts = TextIds::new();
        loop {
            // Keep the connection (and its page cache) while jobs keep
            // coming; give it back to the pool (with the pool's settings)
            // after `HOLD_IDLE` without one, so `Db::close` never waits
            // long on the writer.
            let first = match conn.take() {
                None => self.rx.recv().await,
                Some(mut c) => match tokio::time::timeout(HOLD_IDLE, self.rx.recv()).await {
                    Ok(job) => {
                        conn = Some(c);
                        job
                    }
                    Err(_) => {
                        if sqlx::query(RELEASE_SQL).execute(&mut *c).await.is_err() {
                            c.close_on_drop();
                        }
                        drop(c);
                        self.rx.recv().await
                    }
                },
            };
            let Some(first) = first else {
                if let Some(mut c) = conn.take()
                    && sqlx::query(RELEASE_SQL).execute(&mut *c).await.is_err()
                {
                    c.close_on_drop();
                }
                break;
            };
            let mut n = first.events.len();
            let mut jobs = vec![first];
            // Gather the jobs still arriving (callers answered together
            // come back within a few scheduler turns of each other): yield
            // and take what came, for as long as each turn brings more (at
            // most `GATHER_TURNS`). No timer: a caller that went away costs
            // one scheduler turn, not a sleep.
            let mut turns = 0;
            while n < self.max_batch && turns < GATHER_TURNS {
                tokio::task::yield_now().await;
                let before = jobs.len();
                self.drain(&mut jobs, &mut n);
                if jobs.len() == before && turns > 0 {
                    break;
                }
                turns += 1;
            }
            let c = match conn.take() {
                Some(c) => c,
                None => match self.hold().await {
                    Ok(c) => c,
                    Err(e) => {
                        fail_all(jobs, &e);
                        continue;
                    }
                },
            };
            let mut c = c;
            let result = commit_batch(
                &mut c,
                &mut jobs,
                &self.shared,
                &mut head,
                &mut tail,
                &mut texts,
            )
            .await;
            match result {
                Ok(results) => {
                    let mut replies = Vec::with_capacity(jobs.len());
                    for (job, result) in jobs.into_iter().zip(results) {
                        if let Some(after) = job.after {
                            after(true);
                        }
                        replies.push((job.reply, result));
                    }
                    // The callers are answered once the WAL holding the
                    // COMMIT is synced; the next batch runs meanwhile.
                    match wal.current(&self.wal_path) {
                        Ok(file) => {
                            let _ = sync_tx.send(Synced { wal: file, replies });
                        }
                        Err(e) => {
                            tracing::error!(error = %e, path = %self.wal_path.display(), "open audit wal to sync it");
                            let msg = e.to_string();
                            for (reply, _) in replies {
                                let _ = reply.send(Err(AuditError::Sync(msg.clone())));
                            }
                        }
                    }
                    wake.notify_one();
                    // Let the WAL start over once it is long (see
                    // `WAL_RESTART_FRAMES`).
                    if let Some((frames, _)) = wal_progress(&shm)
                        && frames >= WAL_RESTART_FRAMES
                        && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                            .fetch_all(&mut *c)
                            .await
                    {
                        tracing::warn!(error = %e, "audit writer: catch-up wal checkpoint");
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
                    // State the changes planned in memory is now stale.
                    self.shared.epoch.fetch_add(1, Ordering::AcqRel);
                    head = None;
                    tracing::error!(error = %e, events = n, "audit batch failed; rolled back");
                    fail_all(jobs, &e);
                    // Drop the connection: it may be in an unknown state
                    // (and has the writer's settings).
                    c.close_on_drop();
                }
            }
        }
        checkpoints.abort();
    }
}

impl Writer {
    /// A pool connection with the writer's settings ([`HOLD_SQL`]).
    async fn hold(&self) -> Result<PoolConnection<Sqlite>, AuditError> {
        let mut c = self.pool.acquire().await.map_err(|source| AuditError::Db {
            op: "acquire writer connection",
            source,
        })?;
        if let Err(source) = sqlx::raw_sql(HOLD_SQL).execute(&mut *c).await {
            // It may hold some of the settings: not back to the pool.
            c.close_on_drop();
            return Err(AuditError::Db {
                op: "set writer connection pragmas",
                source,
            });
        }
        Ok(c)
    }

    /// Takes every job already queued, up to `max_batch` events.
    fn drain(&mut self, jobs: &mut Vec<Job>, n: &mut usize) {
        while *n < self.max_batch {
            match self.rx.try_recv() {
                Ok(job) => {
                    *n += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
    }
}

fn fail_all(jobs: Vec<Job>, e: &AuditError) {
    for job in jobs {
        if let Some(after) = job.after {
            after(false);
        }
        let _ = job.reply.send(Err(e.duplicate()));
    }
}

type JobResult = (Vec<EventId>, Option<Box<dyn Any + Send>>);

async fn commit_batch(
    conn: &mut SqliteConnection,
    jobs: &mut [Job],
    shared: &WriterShared,
    head: &mut Option<i64>,
    tail: &mut TailKeys,
    texts: &mut TextIds,
) -> Result<Vec<JobResult>, AuditError> {
    let db = |op: &'static str| move |source| AuditError::Db { op, source };
    // BEGIN and the chain head in one round trip.
    let rows = sqlx::query(BEGIN_SQL)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("begin audit batch"))?;
    let row: Option<(i64, Vec<u8>)> = match rows.iter().find(|r| r.len() == 2) {
        Some(r) => Some((
            r.try_get(0).map_err(db("read audit head"))?,
            r.try_get(1).map_err(db("read audit head"))?,
        )),
        None => None,
    };
    let (mut last_id, last_hash) = match row {
        Some(h) => h,
        None => read_anchor(conn).await?,
    };
    if *head != Some(last_id) {
        // First batch, or another process wrote the database since this
        // writer's last COMMIT: what changes planned in memory is stale.
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        tail.clear();
        // A rolled-back batch may have inserted some of them.
        texts.clear();
    }
    *head = None;
    // Only a committed batch leaves key ranges to extend.
    let prev_tail = std::mem::take(tail);
    let mut last_hash = last_hash;

    let mut events: Vec<AuditEvent> = Vec::new();
    let mut results: Vec<JobResult> = Vec::with_capacity(jobs.len());
    // Whether a deferring change may have left rows to the flush hooks.
    let mut deferred = false;
    for job in jobs.iter_mut() {
        let mut value = None;
        if let Some(mutation) = job.mutation.take() {
            if deferred && !job.defers {
                flush(conn, shared).await?;
                deferred = false;
            }
            if job.savepoint {
                sqlx::query("SAVEPOINT hutch_mutation")
                    .execute(&mut *conn)
                    .await
                    .map_err(db("savepoint"))?;
            }
            let m = mutation(&mut *conn).await?;
            deferred |= job.defers;
            if job.savepoint {
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
            }
            if let Some(ev) = job.events.first_mut() {
                ev.before_version = m.before_version;
                ev.after_version = m.after_version;
                if let Some(msg) = m.failed {
                    ev.outcome = Outcome::Error(msg);
                }
            }
            value = Some(m.value);
        }
        let first = last_id + i64::try_from(events.len()).unwrap_or(i64::MAX);
        let n = i64::try_from(job.events.len()).unwrap_or(i64::MAX);
        let ids = (1..=n).map(|i| EventId(first + i)).collect();
        events.append(&mut job.events);
        results.push((ids, value));
    }
    if deferred {
        flush(conn, shared).await?;
    }
    resolve_texts(conn, &events, texts).await?;

    let mut keys = batch_keys(&events, last_id);
    // A range starting at this batch's first event whose value the
    // previous batch's last event carried continues that range: no other
    // id lies between them, so the row is extended (an upsert on the same
    // primary key) instead of a new one inserted.
    for k in &mut keys {
        if k.2 == last_id + 1
            && let Some((_, _, first)) = prev_tail.iter().find(|t| t.0 == k.0 && t.1 == k.1)
        {
            k.2 = *first;
        }
    }
    // Multi-row INSERTs; each chunk's rows are hashed and bound while the
    // previous chunk executes on the connection's worker thread.
    let count = events.len();
    let size_for = |left: usize| {
        ROWS_PER_INSERT
            .into_iter()
            .find(|&n| n <= left)
            .unwrap_or(1)
    };
    let mut rows = events.into_iter();
    let mut left = count;
    let mut next = (left > 0)
        .then(|| {
            let n = size_for(left);
            left -= n;
            bind_rows(&mut rows, n, &mut last_id, &mut last_hash, texts)
        })
        .transpose()
        .map_err(db("bind audit events"))?;
    while let Some((q, args)) = next.take() {
        let exec = q.execute(&mut *conn);
        let build = async {
            (left > 0).then(|| {
                let n = size_for(left);
                left -= n;
                bind_rows(&mut rows, n, &mut last_id, &mut last_hash, texts)
            })
        };
        let (r, built) = futures::join!(exec, build);
        drop(args);
        r.map_err(db("insert audit events"))?;
        next = built.transpose().map_err(db("bind audit events"))?;
    }
    // The ranges ending at the batch's last event, for the next batch.
    let new_tail: TailKeys = keys
        .iter()
        .filter(|k| k.3 == last_id)
        .map(|k| (k.0, k.1.clone(), k.2))
        .collect();
    // The last (up to four) key ranges, the head update and the COMMIT in
    // one round trip; any other ranges before.
    let final_keys = keys.split_off(keys.len().saturating_sub(FINAL_KEYS));
    insert_keys(conn, keys).await?;
    if count > 0 {
        let sql = FINAL_SQL.get(final_keys.len()).map_or("", String::as_str);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (field, value, first, last) in final_keys {
            q = q.bind(field).bind(value).bind(first).bind(last);
        }
        q.bind(last_id)
            .bind(last_hash)
            .execute(&mut *conn)
            .await
            .map_err(db("update audit head and commit"))?;
    } else {
        sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map_err(db("commit audit batch"))?;
    }
    *head = Some(last_id);
    *tail = new_tail;
    Ok(results)
}

/// The dictionary ids (`audit_texts`, see
/// `api/migrations/0008_audit_texts.sql`) of the actor and operation texts
/// this writer inserted or looked up. Valid only while the head it
/// committed is the database's: cleared when the head moved or a batch was
/// rolled back (it may have inserted some), and when it holds more than
/// [`MAX_TEXT_IDS`] (task ids keep coming).
type TextIds = std::collections::HashMap<String, i64>;

/// Dictionary ids by field (the order of [`event_texts`]), remembering
/// each field's last text and id: consecutive events mostly repeat them,
/// and comparing with the last is cheaper than hashing.
struct RecentTexts<'t> {
    texts: &'t TextIds,
    last: [Option<(String, i64)>; 6],
}

impl<'t> RecentTexts<'t> {
    fn new(texts: &'t TextIds) -> Self {
        RecentTexts {
            texts,
            last: Default::default(),
        }
    }

    /// The id of `v` in field `field` (None: no text, or not in the
    /// dictionary).
    fn id(&mut self, field: usize, v: Option<&str>) -> Option<i64> {
        let v = v?;
        let slot = self.last.get_mut(field)?;
        if let Some((text, id)) = slot
            && text == v
        {
            return Some(*id);
        }
        let id = *self.texts.get(v)?;
        match slot {
            Some((text, last)) => {
                text.clear();
                text.push_str(v);
                *last = id;
            }
            None => *slot = Some((v.to_owned(), id)),
        }
        Some(id)
    }
}

/// The most dictionary ids the writer remembers.
const MAX_TEXT_IDS: usize = 65_536;

/// Texts per dictionary statement, largest first (at most four statement
/// texts in the connection's cache).
const TEXTS_PER_LOOKUP: [usize; 4] = [64, 16, 4, 1];

/// For each size of [`TEXTS_PER_LOOKUP`]: insert the texts the dictionary
/// lacks, then read every one's id (one round trip).
static TEXTS_SQL: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
    TEXTS_PER_LOOKUP
        .iter()
        .map(|&n| {
            let sql = format!(
                "INSERT INTO audit_texts (text) VALUES {} ON CONFLICT (text) DO NOTHING; \
                 SELECT id, text FROM audit_texts WHERE text IN ({})",
                vec!["(?)"; n].join(", "),
                vec!["?"; n].join(", ")
            );
            (n, sql)
        })
        .collect()
});

/// The dictionary texts of an event: plugin id, plugin version, instance,
/// user, task, operation.
fn event_texts(e: &AuditEvent) -> [Option<&str>; 6] {
    [
        e.actor.plugin_id.as_deref(),
        e.actor.plugin_version.as_deref(),
        e.actor.instance.as_deref(),
        e.actor.user.as_deref(),
        e.task_id.as_deref(),
        Some(e.operation.as_str()),
    ]
}

/// Puts every dictionary text of `events` into `texts`: those it lacks are
/// inserted into `audit_texts` (if no other writer did) and their ids read,
/// 64 per round trip. A batch of known texts costs no SQL.
async fn resolve_texts(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
    texts: &mut TextIds,
) -> Result<(), AuditError> {
    let db = |op: &'static str| move |source| AuditError::Db { op, source };
    if texts.len() > MAX_TEXT_IDS {
        texts.clear();
    }
    let mut seen = std::collections::HashSet::new();
    let mut missing: Vec<&str> = Vec::new();
    // Consecutive events mostly repeat their texts: a text equal to the
    // previous event's in the same field was checked already.
    let mut prev: [Option<&str>; 6] = [None; 6];
    for e in events {
        let cur = event_texts(e);
        for (v, p) in cur.iter().zip(&prev) {
            if let Some(v) = *v
                && *p != Some(v)
                && !texts.contains_key(v)
                && seen.insert(v)
            {
                missing.push(v);
            }
        }
        prev = cur;
    }
    let mut left = missing.as_slice();
    while !left.is_empty() {
        let n = TEXTS_PER_LOOKUP
            .into_iter()
            .find(|&n| n <= left.len())
            .unwrap_or(1);
        let (chunk, rest) = left.split_at(n.min(left.len()));
        left = rest;
        let sql = TEXTS_SQL
            .iter()
            .find(|(k, _)| *k == n)
            .map_or("", |(_, s)| s.as_str());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in chunk.iter().chain(chunk) {
            q = q.bind(*v);
        }
        for row in q
            .fetch_all(&mut *conn)
            .await
            .map_err(db("insert audit texts"))?
        {
            let id: i64 = row.try_get(0).map_err(db("read audit text id"))?;
            let text: String = row.try_get(1).map_err(db("read audit text"))?;
            texts.insert(text, id);
        }
    }
    Ok(())
}

/// Rows per INSERT into `audit_keys` (4 binds per row): the up to four
/// ranges of a one-event batch take a single statement.
const KEYS_PER_INSERT: [usize; 6] = [64, 16, 4, 3, 2, 1];

/// The INSERT of `n` key ranges, for each size of [`KEYS_PER_INSERT`].
static KEYS_SQL: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
    KEYS_PER_INSERT
        .iter()
        .map(|&n| {
            let sql = format!(
                "INSERT INTO audit_keys (field, value, first_id, last_id) VALUES {} {KEYS_UPSERT}",
                vec!["(?, ?, ?, ?)"; n].join(", ")
            );
            (n, sql)
        })
        .collect()
});

/// One `audit_keys` row: field, value, first and last id of the batch's
/// events carrying it.
type KeyRange = (&'static str, String, i64, i64);

/// The key ranges (field, value, first id) ending at the chain head this
/// writer last committed: at most one per field, those of the last event.
/// Valid only while that head is the database's (cleared when it moved or
/// a batch failed).
type TailKeys = Vec<(&'static str, String, i64)>;

/// Inserts a key range, or extends the range with the same first id
/// (a batch continuing the previous batch's last range).
const KEYS_UPSERT: &str =
    "ON CONFLICT (field, value, first_id) DO UPDATE SET last_id = excluded.last_id";

/// The key ranges of a batch whose events get ids `last_id + 1, ...`: for
/// each field (see `api/migrations/0005_audit_keys.sql`) and distinct value,
/// the first and last id carrying it.
fn batch_keys(events: &[AuditEvent], last_id: i64) -> Vec<KeyRange> {
    let mut ranges: std::collections::HashMap<(&'static str, &str), (i64, i64)> =
        std::collections::HashMap::new();
    let mut id = last_id;
    for e in events {
        id += 1;
        for (field, value) in [
            (KEY_PLUGIN, e.actor.plugin_id.as_deref()),
            (KEY_USER, e.actor.user.as_deref()),
            (KEY_TASK, e.task_id.as_deref()),
            (KEY_ROOT, Some(resource_root(&e.resource))),
        ] {
            if let Some(v) = value {
                ranges
                    .entry((field, v))
                    .and_modify(|r| r.1 = id)
                    .or_insert((id, id));
            }
        }
    }
    ranges
        .into_iter()
        .map(|((f, v), (first, last))| (f, v.to_owned(), first, last))
        .collect()
}

/// Key ranges inserted in the batch's last statement (with the head update
/// and the COMMIT): a one-event batch has at most four.
const FINAL_KEYS: usize = 4;

/// The batch's last statement with 0..=[`FINAL_KEYS`] key ranges: their
/// INSERT, the head update, COMMIT.
static FINAL_SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..=FINAL_KEYS)
        .map(|n| {
            let keys = if n == 0 {
                String::new()
            } else {
                format!(
                    "INSERT INTO audit_keys (field, value, first_id, last_id) VALUES {} \
                     {KEYS_UPSERT}; ",
                    vec!["(?, ?, ?, ?)"; n].join(", ")
                )
            };
            format!(
                "{keys}INSERT INTO audit_head (singleton, last_id, last_hash) VALUES (1, ?, ?) \
                 ON CONFLICT (singleton) DO UPDATE SET last_id = excluded.last_id, \
                 last_hash = excluded.last_hash; COMMIT"
            )
        })
        .collect()
});

/// Inserts a batch's key ranges (multi-row, at most six statement texts).
async fn insert_keys(conn: &mut SqliteConnection, keys: Vec<KeyRange>) -> Result<(), AuditError> {
    let mut keys = keys.into_iter();
    let mut left = keys.len();
    while left > 0 {
        let n = KEYS_PER_INSERT
            .into_iter()
            .find(|&n| n <= left)
            .unwrap_or(1);
        left -= n;
        let sql = KEYS_SQL
            .iter()
            .find(|(k, _)| *k == n)
            .map_or("", |(_, s)| s.as_str());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (field, value, first, last) in keys.by_ref().take(n) {
            q = q.bind(field).bind(value).bind(first).bind(last);
        }
        q.execute(&mut *conn)
            .await
            .map_err(|source| AuditError::Db {
                op: "insert audit keys",
                source,
            })?;
    }
    Ok(())
}

/// Runs the flush hooks (rows deferring changes left for later).
async fn flush(conn: &mut SqliteConnection, shared: &WriterShared) -> Result<(), AuditError> {
    let epoch = shared.epoch.load(Ordering::Acquire);
    for hook in shared.hooks() {
        hook(&mut *conn, epoch).await?;
    }
    Ok(())
}

/// Where retention left the chain, or the genesis.
async fn read_anchor(conn: &mut SqliteConnection) -> Result<(i64, Vec<u8>), AuditError> {
    let anchor: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT last_purged_id, CAST(last_purged_hash AS BLOB) FROM audit_anchor WHERE singleton = 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|source| AuditError::Db {
        op: "read audit anchor",
        source,
    })?;
    Ok(anchor.unwrap_or_else(|| (0, GENESIS_BYTES.to_vec())))
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
