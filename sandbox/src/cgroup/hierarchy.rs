//! A `cgroups-rs` hierarchy whose directories are parameters.
//!
//! `cgroups-rs`'s own `V1`/`V2` read `/proc/self/mountinfo` on every call,
//! hard-code `/sys/fs/cgroup` for v2, and would include every mounted v1
//! hierarchy (also `name=systemd`). This one holds exactly the directories
//! Hutch uses, `<base>/<parent>` per hierarchy, resolved once by the manager.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::cgroup::Cgroup;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Hierarchy, Subsystem};

use super::Controller;

/// Hutch's parent cgroup directory in each hierarchy it uses.
#[derive(Debug, Clone)]
pub(crate) struct HutchHierarchy {
    v2: bool,
    /// (controller, `<base>/<parent>` in the hierarchy carrying it). On v2 all
    /// share one directory; on v1 co-mounted controllers share one.
    dirs: Vec<(Controller, PathBuf)>,
}

impl HutchHierarchy {
    /// v2: everything in `parent_dir`; `controllers` are the enabled ones
    /// (freezer, i.e. the core `cgroup.*` files, is always present).
    pub(crate) fn v2(parent_dir: PathBuf, controllers: &[&str]) -> Self {
        let mut dirs = vec![(Controller::Freezer, parent_dir.clone())];
        for c in [Controller::Memory, Controller::Pids, Controller::Cpu] {
            if controllers.contains(&c.name()) {
                dirs.push((c, parent_dir.clone()));
            }
        }
        Self { v2: true, dirs }
    }

    /// v1: one parent directory per controller.
    pub(crate) fn v1(dirs: Vec<(Controller, PathBuf)>) -> Self {
        Self { v2: false, dirs }
    }

    /// `true` when `ctrl` is available.
    pub(crate) fn has(&self, ctrl: Controller) -> bool {
        self.dirs.iter().any(|(c, _)| *c == ctrl)
    }

    /// Controllers available.
    pub(crate) fn controllers(&self) -> Vec<Controller> {
        self.dirs.iter().map(|(c, _)| *c).collect()
    }

    /// The distinct parent directories.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (_, d) in &self.dirs {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    /// The distinct directories of cgroup `name` for `ctrls`.
    pub(crate) fn dirs_for(&self, ctrls: &[Controller], name: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (c, d) in &self.dirs {
            let d = d.join(name);
            if ctrls.contains(c) && !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    fn subsystem(&self, ctrl: Controller, dir: &Path) -> Subsystem {
        let (p, r) = (dir.to_path_buf(), dir.to_path_buf());
        match ctrl {
            Controller::Memory => Subsystem::Mem(MemController::new(p, r, self.v2)),
            Controller::Pids => Subsystem::Pid(PidController::new(p, r, self.v2)),
            Controller::Cpu => Subsystem::Cpu(CpuController::new(p, r, self.v2)),
            Controller::CpuAcct => Subsystem::CpuAcct(CpuAcctController::new(p, r)),
            Controller::Freezer => Subsystem::Freezer(FreezerController::new(p, r, self.v2)),
        }
    }
}

impl Hierarchy for HutchHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        self.dirs
            .iter()
            .map(|(c, d)| self.subsystem(*c, d))
            .collect()
    }

    fn root(&self) -> PathBuf {
        // Used by cgroups-rs for v2 paths (`cgroup.kill`, delete); on v1 it is
        // not consulted by the calls Hutch makes.
        self.dirs
            .first()
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        Cgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        self.v2
    }
}
