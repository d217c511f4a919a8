//! Manifest + admin approvals + daemon config -> [`SandboxSpec`]: the one
//! place both `hutchd try` and the supervisor build a plugin's sandbox.

use std::path::PathBuf;
use std::time::Duration;

use hutch_sandbox::spec::{API_SOCKET_PATH, CgroupPlacement, SandboxSpec, default_env};

use crate::config::{Config, LimitsConfig};
use crate::manifest::{Manifest, Resources};
use crate::registry::{LimitOverrides, PluginLimits};

/// Everything besides the manifest that decides a plugin's sandbox.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The validated manifest.
    pub manifest: &'a Manifest,
    /// Host directory bound read-only at `/plugin`.
    pub plugin_dir: PathBuf,
    /// The plugin's uid (= gid).
    pub uid: u32,
    /// The instance id (`HUTCH_INSTANCE`, part of the cgroup name).
    pub instance: &'a str,
    /// Arguments after the manifest's `args`.
    pub extra_args: &'a [String],
    /// Effective limits (see [`resolve_limits`]).
    pub limits: &'a PluginLimits,
    /// Sandbox-wide wall timeout (`hutchd try`); `None` for supervised
    /// instances, whose tasks are timed by the daemon.
    pub sandbox_wall_timeout: Option<Duration>,
    /// Host dir bound at `/data`, if the plugin has one.
    pub data_dir: Option<PathBuf>,
    /// Host path of the instance's API socket.
    pub api_socket: Option<PathBuf>,
    /// The daemon config (sandbox section, stop grace).
    pub config: &'a Config,
}

/// Build the sandbox spec: production defaults, the manifest's program,
/// arguments, environment and read-only paths, the effective limits and
/// the daemon's sandbox settings.
pub fn build(input: &SpecInput<'_>) -> SandboxSpec {
    let m = input.manifest;
    let name = format!("{}.{}", m.id, input.instance);
    let mut spec = SandboxSpec::new(
        &name,
        input.plugin_dir.clone(),
        m.exec.in_sandbox(),
        input.uid,
        input.uid,
    );
    spec.args = m.args.iter().chain(input.extra_args).cloned().collect();
    let mut env = default_env();
    env.push(("HUTCH_SOCKET".into(), API_SOCKET_PATH.into()));
    env.push(("HUTCH_PLUGIN_ID".into(), m.id.clone()));
    env.push(("HUTCH_PLUGIN_VERSION".into(), m.version.to_string()));
    env.push(("HUTCH_INSTANCE".into(), input.instance.to_owned()));
    for (k, v) in &m.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    spec.env = env;
    spec.read_only = m.read_only.clone();
    spec.data_dir = input.data_dir.clone();
    spec.api_socket = input.api_socket.clone();
    let l = input.limits;
    spec.limits.memory_max = Some(l.memory_max);
    spec.limits.swap_max = Some(0);
    spec.limits.cpu_max = Some(l.cpu_max);
    spec.limits.pids_max = Some(l.pids_max);
    spec.limits.tmp_size = l.tmp_size;
    spec.limits.wall_timeout = input.sandbox_wall_timeout.filter(|d| !d.is_zero());
    let s = &input.config.sandbox;
    spec.cgroup = Some(CgroupPlacement {
        parent: s.cgroup_parent.clone(),
        root: s.cgroup_root.clone(),
        base: hutch_sandbox::cgroup::Placement::Auto,
    });
    spec.seccomp.additions = s.seccomp_additions.clone();
    spec.landlock.min_abi = u8::try_from(s.landlock_min_abi).unwrap_or(u8::MAX);
    spec.user_namespace = s.user_namespace;
    spec.stop_grace = input.config.supervisor.stop_grace;
    spec
}

/// The limits a plugin runs with: the manifest's request, or the daemon
/// default where it has none, never above the daemon's `[limits]`, then
/// the admin's overrides, which may only lower.
///
/// # Errors
/// An override above the default, naming the key.
pub fn resolve_limits(
    requested: &Resources,
    caps: &LimitsConfig,
    overrides: &LimitOverrides,
) -> Result<PluginLimits, String> {
    let cap_wall = (!caps.wall_timeout.is_zero()).then_some(caps.wall_timeout);
    let wall = match requested.wall_timeout {
        // The manifest asks for "none": allowed only when the daemon has none.
        Some(d) if d.is_zero() => cap_wall,
        Some(d) => Some(cap_wall.map_or(d, |c| d.min(c))),
        None => cap_wall,
    };
    let mut l = PluginLimits {
        memory_max: requested
            .memory_max
            .unwrap_or(caps.memory_max)
            .min(caps.memory_max),
        cpu_max: requested.cpu_max.unwrap_or(caps.cpu_max).min(caps.cpu_max),
        pids_max: requested
            .pids_max
            .unwrap_or(caps.pids_max)
            .min(caps.pids_max),
        tmp_size: requested
            .tmp_size
            .unwrap_or(caps.tmp_size)
            .min(caps.tmp_size),
        wall_timeout: wall,
    };
    fn lower<T: PartialOrd + Copy + std::fmt::Debug>(
        key: &str,
        cur: &mut T,
        o: Option<T>,
    ) -> Result<(), String> {
        match o {
            Some(v) if v > *cur => Err(format!(
                "{key}: {v:?} is above the plugin's limit {cur:?}; an admin may only lower limits"
            )),
            Some(v) => {
                *cur = v;
                Ok(())
            }
            None => Ok(()),
        }
    }
    lower("memory_max", &mut l.memory_max, overrides.memory_max)?;
    lower("cpu_max", &mut l.cpu_max, overrides.cpu_max)?;
    lower("pids_max", &mut l.pids_max, overrides.pids_max)?;
    lower("tmp_size", &mut l.tmp_size, overrides.tmp_size)?;
    if let Some(o) = overrides.wall_timeout {
        match l.wall_timeout {
            _ if o.is_zero() && l.wall_timeout.is_some() => {
                return Err(
                    "wall_timeout: 0 (none) would raise the plugin's limit; an admin may only lower limits"
                        .into(),
                );
            }
            Some(cur) if o > cur => {
                return Err(format!(
                    "wall_timeout: {o:?} is above the plugin's limit {cur:?}; an admin may only lower limits"
                ));
            }
            _ => l.wall_timeout = (!o.is_zero()).then_some(o),
        }
    }
    if overrides.memory_max == Some(0)
        || overrides.pids_max == Some(0)
        || overrides.tmp_size == Some(0)
        || overrides.cpu_max.is_some_and(|c| c.is_nan() || c <= 0.0)
    {
        return Err("limits must be positive".into());
    }
    Ok(l)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn manifest_requests_are_capped_and_admin_may_only_lower() {
        let caps = LimitsConfig::default();
        let req = Resources {
            memory_max: Some(caps.memory_max * 4),
            pids_max: Some(8),
            ..Resources::default()
        };
        let l = resolve_limits(&req, &caps, &LimitOverrides::default()).unwrap();
        assert_eq!(l.memory_max, caps.memory_max);
        assert_eq!(l.pids_max, 8);
        assert_eq!(l.wall_timeout, Some(caps.wall_timeout));
        let lowered = LimitOverrides {
            memory_max: Some(1 << 20),
            wall_timeout: Some(Duration::from_secs(5)),
            ..LimitOverrides::default()
        };
        let l = resolve_limits(&req, &caps, &lowered).unwrap();
        assert_eq!(l.memory_max, 1 << 20);
        assert_eq!(l.wall_timeout, Some(Duration::from_secs(5)));
        let raised = LimitOverrides {
            pids_max: Some(9),
            ..LimitOverrides::default()
        };
        let err = resolve_limits(&req, &caps, &raised).unwrap_err();
        assert!(err.starts_with("pids_max"), "{err}");
        let no_timeout = LimitOverrides {
            wall_timeout: Some(Duration::ZERO),
            ..LimitOverrides::default()
        };
        assert!(resolve_limits(&req, &caps, &no_timeout).is_err());
    }
}
