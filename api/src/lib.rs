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

pub mod authz;
pub mod clock;
pub mod limits;
pub mod server;

pub mod audit;
pub mod db;
pub mod revert;
pub mod store;
