//! The daemon config, `hutchd.toml` (SPEC §3).
//!
//! Unknown keys and bad values are errors that name the key and line; a
//! missing default config file means "all defaults", a missing file named
//! with `--config` is an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where `hutchd` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hutch/hutchd.toml";

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
    /// `[sandbox]`: minimum host protection and sandbox defaults.
    pub sandbox: SandboxConfig,
}

/// `[sandbox]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Lowest Landlock ABI Hutch accepts; below it plugins are refused.
    pub landlock_min_abi: u32,
    /// Refuse to run without seccomp user notification (named denials).
    pub require_seccomp_notify: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            landlock_min_abi: 1,
            require_seccomp_notify: false,
        }
    }
}

impl Config {
    /// Parses config text; `path` only labels errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the offending key and its line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })
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
        match std::fs::read_to_string(&path) {
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
}
