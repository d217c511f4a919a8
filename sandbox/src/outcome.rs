//! [`Outcome`]: how a sandboxed process ended and what it used.
//!
//! Also the JSON document `hutchd try --report FILE` writes.

use serde::{Deserialize, Serialize};

/// How one sandbox run ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// Exit status of the plugin, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that killed the plugin, if one did.
    pub signal: Option<i32>,
    /// The kernel OOM killer fired in the sandbox's cgroup.
    pub oom_killed: bool,
    /// A fork failed because of the pids limit.
    pub pids_limit_hit: bool,
    /// The wall timeout expired and the sandbox was stopped.
    pub timed_out: bool,
    /// Peak memory of the cgroup in bytes, where the kernel reports it.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time used by all processes of the sandbox.
    pub cpu_time_ns: u64,
    /// Wall time from spawn to the end of the last process.
    pub wall_time_ms: u64,
    /// Denied syscalls, aggregated by name.
    pub denials: Vec<Denial>,
    /// What Landlock enforced, if it was applied.
    pub landlock: Option<LandlockReport>,
    /// Denials were reported through seccomp user notification.
    pub seccomp_notify: bool,
    /// The sandbox could not be set up (or the program not executed): which
    /// step failed, e.g. "mount /plugin read-only: EPERM".
    pub setup_error: Option<String>,
    /// When each spawn step finished (`CLOCK_MONOTONIC`, sorted by time):
    /// launcher, stub, init and plugin marks; see [`crate::trace`].
    #[serde(default)]
    pub spawn_trace: Vec<crate::trace::TracePoint>,
}

pub use crate::seccomp::Denial;

/// What Landlock enforced for one sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LandlockReport {
    /// Landlock ABI version used.
    pub abi: u8,
    /// Filesystem access is restricted.
    pub fs: bool,
    /// TCP bind/connect is restricted.
    pub net: bool,
    /// Abstract Unix sockets and signals are scoped.
    pub scoped: bool,
    /// `"fully_enforced"` or `"partially_enforced"`.
    pub status: String,
}

impl Outcome {
    /// The exit status a shell would give: the exit code, or 128+N when
    /// killed by signal N; 125 when the sandbox could not be set up.
    pub fn shell_status(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 125,
        }
    }

    /// One line per fact worth telling a plugin author, without the `hutch: `
    /// prefix: how it ended, limits hit, denials.
    pub fn describe(&self, limits: &crate::spec::Limits) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(err) = &self.setup_error {
            lines.push(format!("sandbox setup failed: {err}"));
        }
        if self.timed_out {
            let t = limits
                .wall_timeout
                .map(|d| format!("{}s", d.as_secs()))
                .unwrap_or_default();
            lines.push(format!("wall timeout after {t}"));
        }
        if self.oom_killed {
            let m = limits
                .memory_max
                .map(format_size)
                .unwrap_or_else(|| "?".into());
            lines.push(format!("OOM kill (memory_max {m})"));
        }
        if self.pids_limit_hit {
            let p = limits
                .pids_max
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into());
            lines.push(format!("pids limit hit (pids_max {p})"));
        }
        match (self.exit_code, self.signal) {
            (Some(code), _) => lines.push(format!("exited with status {code}")),
            (None, Some(sig)) => {
                lines.push(format!("killed by signal {sig} ({})", signal_name(sig)))
            }
            (None, None) => {}
        }
        for d in &self.denials {
            lines.push(format!("denied syscall {} x{}", d.syscall, d.count));
        }
        lines
    }
}

/// `SIGKILL` for 9, `SIG?` for numbers nix does not know.
pub fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("SIG?")
}

/// `64M` for 64 MiB; bytes otherwise in the largest exact unit.
pub fn format_size(bytes: u64) -> String {
    const UNITS: &[(u64, &str)] = &[
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, suffix) in UNITS {
        if bytes >= *unit && bytes.is_multiple_of(*unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_status_follows_the_shell_convention() {
        let exited = Outcome {
            exit_code: Some(3),
            ..Outcome::default()
        };
        assert_eq!(exited.shell_status(), 3);
        let killed = Outcome {
            signal: Some(9),
            ..Outcome::default()
        };
        assert_eq!(killed.shell_status(), 137);
        assert_eq!(Outcome::default().shell_status(), 125);
    }

    #[test]
    fn describe_names_signal_and_limits() {
        let limits = crate::spec::Limits {
            memory_max: Some(64 << 20),
            ..Default::default()
        };
        let o = Outcome {
            signal: Some(9),
            oom_killed: true,
            ..Outcome::default()
        };
        let lines = o.describe(&limits);
        assert!(
            lines.contains(&"OOM kill (memory_max 64M)".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"killed by signal 9 (SIGKILL)".to_string()),
            "{lines:?}"
        );
    }
}
