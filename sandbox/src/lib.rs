//! The mechanism that confines one plugin process.
#![allow(unsafe_code)]
pub mod cgroup;
pub mod host;
