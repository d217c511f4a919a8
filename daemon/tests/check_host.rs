//! `hutchd check-host` end to end: the real binary probing this host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn hutchd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hutchd"))
}

#[test]
fn json_report_matches_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hutchd.toml");
    std::fs::write(&cfg, "[sandbox]\nlandlock_min_abi = 1\n").unwrap();
    let out = hutchd()
        .args(["--config", cfg.to_str().unwrap(), "check-host", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let insufficient = report["protection"] == "insufficient";
    assert_eq!(out.status.success(), !insufficient, "{report:#}");
    for ns in ["mount", "pid", "net", "ipc", "uts", "cgroup", "user"] {
        assert!(
            report["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == ns),
            "namespace {ns} reported"
        );
    }
    let layout = report["cgroups"]["layout"].as_str().unwrap();
    assert!(["v1", "v2", "hybrid", "none"].contains(&layout));
    assert!(report["x32_enabled"].is_boolean());
}

#[test]
fn impossible_minimum_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hutchd.toml");
    std::fs::write(&cfg, "[sandbox]\nlandlock_min_abi = 99\n").unwrap();
    let out = hutchd()
        .args(["--config", cfg.to_str().unwrap(), "check-host"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("protection        insufficient"), "{text}");
    assert!(text.contains("below the configured minimum 99"), "{text}");
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hutchd.toml");
    std::fs::write(&cfg, "[sandbox]\nlandlok_min_abi = 2\n").unwrap();
    let out = hutchd()
        .args(["--config", cfg.to_str().unwrap(), "check-host"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("landlok_min_abi") && err.contains("line 2"),
        "{err}"
    );
}
