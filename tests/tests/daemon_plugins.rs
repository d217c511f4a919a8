//! Plugin registry and supervisor through `hutchctl` against a real hutchd:
//! install with a subset grant, refusals, upgrade without silent grant
//! growth, grants, start/stop/restart, logs, remove keeping the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hutch_tests::daemon::{Hutchd, s, wait_for};
use hutch_tests::privileged;

const MANIFEST_V1: &str = r#"id = "org.example.reg"
version = "1.0.0"
scopes = ["data:read", "data:write"]

[[actions]]
name = "sleep"
description = "sleep"
"#;

const MANIFEST_V2: &str = r#"id = "org.example.reg"
version = "1.1.0"
scopes = ["data:read", "data:write", "datasets:create"]

[[actions]]
name = "sleep"
description = "sleep"
"#;

fn scopes(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn install_grants_upgrade_remove() {
    if !privileged("install_grants_upgrade_remove") {
        return;
    }
    let d = Hutchd::start("plugins-reg").unwrap();
    let v1 = d.example_plugin("v1", MANIFEST_V1).unwrap();
    let v2 = d.example_plugin("v2", MANIFEST_V2).unwrap();
    let v1s = v1.to_str().unwrap();

    // A scope the manifest does not request cannot be granted.
    let r = d.ctl(&[
        "plugin",
        "install",
        v1s,
        "--grant",
        "data:read",
        "--grant",
        "data:delete",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("data:delete"), "{r:?}");

    // A subset is granted.
    let p = d
        .ctl(&["--json", "plugin", "install", v1s, "--grant", "data:read"])
        .ok()
        .json();
    assert_eq!(s(&p, "id"), "org.example.reg");
    assert_eq!(scopes(&p, "granted_scopes"), ["data:read"]);
    assert_eq!(scopes(&p, "requested_scopes"), ["data:read", "data:write"]);
    assert!(!s(&p, "content_hash").is_empty());

    // Installing again is refused: upgrade is the way.
    let r = d.ctl(&["plugin", "install", v1s]);
    assert_eq!(r.code, 1, "{r:?}");

    let l = d.ctl(&["--json", "plugin", "list"]).ok().json();
    assert_eq!(l["plugins"].as_array().map(Vec::len), Some(1));

    // Upgrade: the new scope is requested, not granted.
    let p = d
        .ctl(&[
            "--json",
            "plugin",
            "upgrade",
            "org.example.reg",
            v2.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(s(&p, "version"), "1.1.0");
    assert_eq!(scopes(&p, "granted_scopes"), ["data:read"]);
    assert!(scopes(&p, "requested_scopes").contains(&"datasets:create".to_owned()));

    // An explicit grant adds it.
    let p = d
        .ctl(&[
            "--json",
            "plugin",
            "grants",
            "org.example.reg",
            "--set",
            "data:read",
            "--set",
            "datasets:create",
        ])
        .ok()
        .json();
    assert_eq!(
        scopes(&p, "granted_scopes"),
        ["data:read", "datasets:create"]
    );

    // Remove: gone from the registry, its audit trail stays.
    d.ctl(&["plugin", "remove", "org.example.reg"]).ok();
    let r = d.ctl(&["plugin", "status", "org.example.reg"]);
    assert_eq!(r.code, 4, "{r:?}");
    let ev = d
        .ctl(&[
            "--json",
            "audit",
            "query",
            "--resource",
            "plugin/org.example.reg",
        ])
        .ok()
        .json();
    let ops: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "operation"))
        .collect();
    assert!(ops.len() >= 4, "install, upgrade, grants, remove: {ops:?}");
    d.ctl(&["audit", "verify"]).ok();
}

#[test]
fn start_stop_restart_and_logs() {
    if !privileged("start_stop_restart_and_logs") {
        return;
    }
    let d = Hutchd::start("plugins-life").unwrap();
    let dir = d.example_plugin("life", MANIFEST_V1).unwrap();
    d.ctl(&[
        "plugin",
        "install",
        dir.to_str().unwrap(),
        "--grant-all",
        "--enable",
    ])
    .ok();
    let running = |d: &Hutchd| {
        wait_for(Duration::from_secs(20), || {
            let p = d
                .ctl(&["--json", "plugin", "status", "org.example.reg"])
                .json();
            let pid = p["pid"].as_u64().unwrap_or(0);
            (s(&p, "state") == "running" && pid != 0).then_some(pid)
        })
    };
    let pid1 = running(&d).expect("the enabled plugin runs");
    assert!(pid_alive(pid1));

    // Its stdout reaches the log ring.
    let logs = wait_for(Duration::from_secs(10), || {
        let r = d.ctl(&["plugin", "logs", "org.example.reg"]);
        r.stdout.contains("example plugin up").then_some(r.stdout)
    });
    assert!(logs.is_some(), "plugin stdout not in `plugin logs`");

    d.ctl(&["plugin", "restart", "org.example.reg"]).ok();
    let pid2 = running(&d).expect("running after restart");
    assert_ne!(pid1, pid2);
    assert!(wait_for(Duration::from_secs(10), || (!pid_alive(pid1)).then_some(())).is_some());

    let p = d
        .ctl(&["--json", "plugin", "stop", "org.example.reg"])
        .ok()
        .json();
    assert_ne!(s(&p, "state"), "running", "{p}");
    assert!(wait_for(Duration::from_secs(10), || (!pid_alive(pid2)).then_some(())).is_some());
    assert!(
        wait_for(Duration::from_secs(10), || d
            .leftover_cgroups()
            .is_empty()
            .then_some(()))
        .is_some(),
        "cgroups left after stop: {:?}",
        d.leftover_cgroups()
    );

    d.ctl(&["plugin", "start", "org.example.reg"]).ok();
    running(&d).expect("running after start");
    d.ctl(&["plugin", "disable", "org.example.reg"]).ok();
    let r = d.ctl(&["task", "run", "org.example.reg", "sleep", "--detach"]);
    assert_ne!(r.code, 0, "a disabled plugin runs no task: {r:?}");
    assert!(r.stderr.contains("disabled"), "{r:?}");
}
