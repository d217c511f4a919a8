//! The example plugins end to end through a real `hutchd` and `hutchctl`:
//! install, blur and threshold on a real image checked pixel for pixel
//! against the contract's reference, the task's audit trail, revert, chain
//! verification (`hutch_tests::examples::run_image_e2e`); and a cancelled
//! long blur that leaves no output behind.
//!
//! Needs root and `cargo build --workspace --bins` (hutchd, hutchctl,
//! hutch-blur).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use hutch_tests::examples::{run_cancel_e2e, run_image_e2e, rust_blur_dir};
use hutch_tests::privileged;

#[test]
fn rust_blur_end_to_end() -> std::io::Result<()> {
    if !privileged("rust_blur_end_to_end") {
        return Ok(());
    }
    let root = tempfile::Builder::new().prefix("hutch-t-rb-").tempdir()?;
    let dir = rust_blur_dir(root.path())?;
    run_image_e2e("rust-blur", &dir)
}

#[test]
fn rust_blur_cancel_leaves_no_output() -> std::io::Result<()> {
    if !privileged("rust_blur_cancel_leaves_no_output") {
        return Ok(());
    }
    let root = tempfile::Builder::new().prefix("hutch-t-rbc-").tempdir()?;
    let dir = rust_blur_dir(root.path())?;
    // 3 Mpixel, 16 passes: long enough to be cancelled mid-way.
    run_cancel_e2e("rust-blur-cancel", &dir, 2048, 1536)
}

#[test]
fn python_blur_end_to_end() -> std::io::Result<()> {
    if !privileged("python_blur_end_to_end") {
        return Ok(());
    }
    // The plugin dir as its README builds it: a copy vendored by
    // plugin-protocol/python/vendor.sh (grpcio, protobuf, stubs, helper),
    // running on /usr/bin/python3 in the full default sandbox.
    let src = hutch_tests::python::repo_root().join("examples/plugins/python-blur");
    let tmp = hutch_tests::python::vendored_copy(&src)?;
    let dir = tmp.path().join("plugin");
    run_image_e2e("python-blur", &dir)?;
    run_cancel_e2e("python-blur-cancel", &dir, 2048, 1536)
}
