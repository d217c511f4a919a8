//! cgroups for sandboxes: memory (with swap limited), pids and cpu limits,
//! accounting (OOM kills, pids-limit hits, peak memory, CPU time), whole-group
//! kill, and removal. cgroup v2 and v1 (including hybrid hosts) are supported.
//!
//! **Owns**: every directory under Hutch's own parent cgroup (default
//! `hutch`) in the hierarchies it uses; nothing else is ever created, written
//! or removed. The `name=systemd` v1 hierarchy is never touched.
//!
//! Layout (see `docs/cgroups.md`):
//! - v2: `<base>/<parent>/<name>`, where `<base>` is the daemon's own cgroup
//!   (delegated subtree) by default. If `<base>` holds processes and the
//!   controllers are not yet enabled for its children, the daemon's
//!   processes are first moved into the leaf `<base>/<daemon_leaf>` ("no
//!   internal processes" rule).
//! - v1: `<mount of each controller>/<parent>/<name>` for memory, pids,
//!   cpuacct, freezer, and cpu when a CPU limit is set.
//!
//! File I/O on controllers goes through `cgroups-rs` (its `fs` module) with a
//! hierarchy of our own (`hierarchy.rs`) whose roots are parameters, so the
//! logic runs against temp dirs in unit tests.

mod hierarchy;
pub mod layout;
pub mod live;
pub mod reuse;
#[cfg(test)]
mod tests;

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::Cgroup;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller as _, MaxValue};
use cgroups_rs::{CgroupPid, FreezerState};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use hierarchy::HutchHierarchy;
pub use layout::{CgroupHierarchies, Controller};
pub use reuse::StatsBaseline;

/// CFS period used for `cpu_max` (100 ms, the kernel default).
const CPU_PERIOD_US: u64 = 100_000;

/// Errors of the cgroup module: which operation on which path, and the errno.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file operation on a cgroup file or directory failed.
    #[error("{op} {}: {errno:?}", path.display())]
    Io {
        /// What was attempted ("mkdir", "write memory.max", ...).
        op: String,
        /// The file or directory.
        path: PathBuf,
        /// The errno (EIO when the error carried none).
        errno: Errno,
    },
    /// No usable hierarchy, or the own-cgroup lookup failed.
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    /// A controller Hutch needs is not available where it must be enabled.
    #[error("controller {controller} not available in {}", path.display())]
    ControllerMissing {
        /// The controller name.
        controller: String,
        /// The `cgroup.controllers` file that lacks it.
        path: PathBuf,
    },
    /// A cgroup or parent name is not a safe path component.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A process is not in a cgroup Hutch created for a sandbox (directly
    /// under the configured parent, named for that sandbox or a pool slot):
    /// live limits are never written there.
    #[error("process {pid} is not in a Hutch sandbox cgroup ({cgroup}): {reason}")]
    NotSandboxCgroup {
        /// The host pid looked up.
        pid: i32,
        /// Its cgroup path in the controller's hierarchy (or what was read).
        cgroup: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A limit value cannot be applied.
    #[error("invalid cgroup limit {what}: {reason}")]
    InvalidLimit {
        /// Which limit.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The cgroup already exists (a collision or a leftover: run `sweep_stale`).
    #[error("cgroup {} already exists", path.display())]
    Exists {
        /// The existing directory.
        path: PathBuf,
    },
    /// Processes remain in the cgroup after the kill timeout.
    #[error("cgroup {} still has processes {pids:?} after {waited_ms} ms", path.display())]
    NotEmpty {
        /// The cgroup directory.
        path: PathBuf,
        /// Remaining pids.
        pids: Vec<i32>,
        /// How long we waited.
        waited_ms: u128,
    },
}

/// Build an [`CgroupError::Io`] from an io error.
pub(crate) fn io_err(op: impl Into<String>, path: &Path, e: &std::io::Error) -> CgroupError {
    CgroupError::Io {
        op: op.into(),
        path: path.to_owned(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Map a cgroups-rs error to [`CgroupError::Io`], keeping the errno of its cause.
fn crate_err(op: impl Into<String>, path: &Path, e: &cgroups_rs::fs::error::Error) -> CgroupError {
    let mut errno = Errno::EIO;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            errno = Errno::from_raw(io.raw_os_error().unwrap_or(libc::EIO));
            break;
        }
        src = s.source();
    }
    CgroupError::Io {
        op: format!("{} ({})", op.into(), e.kind()),
        path: path.to_owned(),
        errno,
    }
}

/// Resource limits of one sandbox. `None` leaves the kernel default (no limit).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CgroupLimits {
    /// Memory limit in bytes (`memory.max` / `memory.limit_in_bytes`).
    pub memory_max: Option<u64>,
    /// Swap limit in bytes; `Some(0)` = no swap (`memory.swap.max` / memsw).
    pub swap_max: Option<u64>,
    /// CPU bandwidth in CPUs (e.g. `0.5`), as a CFS quota over a 100 ms period.
    pub cpu_max: Option<f64>,
    /// Maximum number of tasks (`pids.max`).
    pub pids_max: Option<u64>,
}

/// What a cgroup recorded; read before removal.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupStats {
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
    /// Times a fork/clone failed because `pids.max` was reached.
    pub pids_limit_hits: u64,
    /// Peak memory usage in bytes, when the kernel reports it.
    pub memory_peak: Option<u64>,
    /// CPU time used by all tasks, in nanoseconds.
    pub cpu_usage_ns: u64,
}

/// Where `<base>` (the directory holding Hutch's parent cgroup) is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Placement {
    /// v2: the daemon's own cgroup (a systemd `Delegate=yes` subtree);
    /// v1: the hierarchy root.
    #[default]
    Auto,
    /// The daemon's own cgroup in every hierarchy (read from `/proc/self/cgroup`).
    OwnCgroup,
    /// The root of every hierarchy.
    HierarchyRoot,
}

/// Configuration of the [`CgroupManager`].
#[derive(Debug, Clone)]
pub struct CgroupConfig {
    /// Hutch's parent cgroup, relative to `<base>` (default `hutch`).
    pub parent: String,
    /// Where cgroup file systems are mounted (default `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The proc file system (default `/proc`).
    pub proc_root: PathBuf,
    /// Use these hierarchies instead of detecting them (tests, or the layout
    /// from `host::detect_cgroups`).
    pub mounts: Option<CgroupHierarchies>,
    /// Where the parent goes in each hierarchy.
    pub placement: Placement,
    /// v2 only: leaf that receives the daemon's processes when its own cgroup
    /// must enable controllers for children (default `daemon`).
    pub daemon_leaf: String,
    /// How long `kill_all` waits for the cgroup to empty (default 5 s).
    pub kill_timeout: Duration,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            parent: "hutch".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
            mounts: None,
            placement: Placement::Auto,
            daemon_leaf: "daemon".into(),
            kill_timeout: Duration::from_secs(5),
        }
    }
}

/// Check that `name` is one safe path component.
fn check_component(name: &str) -> Result<(), CgroupError> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1 to 128 bytes");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return bad("only ASCII letters, digits and - _ . @ are allowed");
    }
    // A name equal to a control file ("memory.max") cannot be created: the
    // kernel answers EEXIST, and `create` reports it as `Exists`. Dotted
    // plugin ids ("io.github.x") are fine.
    Ok(())
}

/// Check a `/`-separated relative parent path.
fn check_parent(parent: &str) -> Result<(), CgroupError> {
    if parent.starts_with('/') {
        return Err(CgroupError::InvalidName {
            name: parent.to_owned(),
            reason: "parent must be relative",
        });
    }
    parent.split('/').try_for_each(check_component)
}

fn read_trim(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| io_err("read", path, &e))
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| io_err(format!("write {value:?} to"), path, &e))
}

/// Read `key` from a flat-keyed file (`key value` lines).
fn read_keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    let file = fs::File::open(path).map_err(|e| io_err("open", path, &e))?;
    let map =
        cgroups_rs::fs::flat_keyed_to_hashmap(file).map_err(|e| crate_err("read", path, &e))?;
    Ok(map.get(key).and_then(|v| u64::try_from(*v).ok()))
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let s = read_trim(path)?;
    s.parse().map_err(|_| CgroupError::Io {
        op: format!("parse {s:?} from"),
        path: path.to_owned(),
        errno: Errno::EINVAL,
    })
}

/// `true` when `<proc_root>/swaps` lists an active swap area.
fn swap_active(proc_root: &Path) -> bool {
    // Unreadable: assume swap may be active (fail closed).
    fs::read_to_string(proc_root.join("swaps")).map_or(true, |s| s.lines().count() > 1)
}

/// `mkdir` that treats an existing directory as success.
fn mkdir_existing_ok(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("mkdir", path, &e)),
    }
}

/// The cgroup hierarchies Hutch uses, detected once and cached; creates
/// sandbox cgroups under its parent.
#[derive(Debug)]
pub struct CgroupManager {
    config: CgroupConfig,
    mounts: CgroupHierarchies,
    /// The hierarchy rooted at `<base>/<parent>` in every hierarchy.
    hier: HutchHierarchy,
    /// v2: controllers enabled for the children of `<base>/<parent>`.
    v2_controllers: Vec<&'static str>,
}

impl CgroupManager {
    /// Detect the hierarchies (unless `config.mounts` is given), resolve
    /// `<base>` for the placement, and create `<base>/<parent>` in every
    /// hierarchy used (on v2, enabling memory, pids and cpu for its children).
    ///
    /// # Errors
    /// Invalid parent name, no usable hierarchy, a missing controller, or a
    /// failed mkdir / controller enable (with path and errno).
    pub fn new(config: CgroupConfig) -> Result<CgroupManager, CgroupError> {
        check_parent(&config.parent)?;
        check_component(&config.daemon_leaf)?;
        let mounts = match &config.mounts {
            Some(m) => m.clone(),
            None => layout::detect(&config.proc_root, &config.cgroup_root)?,
        };
        let own = match config.placement {
            Placement::HierarchyRoot => false,
            Placement::OwnCgroup => true,
            Placement::Auto => matches!(mounts, CgroupHierarchies::V2 { .. }),
        };
        match &mounts {
            CgroupHierarchies::V2 { mount } => {
                let base = if own {
                    mount.join(layout::own_cgroup(&config.proc_root, None)?)
                } else {
                    mount.clone()
                };
                let v2_controllers = Self::prepare_v2(&config, mount, &base)?;
                let hier = HutchHierarchy::v2(base.join(&config.parent), &v2_controllers);
                Ok(CgroupManager {
                    config,
                    mounts,
                    hier,
                    v2_controllers,
                })
            }
            CgroupHierarchies::V1 { mounts: by_ctrl } => {
                let mut dirs = Vec::new();
                for (ctrl, mount) in by_ctrl {
                    let base = if own {
                        mount.join(layout::own_cgroup(&config.proc_root, Some(*ctrl))?)
                    } else {
                        mount.clone()
                    };
                    let mut dir = base.clone();
                    for comp in config.parent.split('/') {
                        dir.push(comp);
                        mkdir_existing_ok(&dir)?;
                    }
                    dirs.push((*ctrl, dir));
                }
                let hier = HutchHierarchy::v1(dirs);
                Ok(CgroupManager {
                    config,
                    mounts,
                    hier,
                    v2_controllers: Vec::new(),
                })
            }
        }
    }

    /// v2: make `<base>/<parent>` able to host limited leaf cgroups.
    fn prepare_v2(
        config: &CgroupConfig,
        mount: &Path,
        base: &Path,
    ) -> Result<Vec<&'static str>, CgroupError> {
        let available = read_trim(&base.join("cgroup.controllers"))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        // memory and pids are required when the hierarchy has them at all
        // (the test hierarchy on a hybrid host has neither); cpu is optional.
        let wanted: Vec<&'static str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| available.contains(c))
            .collect();
        let is_root = base == mount;
        let mut dir = base.to_owned();
        let comps: Vec<&str> = config.parent.split('/').collect();
        // Enable the controllers for children of base and of each parent
        // component except the last (the last enables them for sandboxes).
        Self::enable_v2(config, &dir, &wanted, is_root)?;
        for comp in comps {
            dir.push(comp);
            mkdir_existing_ok(&dir)?;
            Self::enable_v2(config, &dir, &wanted, false)?;
        }
        Ok(wanted)
    }

    /// Enable `wanted` in `dir/cgroup.subtree_control`, first moving the
    /// processes of `dir` into the daemon leaf when `dir` is not a root.
    fn enable_v2(
        config: &CgroupConfig,
        dir: &Path,
        wanted: &[&'static str],
        is_root: bool,
    ) -> Result<(), CgroupError> {
        let control = dir.join("cgroup.subtree_control");
        let enabled = read_trim(&control)?;
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !is_root {
            let procs = read_trim(&dir.join("cgroup.procs"))?;
            if !procs.is_empty() {
                let leaf = dir.join(&config.daemon_leaf);
                mkdir_existing_ok(&leaf)?;
                for pid in procs.lines() {
                    match fs::write(leaf.join("cgroup.procs"), pid) {
                        Ok(()) => {}
                        // The process exited meanwhile.
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => return Err(io_err(format!("move pid {pid} into"), &leaf, &e)),
                    }
                }
                tracing::info!(leaf = %leaf.display(), "moved the daemon's processes into a leaf cgroup");
            }
        }
        let body = missing
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        write_file(&control, &body)
    }

    /// The hierarchies in use.
    pub fn mounts(&self) -> &CgroupHierarchies {
        &self.mounts
    }

    /// `true` on cgroup v2.
    pub fn is_v2(&self) -> bool {
        matches!(self.mounts, CgroupHierarchies::V2 { .. })
    }

    /// The parent directory (`<base>/<parent>`) in every hierarchy used.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        self.hier.dirs()
    }

    /// Remove the parent directories if nothing is left in them, without
    /// touching anything inside: a sibling sandbox, another Hutch process
    /// using the same parent, or a daemon's leaf keeps them (the `rmdir` then
    /// fails with `EBUSY`/`ENOTEMPTY` and is left alone). Called when a
    /// launcher ends so a `hutchd try` leaves no cgroup behind. Unlike
    /// [`CgroupManager::remove_parent`] it never sweeps.
    pub fn remove_parent_if_empty(&self) {
        let depth = self.config.parent.split('/').count();
        for dir in self.hier.dirs() {
            let mut d = dir.clone();
            for _ in 0..depth {
                if fs::remove_dir(&d).is_err() {
                    break;
                }
                if !d.pop() {
                    break;
                }
            }
        }
    }

    /// `mkdir` of a sandbox cgroup. Another launcher that ended may have
    /// removed the (then empty) parent with
    /// [`CgroupManager::remove_parent_if_empty`] since this manager set it up:
    /// set the parent up again (mkdir, and on v2 the controller enabling) and
    /// retry.
    fn create_child_dir(&self, d: &Path) -> Result<(), CgroupError> {
        let mut tries = 0;
        loop {
            match fs::create_dir(d) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => {
                    tries += 1;
                    CgroupManager::new(self.config.clone())?;
                }
                Err(e) => return Err(io_err("mkdir", d, &e)),
            }
        }
    }

    /// Create the sandbox cgroup `<parent>/<name>` in every hierarchy used and
    /// apply `limits`. Nothing is attached yet; this can run ahead of the spawn
    /// (e.g. for the next plugin) to keep mkdir and limit writes off the
    /// critical path.
    ///
    /// # Errors
    /// Invalid name, the cgroup exists already ([`CgroupError::Exists`]), an
    /// invalid or unsupported limit, or a failed mkdir/write. On error,
    /// whatever was created is removed.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<SandboxCgroup, CgroupError> {
        let cg = self.create_dirs(name, limits.cpu_max.is_some())?;
        cg.set_limits(limits)?;
        Ok(cg)
    }

    /// Create a cgroup for a pre-warmed sandbox of the launcher's pool: no
    /// limits yet (they are written with [`SandboxCgroup::set_limits`] when
    /// the sandbox is claimed, before any plugin code runs), and on v1 the
    /// cpu hierarchy too when the host has it, so any `cpu_max` can be set
    /// later.
    ///
    /// # Errors
    /// As [`CgroupManager::create`].
    pub fn create_unlimited(&self, name: &str) -> Result<SandboxCgroup, CgroupError> {
        self.create_dirs(name, self.hier.has(Controller::Cpu))
    }

    /// mkdir of `<parent>/<name>` in every hierarchy used (and cpu on v1
    /// when `with_cpu`).
    fn create_dirs(&self, name: &str, with_cpu: bool) -> Result<SandboxCgroup, CgroupError> {
        check_component(name)?;
        let v2 = self.is_v2();
        let ctrls: Vec<Controller> = if v2 {
            // Freezer stands for the core files (cgroup.freeze, cgroup.kill).
            let mut c = vec![Controller::Freezer];
            for n in &self.v2_controllers {
                c.push(match *n {
                    "memory" => Controller::Memory,
                    "pids" => Controller::Pids,
                    _ => Controller::Cpu,
                });
            }
            c
        } else {
            let mut c = vec![
                Controller::Memory,
                Controller::Pids,
                Controller::CpuAcct,
                Controller::Freezer,
            ];
            if with_cpu {
                if !self.hier.has(Controller::Cpu) {
                    return Err(CgroupError::ControllerMissing {
                        controller: "cpu".into(),
                        path: self.config.cgroup_root.clone(),
                    });
                }
                c.push(Controller::Cpu);
            }
            c
        };
        let dirs = self.hier.dirs_for(&ctrls, name);
        for d in &dirs {
            if d.exists() {
                return Err(CgroupError::Exists { path: d.clone() });
            }
        }
        let names: Vec<String> = ctrls.iter().map(|c| c.name().to_owned()).collect();
        let cg = Cgroup::load_with_specified_controllers(Box::new(self.hier.clone()), name, names);
        let mut sandbox = SandboxCgroup {
            name: name.to_owned(),
            cg,
            dirs: Vec::new(),
            v2,
            kill_timeout: self.config.kill_timeout,
            removed: false,
            proc_root: self.config.proc_root.clone(),
            stat_files: std::sync::Mutex::default(),
        };
        for d in dirs {
            self.create_child_dir(&d)?;
            // Recorded only once created, so Drop removes exactly what we made.
            sandbox.dirs.push(d);
        }
        Ok(sandbox)
    }

    /// Remove every cgroup left under the parent (leftovers of a crashed run):
    /// kill their processes (freeze-and-kill / `cgroup.kill`), then rmdir.
    /// Call at start-up, before any sandbox of this manager runs.
    /// Returns the names removed.
    ///
    /// # Errors
    /// Listing the parent fails, or a leftover cannot be emptied or removed.
    pub fn sweep_stale(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = std::collections::BTreeSet::new();
        for dir in self.hier.dirs() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir, &e)),
            };
            for entry in rd.flatten() {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if let (true, Some(n)) = (is_dir, entry.file_name().to_str())
                    && check_component(n).is_ok()
                    && n != self.config.daemon_leaf
                {
                    names.insert(n.to_owned());
                }
            }
        }
        for name in &names {
            let ctrls: Vec<Controller> = self.hier.controllers();
            let dirs: Vec<PathBuf> = self
                .hier
                .dirs_for(&ctrls, name)
                .into_iter()
                .filter(|d| d.exists())
                .collect();
            let cg = Cgroup::load_with_specified_controllers(
                Box::new(self.hier.clone()),
                name,
                ctrls.iter().map(|c| c.name().to_owned()).collect(),
            );
            let stale = SandboxCgroup {
                name: name.clone(),
                cg,
                dirs,
                v2: self.is_v2(),
                kill_timeout: self.config.kill_timeout,
                removed: false,
                proc_root: self.config.proc_root.clone(),
                stat_files: std::sync::Mutex::default(),
            };
            tracing::warn!(cgroup = %name, "removing stale sandbox cgroup");
            stale.remove()?;
        }
        Ok(names.into_iter().collect())
    }

    /// Sweep everything under the parent, then remove the parent directories
    /// themselves (not `<base>`). For shutdown and tests. On v1 a parent whose
    /// last child was just removed can answer `EBUSY` for a moment (the
    /// child's offlining is asynchronous): the parent's own `rmdir` is retried
    /// for up to 2 s.
    ///
    /// # Errors
    /// See [`CgroupManager::sweep_stale`]; rmdir of a parent fails.
    pub fn remove_parent(&self) -> Result<(), CgroupError> {
        self.sweep_stale()?;
        let depth = self.config.parent.split('/').count();
        let deadline = Instant::now() + PARENT_RMDIR_PATIENCE;
        for dir in self.hier.dirs() {
            let mut d = dir.clone();
            for _ in 0..depth {
                let mut removed = fs::remove_dir(&d);
                while d == dir
                    && matches!(&removed, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                    removed = fs::remove_dir(&d);
                }
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // A shared intermediate parent still used by someone else.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && d != dir => break,
                    Err(e) => return Err(io_err("rmdir", &d, &e)),
                }
                if !d.pop() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// How long [`CgroupManager::remove_parent`] retries a parent's `EBUSY`.
const PARENT_RMDIR_PATIENCE: Duration = Duration::from_secs(2);

/// One sandbox's cgroup, in every hierarchy used. Removed by
/// [`SandboxCgroup::remove`]; dropped without it, it is killed and removed
/// best-effort.
#[derive(Debug)]
pub struct SandboxCgroup {
    name: String,
    cg: Cgroup,
    /// The directories created (one per hierarchy).
    dirs: Vec<PathBuf>,
    v2: bool,
    kill_timeout: Duration,
    removed: bool,
    /// For the swap check of [`SandboxCgroup::set_limits`].
    proc_root: PathBuf,
    /// The counter files [`SandboxCgroup::stats`] reads, opened on first
    /// use and read again from offset 0 (a pool slot's are read twice per
    /// sandbox: 4 `open`s and `close`s fewer on each sandbox's report).
    stat_files: std::sync::Mutex<Vec<(PathBuf, fs::File)>>,
}

impl SandboxCgroup {
    /// The sandbox name (last path component).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cgroup directory in every hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `true` when the cgroup has a directory in `ctrl`'s hierarchy (on v2:
    /// when the controller is enabled for it).
    pub fn has_controller(&self, ctrl: Controller) -> bool {
        self.dir_of(ctrl).is_some_and(|d| self.dirs.contains(&d))
    }

    /// Write `limits` (memory, swap, cpu, pids). [`CgroupManager::create`]
    /// does it at once; a pooled cgroup gets them when it is claimed.
    ///
    /// # Errors
    /// An invalid or unsupported limit (a controller the cgroup lacks), or a
    /// failed write.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let proc_root = &self.proc_root;
        let first = self.dirs.first().cloned().unwrap_or_default();
        let to_i64 = |what: &'static str, v: u64| {
            i64::try_from(v).map_err(|_| CgroupError::InvalidLimit {
                what,
                reason: format!("{v} is too large"),
            })
        };
        if limits.memory_max.is_some() || limits.swap_max.is_some() {
            let Some(mem) = self.cg.controller_of::<MemController>() else {
                return Err(CgroupError::ControllerMissing {
                    controller: "memory".into(),
                    path: first,
                });
            };
            if let Some(max) = limits.memory_max {
                let v = to_i64("memory_max", max)?;
                mem.set_limit(v)
                    .map_err(|e| crate_err(format!("set memory limit {max}"), mem.path(), &e))?;
            }
            if let Some(swap) = limits.swap_max {
                self.apply_swap(mem, limits.memory_max, swap, proc_root)?;
            }
        }
        if let Some(cpus) = limits.cpu_max {
            if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
                return Err(CgroupError::InvalidLimit {
                    what: "cpu_max",
                    reason: format!("{cpus} CPUs is not in (0, 4096]"),
                });
            }
            let Some(cpu) = self.cg.controller_of::<CpuController>() else {
                return Err(CgroupError::ControllerMissing {
                    controller: "cpu".into(),
                    path: first,
                });
            };
            // The kernel's minimum quota is 1 ms.
            #[allow(clippy::cast_possible_truncation)]
            let quota = ((cpus * CPU_PERIOD_US as f64).round() as i64).max(1000);
            cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
                .map_err(|e| {
                    crate_err(
                        format!("set cpu quota {quota}/{CPU_PERIOD_US}"),
                        cpu.path(),
                        &e,
                    )
                })?;
        }
        if let Some(n) = limits.pids_max {
            let Some(pids) = self.cg.controller_of::<PidController>() else {
                return Err(CgroupError::ControllerMissing {
                    controller: "pids".into(),
                    path: first,
                });
            };
            let v = to_i64("pids_max", n)?;
            pids.set_pid_max(MaxValue::Value(v))
                .map_err(|e| crate_err(format!("set pids.max {n}"), pids.path(), &e))?;
        }
        Ok(())
    }

    /// Swap: v2 `memory.swap.max`; v1 `memory.memsw.limit_in_bytes` = memory + swap.
    /// Without swap accounting files the limit is only accepted when no swap
    /// is active on the host (then there is nothing to limit).
    fn apply_swap(
        &self,
        mem: &MemController,
        memory_max: Option<u64>,
        swap: u64,
        proc_root: &Path,
    ) -> Result<(), CgroupError> {
        let file = if self.v2 {
            "memory.swap.max"
        } else {
            "memory.memsw.limit_in_bytes"
        };
        let path = mem.path().join(file);
        if !path.exists() {
            if swap_active(proc_root) {
                return Err(CgroupError::InvalidLimit {
                    what: "swap_max",
                    reason: format!(
                        "{} is missing (swap accounting off) and swap is active",
                        path.display()
                    ),
                });
            }
            tracing::debug!(path = %path.display(), "no swap accounting and no active swap: swap_max is moot");
            return Ok(());
        }
        let value = if self.v2 {
            swap
        } else {
            let Some(m) = memory_max else {
                return Err(CgroupError::InvalidLimit {
                    what: "swap_max",
                    reason: "cgroup v1 limits memory+swap together: set memory_max too".into(),
                });
            };
            m.saturating_add(swap)
        };
        let v = i64::try_from(value).map_err(|_| CgroupError::InvalidLimit {
            what: "swap_max",
            reason: format!("{value} is too large"),
        })?;
        mem.set_memswap_limit(v)
            .map_err(|e| crate_err(format!("set {file} {value}"), mem.path(), &e))
    }

    /// Move process `pid` (all its threads) into this cgroup, in every hierarchy.
    ///
    /// On v1 the first `cgroup.procs` write after an idle period can take
    /// 10-15 ms (RCU grace period); do it concurrently with the child's own
    /// setup, or on v2 use [`SandboxCgroup::v2_dir_fd`] with
    /// `clone3(CLONE_INTO_CGROUP)` and skip it.
    ///
    /// # Errors
    /// `pid` is not positive, or a `cgroup.procs` write fails (ESRCH: gone).
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        let p = u64::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(CgroupError::InvalidLimit {
                what: "pid",
                reason: format!("{pid} is not a process id"),
            })?;
        let first = self.dirs.first().cloned().unwrap_or_default();
        self.cg
            .add_task_by_tgid(CgroupPid::from(p))
            .map_err(|e| crate_err(format!("attach pid {pid} to"), &first, &e))
    }

    /// The `cgroup.procs` files, for a child that writes `0` to each to move
    /// itself (no round trip to the parent).
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// v2 only: an `O_DIRECTORY` fd of the cgroup, for
    /// `clone3(CLONE_INTO_CGROUP)`. `Ok(None)` on v1.
    ///
    /// # Errors
    /// Opening the directory fails.
    pub fn v2_dir_fd(&self) -> Result<Option<OwnedFd>, CgroupError> {
        if !self.v2 {
            return Ok(None);
        }
        let Some(dir) = self.dirs.first() else {
            return Ok(None);
        };
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| io_err("open", dir, &e))?;
        Ok(Some(OwnedFd::from(f)))
    }

    /// The processes in the cgroup (union over hierarchies).
    pub fn pids(&self) -> Vec<i32> {
        self.cg
            .procs()
            .into_iter()
            .filter_map(|p| i32::try_from(p.pid).ok())
            .filter(|p| *p > 0)
            .collect()
    }

    /// Kill every process in the cgroup and wait until it is empty.
    ///
    /// v2: write `1` to `cgroup.kill` (kernel 5.14+; older: freeze, SIGKILL
    /// each, thaw). v1: freeze (`freezer.state` FROZEN, so nothing forks
    /// meanwhile), SIGKILL every pid in `cgroup.procs`, thaw, wait.
    ///
    /// # Errors
    /// A control-file write fails, or processes remain after the kill timeout
    /// ([`CgroupError::NotEmpty`]).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let first = self.dirs.first().cloned().unwrap_or_default();
        if self.v2 {
            match self.cg.kill() {
                Ok(()) => return self.wait_empty(false),
                Err(e) if *e.kind() == cgroups_rs::fs::error::ErrorKind::InvalidOperation => {
                    tracing::debug!("no cgroup.kill (kernel < 5.14): freeze and kill");
                }
                Err(e) => return Err(crate_err("write 1 to cgroup.kill in", &first, &e)),
            }
        }
        if self.pids().is_empty() {
            return Ok(());
        }
        // A leftover from a crash mid-create may lack the freezer directory.
        let freezer = self
            .cg
            .controller_of::<FreezerController>()
            .filter(|f| f.path().is_dir());
        if let Some(f) = freezer {
            f.freeze().map_err(|e| crate_err("freeze", f.path(), &e))?;
            self.wait_frozen(f);
        }
        let mut failed = None;
        for pid in self.pids() {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    failed.get_or_insert(CgroupError::Io {
                        op: format!("kill -9 {pid} in"),
                        path: first.clone(),
                        errno: e,
                    });
                }
            }
        }
        // Thaw on every path: a frozen sandbox must never be left behind.
        if let Some(f) = freezer {
            f.thaw().map_err(|e| crate_err("thaw", f.path(), &e))?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // Without a freezer (a leftover lacking its freezer directory) a
        // process may fork between the read of `cgroup.procs` and its kill:
        // keep killing whatever is listed until the group is empty.
        self.wait_empty(freezer.is_none())
    }

    /// Wait (bounded) until the freezer reports FROZEN; a task stuck in the
    /// kernel can keep it FREEZING, in which case the kill goes ahead anyway.
    fn wait_frozen(&self, f: &FreezerController) {
        let deadline = Instant::now() + self.kill_timeout.min(Duration::from_secs(1));
        while Instant::now() < deadline {
            if matches!(f.state(), Ok(FreezerState::Frozen)) {
                return;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        tracing::warn!(cgroup = %self.name, "freezer did not reach FROZEN; killing anyway");
    }

    fn is_empty(&self) -> bool {
        if self.v2
            && let Some(d) = self.dirs.first()
            && let Ok(Some(populated)) = read_keyed(&d.join("cgroup.events"), "populated")
        {
            return populated == 0;
        }
        self.pids().is_empty()
    }

    /// Wait (bounded by the kill timeout) until the group is empty; with
    /// `rekill`, SIGKILL every process still listed on each round.
    fn wait_empty(&self, rekill: bool) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(200);
        loop {
            if self.is_empty() {
                return Ok(());
            }
            if rekill {
                for pid in self.pids() {
                    // ESRCH: already gone; anything else shows as NotEmpty.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if start.elapsed() >= self.kill_timeout {
                return Err(CgroupError::NotEmpty {
                    path: self.dirs.first().cloned().unwrap_or_default(),
                    pids: self.pids(),
                    waited_ms: start.elapsed().as_millis(),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    fn dir_of(&self, ctrl: Controller) -> Option<PathBuf> {
        match ctrl {
            Controller::Memory => self
                .cg
                .controller_of::<MemController>()
                .map(|c| c.path().to_owned()),
            Controller::Pids => self
                .cg
                .controller_of::<PidController>()
                .map(|c| c.path().to_owned()),
            Controller::Cpu => self
                .cg
                .controller_of::<CpuController>()
                .map(|c| c.path().to_owned()),
            Controller::CpuAcct => self
                .cg
                .controller_of::<cgroups_rs::fs::cpuacct::CpuAcctController>()
                .map(|c| c.path().to_owned()),
            Controller::Freezer => self
                .cg
                .controller_of::<FreezerController>()
                .map(|c| c.path().to_owned()),
        }
    }

    /// Read the accounting: OOM kills (v2 `memory.events` oom_kill, v1
    /// `memory.oom_control` oom_kill), pids-limit hits (`pids.events` max),
    /// peak memory (v2 `memory.peak` when present, v1
    /// `memory.max_usage_in_bytes`), CPU time (v2 `cpu.stat` usage_usec, v1
    /// `cpuacct.usage`). Counters a hierarchy lacks read as 0 / `None`.
    ///
    /// # Errors
    /// A file that should exist cannot be read or parsed.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut s = CgroupStats::default();
        if let Some(d) = self.dir_of(Controller::Memory) {
            if self.v2 {
                s.oom_kills = self.stat_keyed(&d.join("memory.events"), "oom_kill")?;
                let peak = d.join("memory.peak");
                if peak.exists() {
                    s.memory_peak = Some(read_u64(&peak)?);
                }
            } else {
                s.oom_kills = self.stat_keyed(&d.join("memory.oom_control"), "oom_kill")?;
                s.memory_peak = Some(self.stat_u64(&d.join("memory.max_usage_in_bytes"))?);
            }
        }
        if let Some(d) = self.dir_of(Controller::Pids) {
            s.pids_limit_hits = self.stat_keyed(&d.join("pids.events"), "max")?;
        }
        if self.v2 {
            if let Some(d) = self.dirs.first() {
                let usec = self.stat_keyed(&d.join("cpu.stat"), "usage_usec")?;
                s.cpu_usage_ns = usec.saturating_mul(1000);
            }
        } else if let Some(d) = self.dir_of(Controller::CpuAcct) {
            s.cpu_usage_ns = self.stat_u64(&d.join("cpuacct.usage"))?;
        }
        Ok(s)
    }

    /// The text of counter file `path`, through its cached descriptor
    /// (`pread` from offset 0 regenerates a cgroup file's content).
    fn stat_text(&self, path: &Path) -> Result<String, CgroupError> {
        use std::os::unix::fs::FileExt;
        let mut files = self
            .stat_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = match files.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                let f = fs::File::open(path).map_err(|e| io_err("open", path, &e))?;
                files.push((path.to_owned(), f));
                files.len() - 1
            }
        };
        let Some((_, file)) = files.get(i) else {
            return Err(io_err("open", path, &std::io::Error::from(Errno::EBADF)));
        };
        let mut buf = vec![0u8; 1024];
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(len * 2, 0);
            }
            let Some(rest) = buf.get_mut(len..) else {
                break;
            };
            match file.read_at(rest, len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read", path, &e)),
            }
        }
        buf.truncate(len);
        String::from_utf8(buf).map_err(|_| CgroupError::Io {
            op: "decode".into(),
            path: path.to_owned(),
            errno: Errno::EINVAL,
        })
    }

    /// A flat-keyed counter (`key value` lines) of `path`; 0 when absent.
    fn stat_keyed(&self, path: &Path, key: &str) -> Result<u64, CgroupError> {
        let text = self.stat_text(path)?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The single number in counter file `path`.
    fn stat_u64(&self, path: &Path) -> Result<u64, CgroupError> {
        let text = self.stat_text(path)?;
        let s = text.trim();
        s.parse().map_err(|_| CgroupError::Io {
            op: format!("parse {s:?} from"),
            path: path.to_owned(),
            errno: Errno::EINVAL,
        })
    }

    /// Kill what is left, read the final stats, and remove the cgroup.
    ///
    /// # Errors
    /// See [`SandboxCgroup::kill_all`], [`SandboxCgroup::stats`], [`SandboxCgroup::remove`].
    pub fn finish(self) -> Result<CgroupStats, CgroupError> {
        self.kill_all()?;
        let stats = self.stats()?;
        self.remove()?;
        Ok(stats)
    }

    /// Kill every process, wait until empty, and remove the directory in every
    /// hierarchy. Read [`SandboxCgroup::stats`] first if you need them.
    ///
    /// # Errors
    /// See [`SandboxCgroup::kill_all`]; an rmdir fails (the Drop retries
    /// best-effort).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.remove_inner()
    }

    /// One removal attempt that does not wait on `rmdir`: kills what is
    /// left (rare: a finished sandbox's processes are gone), then removes
    /// each remaining directory once. `Ok(false)` when an `rmdir` was still
    /// `EBUSY` (a v1 cgroup can report it for a moment after its last task
    /// exited): call again later, or [`SandboxCgroup::remove`] to wait.
    ///
    /// # Errors
    /// See [`SandboxCgroup::kill_all`]; an rmdir fails otherwise.
    pub fn try_remove(&mut self) -> Result<bool, CgroupError> {
        if self.removed {
            return Ok(true);
        }
        if !self.is_empty() {
            self.kill_all()?;
        }
        while let Some(d) = self.dirs.last() {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                Err(e) => return Err(io_err("rmdir", d, &e)),
            }
            self.dirs.pop();
        }
        self.removed = true;
        Ok(true)
    }

    fn remove_inner(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        self.kill_all()?;
        for d in &self.dirs {
            rmdir_retry(d)?;
        }
        self.removed = true;
        Ok(())
    }
}

/// rmdir, retried briefly: a v1 cgroup can report EBUSY for a moment after
/// its last task exited.
fn rmdir_retry(d: &Path) -> Result<(), CgroupError> {
    let mut nap = Duration::from_millis(1);
    for _ in 0..8 {
        match fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(nap);
                nap *= 2;
            }
            Err(e) => return Err(io_err("rmdir", d, &e)),
        }
    }
    fs::remove_dir(d).map_err(|e| io_err("rmdir", d, &e))
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            tracing::warn!(cgroup = %self.name, error = %e, "best-effort cgroup removal failed");
        }
    }
}
