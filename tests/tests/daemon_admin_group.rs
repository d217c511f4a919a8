//! Members of the Unix group `hutch-admin` are admins on the control socket,
//! by the system group database (here: a throw-away account and, if the host
//! has none, a throw-away `hutch-admin` group; both removed afterwards).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use hutch_tests::daemon::{Hutchd, s};
use hutch_tests::privileged;

fn sh(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A local account (and possibly the group) that exist for the test only.
struct TempAccount {
    name: String,
    created_group: bool,
}

impl Drop for TempAccount {
    fn drop(&mut self) {
        sh("userdel", &[&self.name]);
        if self.created_group {
            sh("groupdel", &["hutch-admin"]);
        }
    }
}

fn uid_of(name: &str) -> u32 {
    let o = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn hutch_admin_group_members_are_admins() {
    if !privileged("hutch_admin_group_members_are_admins") {
        return;
    }
    let name = format!("hutcht{}", std::process::id() % 100_000);
    let created_group = !sh("getent", &["group", "hutch-admin"]);
    if created_group {
        assert!(
            sh("groupadd", &["--system", "hutch-admin"]),
            "groupadd hutch-admin"
        );
    }
    assert!(
        sh(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                &name
            ]
        ),
        "useradd {name}"
    );
    let account = TempAccount {
        name: name.clone(),
        created_group,
    };
    let uid = uid_of(&name);
    let d = Hutchd::start("admin-group").unwrap();

    // Not a member yet, not a Hutch user: nothing.
    let r = d.ctl_as(uid, &["policy", "list"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("uid {uid} ({name}, not a Hutch user)")),
        "{r:?}"
    );

    assert!(sh("gpasswd", &["-a", &name, "hutch-admin"]));
    let w = d.ctl_as(uid, &["--json", "whoami"]).ok().json();
    assert_eq!(w["admin"], true, "{w}");
    assert_eq!(s(&w, "admin_reason"), "group hutch-admin");
    d.ctl_as(uid, &["policy", "list"]).ok();
    d.ctl_as(uid, &["kill-switch", "on", "--reason", "group admin"])
        .ok();
    d.ctl_as(uid, &["kill-switch", "off"]).ok();
    // The change is audited with the admin's login name as actor.
    let ev = d
        .ctl(&["--json", "audit", "query", "--user", &name])
        .ok()
        .json();
    let ops: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "operation"))
        .collect();
    assert!(ops.contains(&"killswitch.engage"), "{ops:?}");
    let engage = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| s(e, "operation") == "killswitch.engage")
        .unwrap();
    assert_eq!(s(engage, "actor_kind"), "admin");

    // Membership is checked on every call: removed from the group, refused.
    assert!(sh("gpasswd", &["-d", &name, "hutch-admin"]));
    assert_eq!(d.ctl_as(uid, &["policy", "list"]).code, 3);
    drop(d);
    drop(account);
}
