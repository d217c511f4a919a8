//! Changing the limits of a running sandbox (`hutchctl plugin limits`).
//!
//! The launcher creates each sandbox cgroup and owns it until the sandbox
//! ends; the daemon knows a running sandbox only by its spec name and the
//! host pid of its init. [`update_running_limits`] finds the cgroup through
//! `<proc_root>/<init_pid>/cgroup` and accepts it only if it is a child of
//! Hutch's parent whose name is the one the launcher gives that sandbox
//! (`<sanitized spec name>-…`), so a pid recycled after the sandbox ended never
//! leads to someone else's cgroup. Then it writes the new values:
//!
//! | limit | v2 | v1 |
//! |---|---|---|
//! | `memory_max` | `memory.max` | `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` moved by the same amount (the swap allowance is kept), in the order the kernel accepts (memsw first when raising, last when lowering) |
//! | `cpu_max` | `cpu.max` (`quota 100000`) | `cpu.cfs_period_us`, `cpu.cfs_quota_us` |
//! | `pids_max` | `pids.max` | `pids.max` |
//!
//! `pids_max` is the plugin's own budget: as at spawn, the stub and init
//! ([`crate::launcher::SANDBOX_OVERHEAD_TASKS`]) are added. Lowering
//! `pids.max` below the current count kills nothing; further forks fail.
//! Lowering memory below the current usage makes the kernel reclaim; on v2
//! what cannot be reclaimed is OOM-killed, on v1 the write fails with
//! `EBUSY` and the old limit stays. Everything else of a sandbox (its `/tmp`
//! size, mounts, seccomp, Landlock) is fixed for its lifetime.

use std::path::{Path, PathBuf};

use super::layout::{self, CgroupHierarchies, Controller};
use super::{CPU_PERIOD_US, CgroupConfig, CgroupError, io_err, read_trim, write_file};

/// Limits to change on a running sandbox; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveLimits {
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
    /// CPU bandwidth in CPUs, in (0, 4096].
    pub cpu_max: Option<f64>,
    /// The plugin's task budget (the sandbox's own tasks are added).
    pub pids_max: Option<u64>,
}

/// One control file written by [`update_running_limits`], with its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// What was written.
    pub value: String,
}

/// Applies `limits` to the cgroup of the running sandbox named `sandbox_name`
/// (its `SandboxSpec::name`) whose init has host pid `init_pid`, under
/// `config.parent` (hierarchies as in `config.mounts`, or detected from
/// `config.proc_root` and `config.cgroup_root`). Returns the files written,
/// in order. Writes stop at the first failure (earlier ones stay applied).
///
/// # Errors
/// [`CgroupError::InvalidName`] when `init_pid` is not in a cgroup of that
/// sandbox under the parent (it ended, or the pid is another process's);
/// [`CgroupError::ControllerMissing`] when the sandbox has no cgroup in the
/// controller's hierarchy; [`CgroupError::InvalidLimit`] for a bad value;
/// [`CgroupError::Io`] for a failed read or write (e.g. `EBUSY` on v1 when
/// memory cannot be reclaimed below the new limit).
pub fn update_running_limits(
    config: &CgroupConfig,
    sandbox_name: &str,
    init_pid: i32,
    limits: &LiveLimits,
) -> Result<Vec<Written>, CgroupError> {
    if init_pid <= 0 {
        return Err(CgroupError::InvalidLimit {
            what: "pid",
            reason: format!("{init_pid} is not a process id"),
        });
    }
    let mounts = match &config.mounts {
        Some(m) => m.clone(),
        None => layout::detect(&config.proc_root, &config.cgroup_root)?,
    };
    let proc_file = config.proc_root.join(init_pid.to_string()).join("cgroup");
    let text = std::fs::read_to_string(&proc_file).map_err(|e| io_err("read", &proc_file, &e))?;
    let lines = layout::parse_proc_cgroup(&text);
    let prefix = format!("{}-", crate::launcher::sanitize(sandbox_name));
    let parent = Path::new(&config.parent);
    let dir_of = |ctrl: Controller| -> Result<PathBuf, CgroupError> {
        let (mount, path) = match &mounts {
            CgroupHierarchies::V2 { mount } => (
                mount.clone(),
                lines.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p),
            ),
            CgroupHierarchies::V1 { mounts } => {
                let Some(mount) = mounts.get(&ctrl) else {
                    return Err(CgroupError::ControllerMissing {
                        controller: ctrl.name().into(),
                        path: config.cgroup_root.clone(),
                    });
                };
                (
                    mount.clone(),
                    lines
                        .iter()
                        .find(|(c, _)| c.iter().any(|x| x == ctrl.name()))
                        .map(|(_, p)| p),
                )
            }
        };
        let dir = path.map(|p| mount.join(p.trim_start_matches('/')));
        match dir {
            Some(d)
                if d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
                    && d.parent().is_some_and(|p| p.ends_with(parent))
                    && d.is_dir() =>
            {
                Ok(d)
            }
            _ => Err(CgroupError::InvalidName {
                name: format!("{} ({sandbox_name})", proc_file.display()),
                reason: "the pid is not in a running sandbox cgroup of that name under Hutch's parent",
            }),
        }
    };
    let v2 = matches!(mounts, CgroupHierarchies::V2 { .. });
    let mut written = Vec::new();
    let mut put = |path: PathBuf, value: String| -> Result<(), CgroupError> {
        write_file(&path, &value)?;
        written.push(Written { path, value });
        Ok(())
    };
    if let Some(max) = limits.memory_max {
        let d = dir_of(Controller::Memory)?;
        if v2 {
            put(d.join("memory.max"), max.to_string())?;
        } else {
            let mem = d.join("memory.limit_in_bytes");
            let memsw = d.join("memory.memsw.limit_in_bytes");
            let old: u64 = parse(&mem)?;
            if memsw.exists() {
                let swap = parse(&memsw)?.saturating_sub(old);
                let new_sw = max.saturating_add(swap);
                // memory <= memory+swap must hold after every write.
                if max > old {
                    put(memsw, new_sw.to_string())?;
                    put(mem, max.to_string())?;
                } else {
                    put(mem, max.to_string())?;
                    put(memsw, new_sw.to_string())?;
                }
            } else {
                put(mem, max.to_string())?;
            }
        }
    }
    if let Some(cpus) = limits.cpu_max {
        if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
            return Err(CgroupError::InvalidLimit {
                what: "cpu_max",
                reason: format!("{cpus} CPUs is not in (0, 4096]"),
            });
        }
        // As at creation: the kernel's minimum quota is 1 ms.
        #[allow(clippy::cast_possible_truncation)]
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        let d = dir_of(Controller::Cpu)?;
        if v2 {
            put(d.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
        } else {
            put(d.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            put(d.join("cpu.cfs_quota_us"), quota.to_string())?;
        }
    }
    if let Some(n) = limits.pids_max {
        let d = dir_of(Controller::Pids)?;
        let total = n.saturating_add(crate::launcher::SANDBOX_OVERHEAD_TASKS);
        put(d.join("pids.max"), total.to_string())?;
    }
    Ok(written)
}

fn parse(path: &Path) -> Result<u64, CgroupError> {
    let s = read_trim(path)?;
    s.parse().map_err(|_| CgroupError::Io {
        op: format!("parse {s:?} from"),
        path: path.to_owned(),
        errno: nix::errno::Errno::EINVAL,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cgroup::{CgroupLimits, CgroupManager, Placement};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A fake v1 host: memory, pids and cpu hierarchies with a sandbox cgroup
    /// `hutch/org.x.i-1-77-3`, and `/proc/42/cgroup` pointing at it.
    fn fake_v1() -> Result<(tempfile::TempDir, CgroupConfig), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let mut mounts = BTreeMap::new();
        for c in ["memory", "pids", "cpu"] {
            let d = root.path().join(c).join("hutch/org.x.i-1-77-3");
            std::fs::create_dir_all(&d)?;
            let ctrl = match c {
                "memory" => Controller::Memory,
                "pids" => Controller::Pids,
                _ => Controller::Cpu,
            };
            mounts.insert(ctrl, root.path().join(c));
        }
        let mem = root.path().join("memory/hutch/org.x.i-1-77-3");
        std::fs::write(mem.join("memory.limit_in_bytes"), "1000\n")?;
        std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "1000\n")?;
        std::fs::create_dir_all(root.path().join("proc/42"))?;
        std::fs::write(
            root.path().join("proc/42/cgroup"),
            "12:pids:/hutch/org.x.i-1-77-3\n5:cpu,cpuacct:/hutch/org.x.i-1-77-3\n\
             3:memory:/hutch/org.x.i-1-77-3\n1:name=systemd:/user.slice\n0::/user.slice\n",
        )?;
        std::fs::create_dir_all(root.path().join("proc/43"))?;
        std::fs::write(
            root.path().join("proc/43/cgroup"),
            "12:pids:/user.slice\n3:memory:/user.slice\n0::/user.slice\n",
        )?;
        let config = CgroupConfig {
            mounts: Some(CgroupHierarchies::V1 { mounts }),
            proc_root: root.path().join("proc"),
            ..CgroupConfig::default()
        };
        Ok((root, config))
    }

    #[test]
    fn v1_files_are_written_in_an_order_the_kernel_accepts() -> TestResult {
        let (root, config) = fake_v1()?;
        let cg = |c: &str, f: &str| root.path().join(c).join("hutch/org.x.i-1-77-3").join(f);
        // Raising memory: memsw first.
        let w = update_running_limits(
            &config,
            "org.x.i-1",
            42,
            &LiveLimits {
                memory_max: Some(5000),
                cpu_max: Some(0.5),
                pids_max: Some(8),
            },
        )?;
        let files: Vec<&str> = w
            .iter()
            .filter_map(|w| w.path.file_name().and_then(|n| n.to_str()))
            .collect();
        assert_eq!(
            files,
            [
                "memory.memsw.limit_in_bytes",
                "memory.limit_in_bytes",
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "pids.max"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(cg("memory", "memory.limit_in_bytes"))?,
            "5000"
        );
        assert_eq!(
            std::fs::read_to_string(cg("cpu", "cpu.cfs_quota_us"))?,
            "50000"
        );
        let overhead = crate::launcher::SANDBOX_OVERHEAD_TASKS;
        assert_eq!(
            std::fs::read_to_string(cg("pids", "pids.max"))?,
            (8 + overhead).to_string()
        );
        // Lowering memory: memory first; the swap allowance (0) is kept.
        let w = update_running_limits(
            &config,
            "org.x.i-1",
            42,
            &LiveLimits {
                memory_max: Some(2000),
                ..LiveLimits::default()
            },
        )?;
        assert!(w[0].path.ends_with("memory.limit_in_bytes"), "{w:?}");
        assert_eq!(w[1].value, "2000");
        Ok(())
    }

    #[test]
    fn a_pid_outside_that_sandbox_is_refused() -> TestResult {
        let (root, config) = fake_v1()?;
        let limits = LiveLimits {
            pids_max: Some(8),
            ..LiveLimits::default()
        };
        // Not in a Hutch cgroup.
        let e = update_running_limits(&config, "org.x.i-1", 43, &limits).unwrap_err();
        assert!(matches!(e, CgroupError::InvalidName { .. }), "{e}");
        // In a Hutch cgroup, but another sandbox's name.
        let e = update_running_limits(&config, "org.x.i-2", 42, &limits).unwrap_err();
        assert!(matches!(e, CgroupError::InvalidName { .. }), "{e}");
        // Under another parent.
        let other = CgroupConfig {
            parent: "other".into(),
            ..config.clone()
        };
        assert!(update_running_limits(&other, "org.x.i-1", 42, &limits).is_err());
        // No such process.
        assert!(update_running_limits(&config, "org.x.i-1", 44, &limits).is_err());
        let pids = root.path().join("pids/hutch/org.x.i-1-77-3/pids.max");
        assert!(!pids.exists(), "nothing written");
        Ok(())
    }

    #[test]
    fn v2_writes_memory_cpu_and_pids_max() -> TestResult {
        let root = tempfile::tempdir()?;
        let d = root.path().join("sys/base/hutch/org.x.i-9-1-1");
        std::fs::create_dir_all(&d)?;
        std::fs::create_dir_all(root.path().join("proc/7"))?;
        std::fs::write(
            root.path().join("proc/7/cgroup"),
            "0::/base/hutch/org.x.i-9-1-1\n",
        )?;
        let config = CgroupConfig {
            mounts: Some(CgroupHierarchies::V2 {
                mount: root.path().join("sys"),
            }),
            proc_root: root.path().join("proc"),
            ..CgroupConfig::default()
        };
        update_running_limits(
            &config,
            "org.x.i-9",
            7,
            &LiveLimits {
                memory_max: Some(1 << 20),
                cpu_max: Some(2.0),
                pids_max: Some(30),
            },
        )?;
        assert_eq!(std::fs::read_to_string(d.join("memory.max"))?, "1048576");
        assert_eq!(std::fs::read_to_string(d.join("cpu.max"))?, "200000 100000");
        assert_eq!(
            std::fs::read_to_string(d.join("pids.max"))?,
            (30 + crate::launcher::SANDBOX_OVERHEAD_TASKS).to_string()
        );
        Ok(())
    }

    /// Real kernel (this host's hierarchies): a process in a sandbox-named
    /// cgroup gets its pids limit lowered live, and a fork then fails.
    #[test]
    fn real_pids_limit_lowered_live_stops_forks() -> TestResult {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref(),
                Ok("1"),
                "real_pids_limit_lowered_live_stops_forks needs root"
            );
            eprintln!("SKIP real_pids_limit_lowered_live_stops_forks: needs root");
            return Ok(());
        }
        let parent = format!("hutch-test-live-{}", std::process::id());
        let config = CgroupConfig {
            parent: parent.clone(),
            placement: Placement::HierarchyRoot,
            ..CgroupConfig::default()
        };
        let mgr = CgroupManager::new(config.clone())?;
        let result = (|| -> TestResult {
            let label = crate::launcher::sanitize("org.x.live");
            let cg = mgr.create(
                &format!("{label}-1-1"),
                &CgroupLimits {
                    memory_max: Some(256 << 20),
                    cpu_max: Some(1.0),
                    pids_max: Some(64),
                    swap_max: None,
                },
            )?;
            // A shell that waits for a line, then tries to fork 5 children.
            let mut child = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg("read go; n=0; for i in 1 2 3 4 5; do (sleep 1) && : & n=$((n+1)); done; wait; echo done")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let pid = i32::try_from(child.id())?;
            let run = (|| -> TestResult {
                cg.attach(pid)?;
                let w = update_running_limits(
                    &config,
                    "org.x.live",
                    pid,
                    &LiveLimits {
                        memory_max: Some(128 << 20),
                        cpu_max: Some(0.5),
                        pids_max: Some(0),
                    },
                )?;
                assert_eq!(w.len(), 5, "{w:?}");
                let pids_dir = cg
                    .dirs()
                    .iter()
                    .find(|d| d.join("pids.max").exists())
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(
                    read_trim(&pids_dir.join("pids.max"))?,
                    crate::launcher::SANDBOX_OVERHEAD_TASKS.to_string()
                );
                use std::io::Write;
                if let Some(stdin) = child.stdin.as_mut() {
                    writeln!(stdin, "go")?;
                }
                let _ = child.wait()?;
                assert!(cg.stats()?.pids_limit_hits > 0, "a fork hit the new limit");
                Ok(())
            })();
            let _ = child.kill();
            let _ = child.wait();
            cg.remove()?;
            run
        })();
        mgr.remove_parent()?;
        result
    }
}
