//! The daemon config, `hutchd.toml` (SPEC §3).
//!
//! Unknown keys and bad values are errors that name the key and line; a
//! missing default config file means "all defaults", a missing file named
//! with `--config` is an error. Every key and its default is listed in
//! `systemd/hutchd.toml` and `docs/daemon.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where `hutchd` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hutch/hutchd.toml";

/// Largest config file accepted, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Errors loading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid config; the message names the key and line.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key and line.
        message: String,
    },
}

/// The whole daemon config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[paths]`: state, runtime and control socket locations.
    pub paths: PathsConfig,
    /// `[sandbox]`: minimum host protection and sandbox defaults.
    pub sandbox: SandboxConfig,
    /// `[limits]`: default plugin resource limits (a manifest may ask for
    /// less, never more; an admin may lower them per plugin).
    pub limits: LimitsConfig,
    /// `[api]`: per-instance API socket limits (rate, concurrency, sizes).
    pub api: hutch_api::limits::Limits,
    /// `[supervisor]`: restart policy, crash loops, watchdog, stop grace.
    pub supervisor: SupervisorConfig,
    /// `[logs]`: plugin stdout/stderr capture bounds.
    pub logs: LogsConfig,
    /// `[retention]`: how long old object versions and audit events stay.
    pub retention: RetentionConfig,
    /// `[store]`: the built-in store's free-space reserve.
    pub store: StoreSection,
    /// `[tasks]`: task limits.
    pub tasks: TasksConfig,
}

/// `[paths]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// State: `hutch.db`, `blobs/`, `plugins/`, `data/`.
    pub state_dir: PathBuf,
    /// Runtime: `plugins/<instance>/api.sock`, the control socket.
    pub runtime_dir: PathBuf,
    /// The control socket; default `<runtime_dir>/control.sock`.
    pub control_socket: Option<PathBuf>,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            state_dir: PathBuf::from("/var/lib/hutch"),
            runtime_dir: PathBuf::from("/run/hutch"),
            control_socket: None,
        }
    }
}

impl PathsConfig {
    /// The control socket path.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.runtime_dir.join("control.sock"))
    }

    /// The directory holding one sub-directory per running instance.
    pub fn instances_dir(&self) -> PathBuf {
        self.runtime_dir.join("plugins")
    }

    /// The database file.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("hutch.db")
    }

    /// Installed plugin copies.
    pub fn plugins_dir(&self) -> PathBuf {
        self.state_dir.join("plugins")
    }

    /// Plugins' persistent private dirs.
    pub fn data_dir(&self) -> PathBuf {
        self.state_dir.join("data")
    }

    /// Content blobs of the built-in store.
    pub fn blobs_dir(&self) -> PathBuf {
        self.state_dir.join("blobs")
    }
}

/// Upper bound of `[sandbox] spawn_pool` (each stub holds a cgroup and a set
/// of namespaces while it waits).
pub const MAX_SPAWN_POOL: usize = 16;

/// `[sandbox]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Lowest Landlock ABI Hutch accepts; below it plugins are refused.
    pub landlock_min_abi: u32,
    /// Refuse to run without seccomp user notification (named denials).
    pub require_seccomp_notify: bool,
    /// Syscalls added to the default seccomp allowlist for every plugin
    /// (advanced; each widens the kernel attack surface).
    pub seccomp_additions: Vec<String>,
    /// Hutch's parent cgroup, relative to the daemon's cgroup (v2) or each
    /// hierarchy root (v1). Everything under it belongs to this daemon and
    /// is swept at start.
    pub cgroup_parent: String,
    /// Root of the cgroup file systems.
    pub cgroup_root: PathBuf,
    /// Also give each plugin a user namespace (optional hardening).
    pub user_namespace: bool,
    /// First uid (and gid) of the range plugin uids are allocated from.
    pub uid_base: u32,
    /// Size of that range.
    pub uid_count: u32,
    /// Pre-warmed sandbox stubs the launcher keeps ready (cgroup joined,
    /// namespaces and the spec-independent root built ahead; each used
    /// once); 0 = every spawn is cold. See docs/sandbox.md.
    pub spawn_pool: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            landlock_min_abi: 1,
            require_seccomp_notify: false,
            seccomp_additions: Vec::new(),
            cgroup_parent: "hutch".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            user_namespace: false,
            uid_base: crate::try_cmd::PLUGIN_ID_BASE,
            uid_count: crate::try_cmd::PLUGIN_ID_RANGE,
            spawn_pool: hutch_sandbox::launcher::DEFAULT_POOL_SIZE,
        }
    }
}

/// `[limits]` section: defaults and ceilings of plugin resources.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Memory per plugin (`"512M"`).
    #[serde(deserialize_with = "de_size")]
    pub memory_max: u64,
    /// CPUs per plugin.
    pub cpu_max: f64,
    /// Tasks (processes and threads) per plugin.
    pub pids_max: u64,
    /// Private `/tmp` size.
    #[serde(deserialize_with = "de_size")]
    pub tmp_size: u64,
    /// Per-task wall timeout (`"1h"`; `"0"` = none).
    #[serde(deserialize_with = "de_duration")]
    pub wall_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_max: crate::try_cmd::DEFAULT_MEMORY_MAX,
            cpu_max: 1.0,
            pids_max: crate::try_cmd::DEFAULT_PIDS_MAX,
            tmp_size: hutch_sandbox::spec::DEFAULT_TMP_SIZE,
            wall_timeout: Duration::from_secs(3600),
        }
    }
}

/// When a plugin whose instance ended is started again.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart by itself.
    Never,
    /// Restart after a failure (non-zero exit, signal, watchdog kill, setup
    /// error); not after a clean exit 0.
    OnFailure,
    /// Restart after any end.
    Always,
}

/// `[supervisor]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Restart policy of enabled plugins.
    pub restart: RestartPolicy,
    /// First restart delay; doubles per consecutive failure.
    #[serde(deserialize_with = "de_duration")]
    pub backoff_initial: Duration,
    /// Longest restart delay.
    #[serde(deserialize_with = "de_duration")]
    pub backoff_max: Duration,
    /// A run that lasted this long resets the backoff.
    #[serde(deserialize_with = "de_duration")]
    pub backoff_reset_after: Duration,
    /// Failures within `crash_loop_window` that disable the plugin.
    pub crash_loop_failures: u32,
    /// The crash-loop window.
    #[serde(deserialize_with = "de_duration")]
    pub crash_loop_window: Duration,
    /// Watchdog: a plugin that has sent a heartbeat, or that runs a task,
    /// and then shows no sign of life (heartbeat, task event) for longer
    /// than this is killed (and restarted by the policy). An idle plugin
    /// that never heartbeats is left alone. `"0"` disables the watchdog.
    #[serde(deserialize_with = "de_duration")]
    pub watchdog_timeout: Duration,
    /// How long a task waits for the plugin's agent to connect.
    #[serde(deserialize_with = "de_duration")]
    pub agent_connect_timeout: Duration,
    /// SIGTERM-to-kill grace when stopping a plugin.
    #[serde(deserialize_with = "de_duration")]
    pub stop_grace: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            restart: RestartPolicy::OnFailure,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_reset_after: Duration::from_secs(60),
            crash_loop_failures: 5,
            crash_loop_window: Duration::from_secs(300),
            watchdog_timeout: Duration::from_secs(30),
            agent_connect_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// `[logs]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Lines kept per plugin (the ring behind `hutchctl plugin logs`).
    pub ring_lines: usize,
    /// Longest line kept; longer lines are cut and marked.
    pub max_line_bytes: usize,
    /// Sustained lines per second accepted per plugin; the excess is
    /// dropped and counted.
    pub lines_per_sec: u32,
    /// Burst above the sustained rate.
    pub burst_lines: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            ring_lines: 1000,
            max_line_bytes: 4096,
            lines_per_sec: 100,
            burst_lines: 500,
        }
    }
}

/// `[retention]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Non-current object versions older than this are removed.
    #[serde(deserialize_with = "de_duration")]
    pub keep_old_versions_for: Duration,
    /// Audit events older than this are purged (`"0"` = keep forever).
    #[serde(deserialize_with = "de_duration")]
    pub audit_keep_for: Duration,
    /// How often retention runs.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_old_versions_for: Duration::from_secs(30 * 24 * 3600),
            audit_keep_for: Duration::ZERO,
            interval: Duration::from_secs(3600),
        }
    }
}

/// `[store]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Bytes kept free on the filesystems of `blobs/` and `hutch.db`: a put,
    /// metadata change or new dataset that would leave less is refused
    /// (`RESOURCE_EXHAUSTED`, audited) and changes nothing (`"1G"`; `"0"` =
    /// no reserve).
    #[serde(deserialize_with = "de_size_or_zero")]
    pub min_free: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            min_free: hutch_api::store::DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// `[tasks]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Log lines kept per task.
    pub max_log_lines: usize,
    /// Outputs kept per task.
    pub max_outputs: usize,
    /// Largest `--args` JSON accepted.
    pub max_args_bytes: usize,
    /// Tasks queued or running at once, daemon-wide.
    pub max_active: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            max_log_lines: 1000,
            max_outputs: 256,
            max_args_bytes: 64 * 1024,
            max_active: 1024,
        }
    }
}

/// A number, or a text with a unit (`"512M"`, `"1h"`), as config values come.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    N(u64),
    S(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::N(0) => Err(serde::de::Error::custom("a size must not be zero")),
        NumberOrText::N(n) => Ok(n),
        NumberOrText::S(s) => crate::manifest::parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// A size as [`de_size`] takes it, or `0` / `"0"` (off).
fn de_size_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::N(n) => Ok(n),
        NumberOrText::S(s) if s.trim() == "0" => Ok(0),
        NumberOrText::S(s) => crate::manifest::parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::N(n) => Ok(Duration::from_secs(n)),
        NumberOrText::S(s) => crate::manifest::parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

impl Config {
    /// Parses config text; `path` only labels errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the offending key and its line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        c.validate().map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        Ok(c)
    }

    /// Checks values serde cannot: ranges and relations between keys.
    fn validate(&self) -> Result<(), String> {
        let s = &self.sandbox;
        if s.uid_base < 1000 || s.uid_count == 0 || s.uid_base.checked_add(s.uid_count).is_none() {
            return Err("sandbox.uid_base/uid_count: the range must start at 1000 or above and fit in 32 bits".into());
        }
        if s.spawn_pool > MAX_SPAWN_POOL {
            return Err(format!(
                "sandbox.spawn_pool: {} is too many pre-warmed stubs (at most {MAX_SPAWN_POOL})",
                s.spawn_pool
            ));
        }
        if s.cgroup_parent.is_empty()
            || s.cgroup_parent.starts_with('/')
            || s.cgroup_parent
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(
                "sandbox.cgroup_parent: must be a relative path without . or .. components".into(),
            );
        }
        for (k, p) in [
            ("paths.state_dir", &self.paths.state_dir),
            ("paths.runtime_dir", &self.paths.runtime_dir),
        ] {
            if !p.is_absolute() {
                return Err(format!("{k}: must be an absolute path"));
            }
        }
        if self
            .paths
            .control_socket
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err("paths.control_socket: must be an absolute path".into());
        }
        if !self.limits.cpu_max.is_finite() || self.limits.cpu_max <= 0.0 {
            return Err("limits.cpu_max: must be a positive number of CPUs".into());
        }
        if self.limits.pids_max == 0 {
            return Err("limits.pids_max: must be at least 1".into());
        }
        let sup = &self.supervisor;
        if sup.backoff_initial > sup.backoff_max {
            return Err(
                "supervisor.backoff_initial: must not exceed supervisor.backoff_max".into(),
            );
        }
        if sup.crash_loop_failures == 0 {
            return Err("supervisor.crash_loop_failures: must be at least 1".into());
        }
        if self.logs.ring_lines == 0 || self.logs.max_line_bytes < 16 {
            return Err("logs.ring_lines/max_line_bytes: must be at least 1 and 16".into());
        }
        if self.api.rate_per_sec.is_nan() || self.api.rate_per_sec <= 0.0 {
            return Err("api.rate_per_sec: must be positive".into());
        }
        Ok(())
    }

    /// Loads `path`, or the default path (where a missing file means all
    /// defaults) when `path` is `None`.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let read = std::fs::metadata(&path).and_then(|m| {
            if m.len() > MAX_CONFIG_BYTES {
                Err(std::io::Error::other(format!(
                    "larger than {MAX_CONFIG_BYTES} bytes"
                )))
            } else {
                std::fs::read_to_string(&path)
            }
        });
        match read {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// The minimum host protection this config demands.
    pub fn minimum(&self) -> hutch_sandbox::host::Minimum {
        hutch_sandbox::host::Minimum {
            landlock_abi: self.sandbox.landlock_min_abi,
            seccomp_notify: self.sandbox.require_seccomp_notify,
        }
    }
}

/// Turns a toml error into one line: "line N: message".
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[sandbox]\nlandlock_min_abi = 3\nlandlock_minimum = 4\n";
        let err = Config::parse(text, Path::new("h.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("landlock_minimum"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("h.toml"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse(
            "[sandbox]\nlandlock_min_abi = \"high\"\n",
            Path::new("h.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_default_path_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn every_section_parses_with_units_and_relations_are_checked() {
        let text = "[paths]\nstate_dir = \"/srv/hutch\"\nruntime_dir = \"/run/h\"\n\
            [limits]\nmemory_max = \"1G\"\nwall_timeout = \"0\"\n\
            [supervisor]\nrestart = \"always\"\nbackoff_initial = 2\nwatchdog_timeout = \"1m\"\n\
            [api]\nrate_per_sec = 10.0\n[logs]\nring_lines = 5\n[retention]\naudit_keep_for = \"90d\"\n";
        let c = Config::parse(text, Path::new("h.toml")).unwrap();
        assert_eq!(c.limits.memory_max, 1 << 30);
        assert!(c.limits.wall_timeout.is_zero());
        assert_eq!(c.supervisor.restart, RestartPolicy::Always);
        assert_eq!(c.supervisor.backoff_initial, Duration::from_secs(2));
        assert_eq!(
            c.paths.control_socket(),
            PathBuf::from("/run/h/control.sock")
        );
        assert_eq!(c.api.rate_per_sec, 10.0);
        let bad = |t: &str| {
            Config::parse(t, Path::new("h.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = bad("[supervisor]\nbackoff_initial = \"2m\"\nbackoff_max = \"1m\"\n");
        assert!(e.contains("supervisor.backoff_initial"), "{e}");
        let e = bad("[limits]\nmemory_max = \"lots\"\n");
        assert!(e.contains("line 2") && e.contains("lots"), "{e}");
        let e = bad("[paths]\nstate_dir = \"relative\"\n");
        assert!(e.contains("paths.state_dir"), "{e}");
        let e = bad("[sandbox]\ncgroup_parent = \"../escape\"\n");
        assert!(e.contains("sandbox.cgroup_parent"), "{e}");
        let e = bad("[sandbox]\nspawn_pool = 17\n");
        assert!(e.contains("sandbox.spawn_pool"), "{e}");
        let e = bad("[supervisor]\nrestart = \"sometimes\"\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_store_reserve_takes_sizes_and_zero() {
        let min_free = |t: &str| Config::parse(t, Path::new("h.toml")).map(|c| c.store.min_free);
        assert_eq!(Config::default().store.min_free, 1 << 30);
        assert_eq!(min_free("[store]\nmin_free = \"2G\"\n").unwrap(), 2 << 30);
        assert_eq!(min_free("[store]\nmin_free = \"0\"\n").unwrap(), 0);
        assert_eq!(min_free("[store]\nmin_free = 0\n").unwrap(), 0);
        let e = min_free("[store]\nmin_free = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("lots"), "{e}");
    }
}
