//! Python plugins in tests: a plugin directory copied into a temp dir and
//! made self-contained by `plugin-protocol/python/vendor.sh`, the documented
//! build step (vendored grpcio + protobuf, stubs generated from the .proto,
//! the `hutch_plugin` helper).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TEMP_PREFIX;

/// The repository root (the workspace holding this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `plugin-protocol/python/vendor.sh`.
pub fn vendor_script() -> PathBuf {
    repo_root().join("plugin-protocol/python/vendor.sh")
}

/// Runs `vendor.sh DIR`.
///
/// # Errors
/// When the script cannot run or fails (its stderr is in the error).
pub fn vendor(dir: &Path) -> io::Result<()> {
    let out = Command::new(vendor_script()).arg(dir).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "vendor.sh {} failed ({}):\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        if name == "vendor" || name == ".vendor.tmp" || name == "__pycache__" {
            continue;
        }
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&e.path(), &dst.join(&name))?;
        } else if ty.is_file() {
            std::fs::copy(e.path(), dst.join(&name))?;
        }
    }
    Ok(())
}

/// A copy of the plugin directory `src` (without any `vendor/` it has) in a
/// new world-readable temp dir, vendored. The plugin dir is `result/plugin`.
///
/// # Errors
/// When copying or vendoring fails.
pub fn vendored_copy(src: &Path) -> io::Result<tempfile::TempDir> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}py-"))
        .tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let dir = tmp.path().join("plugin");
    copy_tree(src, &dir)?;
    vendor(&dir)?;
    Ok(tmp)
}
