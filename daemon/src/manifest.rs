//! `hutch-plugin.toml` (SPEC §4): parsed strictly, validated, every error
//! naming the key it is about.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// File name of the manifest at the root of a plugin directory.
pub const MANIFEST_FILE: &str = "hutch-plugin.toml";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Longest plugin id.
pub const MAX_ID_LEN: usize = 128;
/// Host path prefixes a manifest may never name (`exec`, `read_only`).
pub const FORBIDDEN_PREFIXES: &[&str] = hutch_sandbox::spec::FORBIDDEN_PREFIXES;
/// The scopes a plugin may request (SPEC §6).
pub const SCOPES: &[&str] = &[
    "data:read",
    "data:write",
    "data:delete",
    "datasets:create",
    "tasks:spawn",
];

/// A manifest problem.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("{path}: larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge {
        /// The manifest path.
        path: PathBuf,
    },
    /// Not TOML, a missing or unknown key, or a value of the wrong type (the
    /// message names the key).
    #[error("{0}")]
    Syntax(String),
    /// A key has a value the spec forbids.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key: `resources.memory_max`, `filesystem.read_only[1]`.
        key: String,
        /// Why.
        reason: String,
    },
}

impl ManifestError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: String,
    version: String,
    exec: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    filesystem: RawFilesystem,
}

/// A task action the plugin offers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Action name.
    pub name: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    memory_max: Option<SizeValue>,
    cpu_max: Option<f64>,
    pids_max: Option<i64>,
    tmp_size: Option<SizeValue>,
    wall_timeout: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    #[serde(default)]
    read_only: Vec<String>,
    #[serde(default)]
    persistent_data: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(i64),
    Text(String),
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exec {
    /// Relative to the plugin directory (`/plugin/...` inside).
    Relative(PathBuf),
    /// An absolute host path (`/usr/bin/python3`), seen at the same path.
    Absolute(PathBuf),
}

impl Exec {
    /// The path inside the sandbox.
    pub fn in_sandbox(&self) -> PathBuf {
        match self {
            Exec::Relative(p) => Path::new("/plugin").join(p),
            Exec::Absolute(p) => p.clone(),
        }
    }
}

/// `[resources]`; `None` = daemon default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Bytes.
    pub memory_max: Option<u64>,
    /// CPUs.
    pub cpu_max: Option<f64>,
    /// Tasks.
    pub pids_max: Option<u64>,
    /// Bytes of the private `/tmp`.
    pub tmp_size: Option<u64>,
    /// Per-task wall timeout; `Some(Duration::ZERO)` = explicitly none.
    pub wall_timeout: Option<Duration>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Reverse-DNS id.
    pub id: String,
    /// Semantic version.
    pub version: semver::Version,
    /// Program to run.
    pub exec: Exec,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment (no `HUTCH_*`).
    pub env: BTreeMap<String, String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Offered actions.
    pub actions: Vec<Action>,
    /// Requested resources.
    pub resources: Resources,
    /// Extra read-only host paths.
    pub read_only: Vec<PathBuf>,
    /// Whether `/data` is the plugin's persistent private dir.
    pub persistent_data: bool,
}

impl Manifest {
    /// Read and validate `DIR/hutch-plugin.toml`.
    ///
    /// # Errors
    /// The file is missing, too large, or invalid (see [`Manifest::parse`]).
    pub fn load(plugin_dir: &Path) -> Result<Self, ManifestError> {
        let path = plugin_dir.join(MANIFEST_FILE);
        let read_err = |source| ManifestError::Read {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(read_err)?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        Self::parse(&text)
    }

    /// Parse and validate manifest text.
    ///
    /// # Errors
    /// Unknown or missing keys, wrong types, a bad id, version, path, size,
    /// duration, scope or environment name; the error names the key.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(syntax_message(&e, text)))?;
        check_id(&raw.id)?;
        let version = semver::Version::parse(&raw.version).map_err(|e| {
            ManifestError::invalid(
                "version",
                format!("{:?} is not a semantic version: {e}", raw.version),
            )
        })?;
        let exec = parse_exec(&raw.exec)?;
        for (i, a) in raw.args.iter().enumerate() {
            if a.contains('\0') {
                return Err(ManifestError::invalid(
                    format!("args[{i}]"),
                    "contains a NUL byte",
                ));
            }
        }
        for (k, v) in &raw.env {
            let key = format!("env.{k}");
            if k.starts_with("HUTCH_") {
                return Err(ManifestError::invalid(key, "HUTCH_* names are reserved"));
            }
            if k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(ManifestError::invalid(
                    key,
                    "not a valid environment variable name",
                ));
            }
            if v.contains('\0') {
                return Err(ManifestError::invalid(key, "contains a NUL byte"));
            }
        }
        for (i, s) in raw.scopes.iter().enumerate() {
            if !SCOPES.contains(&s.as_str()) {
                return Err(ManifestError::invalid(
                    format!("scopes[{i}]"),
                    format!("unknown scope {s:?} (known: {})", SCOPES.join(", ")),
                ));
            }
        }
        for (i, a) in raw.actions.iter().enumerate() {
            if a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ManifestError::invalid(
                    format!("actions[{i}].name"),
                    "must be [A-Za-z0-9_-]+",
                ));
            }
        }
        let resources = parse_resources(&raw.resources)?;
        let mut read_only = Vec::new();
        for (i, p) in raw.filesystem.read_only.iter().enumerate() {
            read_only.push(check_host_path(&format!("filesystem.read_only[{i}]"), p)?);
        }
        Ok(Self {
            id: raw.id,
            version,
            exec,
            args: raw.args,
            env: raw.env,
            scopes: raw.scopes,
            actions: raw.actions,
            resources,
            read_only,
            persistent_data: raw.filesystem.persistent_data,
        })
    }
}

/// toml's message on one line, led by the key it is about: toml names
/// unknown and missing fields itself ("unknown field `colour`"); for a bad
/// value the key is taken from the line the error points at.
fn syntax_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return msg };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let qualify = |k: &str| match &section {
        Some(sec) => format!("{sec}.{k}"),
        None => k.to_string(),
    };
    match key {
        Some(k) if !msg.contains('`') => format!("{}: {msg} (line {line_no})", qualify(k)),
        _ => match &section {
            Some(sec) => format!("[{sec}]: {msg} (line {line_no})"),
            None => format!("{msg} (line {line_no})"),
        },
    }
}

fn check_id(id: &str) -> Result<(), ManifestError> {
    let bad = |reason: &str| ManifestError::invalid("id", format!("{id:?} {reason}"));
    if id.len() > MAX_ID_LEN {
        return Err(bad("is longer than 128 characters"));
    }
    let labels: Vec<&str> = id.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("is not reverse-DNS ([a-z0-9-]+(.[a-z0-9-]+)+)"));
    }
    for l in labels {
        if l.is_empty()
            || !l
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad("is not reverse-DNS ([a-z0-9-]+(.[a-z0-9-]+)+)"));
        }
    }
    Ok(())
}

fn has_dot_components(p: &Path) -> bool {
    p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.to_string_lossy().split('/').any(|s| s == "..")
}

fn forbidden(p: &Path) -> Option<&'static str> {
    FORBIDDEN_PREFIXES
        .iter()
        .copied()
        .find(|f| p.starts_with(f))
}

/// An absolute host path without `..` and outside the forbidden prefixes.
fn check_host_path(key: &str, s: &str) -> Result<PathBuf, ManifestError> {
    let p = PathBuf::from(s);
    if s.contains('\0') {
        return Err(ManifestError::invalid(key, "contains a NUL byte"));
    }
    if !p.is_absolute() {
        return Err(ManifestError::invalid(
            key,
            format!("{s:?} is not an absolute path"),
        ));
    }
    if has_dot_components(&p) {
        return Err(ManifestError::invalid(
            key,
            format!("{s:?} contains '..' or '.'"),
        ));
    }
    if p == Path::new("/") {
        return Err(ManifestError::invalid(
            key,
            "\"/\" would expose the whole host",
        ));
    }
    if let Some(f) = forbidden(&p) {
        return Err(ManifestError::invalid(
            key,
            format!("{s:?} is under {f}, which no plugin may see"),
        ));
    }
    Ok(p)
}

fn parse_exec(s: &str) -> Result<Exec, ManifestError> {
    if s.is_empty() {
        return Err(ManifestError::invalid("exec", "is empty"));
    }
    if s.starts_with('/') {
        return check_host_path("exec", s).map(Exec::Absolute);
    }
    let p = PathBuf::from(s);
    if s.contains('\0') {
        return Err(ManifestError::invalid("exec", "contains a NUL byte"));
    }
    if has_dot_components(&p) {
        return Err(ManifestError::invalid(
            "exec",
            format!("{s:?} contains '..' or '.' (must stay inside the plugin dir)"),
        ));
    }
    Ok(Exec::Relative(p))
}

fn parse_resources(r: &RawResources) -> Result<Resources, ManifestError> {
    let size = |key: &str, v: &Option<SizeValue>| -> Result<Option<u64>, ManifestError> {
        match v {
            None => Ok(None),
            Some(SizeValue::Bytes(n)) => u64::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| ManifestError::invalid(key, format!("{n} is not a positive size"))),
            Some(SizeValue::Text(t)) => parse_size(t)
                .map(Some)
                .map_err(|reason| ManifestError::invalid(key, reason)),
        }
    };
    let cpu_max = match r.cpu_max {
        Some(c) if !(c.is_finite() && c > 0.0 && c <= 4096.0) => {
            return Err(ManifestError::invalid(
                "resources.cpu_max",
                format!("{c} is not a CPU count > 0"),
            ));
        }
        c => c,
    };
    let pids_max = match r.pids_max {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            return Err(ManifestError::invalid(
                "resources.pids_max",
                format!("{n} is not a positive count"),
            ));
        }
    };
    let wall_timeout = match &r.wall_timeout {
        None => None,
        Some(DurationValue::Seconds(n)) => {
            Some(Duration::from_secs(u64::try_from(*n).map_err(|_| {
                ManifestError::invalid("resources.wall_timeout", format!("{n} is negative"))
            })?))
        }
        Some(DurationValue::Text(t)) => Some(
            parse_duration(t)
                .map_err(|reason| ManifestError::invalid("resources.wall_timeout", reason))?,
        ),
    };
    Ok(Resources {
        memory_max: size("resources.memory_max", &r.memory_max)?,
        cpu_max,
        pids_max,
        tmp_size: size("resources.tmp_size", &r.tmp_size)?,
        wall_timeout,
    })
}

/// `"512M"` -> 536870912. Units K, M, G, T (powers of 1024), optionally
/// followed by `B` or `iB`; a bare number is bytes.
///
/// # Errors
/// Not a number with a known unit, zero, or too large.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"512M\""))?;
    let mult: u64 = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(format!("{s:?} has an unknown unit (use K, M, G or T)")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err(format!("{s:?} is zero"));
    }
    Ok(v)
}

/// `"1h"`, `"90s"`, `"2m 30s"` (humantime); `"0"` = no timeout.
///
/// # Errors
/// Not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"1h\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "org.example.threshold"
version = "1.2.0"
exec = "bin/threshold"
args = ["main.py"]
env = { OMP_NUM_THREADS = "1" }
scopes = ["data:read", "data:write"]

[[actions]]
name = "threshold"
description = "Binary threshold of an image"

[resources]
memory_max = "512M"
cpu_max = 1.0
pids_max = 64
tmp_size = "64M"
wall_timeout = "1h"

[filesystem]
read_only = ["/usr/lib/python3", "/etc/ssl/certs"]
persistent_data = false
"#;

    /// The error text for `GOOD` with `from` replaced by `to`.
    fn error_for(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "fixture lacks {from:?}");
        match Manifest::parse(&GOOD.replacen(from, to, 1)) {
            Ok(m) => panic!("accepted {to:?}: {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn spec_example_parses() -> Result<(), ManifestError> {
        let m = Manifest::parse(GOOD)?;
        assert_eq!(m.id, "org.example.threshold");
        assert_eq!(m.exec.in_sandbox(), PathBuf::from("/plugin/bin/threshold"));
        assert_eq!(m.resources.memory_max, Some(512 << 20));
        assert_eq!(m.resources.wall_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(m.read_only.len(), 2);
        Ok(())
    }

    #[test]
    fn unknown_keys_are_rejected_naming_them() {
        assert!(error_for("args = ", "colour = \"red\"\nargs = ").contains("colour"));
        assert!(error_for("pids_max = 64", "pids_max = 64\nswap = 1").contains("swap"));
        assert!(
            error_for(
                "persistent_data = false",
                "persistent_data = false\nwritable = []"
            )
            .contains("writable")
        );
        assert!(error_for("description = ", "color = 1\ndescription = ").contains("color"));
    }

    #[test]
    fn missing_and_mistyped_keys_name_the_key() {
        assert!(error_for("id = \"org.example.threshold\"\n", "").contains("id"));
        assert!(
            error_for("pids_max = 64", "pids_max = \"many\"").starts_with("resources.pids_max: ")
        );
    }

    #[test]
    fn bad_ids_are_rejected() {
        for bad in [
            "threshold",
            "Org.Example",
            "org..x",
            "org.ex_ample",
            ".org.x",
            "org.x.",
        ] {
            let e = error_for("\"org.example.threshold\"", &format!("{bad:?}"));
            assert!(e.starts_with("id: "), "{bad}: {e}");
        }
        let long = format!("\"org.{}\"", "a".repeat(130));
        assert!(error_for("\"org.example.threshold\"", &long).starts_with("id: "));
    }

    #[test]
    fn bad_version_is_rejected() {
        assert!(error_for("\"1.2.0\"", "\"1.2\"").starts_with("version: "));
    }

    #[test]
    fn exec_escaping_the_plugin_dir_is_rejected() {
        assert!(error_for("\"bin/threshold\"", "\"../bin/sh\"").starts_with("exec: "));
        assert!(error_for("\"bin/threshold\"", "\"bin/../../x\"").starts_with("exec: "));
        assert!(error_for("\"bin/threshold\"", "\"/usr/../etc/x\"").starts_with("exec: "));
        assert!(error_for("\"bin/threshold\"", "\"/proc/self/exe\"").starts_with("exec: "));
        assert!(error_for("\"bin/threshold\"", "\"\"").starts_with("exec: "));
    }

    #[test]
    fn forbidden_read_only_paths_are_rejected() {
        for bad in [
            "/proc",
            "/sys/kernel",
            "/dev/sda",
            "/run/hutch",
            "/var/lib/hutch/hutch.db",
            "relative/x",
            "/usr/../etc",
            "/",
        ] {
            let e = error_for("\"/etc/ssl/certs\"", &format!("{bad:?}"));
            assert!(e.starts_with("filesystem.read_only[1]: "), "{bad}: {e}");
        }
    }

    #[test]
    fn reserved_env_and_unknown_scopes_are_rejected() {
        assert!(error_for("OMP_NUM_THREADS", "HUTCH_SOCKET").starts_with("env.HUTCH_SOCKET: "));
        assert!(error_for("OMP_NUM_THREADS", "\"A=B\"").starts_with("env.A=B: "));
        assert!(error_for("\"data:write\"", "\"root:all\"").starts_with("scopes[1]: "));
    }

    #[test]
    fn bad_sizes_and_durations_are_rejected() {
        assert!(error_for("\"512M\"", "\"512Q\"").starts_with("resources.memory_max: "));
        assert!(error_for("\"512M\"", "\"0\"").starts_with("resources.memory_max: "));
        assert!(error_for("\"64M\"", "\"-1\"").starts_with("resources.tmp_size: "));
        assert!(error_for("\"1h\"", "\"soon\"").starts_with("resources.wall_timeout: "));
        assert!(error_for("cpu_max = 1.0", "cpu_max = -1.0").starts_with("resources.cpu_max: "));
        assert!(error_for("pids_max = 64", "pids_max = 0").starts_with("resources.pids_max: "));
    }

    #[test]
    fn sizes_and_durations_parse() -> Result<(), String> {
        assert_eq!(parse_size("512M")?, 512 << 20);
        assert_eq!(parse_size("1G")?, 1 << 30);
        assert_eq!(parse_size("64KiB")?, 64 << 10);
        assert_eq!(parse_size("4096")?, 4096);
        assert_eq!(parse_duration("1h")?, Duration::from_secs(3600));
        assert_eq!(parse_duration("0")?, Duration::ZERO);
        Ok(())
    }
}
