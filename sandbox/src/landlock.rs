//! Landlock: the child restricts itself, after `pivot_root` and before
//! seccomp, to the paths mounted into the sandbox.
//!
//! **Owns**: the Landlock ruleset of one sandboxed process. Filesystem access
//! is denied everywhere except the listed in-sandbox paths, with the rights of
//! their list; on ABI >= 4 TCP bind and connect are denied; on ABI >= 6
//! abstract Unix sockets and signals are scoped to the sandbox's own domain.
//!
//! Best effort by ABI, but never below the configured minimum: a kernel under
//! `min_abi` is an error naming the ABI found and the minimum, so a plugin
//! never starts with less than the admin required (fail closed). Within what
//! the kernel offers, every requested right is a hard requirement: the ruleset
//! is built for exactly the running ABI, and anything the kernel refuses is an
//! error, not a silent downgrade.
//!
//! Runs in the child (single-threaded, after fork), so it may allocate; the
//! paths are opened with `O_PATH` here because they are the in-sandbox paths,
//! which exist only after `pivot_root`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// The first ABI with everything Hutch asks of the file system (Refer: 2,
/// Truncate: 3, IoctlDev: 5).
const FS_FULL_ABI: u8 = 5;
/// The first ABI with TCP bind/connect control.
const NET_ABI: u8 = 4;
/// The first ABI with abstract-socket and signal scoping.
const SCOPE_ABI: u8 = 6;

/// In-sandbox paths (after `pivot_root`) and the rights they get. Everything
/// not listed, or not beneath a listed directory, is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRules {
    /// Read and execute (e.g. `/usr`, `/lib`, `/lib64`, `/bin`, `/plugin`).
    pub read_exec: Vec<PathBuf>,
    /// Read only (e.g. `/etc`, the manifest's `read_only` paths, `/dev/urandom`).
    pub read_only: Vec<PathBuf>,
    /// Read and write, never execute (e.g. `/tmp`, `/data`, `/dev/null`, the
    /// API socket's directory: on ABI >= 9 connecting to a named Unix socket
    /// needs a write-side right, granted only here).
    pub read_write: Vec<PathBuf>,
}

/// What Landlock must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockConfig {
    /// Refuse to run below this ABI (0 = run even without Landlock, reported
    /// as `NotEnforced`; an explicit admin choice).
    pub min_abi: u8,
    /// Deny TCP bind and connect (ABI >= 4).
    pub deny_tcp: bool,
    /// Scope abstract Unix sockets and signals to the sandbox (ABI >= 6).
    pub scope: bool,
}

impl Default for LandlockConfig {
    fn default() -> Self {
        Self {
            min_abi: 1,
            deny_tcp: true,
            scope: true,
        }
    }
}

impl From<&crate::spec::LandlockPolicy> for LandlockConfig {
    fn from(p: &crate::spec::LandlockPolicy) -> Self {
        Self {
            min_abi: p.min_abi,
            deny_tcp: p.deny_tcp,
            scope: p.scope,
        }
    }
}

/// How much of what was asked is enforced (serialized `fully_enforced`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Everything requested is enforced by this kernel.
    FullyEnforced,
    /// The kernel's ABI (>= `min_abi`) lacks some requested feature; see the
    /// `fs`/`net`/`scoped` flags of [`LandlockStatus`].
    PartiallyEnforced,
    /// No Landlock at all (only possible with `min_abi: 0`).
    NotEnforced,
}

/// What was enforced, per plugin (reported in the spawn outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockStatus {
    /// The kernel's Landlock ABI (0 = none).
    pub abi: u8,
    /// File system rules enforced (with every right the crate knows for `abi`).
    pub fs: bool,
    /// TCP bind/connect denied.
    pub net: bool,
    /// Abstract Unix sockets and signals scoped.
    pub scoped: bool,
    /// Overall.
    pub status: Enforcement,
}

impl Enforcement {
    /// `fully_enforced`, `partially_enforced` or `not_enforced`.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::FullyEnforced => "fully_enforced",
            Enforcement::PartiallyEnforced => "partially_enforced",
            Enforcement::NotEnforced => "not_enforced",
        }
    }
}

impl From<LandlockStatus> for crate::outcome::LandlockReport {
    fn from(s: LandlockStatus) -> Self {
        Self {
            abi: s.abi,
            fs: s.fs,
            net: s.net,
            scoped: s.scoped,
            status: s.status.as_str().to_owned(),
        }
    }
}

/// Landlock errors: which operation, which path, which errno.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel's ABI is below the configured minimum.
    #[error("landlock ABI {found} is below the required minimum {minimum}")]
    AbiTooOld {
        /// The kernel's ABI.
        found: u8,
        /// The configured minimum.
        minimum: u8,
    },
    /// Landlock is absent (ENOSYS) or disabled at boot (EOPNOTSUPP) and the
    /// minimum requires it.
    #[error("landlock unavailable ({errno:?}); the required minimum ABI is {minimum}")]
    Unavailable {
        /// Why.
        errno: Errno,
        /// The configured minimum.
        minimum: u8,
    },
    /// A listed path cannot be opened for a rule.
    #[error("landlock rule {list} {}: {errno:?}", path.display())]
    Path {
        /// Which list (`read_exec`, `read_only`, `read_write`).
        list: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno of `open(O_PATH)` or `stat`.
        errno: Errno,
    },
    /// The landlock crate / kernel refused a step.
    #[error("landlock {op}: {source}")]
    Ruleset {
        /// The step ("handle fs access", "add rule", "restrict self", ...).
        op: &'static str,
        /// The crate's error.
        source: landlock::RulesetError,
    },
    /// The kernel did not enforce the ruleset although its ABI should have.
    #[error("landlock ruleset not fully enforced at ABI {abi}: {status}")]
    NotEnforced {
        /// The ABI.
        abi: u8,
        /// The status the crate reported.
        status: String,
    },
}

/// Which of the three lists, for rights and error messages (named like the
/// fields of [`LandlockRules`]).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ReadExec,
    ReadOnly,
    ReadWrite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ReadExec => "read_exec",
            Kind::ReadOnly => "read_only",
            Kind::ReadWrite => "read_write",
        }
    }
}

/// The rights a path of `kind` gets at `abi`. Non-directories get only the
/// rights meaningful for files (the kernel rejects directory rights on them).
fn rights(kind: Kind, abi: ABI, is_dir: bool) -> BitFlags<AccessFs> {
    let r = match kind {
        Kind::ReadExec => AccessFs::from_read(abi),
        Kind::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
        // W^X: what a plugin can write it cannot execute.
        Kind::ReadWrite => AccessFs::from_all(abi) & !BitFlags::from(AccessFs::Execute),
    };
    if is_dir {
        r
    } else {
        r & AccessFs::from_file(abi)
    }
}

fn ruleset_err(op: &'static str) -> impl FnOnce(landlock::RulesetError) -> LandlockError {
    move |source| LandlockError::Ruleset { op, source }
}

fn path_rule(kind: Kind, path: &Path, abi: ABI) -> Result<PathBeneath<PathFd>, LandlockError> {
    let err = |errno| LandlockError::Path {
        list: kind.name(),
        path: path.to_owned(),
        errno,
    };
    let fd = PathFd::new(path).map_err(|e| {
        let landlock::PathFdError::OpenCall { source, .. } = &e else {
            return err(Errno::EIO);
        };
        err(Errno::from_raw(source.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    // fstat through the fd just opened, so the kind matches what the rule covers.
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(err)?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    Ok(PathBeneath::new(fd, rights(kind, abi, is_dir)))
}

/// The kernel's Landlock ABI, or why there is none.
fn kernel_abi() -> Result<u8, Errno> {
    crate::host::probe_landlock_abi().map(|v| u8::try_from(v).unwrap_or(u8::MAX))
}

/// What the given ABI can enforce of `config`.
fn plan(abi: u8, config: &LandlockConfig) -> LandlockStatus {
    let fs = abi >= 1;
    let net = config.deny_tcp && abi >= NET_ABI;
    let scoped = config.scope && abi >= SCOPE_ABI;
    let full = abi >= FS_FULL_ABI && (net || !config.deny_tcp) && (scoped || !config.scope);
    let status = match (fs, full) {
        (false, _) => Enforcement::NotEnforced,
        (true, true) => Enforcement::FullyEnforced,
        (true, false) => Enforcement::PartiallyEnforced,
    };
    LandlockStatus {
        abi,
        fs,
        net,
        scoped,
        status,
    }
}

/// Restrict the calling thread (and what it executes) to `rules`.
///
/// Call in the sandboxed child after `pivot_root` and the credential change,
/// before seccomp (which would otherwise have to allow the Landlock syscalls).
/// Also sets `no_new_privs`.
///
/// # Errors
/// [`LandlockError::AbiTooOld`] / [`LandlockError::Unavailable`] below
/// `min_abi`; [`LandlockError::Path`] for a listed path that cannot be
/// opened; [`LandlockError::Ruleset`] when the kernel refuses a step;
/// [`LandlockError::NotEnforced`] if the kernel did not enforce what its ABI
/// offers. On error nothing is enforced and the caller must not exec.
pub fn restrict_self(
    rules: &LandlockRules,
    config: &LandlockConfig,
) -> Result<LandlockStatus, LandlockError> {
    let abi_num = match kernel_abi() {
        Ok(abi) => abi,
        Err(errno) if config.min_abi > 0 => {
            return Err(LandlockError::Unavailable {
                errno,
                minimum: config.min_abi,
            });
        }
        Err(_) => return Ok(plan(0, config)),
    };
    if abi_num < config.min_abi {
        return Err(LandlockError::AbiTooOld {
            found: abi_num,
            minimum: config.min_abi,
        });
    }
    let planned = plan(abi_num, config);
    let abi = ABI::from(i32::from(abi_num));

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ruleset_err("handle fs access"))?;
    if planned.net {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(ruleset_err("handle tcp access"))?;
    }
    if planned.scoped {
        ruleset = ruleset
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(ruleset_err("scope abstract unix sockets and signals"))?;
    }
    let mut created = ruleset.create().map_err(ruleset_err("create ruleset"))?;
    let lists = [
        (Kind::ReadExec, &rules.read_exec),
        (Kind::ReadOnly, &rules.read_only),
        (Kind::ReadWrite, &rules.read_write),
    ];
    for (kind, paths) in lists {
        for path in paths {
            let rule = path_rule(kind, path, abi)?;
            created = created
                .add_rule(rule)
                .map_err(ruleset_err("add path rule"))?;
        }
    }
    let status = created
        .restrict_self()
        .map_err(ruleset_err("restrict self"))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotEnforced {
            abi: abi_num,
            status: format!("{:?}", status.ruleset),
        });
    }
    Ok(planned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
        match r {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        }
    }

    /// Run `f` in a forked child (Landlock cannot be undone) and return what
    /// it reported through a pipe. The child never returns into the harness.
    fn in_child(f: impl FnOnce() -> String) -> Result<String, Box<dyn std::error::Error>> {
        let (r, w) = nix::unistd::pipe()?;
        // SAFETY: the child only runs `f` (glibc keeps malloc usable across
        // fork), writes to the pipe and leaves with `_exit`; it never returns
        // into the multi-threaded test harness.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(r);
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                    .unwrap_or_else(|_| "child panicked".into());
                let mut w = std::fs::File::from(w);
                let _ = w.write_all(out.as_bytes());
                drop(w);
                // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut out = String::new();
                std::fs::File::from(r).read_to_string(&mut out)?;
                let status = waitpid(child, None)?;
                assert_eq!(status, WaitStatus::Exited(child, 0));
                Ok(out)
            }
        }
    }

    fn full() -> LandlockConfig {
        LandlockConfig {
            min_abi: 1,
            deny_tcp: true,
            scope: true,
        }
    }

    fn abi_here() -> u8 {
        kernel_abi().unwrap_or(0)
    }

    #[test]
    fn plan_follows_the_abi() {
        let c = full();
        assert_eq!(plan(0, &c).status, Enforcement::NotEnforced);
        let p3 = plan(3, &c);
        assert!(p3.fs && !p3.net && !p3.scoped && p3.status == Enforcement::PartiallyEnforced);
        let p4 = plan(4, &c);
        assert!(p4.net && !p4.scoped);
        let p6 = plan(6, &c);
        assert!(p6.fs && p6.net && p6.scoped && p6.status == Enforcement::FullyEnforced);
        let fs_only = LandlockConfig {
            min_abi: 1,
            deny_tcp: false,
            scope: false,
        };
        assert_eq!(plan(5, &fs_only).status, Enforcement::FullyEnforced);
        assert_eq!(plan(4, &fs_only).status, Enforcement::PartiallyEnforced);
    }

    #[test]
    fn status_converts_to_the_outcome_report_with_serde_names() -> TestResult {
        let st = plan(7, &full());
        let report = crate::outcome::LandlockReport::from(st);
        assert_eq!(report.status, "fully_enforced");
        assert_eq!(serde_json::to_string(&st.status)?, "\"fully_enforced\"");
        let cfg = LandlockConfig::from(&crate::spec::LandlockPolicy::default());
        assert_eq!(cfg, full());
        Ok(())
    }

    #[test]
    fn rights_are_w_xor_x_and_file_safe() {
        let rw = rights(Kind::ReadWrite, ABI::V7, true);
        assert!(!rw.contains(AccessFs::Execute));
        assert!(rw.contains(AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate));
        let ro = rights(Kind::ReadOnly, ABI::V7, true);
        assert_eq!(ro, AccessFs::ReadFile | AccessFs::ReadDir);
        let rx_file = rights(Kind::ReadExec, ABI::V7, false);
        assert_eq!(rx_file, AccessFs::Execute | AccessFs::ReadFile);
        assert!(!rights(Kind::ReadWrite, ABI::V7, false).contains(AccessFs::MakeDir));
    }

    #[test]
    fn min_abi_above_the_kernel_is_refused_before_anything_is_enforced() -> TestResult {
        let out = in_child(|| {
            let cfg = LandlockConfig {
                min_abi: 99,
                ..full()
            };
            let res = restrict_self(&LandlockRules::default(), &cfg);
            // Still unrestricted: / is readable.
            let readable = std::fs::read_dir("/").is_ok();
            format!(
                "{} | readable={readable}",
                res.map_or_else(|e| e.to_string(), |s| format!("{s:?}"))
            )
        })?;
        let abi = abi_here();
        assert_eq!(
            out,
            format!("landlock ABI {abi} is below the required minimum 99 | readable=true")
        );
        Ok(())
    }

    #[test]
    fn filesystem_rules_deny_unlisted_and_grant_by_list() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (ro, rw, secret) = (
            dir.path().join("ro"),
            dir.path().join("rw"),
            dir.path().join("secret"),
        );
        for d in [&ro, &rw, &secret] {
            std::fs::create_dir(d)?;
            std::fs::write(d.join("f"), "x")?;
        }
        let ro_file = dir.path().join("single-file");
        std::fs::write(&ro_file, "y")?;
        let rules = LandlockRules {
            read_exec: vec![],
            read_only: vec![ro.clone(), ro_file.clone()],
            read_write: vec![rw.clone(), PathBuf::from("/dev/null")],
        };
        let out = in_child(move || {
            let st = match restrict_self(&rules, &full()) {
                Ok(s) => s,
                Err(e) => return format!("error: {e}"),
            };
            let open_w = |p: &Path| std::fs::OpenOptions::new().write(true).open(p);
            let results = [
                errno_of(std::fs::read(secret.join("f"))),
                errno_of(std::fs::read_dir(&secret)),
                errno_of(std::fs::read(ro.join("f"))),
                errno_of(open_w(&ro.join("f"))),
                errno_of(std::fs::write(ro.join("new"), "z")),
                errno_of(std::fs::read(&ro_file)),
                errno_of(std::fs::write(rw.join("new"), "z")),
                errno_of(std::fs::read(rw.join("new"))),
                errno_of(open_w(Path::new("/dev/null"))),
                errno_of(std::fs::read("/etc/hostname")),
            ];
            format!("{:?} {results:?}", st.status)
        })?;
        let e = libc::EACCES;
        assert_eq!(
            out,
            format!("FullyEnforced [{e}, {e}, 0, {e}, {e}, 0, 0, 0, 0, {e}]")
        );
        Ok(())
    }

    #[test]
    fn tcp_connect_to_a_loopback_listener_is_denied() -> TestResult {
        if abi_here() < NET_ABI {
            eprintln!("SKIP tcp_connect_to_a_loopback_listener_is_denied: landlock ABI < 4");
            return Ok(());
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let out = in_child(move || {
            let before = errno_of(TcpStream::connect(addr));
            let st = restrict_self(&LandlockRules::default(), &full());
            let after = errno_of(TcpStream::connect(addr));
            let bind = errno_of(TcpListener::bind("127.0.0.1:0"));
            format!("{before} {:?} {after} {bind}", st.map(|s| s.net))
        })?;
        // EACCES for both connect and bind; the control connect succeeded.
        assert_eq!(out, format!("0 Ok(true) {e} {e}", e = libc::EACCES));
        Ok(())
    }

    #[test]
    fn abstract_unix_socket_of_the_host_cannot_be_connected() -> TestResult {
        if abi_here() < SCOPE_ABI {
            eprintln!(
                "SKIP abstract_unix_socket_of_the_host_cannot_be_connected: landlock ABI < 6"
            );
            return Ok(());
        }
        let name = format!("hutch-test-landlock-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let _listener = UnixListener::bind_addr(&addr)?;
        let out = in_child(move || {
            let before = errno_of(UnixStream::connect_addr(&addr));
            let st = restrict_self(&LandlockRules::default(), &full());
            let after = errno_of(UnixStream::connect_addr(&addr));
            format!("{before} {:?} {after}", st.map(|s| s.scoped))
        })?;
        assert_eq!(out, format!("0 Ok(true) {}", libc::EPERM));
        Ok(())
    }

    #[test]
    fn signals_to_processes_outside_the_domain_are_denied() -> TestResult {
        if abi_here() < SCOPE_ABI {
            eprintln!("SKIP signals_to_processes_outside_the_domain_are_denied: landlock ABI < 6");
            return Ok(());
        }
        let out = in_child(|| {
            let parent = nix::unistd::getppid();
            let me = nix::unistd::getpid();
            // Signal 0: the permission check without delivering anything.
            let before = nix::sys::signal::kill(parent, None).map_or_else(|e| e as i32, |()| 0);
            let st = restrict_self(&LandlockRules::default(), &full());
            let after = nix::sys::signal::kill(parent, None).map_or_else(|e| e as i32, |()| 0);
            let own = nix::sys::signal::kill(me, None).map_or_else(|e| e as i32, |()| 0);
            format!("{before} {:?} {after} {own}", st.map(|s| s.scoped))
        })?;
        assert_eq!(out, format!("0 Ok(true) {} 0", libc::EPERM));
        Ok(())
    }

    #[test]
    fn a_missing_listed_path_is_an_error_naming_it() -> TestResult {
        let out = in_child(|| {
            let rules = LandlockRules {
                read_only: vec![PathBuf::from("/nonexistent-hutch-path")],
                ..LandlockRules::default()
            };
            match restrict_self(&rules, &full()) {
                Ok(s) => format!("unexpected {s:?}"),
                Err(e) => e.to_string(),
            }
        })?;
        assert_eq!(
            out,
            "landlock rule read_only /nonexistent-hutch-path: ENOENT"
        );
        Ok(())
    }

    #[test]
    fn status_reports_the_kernel_abi() -> TestResult {
        let out = in_child(|| format!("{:?}", restrict_self(&LandlockRules::default(), &full())))?;
        let abi = abi_here();
        assert!(
            out.starts_with(&format!("Ok(LandlockStatus {{ abi: {abi}, fs: true")),
            "{out}"
        );
        Ok(())
    }
}
