//! Robustness of a real hutchd: SIGHUP (and `hutchctl config reload`) with a
//! broken config keeps the daemon running on the old config; `kill -9` with
//! plugins and tasks running, then a restart, leaves no orphan process or
//! cgroup, loses no acknowledged audit event, fails the interrupted tasks
//! and audits the recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hutch_tests::daemon::{Hutchd, s, wait_for};
use hutch_tests::{privileged, processes_with, unique_marker};

fn manifest(marker: &str) -> String {
    format!(
        r#"id = "org.example.crash"
version = "1.0.0"
scopes = ["data:read", "data:write"]
env = {{ PROBE_MARKER = "{marker}" }}

[[actions]]
name = "sleep"
description = "Progress until cancelled"
"#
    )
}

#[test]
fn sighup_with_a_broken_config_keeps_running() {
    if !privileged("sighup_with_a_broken_config_keeps_running") {
        return;
    }
    let mut d = Hutchd::start("crash-hup").unwrap();
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{good}\n[supervisor]\nstop_graze = \"5s\"\n"),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.alive(), "hutchd died on a bad config:\n{}", d.log());
    d.ctl(&["status"]).ok();
    let logged = wait_for(Duration::from_secs(5), || {
        d.log().contains("stop_graze").then_some(())
    });
    assert!(logged.is_some(), "the log says what is wrong:\n{}", d.log());

    // The same through the control socket: exit 2, the key named, nothing changed.
    let r = d.ctl(&["config", "reload"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("stop_graze"), "{r:?}");
    let bad = d.root().join("bad.toml");
    std::fs::write(&bad, "[sandbox]\nlandlock_min_abi = \"high\"\n").unwrap();
    let r = d.ctl(&["config", "reload", "--file", bad.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("line 2"), "{r:?}");

    // A good file is installed, loaded and audited.
    let fixed = d.root().join("fixed.toml");
    std::fs::write(
        &fixed,
        format!("{good}\n[supervisor]\nstop_grace = \"3s\"\n"),
    )
    .unwrap();
    d.ctl(&["config", "reload", "--file", fixed.to_str().unwrap()])
        .ok();
    let shown = d.ctl(&["config", "show"]).ok();
    assert!(shown.stdout.contains("stop_grace = \"3s\""), "{shown:?}");
    let ev = d
        .ctl(&["--json", "audit", "query", "--op", "admin.config.reload"])
        .ok()
        .json();
    let ev = ev["events"].as_array().unwrap();
    assert!(
        ev.iter().any(|e| s(e, "decision") == "denied"),
        "the refused reload is audited"
    );
    assert!(ev.iter().any(|e| s(e, "decision") == "allowed"));
    assert_eq!(d.stop(), Some(0), "SIGTERM exits 0:\n{}", d.log());
}

#[test]
fn kill_9_then_restart_leaves_nothing_and_loses_nothing() {
    if !privileged("kill_9_then_restart_leaves_nothing_and_loses_nothing") {
        return;
    }
    let marker = unique_marker();
    let mut d = Hutchd::start("crash-kill9").unwrap();
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    let dir = d.example_plugin("crash", &manifest(&marker)).unwrap();
    d.ctl(&[
        "plugin",
        "install",
        dir.to_str().unwrap(),
        "--grant-all",
        "--enable",
    ])
    .ok();

    // Load: tasks running, objects being written by the admin meanwhile.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let t = d
            .ctl(&[
                "--json",
                "task",
                "run",
                "org.example.crash",
                "sleep",
                "--args",
                r#"{"ms":600000,"step_ms":50}"#,
                "--detach",
            ])
            .ok()
            .json();
        tasks.push(s(&t, "id").to_owned());
    }
    d.ctl(&["dataset", "create", "D", "--id", "dsk"]).ok();
    let f = d.root().join("v.bin");
    for i in 0..5 {
        std::fs::write(&f, format!("version {i}")).unwrap();
        d.ctl(&["dataset", "put", "dsk", "obj", f.to_str().unwrap()])
            .ok();
    }
    let running = wait_for(Duration::from_secs(30), || {
        let l = d
            .ctl(&["--json", "task", "list", "--state", "running"])
            .json();
        (l["tasks"].as_array().map(Vec::len) == Some(tasks.len())).then_some(())
    });
    assert!(running.is_some(), "tasks run");
    assert!(!processes_with(&marker).is_empty(), "the plugin runs");
    let inst = d
        .ctl(&["--json", "plugin", "status", "org.example.crash"])
        .ok()
        .json();
    let old_instance = s(&inst, "instance_id").to_owned();
    assert!(!old_instance.is_empty());

    // The plugin's cgroups, by path.
    let old_cgroups = d.leftover_cgroups();
    assert!(!old_cgroups.is_empty(), "the running plugin has cgroups");

    // Everything acknowledged so far.
    let before = d
        .ctl(&["--json", "audit", "query", "--limit", "100000"])
        .ok()
        .json();
    let before = before["events"].as_array().unwrap().clone();
    assert!(!before.is_empty());

    d.kill9();
    // PDEATHSIG: the plugin does not outlive the daemon for long.
    let gone = wait_for(Duration::from_secs(10), || {
        processes_with(&marker).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "orphan plugin processes: {:?}",
        processes_with(&marker)
    );

    d.respawn().unwrap();
    let old_gone = wait_for(Duration::from_secs(10), || {
        old_cgroups.iter().all(|p| !p.exists()).then_some(())
    });
    assert!(
        old_gone.is_some(),
        "the crashed run's cgroups survive the restart: {:?}",
        old_cgroups
            .iter()
            .filter(|p| p.exists())
            .collect::<Vec<_>>()
    );

    // No acknowledged event lost or changed; the chain is intact.
    let after = d
        .ctl(&["--json", "audit", "query", "--limit", "100000"])
        .ok()
        .json();
    let after = after["events"].as_array().unwrap();
    for e in &before {
        let id = e["id"].as_i64().unwrap();
        let a = after.iter().find(|x| x["id"].as_i64() == Some(id));
        assert_eq!(
            a.map(|x| s(x, "hash")),
            Some(s(e, "hash")),
            "event {id} lost or changed"
        );
    }
    d.ctl(&["audit", "verify"]).ok();

    // The interrupted tasks are failed, and the recovery is audited.
    for t in &tasks {
        let x = d.ctl(&["--json", "task", "show", t]).ok().json();
        assert_eq!(s(&x["task"], "state"), "failed", "{x}");
    }
    let last = before.last().unwrap()["id"].as_i64().unwrap();
    let recovery = after
        .iter()
        .filter(|e| e["id"].as_i64() > Some(last))
        .any(|e| s(e, "actor_kind") == "daemon" && s(e, "operation").contains("recover"));
    assert!(recovery, "recovery audited: {after:?}");

    // The enabled plugin comes back, in a new instance; a clean stop leaves nothing.
    let back = wait_for(Duration::from_secs(30), || {
        let p = d
            .ctl(&["--json", "plugin", "status", "org.example.crash"])
            .json();
        (s(&p, "state") == "running" && s(&p, "instance_id") != old_instance).then_some(())
    });
    assert!(back.is_some(), "the enabled plugin restarts");
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    assert!(processes_with(&marker).is_empty());
    assert!(
        d.leftover_cgroups().is_empty(),
        "{:?}",
        d.leftover_cgroups()
    );
}
