//! Spawn trace: `CLOCK_MONOTONIC` timestamps of the spawn steps.
//!
//! Every process of a spawn (launcher, stub, init, plugin) records when it
//! finished each step. The child-side marks live in a [`Trace`] that each
//! `fork` copies, so the plugin process holds the stub's and init's marks
//! too and sends them all with `Executing`; init adds when it reaped the
//! plugin. The launcher merges them with its own into
//! [`Outcome::spawn_trace`](crate::outcome::Outcome::spawn_trace), sorted by
//! time. `CLOCK_MONOTONIC` is system-wide, so a caller can compare the
//! points with its own [`now_ns`] (the spawn bench prints a per-step table).
//! A mark is one vDSO `clock_gettime` and a push into a pre-sized vector.

use serde::{Deserialize, Serialize};

/// One step of a spawn: which process finished what, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePoint {
    /// `process: step`, e.g. `init: mount tree`.
    pub step: String,
    /// `CLOCK_MONOTONIC` in nanoseconds.
    pub ns: u64,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        Err(_) => 0,
    }
}

/// Marks of one process chain (inherited across `fork`).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    points: Vec<(&'static str, u64)>,
}

impl Trace {
    /// An empty trace with room for a whole spawn (no reallocation in the
    /// child).
    pub fn new() -> Self {
        Self {
            points: Vec::with_capacity(64),
        }
    }

    /// Record that `step` just finished.
    pub fn mark(&mut self, step: &'static str) {
        if self.points.len() < self.points.capacity() {
            self.points.push((step, now_ns()));
        }
    }

    /// The marks, for a message.
    pub fn points(&self) -> Vec<TracePoint> {
        self.points
            .iter()
            .map(|(step, ns)| TracePoint {
                step: (*step).to_owned(),
                ns: *ns,
            })
            .collect()
    }
}
