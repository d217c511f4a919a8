//! Real spawns under the full sandbox (root only).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use hutch_sandbox::launcher::Launcher;
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::spec::SandboxSpec;

fn privileged(name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("{name} needs root");
    }
    println!("SKIP {name}: needs root");
    false
}

fn spec(plugin: &tempfile::TempDir, exec: &str, args: &[&str]) -> SandboxSpec {
    let mut s = SandboxSpec::new(
        "test.spawn",
        plugin.path().to_owned(),
        PathBuf::from(exec),
        0x7e0f_0001,
        0x7e0f_0001,
    );
    s.args = args.iter().map(|a| a.to_string()).collect();
    s
}

fn run(spec: &SandboxSpec) -> (Outcome, String, String) {
    let mut launcher = Launcher::start().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = launcher.run(spec, &mut out, &mut err).unwrap();
    (
        outcome,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[test]
fn true_exits_zero() {
    if !privileged("true_exits_zero") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (o, out, err) = run(&spec(&dir, "/bin/true", &[]));
    assert_eq!(o.setup_error, None, "{o:?} {out} {err}");
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
}

#[test]
fn shell_writes_and_reads_tmp() {
    if !privileged("shell_writes_and_reads_tmp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (o, out, err) = run(&spec(
        &dir,
        "/bin/sh",
        &[
            "-c",
            "echo hi > /tmp/x && cat /tmp/x; id -u; echo $$; ls /proc | grep -E '^[0-9]+$' | wc -l",
        ],
    ));
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(lines[1], (0x7e0f_0001u32).to_string());
    assert_eq!(lines[2], "2", "the plugin is pid 2 under our init");
}
