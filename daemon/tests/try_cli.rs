//! `hutchd try` as a process: broken manifests exit 2 naming the key; a
//! working plugin's exit status comes through (root only).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn plugin_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("hutch-plugin.toml"), manifest).unwrap();
    dir
}

fn hutchd_try(dir: &tempfile::TempDir, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hutchd"))
        .arg("try")
        .arg(dir.path())
        .args(extra)
        .output()
        .unwrap()
}

const BASE: &str = "id = \"org.example.cli\"\nversion = \"1.0.0\"\nexec = \"/bin/sh\"\n";

#[test]
fn broken_manifest_exits_2_naming_the_key() {
    for (manifest, key) in [
        (format!("{BASE}colour = \"red\"\n"), "colour"),
        (
            format!("{BASE}[resources]\nmemory_max = \"lots\"\n"),
            "resources.memory_max",
        ),
        (
            format!("{BASE}[filesystem]\nread_only = [\"/proc/1\"]\n"),
            "filesystem.read_only[0]",
        ),
        (BASE.replace("org.example.cli", "NotReverseDns"), "id"),
        (BASE.replace("/bin/sh", "../escape"), "exec"),
    ] {
        let dir = plugin_dir(&manifest);
        let out = hutchd_try(&dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{manifest}: {stderr}");
        assert!(
            stderr.contains(key),
            "{manifest}: stderr does not name {key}: {stderr}"
        );
    }
}

#[test]
fn missing_manifest_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = hutchd_try(&dir, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_status_and_signal_come_through() {
    if !nix::unistd::geteuid().is_root() {
        assert_ne!(
            std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref(),
            Ok("1"),
            "needs root"
        );
        println!("SKIP exit_status_and_signal_come_through: needs root");
        return;
    }
    let dir = plugin_dir(&format!("{BASE}args = [\"-c\"]\n"));
    let report = dir.path().join("report.json");
    let out = hutchd_try(
        &dir,
        &[
            "--report",
            report.to_str().unwrap(),
            "--",
            "echo out; exit 7",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hutch: exited with status 7"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["exit_code"], 7);
    let out = hutchd_try(&dir, &["--", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hutch: killed by signal 9 (SIGKILL)"));
}
