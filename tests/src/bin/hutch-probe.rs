//! `hutch-probe`: a deliberately hostile plugin, one attack per argument.
//!
//! `hutch-probe ATTACK [ARGS…]` tries ATTACK for real and prints one JSON line
//! `{"attack": …, "succeeded": bool, "errno": "EPERM"|null, "detail": …}`.
//! Exit status: 0 when the attack FAILED (was blocked), 1 when it SUCCEEDED,
//! 2 on a probe error (bad arguments). Positive controls (`control-*`) invert
//! the meaning: "succeeded" is the legitimate action working, and they exit 0
//! when it works.
//!
//! Some attacks cannot be run for real without damaging the host (reboot,
//! kexec, swapon, pivot_root, module loading). Those call the syscall with
//! deliberately bogus arguments: the kernel checks privilege first and the
//! arguments after, so an errno other than EPERM/EACCES means the call got
//! past every permission check ("reached"), which counts as success. A few
//! attacks can only be judged from outside (double-fork, ignore-sigterm,
//! udp-send): they print `"external": true` and the test does the real check.
//!
//! Each attack's doc comment names the sandbox layer(s) that should stop it.
//! Manual check unsandboxed as root (2026-11-29, kernel 6.18): every attack
//! succeeds, with these exceptions. The kernel lacks the feature: `x32`
//! (ENOSYS), `socket-alg` (EAFNOSUPPORT), `iopl` (ENOSYS). Module loading and
//! kexec give ENOSYS, which counts as "reached". `setuid-exec` was run as uid
//! 65534 (euid became 0). `signal-init` and `proc-init-mem` were run as pid 2
//! under `unshare -pf`. `process-vm` was aimed at a plain process, since the
//! host's pid 1 refuses even root. Under the sandbox, the seccomp-stopped
//! attacks also fail when the filter is missing, because the test then sees
//! no denial in the report.
//!
//! This binary is the one place in the tests crate allowed `unsafe`: raw
//! syscalls and `int 0x80` are the whole point of a hostile probe.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value, json};

/// What one attack found.
struct Found {
    succeeded: bool,
    errno: Option<Errno>,
    detail: String,
    extra: Map<String, Value>,
    external: bool,
}

impl Found {
    fn new(succeeded: bool, errno: Option<Errno>, detail: impl Into<String>) -> Self {
        Self {
            succeeded,
            errno,
            detail: detail.into(),
            extra: Map::new(),
            external: false,
        }
    }
    fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
    fn external(mut self) -> Self {
        self.external = true;
        self
    }
}

/// A probe usage error (exit 2).
struct Usage(String);

type Attack = Result<Found, Usage>;

/// One raw syscall. Arguments are integers or pointers into buffers the
/// caller keeps alive for the duration of the call.
fn raw(nr: libc::c_long, a: &[u64]) -> Result<i64, Errno> {
    let g = |i: usize| a.get(i).copied().unwrap_or(0);
    // SAFETY: every caller passes zero, plain integers, or pointers to live buffers of the size the syscall reads or writes.
    let r = unsafe { libc::syscall(nr, g(0), g(1), g(2), g(3), g(4), g(5)) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

fn ptr<T>(p: *const T) -> u64 {
    p as u64
}

fn close(fd: i64) {
    if let Ok(fd) = i32::try_from(fd) {
        let _ = nix::unistd::close(fd);
    }
}

fn io_errno(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

/// Result of a call whose real effect would harm the host, so it is made with
/// bogus arguments: anything but EPERM/EACCES means it got past the checks.
fn reached(name: &str, r: Result<i64, Errno>) -> Found {
    match r {
        Ok(v) => Found::new(true, None, format!("{name} returned {v}")),
        Err(e @ (Errno::EPERM | Errno::EACCES)) => {
            Found::new(false, Some(e), format!("{name} refused: {}", errno_name(e)))
        }
        Err(e) => Found::new(
            true,
            Some(e),
            format!(
                "{name} reached the kernel past permission checks ({}, bogus args)",
                errno_name(e)
            ),
        ),
    }
}

/// Result of a call that really does the thing when it returns >= 0.
fn real(name: &str, r: Result<i64, Errno>, fd: bool) -> Found {
    match r {
        Ok(v) => {
            if fd {
                close(v);
            }
            Found::new(true, None, format!("{name} returned {v}"))
        }
        Err(e) => Found::new(false, Some(e), format!("{name}: {}", errno_name(e))),
    }
}

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Result<&'a str, Usage> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| Usage(format!("missing argument {what}")))
}

fn num<T: std::str::FromStr>(
    args: &[String],
    i: usize,
    what: &str,
    default: Option<T>,
) -> Result<T, Usage> {
    match (args.get(i), default) {
        (Some(s), _) => s.parse().map_err(|_| Usage(format!("bad {what}: {s}"))),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(Usage(format!("missing argument {what}"))),
    }
}

// ---------------------------------------------------------------- files

/// Read host files (`/etc/shadow`, the daemon's state dir and config).
/// Stopped by: the mount tree (not mounted: ENOENT); Landlock (EACCES) for
/// anything that is mounted but not declared; the unprivileged uid (EACCES).
fn read_paths(paths: &[String]) -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for p in paths {
        let res = match fs::metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p).map(|d| format!("{} entries", d.count())),
            Ok(_) => fs::read(p).map(|b| format!("{} bytes", b.len())),
            Err(e) => Err(e),
        };
        match res {
            Ok(what) => return Ok(Found::new(true, None, format!("read {p}: {what}"))),
            Err(e) => {
                let en = io_errno(&e);
                first_err = first_err.or(en);
                notes.push(format!("{p}: {}", en.map_or(e.to_string(), errno_name)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// Create a file in each directory (default `/`, `/plugin`, `/usr`, `/etc`).
/// Stopped by: read-only binds and the read-only root (EROFS); Landlock
/// (EACCES); the unprivileged uid (EACCES on root-owned dirs).
fn write_paths(dirs: &[String]) -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for d in dirs {
        let path = format!(
            "{}/.hutch-probe-{}",
            d.trim_end_matches('/'),
            std::process::id()
        );
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = f.write_all(b"hutch-probe was here\n");
                let _ = fs::remove_file(&path);
                return Ok(Found::new(true, None, format!("created {path}")));
            }
            Err(e) => {
                let en = io_errno(&e);
                first_err = first_err.or(en);
                notes.push(format!("{d}: {}", en.map_or(e.to_string(), errno_name)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// Open existing files for writing (nothing is written): the classic
/// escapes `/proc/sys/kernel/core_pattern`, `/proc/sysrq-trigger`, plus
/// `/etc/passwd` and our own binary. Stopped by: the uid (EACCES on root-owned
/// files); read-only mounts (EROFS); Landlock (/proc and /etc read-only).
fn open_write(paths: &[String]) -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for p in paths {
        match fs::OpenOptions::new().write(true).open(p) {
            Ok(_) => return Ok(Found::new(true, None, format!("opened {p} for writing"))),
            Err(e) => {
                let en = io_errno(&e);
                first_err = first_err.or(en);
                notes.push(format!("{p}: {}", en.map_or(e.to_string(), errno_name)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// Positive control: DIR (default `/tmp`) is writable and reads back; with
/// KEEP the file `DIR/KEEP` is left there (to check persistence from outside).
fn control_write(dir: &str, keep: Option<&str>) -> Attack {
    let path = match keep {
        Some(name) => format!("{dir}/{name}"),
        None => format!("{dir}/hutch-probe-ctl-{}", std::process::id()),
    };
    let res = fs::write(&path, b"ok").and_then(|()| fs::read(&path));
    if keep.is_none() {
        let _ = fs::remove_file(&path);
    }
    Ok(match res {
        Ok(b) if b == b"ok" => Found::new(true, None, format!("wrote and read back {path}")),
        Ok(_) => Found::new(false, None, "read back different content"),
        Err(e) => Found::new(false, io_errno(&e), format!("{path}: {e}")),
    })
}

/// Positive control: a declared `read_only` path is readable.
fn control_read(path: &str) -> Attack {
    Ok(match fs::read(path) {
        Ok(b) => Found::new(true, None, format!("read {} bytes", b.len())).with(
            "content",
            Value::String(String::from_utf8_lossy(&b).chars().take(200).collect()),
        ),
        Err(e) => Found::new(false, io_errno(&e), format!("{path}: {e}")),
    })
}

// ---------------------------------------------------------------- processes

fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// See host processes: any visible process (not us) whose cmdline or environ
/// holds a marker (a host sleeper the test started). Stopped by: the pid namespace
/// and the fresh `/proc`.
fn list_procs(markers: &[String]) -> Attack {
    let me = std::process::id() as i32;
    let pids = proc_pids();
    for pid in pids.iter().filter(|p| **p != me) {
        for f in ["cmdline", "environ"] {
            if let Ok(b) = fs::read(format!("/proc/{pid}/{f}"))
                && markers.iter().any(|m| contains(&b, m))
            {
                return Ok(Found::new(
                    true,
                    None,
                    format!("saw host process {pid} via /proc/{pid}/{f}"),
                )
                .with("visible", json!(pids.len())));
            }
        }
    }
    Ok(Found::new(
        false,
        None,
        format!("{} processes visible, none is the host's", pids.len()),
    )
    .with("visible", json!(pids.len()))
    .with("pid", json!(me))
    .with("pids", json!(pids.iter().take(20).collect::<Vec<_>>())))
}

/// SIGKILL a host pid. Stopped by: the pid namespace (ESRCH); the per-plugin
/// uid (EPERM); Landlock signal scoping (ABI >= 6, EPERM).
fn kill_pid(pid: i32) -> Attack {
    Ok(match signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) => Found::new(true, None, format!("kill({pid}, SIGKILL) returned 0")),
        Err(e) => Found::new(false, Some(e), format!("kill({pid}): {}", errno_name(e))),
    })
}

/// Read `/proc/PID/environ`, `/proc/1/environ` and every visible
/// `/proc/*/environ` looking for any of MARKERS (a host process's
/// environment, or the daemon's, which a forked-not-exec'd init inherits).
/// Stopped by: the pid namespace and fresh `/proc` (ENOENT); the uid and a
/// non-dumpable init (EACCES).
fn proc_environ(pid: i32, markers: &[String]) -> Attack {
    let me = std::process::id() as i32;
    let mut first_err = None;
    let mut notes = Vec::new();
    let mut pids = vec![pid, 1];
    pids.extend(
        proc_pids()
            .into_iter()
            .filter(|p| *p != me && *p != pid && *p != 1),
    );
    for p in pids {
        match fs::read(format!("/proc/{p}/environ")) {
            Ok(b) if markers.iter().any(|m| contains(&b, m)) => {
                return Ok(Found::new(
                    true,
                    None,
                    format!("read an outside environment via /proc/{p}/environ"),
                ));
            }
            Ok(b) => notes.push(format!("/proc/{p}/environ: {} bytes, no marker", b.len())),
            Err(e) => {
                if p == pid || p == 1 {
                    first_err = first_err.or(io_errno(&e));
                }
                notes.push(format!("/proc/{p}/environ: {e}"));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// Read memory of pid 1 when it is not us (Hutch's init, a forked copy of
/// the daemon) through `/proc/1/mem`. Stopped by: init being non-dumpable
/// (EACCES/EPERM); seccomp has no say (plain open/read).
fn proc_init_mem() -> Attack {
    if std::process::id() == 1 {
        return Ok(Found::new(
            false,
            None,
            "we are pid 1: nothing outside to read",
        ));
    }
    let maps = match fs::read_to_string("/proc/1/maps") {
        Ok(m) => m,
        Err(e) => {
            return Ok(Found::new(
                false,
                io_errno(&e),
                format!("/proc/1/maps: {e}"),
            ));
        }
    };
    let Some(start) = maps.lines().find_map(|l| {
        let (range, rest) = l.split_once(' ')?;
        if !rest.starts_with('r') {
            return None;
        }
        u64::from_str_radix(range.split_once('-')?.0, 16).ok()
    }) else {
        return Ok(Found::new(
            false,
            None,
            "no readable mapping listed in /proc/1/maps",
        ));
    };
    use std::os::unix::fs::FileExt;
    let res = fs::File::open("/proc/1/mem").and_then(|f| {
        let mut buf = [0u8; 64];
        f.read_at(&mut buf, start)
    });
    Ok(match res {
        Ok(n) => Found::new(true, None, format!("read {n} bytes of pid 1 at {start:#x}")),
        Err(e) => Found::new(false, io_errno(&e), format!("/proc/1/mem: {e}")),
    })
}

/// Signal 0 to pid 1 when that is Hutch's init (same pid namespace, outside
/// the plugin's Landlock domain). Stopped by: init staying uid 0 (EPERM) and
/// Landlock signal scoping (ABI >= 6, EPERM); either alone suffices.
fn signal_init() -> Attack {
    if std::process::id() == 1 {
        return Ok(Found::new(false, None, "we are pid 1: no init to signal"));
    }
    Ok(match signal::kill(Pid::from_raw(1), None) {
        Ok(()) => Found::new(true, None, "kill(1, 0) returned 0: init is signalable"),
        Err(e) => Found::new(false, Some(e), format!("kill(1, 0): {}", errno_name(e))),
    })
}

/// `PTRACE_TRACEME`. Stopped by: seccomp (ptrace not allowed; EPERM + denial).
fn ptrace_traceme() -> Attack {
    Ok(match nix::sys::ptrace::traceme() {
        Ok(()) => Found::new(
            true,
            None,
            "PTRACE_TRACEME returned 0: the parent is now our tracer",
        ),
        Err(e) => Found::new(false, Some(e), format!("PTRACE_TRACEME: {}", errno_name(e))),
    })
}

/// `PTRACE_ATTACH` to a host pid and to the parent. Stopped by: seccomp
/// (EPERM + denial); the pid namespace (ESRCH); the uid and no capabilities.
fn ptrace_attach(pid: i32) -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for p in [pid, nix::unistd::getppid().as_raw()] {
        match nix::sys::ptrace::attach(Pid::from_raw(p)) {
            Ok(()) => {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
                let _ = nix::sys::ptrace::detach(Pid::from_raw(p), None);
                return Ok(Found::new(
                    true,
                    None,
                    format!("PTRACE_ATTACH {p} returned 0"),
                ));
            }
            Err(e) => {
                first_err = first_err.or(Some(e));
                notes.push(format!("attach {p}: {}", errno_name(e)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

const NS_FLAGS: [(&str, libc::c_int); 8] = [
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWTIME", 0x80),
];

/// `unshare` with each namespace flag. Stopped by: seccomp (EPERM + denial);
/// no capabilities stops all but CLONE_NEWUSER.
fn unshare_ns() -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for (name, flag) in NS_FLAGS {
        match raw(libc::SYS_unshare, &[flag as u64]) {
            Ok(_) => {
                return Ok(Found::new(
                    true,
                    None,
                    format!("unshare({name}) returned 0"),
                ));
            }
            Err(e) => {
                first_err = first_err.or(Some(e));
                notes.push(format!("{name}: {}", errno_name(e)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// Raw `clone` with namespace flags (the child exits at once). Stopped by:
/// seccomp (clone allowed only without namespace flags; EPERM + denial).
fn clone_ns() -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for (name, flag) in NS_FLAGS.iter().take(4) {
        match raw(
            libc::SYS_clone,
            &[(*flag | libc::SIGCHLD) as u64, 0, 0, 0, 0],
        ) {
            Ok(0) => {
                // SAFETY: we are the fresh clone child; _exit touches no shared state.
                unsafe { libc::_exit(0) }
            }
            Ok(child) => {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(child as i32), None);
                return Ok(Found::new(
                    true,
                    None,
                    format!("clone({name}) created child {child}"),
                ));
            }
            Err(e) => {
                first_err = first_err.or(Some(e));
                notes.push(format!("{name}: {}", errno_name(e)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// `clone3` with CLONE_NEWUSER. Stopped by: seccomp (clone3 -> ENOSYS so libc
/// falls back to clone, whose flags seccomp can inspect).
fn clone3_ns() -> Attack {
    // struct clone_args (CLONE_ARGS_SIZE_VER2 = 88 bytes): flags, pidfd,
    // child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
    // set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = libc::CLONE_NEWUSER as u64;
    args[4] = libc::SIGCHLD as u64;
    Ok(match raw(libc::SYS_clone3, &[ptr(args.as_ptr()), 88]) {
        Ok(0) => {
            // SAFETY: we are the fresh clone3 child; _exit touches no shared state.
            unsafe { libc::_exit(0) }
        }
        Ok(child) => {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(child as i32), None);
            Found::new(
                true,
                None,
                format!("clone3(CLONE_NEWUSER) created child {child}"),
            )
        }
        Err(e) => Found::new(
            false,
            Some(e),
            format!("clone3(CLONE_NEWUSER): {}", errno_name(e)),
        ),
    })
}

// ---------------------------------------------------------------- mounts

/// Mount a tmpfs on a fresh dir under /tmp. Stopped by: seccomp (EPERM +
/// denial); no CAP_SYS_ADMIN (EPERM).
fn mount_tmpfs() -> Attack {
    let dir = format!("/tmp/hutch-probe-mnt-{}", std::process::id());
    if let Err(e) = fs::create_dir(&dir) {
        return Ok(Found::new(
            false,
            io_errno(&e),
            format!("mkdir {dir}: {e} (mount not tried)"),
        ));
    }
    let r = nix::mount::mount(
        Some("tmpfs"),
        dir.as_str(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    let found = match r {
        Ok(()) => {
            let _ = nix::mount::umount2(dir.as_str(), nix::mount::MntFlags::MNT_DETACH);
            Found::new(true, None, format!("mounted tmpfs on {dir}"))
        }
        Err(e) => Found::new(
            false,
            Some(e),
            format!("mount tmpfs {dir}: {}", errno_name(e)),
        ),
    };
    let _ = fs::remove_dir(&dir);
    Ok(found)
}

/// `umount2(PATH, MNT_DETACH)` (default `/tmp`) to uncover what is below.
/// Stopped by: seccomp (EPERM + denial); no CAP_SYS_ADMIN.
fn umount(path: &str) -> Attack {
    Ok(
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => Found::new(true, None, format!("detached {path}")),
            Err(e) => Found::new(false, Some(e), format!("umount2 {path}: {}", errno_name(e))),
        },
    )
}

/// `pivot_root` (bogus paths: reached = past the privilege check). Stopped
/// by: seccomp (EPERM + denial); no CAP_SYS_ADMIN.
fn pivot_root() -> Attack {
    let p = CString::new("/hutch-probe-nonexistent").map_err(|e| Usage(e.to_string()))?;
    Ok(reached(
        "pivot_root",
        raw(libc::SYS_pivot_root, &[ptr(p.as_ptr()), ptr(p.as_ptr())]),
    ))
}

/// `chroot("/tmp")` (harmless to the host: only this process changes root).
/// Stopped by: seccomp (EPERM + denial); no CAP_SYS_CHROOT.
fn chroot() -> Attack {
    Ok(match nix::unistd::chroot("/tmp") {
        Ok(()) => Found::new(true, None, "chroot(/tmp) returned 0"),
        Err(e) => Found::new(false, Some(e), format!("chroot: {}", errno_name(e))),
    })
}

/// Move ourselves to the root cgroup of each hierarchy. Stopped by: no
/// `/sys` in the sandbox (ENOENT); cgroup namespace; uid (EACCES).
fn cgroup_escape() -> Attack {
    let pid = std::process::id().to_string();
    let mut first_err = None;
    let mut notes = Vec::new();
    for p in [
        "/sys/fs/cgroup/cgroup.procs",
        "/sys/fs/cgroup/unified/cgroup.procs",
        "/sys/fs/cgroup/pids/cgroup.procs",
        "/sys/fs/cgroup/memory/cgroup.procs",
        "/sys/fs/cgroup/cpu/cgroup.procs",
    ] {
        match fs::write(p, &pid) {
            Ok(()) => return Ok(Found::new(true, None, format!("moved into {p}"))),
            Err(e) => {
                first_err = first_err.or(io_errno(&e));
                notes.push(format!("{p}: {e}"));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

// ---------------------------------------------------------------- network

/// TCP connect to a host loopback listener. Stopped by: the network
/// namespace (ECONNREFUSED: only our own `lo`); Landlock TCP connect (ABI >= 4,
/// EACCES).
fn tcp_connect(port: u16) -> Attack {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    Ok(
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(mut s) => {
                let _ = s.write_all(b"hutch-probe-tcp\n");
                Found::new(true, None, format!("connected to {addr}"))
            }
            Err(e) => Found::new(false, io_errno(&e), format!("connect {addr}: {e}")),
        },
    )
}

/// Bind a TCP listener (inside the sandbox's own netns) and connect to it.
/// Stopped by: Landlock TCP bind/connect rules (ABI >= 4, EACCES); nothing
/// else (the netns has a working `lo`).
fn tcp_bind() -> Attack {
    Ok(match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => {
            let connected = l
                .local_addr()
                .and_then(std::net::TcpStream::connect)
                .is_ok();
            Found::new(
                true,
                None,
                format!(
                    "bound {:?}; connect to it: {connected}",
                    l.local_addr().ok()
                ),
            )
        }
        Err(e) => Found::new(false, io_errno(&e), format!("bind 127.0.0.1:0: {e}")),
    })
}

/// UDP datagram to a host loopback echo listener. Stopped by: the network
/// namespace (the host never sees it; the test checks its listener).
fn udp_send(port: u16) -> Attack {
    let run = || -> std::io::Result<Vec<u8>> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send(b"hutch-probe-udp")?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    };
    Ok(match run() {
        Ok(b) => Found::new(true, None, format!("host echoed {} bytes", b.len())).external(),
        Err(e) => Found::new(false, io_errno(&e), format!("udp 127.0.0.1:{port}: {e}")).external(),
    })
}

/// A socket of a forbidden family/type. Stopped by: seccomp (socket only
/// AF_UNIX/AF_INET/AF_INET6; EPERM + denial); for raw and packet sockets also
/// no CAP_NET_RAW.
fn socket(name: &str, family: i32, ty: i32, proto: i32) -> Attack {
    Ok(real(
        &format!("socket({name})"),
        raw(libc::SYS_socket, &[family as u64, ty as u64, proto as u64]),
        true,
    ))
}

/// Connect to an abstract Unix socket the host listens on. Stopped by: the
/// network namespace (abstract names are per netns: ECONNREFUSED); Landlock
/// abstract-socket scoping (ABI >= 6, EPERM).
fn unix_abstract(name: &str) -> Attack {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| Usage(e.to_string()))?;
    Ok(match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(_) => Found::new(true, None, format!("connected to @{name}")),
        Err(e) => Found::new(false, io_errno(&e), format!("connect @{name}: {e}")),
    })
}

/// Connect to a host Unix socket by path. Stopped by: the mount tree (not
/// mounted: ENOENT). Nothing else stops it if the socket's dir is mounted.
fn unix_path(path: &str) -> Attack {
    Ok(match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Found::new(true, None, format!("connected to {path}")),
        Err(e) => Found::new(false, io_errno(&e), format!("connect {path}: {e}")),
    })
}

/// Keep trying to connect to PATH for SECONDS (a socket the host creates
/// after the sandbox started). Stopped by: nothing but the mount tree not
/// containing PATH at all; see `unix_path`.
fn unix_path_wait(path: &str, secs: f64) -> Attack {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut last = None;
    while Instant::now() < deadline {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Ok(Found::new(true, None, format!("connected to {path}"))),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(match last {
        Some(e) => Found::new(
            false,
            io_errno(&e),
            format!("connect {path} for {secs}s: {e}"),
        ),
        None => Found::new(false, None, "no attempt made"),
    })
}

// ---------------------------------------------------------------- kernel surface

/// Stopped by: seccomp (EPERM + denial).
fn keyctl() -> Attack {
    // KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create.
    Ok(real(
        "keyctl(GET_KEYRING_ID)",
        raw(libc::SYS_keyctl, &[0, (-3i64) as u64, 1]),
        false,
    ))
}

/// `add_key` and `request_key` (the rest of the keyctl family). Stopped by:
/// seccomp (EPERM + denials).
fn add_key() -> Attack {
    let ty = CString::new("user").map_err(|e| Usage(e.to_string()))?;
    let desc = CString::new("hutch-probe").map_err(|e| Usage(e.to_string()))?;
    let payload = b"secret";
    // KEY_SPEC_SESSION_KEYRING = -3
    let add = raw(
        libc::SYS_add_key,
        &[
            ptr(ty.as_ptr()),
            ptr(desc.as_ptr()),
            ptr(payload.as_ptr()),
            payload.len() as u64,
            (-3i64) as u64,
        ],
    );
    let req = raw(
        libc::SYS_request_key,
        &[ptr(ty.as_ptr()), ptr(desc.as_ptr()), 0, 0],
    );
    Ok(match (add, req) {
        (Ok(k), _) => Found::new(true, None, format!("add_key returned key {k}")),
        (_, Ok(k)) => Found::new(true, None, format!("request_key returned key {k}")),
        (Err(a), Err(r)) => Found::new(
            false,
            Some(a),
            format!("add_key: {}; request_key: {}", errno_name(a), errno_name(r)),
        ),
    })
}

/// Read another process's memory with `process_vm_readv` (pid 1 by
/// default). Stopped by: seccomp (EPERM + denial); init's uid 0.
fn process_vm(pid: i32) -> Attack {
    let addr = fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                rest.starts_with('r').then_some(())?;
                u64::from_str_radix(range.split_once('-')?.0, 16).ok()
            })
        })
        .unwrap_or(0x40_0000);
    let mut buf = [0u8; 16];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let r = raw(
        libc::SYS_process_vm_readv,
        &[
            pid as u64,
            ptr(&raw const local),
            1,
            ptr(&raw const remote),
            1,
            0,
        ],
    );
    Ok(match r {
        Ok(n) => Found::new(
            true,
            None,
            format!("read {n} bytes of pid {pid} at {addr:#x}"),
        ),
        Err(e) => Found::new(
            false,
            Some(e),
            format!("process_vm_readv {pid}: {}", errno_name(e)),
        ),
    })
}

/// `setns` into pid 1's mount namespace, then into our own network
/// namespace. Stopped by: seccomp (EPERM + denial); no CAP_SYS_ADMIN.
fn setns() -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for (path, ty) in [
        ("/proc/1/ns/mnt", libc::CLONE_NEWNS),
        ("/proc/self/ns/net", libc::CLONE_NEWNET),
    ] {
        let f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                notes.push(format!("open {path}: {e}"));
                continue;
            }
        };
        match raw(libc::SYS_setns, &[f.as_raw_fd() as u64, ty as u64]) {
            Ok(_) => return Ok(Found::new(true, None, format!("setns({path}) returned 0"))),
            Err(e) => {
                first_err = first_err.or(Some(e));
                notes.push(format!("setns {path}: {}", errno_name(e)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// Create a /dev/mem character device node in /tmp and open it. Stopped by:
/// no CAP_MKNOD (EPERM); Landlock (no MAKE_CHAR); /tmp mounted nodev.
fn mknod_mem() -> Attack {
    let path = format!("/tmp/hutch-probe-mem-{}", std::process::id());
    let r = nix::sys::stat::mknod(
        path.as_str(),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 1),
    );
    let found = match r {
        Ok(()) => match fs::File::open(&path) {
            Ok(_) => Found::new(true, None, format!("created and opened /dev/mem as {path}")),
            Err(e) => Found::new(true, io_errno(&e), format!("created {path} (open: {e})")),
        },
        Err(e) => Found::new(false, Some(e), format!("mknod {path}: {}", errno_name(e))),
    };
    let _ = fs::remove_file(&path);
    Ok(found)
}

/// Raise the I/O privilege level / open I/O ports. Stopped by: seccomp
/// (EPERM + denial); no CAP_SYS_RAWIO.
fn iopl() -> Attack {
    let io = raw(libc::SYS_iopl, &[3]);
    let perm = raw(libc::SYS_ioperm, &[0x80, 1, 1]);
    Ok(match (io, perm) {
        (Ok(_), _) => Found::new(true, None, "iopl(3) returned 0"),
        (_, Ok(_)) => Found::new(true, None, "ioperm(0x80) returned 0"),
        (Err(a), Err(b)) => Found::new(
            false,
            Some(a),
            format!("iopl: {}; ioperm: {}", errno_name(a), errno_name(b)),
        ),
    })
}

/// `kill(-1, 0)`: is any process other than us (and our init) signalable?
/// Stopped by: the pid namespace (ESRCH); the per-plugin uid.
fn kill_everyone() -> Attack {
    Ok(match signal::kill(Pid::from_raw(-1), None) {
        Ok(()) => Found::new(
            true,
            None,
            "kill(-1, 0) returned 0: other processes are signalable",
        ),
        Err(e) => Found::new(false, Some(e), format!("kill(-1, 0): {}", errno_name(e))),
    })
}

/// BPF_MAP_CREATE of a one-entry array. Stopped by: seccomp (EPERM +
/// denial); no CAP_BPF with unprivileged_bpf_disabled.
fn bpf() -> Attack {
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key_size
    attr[2] = 4; // value_size
    attr[3] = 1; // max_entries
    Ok(real(
        "bpf(BPF_MAP_CREATE)",
        raw(libc::SYS_bpf, &[0, ptr(attr.as_ptr()), 128]),
        true,
    ))
}

/// A software CPU-clock counter on ourselves. Stopped by: seccomp (EPERM +
/// denial); perf_event_paranoid.
fn perf_event_open() -> Attack {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
    // config 0 = PERF_COUNT_SW_CPU_CLOCK; flags: disabled | exclude_kernel | exclude_hv
    attr[40..48].copy_from_slice(&(1u64 | 1 << 5 | 1 << 6).to_ne_bytes());
    let r = raw(
        libc::SYS_perf_event_open,
        &[ptr(attr.as_ptr()), 0, (-1i64) as u64, (-1i64) as u64, 8],
    );
    Ok(real("perf_event_open", r, true))
}

/// Stopped by: seccomp (EPERM + denial).
fn userfaultfd() -> Attack {
    let user_only = raw(libc::SYS_userfaultfd, &[(libc::O_CLOEXEC | 1) as u64]);
    if user_only.is_ok() {
        return Ok(real("userfaultfd(UFFD_USER_MODE_ONLY)", user_only, true));
    }
    Ok(real(
        "userfaultfd",
        raw(libc::SYS_userfaultfd, &[libc::O_CLOEXEC as u64]),
        true,
    ))
}

/// Stopped by: seccomp (EPERM + denial).
fn io_uring() -> Attack {
    let params = [0u32; 30];
    Ok(real(
        "io_uring_setup",
        raw(libc::SYS_io_uring_setup, &[8, ptr(params.as_ptr())]),
        true,
    ))
}

/// Module loading (bogus image). Stopped by: seccomp (EPERM + denial); no
/// CAP_SYS_MODULE. This kernel has no CONFIG_MODULES (ENOSYS unsandboxed).
fn init_module() -> Attack {
    let empty = [0u8; 8];
    Ok(reached(
        "init_module",
        raw(
            libc::SYS_init_module,
            &[ptr(empty.as_ptr()), 0, ptr(empty.as_ptr())],
        ),
    ))
}

/// Stopped by: seccomp (EPERM + denial); no CAP_SYS_MODULE.
fn finit_module() -> Attack {
    let empty = [0u8; 8];
    Ok(reached(
        "finit_module",
        raw(
            libc::SYS_finit_module,
            &[u32::MAX as u64, ptr(empty.as_ptr()), 0],
        ),
    ))
}

/// kexec_load with bogus flags. Stopped by: seccomp (EPERM + denial); no
/// CAP_SYS_BOOT. This kernel has no CONFIG_KEXEC (ENOSYS unsandboxed).
fn kexec_load() -> Attack {
    Ok(reached(
        "kexec_load",
        raw(libc::SYS_kexec_load, &[0, 0, 0, 0xdead_0000]),
    ))
}

/// The "shocker" escape: open inode 2 (the root dir) of the filesystem behind
/// `/usr` by handle. Stopped by: seccomp (EPERM + denial); no
/// CAP_DAC_READ_SEARCH.
fn open_by_handle_at() -> Attack {
    let dir = match fs::File::open("/usr") {
        Ok(f) => f,
        Err(e) => return Ok(Found::new(false, io_errno(&e), format!("open /usr: {e}"))),
    };
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[8] }:
    // FILEID_INO32_GEN (1), inode 2, generation 0.
    let mut handle = [0u32; 4];
    handle[0] = 8;
    handle[1] = 1;
    handle[2] = 2;
    let r = raw(
        libc::SYS_open_by_handle_at,
        &[
            dir.as_raw_fd() as u64,
            ptr(handle.as_ptr()),
            libc::O_RDONLY as u64,
        ],
    );
    Ok(match r {
        Ok(fd) => {
            let target =
                fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string());
            close(fd);
            Found::new(
                true,
                None,
                format!("opened fs root by handle: {}", target.unwrap_or_default()),
            )
        }
        Err(e) => Found::new(
            false,
            Some(e),
            format!("open_by_handle_at: {}", errno_name(e)),
        ),
    })
}

/// acct(NULL) (turns process accounting off; harmless). Stopped by: seccomp
/// (EPERM + denial); no CAP_SYS_PACCT.
fn acct() -> Attack {
    Ok(real("acct(NULL)", raw(libc::SYS_acct, &[0]), false))
}

/// Set the clock to what it reads now (a microseconds-sized step). Stopped
/// by: seccomp (EPERM + denial); no CAP_SYS_TIME.
fn settimeofday() -> Attack {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    if let Err(e) = raw(libc::SYS_gettimeofday, &[ptr(&raw mut tv), 0]) {
        return Ok(Found::new(false, Some(e), "gettimeofday failed"));
    }
    Ok(real(
        "settimeofday",
        raw(libc::SYS_settimeofday, &[ptr(&raw const tv), 0]),
        false,
    ))
}

/// Read the kernel log. Stopped by: seccomp (EPERM + denial); dmesg_restrict
/// with no CAP_SYSLOG.
fn syslog() -> Attack {
    let mut buf = vec![0u8; 4096];
    Ok(real(
        "syslog(READ_ALL)",
        raw(libc::SYS_syslog, &[3, ptr(buf.as_mut_ptr()), 4096]),
        false,
    ))
}

/// swapon on a bogus path. Stopped by: seccomp (EPERM + denial); no
/// CAP_SYS_ADMIN.
fn swapon() -> Attack {
    let p = CString::new("/hutch-probe-nonexistent").map_err(|e| Usage(e.to_string()))?;
    Ok(reached(
        "swapon",
        raw(libc::SYS_swapon, &[ptr(p.as_ptr()), 0]),
    ))
}

/// reboot with bogus magic (never reboots). Stopped by: seccomp (EPERM +
/// denial); no CAP_SYS_BOOT.
fn reboot() -> Attack {
    Ok(reached(
        "reboot",
        raw(libc::SYS_reboot, &[0x1234_5678, 0x1234_5678, 0, 0]),
    ))
}

fn tty_fds() -> Vec<(String, i32, Option<fs::File>)> {
    let mut fds: Vec<(String, i32, Option<fs::File>)> = vec![("stdin".into(), 0, None)];
    for path in ["/dev/tty", "/dev/tty0"] {
        if let Ok(f) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
        {
            fds.push((path.into(), f.as_raw_fd(), Some(f)));
        }
    }
    // A fresh pty: the unsandboxed manual check needs some terminal.
    if let Ok(m) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
    {
        let unlock = 0i32;
        let _ = raw(
            libc::SYS_ioctl,
            &[
                m.as_raw_fd() as u64,
                libc::TIOCSPTLCK,
                ptr(&raw const unlock),
            ],
        );
        let mut n = 0u32;
        if raw(
            libc::SYS_ioctl,
            &[m.as_raw_fd() as u64, libc::TIOCGPTN, ptr(&raw mut n)],
        )
        .is_ok()
            && let Ok(s) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(format!("/dev/pts/{n}"))
        {
            fds.push((format!("/dev/pts/{n}"), s.as_raw_fd(), Some(s)));
        }
        fds.push(("/dev/ptmx".into(), m.as_raw_fd(), Some(m)));
    }
    fds
}

/// TIOCSTI (push a byte into a terminal's input), optionally with bits set
/// above the low 32 of the request (the kernel ignores them, a careless
/// filter does not). Stopped by: seccomp (ioctl request checked on the full
/// argument; EPERM + denial); no controlling tty (stdin is /dev/null, new
/// session) and no CAP_SYS_ADMIN.
fn tiocsti(high_bits: bool) -> Attack {
    let req = libc::TIOCSTI | if high_bits { 0xdead_0000_0000_0000 } else { 0 };
    let byte = b'#';
    let mut first_err = None;
    let mut notes = Vec::new();
    for (name, fd, _keep) in tty_fds() {
        match raw(libc::SYS_ioctl, &[fd as u64, req, ptr(&raw const byte)]) {
            Ok(_) => {
                return Ok(Found::new(
                    true,
                    None,
                    format!("TIOCSTI {req:#x} on {name} returned 0"),
                ));
            }
            Err(e) => {
                first_err = first_err.or(Some(e));
                notes.push(format!("{name}: {}", errno_name(e)));
            }
        }
    }
    Ok(Found::new(false, first_err, notes.join("; ")))
}

/// TIOCLINUX (TIOCL_GETFGCONSOLE: harmless, but the same request number as
/// selection paste). "reached" = past the filter. Stopped by: seccomp
/// (EPERM + denial); no VT in the sandbox.
fn tioclinux() -> Attack {
    let mut first_err = None;
    let mut notes = Vec::new();
    for (name, fd, _keep) in tty_fds() {
        let mut sub = [12u8; 4];
        let r = raw(
            libc::SYS_ioctl,
            &[fd as u64, libc::TIOCLINUX, ptr(sub.as_mut_ptr())],
        );
        match r {
            Ok(v) => {
                return Ok(Found::new(
                    true,
                    None,
                    format!("TIOCLINUX on {name} returned {v}"),
                ));
            }
            Err(e) => {
                first_err = first_err.or(Some(e));
                notes.push(format!("{name}: {}", errno_name(e)));
            }
        }
    }
    let errno = first_err;
    let reached = !matches!(errno, Some(Errno::EPERM | Errno::EACCES) | None);
    Ok(Found::new(
        reached,
        errno,
        format!("{} (reached = an errno past the filter)", notes.join("; ")),
    ))
}

/// getpid through the x32 ABI (nr | 0x40000000). Stopped by: seccomp
/// (allowlist has no x32 numbers: EPERM + denial, or SIGSYS). This kernel
/// has no CONFIG_X86_X32_ABI (ENOSYS unsandboxed).
fn x32() -> Attack {
    Ok(real(
        "x32 getpid",
        raw(libc::SYS_getpid | 0x4000_0000, &[]),
        false,
    ))
}

/// getpid through `int 0x80` (the i386 entry). Stopped by: seccomp (foreign
/// architecture: the process is killed by SIGSYS).
fn int80() -> Attack {
    let mut ret: i64 = 20; // __NR_getpid on i386
    // SAFETY: i386 getpid takes no arguments and writes no memory; r8-r11 are declared clobbered.
    unsafe {
        std::arch::asm!("int 0x80", inout("rax") ret, out("r8") _, out("r9") _, out("r10") _, out("r11") _, options(nostack))
    };
    Ok(if ret >= 0 {
        Found::new(true, None, format!("int 0x80 getpid returned {ret}"))
    } else {
        let e = Errno::from_raw(i32::try_from(-ret).unwrap_or(0));
        Found::new(
            false,
            Some(e),
            format!("int 0x80 getpid: {}", errno_name(e)),
        )
    })
}

// ---------------------------------------------------------------- privileges

fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

/// Exec a setuid-root binary (a 4755 copy of `id`) and read the euid it runs
/// with. Stopped by: `/plugin` mounted nosuid; no_new_privs.
fn setuid_exec(path: &str) -> Attack {
    let out = match Command::new(path).arg("-u").output() {
        Ok(o) => o,
        Err(e) => return Ok(Found::new(false, io_errno(&e), format!("exec {path}: {e}"))),
    };
    let euid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ours = nix::unistd::geteuid().as_raw();
    let found = if euid == "0" {
        Found::new(
            true,
            None,
            format!("{path} ran with euid 0 (ours is {ours})"),
        )
    } else {
        Found::new(
            false,
            None,
            format!("{path} ran with euid {euid} (ours is {ours})"),
        )
    };
    Ok(found
        .with("euid", Value::String(euid))
        .with("our_euid", json!(ours)))
}

/// Any capability in any set. Stopped by: the identity step (all sets
/// cleared, bounding and ambient too).
fn caps() -> Attack {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| Usage(e.to_string()))?;
    let mut extra = Map::new();
    let mut bad = Vec::new();
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = status_field(&status, k).unwrap_or_default();
        if !u64::from_str_radix(&v, 16).is_ok_and(|n| n == 0) {
            bad.push(format!("{k}={v}"));
        }
        extra.insert(k.to_owned(), Value::String(v));
    }
    let mut f = if bad.is_empty() {
        Found::new(false, None, "all capability sets are empty")
    } else {
        Found::new(true, None, format!("capabilities held: {}", bad.join(" ")))
    };
    f.extra = extra;
    Ok(f)
}

/// Privileged identity: euid/egid 0, group 0, no no_new_privs, no seccomp
/// filter, a controlling terminal. Stopped by: the identity step, seccomp.
fn identity() -> Attack {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| Usage(e.to_string()))?;
    let mut bad = Vec::new();
    let (euid, egid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if euid == 0 || nix::unistd::getuid().is_root() {
        bad.push(format!("uid 0 (euid {euid})"));
    }
    if egid == 0 || nix::unistd::getgid().as_raw() == 0 {
        bad.push("gid 0".to_owned());
    }
    let groups = status_field(&status, "Groups").unwrap_or_default();
    if groups.split_whitespace().any(|g| g == "0") {
        bad.push("supplementary group 0".to_owned());
    }
    let nnp = status_field(&status, "NoNewPrivs").unwrap_or_default();
    if nnp != "1" {
        bad.push(format!("NoNewPrivs {nnp}"));
    }
    let seccomp = status_field(&status, "Seccomp").unwrap_or_default();
    if seccomp != "2" {
        bad.push(format!("Seccomp mode {seccomp}"));
    }
    let tty = fs::File::open("/dev/tty");
    if tty.is_ok() {
        bad.push("has a controlling terminal".to_owned());
    }
    let stdin = fs::read_link("/proc/self/fd/0")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let f = if bad.is_empty() {
        Found::new(
            false,
            None,
            "unprivileged, no_new_privs, seccomp filter, no ctty",
        )
    } else {
        Found::new(true, None, bad.join("; "))
    };
    Ok(f.with("euid", json!(euid))
        .with("egid", json!(egid))
        .with("groups", Value::String(groups))
        .with("no_new_privs", Value::String(nnp))
        .with("seccomp", Value::String(seccomp))
        .with("stdin", Value::String(stdin))
        .with(
            "sid",
            json!(nix::unistd::getsid(None).map(Pid::as_raw).unwrap_or(-1)),
        ))
}

/// Device nodes in `/dev` beyond null, zero, full, random, urandom (1:3,
/// 1:5, 1:7, 1:8, 1:9). Stopped by: the minimal `/dev` of the mount tree.
fn dev_nodes() -> Attack {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const ALLOWED: [(u64, u64); 5] = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)];
    // Listing /dev may be refused (Landlock), so also stat well-known names.
    let mut candidates: Vec<std::path::PathBuf> = [
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "mem",
        "kmem",
        "port",
        "kmsg",
        "tty",
        "tty0",
        "console",
        "ptmx",
        "fuse",
        "kvm",
        "vsock",
        "vda",
        "sda",
        "nvme0n1",
        "loop0",
        "loop-control",
        "zram0",
        "net/tun",
        "mapper/control",
        "cpu_dma_latency",
        "userfaultfd",
        "vhost-vsock",
    ]
    .iter()
    .map(|n| std::path::Path::new("/dev").join(n))
    .collect();
    let mut stack = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                candidates.push(e.path());
            }
        }
    }
    candidates.sort();
    candidates.dedup();
    let mut extra = Vec::new();
    let mut seen = Vec::new();
    for path in candidates {
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = m.file_type();
        if ft.is_char_device() || ft.is_block_device() {
            let dev = m.rdev();
            let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
            seen.push(format!("{} {maj}:{min}", path.display()));
            if ft.is_block_device() || !ALLOWED.contains(&(maj, min)) {
                extra.push(format!("{} {maj}:{min}", path.display()));
            }
        }
    }
    let f = if extra.is_empty() {
        Found::new(false, None, format!("only {}", seen.join(", ")))
    } else {
        Found::new(
            true,
            None,
            format!(
                "{} extra device nodes: {}",
                extra.len(),
                extra
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    Ok(f.with("devices", json!(seen.len())))
}

/// Host configuration visible in `/etc`: anything beyond what dynamic
/// linking, name lookup and locale need, or host accounts in `/etc/passwd`.
/// Stopped by: the generated minimal `/etc` of the mount tree.
fn etc_files() -> Attack {
    const ALLOWED: [&str; 9] = [
        // symlinks to libraries under /usr (Debian's update-alternatives)
        "alternatives",
        "group",
        "hosts",
        "hostname",
        "ld.so.cache",
        "ld.so.conf",
        "localtime",
        "nsswitch.conf",
        "passwd",
    ];
    let entries: Vec<String> = match fs::read_dir("/etc") {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => return Ok(Found::new(false, io_errno(&e), format!("/etc: {e}"))),
    };
    let users: Vec<String> = fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect();
    let extra: Vec<&String> = entries
        .iter()
        .filter(|e| !ALLOWED.contains(&e.as_str()))
        .collect();
    let host_users: Vec<&String> = users
        .iter()
        .filter(|u| !["root", "nobody", "hutch"].contains(&u.as_str()))
        .collect();
    let f = if extra.is_empty() && host_users.is_empty() {
        Found::new(
            false,
            None,
            format!("/etc: {}; users: {}", entries.join(" "), users.join(" ")),
        )
    } else {
        Found::new(
            true,
            None,
            format!(
                "{} extra /etc entries (e.g. {:?}), host users {:?}",
                extra.len(),
                extra.iter().take(5).collect::<Vec<_>>(),
                host_users.iter().take(5).collect::<Vec<_>>()
            ),
        )
    };
    Ok(f.with("entries", json!(entries)))
}

/// Inherited fds beyond 0-2. Stopped by: the identity step (close_range).
fn fds() -> Attack {
    let mut leaked = Vec::new();
    let dir = fs::read_dir("/proc/self/fd").map_err(|e| Usage(format!("/proc/self/fd: {e}")))?;
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let target = fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if fd > 2 && !target.ends_with("/fd") {
            leaked.push(format!("{fd} -> {target}"));
        }
    }
    let stdin = fs::read_link("/proc/self/fd/0")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let f = if leaked.is_empty() {
        Found::new(false, None, format!("only 0-2 open; stdin is {stdin}"))
    } else {
        Found::new(true, None, format!("inherited fds: {}", leaked.join(", ")))
    };
    Ok(f.with("stdin", Value::String(stdin)))
}

// ---------------------------------------------------------------- exhaustion

/// Fork until refused (children pause), up to MAX. Stopped by: the pids
/// cgroup (EAGAIN; report pids_limit_hit).
fn fork_bomb(max: u32) -> Attack {
    let mut kids = Vec::new();
    let mut err = None;
    while kids.len() < max as usize {
        // SAFETY: the child only calls pause() and _exit(), both async-signal-safe.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => loop {
                nix::unistd::pause();
            },
            Ok(nix::unistd::ForkResult::Parent { child }) => kids.push(child),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let n = kids.len();
    for k in &kids {
        let _ = signal::kill(*k, Signal::SIGKILL);
    }
    for k in &kids {
        let _ = nix::sys::wait::waitpid(*k, None);
    }
    Ok(match err {
        None => Found::new(true, None, format!("forked all {n} children")),
        Some(e) => Found::new(
            false,
            Some(e),
            format!("fork refused after {n} children: {}", errno_name(e)),
        ),
    }
    .with("forked", json!(n)))
}

/// Touch MB mebibytes of anonymous memory. Stopped by: the memory cgroup
/// (OOM kill; report oom_killed, signal 9).
fn mem_anon(mb: usize) -> Attack {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mb {
        chunks.push(vec![0xa5u8; 1 << 20]);
    }
    let touched = chunks
        .iter()
        .map(|c| c.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>())
        .sum::<u64>();
    Ok(
        Found::new(true, None, format!("touched {mb} MiB (checksum {touched})"))
            .with("mib", json!(mb)),
    )
}

/// Write MB mebibytes into a file under /tmp (tmpfs pages count against the
/// memory cgroup, and /tmp has tmp_size). Stopped by: tmp_size (ENOSPC) or
/// the memory cgroup (OOM kill or ENOMEM).
fn fill_tmp(mb: usize) -> Attack {
    let path = format!("/tmp/hutch-probe-fill-{}", std::process::id());
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0usize;
    let res = fs::File::create(&path).and_then(|mut f| {
        for _ in 0..mb {
            f.write_all(&chunk)?;
            written += 1;
        }
        f.sync_all()
    });
    let _ = fs::remove_file(&path);
    Ok(match res {
        Ok(()) => Found::new(true, None, format!("wrote {written} MiB to {path}")),
        Err(e) => Found::new(
            false,
            io_errno(&e),
            format!("stopped after {written} MiB: {e}"),
        ),
    }
    .with("written_mib", json!(written)))
}

/// Create up to N empty files in /tmp (inodes and dentries are kernel
/// memory, not tmpfs pages). Stopped by: tmpfs `nr_inodes` (ENOSPC) or the
/// memory cgroup's kernel-memory accounting (ENOMEM / OOM kill).
fn inode_bomb(n: usize) -> Attack {
    let dir = format!("/tmp/hutch-probe-inodes-{}", std::process::id());
    if let Err(e) = fs::create_dir(&dir) {
        return Ok(Found::new(false, io_errno(&e), format!("mkdir {dir}: {e}")));
    }
    let mut made = 0usize;
    let mut err = None;
    for i in 0..n {
        match fs::File::create(format!("{dir}/{i}")) {
            Ok(_) => made += 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(match err {
        None => Found::new(true, None, format!("created all {made} files")),
        Some(e) => Found::new(
            false,
            io_errno(&e),
            format!("stopped after {made} files: {e}"),
        ),
    }
    .with("created", json!(made)))
}

/// Raise scheduling, nice and I/O priority above what an unprivileged
/// process may (SCHED_FIFO, nice -20, IOPRIO_CLASS_RT). Stopped by: no
/// CAP_SYS_NICE / CAP_SYS_ADMIN, RLIMIT_RTPRIO 0.
fn priority() -> Attack {
    let param = 1i32; // struct sched_param { int sched_priority; }
    let fifo = raw(
        libc::SYS_sched_setscheduler,
        &[0, libc::SCHED_FIFO as u64, ptr(&raw const param)],
    );
    let nice = raw(
        libc::SYS_setpriority,
        &[libc::PRIO_PROCESS as u64, 0, (-20i64) as u64],
    );
    // IOPRIO_WHO_PROCESS = 1; IOPRIO_CLASS_RT = 1 << 13 | level 0
    let io = raw(libc::SYS_ioprio_set, &[1, 0, 1 << 13]);
    let name = |r: &Result<i64, Errno>| match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => errno_name(*e),
    };
    let detail = format!(
        "SCHED_FIFO: {}; nice -20: {}; ioprio RT: {}",
        name(&fifo),
        name(&nice),
        name(&io)
    );
    Ok(match (fifo, nice, io) {
        (Err(e), Err(_), Err(_)) => Found::new(false, Some(e), detail),
        _ => Found::new(true, None, detail),
    })
}

fn cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// Spin THREADS threads for SECONDS; "succeeded" when we got more than
/// LIMIT CPUs (+25%). Stopped by: the cpu cgroup quota. The test checks the
/// report's cpu_time_ns too.
fn cpu_hog(threads: usize, secs: f64, limit: f64) -> Attack {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < deadline {
                    for i in 0..10_000u64 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                    }
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds();
    let used = cpu / wall;
    Ok(Found::new(
        used > limit * 1.25,
        None,
        format!("{cpu:.2}s CPU in {wall:.2}s wall = {used:.2} CPUs (limit {limit})"),
    )
    .with("cpu_s", json!(cpu))
    .with("wall_s", json!(wall)))
}

fn self_exe() -> String {
    "/proc/self/exe".to_owned()
}

/// Leave a grandchild behind: spawn a middle process that spawns `idle
/// SECONDS MARKER` in a new session and exits at once; then exit. Verdict is
/// external: the test looks for MARKER on the host after `hutchd try`
/// returns. Stopped by: the pid namespace teardown / cgroup kill.
fn double_fork(secs: &str, marker: &str) -> Attack {
    let st = Command::new(self_exe())
        .args(["double-fork-mid", secs, marker])
        .status();
    Ok(match st {
        Ok(s) if s.success() => Found::new(
            false,
            None,
            "grandchild left behind; the test checks it died",
        )
        .external(),
        Ok(s) => Found::new(false, None, format!("middle process failed: {s}")).external(),
        Err(e) => Found::new(false, io_errno(&e), format!("spawn middle: {e}")).external(),
    })
}

fn double_fork_mid(secs: &str, marker: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let r = Command::new(self_exe())
        .args(["idle", secs, marker])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if r.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn ignore_terms() {
    for s in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal::signal(s, SigHandler::SigIgn) };
    }
}

/// Ignore SIGTERM and keep running for SECONDS. "succeeded" = survived.
/// Stopped by: stop/timeout escalating to SIGKILL after the grace period.
fn ignore_sigterm(secs: f64) -> Attack {
    ignore_terms();
    println!("{}", json!({"attack": "ignore-sigterm", "ready": true}));
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs_f64(secs));
    Ok(Found::new(true, None, format!("survived {secs}s ignoring SIGTERM")).external())
}

// ---------------------------------------------------------------- main

/// Bait markers: the arguments plus `PROBE_BAIT_MARKERS` (comma-separated).
/// Tests pass them in the environment: arguments also show up in the argv of
/// the daemon, which a forked (not exec'd) sandbox init inherits.
fn markers(a: &[String]) -> Result<Vec<String>, Usage> {
    let mut m: Vec<String> = a.to_vec();
    if let Ok(env) = std::env::var("PROBE_BAIT_MARKERS") {
        m.extend(env.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
    }
    if m.is_empty() {
        return Err(Usage("no MARKER argument and no PROBE_BAIT_MARKERS".into()));
    }
    Ok(m)
}

fn run(attack: &str, a: &[String]) -> Attack {
    let paths = |default: &[&str]| -> Vec<String> {
        if a.is_empty() {
            default.iter().map(|s| (*s).to_owned()).collect()
        } else {
            a.to_vec()
        }
    };
    match attack {
        "read-shadow" => read_paths(&["/etc/shadow".to_owned()]),
        "read-path" => read_paths(&paths(&["/etc/shadow"])),
        "open-write" => open_write(&paths(&[
            "/proc/sys/kernel/core_pattern",
            "/proc/sysrq-trigger",
            "/proc/sys/vm/drop_caches",
            "/etc/passwd",
            "/plugin/bin/probe",
        ])),
        "write-path" => write_paths(&paths(&["/", "/plugin", "/usr", "/etc"])),
        "control-tmp-write" => control_write("/tmp", None),
        "control-write" => control_write(arg(a, 0, "DIR")?, a.get(1).map(String::as_str)),
        "control-read" => control_read(arg(a, 0, "PATH")?),
        "list-procs" => list_procs(&markers(a)?),
        "kill-pid" => kill_pid(num(a, 0, "PID", None)?),
        "proc-environ" => proc_environ(num(a, 0, "PID", None)?, &markers(&a[1..])?),
        "proc-init-mem" => proc_init_mem(),
        "ptrace-traceme" => ptrace_traceme(),
        "signal-init" => signal_init(),
        "tcp-bind" => tcp_bind(),
        "ptrace-attach" => ptrace_attach(num(a, 0, "PID", None)?),
        "unshare" => unshare_ns(),
        "clone-ns" => clone_ns(),
        "clone3-ns" => clone3_ns(),
        "mount" => mount_tmpfs(),
        "umount" => umount(a.first().map_or("/tmp", String::as_str)),
        "pivot-root" => pivot_root(),
        "chroot" => chroot(),
        "cgroup-escape" => cgroup_escape(),
        "tcp-connect" => tcp_connect(num(a, 0, "PORT", None)?),
        "udp-send" => udp_send(num(a, 0, "PORT", None)?),
        "socket-raw" => socket(
            "AF_INET, SOCK_RAW",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        "socket-packet" => socket("AF_PACKET", libc::AF_PACKET, libc::SOCK_RAW, 0x0300),
        "socket-alg" => socket("AF_ALG", libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
        "socket-vsock" => socket("AF_VSOCK", libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        "socket-netlink" => socket("AF_NETLINK", libc::AF_NETLINK, libc::SOCK_RAW, 0),
        "unix-abstract" => unix_abstract(arg(a, 0, "NAME")?),
        "unix-path" => unix_path(arg(a, 0, "PATH")?),
        "unix-path-wait" => unix_path_wait(arg(a, 0, "PATH")?, num(a, 1, "SECONDS", Some(5.0))?),
        "keyctl" => keyctl(),
        "add-key" => add_key(),
        "process-vm" => process_vm(num(a, 0, "PID", Some(1))?),
        "setns" => setns(),
        "mknod-mem" => mknod_mem(),
        "iopl" => iopl(),
        "kill-everyone" => kill_everyone(),
        "bpf" => bpf(),
        "perf-event-open" => perf_event_open(),
        "userfaultfd" => userfaultfd(),
        "io-uring" => io_uring(),
        "init-module" => init_module(),
        "finit-module" => finit_module(),
        "kexec-load" => kexec_load(),
        "open-by-handle-at" => open_by_handle_at(),
        "acct" => acct(),
        "settimeofday" => settimeofday(),
        "syslog" => syslog(),
        "swapon" => swapon(),
        "reboot" => reboot(),
        "tiocsti" => tiocsti(false),
        "tiocsti-high" => tiocsti(true),
        "tioclinux" => tioclinux(),
        "x32" => x32(),
        "int80" => int80(),
        "setuid-exec" => setuid_exec(a.first().map_or("/plugin/bin/suid-id", String::as_str)),
        "caps" => caps(),
        "identity" => identity(),
        "fds" => fds(),
        "dev-nodes" => dev_nodes(),
        "etc-files" => etc_files(),
        "fork-bomb" => fork_bomb(num(a, 0, "MAX", Some(100_000))?),
        "mem-anon" => mem_anon(num(a, 0, "MIB", None)?),
        "fill-tmp" | "mem-tmpfs" => fill_tmp(num(a, 0, "MIB", None)?),
        "inode-bomb" => inode_bomb(num(a, 0, "N", Some(2_000_000))?),
        "priority" => priority(),
        "cpu-hog" => cpu_hog(
            num(a, 0, "THREADS", None)?,
            num(a, 1, "SECONDS", None)?,
            num(a, 2, "LIMIT", None)?,
        ),
        "double-fork" => double_fork(arg(a, 0, "SECONDS")?, arg(a, 1, "MARKER")?),
        "ignore-sigterm" => ignore_sigterm(num(a, 0, "SECONDS", Some(60.0))?),
        other => Err(Usage(format!("unknown attack {other}"))),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let Some(attack) = argv.get(1).cloned() else {
        eprintln!("usage: hutch-probe ATTACK [ARGS...]");
        return ExitCode::from(2);
    };
    let rest = &argv[2..];
    // Helper modes that are not attacks.
    match attack.as_str() {
        "idle" => {
            ignore_terms();
            let secs: f64 = rest.first().and_then(|s| s.parse().ok()).unwrap_or(60.0);
            std::thread::sleep(Duration::from_secs_f64(secs));
            return ExitCode::SUCCESS;
        }
        "double-fork-mid" => {
            return double_fork_mid(
                rest.first().map_or("60", String::as_str),
                rest.get(1).map_or("", String::as_str),
            );
        }
        _ => {}
    }
    let control = attack.starts_with("control-");
    match run(&attack, rest) {
        Ok(f) => {
            let mut obj = Map::new();
            obj.insert("attack".into(), Value::String(attack.clone()));
            obj.insert("succeeded".into(), Value::Bool(f.succeeded));
            obj.insert(
                "errno".into(),
                f.errno
                    .map_or(Value::Null, |e| Value::String(errno_name(e))),
            );
            obj.insert("detail".into(), Value::String(f.detail));
            if f.external {
                obj.insert("external".into(), Value::Bool(true));
            }
            obj.extend(f.extra);
            println!("{}", Value::Object(obj));
            let _ = std::io::stdout().flush();
            if f.succeeded != control {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(Usage(msg)) => {
            println!(
                "{}",
                json!({"attack": attack, "succeeded": false, "errno": null, "detail": msg, "probe_error": true})
            );
            eprintln!("hutch-probe: {msg}");
            ExitCode::from(2)
        }
    }
}
