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
    /// Scopes to grant: each must be requested by the manifest. On install,
    /// `None` grants every requested scope and `Some(list)` exactly `list`.
    /// On upgrade the previous grants that are still requested carry over
    /// and `list` adds to them (a newly requested scope is granted only if
    /// listed).
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

// ------------------------------------------------------------------ store

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};
use sqlx::{Row, SqlitePool};

use crate::config::{Config, LimitsConfig};
use crate::daemon::DaemonError;
use crate::manifest::{Exec, MANIFEST_FILE, Manifest};

/// Most files an installed plugin may hold.
pub const MAX_FILES: usize = 100_000;
/// Most bytes an installed plugin may hold (4 GiB).
pub const MAX_BYTES: u64 = 4 << 30;

/// A registry row with its active version's manifest.
#[derive(Debug, Clone)]
pub(crate) struct PluginRecord {
    pub id: String,
    pub version: String,
    pub uid: u32,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub granted: Vec<String>,
    pub overrides: LimitOverrides,
    pub installed_by: String,
    pub installed_ms: i64,
    pub versions: Vec<String>,
    pub manifest: Manifest,
    pub content_hash: String,
    pub path: PathBuf,
}

impl PluginRecord {
    /// Effective limits under `caps`.
    pub fn limits(&self, caps: &LimitsConfig) -> PluginLimits {
        match crate::plugin_spec::resolve_limits(&self.manifest.resources, caps, &self.overrides) {
            Ok(l) => l,
            // Caps were lowered below an override since: the caps win.
            Err(_) => crate::plugin_spec::resolve_limits(
                &self.manifest.resources,
                caps,
                &LimitOverrides::default(),
            )
            .unwrap_or(PluginLimits {
                memory_max: caps.memory_max,
                cpu_max: caps.cpu_max,
                pids_max: caps.pids_max,
                tmp_size: caps.tmp_size,
                wall_timeout: None,
            }),
        }
    }

    /// The public view.
    pub fn info(&self, caps: &LimitsConfig, runtime: RuntimeStatus) -> PluginInfo {
        PluginInfo {
            id: self.id.clone(),
            version: self.version.clone(),
            versions: self.versions.clone(),
            uid: self.uid,
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            requested_scopes: self.manifest.scopes.clone(),
            granted_scopes: self.granted.clone(),
            limits: self.limits(caps),
            limit_overrides: self.overrides.clone(),
            actions: self.manifest.actions.iter().map(ActionInfo::from).collect(),
            content_hash: self.content_hash.clone(),
            path: self.path.clone(),
            installed_by: self.installed_by.clone(),
            installed_at_ms: self.installed_ms,
            persistent_data: self.manifest.persistent_data,
            runtime,
        }
    }
}

/// The registry tables and the installed copies under `state_dir/plugins`.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    pool: SqlitePool,
    plugins_dir: PathBuf,
    etc: PathBuf,
    uid_range: (u32, u32),
}

fn db_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> DaemonError {
    move |e| DaemonError::internal(op, e)
}

impl Registry {
    pub fn new(pool: SqlitePool, plugins_dir: PathBuf, uid_range: (u32, u32)) -> Registry {
        Registry {
            pool,
            plugins_dir,
            etc: PathBuf::from("/etc"),
            uid_range,
        }
    }

    /// One installed plugin.
    pub async fn get(&self, id: &str) -> Result<Option<PluginRecord>, DaemonError> {
        let row = sqlx::query(
            "SELECT p.id, p.version, u.uid, p.enabled, p.disabled_reason, p.granted_scopes,
                    p.limit_overrides, p.installed_by, p.installed_ms,
                    v.manifest, v.content_hash, v.path
             FROM plugins p
             JOIN plugin_uids u ON u.plugin_id = p.id
             JOIN plugin_versions v ON v.plugin_id = p.id AND v.version = p.version
             WHERE p.id = ?",
        )
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("read plugin"))?;
        let Some(row) = row else { return Ok(None) };
        let versions: Vec<String> = sqlx::query_scalar(
            "SELECT version FROM plugin_versions WHERE plugin_id = ? ORDER BY installed_ms, version",
        )
        .bind(id.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("read plugin versions"))?;
        let g = |c: &str| -> Result<String, DaemonError> {
            row.try_get::<String, _>(c).map_err(db_err("read plugin"))
        };
        let manifest_text = g("manifest")?;
        let manifest = Manifest::parse(&manifest_text)
            .map_err(|e| DaemonError::internal(&format!("stored manifest of {id}"), e))?;
        let uid: i64 = row.try_get("uid").map_err(db_err("read plugin"))?;
        Ok(Some(PluginRecord {
            id: g("id")?,
            version: g("version")?,
            uid: u32::try_from(uid).map_err(|e| DaemonError::internal("stored uid", e))?,
            enabled: row
                .try_get::<i64, _>("enabled")
                .map_err(db_err("read plugin"))?
                != 0,
            disabled_reason: row
                .try_get::<Option<String>, _>("disabled_reason")
                .map_err(db_err("read plugin"))?,
            granted: serde_json::from_str(&g("granted_scopes")?)
                .map_err(|e| DaemonError::internal("stored grants", e))?,
            overrides: serde_json::from_str(&g("limit_overrides")?)
                .map_err(|e| DaemonError::internal("stored limits", e))?,
            installed_by: g("installed_by")?,
            installed_ms: row.try_get("installed_ms").map_err(db_err("read plugin"))?,
            versions,
            manifest,
            content_hash: g("content_hash")?,
            path: PathBuf::from(g("path")?),
        }))
    }

    /// Every installed plugin, by id.
    pub async fn list(&self) -> Result<Vec<PluginRecord>, DaemonError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM plugins ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("list plugins"))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(&id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Ids of enabled plugins.
    pub async fn enabled_ids(&self) -> Result<Vec<String>, DaemonError> {
        sqlx::query_scalar("SELECT id FROM plugins WHERE enabled = 1 ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("list enabled plugins"))
    }

    /// Install (or upgrade) from `req.dir`.
    pub async fn install(
        &self,
        req: &InstallRequest,
        by: &str,
        upgrade: bool,
        config: &Config,
    ) -> Result<(PluginRecord, Option<PluginRecord>), DaemonError> {
        let dir = std::fs::canonicalize(&req.dir)
            .map_err(|e| DaemonError::Invalid(format!("plugin dir {}: {e}", req.dir.display())))?;
        let manifest = Manifest::load(&dir)
            .map_err(|e| DaemonError::Invalid(format!("{}/{MANIFEST_FILE}: {e}", dir.display())))?;
        if let Exec::Relative(rel) = &manifest.exec
            && !dir.join(rel).is_file()
        {
            return Err(DaemonError::Invalid(format!(
                "{}/{MANIFEST_FILE}: exec: {} is not a file in the plugin dir",
                dir.display(),
                rel.display()
            )));
        }
        let previous = self.get(&manifest.id).await?;
        let id = manifest.id.clone();
        let version = manifest.version.to_string();
        match (&previous, upgrade) {
            (Some(p), false) => {
                return Err(DaemonError::Conflict(format!(
                    "plugin {id} is already installed (version {}); use `hutchctl plugin upgrade`",
                    p.version
                )));
            }
            (None, true) => {
                return Err(DaemonError::NotFound(format!(
                    "plugin {id} is not installed; use `hutchctl plugin install`"
                )));
            }
            (Some(p), true) => {
                let cur = semver::Version::parse(&p.version)
                    .map_err(|e| DaemonError::internal("stored version", e))?;
                if manifest.version <= cur {
                    return Err(DaemonError::Conflict(format!(
                        "plugin {id}: version {version} is not newer than the installed {cur}"
                    )));
                }
            }
            (None, false) => {}
        }
        let granted = match (&req.grant, &previous) {
            // Upgrade: what was granted and is still requested, plus what
            // is granted now; a newly requested scope is never implied.
            (g, Some(p)) => {
                let mut all: Vec<String> = p
                    .granted
                    .iter()
                    .filter(|s| manifest.scopes.contains(s))
                    .cloned()
                    .collect();
                all.extend(g.iter().flatten().cloned());
                check_grant(&manifest, &all)?
            }
            (Some(g), None) => check_grant(&manifest, g)?,
            (None, None) => check_grant(&manifest, &manifest.scopes)?,
        };
        let overrides = if upgrade && req.limits == LimitOverrides::default() {
            previous
                .as_ref()
                .map(|p| p.overrides.clone())
                .unwrap_or_default()
        } else {
            req.limits.clone()
        };
        crate::plugin_spec::resolve_limits(&manifest.resources, &config.limits, &overrides)
            .map_err(|e| DaemonError::Invalid(format!("limits: {e}")))?;
        // Copy off the async threads: it may be large.
        let target = self.plugins_dir.join(&id).join(&version);
        let copy_src = dir.clone();
        let copy_dst = target.clone();
        let hash = tokio::task::spawn_blocking(move || install_copy(&copy_src, &copy_dst))
            .await
            .map_err(|e| DaemonError::internal("install copy", e))??;
        let result = self
            .record_install(
                &manifest, &granted, &overrides, &hash, &target, by, req.enable,
            )
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&target);
            return Err(e);
        }
        let rec = self
            .get(&id)
            .await?
            .ok_or_else(|| DaemonError::Internal(format!("plugin {id} vanished after install")))?;
        Ok((rec, previous))
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_install(
        &self,
        manifest: &Manifest,
        granted: &[String],
        overrides: &LimitOverrides,
        hash: &str,
        target: &Path,
        by: &str,
        enable: bool,
    ) -> Result<(), DaemonError> {
        let now = crate::daemon::now_ms();
        let id = manifest.id.clone();
        let manifest_text = std::fs::read_to_string(target.join(MANIFEST_FILE))
            .map_err(|e| DaemonError::internal("read installed manifest", e))?;
        let mut tx = self.pool.begin().await.map_err(db_err("install"))?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT uid FROM plugin_uids WHERE plugin_id = ?")
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("read uid"))?;
        if existing.is_none() {
            let taken: Vec<i64> = sqlx::query_scalar("SELECT uid FROM plugin_uids")
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err("read uids"))?;
            let taken: BTreeSet<u32> = taken
                .into_iter()
                .filter_map(|u| u32::try_from(u).ok())
                .collect();
            let (base, count) = self.uid_range;
            let uid =
                crate::try_cmd::plugin_uid_in(&id, &self.etc, base, count, &|u| taken.contains(&u));
            if taken.contains(&uid) {
                return Err(DaemonError::Conflict(
                    "no free plugin uid left in sandbox.uid_base..uid_base+uid_count".into(),
                ));
            }
            sqlx::query("INSERT INTO plugin_uids (uid, plugin_id, allocated_ms) VALUES (?, ?, ?)")
                .bind(i64::from(uid))
                .bind(id.clone())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err("allocate uid"))?;
        }
        let grants =
            serde_json::to_string(granted).map_err(|e| DaemonError::internal("grants", e))?;
        let limits =
            serde_json::to_string(overrides).map_err(|e| DaemonError::internal("limits", e))?;
        sqlx::query(
            "INSERT INTO plugins (id, version, enabled, granted_scopes, limit_overrides, installed_by, installed_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version,
                granted_scopes = excluded.granted_scopes, limit_overrides = excluded.limit_overrides,
                installed_by = excluded.installed_by, installed_ms = excluded.installed_ms,
                enabled = CASE WHEN excluded.enabled = 1 THEN 1 ELSE plugins.enabled END",
        )
        .bind(id.clone())
        .bind(manifest.version.to_string())
        .bind(i64::from(enable))
        .bind(grants)
        .bind(limits)
        .bind(by.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("record plugin"))?;
        sqlx::query(
            "INSERT INTO plugin_versions (plugin_id, version, manifest, content_hash, path, installed_by, installed_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(manifest.version.to_string())
        .bind(manifest_text)
        .bind(hash.to_owned())
        .bind(target.display().to_string())
        .bind(by.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("record plugin version"))?;
        tx.commit().await.map_err(db_err("commit install"))
    }

    /// Replace the granted scopes.
    pub async fn set_grants(
        &self,
        id: &str,
        scopes: &[String],
    ) -> Result<PluginRecord, DaemonError> {
        let rec = self.require(id).await?;
        let granted = check_grant(&rec.manifest, scopes)?;
        let text =
            serde_json::to_string(&granted).map_err(|e| DaemonError::internal("grants", e))?;
        sqlx::query("UPDATE plugins SET granted_scopes = ? WHERE id = ?")
            .bind(text)
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db_err("update grants"))?;
        self.require(id).await
    }

    /// Replace the admin limit overrides.
    pub async fn set_overrides(
        &self,
        id: &str,
        o: &LimitOverrides,
        caps: &LimitsConfig,
    ) -> Result<PluginRecord, DaemonError> {
        let rec = self.require(id).await?;
        crate::plugin_spec::resolve_limits(&rec.manifest.resources, caps, o)
            .map_err(|e| DaemonError::Invalid(format!("limits: {e}")))?;
        let text = serde_json::to_string(o).map_err(|e| DaemonError::internal("limits", e))?;
        sqlx::query("UPDATE plugins SET limit_overrides = ? WHERE id = ?")
            .bind(text)
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db_err("update limits"))?;
        self.require(id).await
    }

    /// Enable or disable; `reason` is kept for daemon-made disables.
    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<(), DaemonError> {
        let n = sqlx::query("UPDATE plugins SET enabled = ?, disabled_reason = ? WHERE id = ?")
            .bind(i64::from(enabled))
            .bind(reason.map(str::to_owned))
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db_err("update enabled"))?
            .rows_affected();
        if n == 0 {
            return Err(not_installed(id));
        }
        Ok(())
    }

    /// Remove the plugin's rows and installed copies (the uid allocation,
    /// its data dir, tasks and audit trail stay).
    pub async fn remove(&self, id: &str) -> Result<PluginRecord, DaemonError> {
        let rec = self.require(id).await?;
        sqlx::query("DELETE FROM plugins WHERE id = ?")
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db_err("remove plugin"))?;
        let dir = self.plugins_dir.join(id);
        if dir.starts_with(&self.plugins_dir)
            && dir != self.plugins_dir
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(plugin = %id, error = %e, "remove installed copy");
        }
        Ok(rec)
    }

    /// The record or a not-found error.
    pub async fn require(&self, id: &str) -> Result<PluginRecord, DaemonError> {
        self.get(id).await?.ok_or_else(|| not_installed(id))
    }

    /// A daemon setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, DaemonError> {
        sqlx::query_scalar("SELECT value FROM daemon_settings WHERE key = ?")
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("read setting"))
    }

    /// Set (`Some`) or clear (`None`) a daemon setting.
    pub async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<(), DaemonError> {
        let q = match value {
            Some(v) => sqlx::query(
                "INSERT INTO daemon_settings (key, value) VALUES (?, ?)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key.to_owned())
            .bind(v.to_owned()),
            None => sqlx::query("DELETE FROM daemon_settings WHERE key = ?").bind(key.to_owned()),
        };
        q.execute(&self.pool)
            .await
            .map_err(db_err("write setting"))?;
        Ok(())
    }
}

pub(crate) fn not_installed(id: &str) -> DaemonError {
    DaemonError::NotFound(format!(
        "plugin {id} is not installed (see `hutchctl plugin list`)"
    ))
}

/// The grant, deduplicated and sorted, if every scope is requested.
fn check_grant(manifest: &Manifest, grant: &[String]) -> Result<Vec<String>, DaemonError> {
    let mut out = BTreeSet::new();
    for s in grant {
        if !manifest.scopes.contains(s) {
            return Err(DaemonError::Invalid(format!(
                "grant: scope {s:?} is not requested by {} (requested: {})",
                manifest.id,
                if manifest.scopes.is_empty() {
                    "none".to_owned()
                } else {
                    manifest.scopes.join(", ")
                }
            )));
        }
        out.insert(s.clone());
    }
    Ok(out.into_iter().collect())
}

/// Copy `src` to `dst` (which must not be registered yet): a temp sibling
/// first, then renamed into place; root-owned, read-only. Returns the
/// content hash.
fn install_copy(src: &Path, dst: &Path) -> Result<String, DaemonError> {
    let parent = dst
        .parent()
        .ok_or_else(|| DaemonError::Internal(format!("{}: no parent", dst.display())))?;
    let io = |op: &str, p: &Path, e: std::io::Error| {
        DaemonError::Internal(format!("{op} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    for p in [parent, parent.parent().unwrap_or(parent)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("chmod", p, e))?;
    }
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        dst.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    // A directory left by an install that failed before its row was written.
    let _ = std::fs::remove_dir_all(dst);
    let mut hasher = Sha256::new();
    let mut budget = (MAX_FILES, MAX_BYTES);
    let result = copy_dir(src, &tmp, Path::new(""), &mut hasher, &mut budget)
        .and_then(|()| std::fs::rename(&tmp, dst).map_err(|e| io("rename into place", dst, e)));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    rel: &Path,
    hasher: &mut Sha256,
    budget: &mut (usize, u64),
) -> Result<(), DaemonError> {
    let invalid = |msg: String| DaemonError::Invalid(msg);
    let io = |op: &str, p: &Path, e: std::io::Error| {
        DaemonError::Internal(format!("{op} {}: {e}", p.display()))
    };
    std::fs::create_dir(dst).map_err(|e| io("create", dst, e))?;
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| io("list", src, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io("list", src, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let from = entry.path();
        let to = dst.join(&name);
        let r = rel.join(&name);
        budget.0 = budget
            .0
            .checked_sub(1)
            .ok_or_else(|| invalid(format!("plugin dir has more than {MAX_FILES} entries")))?;
        let meta = std::fs::symlink_metadata(&from).map_err(|e| io("stat", &from, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            hasher.update(b"d\0");
            hasher.update(r.as_os_str().as_encoded_bytes());
            hasher.update(b"\0");
            copy_dir(&from, &to, &r, hasher, budget)?;
        } else if ft.is_file() {
            budget.1 = budget
                .1
                .checked_sub(meta.len())
                .ok_or_else(|| invalid(format!("plugin dir is larger than {MAX_BYTES} bytes")))?;
            let exec = meta.mode() & 0o111 != 0;
            let mode = if exec { 0o555 } else { 0o444 };
            hasher.update(if exec { b"x\0" } else { b"f\0" });
            hasher.update(r.as_os_str().as_encoded_bytes());
            hasher.update(b"\0");
            hasher.update(meta.len().to_le_bytes());
            copy_file(&from, &to, hasher)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", &to, e))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| io("readlink", &from, e))?;
            let escapes = target.is_absolute() || {
                let mut depth: i64 = r.components().count() as i64 - 1;
                target.components().any(|c| {
                    match c {
                        std::path::Component::ParentDir => depth -= 1,
                        std::path::Component::Normal(_) => depth += 1,
                        _ => {}
                    }
                    depth < 0
                })
            };
            if escapes {
                return Err(invalid(format!(
                    "{}: symlink points outside the plugin dir ({})",
                    r.display(),
                    target.display()
                )));
            }
            hasher.update(b"l\0");
            hasher.update(r.as_os_str().as_encoded_bytes());
            hasher.update(b"\0");
            hasher.update(target.as_os_str().as_encoded_bytes());
            hasher.update(b"\0");
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io("symlink", &to, e))?;
        } else {
            return Err(invalid(format!(
                "{}: not a regular file, directory or symlink",
                r.display()
            )));
        }
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o555))
        .map_err(|e| io("chmod", dst, e))
}

fn copy_file(from: &Path, to: &Path, hasher: &mut Sha256) -> Result<(), DaemonError> {
    use std::io::Write;
    let io = |op: &str, p: &Path, e: std::io::Error| {
        DaemonError::Internal(format!("{op} {}: {e}", p.display()))
    };
    let mut src = std::fs::File::open(from).map_err(|e| io("open", from, e))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| io("create", to, e))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf).map_err(|e| io("read", from, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(|e| io("write", to, e))?;
    }
    dst.sync_all().map_err(|e| io("fsync", to, e))
}
