//! `hutchd try --task`: the plugin author's inner loop, through the real
//! `hutchd try` binary: a task on the Rust example plugin with a real input
//! file (output pixels against the contract's reference, the summary's
//! outputs and API calls, the report); a plugin without `data:write` trying
//! to write (the task fails, the summary names the denied call and the
//! `scopes` hint); seccomp denials with their hints; usage errors (exit 2).
//!
//! Needs root and `cargo build --workspace --bins` (hutchd, hutch-blur).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hutch_tests::examples::{encode_pgm, reference_blur, rust_blur_dir, test_image};
use hutch_tests::{PluginDir, hutchd_path, privileged};

const PROBE: &str = env!("CARGO_BIN_EXE_hutch-probe");

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `hutchd try ARGS` with a 120 s deadline (killed by pid after it).
fn hutchd_try(args: &[&str]) -> Out {
    let mut child = Command::new(hutchd_path())
        .arg("try")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hutchd");
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hutchd try still running after 120 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A work dir with the Rust plugin and a 257x193 test image.
fn setup(manifest_edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix("hutch-t-try-")
        .tempdir()
        .unwrap();
    let dir = rust_blur_dir(root.path()).unwrap();
    let m = dir.join("hutch-plugin.toml");
    std::fs::write(&m, manifest_edit(std::fs::read_to_string(&m).unwrap())).unwrap();
    let input = root.path().join("cells.pgm");
    std::fs::write(&input, encode_pgm(&test_image(257, 193, 42))).unwrap();
    (root, dir, input)
}

#[test]
fn task_on_the_rust_plugin_writes_the_reference_pixels_and_sums_up() {
    if !privileged("task_on_the_rust_plugin_writes_the_reference_pixels_and_sums_up") {
        return;
    }
    let (root, dir, input) = setup(|m| m);
    let out_dir = root.path().join("out");
    let report = root.path().join("report.json");
    let r = hutchd_try(&[
        &s(&dir),
        "--task",
        "blur",
        "--args",
        r#"{"passes": 2}"#,
        "--input",
        &s(&input),
        "--output",
        &s(&out_dir),
        "--report",
        &s(&report),
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let written = out_dir.join("cells.blur.pgm");
    let expected = encode_pgm(&reference_blur(&test_image(257, 193, 42), 2));
    assert!(
        std::fs::read(&written).unwrap() == expected,
        "the output file is the reference blur"
    );
    // The summary: live progress and logs, the task, outputs, API calls.
    for needle in [
        "hutch: task started",
        "%] rows",
        "hutch: info: blur",
        "completed in",
        r#"{"outputs":["cells.blur.pgm"],"pixels":49601}"#,
        "outputs written:",
        &s(&written),
        "data.object.get x1",
        "data.object.put x1",
        "nothing was denied",
    ] {
        assert!(r.stderr.contains(needle), "stderr lacks {needle:?}: {r:?}");
    }
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rep["task"]["state"], "completed", "{rep}");
    assert_eq!(rep["task"]["outputs"][0]["file"], s(&written), "{rep}");
    assert_eq!(rep["api"]["calls"]["data.object.put"], 1, "{rep}");
    assert_eq!(rep["api"]["denied"].as_array().map(Vec::len), Some(0));
    assert_eq!(rep["stopped_by_hutch"], true, "{rep}");
    assert!(
        rep["denials"].as_array().is_some_and(Vec::is_empty),
        "{rep}"
    );
}

#[test]
fn a_write_without_data_write_fails_the_task_and_names_the_scope() {
    if !privileged("a_write_without_data_write_fails_the_task_and_names_the_scope") {
        return;
    }
    let (root, dir, input) = setup(|m| {
        m.replace(
            r#"scopes = ["data:read", "data:write"]"#,
            r#"scopes = ["data:read"]"#,
        )
    });
    let report = root.path().join("report.json");
    let r = hutchd_try(&[
        &s(&dir),
        "--task",
        "threshold",
        "--input",
        &s(&input),
        "--output",
        &s(&root.path().join("out")),
        "--report",
        &s(&report),
    ]);
    assert_eq!(r.code, Some(1), "a failed task exits 1: {r:?}");
    for needle in [
        "failed:",
        "API denied: data.object.put dataset/try/object/cells.threshold.pgm x1: scope data:write is not granted",
        r#"scopes = [.., "data:write"] in hutch-plugin.toml"#,
        "outputs written: none",
        "data.object.get x1",
    ] {
        assert!(r.stderr.contains(needle), "stderr lacks {needle:?}: {r:?}");
    }
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rep["task"]["state"], "failed", "{rep}");
    let denied = &rep["api"]["denied"][0];
    assert_eq!(denied["operation"], "data.object.put", "{rep}");
    assert!(
        denied["hint"].as_str().unwrap_or("").contains("data:write"),
        "{rep}"
    );
    assert!(!root.path().join("out/cells.threshold.pgm").exists());
}

#[test]
fn seccomp_denials_are_summed_up_with_how_to_get_them() {
    if !privileged("seccomp_denials_are_summed_up_with_how_to_get_them") {
        return;
    }
    if !hutch_tests::kernel_has_seccomp_user_notif() {
        println!("SKIP: no seccomp user notification: denials are not reported by name");
        return;
    }
    let p = PluginDir::new("try-seccomp-hints", Path::new(PROBE)).unwrap();
    let r = p.run(&["bpf"]).unwrap();
    r.assert_denial("bpf");
    assert!(
        r.stderr.contains("denied syscall bpf x1")
            && r.stderr.contains("bpf is never allowed (hard-denied"),
        "{}",
        r.context()
    );
    assert!(r.stderr.contains("API calls: none"), "{}", r.context());
    // An argument-restricted syscall: TIOCSTI through ioctl.
    let r = p.run(&["tiocsti"]).unwrap();
    r.assert_denial("ioctl");
    assert!(
        r.stderr
            .contains("ioctl is allowed only with restricted arguments"),
        "{}",
        r.context()
    );
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    if !privileged("usage_errors_exit_2_and_say_what_is_wrong") {
        return;
    }
    let (root, dir, input) = setup(|m| m);
    let d = s(&dir);
    let i = s(&input);
    let cases: [(&[&str], &str); 5] = [
        (
            &[&d, "--task", "blur", "--args", "{passes: 2", "--input", &i],
            "--args is not JSON",
        ),
        (
            &[&d, "--task", "blur", "--input", "/nonexistent/cells.pgm"],
            "--input /nonexistent/cells.pgm: No such file",
        ),
        (
            &[&d, "--task", "sharpen", "--input", &i],
            "declares no action \"sharpen\" in [[actions]] (it declares: blur, threshold)",
        ),
        (&[&d, "--input", &i], "--task"),
        (
            &[&d, "--task", "blur", "--input", &s(root.path())],
            "not a regular file",
        ),
    ];
    for (args, needle) in cases {
        let r = hutchd_try(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {r:?}"
        );
    }
    // A manifest without [[actions]]: the plugin's hello decides.
    let m = dir.join("hutch-plugin.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    let cut = text.find("[[actions]]").unwrap();
    let rest = &text[cut..];
    let resources = rest.find("[resources]").unwrap();
    std::fs::write(&m, format!("{}{}", &text[..cut], &rest[resources..])).unwrap();
    let r = hutchd_try(&[&d, "--task", "sharpen", "--input", &i]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("the plugin does not offer this action; its hello offers: blur, threshold"),
        "{r:?}"
    );
}

#[test]
fn an_interrupt_cancels_the_task_and_stops_the_plugin() {
    if !privileged("an_interrupt_cancels_the_task_and_stops_the_plugin") {
        return;
    }
    use std::io::BufRead;
    let (root, dir, _) = setup(|m| m);
    let big = root.path().join("big.pgm");
    std::fs::write(&big, encode_pgm(&test_image(2048, 1536, 3))).unwrap();
    let mut child = Command::new(hutchd_path())
        .args([
            "try",
            &s(&dir),
            "--task",
            "blur",
            "--args",
            r#"{"passes": 16}"#,
        ])
        .args([
            "--input",
            &s(&big),
            "--output",
            &s(&root.path().join("out")),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Interrupt once the blur reports progress.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let go = line.contains("%] rows");
        seen.push(line);
        if go {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
            break;
        }
    }
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let text = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{text}");
    for needle in [
        "interrupted: cancelling the task",
        "cancelled: interrupted (Ctrl-C)",
        "the plugin was stopped by hutch after the task",
        "outputs written: none",
    ] {
        assert!(text.contains(needle), "stderr lacks {needle:?}:\n{text}");
    }
}
