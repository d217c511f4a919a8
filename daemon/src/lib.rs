//! `hutchd` and `hutchctl`: the parts of Hutch an admin runs.
//!
//! **Owns**: the daemon config, the plugin registry, the supervisor (restart,
//! health, watchdog), the control socket and systemd integration, and the
//! command-line front ends. Binaries stay thin; the logic lives here so the
//! end-to-end tests can call it.
//!
//! **Must not**: re-implement what the other crates own: confinement is
//! `hutch-sandbox`, authorization and audit are `hutch-api`, the wire format is
//! `hutch-plugin-protocol`.

pub mod accounts;
pub mod check_host;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod manifest;
pub mod plugin_spec;
pub mod registry;
pub mod service;
pub mod supervisor;
pub mod tasks;
pub mod try_cmd;
pub mod try_summary;
pub mod try_task;
