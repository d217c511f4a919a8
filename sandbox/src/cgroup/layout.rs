//! Where the cgroup hierarchies Hutch uses are mounted, and where Hutch's
//! subtree lives in each of them.
//!
//! Mount detection is the lead's [`crate::host::CgroupReport`]; this module
//! chooses the hierarchies from it and finds the daemon's own cgroup. Roots
//! (`/proc`, the cgroup root) are parameters, so it is unit-tested against
//! temporary directories.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{CgroupError, io_err};
use crate::host::CgroupReport;

/// A cgroup v1 controller Hutch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    /// `memory`: limit, swap limit, OOM and peak accounting.
    Memory,
    /// `pids`: process count limit and limit-hit accounting.
    Pids,
    /// `cpu`: CFS bandwidth (`cpu_max`).
    Cpu,
    /// `cpuacct` (v1 only): CPU time accounting.
    CpuAcct,
    /// `freezer` (v1 only; core on v2): freeze-and-kill.
    Freezer,
}

impl Controller {
    /// Every controller Hutch may use, in attach order.
    pub const ALL: [Controller; 5] = [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::CpuAcct,
        Controller::Freezer,
    ];

    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
            Controller::Freezer => "freezer",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The cgroup hierarchies Hutch will use, with their mount points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupHierarchies {
    /// cgroup v2: one unified hierarchy (pure v2, or the v2 mount of a hybrid
    /// host when it carries the controllers).
    V2 {
        /// Mount point of the cgroup2 file system.
        mount: PathBuf,
    },
    /// cgroup v1: one mount point per controller (several controllers may
    /// share a mount, e.g. `cpu,cpuacct`).
    V1 {
        /// Controller to mount point.
        mounts: BTreeMap<Controller, PathBuf>,
    },
}

/// Controllers that must exist on a v1 host (cpu is needed only for `cpu_max`).
const V1_REQUIRED: [Controller; 4] = [
    Controller::Memory,
    Controller::Pids,
    Controller::CpuAcct,
    Controller::Freezer,
];

/// The membership lines of `/proc/<pid>/cgroup`: hierarchy controllers
/// (empty for v2) to the cgroup path.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Some((ctrls, path.to_owned()))
        })
        .collect()
}

fn read(path: &Path, op: &'static str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| io_err(op, path, &e))
}

/// Choose the hierarchies from the host's cgroup report.
///
/// v2 wins when the cgroup2 mount under `cgroup_root` carries `memory` and
/// `pids`; otherwise v1 mounts under `cgroup_root` for memory, pids, cpuacct
/// and freezer are used (cpu is optional, needed only for `cpu_max`); when
/// those are incomplete, a cgroup2 mount under `cgroup_root` without those
/// controllers (sandboxes without limits only: a limit is refused with
/// [`CgroupError::ControllerMissing`] when it is set).
/// Named v1 hierarchies (`name=systemd`) carry no controller and are never
/// selected.
///
/// # Errors
/// [`CgroupError::NoHierarchy`] when neither a cgroup2 mount nor a complete
/// v1 set of hierarchies is under `cgroup_root`.
pub fn select(report: &CgroupReport, cgroup_root: &Path) -> Result<CgroupHierarchies, CgroupError> {
    let has_v2 = |c: &str| report.v2_controllers.iter().any(|x| x == c);
    if let Some(mount) = &report.mounts.v2
        && mount.starts_with(cgroup_root)
        && has_v2("memory")
        && has_v2("pids")
    {
        return Ok(CgroupHierarchies::V2 {
            mount: mount.clone(),
        });
    }
    let mut v1 = BTreeMap::new();
    for c in Controller::ALL {
        if let Some(h) = report.mounts.v1_hierarchy(c.name())
            && h.name.is_none()
            && h.mount_point.starts_with(cgroup_root)
        {
            v1.insert(c, h.mount_point.clone());
        }
    }
    let missing: Vec<&str> = V1_REQUIRED
        .iter()
        .filter(|c| !v1.contains_key(c))
        .map(|c| c.name())
        .collect();
    if missing.is_empty() {
        return Ok(CgroupHierarchies::V1 { mounts: v1 });
    }
    // A cgroup2 mount without memory or pids (e.g. the unified mount of a
    // hybrid host, chosen with `cgroup_root` = that mount): usable for
    // sandboxes without limits (the core files: cgroup.procs, cgroup.kill,
    // cgroup.events, cpu.stat); a limit whose controller is missing is an
    // error when it is written (`CgroupError::ControllerMissing`).
    if let Some(mount) = &report.mounts.v2
        && mount.starts_with(cgroup_root)
    {
        return Ok(CgroupHierarchies::V2 {
            mount: mount.clone(),
        });
    }
    Err(CgroupError::NoHierarchy(format!(
        "no cgroup2 mount under {}, and no v1 mount for {}",
        cgroup_root.display(),
        missing.join(", ")
    )))
}

/// Detect the hierarchies from `<proc_root>/self/mountinfo`.
///
/// # Errors
/// Reading mountinfo fails, or see [`select`].
pub fn detect(proc_root: &Path, cgroup_root: &Path) -> Result<CgroupHierarchies, CgroupError> {
    let report =
        CgroupReport::detect(proc_root).map_err(|e| CgroupError::NoHierarchy(e.to_string()))?;
    select(&report, cgroup_root)
}

/// The cgroup path (relative to the hierarchy root, without leading `/`) of
/// the calling process in the v2 hierarchy, or in the v1 hierarchy that has
/// `controller`.
///
/// # Errors
/// Reading `<proc_root>/self/cgroup` fails or has no matching line.
pub fn own_cgroup(
    proc_root: &Path,
    controller: Option<Controller>,
) -> Result<PathBuf, CgroupError> {
    let path = proc_root.join("self/cgroup");
    let text = read(&path, "read")?;
    for (ctrls, cg) in parse_proc_cgroup(&text) {
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.iter().any(|x| x == c.name()),
        };
        if hit {
            return Ok(PathBuf::from(cg.trim_start_matches('/')));
        }
    }
    Err(CgroupError::NoHierarchy(format!(
        "{}: no line for {}",
        path.display(),
        controller.map_or("the unified hierarchy", Controller::name)
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(mountinfo: &str, v2_controllers: &'static str) -> CgroupReport {
        CgroupReport::from_mountinfo(mountinfo, |_| Some(v2_controllers.to_owned()))
    }

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

    #[test]
    fn hybrid_without_v2_controllers_selects_v1_and_skips_systemd() {
        let m = select(&report(HYBRID, ""), Path::new("/sys/fs/cgroup")).unwrap();
        let CgroupHierarchies::V1 { mounts } = m else {
            panic!("expected v1, got {m:?}")
        };
        assert_eq!(
            mounts[&Controller::Memory],
            Path::new("/sys/fs/cgroup/memory")
        );
        assert_eq!(mounts[&Controller::Cpu], Path::new("/sys/fs/cgroup/cpu"));
        assert!(!mounts.values().any(|p| p.ends_with("systemd")));
    }

    #[test]
    fn comounted_cpu_cpuacct_share_a_mount() {
        let mi = "\
1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory
3 0 0:3 / /cg/pids rw - cgroup cgroup rw,pids
4 0 0:4 / /cg/freezer rw - cgroup cgroup rw,freezer
";
        let CgroupHierarchies::V1 { mounts } = select(&report(mi, ""), Path::new("/cg")).unwrap()
        else {
            panic!("expected v1")
        };
        assert_eq!(mounts[&Controller::Cpu], mounts[&Controller::CpuAcct]);
    }

    #[test]
    fn v2_with_controllers_wins() {
        let mi = "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = select(
            &report(mi, "cpuset cpu io memory pids\n"),
            Path::new("/sys/fs/cgroup"),
        )
        .unwrap();
        assert_eq!(
            m,
            CgroupHierarchies::V2 {
                mount: PathBuf::from("/sys/fs/cgroup")
            }
        );
    }

    #[test]
    fn missing_everything_is_an_error_naming_what_is_missing() {
        let err = select(&report("", ""), Path::new("/sys/fs/cgroup")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("memory") && msg.contains("freezer"), "{msg}");
    }

    #[test]
    fn a_v2_mount_without_controllers_is_used_only_when_v1_is_incomplete() {
        // Rooted at the unified mount, the v1 hierarchies are outside.
        let m = select(&report(HYBRID, ""), Path::new("/sys/fs/cgroup/unified")).unwrap();
        assert_eq!(
            m,
            CgroupHierarchies::V2 {
                mount: PathBuf::from("/sys/fs/cgroup/unified")
            }
        );
        // Rooted above, the complete v1 set wins.
        let m = select(&report(HYBRID, ""), Path::new("/sys/fs/cgroup")).unwrap();
        assert!(matches!(m, CgroupHierarchies::V1 { .. }), "{m:?}");
    }

    #[test]
    fn mounts_outside_the_root_are_ignored() {
        let err = select(&report(HYBRID, "memory pids"), Path::new("/elsewhere")).unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(_)));
    }

    #[test]
    fn own_cgroup_reads_v1_and_v2_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("self")).unwrap();
        std::fs::write(
            dir.path().join("self/cgroup"),
            "9:name=systemd:/\n4:memory:/process_api/x:y\n2:cpu,cpuacct:/a\n0::/system.slice/hutchd.service\n",
        )
        .unwrap();
        assert_eq!(
            own_cgroup(dir.path(), None).unwrap(),
            Path::new("system.slice/hutchd.service")
        );
        assert_eq!(
            own_cgroup(dir.path(), Some(Controller::Memory)).unwrap(),
            Path::new("process_api/x:y")
        );
        assert_eq!(
            own_cgroup(dir.path(), Some(Controller::CpuAcct)).unwrap(),
            Path::new("a")
        );
        assert!(own_cgroup(dir.path(), Some(Controller::Pids)).is_err());
    }
}
