//! `hutchd`: the Hutch daemon.
fn main() {}
