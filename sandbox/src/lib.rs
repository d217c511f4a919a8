//! The mechanism that confines one plugin process.
//!
//! **Owns**: turning a sandbox specification into a running, confined process
//! (namespaces, mount tree, cgroups, Landlock, seccomp, capabilities, rlimits)
//! and reporting how it ended; probing what the host kernel supports
//! ([`host`], behind `hutchd check-host`).
//!
//! **Must not**: use an async runtime, know about gRPC, plugins' manifests or
//! the audit store. It is the only crate in the workspace allowed `unsafe`;
//! each block is one call with a `// SAFETY:` comment naming the invariant.
#![allow(unsafe_code)]

pub mod host;
