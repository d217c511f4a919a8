//! The closing summary of `hutchd try`: how the plugin ended, the task,
//! the API calls it made (counted from the audit store) and everything that
//! was denied, each with how to ask for it.

use std::collections::BTreeMap;

use hutch_api::audit::{Actor, AuditEvent, AuditFilter, Decision};
use hutch_sandbox::outcome::{Outcome, format_size};
use hutch_sandbox::seccomp::profile::{HARD_DENIED, PROFILE, Rule};
use hutch_sandbox::spec::SandboxSpec;
use serde::Serialize;

use crate::daemon::Daemon;
use crate::manifest::Manifest;
use crate::try_task::TaskRun;

/// API calls denied with one reason.
#[derive(Debug, Clone, Serialize)]
pub struct ApiDenial {
    /// The operation, e.g. `data.object.put`.
    pub operation: String,
    /// A resource it was denied on (the first one seen).
    pub resource: String,
    /// The reason Hutch gave.
    pub reason: String,
    /// How many calls.
    pub count: u64,
    /// How to get it allowed, when there is a way.
    pub hint: Option<String>,
}

/// What the plugin instance did on its API socket, from the audit store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiUsage {
    /// Allowed calls per operation.
    pub calls: BTreeMap<String, u64>,
    /// Denied calls per (operation, reason).
    pub denied: Vec<ApiDenial>,
    /// The audit store could not be read (the summary says so).
    pub error: Option<String>,
}

impl ApiUsage {
    /// Counts the audit events of `instance` since `since_us`. Queued events
    /// (reads, refusals, aggregated floods) are flushed first: a marker
    /// event goes through the same queue and is waited for.
    pub async fn collect(daemon: &Daemon, plugin: &str, instance: &str, since_us: i64) -> ApiUsage {
        let core = daemon.core();
        core.audit_sink().flush();
        let marker = format!("try/{instance}/{}", hutch_api::audit::now_us());
        core.audit_sink().record(AuditEvent::new(
            Actor::daemon(),
            "try.summary",
            marker.clone(),
        ));
        let marker_filter = AuditFilter {
            operation: Some("try.summary".into()),
            resource: Some(marker),
            since_us: Some(since_us),
            ..AuditFilter::default()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            match core.audit().query(&marker_filter).await {
                Ok(v) if !v.is_empty() => break,
                _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
        let filter = AuditFilter {
            plugin_id: Some(plugin.to_owned()),
            since_us: Some(since_us),
            ..AuditFilter::default()
        };
        let events = match core.audit().query(&filter).await {
            Ok(e) => e,
            Err(e) => {
                return ApiUsage {
                    error: Some(format!("read the audit store: {e}")),
                    ..ApiUsage::default()
                };
            }
        };
        let mut usage = ApiUsage::default();
        for se in events {
            let ev = se.event;
            if ev.actor.instance.as_deref() != Some(instance) {
                continue;
            }
            let n = ev
                .details
                .get("aggregated")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(1);
            match ev.decision {
                Decision::Allowed => *usage.calls.entry(ev.operation).or_default() += n,
                Decision::Denied => {
                    let reason = ev.reason.unwrap_or_default();
                    match usage
                        .denied
                        .iter_mut()
                        .find(|d| d.operation == ev.operation && d.reason == reason)
                    {
                        Some(d) => d.count += n,
                        None => usage.denied.push(ApiDenial {
                            hint: api_hint(&reason),
                            operation: ev.operation,
                            resource: ev.resource,
                            reason,
                            count: n,
                        }),
                    }
                }
            }
        }
        usage
    }
}

/// How to get a denied API call allowed, from its reason.
pub fn api_hint(reason: &str) -> Option<String> {
    if let Some(rest) = reason.strip_prefix("scope ")
        && let Some(scope) = rest.split_whitespace().next()
        && reason.contains("not granted")
    {
        return Some(format!(
            "request it: scopes = [.., \"{scope}\"] in hutch-plugin.toml (an admin grants it at install)"
        ));
    }
    if reason.contains("may not") && reason.contains("dataset") {
        return Some(format!(
            "under `hutchd try` the acting user owns only dataset `{}`; in production the task's user needs rights on the dataset",
            crate::try_cmd::TRY_DATASET
        ));
    }
    if reason.contains("policy") {
        return Some("an admin policy blocks it; ask the admin (`hutchctl policy list`)".into());
    }
    if reason.contains("rate") || reason.contains("concurren") {
        return Some(
            "slow down: the instance's API limits are [api] rate_per_sec / burst / max_concurrent_calls in hutchd.toml".into(),
        );
    }
    if reason.contains("task") {
        return Some(
            "send the id of the task you are working on in the hutch-task-id metadata, only while it runs".into(),
        );
    }
    None
}

/// How to get a denied syscall allowed.
pub fn syscall_hint(name: &str) -> String {
    if let Some((_, why)) = HARD_DENIED.iter().find(|(n, _)| *n == name) {
        return format!("{name} is never allowed (hard-denied: {why})");
    }
    match PROFILE.iter().find(|(n, _, _)| *n == name) {
        Some((_, rule, why)) if *rule != Rule::Always => format!(
            "{name} is allowed only with restricted arguments ({why}); these arguments are never allowed"
        ),
        _ => format!(
            "{name} is not in the sandbox's seccomp profile; only an admin can add it ([sandbox] seccomp_additions in hutchd.toml, not recommended): ask whether your plugin really needs it"
        ),
    }
}

/// Everything the summary is made from.
#[derive(Debug)]
pub struct Summary<'a> {
    /// How the sandbox ended.
    pub outcome: &'a Outcome,
    /// The spec it ran with (limits).
    pub spec: &'a SandboxSpec,
    /// The manifest.
    pub manifest: &'a Manifest,
    /// Hutch stopped the plugin after its task.
    pub stopped_by_hutch: bool,
    /// The task, with `--task`.
    pub task: Option<&'a TaskRun>,
    /// API usage.
    pub api: &'a ApiUsage,
}

impl Summary<'_> {
    /// The `hutch: ` lines (without the prefix), in order: how the plugin
    /// ended (the sandbox outcome, unchanged), limits hit with the manifest
    /// key to raise, the task and its outputs, API calls, everything denied
    /// with how to request it.
    pub fn lines(&self) -> Vec<String> {
        let o = self.outcome;
        let l = &self.spec.limits;
        let mut out = Vec::new();
        if self.stopped_by_hutch {
            out.push("the plugin was stopped by hutch after the task:".into());
        }
        for line in o.describe(l) {
            let syscall = line
                .strip_prefix("denied syscall ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned);
            out.push(line);
            if let Some(name) = syscall {
                out.push(format!("  -> {}", syscall_hint(&name)));
            }
        }
        if o.timed_out {
            out.push(format!(
                "  -> raise [resources] wall_timeout in hutch-plugin.toml (now {}; `--timeout` overrides it for try)",
                l.wall_timeout
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_else(|| "none".into())
            ));
        }
        if o.oom_killed {
            out.push(format!(
                "  -> raise [resources] memory_max in hutch-plugin.toml (now {}; the daemon default and ceiling is {})",
                l.memory_max.map(format_size).unwrap_or_else(|| "?".into()),
                format_size(crate::config::Config::default().limits.memory_max)
            ));
        }
        if o.pids_limit_hit {
            out.push(format!(
                "  -> raise [resources] pids_max in hutch-plugin.toml (now {}; the daemon default and ceiling is {})",
                l.pids_max.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                crate::config::Config::default().limits.pids_max
            ));
        }
        if let Some(t) = self.task {
            match t.state {
                crate::tasks::TaskState::Completed => out.push(format!(
                    "task {} completed in {} ms: {}",
                    t.id,
                    t.duration_ms,
                    t.result_json.as_deref().unwrap_or("")
                )),
                s => out.push(format!(
                    "task {} {}: {}",
                    t.id,
                    s.as_str(),
                    t.error.as_deref().unwrap_or("(no error given)")
                )),
            }
            let objects: Vec<_> = t.outputs.iter().filter(|o| o.object.is_some()).collect();
            if objects.is_empty() {
                out.push("outputs written: none".into());
            } else {
                out.push("outputs written:".into());
                for o in objects {
                    let obj = o.object.as_deref().unwrap_or("");
                    let v = o.version.unwrap_or(0);
                    match (&o.file, &o.error) {
                        (Some(f), _) => out.push(format!(
                            "  {} ({obj} v{v}, {} bytes)",
                            f.display(),
                            o.bytes.unwrap_or(0)
                        )),
                        (None, Some(e)) => out.push(format!("  {obj} v{v}: not written: {e}")),
                        (None, None) => out.push(format!("  {obj} v{v}: not written")),
                    }
                }
            }
        }
        if let Some(e) = &self.api.error {
            out.push(format!("API calls: unknown ({e})"));
        } else if self.api.calls.is_empty() {
            out.push("API calls: none".into());
        } else {
            let calls: Vec<String> = self
                .api
                .calls
                .iter()
                .map(|(op, n)| format!("{op} x{n}"))
                .collect();
            out.push(format!("API calls: {}", calls.join(", ")));
        }
        for d in &self.api.denied {
            out.push(format!(
                "API denied: {} {} x{}: {}",
                d.operation, d.resource, d.count, d.reason
            ));
            if let Some(h) = &d.hint {
                out.push(format!("  -> {h}"));
            }
        }
        if o.denials.is_empty()
            && self.api.denied.is_empty()
            && !o.oom_killed
            && !o.pids_limit_hit
            && !o.timed_out
        {
            out.push("nothing was denied".into());
        }
        out
    }

    /// The `--report` JSON: the sandbox outcome's fields (as before), plus
    /// `api` (calls and denials) and `task` (with `--task`).
    pub fn report(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.outcome).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "api".into(),
                serde_json::to_value(self.api).unwrap_or_default(),
            );
            obj.insert(
                "stopped_by_hutch".into(),
                serde_json::Value::Bool(self.stopped_by_hutch),
            );
            obj.insert(
                "plugin_id".into(),
                serde_json::Value::String(self.manifest.id.clone()),
            );
            if let Some(t) = self.task {
                obj.insert("task".into(), serde_json::to_value(t).unwrap_or_default());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_manifest_key_or_say_never() {
        let h = api_hint("scope data:write is not granted to this plugin");
        assert!(h.is_some_and(|h| h.contains("\"data:write\"") && h.contains("scopes")));
        assert!(syscall_hint("bpf").contains("never allowed"));
        assert!(syscall_hint("nr:999").contains("seccomp_additions"));
        assert!(syscall_hint("ioctl").contains("restricted arguments"));
        assert_eq!(api_hint("something else"), None);
    }
}
