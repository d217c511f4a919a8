//! [`StepError`]: a failed child-side setup step, carried back to the parent.
//!
//! Every privileged call made while building a sandbox goes through
//! [`Errno`]-returning helpers and is turned into a `StepError` naming the
//! operation, the path (as seen by the step) and the errno, so `hutchd try`
//! can print `mount /plugin read-only: EPERM`. It is plain serde data because
//! it crosses the socketpair from the sandbox child to the launcher.

use std::fmt;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// One failed setup step: `"{op} {path}: {ERRNO}"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// What was attempted, lowercase: `mount read-only`, `pivot_root`.
    pub op: String,
    /// The path or object it was attempted on, if any.
    pub path: Option<String>,
    /// The raw errno (0 when the failure was not a syscall error).
    pub errno: i32,
    /// Extra words for non-errno failures (`parent died before setup`).
    pub detail: Option<String>,
}

impl StepError {
    /// An errno failure of `op` on `path`.
    pub fn sys(op: &str, path: impl fmt::Display, errno: Errno) -> Self {
        let path = path.to_string();
        Self {
            op: op.to_owned(),
            path: if path.is_empty() { None } else { Some(path) },
            errno: errno as i32,
            detail: None,
        }
    }

    /// A failure without an errno.
    pub fn other(op: &str, detail: impl Into<String>) -> Self {
        Self {
            op: op.to_owned(),
            path: None,
            errno: 0,
            detail: Some(detail.into()),
        }
    }

    /// The errno, if the failure was a syscall error.
    pub fn errno(&self) -> Option<Errno> {
        (self.errno != 0).then(|| Errno::from_raw(self.errno))
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if let Some(path) = &self.path {
            write!(f, " {path}")?;
        }
        if let Some(errno) = self.errno() {
            write!(f, ": {errno:?}")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StepError {}

/// Attach an operation and path to an errno result.
pub(crate) trait StepContext<T> {
    /// Map an `Errno` into a [`StepError`] naming `op` and `path`.
    fn step(self, op: &str, path: impl fmt::Display) -> Result<T, StepError>;
}

impl<T> StepContext<T> for Result<T, Errno> {
    fn step(self, op: &str, path: impl fmt::Display) -> Result<T, StepError> {
        self.map_err(|e| StepError::sys(op, path, e))
    }
}

impl<T> StepContext<T> for std::io::Result<T> {
    fn step(self, op: &str, path: impl fmt::Display) -> Result<T, StepError> {
        self.map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
            StepError::sys(op, path, errno)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_operation_path_and_errno() {
        let e = StepError::sys("mount read-only", "/plugin", Errno::EPERM);
        assert_eq!(e.to_string(), "mount read-only /plugin: EPERM");
        let e = StepError::other("pdeathsig", "parent died before setup");
        assert_eq!(e.to_string(), "pdeathsig: parent died before setup");
    }
}
