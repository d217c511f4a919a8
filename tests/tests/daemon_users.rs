//! Callers are who SO_PEERCRED says: hutchctl run as other uids
//! (`Command::uid`) against a real hutchd. Non-admins are refused admin
//! operations with exit 3 and a message naming them; they see only their own
//! (and their teams') tasks, datasets and audit events; unregistered uids get
//! nothing but `whoami`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hutch_tests::daemon::{Hutchd, s, wait_for};
use hutch_tests::privileged;

// uids with no passwd entry: mapped to Hutch users explicitly.
const ALICE: u32 = 61_001;
const BOB: u32 = 61_002;
const STRANGER: u32 = 61_003;

const MANIFEST: &str = r#"id = "org.example.count"
version = "1.0.0"
scopes = ["data:read"]

[[actions]]
name = "count"
description = "Total input size"
"#;

#[test]
fn non_admins_are_refused_and_see_only_their_own() {
    if !privileged("non_admins_are_refused_and_see_only_their_own") {
        return;
    }
    let d = Hutchd::start("users").unwrap();
    let dir = d.example_plugin("count", MANIFEST).unwrap();
    let dirs = dir.to_str().unwrap();
    d.ctl(&[
        "user",
        "add",
        "alice",
        "--uid",
        &ALICE.to_string(),
        "--role",
        "member",
    ])
    .ok();
    d.ctl(&[
        "user",
        "add",
        "bob",
        "--uid",
        &BOB.to_string(),
        "--role",
        "member",
    ])
    .ok();
    d.ctl(&["plugin", "install", dirs, "--grant-all", "--enable"])
        .ok();

    // whoami works for anyone; the identity comes from the socket.
    let w = d.ctl_as(ALICE, &["--json", "whoami"]).ok().json();
    assert_eq!(s(&w, "user"), "alice");
    assert_eq!(w["admin"], false);
    let w = d.ctl_as(STRANGER, &["--json", "whoami"]).ok().json();
    assert_eq!(s(&w, "user"), "");
    let w = d.ctl(&["--json", "whoami"]).ok().json();
    assert_eq!(w["admin"], true);
    assert_eq!(s(&w, "admin_reason"), "uid 0");

    // Admin operations: exit 3 and a message saying who you are.
    for args in [
        &["plugin", "install", dirs][..],
        &["plugin", "stop", "org.example.count"],
        &["user", "add", "mallory", "--role", "admin"],
        &["policy", "list"],
        &["kill-switch", "on"],
        &["audit", "revert", "1"],
        &["config", "show"],
    ] {
        let r = d.ctl_as(ALICE, args);
        assert_eq!(r.code, 3, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&format!(
                "admins only; you are uid {ALICE} (alice, role member)"
            )),
            "{args:?}: {r:?}"
        );
    }
    // Unregistered: nothing at all, and told how to get registered.
    let r = d.ctl_as(STRANGER, &["status"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("hutchctl user add NAME --uid {STRANGER}")),
        "{r:?}"
    );
    assert_eq!(d.ctl_as(STRANGER, &["task", "list"]).code, 3);

    // Each user has a dataset; each sees only theirs.
    d.ctl(&["dataset", "create", "A", "--id", "dsa", "--owner", "alice"])
        .ok();
    d.ctl(&["dataset", "create", "B", "--id", "dsb", "--owner", "bob"])
        .ok();
    let f = d.root().join("x.bin");
    std::fs::write(&f, b"0123456789").unwrap();
    d.ctl(&["dataset", "put", "dsa", "x", f.to_str().unwrap()])
        .ok();
    d.ctl(&["dataset", "put", "dsb", "x", f.to_str().unwrap()])
        .ok();
    let l = d.ctl_as(ALICE, &["--json", "dataset", "list"]).ok().json();
    let ids: Vec<&str> = l["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "id"))
        .collect();
    assert_eq!(ids, ["dsa"]);
    let r = d.ctl_as(ALICE, &["dataset", "get", "dsb", "x"]);
    assert_eq!(r.code, 3, "{r:?}");
    // A member may not read another's dataset even through a task.
    let r = d.ctl_as(
        ALICE,
        &[
            "task",
            "run",
            "org.example.count",
            "count",
            "--input",
            "dsb/x",
        ],
    );
    assert_eq!(r.code, 3, "{r:?}");

    // Each runs a task on their own data, as themselves.
    let ra = d.ctl_as(
        ALICE,
        &[
            "--json",
            "task",
            "run",
            "org.example.count",
            "count",
            "--input",
            "dsa/x",
        ],
    );
    assert_eq!(ra.code, 0, "{ra:?}");
    let rb = d.ctl_as(
        BOB,
        &[
            "--json",
            "task",
            "run",
            "org.example.count",
            "count",
            "--input",
            "dsb/x",
        ],
    );
    assert_eq!(rb.code, 0, "{rb:?}");
    let bob_task = s(&rb.json()["task"], "id").to_owned();
    assert!(!bob_task.is_empty());

    let l = d.ctl_as(ALICE, &["--json", "task", "list"]).ok().json();
    let users: Vec<&str> = l["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| s(t, "user"))
        .collect();
    assert_eq!(users, ["alice"]);
    assert_eq!(d.ctl_as(ALICE, &["task", "show", &bob_task]).code, 4);
    assert_eq!(d.ctl_as(ALICE, &["task", "cancel", &bob_task]).code, 4);
    assert_eq!(d.ctl_as(ALICE, &["task", "list", "--user", "bob"]).code, 3);
    // The admin sees both.
    let l = d.ctl(&["--json", "task", "list"]).ok().json();
    assert_eq!(l["tasks"].as_array().map(Vec::len), Some(2));

    // Alice's audit view holds only her events, including her task's calls.
    let ev = d.ctl_as(ALICE, &["--json", "audit", "query"]).ok().json();
    let ev = ev["events"].as_array().unwrap();
    assert!(!ev.is_empty());
    assert!(ev.iter().all(|e| s(e, "actor_user") == "alice"), "{ev:?}");
    assert!(ev.iter().any(|e| s(e, "operation") == "data.object.get"));
    // Her refusals were audited (visible to the admin; denials are queued).
    let denied = wait_for(Duration::from_secs(10), || {
        let v = d
            .ctl(&[
                "--json",
                "audit",
                "query",
                "--op",
                "control.refused",
                "--user",
                "alice",
            ])
            .ok()
            .json();
        v["events"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
            .then_some(())
    });
    assert!(denied.is_some(), "alice's refusals are audited");

    // Teams: once bob shares his dataset with a team alice is in, she reads it.
    d.ctl(&["team", "add-member", "lab", "alice"]).ok();
    d.ctl(&["team", "add-member", "lab", "bob"]).ok();
    d.ctl_as(BOB, &["dataset", "share", "dsb", "lab", "--access", "read"])
        .ok();
    let r = d.ctl_as(ALICE, &["dataset", "get", "dsb", "x"]).ok();
    assert_eq!(r.stdout, "0123456789");
    let teams = d.ctl_as(ALICE, &["--json", "team", "list"]).ok().json();
    assert_eq!(teams["teams"].as_array().map(Vec::len), Some(1));
    // Out of the team again, she no longer reads it; an empty team name is
    // a usage error, as for add-member.
    let empty = d.ctl(&["team", "remove-member", "", "alice"]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    d.ctl(&["team", "remove-member", "lab", "alice"]).ok();
    let r = d.ctl_as(ALICE, &["dataset", "get", "dsb", "x"]);
    assert_ne!(
        r.code, 0,
        "removed from the team, alice still reads: {}",
        r.stdout
    );
    d.ctl(&["team", "add-member", "lab", "alice"]).ok();
    let r = d.ctl_as(ALICE, &["dataset", "get", "dsb", "x"]).ok();
    assert_eq!(r.stdout, "0123456789");
    // The viewer role may read but not write.
    d.ctl(&[
        "user",
        "add",
        "alice",
        "--uid",
        &ALICE.to_string(),
        "--role",
        "viewer",
    ])
    .ok();
    let r = d.ctl_as(ALICE, &["dataset", "put", "dsa", "y", f.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{r:?}");
    d.ctl(&["audit", "verify"]).ok();
}
