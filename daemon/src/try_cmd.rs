//! `hutchd try PLUGIN_DIR`: run a plugin directory once, in the foreground,
//! under exactly the production sandbox (SPEC §8).
//!
//! Until the API issue lands, the plugin runs without an API socket
//! (`HUTCH_SOCKET` is set but nothing listens there).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_sandbox::launcher::{LaunchError, Launcher};
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::spec::SandboxSpec;

use crate::manifest::{Exec, Manifest, ManifestError};

/// Exit status for a broken manifest or bad usage.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the sandbox could not be set up (as `env`/`docker` use).
pub const EXIT_SETUP: i32 = 125;

/// Default memory limit when the manifest sets none.
pub const DEFAULT_MEMORY_MAX: u64 = 512 << 20;
/// Default pids limit when the manifest sets none.
pub const DEFAULT_PIDS_MAX: u64 = 256;

/// Start of the uid/gid range reserved for plugins (`0x7e000000`, far above
/// any regular or system account and below the 2^31 limit of some tools).
pub const PLUGIN_ID_BASE: u32 = 0x7e00_0000;
/// Size of the reserved range (2^20 ids).
pub const PLUGIN_ID_RANGE: u32 = 1 << 20;

/// Arguments of `hutchd try`.
#[derive(Debug, Clone, clap::Args)]
pub struct TryArgs {
    /// The plugin directory (holding hutch-plugin.toml).
    pub plugin_dir: PathBuf,
    /// Write how the run ended as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Wall timeout (e.g. "2s", "1h"); overrides the manifest's.
    #[arg(long, value_name = "DUR", value_parser = crate::manifest::parse_duration)]
    pub timeout: Option<Duration>,
    /// Keep state (the plugin's /data) in this directory instead of a
    /// throw-away one.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Arguments passed to the plugin after the manifest's `args`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Why `try` could not run the plugin.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// The manifest is broken (exit 2).
    #[error("{dir}/hutch-plugin.toml: {source}")]
    Manifest {
        /// The plugin dir.
        dir: String,
        /// What is wrong, naming the key.
        source: ManifestError,
    },
    /// The plugin directory is unusable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The launcher failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Preparing the data dir or writing the report failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl TryError {
    /// The exit status `hutchd try` should use for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            TryError::Manifest { .. } | TryError::Usage(_) => EXIT_USAGE,
            _ => 1,
        }
    }
}

/// A stable, unprivileged uid (and gid of the same value) for a plugin id:
/// `PLUGIN_ID_BASE + fnv1a(id) % PLUGIN_ID_RANGE`, stepping on while the
/// number is taken by an account in `passwd` or a group in `group` (read from
/// `etc`, normally `/etc`). Never 0.
pub fn plugin_uid(id: &str, etc: &Path) -> u32 {
    plugin_uid_in(id, etc, PLUGIN_ID_BASE, PLUGIN_ID_RANGE, &|_| false)
}

/// As [`plugin_uid`] in the range `base..base+count`, also skipping numbers
/// for which `taken` is true (the registry's allocations).
pub fn plugin_uid_in(
    id: &str,
    etc: &Path,
    base: u32,
    count: u32,
    taken: &dyn Fn(u32) -> bool,
) -> u32 {
    let read = |file: &str| -> Vec<u32> {
        std::fs::read_to_string(etc.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let mut used = read("passwd");
    used.extend(read("group"));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let count = count.max(1);
    let mut off = (h % u64::from(count)) as u32;
    for _ in 0..count {
        let uid = base.saturating_add(off);
        if uid != 0 && !used.contains(&uid) && !taken(uid) {
            return uid;
        }
        off = (off + 1) % count;
    }
    base.max(1)
}

/// Build the sandbox spec `try` runs: the production defaults plus the
/// manifest. Returns the spec and, when the plugin wants `/data` and no
/// `--state` was given, the throw-away data dir to remove afterwards.
///
/// # Errors
/// The plugin dir or its manifest is unusable.
pub fn build_spec(
    args: &TryArgs,
) -> Result<(SandboxSpec, Manifest, Option<tempfile::TempDir>), TryError> {
    let dir = std::fs::canonicalize(&args.plugin_dir)
        .map_err(|e| TryError::Usage(format!("plugin dir {}: {e}", args.plugin_dir.display())))?;
    let manifest = Manifest::load(&dir).map_err(|source| TryError::Manifest {
        dir: dir.display().to_string(),
        source,
    })?;
    if let Exec::Relative(rel) = &manifest.exec {
        let host = dir.join(rel);
        if !host.is_file() {
            return Err(TryError::Usage(format!(
                "{}/hutch-plugin.toml: exec: {} is not a file in the plugin dir",
                dir.display(),
                rel.display()
            )));
        }
    }
    let uid = plugin_uid(&manifest.id, Path::new("/etc"));
    let mut config = crate::config::Config::default();
    // A parent cgroup of this run's own: a daemon's start-up sweep of its
    // parent never touches a `try`, nor one `try` another's; the launcher
    // removes it when the run ends.
    config.sandbox.cgroup_parent = format!("hutch-try-{}", std::process::id());
    let limits = crate::plugin_spec::resolve_limits(
        &manifest.resources,
        &config.limits,
        &crate::registry::LimitOverrides::default(),
    )
    .map_err(TryError::Usage)?;
    let instance = format!("try-{}", std::process::id());
    let mut scratch = None;
    let mut data_dir = None;
    if manifest.persistent_data {
        let data = match &args.state {
            Some(state) => state.join("data").join(&manifest.id),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("hutch-try-data-")
                    .tempdir()
                    .map_err(|source| TryError::Io {
                        op: "create",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                let p = t.path().to_owned();
                scratch = Some(t);
                p
            }
        };
        prepare_data_dir(&data, uid)?;
        data_dir = Some(data);
    }
    let mut spec = crate::plugin_spec::build(&crate::plugin_spec::SpecInput {
        manifest: &manifest,
        plugin_dir: dir.clone(),
        uid,
        instance: &instance,
        extra_args: &args.args,
        limits: &limits,
        sandbox_wall_timeout: args.timeout.or(manifest.resources.wall_timeout),
        data_dir,
        api_socket: None,
        config: &config,
    });
    // Run from a login shell, not a delegated systemd unit: the parent goes
    // at the root of each hierarchy.
    if let Some(c) = spec.cgroup.as_mut() {
        c.base = hutch_sandbox::cgroup::Placement::HierarchyRoot;
    }
    Ok((spec, manifest, scratch))
}

/// Create `/data`'s host dir, owned by the plugin, mode 0700.
fn prepare_data_dir(path: &Path, uid: u32) -> Result<(), TryError> {
    let io = |op, source| TryError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(|e| io("create", e))?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|e| io("chown", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod", e))
}

/// Run the plugin once: its stdout/stderr pass through, `hutch: ...` lines
/// on stderr say how it ended and what was denied. Returns the exit status
/// for `hutchd`: the plugin's, 128+N for signal N, 125 if the sandbox could
/// not be set up.
///
/// # Errors
/// The manifest or plugin dir is broken, the launcher failed, or the report
/// could not be written.
pub fn run(launcher: &mut Launcher, args: &TryArgs) -> Result<i32, TryError> {
    let (spec, _manifest, scratch) = build_spec(args)?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let outcome = launcher.run(&spec, &mut stdout, &mut stderr)?;
    drop(scratch);
    report(&outcome, &spec, args.report.as_deref(), &mut stderr)?;
    Ok(match outcome.setup_error {
        Some(_) => EXIT_SETUP,
        None => outcome.shell_status(),
    })
}

/// Print the `hutch: ...` lines and write the JSON report.
fn report(
    outcome: &Outcome,
    spec: &SandboxSpec,
    file: Option<&Path>,
    stderr: &mut dyn Write,
) -> Result<(), TryError> {
    for line in outcome.describe(&spec.limits) {
        let _ = writeln!(stderr, "hutch: {line}");
    }
    if let Some(path) = file {
        let json = serde_json::to_vec_pretty(outcome).map_err(|e| TryError::Io {
            op: "encode report",
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(path, json).map_err(|source| TryError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_uid_is_stable_in_range_and_skips_taken_ids() -> Result<(), std::io::Error> {
        let etc = tempfile::tempdir()?;
        std::fs::write(etc.path().join("passwd"), "root:x:0:0::/:/bin/sh\n")?;
        std::fs::write(etc.path().join("group"), "root:x:0:\n")?;
        let a = plugin_uid("org.example.a", etc.path());
        assert_eq!(a, plugin_uid("org.example.a", etc.path()));
        assert!((PLUGIN_ID_BASE..PLUGIN_ID_BASE + PLUGIN_ID_RANGE).contains(&a));
        assert_ne!(a, plugin_uid("org.example.b", etc.path()));
        std::fs::write(
            etc.path().join("passwd"),
            format!("root:x:0:0::/:/bin/sh\nx:x:{a}:1::/:/bin/sh\n"),
        )?;
        let moved = plugin_uid("org.example.a", etc.path());
        assert_ne!(moved, a);
        assert!((PLUGIN_ID_BASE..PLUGIN_ID_BASE + PLUGIN_ID_RANGE).contains(&moved));
        Ok(())
    }
}
