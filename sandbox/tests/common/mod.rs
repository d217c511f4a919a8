//! Shared by the sandbox's root-only integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

/// True when running as root; otherwise prints `SKIP` and returns false,
/// or fails when `HUTCH_REQUIRE_PRIVILEGED_TESTS=1` (CI).
pub fn privileged(name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref(),
        Ok("1"),
        "{name} needs root"
    );
    println!("SKIP {name}: needs root");
    false
}

/// A plugin dir the sandbox uid can traverse.
pub fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
