//! Changing the limits of a running sandbox (`hutchctl plugin limits`).
//!
//! The launcher creates each sandbox cgroup and owns it; the daemon knows a
//! running sandbox only by its spec name and the host pid of its init.
//! [`update_running_limits`] finds the cgroup from the pid, not from the
//! name: it reads `<proc_root>/<init_pid>/cgroup` and accepts, in each
//! controller's hierarchy (v1 per controller, v2 the unified one), only a
//! cgroup directly under Hutch's parent that Hutch created for a sandbox:
//! a cold sandbox's `<sanitized spec name>-<launcher pid>-<n>` (that
//! sandbox's name), or a pool slot's `hutch-pool-<launcher pid>-<n>`
//! (docs/sandbox.md "The spawn pool"; the slot also holds its zygote).
//! Anything else is refused with [`CgroupError::NotSandboxCgroup`] and
//! nothing is written. Then it writes the new values:
//!
//! | limit | v2 | v1 |
//! |---|---|---|
//! | `memory_max` | `memory.max` | `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` moved by the same amount (the swap allowance is kept), in the launcher's order (memsw lifted, memory set, memsw set: `reuse::v1_memory`) |
//! | `cpu_max` | `cpu.max` (`quota 100000`) | `cpu.cfs_period_us`, `cpu.cfs_quota_us` |
//! | `pids_max` | `pids.max` | `pids.max` |
//!
//! `pids_max` is the plugin's own budget: as at spawn, Hutch's own tasks in
//! the cgroup (stub and init cold, zygote and init in a slot) are added, by
//! the launcher's own [`crate::launcher::sandbox_pids_max`]. Lowering
//! `pids.max` below the current count kills nothing; further forks fail.
//! Lowering memory below the current usage makes the kernel reclaim; on v2
//! what cannot be reclaimed is OOM-killed, on v1 the write fails with
//! `EBUSY` and the old limit stays. Everything else of a sandbox (its `/tmp`
//! size, mounts, seccomp, Landlock) is fixed for its lifetime.
//!
//! A pool slot is reused by later sandboxes, possibly of other plugins. A
//! live change does not leak to them: when a slot comes back from a
//! sandbox, the launcher rewrites every limit file to the values it
//! recorded ([`super::SandboxCgroup::rewrite_limits`]), and each claim then
//! writes what the next spec needs. The pid is the daemon's record of a
//! running instance: between reading it and writing, the sandbox could end
//! and its slot be claimed again (a window of microseconds, left open; only
//! the launcher, which owns the slot, could close it).

use std::path::{Path, PathBuf};

use super::layout::{self, CgroupHierarchies, Controller};
use super::{CPU_PERIOD_US, CgroupConfig, CgroupError, io_err, read_trim, reuse, write_file};

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
/// [`CgroupError::NotSandboxCgroup`] when `init_pid` is not in a cgroup
/// Hutch created for that sandbox or as a pool slot directly under the
/// parent (nothing is written); [`CgroupError::Io`] when it has no
/// `/proc` entry (it ended);
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
    let label = crate::launcher::sanitize(sandbox_name);
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
        sandbox_dir(&config.parent, &label, &mount, path.map(String::as_str)).map_err(|reason| {
            CgroupError::NotSandboxCgroup {
                pid: init_pid,
                cgroup: path
                    .cloned()
                    .unwrap_or_else(|| format!("none for {}", ctrl.name())),
                reason,
            }
        })
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
            let memsw = d.join("memory.memsw.limit_in_bytes");
            // The swap allowance (memory+swap - memory) is kept.
            // An unlimited memory+swap (the kernel shows its page counter
            // maximum) stays unlimited.
            let old_sw = memsw
                .exists()
                .then(|| parse(&memsw))
                .transpose()?
                .filter(|&sw| sw < V1_UNLIMITED);
            let new_sw = match old_sw {
                Some(sw) => {
                    let swap = sw.saturating_sub(parse(&d.join("memory.limit_in_bytes"))?);
                    Some(max.saturating_add(swap).to_string())
                }
                None => None,
            };
            let r = reuse::v1_memory(
                &d,
                old_sw.is_some(),
                Some(max.to_string()),
                new_sw,
                &mut put,
            );
            if let (Err(_), Some(sw)) = (&r, old_sw) {
                // memsw was lifted: put the old memory+swap limit back.
                let _ = write_file(&memsw, &sw.to_string());
            }
            r?;
        }
    }
    if let Some(cpus) = limits.cpu_max {
        let quota = reuse::cpu_quota(cpus)?;
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
        put(
            d.join("pids.max"),
            crate::launcher::sandbox_pids_max(n).to_string(),
        )?;
    }
    Ok(written)
}

/// The directory of the cgroup at `path` (as in `/proc/<pid>/cgroup`) in
/// the hierarchy mounted at `mount`, if Hutch created it for a sandbox
/// labelled `label` or as a pool slot, directly under `parent`; else why not.
fn sandbox_dir(
    parent: &str,
    label: &str,
    mount: &Path,
    path: Option<&str>,
) -> Result<PathBuf, &'static str> {
    let path = path.ok_or("the process has no cgroup in this hierarchy")?;
    let rel = Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err("not a plain cgroup path");
    }
    let name = rel
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no cgroup name")?;
    if !rel.parent().is_some_and(|p| p.ends_with(parent)) {
        return Err("not directly under Hutch's cgroup parent");
    }
    // `<launcher pid>-<n>` after the sandbox's label or the slot prefix.
    let ids = |rest: &str| {
        rest.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
    };
    let ours = [
        label,
        crate::launcher::POOL_SLOT_PREFIX.trim_end_matches('-'),
    ]
    .iter()
    .any(|prefix| {
        name.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(ids)
    });
    if !ours {
        return Err("not a cgroup Hutch created for this sandbox or a pool slot");
    }
    let dir = mount.join(rel);
    if !dir.is_dir() {
        return Err("the cgroup directory is gone");
    }
    Ok(dir)
}

/// What cgroup v1 shows for an unlimited memory counter (`PAGE_COUNTER_MAX`
/// pages of 4 KiB: 9223372036854771712), or more.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

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
        // memsw lifted, memory set, memsw set (the launcher's order).
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
                "memory.memsw.limit_in_bytes",
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
        assert_eq!(w[0].value, "-1");
        assert_eq!(w[2].value, "5000");
        // Lowering memory: the swap allowance (0) is kept.
        let w = update_running_limits(
            &config,
            "org.x.i-1",
            42,
            &LiveLimits {
                memory_max: Some(2000),
                ..LiveLimits::default()
            },
        )?;
        assert!(w[1].path.ends_with("memory.limit_in_bytes"), "{w:?}");
        assert_eq!(w[1].value, "2000");
        assert_eq!(w[2].value, "2000");
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
        assert!(
            matches!(e, CgroupError::NotSandboxCgroup { pid: 43, .. }),
            "{e}"
        );
        // In a Hutch cgroup, but another sandbox's name.
        let e = update_running_limits(&config, "org.x.i-2", 42, &limits).unwrap_err();
        assert!(matches!(e, CgroupError::NotSandboxCgroup { .. }), "{e}");
        // Under the parent, but not a name Hutch gives, or nested deeper,
        // or escaping it.
        for path in [
            "/hutch/org.x.i-1",
            "/hutch/org.x.i-1-77-3x",
            "/hutch/hutch-pool-1",
            "/hutch/hutch-pool-1-2/sub",
            "/hutch/other/hutch-pool-1-2",
            "/hutch/../hutch/hutch-pool-1-2",
        ] {
            std::fs::create_dir_all(root.path().join(format!("pids{path}")))?;
            std::fs::write(
                root.path().join("proc/43/cgroup"),
                format!("12:pids:{path}\n"),
            )?;
            let e = update_running_limits(&config, "org.x.i-1", 43, &limits).unwrap_err();
            assert!(
                matches!(e, CgroupError::NotSandboxCgroup { .. }),
                "{path}: {e}"
            );
        }
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

    /// A pool slot (`hutch-pool-<launcher pid>-<n>`) is found from the
    /// pid, whatever the sandbox's name.
    #[test]
    fn a_pool_slot_is_found_from_the_pid() -> TestResult {
        let (root, config) = fake_v1()?;
        let d = root.path().join("pids/hutch/hutch-pool-77-4");
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            root.path().join("proc/43/cgroup"),
            "12:pids:/hutch/hutch-pool-77-4\n",
        )?;
        let w = update_running_limits(
            &config,
            "org.x.i-5",
            43,
            &LiveLimits {
                pids_max: Some(8),
                ..LiveLimits::default()
            },
        )?;
        assert_eq!(w.len(), 1);
        assert_eq!(
            std::fs::read_to_string(d.join("pids.max"))?,
            crate::launcher::sandbox_pids_max(8).to_string()
        );
        // A memory change needs the memory hierarchy, where it is not.
        let e = update_running_limits(
            &config,
            "org.x.i-5",
            43,
            &LiveLimits {
                memory_max: Some(8),
                ..LiveLimits::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::NotSandboxCgroup { .. }), "{e}");
        Ok(())
    }

    /// Real kernel: this test process's own cgroup is not Hutch's, on the
    /// host's real hierarchies; nothing is written.
    #[test]
    fn real_foreign_cgroup_is_refused() {
        let config = CgroupConfig {
            parent: format!("hutch-test-foreign-{}", std::process::id()),
            ..CgroupConfig::default()
        };
        let pid = i32::try_from(std::process::id()).unwrap();
        let e = update_running_limits(
            &config,
            "org.x.foreign",
            pid,
            &LiveLimits {
                pids_max: Some(1),
                ..LiveLimits::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::NotSandboxCgroup { .. }), "{e}");
        // With the parent set to where this process actually is, the
        // name still does not qualify.
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let lines = layout::parse_proc_cgroup(&text);
        if let Some((_, path)) = lines.iter().find(|(c, _)| c.iter().any(|x| x == "pids")) {
            let rel = path.trim_start_matches('/');
            if let Some((parent, _)) = rel.rsplit_once('/') {
                let config = CgroupConfig {
                    parent: parent.to_owned(),
                    ..config
                };
                let e = update_running_limits(
                    &config,
                    "org.x.foreign",
                    pid,
                    &LiveLimits {
                        pids_max: Some(1),
                        ..LiveLimits::default()
                    },
                )
                .unwrap_err();
                assert!(matches!(e, CgroupError::NotSandboxCgroup { .. }), "{e}");
            }
        }
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
                for f in ["memory.limit_in_bytes", "cpu.cfs_quota_us", "pids.max"] {
                    assert!(w.iter().any(|w| w.path.ends_with(f)), "{f}: {w:?}");
                }
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
