//! Hutch's gRPC contracts and their generated Rust code.
//!
//! **Owns**: the `.proto` files under `proto/hutch/{plugin,admin}/v1/` (the
//! language-neutral contract plugin authors generate clients from), the code
//! generated from them, and a small client helper for Rust plugin authors.
//!
//! **Must not**: contain policy. Authorization, limits and auditing live in
//! `hutch-api`; this crate only describes messages and services.

pub mod client;

/// The plugin-facing protocol (`hutch.plugin.v1`).
pub mod plugin {
    /// Version 1 of the plugin protocol.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("hutch.plugin.v1");
    }
}

/// The admin protocol spoken on the control socket (`hutch.admin.v1`).
pub mod admin {
    /// Version 1 of the admin protocol.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("hutch.admin.v1");
    }
}
