//! The two policy layers owned by other modules, seen from the spawn:
//! seccomp ([`crate::seccomp`]) and Landlock ([`crate::landlock`]).
//!
//! Both are prepared in the parent (BPF compiled, rules listed) and applied
//! in the plugin process as the last steps before `execve`: Landlock first
//! (it needs `landlock_*` syscalls and opens the rule paths), seccomp last.

use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::StepError;
use crate::landlock::{self, LandlockConfig, LandlockRules};
use crate::mounts::{DEVICES, SYSTEM_TREES};
use crate::outcome::LandlockReport;
use crate::seccomp::{self, CompiledFilters, SeccompConfig};
use crate::spec::{API_SOCKET_PATH, SandboxSpec};

/// Why a policy could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The seccomp profile (with the spec's additions) does not compile.
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Policies ready to apply in the child.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    seccomp: CompiledFilters,
    landlock_rules: LandlockRules,
    landlock_config: LandlockConfig,
}

/// The Landlock rules matching the mount tree: system trees and `/plugin`
/// read+execute; `/etc`, `/proc` and the manifest's `read_only` paths read
/// only; `/tmp`, `/dev/shm`, `/data`, the devices and the API socket's
/// directory read and write (never execute).
pub fn landlock_rules(spec: &SandboxSpec) -> LandlockRules {
    let mut read_exec: Vec<PathBuf> = SYSTEM_TREES
        .iter()
        .filter(|t| Path::new(t).exists())
        .map(PathBuf::from)
        .collect();
    read_exec.push(PathBuf::from("/plugin"));
    let mut read_only = vec![PathBuf::from("/etc"), PathBuf::from("/proc")];
    read_only.extend(spec.read_only.iter().cloned());
    let mut read_write = vec![PathBuf::from("/tmp"), PathBuf::from("/dev/shm")];
    read_write.extend(DEVICES.iter().map(|d| PathBuf::from(format!("/dev/{d}"))));
    if spec.data_dir.is_some() {
        read_write.push(PathBuf::from("/data"));
    }
    if let Some(dir) = spec
        .api_socket
        .as_ref()
        .and(Path::new(API_SOCKET_PATH).parent())
    {
        read_write.push(dir.to_owned());
    }
    LandlockRules {
        read_exec,
        read_only,
        read_write,
    }
}

/// Compiled seccomp filters by configuration: the launcher compiles each
/// distinct profile (default + approved additions) once.
#[derive(Debug, Default)]
pub struct SeccompCache {
    compiled: std::collections::HashMap<(Vec<String>, bool), CompiledFilters>,
}

impl SeccompCache {
    /// The filters for `config`, compiled on first use.
    ///
    /// # Errors
    /// The profile with these additions does not compile.
    pub fn get(&mut self, config: &SeccompConfig) -> Result<CompiledFilters, PolicyError> {
        let key = (config.additions.clone(), config.notify);
        if let Some(f) = self.compiled.get(&key) {
            return Ok(f.clone());
        }
        let f = seccomp::compile(config)?;
        if self.compiled.len() >= 64 {
            self.compiled.clear();
        }
        self.compiled.insert(key, f.clone());
        Ok(f)
    }
}

impl Prepared {
    /// Compile the seccomp filters (through `cache`) and list the Landlock
    /// rules.
    ///
    /// # Errors
    /// The seccomp profile does not compile.
    pub fn new(spec: &SandboxSpec, cache: &mut SeccompCache) -> Result<Self, PolicyError> {
        let config = SeccompConfig {
            additions: spec.seccomp.additions.clone(),
            notify: spec.seccomp.notify,
        };
        Ok(Self {
            seccomp: cache.get(&config)?,
            landlock_rules: landlock_rules(spec),
            landlock_config: LandlockConfig::from(&spec.landlock),
        })
    }

    /// Descriptors the child must keep (none yet).
    pub fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

/// Step: Landlock, restricted to the in-sandbox paths (after `pivot_root`).
///
/// # Errors
/// Landlock could not be enforced at the configured minimum ABI, or a rule
/// path could not be opened.
pub fn apply_landlock(p: &Prepared) -> Result<Option<LandlockReport>, StepError> {
    landlock::restrict_self(&p.landlock_rules, &p.landlock_config)
        .map(|status| Some(status.into()))
        .map_err(|e| StepError::other("landlock", e.to_string()))
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
