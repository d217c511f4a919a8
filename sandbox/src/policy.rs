//! The two policy layers owned by other modules, seen from the spawn:
//! seccomp ([`crate::seccomp`]) and Landlock ([`crate::landlock`]).
//!
//! Both are prepared in the parent (BPF compiled, rules listed) and applied
//! in the plugin process as the last steps before `execve`: Landlock first
//! (it needs `landlock_*` syscalls and opens the rule paths), seccomp last.

use std::os::fd::{OwnedFd, RawFd};

use crate::error::StepError;
use crate::outcome::LandlockReport;
use crate::seccomp::{self, CompiledFilters, SeccompConfig};
use crate::spec::SandboxSpec;

/// Why a policy could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The seccomp profile (with the spec's additions) does not compile.
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Policies ready to apply in the child.
#[derive(Debug)]
pub struct Prepared {
    seccomp: CompiledFilters,
}

impl Prepared {
    /// Compile the seccomp filters and list the Landlock rules.
    ///
    /// # Errors
    /// The seccomp profile does not compile.
    pub fn new(spec: &SandboxSpec) -> Result<Self, PolicyError> {
        let config = SeccompConfig {
            additions: spec.seccomp.additions.clone(),
            notify: spec.seccomp.notify,
        };
        Ok(Self {
            seccomp: seccomp::compile(&config)?,
        })
    }

    /// Descriptors the child must keep (none yet).
    pub fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

/// Step: Landlock. Not wired yet: reports `None`.
///
/// # Errors
/// Landlock could not be enforced at the configured minimum ABI.
pub fn apply_landlock(_p: &Prepared) -> Result<Option<LandlockReport>, StepError> {
    Ok(None)
}

/// Step: seccomp, the last one before `execve`. Returns the user
/// notification listener when notification is on.
///
/// # Errors
/// The filters could not be installed.
pub fn apply_seccomp(p: &Prepared) -> Result<Option<OwnedFd>, StepError> {
    p.seccomp
        .apply()
        .map_err(|e| StepError::other("install seccomp filter", e.to_string()))
}
