//! Shared by the sandbox's root-only integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

/// True when running as root; otherwise prints `SKIP` and returns false,
/// or fails when `HUTCH_REQUIRE_PRIVILEGED_TESTS=1` (CI).
pub fn privileged(name: &str) -> bool {
    log_from_env();
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref(),
        Ok("1"),
        "{name} needs root"
    );
    println!("SKIP {name}: needs root");
    false
}

/// `HUTCH_TEST_LOG=debug` (any `EnvFilter` directive): log to stderr,
/// including the launchers this test forks afterwards (e.g. why a pool slot
/// was buried). Call first thing in a test; a second call does nothing.
/// Use with `--test-threads=1`: a launcher forked while another test thread
/// holds the stderr lock would wait for it forever.
pub fn log_from_env() {
    if let Ok(filter) = std::env::var("HUTCH_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// `pid` runs at a pre-warm scheduling policy: `SCHED_IDLE`, or
/// `SCHED_BATCH` while its pool is hungry (a claimed init has the
/// launcher's policy, `SCHED_OTHER`).
pub fn prewarm_policy(pid: i32) -> bool {
    matches!(
        stat_field(pid, 41),
        Some(libc::SCHED_IDLE | libc::SCHED_BATCH)
    )
}

/// A plugin dir the sandbox uid can traverse.
pub fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// Wait (up to 10 s) until `launcher` has a pre-warmed init: a process at
/// `SCHED_IDLE` or `SCHED_BATCH` (pre-warm work runs there, so under load it can take a
/// while) that is the launcher's child (no cgroup) or its zygote's child (a
/// pool slot). Returns whether one was seen; a spawn that follows is then
/// served from the pool rather than cold.
pub fn wait_prewarmed(launcher: nix::unistd::Pid) -> bool {
    let launcher = launcher.as_raw();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let found = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    return false;
                };
                let Some(parent) = stat_field(pid, 4) else {
                    return false;
                };
                prewarm_policy(pid)
                    && (parent == launcher || stat_field(parent, 4) == Some(launcher))
            });
        if found {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}
