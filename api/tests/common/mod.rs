//! Setup shared by the api integration tests: the audit store and the
//! built-in store on a real SQLite file.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::io;
use std::path::Path;

use hutch_api::audit::{AuditConfig, AuditStore};
use hutch_api::db::Db;
use hutch_api::store::{BuiltinStore, StoreConfig};

/// Opens (and migrates) the audit store and the built-in store on `db`,
/// keeping blob files in `dir/blobs`, with the default free-space reserve.
/// (The error is an `io::Error` carrying the store's message, so it
/// converts into either test `Result` type.)
pub async fn stores(db: &Db, dir: &Path) -> io::Result<(AuditStore, BuiltinStore)> {
    stores_with(db, StoreConfig::new(dir.join("blobs"))).await
}

/// [`stores`] with the store's config given.
pub async fn stores_with(db: &Db, config: StoreConfig) -> io::Result<(AuditStore, BuiltinStore)> {
    let audit = AuditStore::open(db, AuditConfig::default())
        .await
        .map_err(io::Error::other)?;
    let store = BuiltinStore::open(db, audit.clone(), config)
        .await
        .map_err(io::Error::other)?;
    Ok((audit, store))
}
