//! The launcher's spawn pool (root only, real kernel): a pre-warmed stub is
//! used once and carries nothing from before, the sandbox's limits are in
//! force for pooled spawns, user-namespace specs go cold, and nothing of the
//! pool outlives the launcher, whether it exits or is killed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hutch_sandbox::cgroup::{CgroupConfig, CgroupManager, Placement};
use hutch_sandbox::launcher::{Launcher, LauncherConfig};
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::spec::{CgroupPlacement, SandboxSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const UID: u32 = 0x7e0f_0002;

mod common;
use common::{plugin_dir, privileged};

/// A cgroup parent of this test's own, removed (with anything left in it)
/// on drop.
struct Parent(CgroupPlacement);

impl Parent {
    fn new(test: &str) -> Self {
        Self(CgroupPlacement {
            parent: format!("hutch-test-{test}-{}", std::process::id()),
            root: PathBuf::from("/sys/fs/cgroup"),
            base: Placement::HierarchyRoot,
        })
    }

    fn manager(&self) -> CgroupManager {
        CgroupManager::new(CgroupConfig {
            parent: self.0.parent.clone(),
            placement: Placement::HierarchyRoot,
            ..CgroupConfig::default()
        })
        .unwrap()
    }

    /// The pool cgroups of launcher `pid` (in any hierarchy), and the
    /// processes in them.
    fn pool_cgroups(&self, launcher: Pid) -> (Vec<PathBuf>, Vec<i32>) {
        let prefix = format!("hutch-pool-{launcher}-");
        let (mut dirs, mut pids) = (Vec::new(), Vec::new());
        for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let Ok(rd) = std::fs::read_dir(ctrl.path().join(&self.0.parent)) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let procs =
                        std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                    pids.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
                    dirs.push(e.path());
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        (dirs, pids)
    }

    /// Wait until `n` pool stubs of `launcher` sit in their cgroups.
    fn wait_for_pool(&self, launcher: Pid, n: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, pids) = self.pool_cgroups(launcher);
            if pids.len() >= n {
                return pids;
            }
            assert!(Instant::now() < deadline, "pool never filled: {pids:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn parent_dirs_exist(&self) -> bool {
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .any(|c| c.path().join(&self.0.parent).exists())
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        if self.parent_dirs_exist() {
            let _ = self.manager().remove_parent();
        }
    }
}

fn sh(name: &str, plugin: &Path, parent: &Parent, script: &str) -> SandboxSpec {
    let mut s = SandboxSpec::new(name, plugin.to_owned(), PathBuf::from("/bin/sh"), UID, UID);
    s.args = vec!["-c".into(), script.into()];
    s.cgroup = Some(parent.0.clone());
    s
}

fn run(launcher: &mut Launcher, spec: &SandboxSpec) -> (Outcome, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let o = launcher.run(spec, &mut out, &mut err).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    (o, out)
}

fn pooled(o: &Outcome) -> bool {
    o.spawn_trace.iter().any(|p| p.step == "init: claimed")
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[test]
fn a_pooled_stub_is_used_once_and_carries_nothing_over() {
    if !privileged("a_pooled_stub_is_used_once_and_carries_nothing_over") {
        return;
    }
    let parent = Parent::new("pool-once");
    let dir = plugin_dir();
    let mut launcher = Launcher::start_with(LauncherConfig { pool_size: 1 }).unwrap();
    launcher.prewarm(Some(&parent.0)).unwrap();
    let stubs = parent.wait_for_pool(launcher.pid(), 1);
    let script = "test -e /tmp/left && echo LEFTOVER; echo x > /tmp/left; \
                  readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts /proc/self/ns/mnt; \
                  hostname; id -u";
    let spec = sh("test.pool-once", dir.path(), &parent, script);
    let (a, out_a) = run(&mut launcher, &spec);
    assert_eq!(a.exit_code, Some(0), "{a:?} {out_a}");
    assert!(
        pooled(&a),
        "first spawn was not pooled: {:?}",
        a.spawn_trace
    );
    // The claimed stub is gone with its sandbox; the next spawn gets another.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stubs.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "claimed stub {stubs:?} outlived its sandbox"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (b, out_b) = run(&mut launcher, &spec);
    assert_eq!(b.exit_code, Some(0), "{b:?} {out_b}");
    assert!(
        pooled(&b),
        "second spawn was not pooled: {:?}",
        b.spawn_trace
    );
    assert!(!out_a.contains("LEFTOVER") && !out_b.contains("LEFTOVER"));
    // (Namespace inode numbers are not compared: a freed namespace's number
    // is reused, and A's namespaces are gone before B's stub may unshare.
    // A's stub is dead before B runs, and B's /tmp has nothing of A's.)
    assert!(
        out_a.contains("hutch") && out_a.contains(&UID.to_string()),
        "{out_a}"
    );
    // A user-namespace spec never takes a pooled stub (its maps name the
    // plugin's ids): it goes cold, and still works.
    let mut userns = spec.clone();
    userns.user_namespace = true;
    let (c, out_c) = run(&mut launcher, &userns);
    assert_eq!(c.exit_code, Some(0), "{c:?} {out_c}");
    assert!(!pooled(&c), "user-namespace spawn took a pooled stub");
}

#[test]
fn limits_bind_pooled_spawns_from_their_first_instruction() {
    if !privileged("limits_bind_pooled_spawns_from_their_first_instruction") {
        return;
    }
    let parent = Parent::new("pool-limits");
    let dir = plugin_dir();
    let mut launcher = Launcher::start_with(LauncherConfig { pool_size: 1 }).unwrap();
    launcher.prewarm(Some(&parent.0)).unwrap();
    parent.wait_for_pool(launcher.pid(), 1);
    // Memory bomb (tmpfs pages count too): OOM-killed at 32 MiB, no swap.
    let mut bomb = sh(
        "test.pool-oom",
        dir.path(),
        &parent,
        "head -c 200000000 /dev/zero > /tmp/fill; echo survived",
    );
    bomb.limits.memory_max = Some(32 << 20);
    bomb.limits.swap_max = Some(0);
    bomb.limits.tmp_size = 512 << 20;
    let (o, out) = run(&mut launcher, &bomb);
    assert!(pooled(&o), "not pooled: {:?}", o.spawn_trace);
    assert!(o.oom_killed, "{o:?} {out}");
    assert!(!out.contains("survived"), "{out}");
    // Fork bomb: held at pids_max.
    parent.wait_for_pool(launcher.pid(), 1);
    let mut forks = sh(
        "test.pool-pids",
        dir.path(),
        &parent,
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait",
    );
    forks.limits.pids_max = Some(4);
    let (o, _) = run(&mut launcher, &forks);
    assert!(pooled(&o), "not pooled: {:?}", o.spawn_trace);
    assert!(o.pids_limit_hit, "{o:?}");
    // CPU quota written to the pooled cgroup (cpu hierarchy on v1).
    parent.wait_for_pool(launcher.pid(), 1);
    let mut cpu = sh("test.pool-cpu", dir.path(), &parent, "true");
    cpu.limits.cpu_max = Some(0.5);
    let (o, _) = run(&mut launcher, &cpu);
    assert_eq!(o.exit_code, Some(0), "{o:?}");
}

#[test]
fn the_pool_leaves_nothing_when_the_launcher_exits() {
    if !privileged("the_pool_leaves_nothing_when_the_launcher_exits") {
        return;
    }
    let parent = Parent::new("pool-exit");
    let launcher = Launcher::start_with(LauncherConfig { pool_size: 2 }).unwrap();
    let lpid = launcher.pid();
    launcher.prewarm(Some(&parent.0)).unwrap();
    let stubs = parent.wait_for_pool(lpid, 2);
    drop(launcher);
    for p in &stubs {
        assert!(!alive(*p), "pool stub {p} outlived the launcher");
    }
    let (dirs, _) = parent.pool_cgroups(lpid);
    assert_eq!(dirs, Vec::<PathBuf>::new());
    assert!(!parent.parent_dirs_exist(), "parent cgroup left behind");
}

#[test]
fn pool_stubs_die_with_a_killed_launcher() {
    if !privileged("pool_stubs_die_with_a_killed_launcher") {
        return;
    }
    let parent = Parent::new("pool-kill");
    let launcher = Launcher::start_with(LauncherConfig { pool_size: 2 }).unwrap();
    let lpid = launcher.pid();
    launcher.prewarm(Some(&parent.0)).unwrap();
    let stubs = parent.wait_for_pool(lpid, 2);
    kill(lpid, Signal::SIGKILL).unwrap();
    drop(launcher); // reaps it
    let deadline = Instant::now() + Duration::from_secs(5);
    while stubs.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "pool stubs {stubs:?} outlived a killed launcher"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nobody was left to remove their cgroups: the start-up sweep does.
    let (_, pids) = parent.pool_cgroups(lpid);
    assert!(pids.is_empty(), "{pids:?}");
    let swept = parent.manager().sweep_stale().unwrap();
    assert_eq!(swept.len(), 2, "{swept:?}");
    assert_eq!(parent.pool_cgroups(lpid).0, Vec::<PathBuf>::new());
}
