//! `hutchctl`: the admin and user CLI.
fn main() {}
