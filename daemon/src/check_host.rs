//! `hutchd check-host`: what the kernel offers and the protection Hutch can
//! give here, for admins before installing.

use std::fmt::Write as _;

use hutch_sandbox::host::{ControllerPlace, HostReport, Protection};

/// Renders the report as the human table `check-host` prints.
pub fn render(r: &HostReport) -> String {
    let mut out = String::new();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "kernel            {}", r.kernel);
    let _ = match r.landlock_abi {
        Some(abi) => writeln!(out, "landlock          ABI {abi}"),
        None => writeln!(
            out,
            "landlock          unavailable ({})",
            r.landlock_error.as_deref().unwrap_or("unknown")
        ),
    };
    let _ = writeln!(
        out,
        "seccomp           filter {}, user notification {}",
        yes(r.seccomp.filter),
        yes(r.seccomp.user_notif)
    );
    for ns in &r.namespaces {
        let status = if ns.available {
            "available".to_owned()
        } else {
            format!("unavailable ({})", ns.error.as_deref().unwrap_or("?"))
        };
        let _ = writeln!(out, "namespace {:<7} {status}", ns.name);
    }
    let layout = serde_json::to_value(r.cgroups.layout)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let _ = writeln!(out, "cgroups           {layout} layout");
    for c in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
        let place = match r.cgroups.controllers.get(c) {
            Some(ControllerPlace::V1(p)) => format!("v1 at {}", p.display()),
            Some(ControllerPlace::V2) => "v2".to_owned(),
            None => "unavailable".to_owned(),
        };
        let _ = writeln!(out, "  {c:<15} {place}");
    }
    let _ = writeln!(
        out,
        "x32 syscalls      {}",
        if r.x32_enabled {
            "enabled (closed by the seccomp allowlist)"
        } else {
            "disabled"
        }
    );
    let verdict = match r.protection {
        Protection::Full => "full",
        Protection::Reduced => "reduced",
        Protection::Insufficient => "insufficient: plugins will not start",
    };
    let _ = writeln!(out, "protection        {verdict}");
    for f in &r.failures {
        let _ = writeln!(out, "  missing: {f}");
    }
    for g in &r.gaps {
        let _ = writeln!(out, "  reduced: {g}");
    }
    out
}
