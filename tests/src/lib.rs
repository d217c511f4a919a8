//! Shared helpers for Hutch's end-to-end tests and hostile plugins.
//!
//! **Owns**: the privilege gate for tests that need root, and helpers to
//! build throw-away plugin directories.
//!
//! **Must not**: be used by production code.

/// Name of the variable that turns a privileged-test skip into a failure.
pub const REQUIRE_PRIVILEGED: &str = "HUTCH_REQUIRE_PRIVILEGED_TESTS";

/// Returns `true` when the current test may use root-only kernel features.
///
/// When not root, prints a visible `SKIP` line and returns `false`, unless
/// `HUTCH_REQUIRE_PRIVILEGED_TESTS=1` is set, in which case it panics so CI
/// can never pass by skipping.
///
/// # Panics
/// When not root and `HUTCH_REQUIRE_PRIVILEGED_TESTS=1`.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_PRIVILEGED).as_deref() == Ok("1") {
        panic!("{test}: needs root, and {REQUIRE_PRIVILEGED}=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs root (set {REQUIRE_PRIVILEGED}=1 to make this a failure)");
    false
}
