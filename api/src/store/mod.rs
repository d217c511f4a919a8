//! Data backends behind one trait, and the built-in store.
//!
//! Everything outside this module talks to a [`Backend`] (`Arc<dyn Backend>`)
//! and never learns which backend it is. Mutating methods take the caller's
//! [`AuditEvent`] (actor, task, decision, details filled in) and record it
//! exactly once, whatever happens: the backend sets the operation, the
//! canonical resource (`dataset/<id>/object/<key>`), the before/after
//! versions and the outcome. On success the change and its event were
//! committed together (see `crate::audit` for why this holds for the
//! built-in store); on [`StoreError::Audit`] neither happened.

mod blobs;
mod builtin;
mod reserve;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditEvent, EventId};

pub use builtin::{
    BuiltinStore, DEFAULT_INLINE_MAX_BYTES, DEFAULT_MIN_FREE_BYTES, GcReport, RetentionPolicy,
    RetentionReport, StoreConfig,
};

/// A dataset id: 1-64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatasetId(String);

impl DatasetId {
    /// Validates a dataset id.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] if empty, too long or not `[A-Za-z0-9_-]`.
    pub fn new(s: impl Into<String>) -> Result<DatasetId, StoreError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(DatasetId(s))
        } else {
            Err(StoreError::InvalidName {
                what: "dataset id",
                value: truncate(&s),
                reason: "must be 1-64 characters of [A-Za-z0-9_-]",
            })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object key: 1-1024 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates an object key.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] if empty, longer than 1024 bytes or holding
    /// control characters.
    pub fn new(s: impl Into<String>) -> Result<ObjectKey, StoreError> {
        let s = s.into();
        if !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control) {
            Ok(ObjectKey(s))
        } else {
            Err(StoreError::InvalidName {
                what: "object key",
                value: truncate(&s),
                reason: "must be 1-1024 bytes without control characters",
            })
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// An object's version: 1 for the first write, +1 on every write (puts,
/// metadata changes, deletes, restores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub i64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Object or dataset metadata: string keys and values.
pub type Metadata = BTreeMap<String, String>;

/// The precondition of a write (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// Write unconditionally.
    Any,
    /// The object must not exist (or be deleted).
    Absent,
    /// The object's current version must be this one.
    Version(Version),
}

impl Expect {
    /// The precondition a protocol's `optional uint64 expected_version`
    /// means: unset writes unconditionally, 0 means "must not exist", any
    /// other value must be the current version. `None` when the value is
    /// out of range.
    pub fn from_expected_version(v: Option<u64>) -> Option<Self> {
        match v {
            None => Some(Expect::Any),
            Some(0) => Some(Expect::Absent),
            Some(n) => i64::try_from(n).ok().map(|n| Expect::Version(Version(n))),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any"),
            Expect::Absent => f.write_str("absent"),
            Expect::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// A dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Its id.
    pub id: DatasetId,
    /// Human name.
    pub name: String,
    /// The owning user.
    pub owner: Option<String>,
    /// Metadata.
    pub metadata: Metadata,
    /// Creation time, µs since the epoch.
    pub created_us: i64,
}

/// What to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDataset {
    /// The id; `None` lets the backend pick a fresh one.
    pub id: Option<DatasetId>,
    /// Human name.
    pub name: String,
    /// The owning user.
    pub owner: Option<String>,
    /// Metadata.
    pub metadata: Metadata,
}

/// One version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The dataset.
    pub dataset: DatasetId,
    /// The key.
    pub key: ObjectKey,
    /// This version.
    pub version: Version,
    /// Whether this version is a deletion (tombstone).
    pub deleted: bool,
    /// Content size in bytes (0 for tombstones).
    pub size: u64,
    /// sha256 of the content, lowercase hex (None for tombstones).
    pub sha256: Option<String>,
    /// Metadata.
    pub metadata: Metadata,
    /// When this version was written, µs since the epoch.
    pub created_us: i64,
}

/// Listing options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListObjects {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only keys after this one (paging).
    pub after: Option<ObjectKey>,
    /// At most this many (0: the backend's default of 1000).
    pub limit: u32,
}

/// Content in or out: chunks of bytes. Never a whole object in memory.
pub type ByteStream = BoxStream<'static, Result<Vec<u8>, StoreError>>;

/// A mutation's result and the id of the audit event recording it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited<T> {
    /// The result.
    pub value: T,
    /// The event recording it (committed with it).
    pub event_id: EventId,
}

/// The canonical resource name of an object.
pub fn object_resource(dataset: &DatasetId, key: &ObjectKey) -> String {
    format!("dataset/{dataset}/object/{key}")
}

/// The canonical resource name of a dataset.
pub fn dataset_resource(dataset: &DatasetId) -> String {
    format!("dataset/{dataset}")
}

/// Parses `dataset/<id>/object/<key>`.
pub fn parse_object_resource(resource: &str) -> Option<(DatasetId, ObjectKey)> {
    let rest = resource.strip_prefix("dataset/")?;
    let (ds, key) = rest.split_once("/object/")?;
    Some((DatasetId::new(ds).ok()?, ObjectKey::new(key).ok()?))
}

/// Errors of the backends.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A dataset id or object key is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The (truncated) value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The dataset does not exist.
    #[error("dataset {0} not found")]
    DatasetNotFound(DatasetId),
    /// The dataset already exists.
    #[error("dataset {0} already exists")]
    DatasetExists(DatasetId),
    /// The object (or that version of it) does not exist or is deleted.
    #[error("object {dataset}/{key}{} not found", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    ObjectNotFound {
        /// The dataset.
        dataset: DatasetId,
        /// The key.
        key: ObjectKey,
        /// The version asked for.
        version: Option<Version>,
    },
    /// Compare-and-set failed.
    #[error("object {dataset}/{key}: expected {expected}, current version is {}", current.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))]
    Conflict {
        /// The dataset.
        dataset: DatasetId,
        /// The key.
        key: ObjectKey,
        /// What the caller expected.
        expected: Expect,
        /// The actual current version (None: absent; a deleted object's tombstone version otherwise).
        current: Option<Version>,
    },
    /// The old version was removed by retention.
    #[error("object {dataset}/{key} version {version} was removed by retention")]
    Purged {
        /// The dataset.
        dataset: DatasetId,
        /// The key.
        key: ObjectKey,
        /// The version.
        version: Version,
    },
    /// The caller's content stream failed.
    #[error("content stream: {0}")]
    Input(String),
    /// Writing the content would eat into the free-space reserve
    /// ([`StoreConfig::min_free_bytes`]); nothing was changed.
    #[error(
        "free-space reserve: {path} has {free} bytes free and the store keeps {min_free} free; the write was refused"
    )]
    DiskReserve {
        /// A directory on the filesystem that is short.
        path: PathBuf,
        /// Bytes free there when refused.
        free: u64,
        /// The reserve.
        min_free: u64,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A database operation failed.
    #[error("store {op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// Stored data could not be decoded.
    #[error("store: corrupt {0}")]
    Corrupt(String),
    /// Recording the audit event failed: nothing was changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The backend does not implement this operation.
    #[error("{0}: not supported by this backend")]
    NotSupported(&'static str),
}

/// A data backend. Object safe: use it as `Arc<dyn Backend>`.
///
/// Reads are not audited here (the proxy records them); every mutating
/// method records exactly one audit event (see the module doc).
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Creates a dataset.
    ///
    /// # Errors
    /// [`StoreError::DatasetExists`], [`StoreError::Audit`], [`StoreError::Db`].
    async fn create_dataset(
        &self,
        event: AuditEvent,
        new: NewDataset,
    ) -> Result<Audited<DatasetInfo>, StoreError>;

    /// One dataset.
    ///
    /// # Errors
    /// [`StoreError::DatasetNotFound`], [`StoreError::Db`].
    async fn get_dataset(&self, id: &DatasetId) -> Result<DatasetInfo, StoreError>;

    /// All datasets, ordered by id.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, StoreError>;

    /// Writes an object's content from `content` (streamed, never held whole
    /// in memory) if `expect` holds. `metadata` replaces the metadata; `None`
    /// keeps the previous version's (empty for a new object).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if `expect` does not hold, [`StoreError::Input`]
    /// if the stream fails, [`StoreError::DatasetNotFound`], [`StoreError::Io`],
    /// [`StoreError::Audit`].
    async fn put_object(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        expect: Expect,
        metadata: Option<Metadata>,
        content: ByteStream,
    ) -> Result<Audited<ObjectInfo>, StoreError>;

    /// An object's content (current or an old `version`), streamed.
    ///
    /// # Errors
    /// [`StoreError::ObjectNotFound`] (also for a deleted object or a tombstone
    /// version), [`StoreError::Purged`], [`StoreError::Io`].
    async fn get_object(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
        version: Option<Version>,
    ) -> Result<(ObjectInfo, ByteStream), StoreError>;

    /// An object's info (current or an old `version`; an old tombstone version
    /// is returned with `deleted`).
    ///
    /// # Errors
    /// [`StoreError::ObjectNotFound`], [`StoreError::Purged`].
    async fn head_object(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
        version: Option<Version>,
    ) -> Result<ObjectInfo, StoreError>;

    /// Current, not deleted objects, ordered by key.
    ///
    /// # Errors
    /// [`StoreError::DatasetNotFound`], [`StoreError::Db`].
    async fn list_objects(
        &self,
        dataset: &DatasetId,
        options: &ListObjects,
    ) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes an object (writes a tombstone version) if `expect` holds.
    /// Returns the tombstone.
    ///
    /// # Errors
    /// [`StoreError::ObjectNotFound`], [`StoreError::Conflict`], [`StoreError::Audit`].
    async fn delete_object(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        expect: Expect,
    ) -> Result<Audited<ObjectInfo>, StoreError>;

    /// Replaces an object's metadata (a new version, same content) if `expect` holds.
    ///
    /// # Errors
    /// [`StoreError::ObjectNotFound`], [`StoreError::Conflict`], [`StoreError::Audit`].
    async fn set_metadata(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        expect: Expect,
        metadata: Metadata,
    ) -> Result<Audited<ObjectInfo>, StoreError>;

    /// The object's current version, a deletion's tombstone included (None:
    /// it never existed).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    async fn current_version(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
    ) -> Result<Option<Version>, StoreError>;

    /// Every retained version of an object, oldest first (tombstones included).
    ///
    /// # Errors
    /// [`StoreError::ObjectNotFound`] if the object never existed, [`StoreError::Db`].
    async fn list_versions(
        &self,
        dataset: &DatasetId,
        key: &ObjectKey,
    ) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Makes the content and metadata of old version `to` current again (as a
    /// new version), or deletes the object when `to` is `None` or a
    /// tombstone; if `expect` holds. Used by revert. Restoring "deleted" onto
    /// an absent or deleted object changes nothing (the event records
    /// before = after).
    ///
    /// # Errors
    /// [`StoreError::Conflict`], [`StoreError::Purged`], [`StoreError::Audit`].
    async fn restore_version(
        &self,
        event: AuditEvent,
        dataset: &DatasetId,
        key: &ObjectKey,
        to: Option<Version>,
        expect: Expect,
    ) -> Result<Audited<ObjectInfo>, StoreError>;
}
