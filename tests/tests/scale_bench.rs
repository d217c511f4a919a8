//! The scale bench (`hutch-scale-bench`) at tiny scale, in the tests' build
//! profile, so that it cannot rot: a real `hutchd`, 1 then 2 plugins started
//! at once, 2 sandboxed and 2 unsandboxed callers for 1 s. It checks that
//! the bench ran end to end, that every call loop worked and that it cleaned
//! up; it asserts no timing (those are the bench's table, in release).

use std::error::Error;
use std::process::Command;

#[test]
fn scale_bench_runs_at_tiny_scale() -> Result<(), Box<dyn Error>> {
    if !hutch_tests::privileged("scale_bench_runs_at_tiny_scale") {
        return Ok(());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hutch-scale-bench"))
        .args([
            "--sizes",
            "1,2",
            "--callers",
            "2",
            "--secs",
            "1",
            "--rounds",
            "1",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(out.status.success(), "bench failed: {ctx}");
    for row in ["\n   1 | ", "\n   2 | "] {
        assert!(stdout.contains(row), "no start-up row {row:?}: {ctx}");
    }
    // Both throughput rows made calls, without errors.
    for who in ["2 sandboxed plugins", "2 unsandboxed processes"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(who))
            .ok_or_else(|| format!("no row {who:?}: {ctx}"))?;
        let rate: f64 = line
            .split('|')
            .nth(1)
            .map(str::trim)
            .unwrap_or("")
            .parse()
            .map_err(|e| format!("row {line:?}: {e}"))?;
        assert!(rate > 0.0, "no call completed ({line}): {ctx}");
    }
    assert!(!stdout.contains(" errors, first: "), "calls failed: {ctx}");
    assert!(stdout.contains("ratio sandboxed / unsandboxed: "), "{ctx}");
    assert!(
        stdout.contains("exit status 0; plugin cgroups left: 0"),
        "hutchd did not stop cleanly: {ctx}"
    );
    Ok(())
}
