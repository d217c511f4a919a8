//! Real spawns under the full sandbox (root only): namespaces, mounts,
//! identity, exit reporting, timeouts, cleanup.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_sandbox::launcher::{Launcher, LauncherConfig};
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::spec::SandboxSpec;

const UID: u32 = 0x7e0f_0001;

mod common;
use common::{plugin_dir, privileged, wait_prewarmed};

fn sh(name: &str, plugin: &Path, script: &str) -> SandboxSpec {
    let mut s = SandboxSpec::new(name, plugin.to_owned(), PathBuf::from("/bin/sh"), UID, UID);
    s.args = vec!["-c".into(), script.into()];
    s
}

/// Run `spec` twice: with the spawn pool off (cold) and from a pre-warmed
/// stub (warm), check both ended alike, and return the warm run.
fn run(spec: &SandboxSpec) -> (Outcome, String, String) {
    let once = |pool_size: usize| {
        let mut launcher = Launcher::start_with(LauncherConfig { pool_size }).unwrap();
        if pool_size > 0 {
            launcher.prewarm(spec.cgroup.as_ref()).unwrap();
            // Pre-warming runs at SCHED_IDLE: under load (parallel tests)
            // a spawn right after `prewarm` could find no init yet and go
            // cold, and this run is meant to test the pooled path.
            assert!(
                wait_prewarmed(launcher.pid()),
                "the pool never pre-warmed an init"
            );
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let outcome = launcher.run(spec, &mut out, &mut err).unwrap();
        (
            outcome,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    };
    let (cold, ..) = once(0);
    let (warm, out, err) = once(1);
    let pooled = warm.spawn_trace.iter().any(|p| p.step == "init: claimed");
    assert_eq!(
        pooled,
        !spec.user_namespace
            && warm
                .spawn_trace
                .iter()
                .any(|p| p.step.starts_with("launcher: prepared")),
        "pooled: {:?}",
        warm.spawn_trace
    );
    let key = |o: &Outcome| {
        (
            o.exit_code,
            o.signal,
            o.oom_killed,
            o.pids_limit_hit,
            o.timed_out,
            o.setup_error.is_some(),
        )
    };
    assert_eq!(key(&cold), key(&warm), "cold {cold:?}\nwarm {warm:?}");
    (warm, out, err)
}

/// Host pids whose command line contains `needle`.
fn host_processes_with(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

/// Cgroup directories (any v1 hierarchy or v2) whose name starts with `prefix`.
fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    found.push(e.path());
                }
                if d.components().count() < 7 {
                    stack.push(e.path());
                }
            }
        }
    }
    found
}

#[test]
fn true_exits_zero_with_every_layer() {
    if !privileged("true_exits_zero_with_every_layer") {
        return;
    }
    let dir = plugin_dir();
    let mut spec = sh("test.true", dir.path(), "");
    spec.exec = PathBuf::from("/bin/true");
    spec.args.clear();
    let (o, out, err) = run(&spec);
    assert_eq!(o.setup_error, None, "{o:?} {out} {err}");
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
    assert!(o.seccomp_notify, "{o:?}");
    assert!(o.landlock.as_ref().is_some_and(|l| l.fs), "{o:?}");
}

/// Init pins itself to its CPU while it creates the plugin (so the plugin
/// starts there): the plugin must still run with the CPU affinity the
/// launcher had, cold and pooled.
#[test]
fn the_plugin_keeps_the_launchers_cpu_affinity() {
    if !privileged("the_plugin_keeps_the_launchers_cpu_affinity") {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mine = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap()
        .to_owned();
    let dir = plugin_dir();
    let spec = sh(
        "test.affinity",
        dir.path(),
        "grep Cpus_allowed_list: /proc/self/status",
    );
    let (o, out, err) = run(&spec);
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
    assert_eq!(out.trim(), mine.trim(), "{o:?} {err}");
}

#[test]
fn tmp_is_private_and_writable_and_identity_is_the_plugins() {
    if !privileged("tmp_is_private_and_writable_and_identity_is_the_plugins") {
        return;
    }
    let dir = plugin_dir();
    let script = "echo hi > /tmp/x && cat /tmp/x; id -u; id -g; echo $$; \
                  grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '; \
                  ls /proc | grep -cE '^[0-9]+$'; hostname";
    let (o, out, err) = run(&sh("test.identity", dir.path(), script));
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(lines[1], UID.to_string());
    assert_eq!(lines[2], UID.to_string());
    assert_eq!(lines[3], "2", "the plugin is pid 2, under our init");
    assert_eq!(
        &lines[4..8],
        [
            "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000",
            "CapAmb: 0000000000000000",
            "NoNewPrivs: 1"
        ]
    );
    // Only the plugin's own processes (sh, ls, grep): init (root) is hidden.
    assert!(lines[8].parse::<u32>().unwrap() <= 3, "{out}");
    assert_eq!(lines[9], "hutch");
    assert!(
        !Path::new("/tmp/x").exists()
            || std::fs::read_to_string("/tmp/x").unwrap_or_default() != "hi\n"
    );
}

#[test]
fn root_plugin_and_system_trees_are_read_only() {
    if !privileged("root_plugin_and_system_trees_are_read_only") {
        return;
    }
    let dir = plugin_dir();
    std::fs::write(dir.path().join("file"), "plugin data\n").unwrap();
    std::fs::set_permissions(
        dir.path().join("file"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let script = "for p in /x /plugin/file /usr/x /etc/passwd /dev/x; do \
                  if (echo y >> $p) 2>/dev/null; then echo \"$p writable\"; fi; done; \
                  cat /plugin/file; test -e /etc/shadow && echo shadow visible; echo done";
    let (o, out, err) = run(&sh("test.readonly", dir.path(), script));
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
    assert_eq!(out, "plugin data\ndone\n", "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("file")).unwrap(),
        "plugin data\n"
    );
}

#[test]
fn exit_code_and_signal_are_reported() {
    if !privileged("exit_code_and_signal_are_reported") {
        return;
    }
    let dir = plugin_dir();
    let (o, ..) = run(&sh("test.exit", dir.path(), "exit 42"));
    assert_eq!((o.exit_code, o.signal), (Some(42), None));
    let (o, ..) = run(&sh("test.signal", dir.path(), "kill -SEGV $$"));
    assert_eq!((o.exit_code, o.signal), (None, Some(libc::SIGSEGV)));
    assert_eq!(o.shell_status(), 128 + libc::SIGSEGV);
}

#[test]
fn setup_failures_name_the_step() {
    if !privileged("setup_failures_name_the_step") {
        return;
    }
    let dir = plugin_dir();
    let mut spec = sh("test.noexec", dir.path(), "");
    spec.exec = PathBuf::from("/plugin/missing");
    let (o, ..) = run(&spec);
    assert_eq!(
        o.setup_error.as_deref(),
        Some("execve /plugin/missing: ENOENT"),
        "{o:?}"
    );
    let mut spec = sh("test.badpath", dir.path(), "true");
    spec.read_only = vec![PathBuf::from("/var/nonexistent-hutch-path")];
    let (o, ..) = run(&spec);
    let e = o.setup_error.unwrap_or_default();
    assert!(
        e.contains("read_only /var/nonexistent-hutch-path") && e.contains("ENOENT"),
        "{e}"
    );
}

#[test]
fn wall_timeout_terminates_then_kills() {
    if !privileged("wall_timeout_terminates_then_kills") {
        return;
    }
    let dir = plugin_dir();
    let mut spec = sh("test.timeout", dir.path(), "sleep 30");
    spec.limits.wall_timeout = Some(Duration::from_millis(300));
    let (o, ..) = run(&spec);
    assert!(o.timed_out, "{o:?}");
    assert_eq!(o.signal, Some(libc::SIGTERM), "{o:?}");
    // A plugin ignoring SIGTERM is killed after the grace period.
    let mut spec = sh(
        "test.ignoreterm",
        dir.path(),
        "trap '' TERM; while :; do sleep 0.05; done",
    );
    spec.limits.wall_timeout = Some(Duration::from_millis(300));
    spec.stop_grace = Duration::from_millis(300);
    let (o, ..) = run(&spec);
    assert!(o.timed_out, "{o:?}");
    assert_eq!(o.signal, Some(libc::SIGKILL), "{o:?}");
}

#[test]
fn double_forked_child_dies_with_the_sandbox_and_nothing_is_left() {
    if !privileged("double_forked_child_dies_with_the_sandbox_and_nothing_is_left") {
        return;
    }
    let dir = plugin_dir();
    let marker = format!("{}", 900_000 + std::process::id() % 99_999);
    let mountinfo_before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let name = format!("test.leftover{}", std::process::id());
    let launcher_pid;
    {
        let mut launcher = Launcher::start().unwrap();
        launcher_pid = launcher.pid();
        let spec = sh(
            &name,
            dir.path(),
            &format!("(sleep {marker} &) ; sleep 0.2; exit 0"),
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let o = launcher.run(&spec, &mut out, &mut err).unwrap();
        assert_eq!(o.exit_code, Some(0), "{o:?}");
        assert!(o.peak_memory_bytes.is_some() && o.cpu_time_ns > 0, "{o:?}");
        assert_eq!(
            host_processes_with(&format!("sleep {marker}")),
            Vec::<i32>::new()
        );
    }
    // The launcher removes the cgroup right after reporting; dropping it
    // waits for the launcher to exit.
    assert_eq!(cgroups_named(&name), Vec::<PathBuf>::new());
    assert!(
        nix::sys::signal::kill(launcher_pid, None).is_err(),
        "launcher still alive"
    );
    let mountinfo_after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(mountinfo_before, mountinfo_after);
}

#[test]
fn optional_user_namespace_maps_the_plugin_uid() {
    if !privileged("optional_user_namespace_maps_the_plugin_uid") {
        return;
    }
    let dir = plugin_dir();
    let mut spec = sh(
        "test.userns",
        dir.path(),
        "id -u; cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'",
    );
    spec.user_namespace = true;
    let (o, out, err) = run(&spec);
    assert_eq!(o.exit_code, Some(0), "{o:?} {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], UID.to_string());
    assert!(lines.contains(&format!("{UID} {UID} 1").as_str()), "{out}");
}

#[test]
fn oom_and_pids_limit_are_reported() {
    if !privileged("oom_and_pids_limit_are_reported") {
        return;
    }
    let dir = plugin_dir();
    // tmpfs pages count against the cgroup too.
    let mut spec = sh(
        "test.oom",
        dir.path(),
        "head -c 200000000 /dev/zero > /tmp/fill; echo survived",
    );
    spec.limits.memory_max = Some(32 << 20);
    spec.limits.swap_max = Some(0);
    spec.limits.tmp_size = 512 << 20;
    let (o, out, _) = run(&spec);
    assert!(o.oom_killed, "{o:?} {out}");
    assert!(o.peak_memory_bytes.is_some_and(|p| p >= 16 << 20), "{o:?}");
    let mut spec = sh(
        "test.pids",
        dir.path(),
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait",
    );
    spec.limits.pids_max = Some(4);
    let (o, ..) = run(&spec);
    assert!(o.pids_limit_hit, "{o:?}");
}

#[test]
fn host_socket_inside_a_read_only_tree_is_masked() {
    if !privileged("host_socket_inside_a_read_only_tree_is_masked") {
        return;
    }
    let ro = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = ro.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let dir = plugin_dir();
    let script = format!(
        "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('{}')\"; ls {}",
        sock.display(),
        ro.path().display()
    );
    let mut spec = sh("test.sockmask", dir.path(), &script);
    spec.read_only = vec![ro.path().to_owned()];
    let (o, out, err) = run(&spec);
    assert_eq!(o.setup_error, None, "{o:?}");
    // EACCES: the mask is a read-only regular file (ECONNREFUSED if writable).
    assert!(
        err.contains("ConnectionRefusedError") || err.contains("PermissionError"),
        "{out} {err}"
    );
    assert_eq!(
        out, "host.sock\n",
        "the tree is visible, the socket is not reachable"
    );
    assert!(
        listener.accept().is_err(),
        "a connection reached the host socket"
    );
}

#[test]
fn tmp_has_an_inode_limit() {
    if !privileged("tmp_has_an_inode_limit") {
        return;
    }
    let dir = plugin_dir();
    let mut spec = sh(
        "test.inodes",
        dir.path(),
        "i=0; while printf '' 2>/dev/null > /tmp/f$i; do i=$((i+1)); done; echo $i",
    );
    spec.limits.tmp_size = 4 << 20;
    let (o, out, err) = run(&spec);
    assert_eq!(o.exit_code, Some(0), "{o:?} {err}");
    let created: u64 = out.trim().parse().unwrap();
    let limit = hutch_sandbox::mounts::tmp_inodes(4 << 20);
    assert!(
        created < limit && created + 5 >= limit,
        "{created} files, limit {limit}"
    );
}
