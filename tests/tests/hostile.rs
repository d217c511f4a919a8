//! The hostile-plugin battery: every attack of `hutch-probe`, run through the
//! real `hutchd try`, must fail, and leave the evidence the layer that stops
//! it produces (errno, seccomp denial in the report, OOM/pids/timeout/signal).
//! Every run also checks that nothing of it is left on the host.
//!
//! Needs root and `cargo build --workspace --bins` (for `hutchd`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io;
use std::path::Path;
use std::time::Duration;

use hutch_tests::{HostListeners, HostSleeper, PluginDir, TryRun, privileged};

type Result<T = ()> = io::Result<T>;

const PROBE: &str = env!("CARGO_BIN_EXE_hutch-probe");
const SIGKILL: i32 = 9;
const SIGSYS: i32 = 31;

fn plugin(test: &str) -> Result<PluginDir> {
    PluginDir::new(test, Path::new(PROBE))
}

/// Run one attack with default resources; check nothing is left behind.
fn attack(test: &str, args: &[&str]) -> Result<TryRun> {
    let p = plugin(test)?;
    let r = p.run(args)?;
    r.assert_clean();
    Ok(r)
}

/// A seccomp-denied syscall: EPERM and a denial named `syscall`.
fn seccomp_case(test: &str, args: &[&str], syscall: &str) -> Result {
    if !privileged(test) {
        return Ok(());
    }
    attack(test, args)?.seccomp_denied(syscall);
    Ok(())
}

// ------------------------------------------------------------ host files

#[test]
fn read_shadow() -> Result {
    if !privileged("read_shadow") {
        return Ok(());
    }
    attack("read_shadow", &["read-shadow"])?.blocked_with(&["ENOENT", "EACCES"]);
    Ok(())
}

#[test]
fn read_daemon_state_and_config() -> Result {
    if !privileged("read_daemon_state_and_config") {
        return Ok(());
    }
    // A stand-in state dir with a secret, outside /tmp (the sandbox's /tmp is
    // private anyway), plus the real default paths.
    let state = tempfile::Builder::new()
        .prefix("hutch-t-state-")
        .tempdir_in("/var/tmp")?;
    std::fs::write(state.path().join("hutch.db"), b"secret")?;
    let db = state.path().join("hutch.db");
    let r = attack(
        "read_daemon_state_and_config",
        &[
            "read-path",
            &db.to_string_lossy(),
            &state.path().to_string_lossy(),
            "/var/lib/hutch",
            "/var/lib/hutch/hutch.db",
            "/etc/hutch/hutchd.toml",
            "/etc/hutch",
        ],
    )?;
    r.blocked_with(&["ENOENT", "EACCES"]);
    Ok(())
}

#[test]
fn write_outside_tmp_and_data() -> Result {
    if !privileged("write_outside_tmp_and_data") {
        return Ok(());
    }
    let p = plugin("write_outside_tmp_and_data")?;
    let r = p.run(&[
        "write-path",
        "/",
        "/plugin",
        "/plugin/bin",
        "/usr",
        "/etc",
        "/dev",
        "/proc/sys/kernel",
    ])?;
    r.assert_clean();
    r.blocked_with(&["EROFS", "EACCES", "EPERM"]);
    // Nothing appeared in the host plugin dir.
    let strays: Vec<_> = walk_names(p.path())
        .into_iter()
        .filter(|n| n.contains(".hutch-probe-"))
        .collect();
    assert!(
        strays.is_empty(),
        "probe wrote into the host plugin dir: {strays:?}"
    );
    Ok(())
}

#[test]
fn open_proc_sys_and_etc_for_writing() -> Result {
    if !privileged("open_proc_sys_and_etc_for_writing") {
        return Ok(());
    }
    attack("open_proc_sys_and_etc_for_writing", &["open-write"])?
        .blocked_with(&["EACCES", "EROFS", "EPERM", "ETXTBSY"]);
    Ok(())
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.path().is_dir() {
                out.extend(walk_names(&e.path()));
            }
        }
    }
    out
}

#[test]
fn cgroup_escape() -> Result {
    if !privileged("cgroup_escape") {
        return Ok(());
    }
    attack("cgroup_escape", &["cgroup-escape"])?
        .blocked_with(&["ENOENT", "EACCES", "EROFS", "EPERM"]);
    Ok(())
}

// ------------------------------------------------------------ processes

#[test]
fn see_host_processes() -> Result {
    if !privileged("see_host_processes") {
        return Ok(());
    }
    let mut bait = HostSleeper::start(Path::new(PROBE))?;
    let mut p = plugin("see_host_processes")?;
    p.env
        .push(("PROBE_BAIT_MARKERS".into(), bait.marker.clone()));
    let r = p.run(&["list-procs"])?;
    r.assert_clean();
    let p = r.blocked();
    let visible = p
        .extra
        .get("visible")
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::MAX);
    // Our own pid is tiny in a fresh pid namespace (1 or 2 behind an init).
    let pid = p
        .extra
        .get("pid")
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::MAX);
    assert!(
        pid <= 2,
        "probe has pid {pid}: no pid namespace?\n{}",
        r.context()
    );
    assert!(
        visible <= 3,
        "{visible} processes visible in the sandbox\n{}",
        r.context()
    );
    assert!(bait.alive());
    Ok(())
}

#[test]
fn kill_host_process() -> Result {
    if !privileged("kill_host_process") {
        return Ok(());
    }
    let mut bait = HostSleeper::start(Path::new(PROBE))?;
    let pid = bait.pid().to_string();
    let r = attack("kill_host_process", &["kill-pid", &pid])?;
    r.blocked_with(&["ESRCH", "EPERM"]);
    assert!(bait.alive(), "the host process died\n{}", r.context());
    Ok(())
}

#[test]
fn signal_everyone() -> Result {
    if !privileged("signal_everyone") {
        return Ok(());
    }
    attack("signal_everyone", &["kill-everyone"])?.blocked_with(&["ESRCH"]);
    Ok(())
}

#[test]
fn proc_environ_of_host_process() -> Result {
    if !privileged("proc_environ_of_host_process") {
        return Ok(());
    }
    let bait = HostSleeper::start(Path::new(PROBE))?;
    let pid = bait.pid().to_string();
    let mut p = plugin("proc_environ_of_host_process")?;
    // The host bait's environment, and hutchd's own (which a forked init
    // would carry).
    let markers = format!("{},{}", bait.marker, p.daemon_secret());
    p.env.push(("PROBE_BAIT_MARKERS".into(), markers));
    let r = p.run(&["proc-environ", &pid])?;
    r.assert_clean();
    r.blocked();
    Ok(())
}

#[test]
fn proc_mem_of_init() -> Result {
    if !privileged("proc_mem_of_init") {
        return Ok(());
    }
    attack("proc_mem_of_init", &["proc-init-mem"])?.blocked();
    Ok(())
}

#[test]
fn signal_hutch_init() -> Result {
    if !privileged("signal_hutch_init") {
        return Ok(());
    }
    // Same pid namespace: init's uid 0 and Landlock's signal scope each stop it.
    attack("signal_hutch_init", &["signal-init"])?.blocked_with(&["EPERM"]);
    Ok(())
}

#[test]
fn ptrace_traceme() -> Result {
    seccomp_case("ptrace_traceme", &["ptrace-traceme"], "ptrace")
}

#[test]
fn ptrace_attach_host_process() -> Result {
    if !privileged("ptrace_attach_host_process") {
        return Ok(());
    }
    let mut bait = HostSleeper::start(Path::new(PROBE))?;
    let pid = bait.pid().to_string();
    let r = attack("ptrace_attach_host_process", &["ptrace-attach", &pid])?;
    r.seccomp_denied("ptrace");
    assert!(bait.alive());
    assert_eq!(bait.tracer(), Some(0), "host process is being traced");
    Ok(())
}

// ------------------------------------------------------------ namespaces, mounts

#[test]
fn unshare_namespaces() -> Result {
    seccomp_case("unshare_namespaces", &["unshare"], "unshare")
}

#[test]
fn clone_with_namespace_flags() -> Result {
    seccomp_case("clone_with_namespace_flags", &["clone-ns"], "clone")
}

#[test]
fn clone3_with_namespace_flags() -> Result {
    if !privileged("clone3_with_namespace_flags") {
        return Ok(());
    }
    // clone3's flags live in memory seccomp cannot read: it must be ENOSYS.
    attack("clone3_with_namespace_flags", &["clone3-ns"])?.blocked_with(&["ENOSYS"]);
    Ok(())
}

#[test]
fn mount_tmpfs() -> Result {
    seccomp_case("mount_tmpfs", &["mount"], "mount")
}

#[test]
fn umount_tmp() -> Result {
    seccomp_case("umount_tmp", &["umount", "/tmp"], "umount2")
}

#[test]
fn pivot_root() -> Result {
    seccomp_case("pivot_root", &["pivot-root"], "pivot_root")
}

#[test]
fn chroot() -> Result {
    seccomp_case("chroot", &["chroot"], "chroot")
}

// ------------------------------------------------------------ network

#[test]
fn tcp_to_host_loopback() -> Result {
    if !privileged("tcp_to_host_loopback") {
        return Ok(());
    }
    let p = plugin("tcp_to_host_loopback")?;
    let l = HostListeners::bind(p.work())?;
    let r = p.run(&["tcp-connect", &l.tcp_port().to_string()])?;
    r.assert_clean();
    // Network namespace: nothing listens there (ECONNREFUSED); Landlock net
    // (ABI >= 4): EACCES before the packet leaves.
    r.blocked_with(&["ECONNREFUSED", "EACCES", "ENETUNREACH"]);
    assert_eq!(l.anything_arrived(), Vec::<&str>::new());
    Ok(())
}

#[test]
fn tcp_bind_inside_sandbox() -> Result {
    if !privileged("tcp_bind_inside_sandbox") {
        return Ok(());
    }
    // The sandbox's own lo works; only Landlock (ABI >= 4) denies TCP.
    attack("tcp_bind_inside_sandbox", &["tcp-bind"])?.blocked_with(&["EACCES"]);
    Ok(())
}

#[test]
fn landlock_enforced_and_reported() -> Result {
    if !privileged("landlock_enforced_and_reported") {
        return Ok(());
    }
    let r = attack("landlock_enforced_and_reported", &["identity"])?;
    r.blocked();
    let ll = r.report().landlock.clone().unwrap_or_default();
    assert_eq!(
        ll["status"].as_str(),
        Some("fully_enforced"),
        "{}",
        r.context()
    );
    for k in ["fs", "net", "scoped"] {
        assert_eq!(ll[k].as_bool(), Some(true), "landlock.{k}\n{}", r.context());
    }
    assert!(ll["abi"].as_u64().unwrap_or(0) >= 6, "{}", r.context());
    Ok(())
}

#[test]
fn udp_to_host_loopback() -> Result {
    if !privileged("udp_to_host_loopback") {
        return Ok(());
    }
    let p = plugin("udp_to_host_loopback")?;
    let l = HostListeners::bind(p.work())?;
    let r = p.run(&["udp-send", &l.udp_port().to_string()])?;
    r.assert_clean();
    r.blocked();
    assert_eq!(l.anything_arrived(), Vec::<&str>::new(), "{}", r.context());
    Ok(())
}

#[test]
fn abstract_unix_socket_of_host() -> Result {
    if !privileged("abstract_unix_socket_of_host") {
        return Ok(());
    }
    let p = plugin("abstract_unix_socket_of_host")?;
    let l = HostListeners::bind(p.work())?;
    let r = p.run(&["unix-abstract", &l.abstract_name])?;
    r.assert_clean();
    r.blocked_with(&["ECONNREFUSED", "EPERM"]);
    assert_eq!(l.anything_arrived(), Vec::<&str>::new());
    Ok(())
}

#[test]
fn host_unix_socket_path() -> Result {
    if !privileged("host_unix_socket_path") {
        return Ok(());
    }
    let p = plugin("host_unix_socket_path")?;
    let l = HostListeners::bind(p.work())?;
    let r = p.run(&["unix-path", &l.path.to_string_lossy()])?;
    r.assert_clean();
    r.blocked_with(&["ENOENT", "EACCES"]);
    assert_eq!(l.anything_arrived(), Vec::<&str>::new());
    Ok(())
}

#[test]
fn host_unix_socket_inside_a_read_only_path() -> Result {
    if !privileged("host_unix_socket_inside_a_read_only_path") {
        return Ok(());
    }
    // An admin-approved read_only dir that happens to hold a live socket: a
    // read-only bind does not stop connect(2).
    let ro = tempfile::Builder::new()
        .prefix("hutch-t-ro-")
        .tempdir_in("/var/tmp")?;
    std::fs::set_permissions(
        ro.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut p = plugin("host_unix_socket_inside_a_read_only_path")?;
    let l = HostListeners::bind(ro.path())?;
    p.read_only.push(ro.path().to_string_lossy().into_owned());
    let r = p.run(&["unix-path", &l.path.to_string_lossy()])?;
    r.assert_clean();
    r.blocked_with(&["ENOENT", "EACCES", "ECONNREFUSED", "EPERM"]);
    assert_eq!(l.anything_arrived(), Vec::<&str>::new());
    Ok(())
}

#[test]
#[ignore = "known hole: a host socket created after spawn inside a read_only tree is reachable \
            (no Landlock right for pathname-socket connect below ABI 9); see docs/sandbox.md limitations"]
fn host_unix_socket_created_later_inside_a_read_only_path() -> Result {
    if !privileged("host_unix_socket_created_later_inside_a_read_only_path") {
        return Ok(());
    }
    // As above, but the host creates the socket after the sandbox started:
    // a spawn-time scan cannot see it.
    let ro = tempfile::Builder::new()
        .prefix("hutch-t-ro-")
        .tempdir_in("/var/tmp")?;
    std::fs::set_permissions(
        ro.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut p = plugin("host_unix_socket_created_later_inside_a_read_only_path")?;
    p.read_only.push(ro.path().to_string_lossy().into_owned());
    let sock = ro.path().join("host.sock");
    let mut child = p.spawn(&[], &["unix-path-wait", &sock.to_string_lossy(), "4"])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The plugin (not hutchd, which never carries the marker) is running.
    while hutch_tests::processes_with(&p.marker)
        .iter()
        .all(|pid| *pid == child.pid())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let l = HostListeners::bind(ro.path())?;
    let status = loop {
        if let Some(st) = child.child.try_wait()? {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hutchd try did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        l.anything_arrived(),
        Vec::<&str>::new(),
        "the plugin reached a host socket"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "probe reports the attack succeeded (exit 1) or failed"
    );
    Ok(())
}

#[test]
fn raw_socket() -> Result {
    if !privileged("raw_socket") {
        return Ok(());
    }
    // AF_INET passes the family filter; no CAP_NET_RAW stops it.
    attack("raw_socket", &["socket-raw"])?.blocked_with(&["EPERM"]);
    Ok(())
}

#[test]
fn packet_socket() -> Result {
    seccomp_case("packet_socket", &["socket-packet"], "socket")
}

#[test]
fn alg_socket() -> Result {
    seccomp_case("alg_socket", &["socket-alg"], "socket")
}

#[test]
fn vsock_socket() -> Result {
    seccomp_case("vsock_socket", &["socket-vsock"], "socket")
}

#[test]
fn netlink_socket() -> Result {
    seccomp_case("netlink_socket", &["socket-netlink"], "socket")
}

// ------------------------------------------------------------ kernel attack surface

#[test]
fn keyctl() -> Result {
    seccomp_case("keyctl", &["keyctl"], "keyctl")
}

#[test]
fn add_key_and_request_key() -> Result {
    if !privileged("add_key_and_request_key") {
        return Ok(());
    }
    let r = attack("add_key_and_request_key", &["add-key"])?;
    r.seccomp_denied("add_key");
    r.assert_denial("request_key");
    Ok(())
}

#[test]
fn process_vm_readv_of_init() -> Result {
    seccomp_case(
        "process_vm_readv_of_init",
        &["process-vm", "1"],
        "process_vm_readv",
    )
}

#[test]
fn setns() -> Result {
    seccomp_case("setns", &["setns"], "setns")
}

#[test]
fn iopl_and_ioperm() -> Result {
    if !privileged("iopl_and_ioperm") {
        return Ok(());
    }
    let r = attack("iopl_and_ioperm", &["iopl"])?;
    r.seccomp_denied("iopl");
    r.assert_denial("ioperm");
    Ok(())
}

#[test]
fn mknod_dev_mem() -> Result {
    if !privileged("mknod_dev_mem") {
        return Ok(());
    }
    attack("mknod_dev_mem", &["mknod-mem"])?.blocked_with(&["EPERM", "EACCES"]);
    Ok(())
}

#[test]
fn bpf() -> Result {
    seccomp_case("bpf", &["bpf"], "bpf")
}

#[test]
fn perf_event_open() -> Result {
    seccomp_case("perf_event_open", &["perf-event-open"], "perf_event_open")
}

#[test]
fn userfaultfd() -> Result {
    seccomp_case("userfaultfd", &["userfaultfd"], "userfaultfd")
}

#[test]
fn io_uring() -> Result {
    seccomp_case("io_uring", &["io-uring"], "io_uring_setup")
}

#[test]
fn init_module() -> Result {
    seccomp_case("init_module", &["init-module"], "init_module")
}

#[test]
fn finit_module() -> Result {
    seccomp_case("finit_module", &["finit-module"], "finit_module")
}

#[test]
fn kexec_load() -> Result {
    seccomp_case("kexec_load", &["kexec-load"], "kexec_load")
}

#[test]
fn open_by_handle_at() -> Result {
    seccomp_case(
        "open_by_handle_at",
        &["open-by-handle-at"],
        "open_by_handle_at",
    )
}

#[test]
fn acct() -> Result {
    seccomp_case("acct", &["acct"], "acct")
}

#[test]
fn settimeofday() -> Result {
    seccomp_case("settimeofday", &["settimeofday"], "settimeofday")
}

#[test]
fn syslog() -> Result {
    seccomp_case("syslog", &["syslog"], "syslog")
}

#[test]
fn swapon() -> Result {
    seccomp_case("swapon", &["swapon"], "swapon")
}

#[test]
fn reboot() -> Result {
    seccomp_case("reboot", &["reboot"], "reboot")
}

#[test]
fn tiocsti() -> Result {
    seccomp_case("tiocsti", &["tiocsti"], "ioctl")
}

#[test]
fn tiocsti_with_high_bits() -> Result {
    seccomp_case("tiocsti_with_high_bits", &["tiocsti-high"], "ioctl")
}

#[test]
fn tioclinux() -> Result {
    seccomp_case("tioclinux", &["tioclinux"], "ioctl")
}

#[test]
fn x32_syscall() -> Result {
    if !privileged("x32_syscall") {
        return Ok(());
    }
    let r = attack("x32_syscall", &["x32"])?;
    // Either the filter kills (SIGSYS) or refuses with EPERM; ENOSYS would be
    // the kernel's own answer (no x32 here), i.e. the filter let it through.
    if r.report().signal == Some(SIGSYS) {
        r.killed_by(SIGSYS);
    } else {
        r.blocked_with(&["EPERM"]);
    }
    Ok(())
}

#[test]
fn i386_int80() -> Result {
    if !privileged("i386_int80") {
        return Ok(());
    }
    let r = attack("i386_int80", &["int80"])?;
    assert!(
        r.probe().is_none(),
        "int 0x80 returned to the probe\n{}",
        r.context()
    );
    r.killed_by(SIGSYS);
    Ok(())
}

// ------------------------------------------------------------ privileges

#[test]
fn setuid_binary() -> Result {
    if !privileged("setuid_binary") {
        return Ok(());
    }
    let p = plugin("setuid_binary")?;
    let id = std::fs::read("/usr/bin/id")?;
    p.add_file("bin/suid-id", &id, 0o4755)?;
    let r = p.run(&["setuid-exec", "/plugin/bin/suid-id"])?;
    r.assert_clean();
    let line = r.blocked();
    let euid = line
        .extra
        .get("euid")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert!(
        !euid.is_empty() && euid != "0",
        "setuid binary ran with euid {euid:?}\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn capabilities_all_empty() -> Result {
    if !privileged("capabilities_all_empty") {
        return Ok(());
    }
    let r = attack("capabilities_all_empty", &["caps"])?;
    let line = r.blocked();
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = line.extra.get(k).and_then(|v| v.as_str()).unwrap_or("?");
        assert_eq!(v, "0000000000000000", "{k}\n{}", r.context());
    }
    Ok(())
}

#[test]
fn identity_unprivileged() -> Result {
    if !privileged("identity_unprivileged") {
        return Ok(());
    }
    let r = attack("identity_unprivileged", &["identity"])?;
    let line = r.blocked();
    assert_eq!(
        line.extra.get("stdin").and_then(|v| v.as_str()),
        Some("/dev/null"),
        "{}",
        r.context()
    );
    Ok(())
}

#[test]
fn only_minimal_dev() -> Result {
    if !privileged("only_minimal_dev") {
        return Ok(());
    }
    let r = attack("only_minimal_dev", &["dev-nodes"])?;
    let line = r.blocked();
    assert_eq!(
        line.extra.get("devices").and_then(|v| v.as_u64()),
        Some(5),
        "{}",
        r.context()
    );
    Ok(())
}

#[test]
fn only_minimal_etc() -> Result {
    if !privileged("only_minimal_etc") {
        return Ok(());
    }
    let r = attack("only_minimal_etc", &["etc-files"])?;
    let line = r.blocked();
    let n = line
        .extra
        .get("entries")
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    assert!(
        n >= 3,
        "suspiciously empty /etc: {}\n{}",
        line.detail,
        r.context()
    );
    Ok(())
}

#[test]
fn leaked_fds() -> Result {
    if !privileged("leaked_fds") {
        return Ok(());
    }
    // Bait: an fd without O_CLOEXEC in the test process, inherited by hutchd.
    let fd = nix::fcntl::open(
        "/etc/hostname",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    let r = attack("leaked_fds", &["fds"]);
    drop(fd);
    r?.blocked();
    Ok(())
}

// ------------------------------------------------------------ exhaustion

#[test]
fn fork_bomb() -> Result {
    if !privileged("fork_bomb") {
        return Ok(());
    }
    let mut p = plugin("fork_bomb")?;
    p.resource("pids_max", "16");
    let r = p.run(&["fork-bomb", "10000"])?;
    r.assert_clean();
    let line = r.blocked_with(&["EAGAIN"]);
    let forked = line
        .extra
        .get("forked")
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::MAX);
    assert!(forked < 16, "forked {forked} with pids_max 16");
    assert!(r.report().pids_limit_hit, "pids_limit_hit\n{}", r.context());
    assert!(r.stderr.contains("pids limit hit"), "{}", r.context());
    Ok(())
}

#[test]
fn memory_bomb_anonymous() -> Result {
    if !privileged("memory_bomb_anonymous") {
        return Ok(());
    }
    let mut p = plugin("memory_bomb_anonymous")?;
    p.resource("memory_max", "\"64M\"");
    let r = p.run(&["mem-anon", "512"])?;
    r.assert_clean();
    assert!(
        r.probe().is_none(),
        "probe touched 512 MiB under memory_max 64M\n{}",
        r.context()
    );
    r.killed_by(SIGKILL);
    assert!(r.report().oom_killed, "oom_killed\n{}", r.context());
    assert!(r.stderr.contains("OOM kill"), "{}", r.context());
    Ok(())
}

#[test]
fn memory_bomb_tmpfs_pages() -> Result {
    if !privileged("memory_bomb_tmpfs_pages") {
        return Ok(());
    }
    // /tmp big enough, memory small: tmpfs pages must count against memory_max.
    let mut p = plugin("memory_bomb_tmpfs_pages")?;
    p.resource("memory_max", "\"48M\"")
        .resource("tmp_size", "\"1G\"");
    let r = p.run(&["mem-tmpfs", "256"])?;
    r.assert_clean();
    let rep = r.report();
    match r.probe() {
        Some(line) if !rep.oom_killed => {
            assert!(
                !line.succeeded,
                "wrote 256 MiB of tmpfs under memory_max 48M\n{}",
                r.context()
            );
            assert_eq!(line.errno.as_deref(), Some("ENOMEM"), "{}", r.context());
        }
        _ => assert!(
            rep.oom_killed,
            "neither OOM kill nor ENOMEM\n{}",
            r.context()
        ),
    }
    Ok(())
}

#[test]
fn fill_tmp() -> Result {
    if !privileged("fill_tmp") {
        return Ok(());
    }
    let mut p = plugin("fill_tmp")?;
    p.resource("memory_max", "\"256M\"")
        .resource("tmp_size", "\"8M\"");
    let r = p.run(&["fill-tmp", "64"])?;
    r.assert_clean();
    let line = r.blocked_with(&["ENOSPC"]);
    let written = line
        .extra
        .get("written_mib")
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::MAX);
    assert!(written <= 8, "wrote {written} MiB into an 8M /tmp");
    Ok(())
}

#[test]
fn inode_bomb_in_tmp() -> Result {
    if !privileged("inode_bomb_in_tmp") {
        return Ok(());
    }
    // Empty files cost no tmpfs pages but kernel memory (inodes, dentries).
    let mut p = plugin("inode_bomb_in_tmp")?;
    p.resource("memory_max", "\"64M\"")
        .resource("tmp_size", "\"8M\"");
    let r = p.run(&["inode-bomb", "2000000"])?;
    r.assert_clean();
    match r.probe() {
        Some(line) => {
            assert!(!line.succeeded, "created 2M inodes\n{}", r.context());
            assert!(
                matches!(line.errno.as_deref(), Some("ENOSPC" | "ENOMEM")),
                "{}",
                r.context()
            );
        }
        None => {
            r.killed_by(SIGKILL);
            assert!(r.report().oom_killed, "{}", r.context());
        }
    }
    Ok(())
}

#[test]
fn raise_scheduling_priority() -> Result {
    if !privileged("raise_scheduling_priority") {
        return Ok(());
    }
    attack("raise_scheduling_priority", &["priority"])?.blocked_with(&["EPERM", "EACCES"]);
    Ok(())
}

#[test]
fn cpu_hog_held_to_cpu_max() -> Result {
    if !privileged("cpu_hog_held_to_cpu_max") {
        return Ok(());
    }
    // A low limit and more threads than CPUs, so that even on a busy shared
    // machine an unlimited hog would clearly exceed it.
    let mut p = plugin("cpu_hog_held_to_cpu_max")?;
    p.resource("cpu_max", "0.1");
    let r = p.run(&["cpu-hog", "4", "4", "0.1"])?;
    r.assert_clean();
    r.blocked();
    let rep = r.report();
    let cpu = rep.cpu_time_ns as f64 / 1e9;
    let wall = rep.wall_time_ms as f64 / 1e3;
    // Slack: a couple of CFS periods (100 ms) of burst plus process start-up.
    assert!(
        cpu <= 0.1 * wall + 0.25,
        "cpu {cpu:.2}s in {wall:.2}s wall with cpu_max 0.1\n{}",
        r.context()
    );
    assert!(
        cpu >= 0.05 * wall,
        "report cpu_time_ns implausibly low: {cpu:.2}s in {wall:.2}s\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn double_fork_child_dies_with_sandbox() -> Result {
    if !privileged("double_fork_child_dies_with_sandbox") {
        return Ok(());
    }
    let p = plugin("double_fork_child_dies_with_sandbox")?;
    let r = p.run(&["double-fork", "120", &p.marker])?;
    // The grandchild carries the marker in argv and environ: assert_clean
    // polls the host for it.
    r.assert_clean();
    let line = r
        .probe()
        .unwrap_or_else(|| panic!("no probe line\n{}", r.context()));
    assert!(
        line.detail.contains("grandchild left behind"),
        "{}",
        r.context()
    );
    Ok(())
}

#[test]
fn ignore_sigterm_escalates_to_sigkill() -> Result {
    if !privileged("ignore_sigterm_escalates_to_sigkill") {
        return Ok(());
    }
    let p = plugin("ignore_sigterm_escalates_to_sigkill")?;
    let r = p.run_with(&["--timeout", "1s"], &["ignore-sigterm", "120"])?;
    r.assert_clean();
    assert!(
        r.stdout.contains("\"ready\":true"),
        "probe never got going\n{}",
        r.context()
    );
    assert!(
        r.probe().is_none_or(|l| !l.succeeded),
        "survived\n{}",
        r.context()
    );
    assert!(r.report().timed_out, "timed_out\n{}", r.context());
    r.killed_by(SIGKILL);
    assert!(r.stderr.contains("wall timeout"), "{}", r.context());
    // Generous: the probe would sleep 120 s; grace is seconds.
    assert!(r.elapsed < Duration::from_secs(60), "took {:?}", r.elapsed);
    Ok(())
}

// ------------------------------------------------------------ positive controls

#[test]
fn control_tmp_is_writable() -> Result {
    if !privileged("control_tmp_is_writable") {
        return Ok(());
    }
    let r = attack("control_tmp_is_writable", &["control-tmp-write"])?;
    let line = r
        .probe()
        .unwrap_or_else(|| panic!("no probe line\n{}", r.context()));
    assert!(
        line.succeeded,
        "/tmp not writable: {}\n{}",
        line.detail,
        r.context()
    );
    assert_eq!(r.code(), Some(0));
    Ok(())
}

#[test]
fn control_declared_read_only_path_is_readable() -> Result {
    if !privileged("control_declared_read_only_path_is_readable") {
        return Ok(());
    }
    let ro = tempfile::Builder::new()
        .prefix("hutch-t-ro-")
        .tempdir_in("/var/tmp")?;
    std::fs::set_permissions(
        ro.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let file = ro.path().join("lut.txt");
    std::fs::write(&file, b"lookup-table-42")?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let mut p = plugin("control_declared_read_only_path_is_readable")?;
    p.read_only.push(ro.path().to_string_lossy().into_owned());
    let r = p.run(&["control-read", &file.to_string_lossy()])?;
    r.assert_clean();
    let line = r
        .probe()
        .unwrap_or_else(|| panic!("no probe line\n{}", r.context()));
    assert!(
        line.succeeded,
        "declared read_only path unreadable: {}\n{}",
        line.detail,
        r.context()
    );
    assert_eq!(
        line.extra.get("content").and_then(|v| v.as_str()),
        Some("lookup-table-42")
    );
    // ...and read-only.
    let w = p.run(&["write-path", &ro.path().to_string_lossy()])?;
    w.blocked_with(&["EROFS", "EACCES"]);
    Ok(())
}

#[test]
fn control_python_stdlib_runs() -> Result {
    if !privileged("control_python_stdlib_runs") {
        return Ok(());
    }
    let mut p = plugin("control_python_stdlib_runs")?;
    p.add_file(
        "main.py",
        br#"import json, hashlib, os, sys, re, math, random, collections, datetime, tempfile, threading, subprocess
with tempfile.NamedTemporaryFile(dir="/tmp") as f:
    f.write(b"x"); f.flush()
t = threading.Thread(target=lambda: None); t.start(); t.join()
out = subprocess.run(["/bin/sh", "-c", "echo sub"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"sha": hashlib.sha256(b"hutch").hexdigest(), "sub": out, "py": sys.version_info[0]}))
"#,
        0o644,
    )?;
    p.exec = "/usr/bin/python3".into();
    p.args = vec!["main.py".into()]; // relative: the working directory is /plugin
    let r = p.run(&[])?;
    r.assert_clean();
    assert_eq!(r.code(), Some(0), "python failed\n{}", r.context());
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
    assert_eq!(
        v["sha"].as_str(),
        Some("ea7f9327792e08f6af7c94810f549474d7485453531f3169a7b5c4a00c9896f9"),
        "{}",
        r.context()
    );
    assert_eq!(v["sub"].as_str(), Some("sub"), "{}", r.context());
    assert!(
        r.report().denials.is_empty(),
        "denials for a stdlib Python script\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn control_python_multiprocessing_uses_a_private_dev_shm() -> Result {
    if !privileged("control_python_multiprocessing_uses_a_private_dev_shm") {
        return Ok(());
    }
    // A file in the host's /dev/shm must not be visible inside.
    let host_file = std::path::PathBuf::from(format!("/dev/shm/hutch-t-{}", std::process::id()));
    std::fs::write(&host_file, b"host secret")?;
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _guard = Remove(host_file.clone());
    let mut p = plugin("control_python_multiprocessing_uses_a_private_dev_shm")?;
    p.add_file(
        "main.py",
        br##"import json, os, sys, multiprocessing as mp
from multiprocessing import shared_memory
def sq(x): return x * x
if __name__ == "__main__":
    with mp.Pool(2) as pool:
        squares = pool.map(sq, range(6))
    shm = shared_memory.SharedMemory(create=True, size=4096)
    shm.buf[:5] = b"hutch"; data = bytes(shm.buf[:5]); shm.close(); shm.unlink()
    with open("/dev/shm/run.sh", "w") as f: f.write("#!/bin/sh\necho ran\n")
    os.chmod("/dev/shm/run.sh", 0o755)
    try:
        os.execv("/dev/shm/run.sh", ["run.sh"])
    except OSError as e:
        exec_err = e.errno
    st = os.statvfs("/dev/shm")
    print(json.dumps({"squares": squares, "shm": data.decode(), "host": os.path.exists(sys.argv[1]),
                      "exec_errno": exec_err, "size": st.f_blocks * st.f_frsize}))
"##,
        0o644,
    )?;
    p.exec = "/usr/bin/python3".into();
    p.args = vec!["main.py".into()];
    let r = p.run(&[&host_file.to_string_lossy()])?;
    r.assert_clean();
    assert_eq!(r.code(), Some(0), "python failed\n{}", r.context());
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
    assert_eq!(
        v["squares"],
        serde_json::json!([0, 1, 4, 9, 16, 25]),
        "{}",
        r.context()
    );
    assert_eq!(v["shm"].as_str(), Some("hutch"), "{}", r.context());
    assert_eq!(
        v["host"].as_bool(),
        Some(false),
        "host /dev/shm leaked\n{}",
        r.context()
    );
    // noexec mount and Landlock (no execute right): EACCES, never "ran".
    assert_eq!(v["exec_errno"].as_i64(), Some(13), "{}", r.context());
    assert_eq!(
        v["size"].as_u64(),
        Some(hutch_sandbox::spec::DEFAULT_TMP_SIZE),
        "/dev/shm is limited like /tmp\n{}",
        r.context()
    );
    assert!(
        r.report().denials.is_empty(),
        "denials for Python multiprocessing\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn control_shell_script_runs() -> Result {
    if !privileged("control_shell_script_runs") {
        return Ok(());
    }
    let mut p = plugin("control_shell_script_runs")?;
    p.add_file(
        "run.sh",
        b"set -eu\n\
          cd /tmp\n\
          printf 'b\\na\\nc\\n' | sort > sorted\n\
          n=$(wc -l < sorted)\n\
          ( sleep 0.1; echo sub ) &\n\
          wait\n\
          echo \"lines=$n first=$(head -n1 sorted) ls=$(ls /plugin | tr '\\n' ,) id=$(id -u)\"\n",
        0o644,
    )?;
    p.exec = "/bin/sh".into();
    p.args = vec!["/plugin/run.sh".into()];
    let r = p.run(&[])?;
    r.assert_clean();
    assert_eq!(r.code(), Some(0), "shell script failed\n{}", r.context());
    assert!(r.stdout.contains("sub"), "{}", r.context());
    assert!(
        r.stdout
            .contains("lines=3 first=a ls=bin,hutch-plugin.toml,run.sh,"),
        "{}",
        r.context()
    );
    assert!(!r.stdout.contains("id=0"), "{}", r.context());
    assert!(
        r.report().denials.is_empty(),
        "denials for a plain shell script\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn control_data_is_writable_and_persistent() -> Result {
    if !privileged("control_data_is_writable_and_persistent") {
        return Ok(());
    }
    let mut p = plugin("control_data_is_writable_and_persistent")?;
    p.persistent_data = true;
    let state = p.work().join("state");
    std::fs::create_dir(&state)?;
    let r = p.run_with(
        &["--state", &state.to_string_lossy()],
        &["control-write", "/data", "kept.txt"],
    )?;
    r.assert_clean();
    let line = r
        .probe()
        .unwrap_or_else(|| panic!("no probe line\n{}", r.context()));
    assert!(
        line.succeeded,
        "/data not writable: {}\n{}",
        line.detail,
        r.context()
    );
    let kept = state.join("data").join(&p.id).join("kept.txt");
    assert_eq!(
        std::fs::read(&kept).ok().as_deref(),
        Some(&b"ok"[..]),
        "{} not on the host",
        kept.display()
    );
    Ok(())
}

// ------------------------------------------------------------ manifest escapes

/// `hutchd try` refused to start the plugin: nonzero exit, no probe output,
/// and stderr contains `needle`.
fn refused(r: &TryRun, needle: &str) {
    assert!(r.probe().is_none(), "the plugin ran\n{}", r.context());
    assert_ne!(r.code(), Some(0), "{}", r.context());
    assert!(
        r.stderr.contains(needle),
        "stderr lacks {needle:?}\n{}",
        r.context()
    );
    r.assert_clean();
}

#[test]
fn exec_escaping_the_plugin_dir_is_refused() -> Result {
    if !privileged("exec_escaping_the_plugin_dir_is_refused") {
        return Ok(());
    }
    let mut p = plugin("exec_escaping_the_plugin_dir_is_refused")?;
    p.exec = "bin/../../../../usr/bin/id".into();
    let r = p.run(&["caps"])?;
    refused(&r, "exec");
    assert_eq!(
        r.code(),
        Some(2),
        "broken manifest must exit 2\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn read_only_daemon_state_is_refused() -> Result {
    if !privileged("read_only_daemon_state_is_refused") {
        return Ok(());
    }
    let mut p = plugin("read_only_daemon_state_is_refused")?;
    p.read_only.push("/var/lib/hutch".into());
    let r = p.run(&["read-path", "/var/lib/hutch"])?;
    refused(&r, "filesystem.read_only[0]");
    assert_eq!(
        r.code(),
        Some(2),
        "broken manifest must exit 2\n{}",
        r.context()
    );
    Ok(())
}

#[test]
fn read_only_symlink_to_forbidden_path_is_refused() -> Result {
    if !privileged("read_only_symlink_to_forbidden_path_is_refused") {
        return Ok(());
    }
    // The manifest names an innocent-looking path; it is a symlink to /proc.
    let dir = tempfile::Builder::new()
        .prefix("hutch-t-ro-")
        .tempdir_in("/var/tmp")?;
    let link = dir.path().join("calibration");
    std::os::unix::fs::symlink("/proc", &link)?;
    let mut p = plugin("read_only_symlink_to_forbidden_path_is_refused")?;
    p.read_only.push(link.to_string_lossy().into_owned());
    let r = p.run(&["proc-environ", "1", "x"])?;
    refused(&r, "/proc");
    Ok(())
}

// ------------------------------------------------------------ leftovers

/// Kill or terminate `hutchd try` itself while the plugin runs: the launcher
/// must take the sandbox down with it.
fn daemon_goes_away(test: &str, sig: nix::sys::signal::Signal) -> Result {
    if !privileged(test) {
        return Ok(());
    }
    let p = plugin(test)?;
    let mut child = p.spawn(&[], &["ignore-sigterm", "120"])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The plugin (not hutchd, which never carries the marker) is running.
    while hutch_tests::processes_with(&p.marker)
        .iter()
        .all(|pid| *pid == child.pid())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.pid()), sig)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let procs = hutch_tests::processes_with(&p.marker);
        let cgroups = hutch_tests::cgroups_matching(&p.id);
        let mounts = hutch_tests::mounts_referencing(p.path());
        let exited = child.child.try_wait()?.is_some();
        if procs.is_empty() && cgroups.is_empty() && mounts.is_empty() && exited {
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {sig:?} to hutchd: hutchd exited {exited}, left processes {procs:?}, cgroups {cgroups:?}, \
             mounts {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hutchd_killed_mid_run_leaves_nothing() -> Result {
    daemon_goes_away(
        "hutchd_killed_mid_run_leaves_nothing",
        nix::sys::signal::Signal::SIGKILL,
    )
}

#[test]
fn hutchd_terminated_mid_run_stops_the_plugin() -> Result {
    daemon_goes_away(
        "hutchd_terminated_mid_run_stops_the_plugin",
        nix::sys::signal::Signal::SIGTERM,
    )
}

fn try_scratch_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("hutch-try"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nothing_left_behind_after_failing_and_killed_plugins() -> Result {
    if !privileged("nothing_left_behind_after_failing_and_killed_plugins") {
        return Ok(());
    }
    let scratch_before = try_scratch_dirs();
    let mut paths = Vec::new();
    let mut ids = Vec::new();
    let mut markers = Vec::new();
    {
        let mut runs: Vec<(PluginDir, Vec<String>, Vec<String>)> = Vec::new();
        let mut oom = plugin("leftover_oom")?;
        oom.resource("memory_max", "\"32M\"");
        runs.push((oom, vec![], vec!["mem-anon".into(), "256".into()]));
        let mut bomb = plugin("leftover_forkbomb")?;
        bomb.resource("pids_max", "8");
        runs.push((bomb, vec![], vec!["fork-bomb".into(), "1000".into()]));
        let term = plugin("leftover_sigterm")?;
        runs.push((
            term,
            vec!["--timeout".into(), "1s".into()],
            vec!["ignore-sigterm".into(), "120".into()],
        ));
        let df = plugin("leftover_doublefork")?;
        let m = df.marker.clone();
        runs.push((df, vec![], vec!["double-fork".into(), "120".into(), m]));
        runs.push((plugin("leftover_sigsys")?, vec![], vec!["int80".into()]));
        runs.push((
            plugin("leftover_usage_error")?,
            vec![],
            vec!["no-such-attack".into()],
        ));
        let mut data = plugin("leftover_throwaway_data")?;
        data.persistent_data = true;
        runs.push((
            data,
            vec![],
            vec!["control-write".into(), "/data".into(), "x".into()],
        ));
        for (p, flags, args) in &runs {
            paths.push(p.path().to_path_buf());
            paths.push(p.work().to_path_buf());
            ids.push(p.id.clone());
            markers.push(p.marker.clone());
            let f: Vec<&str> = flags.iter().map(String::as_str).collect();
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = p.run_with(&f, &a)?;
            r.assert_clean();
        }
    } // PluginDirs dropped here.
    std::thread::sleep(Duration::from_millis(200));
    for p in &paths {
        assert!(!p.exists(), "temp dir left: {}", p.display());
        assert_eq!(hutch_tests::mounts_referencing(p), Vec::<String>::new());
    }
    for id in &ids {
        assert_eq!(
            hutch_tests::cgroups_matching(id),
            Vec::<std::path::PathBuf>::new(),
            "cgroup of {id}"
        );
    }
    for m in &markers {
        assert_eq!(
            hutch_tests::processes_with(m),
            Vec::<i32>::new(),
            "process with {m}"
        );
    }
    let new: Vec<_> = try_scratch_dirs()
        .into_iter()
        .filter(|p| !scratch_before.contains(p))
        .collect();
    assert!(new.is_empty(), "hutchd try left scratch dirs: {new:?}");
    Ok(())
}
