//! Reusing one cgroup for many sandboxes (the launcher's pool slots,
//! docs/sandbox.md "The spawn pool"): limits changed from what the cgroup
//! has to what the next sandbox needs (unchanged files are not written), and
//! per-sandbox accounting through a baseline taken when a sandbox starts.
//!
//! | stat | v1 | v2 |
//! |---|---|---|
//! | peak memory | `memory.max_usage_in_bytes` (and memsw) reset by writing `0` | `memory.peak` reset through an open fd (kernel >= 6.12), read back through the same fd |
//! | OOM kills | `memory.oom_control` oom_kill minus the baseline | `memory.events` oom_kill minus the baseline |
//! | pids-limit hits | `pids.events` max minus the baseline | the same |
//! | CPU time | `cpuacct.usage` minus the baseline | `cpu.stat` usage_usec minus the baseline |
//!
//! Where the peak cannot be reset (v2 before 6.12), [`StatsBaseline::peak_reset`]
//! is `false` and the caller must not reuse the cgroup for another sandbox.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{
    CPU_PERIOD_US, CgroupError, CgroupLimits, CgroupStats, Controller, SandboxCgroup, io_err,
    swap_active, write_file,
};

/// Counters of a cgroup when a sandbox started in it (see
/// [`SandboxCgroup::begin_stats`]).
#[derive(Debug)]
pub struct StatsBaseline {
    oom_kills: u64,
    pids_limit_hits: u64,
    cpu_usage_ns: u64,
    /// v2: the `memory.peak` fd whose peak was reset.
    peak_fd: Option<fs::File>,
    peak_reset: bool,
}

impl StatsBaseline {
    /// The peak memory counter was reset, so the sandbox's peak is its own.
    pub fn peak_reset(&self) -> bool {
        self.peak_reset
    }
}

impl SandboxCgroup {
    /// Change the limits from `from` (what the cgroup has now; a fresh
    /// cgroup has [`CgroupLimits::default`], no limits) to `to`: a limit
    /// that is `None` in `to` but set in `from` goes back to unlimited, and
    /// a file whose value does not change is not written.
    ///
    /// # Errors
    /// An invalid or unsupported limit, or a failed write.
    pub fn change_limits(&self, from: &CgroupLimits, to: &CgroupLimits) -> Result<(), CgroupError> {
        self.write_limits(Some(from), to)
    }

    /// Write every limit file for `to`, whatever the cgroup has now (a
    /// limit that is `None` in `to` is set to unlimited). The launcher does
    /// this when a pool slot comes back from a sandbox, because its limits
    /// may have been changed live ([`super::live`]) behind the launcher's
    /// record, and the next claim writes only what differs from the record.
    ///
    /// # Errors
    /// An invalid or unsupported limit, or a failed write.
    pub fn rewrite_limits(&self, to: &CgroupLimits) -> Result<(), CgroupError> {
        self.write_limits(None, to)
    }

    /// [`SandboxCgroup::change_limits`] from `from`, or from an unknown
    /// state (`None`: every file is written).
    fn write_limits(
        &self,
        from: Option<&CgroupLimits>,
        to: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        let missing = |c: &str| CgroupError::ControllerMissing {
            controller: c.into(),
            path: self.dirs.first().cloned().unwrap_or_default(),
        };
        let differs = |f: &dyn Fn(&CgroupLimits) -> bool| from.is_none_or(f);
        let unlimited = if self.v2 { "max" } else { "-1" };
        // A controller the cgroup lacks (v2 without it enabled) has no
        // limit to lift; only setting one is an error.
        let memory_dir = self.dir_of(Controller::Memory);
        let memory_wanted = to.memory_max.is_some() || to.swap_max.is_some();
        if (memory_dir.is_some() || memory_wanted)
            && differs(&|f| (f.memory_max, f.swap_max) != (to.memory_max, to.swap_max))
        {
            let d = memory_dir.ok_or_else(|| missing("memory"))?;
            let value = |v: Option<u64>| v.map_or(unlimited.to_owned(), |v| v.to_string());
            let memory_changes = differs(&|f| f.memory_max != to.memory_max);
            if self.v2 {
                if memory_changes {
                    write_file(&d.join("memory.max"), &value(to.memory_max))?;
                }
                if differs(&|f| f.swap_max != to.swap_max) {
                    self.change_swap(&d, to.swap_max.map(|s| s.to_string()))?;
                }
            } else {
                if to.swap_max.is_some() && to.memory_max.is_none() {
                    return Err(CgroupError::InvalidLimit {
                        what: "swap_max",
                        reason: "cgroup v1 limits memory+swap together: set memory_max too".into(),
                    });
                }
                let had_swap = from.is_none_or(|f| f.swap_max.is_some());
                let memsw = match (to.memory_max, to.swap_max) {
                    (Some(m), Some(swap)) => Some(m.saturating_add(swap)),
                    _ => None,
                };
                if memsw.is_some() && !d.join("memory.memsw.limit_in_bytes").exists() {
                    self.change_swap(&d, Some(String::new()))?;
                }
                v1_memory(
                    &d,
                    had_swap,
                    memory_changes.then(|| value(to.memory_max)),
                    memsw.map(|v| v.to_string()),
                    &mut |p, v| write_file(&p, &v),
                )?;
            }
        }
        let cpu_dir = self.dir_of(Controller::Cpu);
        if (cpu_dir.is_some() || to.cpu_max.is_some()) && differs(&|f| f.cpu_max != to.cpu_max) {
            let d = cpu_dir.ok_or_else(|| missing("cpu"))?;
            let quota = match to.cpu_max {
                None => None,
                Some(cpus) => Some(cpu_quota(cpus)?),
            };
            if self.v2 {
                let q = quota.map_or("max".to_owned(), |q| q.to_string());
                write_file(&d.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
            } else {
                write_file(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let q = quota.map_or("-1".to_owned(), |q| q.to_string());
                write_file(&d.join("cpu.cfs_quota_us"), &q)?;
            }
        }
        let pids_dir = self.dir_of(Controller::Pids);
        if (pids_dir.is_some() || to.pids_max.is_some()) && differs(&|f| f.pids_max != to.pids_max)
        {
            let d = pids_dir.ok_or_else(|| missing("pids"))?;
            let v = to.pids_max.map_or("max".to_owned(), |n| n.to_string());
            write_file(&d.join("pids.max"), &v)?;
        }
        Ok(())
    }

    /// Swap: v2 `memory.swap.max` (`None`: max); v1 `memory.memsw.limit_in_bytes`
    /// (`Some`: memory + swap). Without the file the limit is only accepted when
    /// no swap is active.
    fn change_swap(&self, mem_dir: &Path, value: Option<String>) -> Result<(), CgroupError> {
        let file = if self.v2 {
            "memory.swap.max"
        } else {
            "memory.memsw.limit_in_bytes"
        };
        let path = mem_dir.join(file);
        if !path.exists() {
            if value.is_some() && swap_active(&self.proc_root) {
                return Err(CgroupError::InvalidLimit {
                    what: "swap_max",
                    reason: format!(
                        "{} is missing (swap accounting off) and swap is active",
                        path.display()
                    ),
                });
            }
            return Ok(());
        }
        let unlimited = if self.v2 { "max" } else { "-1" };
        write_file(&path, value.as_deref().unwrap_or(unlimited))
    }

    /// A sandbox starts in this (reused) cgroup: reset the peak memory
    /// counter and record the other counters, so [`SandboxCgroup::stats_since`]
    /// reports this sandbox's own.
    ///
    /// # Errors
    /// A counter cannot be read, or the v1 peak reset fails.
    pub fn begin_stats(&self) -> Result<StatsBaseline, CgroupError> {
        let now = self.stats_counters()?;
        let mut peak_fd = None;
        let mut peak_reset = true;
        if let Some(d) = self.dir_of(Controller::Memory) {
            if self.v2 {
                let path = d.join("memory.peak");
                peak_reset = false;
                if let Ok(mut f) = fs::OpenOptions::new().read(true).write(true).open(&path)
                    && f.write_all(b"reset\n").is_ok()
                {
                    peak_fd = Some(f);
                    peak_reset = true;
                }
            } else {
                write_file(&d.join("memory.max_usage_in_bytes"), "0")?;
                let memsw = d.join("memory.memsw.max_usage_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, "0")?;
                }
            }
        }
        Ok(StatsBaseline {
            oom_kills: now.oom_kills,
            pids_limit_hits: now.pids_limit_hits,
            cpu_usage_ns: now.cpu_usage_ns,
            peak_fd,
            peak_reset,
        })
    }

    /// The accounting since `base` was taken (see the module doc).
    ///
    /// # Errors
    /// A file that should exist cannot be read or parsed.
    pub fn stats_since(&self, base: &mut StatsBaseline) -> Result<CgroupStats, CgroupError> {
        let mut s = self.stats()?;
        s.oom_kills = s.oom_kills.saturating_sub(base.oom_kills);
        s.pids_limit_hits = s.pids_limit_hits.saturating_sub(base.pids_limit_hits);
        s.cpu_usage_ns = s.cpu_usage_ns.saturating_sub(base.cpu_usage_ns);
        if let Some(f) = base.peak_fd.as_mut() {
            let path = self.dirs.first().map(|d| d.join("memory.peak"));
            let shown = path.unwrap_or_default();
            let mut text = String::new();
            f.rewind().map_err(|e| io_err("seek", &shown, &e))?;
            f.read_to_string(&mut text)
                .map_err(|e| io_err("read", &shown, &e))?;
            s.memory_peak = text.trim().parse().ok();
        }
        Ok(s)
    }

    /// The counters of [`SandboxCgroup::stats`] without the peak.
    fn stats_counters(&self) -> Result<CgroupStats, CgroupError> {
        let mut s = self.stats()?;
        s.memory_peak = None;
        Ok(s)
    }

    /// Bytes of shared memory (tmpfs pages) charged to the cgroup: a slot is
    /// reused only when an earlier sandbox's `/tmp` is no longer charged to
    /// it. `0` without a memory controller.
    ///
    /// # Errors
    /// `memory.stat` cannot be read.
    pub fn shmem_bytes(&self) -> Result<u64, CgroupError> {
        let Some(d) = self.dir_of(Controller::Memory) else {
            return Ok(0);
        };
        let path = d.join("memory.stat");
        let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, &e))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("shmem "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

/// The CFS quota in microseconds per [`CPU_PERIOD_US`] for `cpus` CPUs (the
/// kernel's minimum quota is 1 ms).
///
/// # Errors
/// `cpus` is not in (0, 4096].
pub(crate) fn cpu_quota(cpus: f64) -> Result<u64, CgroupError> {
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
        return Err(CgroupError::InvalidLimit {
            what: "cpu_max",
            reason: format!("{cpus} CPUs is not in (0, 4096]"),
        });
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000))
}

/// The v1 memory limits of the cgroup directory `d`, in an order the kernel
/// accepts (memory <= memory+swap must hold after every write): when
/// `had_swap` (a memory+swap limit may be set), `memory.memsw.limit_in_bytes`
/// is lifted first; then `memory.limit_in_bytes` is set to `memory` (if
/// given), then memory+swap to `memsw` (if given). Used by the launcher's
/// writes and by live changes ([`super::live`]); `put` writes one file.
///
/// # Errors
/// What `put` returns.
pub(crate) fn v1_memory(
    d: &Path,
    had_swap: bool,
    memory: Option<String>,
    memsw: Option<String>,
    put: &mut dyn FnMut(PathBuf, String) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let memsw_file = d.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw_file.exists();
    if had_swap && has_memsw {
        put(memsw_file.clone(), "-1".into())?;
    }
    if let Some(m) = memory {
        put(d.join("memory.limit_in_bytes"), m)?;
    }
    if let Some(v) = memsw
        && has_memsw
    {
        put(memsw_file, v)?;
    }
    Ok(())
}
