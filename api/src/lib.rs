//! Hutch's one door: the per-plugin gRPC proxy.
//!
//! **Owns**: one gRPC server per plugin instance on its own Unix socket,
//! identifying the caller by that socket and its peer credentials;
//! authorization of every call (granted scopes, the acting user's rights,
//! admin policy, rate limits); the backends behind one trait (the built-in
//! store now); the hash-chained audit store and revert.
//!
//! **Must not**: spawn or confine processes (that is `hutch-sandbox`), or
//! trust anything a plugin says about itself.
//!
//! Modules:
//! - [`server`]: [`server::ApiCore`] and `serve_instance` (one socket and
//!   tonic server per instance), the gate every call passes, the Agent and
//!   Data services, the task hub the daemon assigns tasks through;
//! - [`authz`]: SPEC §6 decisions from the users/teams/ACL/policy tables;
//! - [`limits`]: rate, concurrency, connection, size and duration limits;
//! - [`audit`], [`db`], [`store`], [`revert`]: the database, the hash-chained
//!   audit store, the backends and revert.
//!
//! The flow of a call and the test proving each authorization invariant are
//! in `docs/api.md`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use hutch_api::{audit::*, db::Db, server::ApiCore, store::*};
//!
//! let db = Db::open("/var/lib/hutch/hutch.db").await?;
//! let audit = AuditStore::open(&db, AuditConfig::default()).await?;
//! let blobs = StoreConfig::new("/var/lib/hutch/blobs");
//! let store = BuiltinStore::open(&db, audit.clone(), blobs).await?;
//! let core = ApiCore::new(Arc::new(store), audit).await?;
//! // core.serve_instance(InstanceSpec { .. }) per running plugin instance.
//! # Ok(()) }
//! ```

pub mod authz;
pub mod clock;
pub mod limits;
pub mod server;

pub mod audit;
pub mod db;
pub mod revert;
pub mod store;
