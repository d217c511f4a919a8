//! What this host's kernel can do for confinement (`hutchd check-host`).
//!
//! Every probe asks the kernel directly (a syscall, or a forked child that
//! tries the operation) rather than trusting version numbers. Roots (`/proc`,
//! the cgroup mount files) are parameters so the parsing runs against samples
//! in unit tests.
//!
//! The probes in order:
//! 1. Landlock: `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`
//!    returns the ABI, or fails with `EOPNOTSUPP` (built but disabled at
//!    boot) or `ENOSYS` (not built).
//! 2. seccomp: `prctl(PR_GET_SECCOMP)` and `/proc/sys/kernel/seccomp/actions_avail`
//!    (filter mode and `user_notif`, which denial reporting needs).
//! 3. Namespaces: a forked child calls `unshare(2)` with one flag and exits
//!    with 0 or the errno; nothing leaks into this process.
//! 4. cgroups: `/proc/self/mountinfo` gives the v1 hierarchies and the
//!    cgroup2 mount; `cgroup.controllers` of the v2 mount says which
//!    controllers it has. The layout is v1, v2 or hybrid.
//! 5. x32: the x32 `getpid` (`__X32_SYSCALL_BIT | 39`) returns `ENOSYS` when
//!    the kernel was built without x32 support or boots with it disabled.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use serde::{Deserialize, Serialize};

/// Controllers Hutch needs for its resource limits.
pub const REQUIRED_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The namespaces a sandbox uses (and `user`, which is optional).
pub const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("mount", CloneFlags::CLONE_NEWNS),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("user", CloneFlags::CLONE_NEWUSER),
];

/// Errors while probing the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file under `/proc` or `/sys` could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `fork` for a namespace probe failed.
    #[error("fork for the {namespace} namespace probe: {errno}")]
    Fork {
        /// The namespace being probed.
        namespace: &'static str,
        /// The errno.
        errno: Errno,
    },
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// Only v1 hierarchies (no cgroup2 mount).
    V1,
    /// Only the unified cgroup2 hierarchy (v1 at most for named hierarchies).
    V2,
    /// v1 controller hierarchies and a cgroup2 mount side by side.
    Hybrid,
    /// No cgroup filesystem mounted at all.
    None,
}

/// One mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Hierarchy {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Its controllers (`memory`, `cpu`, …); empty for named hierarchies.
    pub controllers: Vec<String>,
    /// Its `name=` option, e.g. `systemd`, if any.
    pub name: Option<String>,
}

/// Where a controller is usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerPlace {
    /// On the v1 hierarchy mounted at this path.
    V1(PathBuf),
    /// On the cgroup2 hierarchy.
    V2,
}

/// The cgroup mounts of a host, as read from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMounts {
    /// v1 hierarchies, in mountinfo order.
    pub v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount point, if any.
    pub v2: Option<PathBuf>,
}

impl CgroupMounts {
    /// The layout these mounts form. Named-only v1 hierarchies (such as
    /// `name=systemd`) do not make a layout hybrid: they carry no controller.
    pub fn layout(&self) -> CgroupLayout {
        let v1_controllers = self.v1.iter().any(|h| !h.controllers.is_empty());
        match (v1_controllers, self.v2.is_some()) {
            (true, true) => CgroupLayout::Hybrid,
            (true, false) => CgroupLayout::V1,
            (false, true) => CgroupLayout::V2,
            (false, false) => CgroupLayout::None,
        }
    }

    /// The v1 hierarchy carrying `controller`, if any.
    pub fn v1_hierarchy(&self, controller: &str) -> Option<&V1Hierarchy> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }
}

/// Parses `/proc/self/mountinfo` text into the cgroup mounts it lists.
///
/// Lines that are not cgroup mounts, or that are malformed, are skipped: the
/// kernel writes this file, and a line we do not understand is not a cgroup
/// mount we can use.
pub fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts {
        v1: Vec::new(),
        v2: None,
    };
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(fstype)) = (left.get(4), right.first()) else {
            continue;
        };
        let mount_point = unescape_mountinfo(mount_point);
        match *fstype {
            "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(mount_point),
            "cgroup" => {
                let super_opts = right.get(2).copied().unwrap_or("");
                let mut controllers = Vec::new();
                let mut name = None;
                for opt in super_opts.split(',') {
                    match opt {
                        "rw" | "ro" | "" | "noprefix" | "clone_children" | "xattr" => {}
                        o if o.starts_with("release_agent=") => {}
                        o if o.starts_with("name=") => name = Some(o["name=".len()..].to_owned()),
                        o => controllers.push(o.to_owned()),
                    }
                }
                mounts.v1.push(V1Hierarchy {
                    mount_point,
                    controllers,
                    name,
                });
            }
            _ => {}
        }
    }
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on): a
/// backslash and exactly three octal digits; the bytes as they are, UTF-8 or
/// not.
pub(crate) fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The cgroup picture of a host: mounts, layout and where each controller
/// Hutch needs is usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupReport {
    /// v1, v2, hybrid or none.
    pub layout: CgroupLayout,
    /// The mounts behind it.
    pub mounts: CgroupMounts,
    /// Controllers of the cgroup2 mount (its `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// Each of `memory`, `pids`, `cpu` (and `cpuacct`, `freezer`) and where it
    /// is usable; absent when nowhere.
    pub controllers: BTreeMap<String, ControllerPlace>,
}

impl CgroupReport {
    /// Builds the report from mountinfo text and a reader for the v2 mount's
    /// `cgroup.controllers` (a parameter so tests need no real mount).
    pub fn from_mountinfo(
        mountinfo: &str,
        read_v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Self {
        let mounts = parse_mountinfo(mountinfo);
        let v2_controllers: Vec<String> = mounts
            .v2
            .as_deref()
            .and_then(|p| read_v2_controllers(&p.join("cgroup.controllers")))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut controllers = BTreeMap::new();
        for c in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
            if let Some(h) = mounts.v1_hierarchy(c) {
                controllers.insert(c.to_owned(), ControllerPlace::V1(h.mount_point.clone()));
            } else if v2_controllers.iter().any(|v| v == c)
                // cpuacct and freezer are built into cgroup2 (cpu.stat, cgroup.freeze).
                || (mounts.v2.is_some() && (c == "cpuacct" || c == "freezer"))
            {
                controllers.insert(c.to_owned(), ControllerPlace::V2);
            }
        }
        CgroupReport {
            layout: mounts.layout(),
            mounts,
            v2_controllers,
            controllers,
        }
    }

    /// Reads `<proc_root>/self/mountinfo` and the v2 controllers file.
    ///
    /// # Errors
    /// [`HostError::Read`] when mountinfo cannot be read.
    pub fn detect(proc_root: &Path) -> Result<Self, HostError> {
        let path = proc_root.join("self/mountinfo");
        let text = fs::read_to_string(&path).map_err(|source| HostError::Read { path, source })?;
        Ok(Self::from_mountinfo(&text, |p| fs::read_to_string(p).ok()))
    }

    /// The required controllers that are usable nowhere.
    pub fn missing_controllers(&self) -> Vec<&'static str> {
        REQUIRED_CONTROLLERS
            .into_iter()
            .filter(|c| !self.controllers.contains_key(*c))
            .collect()
    }
}

/// seccomp support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompReport {
    /// Filter mode (`SECCOMP_MODE_FILTER`) is available.
    pub filter: bool,
    /// `SECCOMP_RET_USER_NOTIF` is available (denials reported by name).
    pub user_notif: bool,
    /// The kernel's `actions_avail` list.
    pub actions: Vec<String>,
}

/// Probes seccomp: `prctl(PR_GET_SECCOMP)` and the kernel's action list.
pub fn probe_seccomp(proc_root: &Path) -> SeccompReport {
    let mode_ok = nix::sys::prctl::get_no_new_privs().is_ok() && prctl_get_seccomp().is_ok();
    let actions: Vec<String> =
        fs::read_to_string(proc_root.join("sys/kernel/seccomp/actions_avail"))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
    SeccompReport {
        filter: mode_ok && actions.iter().any(|a| a == "errno"),
        user_notif: actions.iter().any(|a| a == "user_notif"),
        actions,
    }
}

fn prctl_get_seccomp() -> Result<i32, Errno> {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reads the
    // calling thread's seccomp mode.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    Errno::result(rc)
}

/// The Landlock ABI the kernel offers: `Ok(abi)`, or the errno explaining why
/// there is none (`EOPNOTSUPP`: built but disabled at boot; `ENOSYS`: absent).
pub fn probe_landlock_abi() -> Result<u32, Errno> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attr, size 0 and the VERSION flag the kernel reads
    // no memory and only returns the ABI number (no fd is created).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    Errno::result(rc).map(|abi| u32::try_from(abi).unwrap_or(0))
}

/// Whether the x32 syscall ABI is reachable (it should not be for plugins;
/// the seccomp allowlist closes it either way).
pub fn probe_x32() -> bool {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    // SAFETY: x32 getpid takes no arguments, touches no memory and cannot
    // fail other than with ENOSYS when x32 is disabled.
    let rc = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
    rc >= 0
}

/// Result of one namespace probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// `mount`, `pid`, …
    pub name: String,
    /// `unshare` succeeded in a child.
    pub available: bool,
    /// The errno when it did not.
    pub error: Option<String>,
}

/// Tries `unshare(flag)` in a forked child for each namespace type.
///
/// # Errors
/// [`HostError::Fork`] when a probe child cannot be forked.
pub fn probe_namespaces() -> Result<Vec<NamespaceReport>, HostError> {
    NAMESPACES
        .iter()
        .map(|(name, flag)| {
            let result =
                in_child(|| nix::sched::unshare(*flag)).map_err(|errno| HostError::Fork {
                    namespace: name,
                    errno,
                })?;
            Ok(NamespaceReport {
                name: (*name).to_owned(),
                available: result.is_ok(),
                error: result.err().map(|e| e.to_string()),
            })
        })
        .collect()
}

/// Runs `op` in a forked child and returns its result through the exit code.
/// `op` must be async-signal-safe (this process may have other threads).
fn in_child(op: impl FnOnce() -> Result<(), Errno>) -> Result<Result<(), Errno>, Errno> {
    // SAFETY: the child only runs `op` (a single syscall for every caller in
    // this module) and `_exit`, both async-signal-safe, so forking from a
    // multi-threaded process cannot deadlock it.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = match op() {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: _exit ends the child without running atexit handlers
            // or destructors that belong to the parent's state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(Ok(())),
                Ok(WaitStatus::Exited(_, code)) => return Ok(Err(Errno::from_raw(code))),
                Ok(_) => return Ok(Err(Errno::ECHILD)),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        },
    }
}

/// How much protection Hutch can give on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    /// Every layer, including Landlock network rules and scoping (ABI ≥ 6)
    /// and denial reporting.
    Full,
    /// Every mandatory layer at or above the configured minimum, but some
    /// best-effort feature is missing (listed in `gaps`).
    Reduced,
    /// A mandatory layer is missing or below the minimum: Hutch refuses to
    /// start plugins.
    Insufficient,
}

/// The minimum an admin requires (from `hutchd.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minimum {
    /// Lowest acceptable Landlock ABI (0 = Landlock not required).
    pub landlock_abi: u32,
    /// Require seccomp user notification (named denial reports).
    pub seccomp_notify: bool,
}

impl Default for Minimum {
    fn default() -> Self {
        Minimum {
            landlock_abi: 1,
            seccomp_notify: false,
        }
    }
}

/// Everything `hutchd check-host` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostReport {
    /// `uname -r`.
    pub kernel: String,
    /// Landlock ABI, `None` when unavailable.
    pub landlock_abi: Option<u32>,
    /// Why Landlock is unavailable, when it is.
    pub landlock_error: Option<String>,
    /// seccomp support.
    pub seccomp: SeccompReport,
    /// Each namespace type.
    pub namespaces: Vec<NamespaceReport>,
    /// cgroup layout and controllers.
    pub cgroups: CgroupReport,
    /// The x32 syscall ABI is enabled in this kernel.
    pub x32_enabled: bool,
    /// The verdict against the minimum.
    pub protection: Protection,
    /// Mandatory layers missing or below the minimum.
    pub failures: Vec<String>,
    /// Best-effort features missing.
    pub gaps: Vec<String>,
}

impl HostReport {
    /// Runs every probe against this host.
    ///
    /// # Errors
    /// When `/proc/self/mountinfo` cannot be read or a probe cannot fork.
    pub fn probe(proc_root: &Path, minimum: Minimum) -> Result<Self, HostError> {
        let landlock = probe_landlock_abi();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut report = HostReport {
            kernel,
            landlock_abi: landlock.ok(),
            landlock_error: landlock.err().map(|e| e.to_string()),
            seccomp: probe_seccomp(proc_root),
            namespaces: probe_namespaces()?,
            cgroups: CgroupReport::detect(proc_root)?,
            x32_enabled: probe_x32(),
            protection: Protection::Insufficient,
            failures: Vec::new(),
            gaps: Vec::new(),
        };
        report.judge(minimum);
        Ok(report)
    }

    /// Fills `protection`, `failures` and `gaps` from the probe results.
    pub fn judge(&mut self, minimum: Minimum) {
        let mut failures = Vec::new();
        let mut gaps = Vec::new();
        let abi = self.landlock_abi.unwrap_or(0);
        if abi < minimum.landlock_abi {
            failures.push(format!(
                "landlock ABI {abi} is below the configured minimum {}",
                minimum.landlock_abi
            ));
        } else if abi < 6 {
            gaps.push(format!(
                "landlock ABI {abi}: no TCP rules (needs 4) or abstract-socket and signal scoping (needs 6)"
            ));
        }
        if !self.seccomp.filter {
            failures.push("seccomp filter mode is unavailable".to_owned());
        }
        if !self.seccomp.user_notif {
            let msg = "seccomp user notification is unavailable: denials are plain EPERM, not reported by name";
            if minimum.seccomp_notify {
                failures.push(msg.to_owned());
            } else {
                gaps.push(msg.to_owned());
            }
        }
        for ns in &self.namespaces {
            if !ns.available && ns.name != "user" {
                failures.push(format!(
                    "{} namespace unavailable: {}",
                    ns.name,
                    ns.error.as_deref().unwrap_or("unknown")
                ));
            }
        }
        for c in self.cgroups.missing_controllers() {
            failures.push(format!("cgroup controller {c} is not usable"));
        }
        self.protection = if !failures.is_empty() {
            Protection::Insufficient
        } else if !gaps.is_empty() {
            Protection::Reduced
        } else {
            Protection::Full
        };
        self.failures = failures;
        self.gaps = gaps;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    // A pure-v2 systemd host (Debian 12 / Ubuntu 22.04 default).
    const V2_ONLY: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
29 25 0:26 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

    // An old v1-only host (CentOS 7 style), cpu and cpuacct co-mounted.
    const V1_ONLY: &str = "\
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
27 24 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
28 24 0:24 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
29 24 0:25 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,pids
30 24 0:26 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,freezer
";

    #[test]
    fn hybrid_layout_puts_controllers_on_v1() {
        let r = CgroupReport::from_mountinfo(HYBRID, |_| Some("hugetlb\n".to_owned()));
        assert_eq!(r.layout, CgroupLayout::Hybrid);
        assert_eq!(
            r.controllers.get("memory"),
            Some(&ControllerPlace::V1("/sys/fs/cgroup/memory".into()))
        );
        assert_eq!(r.v2_controllers, vec!["hugetlb".to_owned()]);
        assert!(r.missing_controllers().is_empty());
        let systemd = r.mounts.v1.iter().find(|h| h.name.is_some()).unwrap();
        assert!(systemd.controllers.is_empty());
    }

    #[test]
    fn v2_only_layout_reads_controllers_file() {
        let r = CgroupReport::from_mountinfo(V2_ONLY, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/cgroup.controllers"));
            Some("cpuset cpu io memory hugetlb pids rdma misc\n".to_owned())
        });
        assert_eq!(r.layout, CgroupLayout::V2);
        assert_eq!(r.mounts.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        for c in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
            assert_eq!(r.controllers.get(c), Some(&ControllerPlace::V2), "{c}");
        }
        assert!(r.missing_controllers().is_empty());
    }

    #[test]
    fn v2_without_delegated_controllers_is_missing_them() {
        let r = CgroupReport::from_mountinfo(V2_ONLY, |_| Some("cpu\n".to_owned()));
        assert_eq!(r.missing_controllers(), vec!["memory", "pids"]);
    }

    #[test]
    fn v1_only_layout_handles_comounted_controllers() {
        let r = CgroupReport::from_mountinfo(V1_ONLY, |_| None);
        assert_eq!(r.layout, CgroupLayout::V1);
        let cpu = Path::new("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(
            r.controllers.get("cpu"),
            Some(&ControllerPlace::V1(cpu.into()))
        );
        assert_eq!(
            r.controllers.get("cpuacct"),
            Some(&ControllerPlace::V1(cpu.into()))
        );
        assert_eq!(r.mounts.v1.len(), 5);
        assert_eq!(r.mounts.v1[0].name.as_deref(), Some("systemd"));
    }

    #[test]
    fn named_only_v1_does_not_make_v2_hybrid() {
        let text = format!(
            "{V2_ONLY}40 31 0:37 / /run/systemd/legacy rw - cgroup cgroup rw,name=systemd\n"
        );
        let r = CgroupReport::from_mountinfo(&text, |_| Some("memory pids cpu".to_owned()));
        assert_eq!(r.layout, CgroupLayout::V2);
    }

    #[test]
    fn no_cgroups_and_garbage_lines() {
        let r = CgroupReport::from_mountinfo("garbage\n1 2 3\n - \n", |_| None);
        assert_eq!(r.layout, CgroupLayout::None);
        assert_eq!(r.missing_controllers(), vec!["memory", "pids", "cpu"]);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let text = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/mnt/with space")));
    }

    fn report_with(abi: Option<u32>, notif: bool) -> HostReport {
        let mut r = HostReport {
            kernel: "test".into(),
            landlock_abi: abi,
            landlock_error: None,
            seccomp: SeccompReport {
                filter: true,
                user_notif: notif,
                actions: vec![],
            },
            namespaces: vec![],
            cgroups: CgroupReport::from_mountinfo(HYBRID, |_| None),
            x32_enabled: false,
            protection: Protection::Insufficient,
            failures: vec![],
            gaps: vec![],
        };
        r.judge(Minimum {
            landlock_abi: 3,
            seccomp_notify: false,
        });
        r
    }

    #[test]
    fn judge_grades_against_the_minimum() {
        assert_eq!(report_with(Some(7), true).protection, Protection::Full);
        assert_eq!(report_with(Some(7), false).protection, Protection::Reduced);
        assert_eq!(report_with(Some(4), true).protection, Protection::Reduced);
        let low = report_with(Some(2), true);
        assert_eq!(low.protection, Protection::Insufficient);
        assert!(low.failures[0].contains("below the configured minimum 3"));
        assert_eq!(report_with(None, true).protection, Protection::Insufficient);
    }

    #[test]
    fn probes_run_on_this_host() {
        // Real probes; what they find depends on the host, but they must not
        // fail and must agree with /proc.
        let ns = probe_namespaces().unwrap();
        assert_eq!(ns.len(), NAMESPACES.len());
        // As root, a namespace type the kernel has (its /proc/self/ns entry
        // exists) must probe available, and one it lacks must not.
        if nix::unistd::geteuid().is_root() {
            for n in &ns {
                let file = if n.name == "mount" {
                    "mnt"
                } else {
                    n.name.as_str()
                };
                let present = Path::new("/proc/self/ns").join(file).exists();
                assert_eq!(n.available, present, "{}: {:?}", n.name, n.error);
            }
        }
        let r = HostReport::probe(Path::new("/proc"), Minimum::default()).unwrap();
        assert!(!r.kernel.is_empty());
        // The cgroup report agrees with the kernel's own list of hierarchies
        let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap();
        let has_v2_line = cgroups.lines().any(|l| l.starts_with("0::"));
        // (A mounted cgroup2 always shows as a `0::` line; the converse need
        // not hold when it is mounted only in another mount namespace.)
        assert!(r.cgroups.mounts.v2.is_none() || has_v2_line, "{cgroups}");
    }
}
