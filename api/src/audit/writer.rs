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
//! 4. assign consecutive ids, hash-chain the events and write them, their
//!    key ranges and the new head as JSON rows (the actor and operation
//!    texts as ids into the `audit_texts` dictionary, new texts inserted
//!    first), sent with the deferred rows and the `COMMIT` in one
//!    statement text, one round trip for any number of events (see
//!    [`super::rows`]);
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
//! in memory; the flush hooks hand them over as one statement, which the
//! writer runs in the batch's last round trip, or on its own before a
//! change that may read those rows.

use std::any::Any;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row, Sqlite, SqlitePool};
use tokio::sync::{Notify, mpsc, oneshot};

use super::event::{AuditEvent, EventId, GENESIS_BYTES, HashInput, Outcome, hash_hex};
use super::{
    AuditError, Deferred, JsonRows, KEY_PLUGIN, KEY_ROOT, KEY_TASK, KEY_USER, WriterShared,
    resource_root,
};

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
pub(super) const HOLD_IDLE: Duration = Duration::from_millis(50);

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
///
/// A page cache of 1 MiB instead of the pool's 16 MiB: when a B-tree page
/// splits, SQLite (3.51) renumbers the new pages through a temporary page
/// number beyond the file's end (the page after `PENDING_BYTE`), and the
/// COMMIT after it drops cached pages beyond the end by walking the whole
/// page cache. With a full 16 MiB cache that walk took ~240 µs per commit
/// and a quarter of the connection thread's time under 1 KiB puts at 64
/// callers (`perf`: `pcache1TruncateUnsafe`, 10 % of the process's
/// samples); with 1 MiB it is under 1 %, and the pages the writer no
/// longer keeps are read back from the operating system's cache
/// (docs/api.md "Session 11").
const HOLD_SQL: &str = "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
     PRAGMA journal_size_limit = 67108864; PRAGMA cache_size = -1024";

/// `BEGIN` and the chain head in one round trip.
const BEGIN_SQL: &str =
    "BEGIN IMMEDIATE; SELECT last_id, CAST(last_hash AS BLOB) FROM audit_head WHERE singleton = 1";

/// The pool's settings (see `db.rs`), restored before the writer gives its
/// connection back.
const RELEASE_SQL: &str = concat!(
    "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 4000; PRAGMA journal_size_limit = -1; \
     PRAGMA cache_size = ",
    crate::db::pool_cache_size!()
);

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
pub(super) const WAL_RESTART_FRAMES: u32 = 16384;

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

/// The INSERT of events given as JSON rows ([`event_rows`]).
macro_rules! events_sql {
    () => {
        "INSERT INTO audit_events (id, ts_us, actor_kind, plugin_ref, \
         version_ref, instance_ref, user_ref, task_ref, operation_ref, resource, decision, reason, \
         outcome, before_version, after_version, details, prev_hash, hash) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, \
         value->>7, value->>8, value->>9, value->>10, value->>11, value->>12, value->>13, \
         value->>14, value->>15, \
         CASE WHEN key = 0 THEN ? ELSE substr(?, key * 32 - 31, 32) END, \
         substr(?, key * 32 + 1, 32) \
         FROM jsonb_each(?) WHERE true"
    };
}

/// Events per statement. The last (up to) this many events of a batch go
/// with its last statements ([`FINAL_SQL`]); any before them in statements
/// of this many, each alone in its round trip and the next one's rows
/// built while it runs on the connection's thread.
const EVENTS_PER_STATEMENT: usize = 256;

/// The batch's last statements after any [`Deferred`] ones: its last
/// events (the four parameters of [`EventRows`]), their key ranges (the
/// fifth: [`key_rows`]; a range continuing the previous batch's extends
/// its row, same primary key), the new chain head (sixth and seventh) and
/// `COMMIT`. One constant text for any number of rows (see
/// [`super::rows`]).
const FINAL_SQL: &str = concat!(
    events_sql!(),
    "; INSERT INTO audit_keys (field, value, first_id, last_id) \
     SELECT value->>0, value->>1, value->>2, value->>3 FROM jsonb_each(?) WHERE true \
     ON CONFLICT (field, value, first_id) DO UPDATE SET last_id = excluded.last_id; \
     INSERT INTO audit_head (singleton, last_id, last_hash) VALUES (1, ?, ?) \
     ON CONFLICT (singleton) DO UPDATE SET last_id = excluded.last_id, \
     last_hash = excluded.last_hash; \
     COMMIT"
);

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

/// The parameters of `events_sql!`: the hash before the first event, the
/// events' hashes end to end (32 bytes each: row `i`'s `prev_hash` is hash
/// `i - 1`, its `hash` hash `i`; bound twice) and the rows.
struct EventRows {
    first_prev: Vec<u8>,
    hashes: Vec<u8>,
    rows: String,
}

impl EventRows {
    fn bind_to<'q>(
        self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
        query
            .bind(self.first_prev)
            .bind(self.hashes.clone())
            .bind(self.hashes)
            .bind(self.rows)
    }
}

/// Hash-chains `events` (ids after `*last_id`, chained to `*last_hash`,
/// both advanced to the last event) into the parameters of
/// `events_sql!`: the stored texts (actor and operation texts as their
/// `audit_texts` ids) as JSON rows, the hashes as bytes.
fn event_rows(
    events: impl ExactSizeIterator<Item = AuditEvent>,
    last_id: &mut i64,
    last_hash: &mut Vec<u8>,
    texts: &TextIds,
) -> Result<EventRows, sqlx::Error> {
    // Every text is in the dictionary (`resolve_texts`); should one be
    // missing, the batch fails (a NULL would lose the text from the row).
    let mut recent = RecentTexts::new(texts);
    let first_prev = last_hash.clone();
    let mut hashes = Vec::with_capacity(events.len() * 32);
    let mut rows = JsonRows::with_capacity(events.len(), 200);
    for e in events {
        *last_id += 1;
        let details = (!e.details.is_null()).then(|| e.details.to_string());
        let details = details.as_deref().unwrap_or("null");
        let outcome = match &e.outcome {
            Outcome::Ok => None,
            o => Some(o.to_stored()),
        };
        let outcome = outcome.as_deref().unwrap_or("ok");
        let hash = with_hex(last_hash, |prev| {
            hash_input(*last_id, &e, details, outcome, prev).hash()
        });
        last_hash.clear();
        last_hash.extend_from_slice(&hash);
        hashes.extend_from_slice(&hash);
        rows.row();
        rows.int(*last_id);
        rows.int(e.ts_us);
        rows.text(e.actor.kind.as_str());
        for (field, text) in event_texts(&e).into_iter().enumerate() {
            match text {
                None => rows.null(),
                Some(t) => rows.int(recent.id(field, Some(t)).ok_or_else(|| {
                    sqlx::Error::Protocol(format!("audit text {t:?} has no dictionary id"))
                })?),
            }
        }
        rows.text(&e.resource);
        rows.text(e.decision.as_str());
        rows.opt_text(e.reason.as_deref());
        rows.text(outcome);
        rows.opt_int(e.before_version);
        rows.opt_int(e.after_version);
        rows.text(details);
    }
    Ok(EventRows {
        first_prev,
        hashes,
        rows: rows.finish(),
    })
}

impl Writer {
    pub async fn run(mut self) {
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let synced = tokio::spawn(syncer(sync_rx));
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
        // Answer the batches still being synced before the runtime goes.
        drop(sync_tx);
        let _ = synced.await;
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
    // The rows deferring changes left go in the last round trip too.
    let deferred = if deferred {
        take_deferred(shared)
    } else {
        Vec::new()
    };
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
    let count = events.len();
    let bind_err = |source| AuditError::Db {
        op: "bind audit events",
        source,
    };
    // Every chunk of EVENTS_PER_STATEMENT but the last in a statement of
    // its own, the next chunk's rows hashed and built while it runs.
    let mut events = events.into_iter();
    let mut ahead = count.saturating_sub(1) / EVENTS_PER_STATEMENT;
    let last_chunk = count - ahead * EVENTS_PER_STATEMENT;
    let mut build =
        |n: usize| event_rows(events.by_ref().take(n), &mut last_id, &mut last_hash, texts);
    let mut rows = build(if ahead > 0 {
        EVENTS_PER_STATEMENT
    } else {
        last_chunk
    })
    .map_err(bind_err)?;
    while ahead > 0 {
        ahead -= 1;
        let exec = rows.bind_to(sqlx::query(events_sql!())).execute(&mut *conn);
        let n = if ahead > 0 {
            EVENTS_PER_STATEMENT
        } else {
            last_chunk
        };
        let (r, built) = futures::join!(exec, async { build(n) });
        r.map_err(db("insert audit events"))?;
        rows = built.map_err(bind_err)?;
    }
    // The ranges ending at the batch's last event, for the next batch.
    let new_tail: TailKeys = keys
        .iter()
        .filter(|k| k.3 == last_id)
        .map(|k| (k.0, k.1.clone(), k.2))
        .collect();
    // One round trip: the deferred statements, the events, their key
    // ranges, the head and COMMIT.
    let mut sql = String::new();
    for d in &deferred {
        sql.push_str(d.sql);
        sql.push_str("; ");
    }
    sql.push_str(if count > 0 { FINAL_SQL } else { "COMMIT" });
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for d in deferred {
        q = d.bind_to(q);
    }
    if count > 0 {
        q = rows
            .bind_to(q)
            .bind(key_rows(keys))
            .bind(last_id)
            .bind(last_hash);
    }
    q.execute(&mut *conn)
        .await
        .map_err(db("insert audit events and commit"))?;
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

/// Inserts the texts (JSON rows of one text each, bound twice) the
/// dictionary lacks, then reads every one's id: one round trip for any
/// number of texts.
const TEXTS_SQL: &str = "INSERT INTO audit_texts (text) \
     SELECT value->>0 FROM jsonb_each(?) WHERE true ON CONFLICT (text) DO NOTHING; \
     SELECT id, text FROM audit_texts WHERE text IN (SELECT value->>0 FROM jsonb_each(?))";

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
    if missing.is_empty() {
        return Ok(());
    }
    let mut rows = JsonRows::with_capacity(missing.len(), 40);
    for v in &missing {
        rows.row();
        rows.text(v);
    }
    let rows = rows.finish();
    for row in sqlx::query(TEXTS_SQL)
        .bind(rows.clone())
        .bind(rows)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("insert audit texts"))?
    {
        let id: i64 = row.try_get(0).map_err(db("read audit text id"))?;
        let text: String = row.try_get(1).map_err(db("read audit text"))?;
        texts.insert(text, id);
    }
    Ok(())
}

/// One `audit_keys` row: field, value, first and last id of the batch's
/// events carrying it.
type KeyRange = (&'static str, String, i64, i64);

/// The key ranges (field, value, first id) ending at the chain head this
/// writer last committed: at most one per field, those of the last event.
/// Valid only while that head is the database's (cleared when it moved or
/// a batch failed).
type TailKeys = Vec<(&'static str, String, i64)>;

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

/// The key ranges as the rows of [`FINAL_SQL`]'s second statement.
fn key_rows(keys: Vec<KeyRange>) -> String {
    let mut rows = JsonRows::with_capacity(keys.len(), 64);
    for (field, value, first, last) in keys {
        rows.row();
        rows.text(field);
        rows.text(&value);
        rows.int(first);
        rows.int(last);
    }
    rows.finish()
}

/// The statements deferring changes left (see [`super::FlushHook`]).
fn take_deferred(shared: &WriterShared) -> Vec<Deferred> {
    let epoch = shared.epoch.load(Ordering::Acquire);
    shared
        .hooks()
        .iter()
        .filter_map(|hook| hook(epoch))
        .collect()
}

/// Runs the statements deferring changes left, now (before a change that
/// may read their rows).
async fn flush(conn: &mut SqliteConnection, shared: &WriterShared) -> Result<(), AuditError> {
    for d in take_deferred(shared) {
        d.execute(&mut *conn, "write deferred rows").await?;
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
