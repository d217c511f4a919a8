//! Admin policies and the kill switch against a real hutchd, with the
//! policy clock injected: hutchd runs with `HUTCH_TEST_CLOCK` set to
//! Thursday 2026-12-24 10:00 UTC, so "deny on 2026-12-24" is active now and
//! "deny on 2026-12-25" is not, without waiting for either day.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hutch_tests::daemon::{Hutchd, Options, s, wait_for};
use hutch_tests::privileged;

const MANIFEST: &str = r#"id = "org.example.count"
version = "1.0.0"
scopes = ["data:read"]

[[actions]]
name = "count"
description = "Total input size"

[[actions]]
name = "sleep"
description = "Progress until cancelled"
"#;

fn setup(test: &str) -> Hutchd {
    let d = Hutchd::start_with(
        test,
        Options {
            env: vec![("HUTCH_TEST_CLOCK".into(), "2026-12-24T10:00:00Z".into())],
            ..Options::default()
        },
    )
    .unwrap();
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    d.ctl(&["user", "add", "alice", "--uid", "61011", "--role", "member"])
        .ok();
    let dir = d.example_plugin("count", MANIFEST).unwrap();
    d.ctl(&[
        "plugin",
        "install",
        dir.to_str().unwrap(),
        "--grant-all",
        "--enable",
    ])
    .ok();
    d.ctl(&["dataset", "create", "A", "--id", "dsa", "--owner", "alice"])
        .ok();
    let f = d.root().join("x.bin");
    std::fs::write(&f, b"0123456789").unwrap();
    d.ctl(&["dataset", "put", "dsa", "x", f.to_str().unwrap()])
        .ok();
    d
}

fn count_task(d: &Hutchd) -> hutch_tests::daemon::CtlOut {
    d.ctl_as(
        61011,
        &[
            "--json",
            "task",
            "run",
            "org.example.count",
            "count",
            "--input",
            "dsa/x",
        ],
    )
}

#[test]
fn policy_blocks_in_its_window_only() {
    if !privileged("policy_blocks_in_its_window_only") {
        return;
    }
    let d = setup("policy-window");
    let l = d.ctl(&["--json", "policy", "list"]).ok().json();
    let now = l["now_unix_ms"].as_i64().unwrap();
    assert!(
        (1_798_106_400_000..1_798_107_000_000).contains(&now),
        "the injected clock: {now}"
    );

    // Active now: every task of the plugin is refused at submission, citing the rule.
    let p = d
        .ctl(&[
            "--json",
            "policy",
            "add",
            "xmas",
            "--plugin",
            "org.example.*",
            "--on",
            "2026-12-24",
            "--reason",
            "lab closed",
        ])
        .ok()
        .json();
    assert_eq!(p["active_now"], true, "{p}");
    let r = count_task(&d);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("xmas") && r.stderr.contains("lab closed"),
        "{r:?}"
    );
    d.ctl(&["policy", "remove", "xmas"]).ok();

    // The same rule for tomorrow: not active, the task runs.
    let p = d
        .ctl(&[
            "--json",
            "policy",
            "add",
            "boxing-day",
            "--plugin",
            "org.example.*",
            "--on",
            "2026-12-25",
            "--reason",
            "closed",
        ])
        .ok()
        .json();
    assert_eq!(p["active_now"], false, "{p}");
    let r = count_task(&d);
    assert_eq!(r.code, 0, "{r:?}");

    // A read-only rule for Thursdays 09-11: the task is accepted but its
    // plugin's reads are denied by the proxy, the denial cites the rule.
    let p = d
        .ctl(&[
            "--json",
            "policy",
            "add",
            "no-reads",
            "--plugin",
            "org.example.count",
            "--op",
            "read",
            "--weekdays",
            "thu",
            "--hours",
            "9-11",
            "--reason",
            "maintenance",
        ])
        .ok()
        .json();
    assert_eq!(p["active_now"], true, "{p}");
    let r = count_task(&d);
    assert_eq!(r.code, 1, "the task fails: {r:?}");
    let denied = d
        .ctl(&[
            "--json",
            "audit",
            "query",
            "--plugin",
            "org.example.count",
            "--decision",
            "denied",
        ])
        .ok()
        .json();
    let ev = denied["events"].as_array().unwrap();
    assert!(
        ev.iter()
            .any(|e| s(e, "reason").contains("no-reads") && s(e, "actor_user") == "alice"),
        "{denied}"
    );
    // An allow exception for alice lifts it.
    d.ctl(&[
        "policy",
        "add",
        "alice-ok",
        "--allow",
        "--plugin",
        "org.example.count",
        "--user",
        "alice",
        "--reason",
        "on call",
    ])
    .ok();
    assert_eq!(count_task(&d).code, 0);
    let l = d.ctl(&["policy", "list"]).ok();
    assert!(
        l.stdout.contains("no-reads") && l.stdout.contains("alice-ok"),
        "{l:?}"
    );
}

#[test]
fn kill_switch_stops_everything_until_lifted() {
    if !privileged("kill_switch_stops_everything_until_lifted") {
        return;
    }
    let d = setup("policy-kill");
    let pid = wait_for(Duration::from_secs(20), || {
        let p = d
            .ctl(&["--json", "plugin", "status", "org.example.count"])
            .json();
        let pid = p["pid"].as_u64().unwrap_or(0);
        (s(&p, "state") == "running" && pid != 0).then_some(pid)
    })
    .expect("the enabled plugin runs");
    let t = d
        .ctl_as(
            61011,
            &[
                "--json",
                "task",
                "run",
                "org.example.count",
                "sleep",
                "--args",
                r#"{"ms":600000}"#,
                "--detach",
            ],
        )
        .ok()
        .json();
    let running = s(&t, "id").to_owned();

    let st = d
        .ctl(&["--json", "kill-switch", "on", "--reason", "incident 42"])
        .ok()
        .json();
    assert_eq!(st["kill_switch"], true);
    assert!(
        wait_for(Duration::from_secs(20), || (!std::path::Path::new(
            &format!("/proc/{pid}")
        )
        .exists())
        .then_some(()))
        .is_some(),
        "the plugin is stopped"
    );
    let end = wait_for(Duration::from_secs(20), || {
        let t = d.ctl(&["--json", "task", "show", &running]).json();
        let st = s(&t["task"], "state").to_owned();
        (st != "running" && st != "queued").then_some(st)
    });
    assert!(end.is_some(), "the running task ended");
    let r = count_task(&d);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("incident 42"), "{r:?}");
    let r = d.ctl(&["plugin", "start", "org.example.count"]);
    assert_ne!(r.code, 0, "no plugin starts while engaged: {r:?}");
    let s1 = d.ctl(&["status"]).ok();
    assert!(s1.stdout.contains("ENGAGED: incident 42"), "{s1:?}");

    d.ctl(&["kill-switch", "off"]).ok();
    let r = wait_for(Duration::from_secs(20), || {
        let r = count_task(&d);
        (r.code == 0).then_some(r)
    });
    assert!(r.is_some(), "tasks run again once lifted");
    let ev = d
        .ctl(&["--json", "audit", "query", "--resource", "daemon"])
        .ok()
        .json();
    let ops: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "operation"))
        .collect();
    assert!(
        ops.contains(&"killswitch.engage") && ops.contains(&"killswitch.lift"),
        "{ops:?}"
    );
}
