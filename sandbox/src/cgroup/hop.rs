//! The cgroup hop (cgroup v1): a sandbox's stub is *born* in its cgroup, so
//! no `cgroup.procs` migration sits on the spawn's critical path.
//!
//! Moving a process into a cgroup (v1 or v2) first waits for an RCU grace
//! period when no migration happened recently: 10-15 ms on an idle host.
//! A child forked by a process inside a cgroup starts there with no
//! migration at all. So the launcher *parks* itself, while idle, in an empty
//! cgroup without limits, `<parent>/hop-<pid>-<seq>`, created in every
//! hierarchy the manager has. At a spawn:
//!
//! 1. [`Hop::take`]: rename the parked cgroup to the sandbox's name and write
//!    its limits (cheap: no migration). `pids.max` must leave room for the
//!    launcher, which is still inside.
//! 2. The launcher forks the stub: born inside.
//! 3. [`Hop::leave`]: the launcher creates the next parking cgroup and moves
//!    itself into it: this is the slow write, now overlapping the sandbox's
//!    setup instead of preceding it. The launcher is single-threaded and
//!    this call returns only when the move is done, so nothing the launcher
//!    does for the sandbox afterwards (freeze, kill, removal) can hit it;
//!    [`super::SandboxCgroup::kill_all`] also refuses a cgroup that holds
//!    its caller.
//!
//! Until step 3 completes the launcher is a member of the sandbox's cgroup:
//! it counts against `pids.max` (the caller adds one, and lowers it again
//! after leaving), and its memory charges made while parked (pages it first
//! touched, kernel objects it allocated, a few KiB to a few tens of KiB) stay
//! with that cgroup, since v1 does not move charges with a task. Against an
//! early memory bomb, the launcher's `oom_score_adj` is -1000 while the hop
//! is in use (the stub restores the original value for the sandbox first
//! thing), so a sandbox's OOM kill never picks the launcher.
//!
//! cgroup2 cannot rename cgroups; there `clone3(CLONE_INTO_CGROUP)` is the
//! kernel's answer, so the hop is refused on v2 ([`Hop::park`]).

use std::fs;
use std::path::PathBuf;

use nix::errno::Errno;

use super::{CgroupError, CgroupLimits, CgroupManager, SandboxCgroup, io_err};

/// `oom_score_adj` of the launcher while the hop is in use.
pub const PARKED_OOM_SCORE_ADJ: i32 = -1000;

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// The calling process parked in an empty cgroup of a manager's parent.
#[derive(Debug)]
pub struct Hop {
    /// `cgroup.procs` of the caller's original cgroups, to return to.
    home: Vec<PathBuf>,
    /// The cgroup the caller is in now (`None`: it is home).
    parked: Option<SandboxCgroup>,
    /// The caller's `oom_score_adj` before parking.
    oom_score_adj: i32,
    /// The caller's `oom_score_adj` was lowered to [`PARKED_OOM_SCORE_ADJ`].
    lowered: bool,
    seq: u64,
}

fn read_oom_score_adj() -> Result<i32, CgroupError> {
    let path = std::path::Path::new(OOM_SCORE_ADJ);
    let s = fs::read_to_string(path).map_err(|e| io_err("read", path, &e))?;
    s.trim().parse().map_err(|_| CgroupError::Io {
        op: format!("parse {:?} from", s.trim()),
        path: path.to_owned(),
        errno: Errno::EINVAL,
    })
}

/// Write the caller's `oom_score_adj`.
///
/// # Errors
/// The write fails (lowering it needs `CAP_SYS_RESOURCE`).
pub fn write_oom_score_adj(value: i32) -> Result<(), CgroupError> {
    let path = std::path::Path::new(OOM_SCORE_ADJ);
    fs::write(path, value.to_string()).map_err(|e| io_err(format!("write {value} to"), path, &e))
}

impl Hop {
    /// Park the caller: create `<parent>/hop-<pid>-0` and move the caller
    /// into it (slow when idle: do it off the critical path), and set its
    /// `oom_score_adj` to [`PARKED_OOM_SCORE_ADJ`].
    ///
    /// # Errors
    /// cgroup v2 (no rename), or a mkdir, move or write failed; the caller
    /// is then back home.
    pub fn park(m: &CgroupManager) -> Result<Hop, CgroupError> {
        if m.is_v2() {
            return Err(CgroupError::InvalidName {
                name: "hop".into(),
                reason: "cgroup2 directories cannot be renamed: use clone3(CLONE_INTO_CGROUP)",
            });
        }
        let oom_score_adj = read_oom_score_adj()?;
        let mut hop = Hop {
            home: m.own_procs_files()?,
            parked: None,
            oom_score_adj,
            lowered: false,
            seq: 0,
        };
        hop.leave(m)?;
        hop.lowered = match write_oom_score_adj(PARKED_OOM_SCORE_ADJ) {
            Ok(()) => true,
            Err(e) => {
                // No CAP_SYS_RESOURCE (a container): the sandbox's init holds
                // the plugin back until the launcher is out (see the module doc).
                tracing::debug!(error = %e, "launcher oom_score_adj stays");
                false
            }
        };
        Ok(hop)
    }

    /// The caller's `oom_score_adj` from before parking, when it was lowered:
    /// what a child forked while parked must restore.
    pub fn original_oom_score_adj(&self) -> Option<i32> {
        self.lowered.then_some(self.oom_score_adj)
    }

    /// `true` while the caller is in a parking cgroup.
    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Turn the parking cgroup into sandbox `name` with `limits` (rename, then
    /// limit writes). The caller is still inside: `limits.pids_max` must count
    /// it, and [`Hop::leave`] must follow right after the fork.
    ///
    /// # Errors
    /// Not parked, or the rename or a limit write failed; the cgroup the
    /// caller is in then stays parked (call [`Hop::unpark`]).
    pub fn take(
        &mut self,
        m: &CgroupManager,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<SandboxCgroup, CgroupError> {
        let Some(mut cg) = self.parked.take() else {
            return Err(CgroupError::NoHierarchy(
                "the launcher is not parked".into(),
            ));
        };
        let applied = m
            .rename(&mut cg, name)
            .and_then(|()| m.set_limits(&cg, limits));
        match applied {
            Ok(()) => Ok(cg),
            Err(e) => {
                self.parked = Some(cg);
                Err(e)
            }
        }
    }

    /// Move the caller into a fresh parking cgroup (the slow write). On
    /// failure it goes home instead and the hop ends ([`Hop::is_parked`] is
    /// `false`).
    ///
    /// # Errors
    /// Creating or entering the next cgroup failed (the caller went home),
    /// or going home failed too (the caller may still be in the cgroup it
    /// was in: never freeze or kill that one).
    pub fn leave(&mut self, m: &CgroupManager) -> Result<(), CgroupError> {
        let name = format!("hop-{}-{}", std::process::id(), self.seq);
        self.seq += 1;
        let entered = m.create_unlimited(&name).and_then(|next| {
            match next.attach(std::process::id() as i32) {
                Ok(()) => Ok(next),
                Err(e) => {
                    // Possibly inside in some hierarchies: go home before
                    // `next` is dropped (its removal refuses to run on us).
                    let _ = self.go_home();
                    Err(e)
                }
            }
        });
        match entered {
            Ok(next) => {
                // The cgroup left behind is the sandbox's (or a parking
                // cgroup being replaced): dropping it here would remove it.
                if let Some(old) = self.parked.replace(next) {
                    drop(old);
                }
                Ok(())
            }
            Err(e) => {
                self.go_home()?;
                Err(e)
            }
        }
    }

    /// Move the caller back into its original cgroups; then the parked
    /// cgroup (empty now) is removed.
    fn go_home(&mut self) -> Result<(), CgroupError> {
        let me = std::process::id().to_string();
        for f in &self.home {
            fs::write(f, &me).map_err(|e| io_err(format!("move pid {me} into"), f, &e))?;
        }
        if let Some(cg) = self.parked.take()
            && let Err(e) = cg.remove()
        {
            tracing::warn!(error = %e, "removing the launcher's parking cgroup");
        }
        Ok(())
    }

    /// End the hop: back to the original cgroups and `oom_score_adj`, and
    /// remove the parking cgroup.
    ///
    /// # Errors
    /// A move or write failed.
    pub fn unpark(mut self) -> Result<(), CgroupError> {
        self.go_home()?;
        if self.lowered {
            write_oom_score_adj(self.oom_score_adj)?;
            self.lowered = false;
        }
        Ok(())
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        if self.parked.is_some() {
            if let Err(e) = self.go_home() {
                tracing::warn!(error = %e, "leaving the launcher's parking cgroup");
            }
            if self.lowered {
                let _ = write_oom_score_adj(self.oom_score_adj);
            }
        }
    }
}
