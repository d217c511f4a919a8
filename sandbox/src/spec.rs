//! `SandboxSpec`: everything the sandbox needs to start one plugin process.
//!
//! Plain serde data. The daemon builds it from an installed plugin's manifest,
//! the admin's approvals and the daemon config; `hutchd try` builds it from a
//! plugin directory. The sandbox trusts it as admin-approved policy, but still
//! resolves every host path itself and refuses ones that escape (see
//! [`crate::mounts`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Host path prefixes that may never be bound into a sandbox, whatever a spec
/// says. Checked on the *resolved* path, so a symlink cannot point around it.
pub const FORBIDDEN_PREFIXES: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/lib/hutch"];

/// Where a plugin's files are, how it is started and under which policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxSpec {
    /// A short label (plugin id plus instance) used in cgroup names, logs and
    /// denial reports. `[A-Za-z0-9._-]`, at most 200 characters.
    pub name: String,
    /// Host directory bound read-only at `/plugin`.
    pub plugin_dir: PathBuf,
    /// Program to execute, as seen inside the sandbox (`/plugin/bin/x` or a
    /// host path under a bound tree such as `/usr/bin/python3`).
    pub exec: PathBuf,
    /// Arguments after `argv[0]` (which is `exec`).
    pub args: Vec<String>,
    /// The complete environment of the plugin (the daemon adds `HUTCH_*`,
    /// `PATH`, `HOME`, `LANG`).
    pub env: Vec<(String, String)>,
    /// Extra host paths bound read-only at the same path inside, approved by
    /// an admin.
    pub read_only: Vec<PathBuf>,
    /// Host directory bound read-write at `/data`, if the plugin has one.
    pub data_dir: Option<PathBuf>,
    /// Host path of the plugin's API socket, bound at [`API_SOCKET_PATH`].
    pub api_socket: Option<PathBuf>,
    /// Unprivileged uid the plugin runs as (never 0).
    pub uid: u32,
    /// Unprivileged gid the plugin runs as (never 0).
    pub gid: u32,
    /// Hostname inside the UTS namespace.
    pub hostname: String,
    /// Resource limits.
    pub limits: Limits,
    /// cgroup placement; `None` runs without a cgroup (tests and benches only:
    /// no memory, pids or CPU limit, no OOM report).
    pub cgroup: Option<CgroupPlacement>,
    /// Seccomp policy.
    pub seccomp: SeccompPolicy,
    /// Landlock policy.
    pub landlock: LandlockPolicy,
    /// Also create a user namespace mapping `uid`/`gid` to themselves
    /// (optional hardening; not needed when hutchd is root).
    pub user_namespace: bool,
    /// Grace period between SIGTERM and the cgroup kill when stopping.
    pub stop_grace: Duration,
}

/// In-sandbox path of the API socket (SPEC §5).
pub const API_SOCKET_PATH: &str = "/run/hutch/api.sock";

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Limits {
    /// Memory limit in bytes (cgroup).
    pub memory_max: Option<u64>,
    /// Swap limit in bytes; `Some(0)` means no swap.
    pub swap_max: Option<u64>,
    /// CPU limit in CPUs (1.0 = one full CPU).
    pub cpu_max: Option<f64>,
    /// Maximum number of tasks (cgroup pids controller).
    pub pids_max: Option<u64>,
    /// Size of the private `/tmp` in bytes.
    pub tmp_size: u64,
    /// Wall-clock limit; on expiry the sandbox is stopped (SIGTERM, grace, kill).
    pub wall_timeout: Option<Duration>,
}

/// Which cgroup the sandbox goes into.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CgroupPlacement {
    /// Hutch's own subtree, relative to each hierarchy root (default `hutch`).
    pub parent: String,
    /// Root of the cgroup filesystem (default `/sys/fs/cgroup`).
    pub root: PathBuf,
    /// Where `parent` goes: at the root of each hierarchy (the default,
    /// right for `hutchd try` from a login shell), under the caller's own
    /// cgroup, or `Auto` (own cgroup on pure v2, where systemd's
    /// `Delegate=yes` hands the daemon its subtree; root on v1 and hybrid).
    pub base: crate::cgroup::Placement,
}

impl Default for CgroupPlacement {
    fn default() -> Self {
        Self {
            parent: "hutch".into(),
            root: PathBuf::from("/sys/fs/cgroup"),
            base: crate::cgroup::Placement::HierarchyRoot,
        }
    }
}

/// Seccomp settings of one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SeccompPolicy {
    /// Admin-approved syscalls added to the default allowlist.
    pub additions: Vec<String>,
    /// Report denials through seccomp user notification (falls back to plain
    /// EPERM where the kernel lacks it).
    pub notify: bool,
}

/// Landlock settings of one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LandlockPolicy {
    /// Refuse to start below this Landlock ABI (0 = allow running without).
    pub min_abi: u8,
    /// Deny TCP bind/connect (ABI >= 4).
    pub deny_tcp: bool,
    /// Scope abstract Unix sockets and signals (ABI >= 6).
    pub scope: bool,
}

impl Default for LandlockPolicy {
    fn default() -> Self {
        Self {
            min_abi: 1,
            deny_tcp: true,
            scope: true,
        }
    }
}

/// Default `/tmp` size when a manifest does not say (64 MiB).
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;

impl SandboxSpec {
    /// A spec with production defaults for the given program: no extra paths,
    /// default limits, seccomp with notification, Landlock ABI >= 1, a cgroup
    /// under `hutch`.
    pub fn new(name: &str, plugin_dir: PathBuf, exec: PathBuf, uid: u32, gid: u32) -> Self {
        Self {
            name: name.to_owned(),
            plugin_dir,
            exec,
            args: Vec::new(),
            env: default_env(),
            read_only: Vec::new(),
            data_dir: None,
            api_socket: None,
            uid,
            gid,
            hostname: "hutch".into(),
            limits: Limits {
                tmp_size: DEFAULT_TMP_SIZE,
                ..Limits::default()
            },
            cgroup: Some(CgroupPlacement::default()),
            seccomp: SeccompPolicy {
                additions: Vec::new(),
                notify: true,
            },
            landlock: LandlockPolicy::default(),
            user_namespace: false,
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// The environment every plugin gets (SPEC §5), before `HUTCH_*` and the
/// manifest's `env`.
pub fn default_env() -> Vec<(String, String)> {
    vec![
        ("HOME".into(), "/tmp".into()),
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}
