//! The built-in store: metadata in `hutch.db` (tables `datasets` and
//! `object_versions`; an object's current version is its newest row), small
//! content inline in the version rows, larger content in the blob directory.
//!
//! A write happens in two steps. First the content: up to the inline limit
//! ([`DEFAULT_INLINE_MAX_BYTES`], 64 KiB) it is buffered and hashed in
//! memory and will live in the version row itself; a larger object is
//! streamed into a content-addressed blob (fsynced; nothing refers to it
//! yet). Then the version row and the audit event are committed in one
//! transaction by the audit writer (`AuditStore::record_change`), batched
//! with whatever other calls are queued (one fsync for all of them). The
//! compare-and-set check runs inside that transaction; since the writer
//! serializes all transactions, exactly one of several racing writes
//! expecting the same version wins. The checks run before anything is
//! written, so a refused write needs no savepoint to undo.
//!
//! Two in-memory caches spare the hot paths a query: the datasets known to
//! exist (datasets are never deleted; a dataset enters the set only after
//! the transaction creating or using it committed) and the current version
//! row of recently read objects. The latter is invalidated by the writer
//! after every batch that touched the object (committed or rolled back),
//! before the writing call is answered; a reader only fills it if no
//! invalidation happened since it started reading, so it never holds a row
//! older than the last commit.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnection;

use super::blobs::{Blobs, PendingBlob, random_hex};
use super::{
    Audited, Backend, ByteStream, DatasetId, DatasetInfo, Expect, ListObjects, Metadata,
    NewDataset, ObjectInfo, ObjectKey, StoreError, Version, dataset_resource, object_resource,
};
use crate::audit::{
    Actor, AuditError, AuditEvent, AuditStore, Deferred, DeferredArg, FlushHook, JsonRows, Mutated,
    Outcome, now_us, ops,
};
use crate::db::Db;

/// Where the built-in store keeps content, and how much room it leaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The blob directory (`/var/lib/hutch/blobs`).
    pub blob_dir: PathBuf,
    /// Bytes that must stay free on the filesystems of the blob directory
    /// and of the database: a put, metadata change or new dataset that
    /// would leave less is refused ([`StoreError::DiskReserve`], audited)
    /// and changes nothing. 0 turns the reserve off. Default
    /// [`DEFAULT_MIN_FREE_BYTES`].
    #[serde(default = "default_min_free")]
    pub min_free_bytes: u64,
}

/// The default free-space reserve: 1 GiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;

fn default_min_free() -> u64 {
    DEFAULT_MIN_FREE_BYTES
}

impl StoreConfig {
    /// Blobs in `blob_dir`, the default reserve.
    ///
    /// ```
    /// use hutch_api::store::StoreConfig;
    /// let config = StoreConfig::new("/var/lib/hutch/blobs");
    /// assert_eq!(config.min_free_bytes, 1 << 30);
    /// ```
    pub fn new(blob_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            blob_dir: blob_dir.into(),
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// How long old object versions stay retrievable (and revertable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Non-current versions older than this are removed. The current version
    /// (also a deletion's tombstone) is always kept.
    pub keep_old_versions_for: Duration,
    /// Blobs and temp files younger than this are never garbage collected
    /// (temp files of writes in progress).
    pub gc_min_age: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_old_versions_for: Duration::from_secs(30 * 24 * 3600),
            gc_min_age: Duration::from_secs(3600),
        }
    }
}

/// What [`BuiltinStore::apply_retention`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Old versions removed.
    pub versions_removed: u64,
    /// The garbage collection that followed.
    pub gc: GcReport,
}

/// What [`BuiltinStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs on disk before.
    pub blobs_seen: u64,
    /// Unreferenced blobs removed.
    pub blobs_removed: u64,
    /// Stale temp files removed.
    pub temp_files_removed: u64,
}

/// Objects up to this size are stored inline in their version row (no blob
/// file); see [`BuiltinStore::with_inline_max`].
pub const DEFAULT_INLINE_MAX_BYTES: usize = 64 * 1024;

/// Current-version rows cached for reads (the cache is emptied when full).
const HEAD_CACHE_MAX: usize = 65_536;

/// The built-in backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BuiltinStore {
    db: Db,
    audit: AuditStore,
    blobs: Arc<Blobs>,
    inline_max: usize,
    caches: Arc<Caches>,
    writer: Arc<WriterHeads>,
}

/// The writer-side state of the built-in store, one per audit store (so
/// every store on it shares it), touched only by changes running in the
/// audit writer, which runs them one at a time:
/// - the current version row of objects the writer wrote or read (or that
///   they do not exist), so a write of a known object needs no query (only
///   the writer changes objects; the state is dropped whenever the writer's
///   epoch moves: a rolled-back batch, a write by another process);
/// - the objects that calls on their way to the writer are about to write
///   ([`WriterHeads::upcoming`]): the first change that finds its object
///   unknown looks up the current versions of all of them in one query, so
///   a batch of writes to new (or not recently written) objects costs one
///   round trip to SQLite instead of one per write;
/// - the version rows planned by the current batch and not yet inserted:
///   the writer's flush hook hands them over as one statement
///   ([`FLUSH_SQL`]), which the writer sends with the batch's events and
///   `COMMIT`, or on its own before a change that may read them, so a
///   batch of puts costs no statement of its own.
#[derive(Debug, Default)]
struct WriterHeads {
    inner: Mutex<WriterHeadsInner>,
    /// Objects calls are about to hand to the writer: (dataset, key,
    /// [`head_key`]). Only a hint of what to look up together; at most
    /// [`UPCOMING_MAX`].
    upcoming: Mutex<Vec<(DatasetId, ObjectKey, String)>>,
}

#[derive(Debug, Default)]
struct WriterHeadsInner {
    epoch: u64,
    /// By [`head_key`]: the current version row, `None` if the object has
    /// no version.
    rows: HashMap<String, Option<Arc<VersionRow>>>,
    pending: Vec<(VersionRow, Option<Vec<u8>>)>,
}

/// The most objects [`WriterHeads::upcoming`] remembers.
const UPCOMING_MAX: usize = 4096;

/// The columns of a [`VersionRow`] of `object_versions v`.
macro_rules! version_columns {
    () => {
        "SELECT v.dataset_id, v.key, v.version, v.deleted, v.blob, v.size, v.metadata, v.created_us, (v.content IS NOT NULL) AS inline"
    };
}

/// Current version rows of the objects whose dataset and key parameter 1
/// lists as JSON rows ([`JsonRows`]); an object without versions has no
/// row. One text for any number of objects (one round trip); the listed
/// objects drive the join (`CROSS JOIN` keeps SQLite from scanning
/// `object_versions`), each found by two primary-key seeks.
const HEADS_SQL: &str = concat!(
    version_columns!(),
    " FROM (SELECT value->>0 AS ds, value->>1 AS key FROM jsonb_each(?)) k \
     CROSS JOIN object_versions v ON v.dataset_id = k.ds AND v.key = k.key \
     WHERE v.version = (SELECT MAX(n.version) FROM object_versions n \
     WHERE n.dataset_id = k.ds AND n.key = k.key)"
);

/// The insert of the pending version rows ([`WriterHeads::deferred`]):
/// parameter 1 is the inline contents end to end, 2 the rows as JSON
/// ([`crate::audit::JsonRows`]: dataset, key, version, deleted, blob, size,
/// metadata, created_us, then the content's offset and length in
/// parameter 1, both null for a version without inline content). One text
/// for any number of rows, so the writer sends it in its batch's last round
/// trip.
const FLUSH_SQL: &str = "INSERT INTO object_versions (dataset_id, key, version, deleted, blob, \
     size, metadata, created_us, content) \
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, \
     value->>7, CASE WHEN value->>9 IS NULL THEN NULL WHEN value->>9 = 0 THEN X'' \
     ELSE substr(?, value->>8 + 1, value->>9) END \
     FROM jsonb_each(?) WHERE true";

impl WriterHeads {
    /// The state, emptied first if the writer's epoch moved.
    fn lock(&self, epoch: u64) -> MutexGuard<'_, WriterHeadsInner> {
        let mut g = lock(&self.inner);
        if g.epoch != epoch {
            g.epoch = epoch;
            g.rows.clear();
            g.pending.clear();
        }
        g
    }

    /// Notes that a call will soon hand the writer a change of `ds`/`key`
    /// (unless the writer already knows the object).
    fn expect_write(&self, ds: &DatasetId, key: &ObjectKey) {
        let hk = head_key(ds, key);
        if lock(&self.inner).rows.contains_key(&hk) {
            return;
        }
        let mut up = lock(&self.upcoming);
        if up.len() < UPCOMING_MAX {
            up.push((ds.clone(), key.clone(), hk));
        }
    }

    /// Looks up the current version of `ds`/`key` and of every upcoming
    /// object the writer does not know, in one query ([`HEADS_SQL`]), and
    /// remembers them (inside the writer's transaction, after the pending
    /// rows were inserted, so the answer is current).
    async fn load(
        &self,
        conn: &mut SqliteConnection,
        epoch: u64,
        ds: &DatasetId,
        key: &ObjectKey,
    ) -> Result<Option<Arc<VersionRow>>, StoreError> {
        let mut wanted = std::mem::take(&mut *lock(&self.upcoming));
        wanted.push((ds.clone(), key.clone(), head_key(ds, key)));
        {
            let g = self.lock(epoch);
            let mut seen = HashSet::new();
            wanted.retain(|(_, _, hk)| !g.rows.contains_key(hk) && seen.insert(hk.clone()));
        }
        let mut found: HashMap<String, Arc<VersionRow>> = HashMap::with_capacity(wanted.len());
        let mut objects = JsonRows::with_capacity(wanted.len(), 48);
        for (d, k, _) in &wanted {
            objects.row();
            objects.text(d.as_str());
            objects.text(k.as_str());
        }
        for row in sqlx::query_as::<_, VersionRow>(HEADS_SQL)
            .bind(objects.finish())
            .fetch_all(&mut *conn)
            .await
            .map_err(db("read object heads"))?
        {
            let hk = head_key_of(&row.dataset_id, &row.key);
            found.insert(hk, Arc::new(row));
        }
        let mut g = self.lock(epoch);
        if g.pending.is_empty() && g.rows.len() + wanted.len() >= HEAD_CACHE_MAX {
            g.rows.clear();
        }
        for (_, _, hk) in wanted {
            let row = found.remove(&hk);
            g.rows.entry(hk).or_insert(row);
        }
        Ok(g.rows.get(&head_key(ds, key)).cloned().flatten())
    }

    /// The pending version rows as one statement ([`FLUSH_SQL`]), taken
    /// out of the state; `None` if there are none.
    fn deferred(&self, epoch: u64) -> Option<Deferred> {
        let pending = std::mem::take(&mut self.lock(epoch).pending);
        if pending.is_empty() {
            return None;
        }
        let mut contents = Vec::new();
        let mut rows = JsonRows::with_capacity(pending.len(), 200);
        for (row, content) in pending {
            rows.row();
            rows.text(&row.dataset_id);
            rows.text(&row.key);
            rows.int(row.version);
            rows.int(row.deleted);
            rows.opt_text(row.blob.as_deref());
            rows.int(row.size);
            rows.text(&row.metadata);
            rows.int(row.created_us);
            match content {
                Some(c) => {
                    rows.int(i64::try_from(contents.len()).unwrap_or(i64::MAX));
                    rows.int(i64::try_from(c.len()).unwrap_or(i64::MAX));
                    contents.extend_from_slice(&c);
                }
                None => {
                    rows.null();
                    rows.null();
                }
            }
        }
        Some(Deferred {
            sql: FLUSH_SQL,
            args: vec![
                DeferredArg::Blob(contents),
                DeferredArg::Text(rows.finish()),
            ],
        })
    }

    /// Inserts the pending version rows now.
    async fn flush(&self, conn: &mut SqliteConnection, epoch: u64) -> Result<(), AuditError> {
        match self.deferred(epoch) {
            Some(d) => d.execute(conn, "write object versions").await,
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct VersionRow {
    dataset_id: String,
    key: String,
    version: i64,
    deleted: i64,
    blob: Option<String>,
    size: i64,
    metadata: String,
    created_us: i64,
    /// 1 if the content is inline in the row (`content IS NOT NULL`).
    inline: i64,
}

/// The store's in-memory caches (see the module doc).
#[derive(Debug, Default)]
struct Caches {
    /// Datasets whose creation has committed (datasets are never deleted).
    datasets: Mutex<HashSet<String>>,
    heads: Mutex<Heads>,
}

#[derive(Debug, Default)]
struct Heads {
    /// Bumped by every invalidation; a reader fills the cache only if it is
    /// unchanged since before its query.
    generation: u64,
    rows: HashMap<String, Arc<VersionRow>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn head_key(ds: &DatasetId, key: &ObjectKey) -> String {
    head_key_of(ds.as_str(), key.as_str())
}

/// [`head_key`] of a stored row's dataset and key (the one format both
/// use: a mismatch would make a known object look absent).
fn head_key_of(ds: &str, key: &str) -> String {
    // Dataset ids hold no '/', so this is unambiguous.
    format!("{ds}/{key}")
}

impl Caches {
    fn dataset_known(&self, ds: &DatasetId) -> bool {
        lock(&self.datasets).contains(ds.as_str())
    }

    fn dataset_committed(&self, ds: &DatasetId) {
        let mut d = lock(&self.datasets);
        if !d.contains(ds.as_str()) {
            d.insert(ds.as_str().to_owned());
        }
    }

    fn head(&self, k: &str) -> (Option<Arc<VersionRow>>, u64) {
        let h = lock(&self.heads);
        (h.rows.get(k).cloned(), h.generation)
    }

    fn remember_head(&self, k: String, row: Arc<VersionRow>, generation: u64) {
        let mut h = lock(&self.heads);
        if h.generation != generation {
            return;
        }
        if h.rows.len() >= HEAD_CACHE_MAX {
            h.rows.clear();
        }
        h.rows.insert(k, row);
    }

    fn forget_head(&self, k: &str) {
        let mut h = lock(&self.heads);
        h.generation = h.generation.wrapping_add(1);
        h.rows.remove(k);
    }
}

impl VersionRow {
    fn info(&self) -> Result<ObjectInfo, StoreError> {
        Ok(ObjectInfo {
            dataset: DatasetId::new(self.dataset_id.clone())?,
            key: ObjectKey::new(self.key.clone())?,
            version: Version(self.version),
            deleted: self.deleted != 0,
            size: u64::try_from(self.size)
                .map_err(|_| StoreError::Corrupt(format!("size of {}", self.key)))?,
            sha256: self.blob.clone(),
            metadata: serde_json::from_str(&self.metadata)
                .map_err(|_| StoreError::Corrupt(format!("metadata of {}", self.key)))?,
            created_us: self.created_us,
        })
    }
}

/// Whether a version refers to a blob file (inline versions only carry its
/// hash; the partial index `object_versions_blob` holds just these rows).
const BLOB_REFERENCED: &str =
    "SELECT 1 FROM object_versions WHERE blob = ? AND content IS NULL LIMIT 1";

const SELECT_VERSION: &str = concat!(version_columns!(), " FROM object_versions v");

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// About the bytes `m` takes stored (its texts), without encoding it.
fn metadata_bytes(m: &Metadata) -> usize {
    m.iter().map(|(k, v)| k.len() + v.len() + 6).sum()
}

fn metadata_text(m: &Metadata) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned())
}

async fn head_row(
    conn: &mut SqliteConnection,
    ds: &DatasetId,
    key: &ObjectKey,
) -> Result<Option<VersionRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_VERSION} WHERE v.dataset_id = ? AND v.key = ? ORDER BY v.version DESC LIMIT 1"
    )))
    .bind(ds.as_str())
    .bind(key.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("read object head"))
}

async fn version_row(
    conn: &mut SqliteConnection,
    ds: &DatasetId,
    key: &ObjectKey,
    version: Version,
) -> Result<Option<VersionRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_VERSION} WHERE v.dataset_id = ? AND v.key = ? AND v.version = ?"
    )))
    .bind(ds.as_str())
    .bind(key.as_str())
    .bind(version.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("read object version"))
}

async fn dataset_exists(conn: &mut SqliteConnection, ds: &DatasetId) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM datasets WHERE id = ?")
        .bind(ds.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("read dataset"))?;
    Ok(found.is_some())
}

fn expect_holds(expect: Expect, current: Option<&VersionRow>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none_or(|c| c.deleted != 0),
        Expect::Version(v) => current.map(|c| c.version) == Some(v.0),
    }
}

/// The new version's content.
struct NewContent {
    deleted: bool,
    blob: Option<String>,
    size: i64,
    /// None: keep the current live version's metadata (empty if none).
    metadata: Option<Metadata>,
    /// Inline content, if any.
    inline: Inline,
}

/// Where a new version's inline content comes from.
enum Inline {
    /// Not inline (a blob file, or a tombstone).
    No,
    /// These bytes.
    Bytes(Vec<u8>),
    /// The inline content of this version of the same object.
    CopyOf(i64),
}

impl Inline {
    /// The same content as `row` (metadata changes and restores).
    fn like(row: &VersionRow) -> Inline {
        if row.inline != 0 {
            Inline::CopyOf(row.version)
        } else {
            Inline::No
        }
    }
}

/// A change's report before it is turned into [`Mutated`].
struct Change {
    info: ObjectInfo,
    before: Option<i64>,
    after: Option<i64>,
}

type ChangeResult = Result<Change, (StoreError, Option<i64>)>;

fn mutated(r: ChangeResult) -> Mutated<Result<ObjectInfo, StoreError>> {
    match r {
        Ok(c) => Mutated {
            value: Ok(c.info),
            failed: None,
            before_version: c.before,
            after_version: c.after,
        },
        Err((e, before)) => Mutated {
            failed: Some(e.to_string()),
            value: Err(e),
            before_version: before,
            after_version: None,
        },
    }
}

/// What [`plan_version`] decided.
enum Planned {
    /// Nothing to write (restoring "deleted" onto a deleted object).
    Unchanged(Change),
    /// Write this row (with this inline content).
    Write {
        row: VersionRow,
        content: Option<Vec<u8>>,
        change: Change,
    },
}

/// The checks of [`write_version`]: dataset, `expect`, the new row. Reads
/// only, so a refusal leaves nothing to undo.
async fn plan_version(
    conn: &mut SqliteConnection,
    caches: &Caches,
    w: &WriterCtx,
    ds: &DatasetId,
    key: &ObjectKey,
    expect: Expect,
    content: impl FnOnce(Option<&VersionRow>) -> Result<Option<NewContent>, StoreError>,
) -> Result<Planned, (StoreError, Option<i64>)> {
    if !caches.dataset_known(ds) && !dataset_exists(conn, ds).await.map_err(|e| (e, None))? {
        return Err((StoreError::DatasetNotFound(ds.clone()), None));
    }
    let cached = w.heads.lock(w.epoch).rows.get(&head_key(ds, key)).cloned();
    let current = match cached {
        Some(known) => known,
        // (No pending row is for an object the writer does not know: the
        // known ones are forgotten only when none is pending.)
        None => w
            .heads
            .load(conn, w.epoch, ds, key)
            .await
            .map_err(|e| (e, None))?,
    };
    let before = current.as_ref().map(|c| c.version);
    if !expect_holds(expect, current.as_deref()) {
        return Err((
            StoreError::Conflict {
                dataset: ds.clone(),
                key: key.clone(),
                expected: expect,
                current: before.map(Version),
            },
            before,
        ));
    }
    let Some(new) = content(current.as_deref()).map_err(|e| (e, before))? else {
        let info = match &current {
            Some(c) => c.info().map_err(|e| (e, before))?,
            None => ObjectInfo {
                dataset: ds.clone(),
                key: key.clone(),
                version: Version(0),
                deleted: true,
                size: 0,
                sha256: None,
                metadata: Metadata::new(),
                created_us: now_us(),
            },
        };
        return Ok(Planned::Unchanged(Change {
            info,
            before,
            after: before,
        }));
    };
    let metadata = match new.metadata {
        Some(m) => metadata_text(&m),
        None => match &current {
            Some(c) if c.deleted == 0 => c.metadata.clone(),
            _ => "{}".to_owned(),
        },
    };
    let bytes = match new.inline {
        Inline::No => None,
        Inline::Bytes(b) => Some(b),
        Inline::CopyOf(v) => {
            let c: Option<Option<Vec<u8>>> = sqlx::query_scalar(
                "SELECT content FROM object_versions WHERE dataset_id = ? AND key = ? AND version = ?",
            )
            .bind(ds.as_str())
            .bind(key.as_str())
            .bind(v)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| (db("read inline content")(e), before))?;
            match c.flatten() {
                Some(b) => Some(b),
                None => {
                    let e = StoreError::Corrupt(format!("inline content of {key} version {v}"));
                    return Err((e, before));
                }
            }
        }
    };
    let row = VersionRow {
        dataset_id: ds.as_str().to_owned(),
        key: key.as_str().to_owned(),
        version: before.unwrap_or(0) + 1,
        deleted: i64::from(new.deleted),
        blob: new.blob,
        size: new.size,
        metadata,
        created_us: now_us(),
        inline: i64::from(bytes.is_some()),
    };
    let info = row.info().map_err(|e| (e, before))?;
    let after = Some(row.version);
    Ok(Planned::Write {
        row,
        content: bytes,
        change: Change {
            info,
            before,
            after,
        },
    })
}

/// What a change running in the writer gets besides the connection.
struct WriterCtx {
    heads: Arc<WriterHeads>,
    /// The writer's epoch when the change runs.
    epoch: u64,
}

impl WriterCtx {
    /// Inserts the rows earlier changes of the batch left pending (before a
    /// query that may read them).
    async fn flush(&self, conn: &mut SqliteConnection) -> Result<(), AuditError> {
        if self.heads.lock(self.epoch).pending.is_empty() {
            return Ok(());
        }
        self.heads.flush(conn, self.epoch).await
    }
}

/// Checks the dataset and `expect`, then plans version `current + 1`: its
/// rows are left pending in the writer state ([`WriterHeads`]) and inserted
/// by the writer's flush hook within the same transaction. A refused change
/// has planned nothing (`Ok(Err(..))`); `Err` means the batch must roll back.
/// `reads_content`: the change may copy the content of an older version
/// (pending rows are inserted first so that it can be read).
#[allow(clippy::too_many_arguments)]
async fn write_version(
    conn: &mut SqliteConnection,
    caches: &Caches,
    w: &WriterCtx,
    reads_content: bool,
    ds: &DatasetId,
    key: &ObjectKey,
    expect: Expect,
    content: impl FnOnce(Option<&VersionRow>) -> Result<Option<NewContent>, StoreError>,
) -> Result<ChangeResult, AuditError> {
    if reads_content {
        w.flush(conn).await?;
    }
    let (row, bytes, change) = match plan_version(conn, caches, w, ds, key, expect, content).await {
        Err(e) => return Ok(Err(e)),
        Ok(Planned::Unchanged(c)) => return Ok(Ok(c)),
        Ok(Planned::Write {
            row,
            content,
            change,
        }) => (row, content, change),
    };
    let mut g = w.heads.lock(w.epoch);
    if g.pending.is_empty() && g.rows.len() >= HEAD_CACHE_MAX {
        g.rows.clear();
    }
    g.rows
        .insert(head_key(ds, key), Some(Arc::new(row.clone())));
    g.pending.push((row, bytes));
    Ok(Ok(change))
}

impl BuiltinStore {
    /// Opens the store on `db` (migrated by [`Db::open`]) and the blob
    /// directory (created if missing). Mutations are recorded through `audit`.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the blob directory cannot be created.
    pub async fn open(
        db: &Db,
        audit: AuditStore,
        config: StoreConfig,
    ) -> Result<BuiltinStore, StoreError> {
        let db_dir = db
            .path()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let blobs = Blobs::open(config.blob_dir, config.min_free_bytes, db_dir).await?;
        let writer = audit
            .writer_state(|| {
                let heads = Arc::new(WriterHeads::default());
                let h = heads.clone();
                let hook: FlushHook = Arc::new(move |epoch| h.deferred(epoch));
                (heads, hook)
            })
            .ok_or_else(|| StoreError::Corrupt("audit writer state of another type".into()))?;
        Ok(BuiltinStore {
            db: db.clone(),
            audit,
            blobs: Arc::new(blobs),
            inline_max: DEFAULT_INLINE_MAX_BYTES,
            caches: Arc::default(),
            writer,
        })
    }

    /// Stores objects up to `bytes` inline in their version row instead of a
    /// blob file (default [`DEFAULT_INLINE_MAX_BYTES`]; 0 keeps every
    /// non-empty object in a blob file). Applies to new writes only.
    #[must_use]
    pub fn with_inline_max(mut self, bytes: usize) -> BuiltinStore {
        self.inline_max = bytes;
        self
    }

    /// The blob directory.
    pub fn blob_dir(&self) -> &std::path::Path {
        self.blobs.root()
    }

    /// Records `event` as failed with `err` (for failures before the writer).
    async fn record_failure(&self, mut event: AuditEvent, err: StoreError) -> StoreError {
        event.outcome = Outcome::Error(err.to_string());
        match self.audit.record(event).await {
            Ok(_) => err,
            Err(a) => {
                tracing::error!(error = %err, audit_error = %a, "could not audit a failed store operation");
                StoreError::Audit(a)
            }
        }
    }

    /// Hands `event` back if `bytes` more fit above the free-space reserve;
    /// otherwise records it as failed and returns the refusal
    /// ([`StoreError::DiskReserve`]).
    async fn room_for(&self, event: AuditEvent, bytes: usize) -> Result<AuditEvent, StoreError> {
        match self.blobs.reserve().check(bytes as u64) {
            Ok(()) => Ok(event),
            Err(e) => Err(self.record_failure(event, e).await),
        }
    }

    /// Runs `change` of object `ds`/`key` with its event through the audit
    /// writer (no savepoint: [`write_version`] writes only after its checks);
    /// the writer drops the object's cached head once the batch ended.
    async fn commit<F>(
        &self,
        event: AuditEvent,
        ds: &DatasetId,
        key: &ObjectKey,
        change: F,
    ) -> Result<Audited<ObjectInfo>, StoreError>
    where
        F: for<'c> FnOnce(
                &'c mut SqliteConnection,
                WriterCtx,
            ) -> BoxFuture<'c, Result<ChangeResult, AuditError>>
            + Send
            + 'static,
    {
        let caches = self.caches.clone();
        let hk = head_key(ds, key);
        let after = Box::new(move |_committed: bool| caches.forget_head(&hk));
        let (audit, heads) = (self.audit.clone(), self.writer.clone());
        let (event_id, value) = self
            .audit
            .record_change(
                event,
                move |conn| {
                    Box::pin(async move {
                        // The epoch as the writer runs this change.
                        let w = WriterCtx {
                            heads,
                            epoch: audit.writer_epoch(),
                        };
                        Ok(mutated(change(conn, w).await?))
                    })
                },
                false,
                true,
                Some(after),
            )
            .await?;
        let value = value?;
        // Committed with the change: the dataset exists for good.
        self.caches.dataset_committed(ds);
        Ok(Audited { value, event_id })
    }

    async fn read_row(
        &self,
        ds: &DatasetId,
        key: &ObjectKey,
        version: Option<Version>,
    ) -> Result<Arc<VersionRow>, StoreError> {
        let not_found = || StoreError::ObjectNotFound {
            dataset: ds.clone(),
            key: key.clone(),
            version,
        };
        let Some(v) = version else {
            let hk = head_key(ds, key);
            let (hit, generation) = self.caches.head(&hk);
            if let Some(row) = hit {
                return Ok(row);
            }
            let mut conn = self
                .db
                .pool()
                .acquire()
                .await
                .map_err(db("acquire connection"))?;
            let row = Arc::new(head_row(&mut conn, ds, key).await?.ok_or_else(not_found)?);
            self.caches.remember_head(hk, row.clone(), generation);
            return Ok(row);
        };
        let mut conn = self
            .db
            .pool()
            .acquire()
            .await
            .map_err(db("acquire connection"))?;
        let head = head_row(&mut conn, ds, key).await?;
        match version_row(&mut conn, ds, key, v).await? {
            Some(r) => Ok(Arc::new(r)),
            None => match head {
                Some(h) if h.version > v.0 && v.0 > 0 => Err(StoreError::Purged {
                    dataset: ds.clone(),
                    key: key.clone(),
                    version: v,
                }),
                _ => Err(not_found()),
            },
        }
    }

    /// Removes blobs no version references (and temp files older than
    /// `min_age`); records a `store.gc` event by `actor` when it removes any.
    ///
    /// # Errors
    /// [`StoreError::Io`] on directory errors, [`StoreError::Audit`].
    pub async fn gc(&self, actor: Actor, min_age: Duration) -> Result<GcReport, StoreError> {
        let mut report = GcReport {
            temp_files_removed: self.blobs.clean_tmp(min_age).await?,
            ..GcReport::default()
        };
        let all = self.blobs.list().await?;
        report.blobs_seen = all.len() as u64;
        let mut candidates = Vec::new();
        for hash in all {
            if self.blobs.is_pending(&hash) || !self.unreferenced(&hash).await? {
                continue;
            }
            let old = tokio::fs::metadata(self.blobs.path_of(&hash))
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old {
                candidates.push(hash);
            }
        }
        if candidates.is_empty() {
            return Ok(report);
        }
        let blobs = self.blobs.clone();
        let event = AuditEvent::new(actor, "store.gc", "store");
        let (_, removed) = self
            .audit
            .record_with(event, move |conn| {
                Box::pin(async move {
                    // Inside the writer's transaction: no commit can add a
                    // reference between this check and the unlink.
                    let mut removed = 0u64;
                    let mut failed = None;
                    for hash in candidates {
                        let referenced: Result<Option<i64>, _> =
                            sqlx::query_scalar(BLOB_REFERENCED)
                                .bind(&hash)
                                .fetch_optional(&mut *conn)
                                .await;
                        match referenced {
                            Ok(Some(_)) => {}
                            Ok(None) => match blobs.remove_if_not_pending(&hash) {
                                Ok(true) => removed += 1,
                                Ok(false) => {}
                                Err(e) => failed = Some(e.to_string()),
                            },
                            Err(e) => failed = Some(e.to_string()),
                        }
                    }
                    if let Some(e) = failed {
                        // Unlinks cannot be rolled back; partial GC is a valid state.
                        tracing::warn!(error = %e, "garbage collection skipped some blobs");
                    }
                    Mutated {
                        value: removed,
                        failed: None,
                        before_version: None,
                        after_version: None,
                    }
                })
            })
            .await?;
        report.blobs_removed = removed;
        Ok(report)
    }

    async fn unreferenced(&self, hash: &str) -> Result<bool, StoreError> {
        let r: Option<i64> = sqlx::query_scalar(BLOB_REFERENCED)
            .bind(hash)
            .fetch_optional(self.db.pool())
            .await
            .map_err(db("find blob references"))?;
        Ok(r.is_none())
    }

    /// Applies `policy`: removes non-current versions older than
    /// `keep_old_versions_for` (recording a `store.retention` event by `actor`
    /// in the same transaction), then garbage-collects blobs.
    ///
    /// # Errors
    /// As [`BuiltinStore::gc`].
    pub async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        actor: Actor,
    ) -> Result<RetentionReport, StoreError> {
        let keep = i64::try_from(policy.keep_old_versions_for.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_us().saturating_sub(keep);
        let event = AuditEvent::new(actor.clone(), ops::STORE_RETENTION, "store")
            .with_details(serde_json::json!({ "cutoff_us": cutoff }));
        let (_, removed) = self
            .audit
            .record_with(event, move |conn| {
                Box::pin(async move {
                    // Never an object's newest version (its current one).
                    let r = sqlx::query(
                        "DELETE FROM object_versions WHERE created_us < ? AND EXISTS (\
                         SELECT 1 FROM object_versions n WHERE n.dataset_id = object_versions.dataset_id \
                         AND n.key = object_versions.key AND n.version > object_versions.version)",
                    )
                    .bind(cutoff)
                    .execute(&mut *conn)
                    .await;
                    match r {
                        Ok(done) => Mutated {
                            value: Ok(done.rows_affected()),
                            failed: None,
                            before_version: None,
                            after_version: None,
                        },
                        Err(e) => Mutated {
                            failed: Some(e.to_string()),
                            value: Err(db("remove old versions")(e)),
                            before_version: None,
                            after_version: None,
                        },
                    }
                })
            })
            .await?;
        let versions_removed = removed?;
        let gc = self.gc(actor, policy.gc_min_age).await?;
        Ok(RetentionReport {
            versions_removed,
            gc,
        })
    }

    fn prepare(event: AuditEvent, operation: &str, resource: String) -> AuditEvent {
        AuditEvent {
            operation: operation.to_owned(),
            resource,
            ..event
        }
    }
}

#[async_trait]
impl Backend for BuiltinStore {
    async fn create_dataset(
        &self,
        event: AuditEvent,
        new: NewDataset,
    ) -> Result<Audited<DatasetInfo>, StoreError> {
        let id = match new.id {
            Some(id) => id,
            None => DatasetId::new(format!("ds_{}", random_hex(12)?))?,
        };
        let event = Self::prepare(event, ops::DATASET_CREATE, dataset_resource(&id));
        // Its name and metadata are new bytes, bounded by the message size.
        let event = self
            .room_for(event, new.name.len() + metadata_bytes(&new.metadata))
            .await?;
        let info = DatasetInfo {
            id,
            name: new.name,
            owner: new.owner,
            metadata: new.metadata,
            created_us: now_us(),
        };
        let (event_id, value) = self
            .audit
            .record_with(event, move |conn| {
                Box::pin(async move {
                    let r: Result<DatasetInfo, StoreError> = async {
                        if dataset_exists(conn, &info.id).await? {
                            return Err(StoreError::DatasetExists(info.id.clone()));
                        }
                        sqlx::query("INSERT INTO datasets (id, name, owner, metadata, created_us) VALUES (?, ?, ?, ?, ?)")
                            .bind(info.id.as_str())
                            .bind(&info.name)
                            .bind(&info.owner)
                            .bind(metadata_text(&info.metadata))
                            .bind(info.created_us)
                            .execute(&mut *conn)
                            .await
                            .map_err(db("create dataset"))?;
                        Ok(info)
                    }
                    .await;
                    Mutated {
                        failed: r.as_ref().err().map(ToString::to_string),
                        value: r,
                        before_version: None,
                        after_version: None,
                    }
                })
            })
            .await?;
        let value = value?;
        self.caches.dataset_committed(&value.id);
        Ok(Audited { value, event_id })
    }

    async fn get_dataset(&self, id: &DatasetId) -> Result<DatasetInfo, StoreError> {
        let row: Option<(String, String, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT id, name, owner, metadata, created_us FROM datasets WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(self.db.pool())
        .await
        .map_err(db("read dataset"))?;
        let row = row.ok_or_else(|| StoreError::DatasetNotFound(id.clone()))?;
        dataset_info(row)
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, StoreError> {
        let rows: Vec<(String, String, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT id, name, owner, metadata, created_us FROM datasets ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(db("list datasets"))?;
        rows.into_iter().map(dataset_info).collect()
    }

    async fn put_object(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        expect: Expect,
        metadata: Option<Metadata>,
        content: ByteStream,
    ) -> Result<Audited<ObjectInfo>, StoreError> {
        let event = Self::prepare(event, ops::OBJECT_PUT, object_resource(dataset, key));
        // Buffer up to the inline limit; a larger object spills into a blob.
        let mut content = content;
        let mut buf: Vec<u8> = Vec::new();
        let spilled: Option<ByteStream> = loop {
            match content.next().await {
                None => break None,
                Some(Err(e)) => return Err(self.record_failure(event, e).await),
                Some(Ok(chunk)) if buf.len() + chunk.len() > self.inline_max => {
                    let prefix = std::mem::take(&mut buf);
                    let head = futures::stream::iter([Ok(prefix), Ok(chunk)]);
                    break Some(head.chain(content).boxed());
                }
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            }
        };
        // Inline content must fit above the free-space reserve (a blob is
        // checked as it streams, in `Blobs::write`).
        let event = match spilled {
            None => self.room_for(event, buf.len()).await?,
            Some(_) => event,
        };
        let (blob, hash, size, inline) = match spilled {
            None => {
                let hash = hex::encode(Sha256::digest(&buf));
                let size = i64::try_from(buf.len()).unwrap_or(i64::MAX);
                (None, hash, size, Inline::Bytes(buf))
            }
            Some(stream) => {
                let blob: PendingBlob = match self.blobs.write(stream).await {
                    Ok(b) => b,
                    Err(e) => return Err(self.record_failure(event, e).await),
                };
                let hash = blob.hash.clone();
                let size = i64::try_from(blob.size).unwrap_or(i64::MAX);
                (Some(blob), hash, size, Inline::No)
            }
        };
        let (ds, k) = (dataset.clone(), key.clone());
        let caches = self.caches.clone();
        self.writer.expect_write(dataset, key);
        let r = self
            .commit(event, dataset, key, move |conn, w| {
                Box::pin(async move {
                    write_version(conn, &caches, &w, false, &ds, &k, expect, |_| {
                        Ok(Some(NewContent {
                            deleted: false,
                            blob: Some(hash),
                            size,
                            metadata,
                            inline,
                        }))
                    })
                    .await
                })
            })
            .await;
        // The version row (if committed) now protects the blob.
        drop(blob);
        r
    }

    async fn get_object(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
        version: Option<Version>,
    ) -> Result<(ObjectInfo, ByteStream), StoreError> {
        let row = self.read_row(dataset, key, version).await?;
        let info = row.info()?;
        let Some(hash) = info.sha256.clone().filter(|_| !info.deleted) else {
            return Err(StoreError::ObjectNotFound {
                dataset: dataset.clone(),
                key: key.clone(),
                version,
            });
        };
        if info.size == 0 {
            return Ok((info, futures::stream::empty().boxed()));
        }
        if row.inline != 0 {
            let bytes: Option<Option<Vec<u8>>> = sqlx::query_scalar(
                "SELECT content FROM object_versions WHERE dataset_id = ? AND key = ? AND version = ?",
            )
            .bind(dataset.as_str())
            .bind(key.as_str())
            .bind(row.version)
            .fetch_optional(self.db.pool())
            .await
            .map_err(db("read inline content"))?;
            // Gone only if retention removed it since the row was read.
            let bytes = bytes.flatten().ok_or_else(|| StoreError::Purged {
                dataset: dataset.clone(),
                key: key.clone(),
                version: info.version,
            })?;
            return Ok((
                info,
                futures::stream::once(async move { Ok(bytes) }).boxed(),
            ));
        }
        let stream = self.blobs.read(&hash).await?;
        Ok((info, stream))
    }

    async fn head_object(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
        version: Option<Version>,
    ) -> Result<ObjectInfo, StoreError> {
        let info = self.read_row(dataset, key, version).await?.info()?;
        if version.is_none() && info.deleted {
            return Err(StoreError::ObjectNotFound {
                dataset: dataset.clone(),
                key: key.clone(),
                version,
            });
        }
        Ok(info)
    }

    async fn list_objects(
        &self,
        dataset: &DatasetId,
        options: &ListObjects,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.get_dataset(dataset).await?;
        let limit = if options.limit == 0 {
            1000
        } else {
            options.limit.min(10_000)
        };
        // Each key's newest version (the primary key's order), if not a
        // tombstone.
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "{SELECT_VERSION} WHERE v.dataset_id = "
        ));
        qb.push_bind(dataset.as_str().to_owned()).push(
            " AND v.deleted = 0 AND NOT EXISTS (SELECT 1 FROM object_versions n \
             WHERE n.dataset_id = v.dataset_id AND n.key = v.key AND n.version > v.version)",
        );
        if let Some(p) = &options.prefix {
            qb.push(" AND v.key >= ").push_bind(p.clone());
            qb.push(" AND v.key < ").push_bind(format!("{p}\u{10FFFF}"));
        }
        if let Some(a) = &options.after {
            qb.push(" AND v.key > ").push_bind(a.as_str().to_owned());
        }
        qb.push(" ORDER BY v.key LIMIT ")
            .push_bind(i64::from(limit));
        let rows: Vec<VersionRow> = qb
            .build_query_as()
            .fetch_all(self.db.pool())
            .await
            .map_err(db("list objects"))?;
        rows.iter().map(VersionRow::info).collect()
    }

    async fn delete_object(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        expect: Expect,
    ) -> Result<Audited<ObjectInfo>, StoreError> {
        let event = Self::prepare(event, ops::OBJECT_DELETE, object_resource(dataset, key));
        let (ds, k) = (dataset.clone(), key.clone());
        let caches = self.caches.clone();
        self.writer.expect_write(dataset, key);
        self.commit(event, dataset, key, move |conn, w| {
            Box::pin(async move {
                let (ds2, k2) = (ds.clone(), k.clone());
                write_version(
                    conn,
                    &caches,
                    &w,
                    false,
                    &ds,
                    &k,
                    expect,
                    move |cur| match cur {
                        Some(c) if c.deleted == 0 => Ok(Some(NewContent {
                            deleted: true,
                            blob: None,
                            size: 0,
                            metadata: Some(Metadata::new()),
                            inline: Inline::No,
                        })),
                        _ => Err(StoreError::ObjectNotFound {
                            dataset: ds2,
                            key: k2,
                            version: None,
                        }),
                    },
                )
                .await
            })
        })
        .await
    }

    async fn set_metadata(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        expect: Expect,
        metadata: Metadata,
    ) -> Result<Audited<ObjectInfo>, StoreError> {
        let event = Self::prepare(
            event,
            ops::OBJECT_SET_METADATA,
            object_resource(dataset, key),
        );
        // A new version row: the metadata (bounded by the message size) and
        // a copy of inline content.
        let event = self
            .room_for(event, metadata_bytes(&metadata) + self.inline_max)
            .await?;
        let (ds, k) = (dataset.clone(), key.clone());
        let caches = self.caches.clone();
        self.commit(event, dataset, key, move |conn, w| {
            Box::pin(async move {
                let (ds2, k2) = (ds.clone(), k.clone());
                write_version(
                    conn,
                    &caches,
                    &w,
                    true,
                    &ds,
                    &k,
                    expect,
                    move |cur| match cur {
                        Some(c) if c.deleted == 0 => Ok(Some(NewContent {
                            deleted: false,
                            blob: c.blob.clone(),
                            size: c.size,
                            metadata: Some(metadata),
                            inline: Inline::like(c),
                        })),
                        _ => Err(StoreError::ObjectNotFound {
                            dataset: ds2,
                            key: k2,
                            version: None,
                        }),
                    },
                )
                .await
            })
        })
        .await
    }

    async fn current_version(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
    ) -> Result<Option<Version>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM object_versions WHERE dataset_id = ? AND key = ? ORDER BY version DESC LIMIT 1")
                .bind(dataset.as_str())
                .bind(key.as_str())
                .fetch_optional(self.db.pool())
                .await
                .map_err(db("read object version"))?;
        Ok(v.map(Version))
    }

    async fn list_versions(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let rows: Vec<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_VERSION} WHERE v.dataset_id = ? AND v.key = ? ORDER BY v.version"
        )))
        .bind(dataset.as_str())
        .bind(key.as_str())
        .fetch_all(self.db.pool())
        .await
        .map_err(db("list versions"))?;
        if rows.is_empty() {
            return Err(StoreError::ObjectNotFound {
                dataset: dataset.clone(),
                key: key.clone(),
                version: None,
            });
        }
        rows.iter().map(VersionRow::info).collect()
    }

    async fn restore_version(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        to: Option<Version>,
        expect: Expect,
    ) -> Result<Audited<ObjectInfo>, StoreError> {
        let event = Self::prepare(event, ops::OBJECT_REVERT, object_resource(dataset, key));
        let (ds, k) = (dataset.clone(), key.clone());
        let caches = self.caches.clone();
        self.commit(event, dataset, key, move |conn, w| {
            Box::pin(async move {
                // The target may be a version this batch planned.
                w.flush(conn).await?;
                let target = match to {
                    None => None,
                    Some(v) => match version_row(conn, &ds, &k, v).await {
                        Ok(Some(row)) => Some(row),
                        Ok(None) => {
                            let e = StoreError::Purged {
                                dataset: ds.clone(),
                                key: k.clone(),
                                version: v,
                            };
                            return Ok(Err((e, None)));
                        }
                        Err(e) => return Ok(Err((e, None))),
                    },
                };
                write_version(conn, &caches, &w, true, &ds, &k, expect, move |cur| {
                    let cur_live = cur.is_some_and(|c| c.deleted == 0);
                    Ok(match target {
                        Some(t) if t.deleted == 0 => Some(NewContent {
                            deleted: false,
                            inline: Inline::like(&t),
                            blob: t.blob,
                            size: t.size,
                            metadata: Some(serde_json::from_str(&t.metadata).map_err(|_| {
                                StoreError::Corrupt(format!("metadata of {}", t.key))
                            })?),
                        }),
                        _ if cur_live => Some(NewContent {
                            deleted: true,
                            blob: None,
                            size: 0,
                            metadata: Some(Metadata::new()),
                            inline: Inline::No,
                        }),
                        _ => None,
                    })
                })
                .await
            })
        })
        .await
    }
}

fn dataset_info(
    row: (String, String, Option<String>, String, i64),
) -> Result<DatasetInfo, StoreError> {
    let (id, name, owner, metadata, created_us) = row;
    Ok(DatasetInfo {
        metadata: serde_json::from_str(&metadata)
            .map_err(|_| StoreError::Corrupt(format!("metadata of dataset {id}")))?,
        id: DatasetId::new(id)?,
        name,
        owner,
        created_us,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The batched head lookup seeks each listed object by the primary key
    /// and never scans `object_versions` (which grows with every write).
    #[tokio::test]
    async fn the_head_lookup_seeks_and_never_scans_the_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("hutch.db")).await.unwrap();
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            HEADS_SQL
        )))
        .bind("[]")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
        .collect();
        let text = plan.join("\n");
        assert!(!text.contains("SCAN v"), "{text}");
        assert!(!text.contains("SCAN n"), "{text}");
        assert!(text.contains("SEARCH v USING"), "{text}");
        db.close().await;
    }
}
