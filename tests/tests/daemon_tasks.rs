//! Tasks through `hutchctl` against a real hutchd: a task's progress,
//! outputs, data written as the submitting user, its audit trail, revert of
//! everything it changed, chain verification; cancel of a running task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hutch_tests::daemon::{Hutchd, s, wait_for};
use hutch_tests::privileged;

const MANIFEST: &str = r#"id = "org.example.threshold"
version = "1.0.0"
scopes = ["data:read", "data:write"]

[[actions]]
name = "threshold"
description = "Binary threshold"

[[actions]]
name = "sleep"
description = "Progress until cancelled"
"#;

fn setup(test: &str) -> Hutchd {
    let d = Hutchd::start(test).unwrap();
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    let dir = d.example_plugin("threshold", MANIFEST).unwrap();
    d.ctl(&[
        "plugin",
        "install",
        dir.to_str().unwrap(),
        "--grant-all",
        "--enable",
    ])
    .ok();
    d
}

#[test]
fn task_progress_outputs_audit_revert() {
    if !privileged("task_progress_outputs_audit_revert") {
        return;
    }
    let d = setup("tasks-life");
    let input: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let file = d.root().join("in.raw");
    std::fs::write(&file, &input).unwrap();
    d.ctl(&["dataset", "create", "Samples", "--id", "ds1"]).ok();
    d.ctl(&["dataset", "put", "ds1", "in.raw", file.to_str().unwrap()])
        .ok();

    let r = d
        .ctl(&[
            "task",
            "run",
            "org.example.threshold",
            "threshold",
            "--args",
            r#"{"level": 200, "steps": 4}"#,
            "--input",
            "ds1/in.raw",
        ])
        .ok();
    assert!(r.stderr.contains("[100%]"), "progress is printed: {r:?}");
    assert!(r.stderr.contains("thresholding in.raw"), "{r:?}");
    assert!(
        r.stdout.contains("in.raw.thresholded"),
        "outputs are printed: {r:?}"
    );
    assert!(r.stdout.contains("audit trail:"), "{r:?}");

    let list = d.ctl(&["--json", "task", "list"]).ok().json();
    let id = s(&list["tasks"][0], "id").to_owned();
    let t = d.ctl(&["--json", "task", "show", &id]).ok().json();
    assert_eq!(s(&t["task"], "state"), "completed", "{t}");
    assert_eq!(s(&t["task"], "user"), "root");
    let outputs: Vec<&str> = t["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| s(o, "name"))
        .collect();
    assert!(
        outputs.contains(&"in.raw.thresholded") && outputs.contains(&"bright_bytes"),
        "{outputs:?}"
    );
    let audit = t["audit"].as_array().unwrap();
    let put = audit
        .iter()
        .find(|e| s(e, "operation") == "data.object.put")
        .expect("the task's write is in its audit trail");
    assert_eq!(s(put, "decision"), "allowed");
    assert_eq!(s(put, "actor_kind"), "plugin");
    assert_eq!(
        s(put, "actor_user"),
        "root",
        "the plugin acted as the submitter"
    );
    assert!(audit.iter().any(|e| s(e, "operation") == "data.object.get"));

    // The written object is the threshold of the input.
    let out = d.root().join("out.raw");
    d.ctl(&[
        "dataset",
        "get",
        "ds1",
        "in.raw.thresholded",
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    let expected: Vec<u8> = input
        .iter()
        .map(|&b| if b >= 200 { 255 } else { 0 })
        .collect();
    assert_eq!(std::fs::read(&out).unwrap(), expected);

    // Revert everything the task changed: the object it created is gone.
    d.ctl(&["audit", "revert", "--task", &id]).ok();
    let objs = d.ctl(&["--json", "dataset", "objects", "ds1"]).ok().json();
    let keys: Vec<&str> = objs["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| s(o, "key"))
        .collect();
    assert_eq!(keys, ["in.raw"]);
    // Reverting again finds nothing left to undo in a conflicting way.
    let again = d.ctl(&["audit", "revert", "--task", &id]);
    assert_ne!(again.code, 0, "{again:?}");
    let v = d.ctl(&["--json", "audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checked"].as_u64().unwrap() >= 6, "{v}");
}

#[test]
fn cancel_a_running_task() {
    if !privileged("cancel_a_running_task") {
        return;
    }
    let d = setup("tasks-cancel");
    let t = d
        .ctl(&[
            "--json",
            "task",
            "run",
            "org.example.threshold",
            "sleep",
            "--args",
            r#"{"ms": 600000, "step_ms": 100}"#,
            "--detach",
        ])
        .ok()
        .json();
    let id = s(&t, "id").to_owned();
    let progressing = wait_for(Duration::from_secs(30), || {
        let t = d.ctl(&["--json", "task", "show", &id]).json();
        (s(&t["task"], "state") == "running" && t["task"]["progress_percent"].as_f64() > Some(0.0))
            .then_some(())
    });
    assert!(progressing.is_some(), "the task runs and reports progress");
    d.ctl(&["task", "cancel", &id, "--reason", "test"]).ok();
    let end = wait_for(Duration::from_secs(30), || {
        let t = d.ctl(&["--json", "task", "show", &id]).json();
        let st = s(&t["task"], "state").to_owned();
        (st == "cancelled" || st == "failed").then_some(st)
    });
    assert_eq!(end.as_deref(), Some("cancelled"));
    // Cancelling an ended task is refused.
    let r = d.ctl(&["task", "cancel", &id]);
    assert_eq!(r.code, 1, "{r:?}");
    // `task watch` on an ended task returns at once with its final state.
    let r = d.ctl(&["task", "watch", &id]);
    assert_eq!(r.code, 1, "a cancelled task is not a success: {r:?}");
    let unknown = d.ctl(&["task", "show", "no-such-task"]);
    assert_eq!(unknown.code, 4, "{unknown:?}");
}
