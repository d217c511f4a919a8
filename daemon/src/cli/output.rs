//! Human output of `hutchctl`: aligned tables, key/value blocks, times.
//! (`--json` output is the protocol messages serialized as they are.)

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use hutch_plugin_protocol::admin::v1 as pb;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    /// The rendered table (ends with a newline; a table without rows says so).
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == n {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.header);
        for r in &self.rows {
            line(&mut out, r);
        }
        if self.rows.is_empty() {
            out.push_str("(none)\n");
        }
        out
    }
}

/// `key: value` lines with the keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in pairs {
        let _ = writeln!(out, "{:<w$} {v}", format!("{k}:"));
    }
    out
}

/// An instant in ms since the epoch as RFC 3339 (UTC, seconds), "-" for 0.
pub fn time_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        _ => "-".to_owned(),
    }
}

/// An instant in µs since the epoch as RFC 3339 (UTC, milliseconds).
pub fn time_us(us: i64) -> String {
    match u64::try_from(us) {
        Ok(us) if us > 0 => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string()
        }
        _ => "-".to_owned(),
    }
}

/// Bytes with a binary unit (`512M`), "-" for 0.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    if n == 0 {
        return "-".into();
    }
    for (u, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{u}", n / size);
        }
    }
    for (u, size) in UNITS {
        if n >= size {
            return format!("{:.1}{u}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

/// "-" for an empty string.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// The actor of an audit event in one word.
pub fn actor(e: &pb::AuditEvent) -> String {
    match e.actor_kind.as_str() {
        "plugin" => {
            let user = if e.actor_user.is_empty() {
                String::new()
            } else {
                format!(" for {}", e.actor_user)
            };
            format!("{}@{}{user}", e.actor_plugin_id, e.actor_plugin_version)
        }
        "daemon" => "hutchd".into(),
        kind => format!("{kind}:{}", e.actor_user),
    }
}

/// Audit events as a table.
pub fn audit_table(events: &[pb::AuditEvent]) -> String {
    let mut t = Table::new(&[
        "ID",
        "TIME",
        "ACTOR",
        "TASK",
        "OPERATION",
        "RESOURCE",
        "DECISION",
        "VERSIONS",
        "OUTCOME",
    ]);
    for e in events {
        let versions = match (e.before_version, e.after_version) {
            (None, None) => "-".to_owned(),
            (b, a) => format!(
                "{}->{}",
                b.map_or("none".into(), |v| v.to_string()),
                a.map_or("none".into(), |v| v.to_string())
            ),
        };
        let outcome = if e.decision == "denied" && !e.reason.is_empty() {
            e.reason.clone()
        } else {
            e.outcome.clone()
        };
        t.row(vec![
            e.id.to_string(),
            time_us(e.ts_unix_us),
            actor(e),
            dash(&e.task_id),
            e.operation.clone(),
            e.resource.clone(),
            e.decision.clone(),
            versions,
            outcome,
        ]);
    }
    t.render()
}

/// Plugins as a table.
pub fn plugin_table(plugins: &[pb::Plugin]) -> String {
    let mut t = Table::new(&[
        "ID", "VERSION", "ENABLED", "STATE", "PID", "RESTARTS", "GRANTED", "ACTIONS",
    ]);
    for p in plugins {
        t.row(vec![
            p.id.clone(),
            p.version.clone(),
            if p.enabled { "yes" } else { "no" }.into(),
            p.state.clone(),
            if p.pid == 0 {
                "-".into()
            } else {
                p.pid.to_string()
            },
            p.restarts.to_string(),
            dash(&p.granted_scopes.join(",")),
            dash(
                &p.actions
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
    }
    t.render()
}

/// One plugin in detail.
pub fn plugin_detail(p: &pb::Plugin) -> String {
    let l = p.limits.unwrap_or_default();
    let mut pairs = vec![
        ("plugin", format!("{} {}", p.id, p.version)),
        (
            "state",
            format!(
                "{}{}",
                p.state,
                if p.state_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.state_reason)
                }
            ),
        ),
        ("enabled", if p.enabled { "yes" } else { "no" }.into()),
        ("instance", dash(&p.instance_id)),
        (
            "pid",
            if p.pid == 0 {
                "-".into()
            } else {
                p.pid.to_string()
            },
        ),
        ("started", time_ms(p.started_unix_ms)),
        ("last heartbeat", time_ms(p.last_heartbeat_unix_ms)),
        ("restarts", p.restarts.to_string()),
        ("requested scopes", dash(&p.requested_scopes.join(", "))),
        ("granted scopes", dash(&p.granted_scopes.join(", "))),
        (
            "limits",
            format!(
                "memory {}, cpu {}, pids {}, tmp {}, wall timeout {}",
                bytes(l.memory_max_bytes),
                if l.cpu_max > 0.0 {
                    format!("{}", l.cpu_max)
                } else {
                    "-".into()
                },
                if l.pids_max == 0 {
                    "-".into()
                } else {
                    l.pids_max.to_string()
                },
                bytes(l.tmp_size_bytes),
                if l.wall_timeout_ms == 0 {
                    "none".into()
                } else {
                    humantime::format_duration(Duration::from_millis(l.wall_timeout_ms)).to_string()
                }
            ),
        ),
        ("sandbox uid", p.uid.to_string()),
        (
            "installed",
            format!(
                "{} by {}",
                time_ms(p.installed_unix_ms),
                dash(&p.installed_by)
            ),
        ),
        ("install dir", p.install_dir.clone()),
        ("content hash", p.content_hash.clone()),
    ];
    for a in &p.actions {
        pairs.push(("action", format!("{}  {}", a.name, a.description)));
    }
    fields(&pairs)
}

/// Tasks as a table.
pub fn task_table(tasks: &[pb::Task]) -> String {
    let mut t = Table::new(&[
        "ID", "PLUGIN", "ACTION", "USER", "STATE", "PROGRESS", "CREATED", "ERROR",
    ]);
    for x in tasks {
        t.row(vec![
            x.id.clone(),
            x.plugin_id.clone(),
            x.action.clone(),
            x.user.clone(),
            x.state.clone(),
            format!("{:.0}%", x.progress_percent),
            time_ms(x.created_unix_ms),
            dash(&x.error),
        ]);
    }
    t.render()
}

/// One task with outputs, log and audit trail.
pub fn task_detail(d: &pb::TaskDetail) -> String {
    let t = d.task.clone().unwrap_or_default();
    let mut out = fields(&[
        ("task", t.id.clone()),
        ("plugin", format!("{} {}", t.plugin_id, t.plugin_version)),
        ("action", t.action.clone()),
        ("user", t.user.clone()),
        ("state", t.state.clone()),
        (
            "progress",
            format!("{:.0}% {}", t.progress_percent, t.progress_message),
        ),
        ("args", t.args_json.clone()),
        (
            "inputs",
            dash(
                &t.inputs
                    .iter()
                    .map(|i| {
                        format!(
                            "{}/{}{}",
                            i.dataset_id,
                            i.key,
                            if i.version == 0 {
                                String::new()
                            } else {
                                format!("@{}", i.version)
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ),
        ("created", time_ms(t.created_unix_ms)),
        ("started", time_ms(t.started_unix_ms)),
        ("ended", time_ms(t.ended_unix_ms)),
        ("result", dash(&t.result_json)),
        ("error", dash(&t.error)),
    ]);
    out.push_str("\noutputs:\n");
    let mut o = Table::new(&["NAME", "VALUE", "OBJECT"]);
    for x in &d.outputs {
        o.row(vec![
            x.name.clone(),
            dash(&x.value_json),
            x.object
                .as_ref()
                .map(|r| format!("{}/{}@{}", r.dataset_id, r.key, r.version))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&o.render());
    if !d.log.is_empty() {
        out.push_str("\nlog:\n");
        for l in &d.log {
            let _ = writeln!(out, "  {} {:<5} {}", time_ms(l.unix_ms), l.level, l.line);
        }
    }
    out.push_str("\naudit trail:\n");
    out.push_str(&audit_table(&d.audit));
    out
}

/// Policies as a table.
pub fn policy_table(r: &pb::ListPoliciesResponse) -> String {
    let mut t = Table::new(&[
        "ID", "NAME", "EFFECT", "PLUGINS", "USER", "TEAM", "OPS", "WHEN", "ACTIVE", "REASON",
    ]);
    for p in &r.policies {
        t.row(vec![
            p.id.to_string(),
            p.name.clone(),
            p.effect.clone(),
            p.plugin_pattern.clone(),
            dash(&p.user),
            dash(&p.team),
            dash(&p.operation_class),
            when(p),
            if p.active_now { "yes" } else { "no" }.into(),
            p.reason.clone(),
        ]);
    }
    let mut out = t.render();
    let _ = writeln!(out, "(daemon clock: {})", time_ms(r.now_unix_ms));
    out
}

/// A policy's time window in words.
pub fn when(p: &pb::Policy) -> String {
    let mut parts = Vec::new();
    if p.not_before_unix_ms != 0 || p.not_after_unix_ms != 0 {
        parts.push(format!(
            "{} .. {}",
            time_ms(p.not_before_unix_ms),
            time_ms(p.not_after_unix_ms)
        ));
    }
    if p.weekdays != 0 {
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days: Vec<&str> = DAYS
            .iter()
            .enumerate()
            .filter(|(i, _)| p.weekdays & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect();
        parts.push(days.join(","));
    }
    if p.hour_start.is_some() || p.hour_end.is_some() {
        parts.push(format!(
            "{:02}:00-{:02}:00",
            p.hour_start.unwrap_or(0),
            p.hour_end.unwrap_or(24)
        ));
    }
    if parts.is_empty() {
        "always".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_say_none() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xxxx".into(), "y".into()]);
        assert_eq!(t.render(), "A     LONGER\nxxxx  y\n");
        assert_eq!(Table::new(&["A"]).render(), "A\n(none)\n");
    }

    #[test]
    fn units_and_times() {
        assert_eq!(bytes(512 << 20), "512M");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(0), "-");
        assert_eq!(time_ms(0), "-");
        assert_eq!(time_ms(1_795_996_800_000), "2026-11-30T00:00:00Z");
        let p = pb::Policy {
            weekdays: 0b1_1111,
            hour_start: Some(9),
            hour_end: Some(17),
            ..Default::default()
        };
        assert_eq!(when(&p), "mon,tue,wed,thu,fri 09:00-17:00");
    }
}
