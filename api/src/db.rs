//! The one database file (`hutch.db`) everything in the api crate shares.
//!
//! [`Db::open`] opens (creating if missing) the SQLite file with the pragmas
//! Hutch relies on and applies the embedded migrations (`api/migrations`):
//!
//! 1. `journal_mode=WAL`: readers never block the single audit writer;
//! 2. `synchronous=FULL`: a COMMIT that returned is on disk. (The audit
//!    writer switches its own connection to `NORMAL` and syncs the WAL itself
//!    before answering anyone, overlapped with its next batch: see
//!    `audit/writer.rs`.)
//! 3. `temp_store=MEMORY`, a 16 MiB page cache per connection and a WAL
//!    checkpoint every 4000 pages (the audit writer's batches are the hot
//!    path: no statement journal files, no cache spills mid-batch);
//! 4. `foreign_keys=ON`, and a busy timeout so that occasional writers other
//!    than the audit writer (registry, users, policies) wait instead of failing;
//! 5. migrations, after refusing a database whose schema is newer than this
//!    binary knows (a downgrade would otherwise silently run old code on a new
//!    schema).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The migrations embedded in this binary (A1 owns 0001 and 0002, later ones
/// belong to the proxy's tables).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a connection waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool (SQLite has one writer; the rest serve readers).
pub(crate) const MAX_CONNECTIONS: u32 = 8;

/// The pool's `cache_size` (KiB when negative), as a literal for the
/// statement texts that restore it.
macro_rules! pool_cache_size {
    () => {
        "-16384"
    };
}
pub(crate) use pool_cache_size;

/// Errors of [`Db::open`].
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file could not be opened or a pragma failed.
    #[error("open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// Reading the applied migrations failed.
    #[error("read schema version of {path}: {source}")]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The database was written by a newer Hutch.
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this hutch supports: refusing to open it (upgrade hutch or restore a backup)"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The newest migration applied to the file.
        found: i64,
        /// The newest migration this binary embeds.
        supported: i64,
    },
    /// Applying migrations failed.
    #[error("migrate database {path}: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// The shared database: a connection pool on `hutch.db` with pragmas set and
/// the schema migrated. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if missing) the database at `path`, sets the pragmas
    /// and applies migrations.
    ///
    /// # Errors
    /// [`DbError::Open`] if the file cannot be opened, [`DbError::SchemaTooNew`]
    /// if a newer Hutch wrote it, [`DbError::Migrate`] if a migration fails.
    pub async fn open(path: impl AsRef<Path>) -> Result<Db, DbError> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Statement journals (multi-row INSERTs) in memory, not in temp files.
            .pragma("temp_store", "memory")
            // 16 MiB of page cache per connection (default 2 MiB): the audit
            // indexes' hot pages stay cached instead of being re-read and
            // spilled in the middle of a batch. Allocated only as used. The
            // audit writer keeps a smaller one while it holds a connection
            // (see `audit::writer`'s `HOLD_SQL`).
            .pragma("cache_size", pool_cache_size!())
            // Checkpoint the WAL every ~16 MiB instead of 4 MiB: pages written
            // by many batches are copied back once.
            .pragma("wal_autocheckpoint", "4000");
        // No ping before handing out a pooled connection: the database is a
        // local file, and the ping is one more round trip to the
        // connection's worker thread on every query (half the cost of a
        // cached read).
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|source| DbError::Open {
                path: path.clone(),
                source,
            })?;
        let db = Db { pool, path };
        db.refuse_newer_schema().await?;
        MIGRATOR
            .run(&db.pool)
            .await
            .map_err(|source| DbError::Migrate {
                path: db.path.clone(),
                source,
            })?;
        Ok(db)
    }

    async fn refuse_newer_schema(&self) -> Result<(), DbError> {
        let err = |source| DbError::SchemaVersion {
            path: self.path.clone(),
            source,
        };
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        if table.is_none() {
            return Ok(());
        }
        let found: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
        let supported = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match found {
            Some(found) if found > supported => Err(DbError::SchemaTooNew {
                path: self.path.clone(),
                found,
                supported,
            }),
            _ => Ok(()),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
