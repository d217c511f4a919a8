//! The plugin registry: installed plugins, their versions, grants, limits
//! and uids, in `hutch.db` (migration `api/migrations/0100_registry.sql`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::Action;
use crate::supervisor::RuntimeStatus;

/// What `hutchctl plugin install DIR` (and `upgrade`) asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The plugin directory on the daemon's host (holding
    /// `hutch-plugin.toml`); read by the daemon as root.
    pub dir: PathBuf,
    /// Scopes to grant: each must be requested by the manifest. `None` on
    /// install grants nothing; on upgrade keeps the previous grants (only
    /// those still requested).
    pub grant: Option<Vec<String>>,
    /// Limits to lower below the manifest's and the daemon's defaults.
    pub limits: LimitOverrides,
    /// Enable (and start) the plugin right away.
    pub enable: bool,
}

/// Admin limits for one plugin; `None` keeps the default (the manifest's
/// request, capped by the daemon's `[limits]`). They may only lower.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitOverrides {
    /// Bytes.
    pub memory_max: Option<u64>,
    /// CPUs.
    pub cpu_max: Option<f64>,
    /// Tasks.
    pub pids_max: Option<u64>,
    /// Bytes of `/tmp`.
    pub tmp_size: Option<u64>,
    /// Per-task wall timeout (zero = none is not allowed when the default
    /// has one: that would raise it).
    #[serde(with = "opt_duration_ms")]
    pub wall_timeout: Option<Duration>,
}

/// The limits a plugin runs with (after manifest, daemon caps and admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginLimits {
    /// Bytes.
    pub memory_max: u64,
    /// CPUs.
    pub cpu_max: f64,
    /// Tasks.
    pub pids_max: u64,
    /// Bytes of `/tmp`.
    pub tmp_size: u64,
    /// Per-task wall timeout; `None` = none.
    #[serde(with = "opt_duration_ms")]
    pub wall_timeout: Option<Duration>,
}

/// An installed plugin, with its runtime status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Reverse-DNS id.
    pub id: String,
    /// The active version.
    pub version: String,
    /// Every installed version (oldest first).
    pub versions: Vec<String>,
    /// The uid (= gid) its processes run as; allocated once per plugin id,
    /// never given to another plugin.
    pub uid: u32,
    /// Starts with the daemon; tasks may run on it.
    pub enabled: bool,
    /// Why it was disabled by the daemon (crash loop), if so.
    pub disabled_reason: Option<String>,
    /// Scopes the manifest requests.
    pub requested_scopes: Vec<String>,
    /// Scopes an admin granted.
    pub granted_scopes: Vec<String>,
    /// Effective limits.
    pub limits: PluginLimits,
    /// The admin's overrides.
    pub limit_overrides: LimitOverrides,
    /// The actions it offers.
    pub actions: Vec<ActionInfo>,
    /// sha256 of the installed copy (paths, modes, contents).
    pub content_hash: String,
    /// The installed copy.
    pub path: PathBuf,
    /// Who installed (or last upgraded) it.
    pub installed_by: String,
    /// When (ms since the epoch).
    pub installed_at_ms: i64,
    /// Whether `/data` is persistent.
    pub persistent_data: bool,
    /// The supervisor's view.
    pub runtime: RuntimeStatus,
}

/// A task action a plugin offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionInfo {
    /// Name.
    pub name: String,
    /// One-line description.
    pub description: String,
}

impl From<&Action> for ActionInfo {
    fn from(a: &Action) -> Self {
        ActionInfo {
            name: a.name.clone(),
            description: a.description.clone(),
        }
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
