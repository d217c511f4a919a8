//! `hutchctl` itself: help on every command, usage errors, an unreachable
//! daemon. (Commands against a running daemon: the other `daemon_*` tests.)

use std::process::Command;

use hutch_tests::daemon::sibling_bin;

fn hutchctl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(sibling_bin("hutchctl"))
        .args(args)
        .env_remove("HUTCH_CONTROL_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("run hutchctl: {e}"));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    let groups: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "status",
                "whoami",
                "plugin",
                "task",
                "user",
                "team",
                "dataset",
                "policy",
                "audit",
                "kill-switch",
                "config",
            ],
        ),
        (
            "plugin",
            &[
                "install", "upgrade", "list", "status", "start", "stop", "restart", "enable",
                "disable", "grants", "limits", "logs", "remove",
            ],
        ),
        ("task", &["run", "list", "show", "watch", "cancel"]),
        ("user", &["list", "add", "remove"]),
        ("team", &["list", "add-member", "remove-member"]),
        (
            "dataset",
            &["create", "list", "objects", "put", "meta", "get", "share"],
        ),
        ("policy", &["list", "add", "remove"]),
        ("audit", &["query", "export", "verify", "revert"]),
        ("kill-switch", &["on", "off"]),
        ("config", &["show", "reload"]),
    ];
    for (group, cmds) in groups {
        for cmd in *cmds {
            let mut args: Vec<&str> = Vec::new();
            if !group.is_empty() {
                args.push(group);
            }
            args.push(cmd);
            args.push("--help");
            let (code, out, err) = hutchctl(&args);
            assert_eq!(code, 0, "{args:?}: {err}");
            assert!(out.contains("Usage: hutchctl"), "{args:?}: {out}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["plugin"][..],
        &["frobnicate"],
        &["task", "run", "only-plugin"],
        &["audit", "revert", "notanumber"],
    ] {
        let (code, _, err) = hutchctl(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[test]
fn unreachable_daemon_exits_1_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sock = dir.path().join("nope.sock");
    let sock = sock.to_string_lossy();
    let (code, _, err) = hutchctl(&["--socket", &sock, "status"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is hutchd running?"), "{err}");
    assert!(err.contains(&*sock), "{err}");
}

/// `hutchctl ... | head`: a reader that closes the pipe early ends hutchctl
/// quietly with 141 (as a shell reports SIGPIPE), never with a panic.
#[test]
fn closed_stdout_ends_quietly() -> Result<(), Box<dyn std::error::Error>> {
    use hutch_tests::daemon::Hutchd;
    if !hutch_tests::privileged("closed_stdout_ends_quietly") {
        return Ok(());
    }
    let d = Hutchd::start("closed-stdout")?;
    for args in [&["status"][..], &["--json", "audit", "query"][..]] {
        let (read_end, write_end) = nix::unistd::pipe()?;
        drop(read_end);
        let o = Command::new(sibling_bin("hutchctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdout(std::process::Stdio::from(write_end))
            .output()?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    Ok(())
}

#[test]
fn dataset_metadata_is_shown_set_and_audited() -> Result<(), Box<dyn std::error::Error>> {
    use hutch_tests::daemon::{Hutchd, s};
    if !hutch_tests::privileged("dataset_metadata_is_shown_set_and_audited") {
        return Ok(());
    }
    let d = Hutchd::start("dataset-meta")?;
    d.ctl(&["dataset", "create", "Images", "--id", "dsm"]).ok();
    let f = d.root().join("cells.tif");
    std::fs::write(&f, b"pixels")?;
    let path = f.to_str().ok_or("path")?;
    d.ctl(&[
        "dataset",
        "put",
        "dsm",
        "cells.tif",
        path,
        "--meta",
        "stain=dapi",
        "--meta",
        "um_per_px=0.2",
    ])
    .ok();
    // The table and the JSON both carry the metadata.
    let table = d.ctl(&["dataset", "objects", "dsm"]).ok();
    assert!(table.stdout.contains("METADATA"), "{}", table.stdout);
    assert!(
        table.stdout.contains("stain=dapi, um_per_px=0.2"),
        "{}",
        table.stdout
    );
    let shown = d
        .ctl(&["--json", "dataset", "meta", "dsm", "cells.tif"])
        .ok()
        .json();
    assert_eq!(shown["metadata"]["stain"], "dapi", "{shown}");
    assert_eq!(shown["version"], 1, "{shown}");

    // Set one, remove one, keep the content: a new version.
    let changed = d
        .ctl(&[
            "--json",
            "dataset",
            "meta",
            "dsm",
            "cells.tif",
            "stain=gfp",
            "--unset",
            "um_per_px",
        ])
        .ok()
        .json();
    assert_eq!(changed["version"], 2, "{changed}");
    assert_eq!(
        changed["metadata"],
        serde_json::json!({ "stain": "gfp" }),
        "{changed}"
    );
    let out = d.root().join("out.tif");
    d.ctl(&[
        "dataset",
        "get",
        "dsm",
        "cells.tif",
        "-o",
        out.to_str().ok_or("path")?,
    ])
    .ok();
    assert_eq!(std::fs::read(&out)?, b"pixels");

    // Bad input names the problem; nothing changes.
    for args in [
        &["dataset", "meta", "dsm", "cells.tif", "no-equals"][..],
        &["dataset", "meta", "dsm", "cells.tif", "=v"][..],
        &["dataset", "meta", "dsm", "cells.tif", "--unset", "absent"][..],
        &["dataset", "put", "dsm", "k", path, "--meta", "x"][..],
    ] {
        let r = d.ctl(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("NAME=VALUE") || r.stderr.contains("no such metadata"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let after = d
        .ctl(&["--json", "dataset", "meta", "dsm", "cells.tif"])
        .ok()
        .json();
    assert_eq!(after["version"], 2, "{after}");

    // The change is audited with the operator as actor, and revertible.
    let ev = d
        .ctl(&[
            "--json",
            "audit",
            "query",
            "--op",
            "data.object.metadata.set",
        ])
        .ok()
        .json();
    let evs = ev["events"].as_array().ok_or("events")?;
    assert_eq!(evs.len(), 1, "{ev}");
    assert_eq!(s(&evs[0], "actor_user"), "root", "{ev}");
    Ok(())
}
