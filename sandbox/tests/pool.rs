//! The launcher's spawn pool (root only, real kernel): a pre-warmed init is
//! used once and carries nothing from before; a pool slot (cgroup + zygote)
//! is reused only after a normal end, holds only its zygote then, and
//! reports each sandbox's own stats and limits; the sandbox's limits are in
//! force for pooled spawns; user-namespace specs go cold; and nothing of the
//! pool outlives the launcher, whether it exits or is killed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hutch_sandbox::cgroup::{CgroupConfig, CgroupManager, Placement};
use hutch_sandbox::launcher::{Event, Launcher, LauncherConfig};
use hutch_sandbox::outcome::Outcome;
use hutch_sandbox::spec::{CgroupPlacement, SandboxSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const UID: u32 = 0x7e0f_0002;

mod common;
use common::{plugin_dir, prewarm_policy, privileged};

/// A cgroup parent of this test's own, removed (with anything left in it)
/// on drop.
struct Parent(CgroupPlacement);

impl Parent {
    fn new(test: &str) -> Self {
        Self::at(test, Path::new("/sys/fs/cgroup"))
    }

    /// A parent under the cgroup file system(s) at `root`.
    fn at(test: &str, root: &Path) -> Self {
        Self(CgroupPlacement {
            parent: format!("hutch-test-{test}-{}", std::process::id()),
            root: root.to_owned(),
            base: Placement::HierarchyRoot,
        })
    }

    fn manager(&self) -> CgroupManager {
        CgroupManager::new(CgroupConfig {
            parent: self.0.parent.clone(),
            cgroup_root: self.0.root.clone(),
            placement: Placement::HierarchyRoot,
            ..CgroupConfig::default()
        })
        .unwrap()
    }

    /// The parent's directory in every hierarchy that may hold it (`root`
    /// itself on cgroup v2, `root/<hierarchy>` on v1), existing or not.
    fn parent_candidates(&self) -> Vec<PathBuf> {
        let root = &self.0.root;
        let mut v = vec![root.join(&self.0.parent)];
        for h in std::fs::read_dir(root).unwrap().flatten() {
            if h.path().is_dir() {
                v.push(h.path().join(&self.0.parent));
            }
        }
        v
    }

    /// The pool cgroups of launcher `pid` (in any hierarchy), and the
    /// processes in them.
    fn pool_cgroups(&self, launcher: Pid) -> (Vec<PathBuf>, Vec<i32>) {
        let prefix = format!("hutch-pool-{launcher}-");
        let (mut dirs, mut pids) = (Vec::new(), Vec::new());
        for parent_dir in self.parent_candidates() {
            let Ok(rd) = std::fs::read_dir(parent_dir) else {
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

    /// The pool's processes of `launcher`: zygotes (its children) and the
    /// pre-warmed inits (their children, still at `SCHED_IDLE` or
    /// `SCHED_BATCH`: a claimed
    /// init gets the launcher's policy, and may still be exiting after its
    /// sandbox's outcome).
    fn pool_processes(&self, launcher: Pid) -> (Vec<i32>, Vec<i32>) {
        let (_, pids) = self.pool_cgroups(launcher);
        let zygotes: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| ppid(*p) == Some(launcher.as_raw()))
            .collect();
        let inits = pids
            .iter()
            .copied()
            .filter(|p| ppid(*p).is_some_and(|pp| zygotes.contains(&pp)))
            .filter(|p| prewarm_policy(*p))
            .collect();
        (zygotes, inits)
    }

    /// Wait until `n` pre-warmed inits of `launcher` sit in their slots;
    /// returns every pool process (zygotes and inits).
    fn wait_for_pool(&self, launcher: Pid, n: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (zygotes, inits) = self.pool_processes(launcher);
            if inits.len() >= n {
                return zygotes.into_iter().chain(inits).collect();
            }
            assert!(
                Instant::now() < deadline,
                "pool never filled: {zygotes:?} {inits:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The slot (cgroup name) holding the pre-warmed init when the pool
    /// (size 1) is full: the next spawn runs there.
    fn next_slot(&self, launcher: Pid) -> String {
        self.wait_for_pool(launcher, 1);
        let (_, inits) = self.pool_processes(launcher);
        let init = inits[0];
        let text = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
        let here = format!("/{}/hutch-pool-", self.0.parent);
        let line = text.lines().find(|l| l.contains(&here)).unwrap();
        line.rsplit('/').next().unwrap().to_owned()
    }

    /// Every process in the pool's cgroups is a zygote or an init (nothing
    /// a sandbox left behind).
    fn only_zygotes_and_inits(&self, launcher: Pid) {
        let (_, all) = self.pool_cgroups(launcher);
        let (zygotes, _) = self.pool_processes(launcher);
        for p in &all {
            // (A pid gone by now was an init exiting.)
            assert!(
                zygotes.contains(p) || ppid(*p).is_none_or(|pp| zygotes.contains(&pp)),
                "{p} (parent {:?}) left in a pool slot: {all:?}",
                ppid(*p)
            );
        }
    }

    /// Names of the pool slot cgroups of `launcher` (any hierarchy).
    fn slot_names(&self, launcher: Pid) -> Vec<String> {
        let mut names: Vec<String> = self
            .pool_cgroups(launcher)
            .0
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    fn parent_dirs_exist(&self) -> bool {
        self.parent_candidates().iter().any(|d| d.exists())
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

/// [`run`] once the pool (size 1) holds a pre-warmed init again.
fn run_warm(launcher: &mut Launcher, parent: &Parent, spec: &SandboxSpec) -> (Outcome, String) {
    parent.wait_for_pool(launcher.pid(), 1);
    run(launcher, spec)
}

/// [`run_warm`], asserting the spawn ran pooled and exited 0; its output.
fn run_warm_pooled_ok(launcher: &mut Launcher, parent: &Parent, spec: &SandboxSpec) -> String {
    let (o, out) = run_warm(launcher, parent, spec);
    assert_eq!(o.exit_code, Some(0), "{o:?} {out}");
    assert!(pooled(&o), "not pooled: {:?}", o.spawn_trace);
    out
}

/// Run `spec` in pool slot `slot` (pool size 1): short spawns of `filler`
/// first until that slot holds the pre-warmed init (slots take turns).
fn run_in(
    launcher: &mut Launcher,
    parent: &Parent,
    slot: &str,
    filler: &SandboxSpec,
    spec: &SandboxSpec,
) -> (Outcome, String) {
    try_run_in(launcher, parent, slot, filler, spec)
        .unwrap_or_else(|| panic!("slot {slot} never came back"))
}

/// [`run_in`], or `None` when `slot` did not come back (the launcher may
/// bury a slot instead of keeping it, e.g. when a free one is already
/// kept; under load the order of returns and refills varies).
fn try_run_in(
    launcher: &mut Launcher,
    parent: &Parent,
    slot: &str,
    filler: &SandboxSpec,
    spec: &SandboxSpec,
) -> Option<(Outcome, String)> {
    for _ in 0..6 {
        if parent.next_slot(launcher.pid()) == slot {
            let (o, out) = run(launcher, spec);
            assert!(reused(&o), "not in a reused slot: {:?}", o.spawn_trace);
            return Some((o, out));
        }
        let (o, out) = run(launcher, filler);
        assert_eq!(o.exit_code, Some(0), "{o:?} {out}");
    }
    None
}

/// Run `first`, then `second` in the same (reused) slot; starts over with
/// the next slot when the first one is not reused (at most 5 times).
fn run_pair_in_one_slot(
    launcher: &mut Launcher,
    parent: &Parent,
    filler: &SandboxSpec,
    first: &SandboxSpec,
    second: &SandboxSpec,
) -> ((Outcome, String), (Outcome, String)) {
    for _ in 0..5 {
        let slot = parent.next_slot(launcher.pid());
        let a = run(launcher, first);
        if let Some(b) = try_run_in(launcher, parent, &slot, filler, second) {
            return (a, b);
        }
    }
    panic!("no slot was reused in 5 attempts");
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

/// The spawn ran in a pool slot used before (its cgroup and zygote).
fn reused(o: &Outcome) -> bool {
    o.spawn_trace
        .iter()
        .any(|p| p.step == "launcher: limits set on reused slot")
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

fn ppid(pid: i32) -> Option<i32> {
    stat_field(pid, 4)
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Wait until `pid` is gone (reaped), or fail with `what`.
fn wait_gone(pids: &[i32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_pooled_init_is_used_once_and_carries_nothing_over() {
    if !privileged("a_pooled_init_is_used_once_and_carries_nothing_over") {
        return;
    }
    let parent = Parent::new("pool-once");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let (_, inits) = parent.pool_processes(launcher.pid());
    let script = "test -e /tmp/left && echo LEFTOVER; echo x > /tmp/left; \
                  readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts /proc/self/ns/mnt; \
                  hostname; id -u";
    let spec = sh("test.pool-once", dir.path(), &parent, script);
    let (a, out_a) = run_warm(&mut launcher, &parent, &spec);
    assert_eq!(a.exit_code, Some(0), "{a:?} {out_a}");
    assert!(
        pooled(&a),
        "first spawn was not pooled: {:?}",
        a.spawn_trace
    );
    // The claimed init is gone with its sandbox; the next spawn gets
    // another (forked by the same slot's zygote).
    wait_gone(&inits, "claimed init outlived its sandbox");
    let (b, out_b) = run_warm(&mut launcher, &parent, &spec);
    assert_eq!(b.exit_code, Some(0), "{b:?} {out_b}");
    assert!(
        pooled(&b),
        "second spawn was not pooled: {:?}",
        b.spawn_trace
    );
    // (B ran in a second slot, started while A ran; A's slot is re-warmed
    // meanwhile and takes the third.)
    let (c, out_c) = run_warm(&mut launcher, &parent, &spec);
    assert_eq!(c.exit_code, Some(0), "{c:?} {out_c}");
    assert!(
        reused(&c),
        "third spawn did not reuse a slot: {:?}",
        c.spawn_trace
    );
    assert!(!out_c.contains("LEFTOVER"), "{out_c}");
    assert!(!out_a.contains("LEFTOVER") && !out_b.contains("LEFTOVER"));
    // (Namespace inode numbers are not compared: a freed namespace's number
    // is reused, and A's namespaces are gone before B's init may unshare.
    // A's init is dead before B runs, and B's /tmp has nothing of A's.)
    assert!(
        out_a.contains("hutch") && out_a.contains(&UID.to_string()),
        "{out_a}"
    );
    // A user-namespace spec never takes a pooled init (its maps name the
    // plugin's ids): it goes cold, and still works.
    let mut userns = spec.clone();
    userns.user_namespace = true;
    let (d, out_d) = run_warm(&mut launcher, &parent, &userns);
    assert_eq!(d.exit_code, Some(0), "{d:?} {out_d}");
    assert!(!pooled(&d), "user-namespace spawn took a pooled init");
}

#[test]
fn a_reused_slot_reports_each_spawns_own_peak_memory_and_cpu() {
    if !privileged("a_reused_slot_reports_each_spawns_own_peak_memory_and_cpu") {
        return;
    }
    let parent = Parent::new("pool-stats");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    // A: dd's 64 MiB buffer is touched by every read; 16 of them burn CPU.
    let big = sh(
        "test.pool-stats",
        dir.path(),
        &parent,
        "dd if=/dev/zero of=/dev/null bs=64M count=16 2>/dev/null",
    );
    let slot = parent.next_slot(launcher.pid());
    let (a, _) = run(&mut launcher, &big);
    assert_eq!(a.exit_code, Some(0), "{a:?}");
    assert!(pooled(&a), "{:?}", a.spawn_trace);
    let peak_a = a.peak_memory_bytes.unwrap();
    assert!(peak_a >= 64 << 20, "A's peak {peak_a}");
    // B: next in A's slot, allocates next to nothing.
    let small = sh("test.pool-stats", dir.path(), &parent, "true");
    let (b, _) = run_in(&mut launcher, &parent, &slot, &small, &small);
    assert_eq!(b.exit_code, Some(0), "{b:?}");
    assert!(reused(&b), "B did not reuse A's slot: {:?}", b.spawn_trace);
    let peak_b = b.peak_memory_bytes.unwrap();
    assert!(peak_b < 32 << 20, "B's peak {peak_b} carries A's {peak_a}");
    assert!(
        b.cpu_time_ns * 4 < a.cpu_time_ns,
        "B's CPU time {} vs A's {}",
        b.cpu_time_ns,
        a.cpu_time_ns
    );
}

#[test]
fn a_slot_is_reused_only_after_a_normal_end() {
    if !privileged("a_slot_is_reused_only_after_a_normal_end") {
        return;
    }
    let parent = Parent::new("pool-dirty");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let lpid = launcher.pid();
    // A normal end that left a grandchild behind: the pid namespace takes
    // it down, and the slot holds only its zygote (then a new init).
    let leaver = sh(
        "test.pool-dirty",
        dir.path(),
        &parent,
        "(sleep 1000 &); true",
    );
    let oom_slot = parent.next_slot(lpid);
    let (a, _) = run(&mut launcher, &leaver);
    assert_eq!(a.exit_code, Some(0), "{a:?}");
    let (x, _) = run_warm(&mut launcher, &parent, &leaver);
    assert_eq!(x.exit_code, Some(0), "{x:?}");
    parent.wait_for_pool(lpid, 1);
    parent.only_zygotes_and_inits(lpid);
    // OOM-killed in a reused slot: that slot is buried (its cgroup goes;
    // names are never reused).
    let mut bomb = sh(
        "test.pool-dirty",
        dir.path(),
        &parent,
        "dd if=/dev/zero of=/dev/null bs=128M count=1",
    );
    bomb.limits.memory_max = Some(32 << 20);
    bomb.limits.swap_max = Some(0);
    let (o, _) = run_in(&mut launcher, &parent, &oom_slot, &leaver, &bomb);
    assert!(o.oom_killed, "{o:?}");
    let (b, _) = run_warm(&mut launcher, &parent, &leaver);
    assert_eq!(b.exit_code, Some(0), "{b:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while parent.slot_names(lpid).contains(&oom_slot) {
        assert!(Instant::now() < deadline, "OOM slot {oom_slot} not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed by the launcher: buried too.
    let killed_slot = parent.next_slot(lpid);
    let sleeper = sh("test.pool-dirty", dir.path(), &parent, "sleep 1000");
    let id = launcher.spawn(&sleeper).unwrap();
    loop {
        match launcher.recv().unwrap().0 {
            Event::Started { id: got, .. } if got == id => launcher.kill(id).unwrap(),
            Event::Exited { id: got, outcome } if got == id => {
                assert_eq!(outcome.signal, Some(9), "{outcome:?}");
                break;
            }
            _ => {}
        }
    }
    let (c, _) = run_warm(&mut launcher, &parent, &leaver);
    assert!(pooled(&c), "{:?}", c.spawn_trace);
    let deadline = Instant::now() + Duration::from_secs(5);
    while parent.slot_names(lpid).contains(&killed_slot) {
        assert!(
            Instant::now() < deadline,
            "killed slot {killed_slot} not removed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    parent.only_zygotes_and_inits(lpid);
}

#[test]
fn a_reused_slot_enforces_each_spawns_own_limits() {
    if !privileged("a_reused_slot_enforces_each_spawns_own_limits") {
        return;
    }
    let parent = Parent::new("pool-relimit");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null && echo big; \
                  for i in 1 2 3 4 5 6; do sleep 0.2 & done; wait && echo forked";
    // A: tight limits, ends normally (the script's failures are its own).
    let mut tight = sh("test.pool-relimit", dir.path(), &parent, "true");
    tight.limits.memory_max = Some(48 << 20);
    tight.limits.swap_max = Some(0);
    tight.limits.pids_max = Some(3);
    tight.limits.cpu_max = Some(0.5);
    // B: no limits at all, in A's slot: A's are gone.
    let other = sh("test.pool-relimit", dir.path(), &parent, "true");
    let free = sh("test.pool-relimit", dir.path(), &parent, script);
    let ((a, _), (b, out)) = run_pair_in_one_slot(&mut launcher, &parent, &other, &tight, &free);
    assert_eq!(a.exit_code, Some(0), "{a:?}");
    assert!(reused(&b), "{:?}", b.spawn_trace);
    assert_eq!(b.exit_code, Some(0), "{b:?} {out}");
    assert!(
        out.contains("big") && out.contains("forked") && !b.pids_limit_hit && !b.oom_killed,
        "A's limits held for B: {b:?} {out}"
    );
    // C: the tight limits again, in a slot reused after B's free run:
    // they bind again.
    let mut c_spec = sh("test.pool-relimit", dir.path(), &parent, script);
    c_spec.limits = tight.limits.clone();
    let ((b2, out_b2), (c, out)) =
        run_pair_in_one_slot(&mut launcher, &parent, &other, &free, &c_spec);
    assert!(
        out_b2.contains("big") && out_b2.contains("forked"),
        "{b2:?} {out_b2}"
    );
    assert!(reused(&c), "{:?}", c.spawn_trace);
    assert!(
        c.oom_killed || c.pids_limit_hit,
        "C's limits did not bind: {c:?} {out}"
    );
    assert!(!out.contains("big"), "{out}");
}

#[test]
fn limits_bind_pooled_spawns_from_their_first_instruction() {
    if !privileged("limits_bind_pooled_spawns_from_their_first_instruction") {
        return;
    }
    let parent = Parent::new("pool-limits");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
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
    // Exactly pids_max for the plugin: sh and three children fit.
    parent.wait_for_pool(launcher.pid(), 1);
    let mut three = sh(
        "test.pool-pids",
        dir.path(),
        &parent,
        "sleep 0.3 & sleep 0.3 & sleep 0.3 & wait",
    );
    three.limits.pids_max = Some(4);
    let (o, _) = run(&mut launcher, &three);
    assert!(pooled(&o) && !o.pids_limit_hit, "{o:?}");
    assert_eq!(o.exit_code, Some(0), "{o:?}");
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
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(2);
    // One spawn, so a used slot is back in the pool too.
    let (o, _) = run(
        &mut launcher,
        &sh("test.pool-exit", dir.path(), &parent, "true"),
    );
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    parent.exit_leaves_nothing(launcher, 2);
}

#[test]
fn pool_processes_die_with_a_killed_launcher() {
    if !privileged("pool_processes_die_with_a_killed_launcher") {
        return;
    }
    let parent = Parent::new("pool-kill");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(2);
    let lpid = launcher.pid();
    let (o, _) = run(
        &mut launcher,
        &sh("test.pool-kill", dir.path(), &parent, "true"),
    );
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    let pool = parent.wait_for_pool(lpid, 2);
    assert!(pool.len() >= 4, "zygotes and inits: {pool:?}");
    kill(lpid, Signal::SIGKILL).unwrap();
    drop(launcher); // reaps it
    wait_gone(&pool, "pool processes outlived a killed launcher");
    // Nobody was left to remove their cgroups: the start-up sweep does.
    let (_, pids) = parent.pool_cgroups(lpid);
    assert!(pids.is_empty(), "{pids:?}");
    let swept = parent.manager().sweep_stale().unwrap();
    assert!(swept.len() >= 2, "{swept:?}");
    assert_eq!(parent.pool_cgroups(lpid).0, Vec::<PathBuf>::new());
}

impl Parent {
    /// A launcher whose pool of `size` inits is pre-warmed under this
    /// parent and ready.
    fn pool_launcher(&self, size: usize) -> Launcher {
        let launcher = Launcher::start_with(LauncherConfig { pool_size: size }).unwrap();
        launcher.prewarm(Some(&self.0)).unwrap();
        self.wait_for_pool(launcher.pid(), size);
        launcher
    }

    /// Once `launcher`'s pool holds `n` ready inits: drop (close) the
    /// launcher, then assert that its pool processes were gone by the time
    /// it was reaped (it reaps its zygotes, bounded, and a zygote exits only
    /// after reaping its inits) and that no slot cgroup nor the parent is
    /// left.
    fn exit_leaves_nothing(&self, launcher: Launcher, n: usize) {
        let lpid = launcher.pid();
        let pool = self.wait_for_pool(lpid, n);
        drop(launcher);
        let left: Vec<i32> = pool.iter().copied().filter(|p| alive(*p)).collect();
        assert!(
            left.is_empty(),
            "pool processes outlived the launcher: {left:?}"
        );
        assert_eq!(self.pool_cgroups(lpid).0, Vec::<PathBuf>::new());
        assert!(!self.parent_dirs_exist(), "parent cgroup left behind");
    }
}

/// Processes on the host running `sleep <marker>` (a plugin's leftovers).
fn sleepers(marker: &str) -> Vec<i32> {
    let want = format!("sleep\0{marker}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.as_slice() == want.as_bytes())
        })
        .collect()
}

/// The pool on a cgroup2 hierarchy with no controllers enabled (on this
/// hybrid host: the unified mount, whose core files are `cgroup.procs`,
/// `cgroup.kill`, `cgroup.events` and `cpu.stat`): slots are reused after a
/// normal end, a plugin that double-forks leaves nothing, CPU time comes
/// from `cpu.stat`, a kill (`cgroup.kill`) buries the slot, a limit the
/// hierarchy cannot enforce is refused before any plugin code runs, and
/// every slot cgroup is gone when the launcher exits.
#[test]
fn the_pool_works_on_cgroup_v2_without_controllers() {
    if !privileged("the_pool_works_on_cgroup_v2_without_controllers") {
        return;
    }
    // Hybrid: the unified mount. (A pure v2 host has controllers at its
    // root: the other tests of this file run the pool on v2 there.)
    let root = Path::new("/sys/fs/cgroup/unified");
    if !root.join("cgroup.subtree_control").exists() {
        eprintln!("SKIP the_pool_works_on_cgroup_v2_without_controllers: no {root:?}");
        return;
    }
    let parent = Parent::at("pool-v2", root);
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let lpid = launcher.pid();
    let marker = format!("9{:05}.25", std::process::id() % 100_000);
    // A plugin that double-forks and exits, then one that burns some CPU
    // in the same (reused) slot.
    let leaver = sh(
        "test.pool-v2",
        dir.path(),
        &parent,
        &format!("(sleep {marker} &); echo left"),
    );
    let burner = sh(
        "test.pool-v2",
        dir.path(),
        &parent,
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo burnt",
    );
    let ((a, out_a), (b, out_b)) =
        run_pair_in_one_slot(&mut launcher, &parent, &leaver, &leaver, &burner);
    assert_eq!(a.exit_code, Some(0), "{a:?} {out_a}");
    assert!(pooled(&a) && out_a.contains("left"), "{a:?} {out_a}");
    assert_eq!(b.exit_code, Some(0), "{b:?} {out_b}");
    assert!(reused(&b) && out_b.contains("burnt"), "{b:?} {out_b}");
    assert!(b.cpu_time_ns > 0, "no CPU time from cpu.stat: {b:?}");
    assert!(
        !b.oom_killed && !b.pids_limit_hit && b.peak_memory_bytes.is_none(),
        "{b:?}"
    );
    assert_eq!(
        sleepers(&marker),
        Vec::<i32>::new(),
        "a double-forked child survived"
    );
    parent.wait_for_pool(lpid, 1);
    parent.only_zygotes_and_inits(lpid);
    // Limits this hierarchy cannot enforce: refused, the plugin never runs.
    let base = sh("test.pool-v2", dir.path(), &parent, "echo ran");
    let with = |f: fn(&mut SandboxSpec)| {
        let mut s = base.clone();
        f(&mut s);
        s
    };
    for (what, limited) in [
        ("memory", with(|s| s.limits.memory_max = Some(64 << 20))),
        ("pids", with(|s| s.limits.pids_max = Some(16))),
        ("cpu", with(|s| s.limits.cpu_max = Some(0.5))),
    ] {
        parent.wait_for_pool(lpid, 1);
        let (o, out) = run(&mut launcher, &limited);
        let err = o.setup_error.clone().unwrap_or_default();
        assert!(err.contains(what), "{what} limit not refused: {o:?} {out}");
        assert!(!out.contains("ran"), "{out}");
    }
    // Killed by the launcher (cgroup.kill): everything dies, the slot is
    // buried and its cgroup removed.
    let killed_slot = parent.next_slot(lpid);
    let stubborn = sh(
        "test.pool-v2",
        dir.path(),
        &parent,
        &format!("trap '' TERM; (sleep {marker} &); sleep {marker}"),
    );
    let id = launcher.spawn(&stubborn).unwrap();
    loop {
        match launcher.recv().unwrap().0 {
            Event::Started { id: got, .. } if got == id => {
                let deadline = Instant::now() + Duration::from_secs(5);
                while sleepers(&marker).len() < 2 {
                    assert!(Instant::now() < deadline, "the plugin never forked");
                    std::thread::sleep(Duration::from_millis(10));
                }
                launcher.kill(id).unwrap();
            }
            Event::Exited { id: got, outcome } if got == id => {
                assert_eq!(outcome.signal, Some(9), "{outcome:?}");
                break;
            }
            _ => {}
        }
    }
    wait_gone(&sleepers(&marker), "killed sandbox's processes");
    let deadline = Instant::now() + Duration::from_secs(5);
    while parent.slot_names(lpid).contains(&killed_slot) {
        assert!(
            Instant::now() < deadline,
            "killed slot {killed_slot} not removed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (c, out_c) = run_warm(&mut launcher, &parent, &leaver);
    assert_eq!(c.exit_code, Some(0), "{c:?} {out_c}");
    assert!(pooled(&c), "{:?}", c.spawn_trace);
    assert_eq!(sleepers(&marker), Vec::<i32>::new());
    parent.exit_leaves_nothing(launcher, 1);
}

/// A slot whose last sandbox left a large tmpfs leftover is not re-warmed
/// until the leftover is gone (only `SHMEM_SLACK`, 64 KiB, may remain): a
/// successor with a tight memory limit in that slot gets its whole limit.
/// The leftover is made to last: the test holds the predecessor's mount
/// namespace open (an fd of `/proc/PID/ns/mnt`), so its `/dev/shm` (16 MiB)
/// stays charged to the slot until the test lets go. With an unbounded
/// slack the slot would be re-warmed at once and its next sandbox, 24 MiB
/// limit with 12 MiB of its own, OOM-killed.
#[test]
fn a_slot_with_a_large_tmpfs_leftover_waits_for_it() {
    if !privileged("a_slot_with_a_large_tmpfs_leftover_waits_for_it") {
        return;
    }
    let parent = Parent::new("pool-shmem");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let lpid = launcher.pid();
    let marker = format!("8{:05}.75", std::process::id() % 100_000);
    let filler = sh("test.pool-shmem", dir.path(), &parent, "true");
    let predecessor = sh(
        "test.pool-shmem",
        dir.path(),
        &parent,
        &format!("head -c 16777216 /dev/zero > /dev/shm/fill && sleep {marker}; true"),
    );
    let mut successor = sh(
        "test.pool-shmem",
        dir.path(),
        &parent,
        "head -c 12582912 /dev/zero > /tmp/fill && echo fits",
    );
    successor.limits.memory_max = Some(24 << 20);
    successor.limits.swap_max = Some(0);
    let slot = parent.next_slot(lpid);
    // The predecessor fills /dev/shm; the test takes a hold on its mount
    // namespace, then lets it end normally.
    let id = launcher.spawn(&predecessor).unwrap();
    let mut held = None;
    loop {
        match launcher.recv().unwrap().0 {
            Event::Started { id: got, .. } if got == id => {
                let deadline = Instant::now() + Duration::from_secs(5);
                let pid = loop {
                    if let Some(p) = sleepers(&marker).first() {
                        break *p;
                    }
                    assert!(Instant::now() < deadline, "the predecessor never slept");
                    std::thread::sleep(Duration::from_millis(5));
                };
                held = Some(std::fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap());
                kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
            }
            Event::Exited { id: got, outcome } if got == id => {
                assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
                assert!(!outcome.oom_killed, "{outcome:?}");
                break;
            }
            _ => {}
        }
    }
    assert!(held.is_some());
    // While the leftover is held: the successor runs (in other slots) and
    // fits every time.
    let until = Instant::now() + Duration::from_millis(600);
    let mut runs = 0;
    while Instant::now() < until || runs < 3 {
        let (o, out) = run_warm(&mut launcher, &parent, &successor);
        assert!(
            o.exit_code == Some(0) && !o.oom_killed && out.contains("fits"),
            "successor (run {runs}) did not get its limit: {o:?} {out}"
        );
        runs += 1;
    }
    drop(held);
    // Once the leftover is gone the slot comes back, and fits again.
    let (o, out) = run_in(&mut launcher, &parent, &slot, &filler, &successor);
    assert!(
        o.exit_code == Some(0) && !o.oom_killed && out.contains("fits"),
        "successor in the predecessor's slot: {o:?} {out}"
    );
}

/// Holds a process in its exit (ptrace `PTRACE_EVENT_EXIT` stop: it has
/// begun to exit, but is not a zombie yet and its pidfd does not fire) until
/// released, from a tracer thread of its own. Released on drop.
struct ExitHolder {
    release: Option<std::sync::mpsc::Sender<()>>,
    held: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExitHolder {
    fn seize(pid: i32) -> Self {
        use nix::sys::ptrace;
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (seized_tx, seized_rx) = std::sync::mpsc::channel::<nix::Result<()>>();
        let thread = std::thread::spawn(move || {
            let pid = Pid::from_raw(pid);
            let seized = ptrace::seize(pid, ptrace::Options::PTRACE_O_TRACEEXIT);
            let ok = seized.is_ok();
            let _ = seized_tx.send(seized);
            if !ok {
                return;
            }
            loop {
                match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::PtraceEvent(_, _, ev)) if ev == libc::PTRACE_EVENT_EXIT => {
                        let _ = held_tx.send(());
                        // Until released (or the test is gone), at most 60 s.
                        let _ = release_rx.recv_timeout(Duration::from_secs(60));
                        let _ = ptrace::detach(pid, None);
                        return;
                    }
                    // A signal on its way to it: deliver it.
                    Ok(WaitStatus::Stopped(_, sig)) => {
                        let _ = ptrace::cont(pid, Some(sig));
                    }
                    Ok(WaitStatus::PtraceEvent(..)) => {
                        let _ = ptrace::cont(pid, None);
                    }
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        seized_rx.recv().unwrap().expect("PTRACE_SEIZE");
        Self {
            release: Some(release_tx),
            held: held_rx,
            thread: Some(thread),
        }
    }

    /// Wait (up to 10 s) until the process is held in its exit.
    fn wait_held(&self) {
        self.held
            .recv_timeout(Duration::from_secs(10))
            .expect("the process did not exit");
    }

    fn release(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for ExitHolder {
    fn drop(&mut self) {
        self.release();
    }
}

/// A slot goes back to the pool as soon as its sandbox reported every
/// plugin process gone, while its init is still exiting; the slot's next
/// init is claimed only once that init is gone (`PoolSlot::predecessor`),
/// so a sandbox never shares its cgroup (tasks, `pids_max`, counters) with
/// the last one's init. The test holds the first sandbox's init in its exit
/// (ptrace) and spawns until the slot's re-warmed init is claimed: that
/// spawn must not use the slot (it waits `PREDECESSOR_WAIT`, then spawns
/// cold); without the wait it would run beside the exiting init. Once
/// released, the pool serves spawns again and nothing is left.
#[test]
fn a_claim_waits_for_its_slots_last_init_to_exit() {
    if !privileged("a_claim_waits_for_its_slots_last_init_to_exit") {
        return;
    }
    let parent = Parent::new("pool-pred");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let lpid = launcher.pid();
    let slot = parent.next_slot(lpid);
    let (_, inits) = parent.pool_processes(lpid);
    let [init] = inits[..] else {
        panic!("one pre-warmed init expected: {inits:?}");
    };
    let spec = sh("test.pool-pred", dir.path(), &parent, "true");
    let mut holder = ExitHolder::seize(init);
    let (a, out_a) = run(&mut launcher, &spec);
    assert_eq!(a.exit_code, Some(0), "{a:?} {out_a}");
    assert!(
        pooled(&a),
        "first spawn was not pooled: {:?}",
        a.spawn_trace
    );
    holder.wait_held();
    // Slots take turns: spawn until the held init's slot is re-warmed and
    // claimed.
    let mut claimed_in_slot = false;
    for _ in 0..6 {
        let next = parent.next_slot(lpid);
        let (b, out_b) = run(&mut launcher, &spec);
        assert_eq!(b.exit_code, Some(0), "{b:?} {out_b}");
        if next != slot {
            continue;
        }
        assert!(
            !pooled(&b),
            "claimed a slot whose last init was still exiting: {:?}",
            b.spawn_trace
        );
        assert!(
            b.spawn_trace
                .iter()
                .any(|p| p.step == hutch_sandbox::launcher::PREDECESSOR_GAVE_UP),
            "{:?}",
            b.spawn_trace
        );
        claimed_in_slot = true;
        break;
    }
    assert!(claimed_in_slot, "slot {slot} never came back");
    assert!(alive(init), "the held init is gone");
    holder.release();
    wait_gone(&[init], "released init");
    let (c, out_c) = run_warm(&mut launcher, &parent, &spec);
    assert_eq!(c.exit_code, Some(0), "{c:?} {out_c}");
    assert!(pooled(&c), "{:?}", c.spawn_trace);
    parent.exit_leaves_nothing(launcher, 1);
}

/// Set in the copy of this test binary that a test runs in a private mount
/// namespace ([`in_private_mount_namespace`]).
const PRIVATE_MOUNTS: &str = "HUTCH_TEST_PRIVATE_MOUNTS";

/// For a test that mounts over host paths: `true` in a copy of this test
/// binary running test `name` alone in a private mount namespace of its own
/// (util-linux `unshare`), so the host and the other tests never see its
/// mounts; `false` in the test itself, after that copy passed.
fn in_private_mount_namespace(name: &str) -> bool {
    if std::env::var_os(PRIVATE_MOUNTS).is_some() {
        return true;
    }
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(PRIVATE_MOUNTS, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    false
}

/// Replace `/etc/localtime` (which resolves into /usr) with `file`, as a
/// tzdata upgrade does, by a bind mount (in a private mount namespace only:
/// [`in_private_mount_namespace`]).
fn bind_over_localtime(file: &Path) {
    nix::mount::mount(
        Some(file),
        "/etc/localtime",
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
}

#[test]
fn a_replaced_system_file_reaches_sandboxes_after_the_base_ttl() {
    const NAME: &str = "a_replaced_system_file_reaches_sandboxes_after_the_base_ttl";
    if !privileged(NAME) {
        return;
    }
    // The test replaces /etc/localtime with a bind mount.
    if !in_private_mount_namespace(NAME) {
        return;
    }
    let parent = Parent::new("pool-base");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let lpid = launcher.pid();
    let spec = sh(
        "test.pool-base",
        dir.path(),
        &parent,
        "head -c 8 /etc/localtime",
    );
    let (a, out_a) = run_warm(&mut launcher, &parent, &spec);
    assert_eq!(a.exit_code, Some(0), "{a:?} {out_a}");
    assert!(pooled(&a) && out_a.starts_with("TZif"), "{a:?} {out_a}");
    // Replace the time zone file once the pool holds an init again.
    parent.wait_for_pool(lpid, 1);
    let tz = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tz.path(), "HUTCH-TZ").unwrap();
    std::fs::set_permissions(tz.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    bind_over_localtime(tz.path());
    // Past the base plan's reuse: the next sandbox sees the new file. The
    // pooled init was built on the old one: it is replaced (this spawn goes
    // cold), and the pool refills with an init on the new file.
    std::thread::sleep(hutch_sandbox::launcher::BASE_PLAN_TTL + Duration::from_millis(100));
    let (b, out_b) = run(&mut launcher, &spec);
    assert_eq!(b.exit_code, Some(0), "{b:?} {out_b}");
    assert_eq!(out_b, "HUTCH-TZ", "{b:?}");
    assert!(!pooled(&b), "a stale pooled init was claimed: {b:?}");
    let (c, out_c) = run_warm(&mut launcher, &parent, &spec);
    assert_eq!(c.exit_code, Some(0), "{c:?} {out_c}");
    assert_eq!(out_c, "HUTCH-TZ", "{c:?}");
    assert!(pooled(&c), "the pool did not refill: {:?}", c.spawn_trace);
    drop(launcher);
    nix::mount::umount("/etc/localtime").unwrap();
    // Cold spawns (no pool) open the base sources themselves: one right
    // after the file is replaced again, within the cached plan's second,
    // must not fail its setup on the stale plan.
    let mut cold = Launcher::start_with(LauncherConfig { pool_size: 0 }).unwrap();
    let (d, out_d) = run(&mut cold, &spec);
    assert_eq!(
        (d.exit_code, out_d.get(..4)),
        (Some(0), Some("TZif")),
        "{d:?}"
    );
    bind_over_localtime(tz.path());
    let (e, out_e) = run(&mut cold, &spec);
    assert_eq!(e.exit_code, Some(0), "{e:?} {out_e}");
    assert_eq!(out_e, "HUTCH-TZ", "{e:?}");
    drop(cold);
    nix::mount::umount("/etc/localtime").unwrap();
}

#[test]
fn a_pooled_spawn_gets_its_own_tmp_size_and_accounts() {
    if !privileged("a_pooled_spawn_gets_its_own_tmp_size_and_accounts") {
        return;
    }
    let parent = Parent::new("pool-tmp");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    // A pre-warmed init mounted /tmp and /dev/shm at the default size and
    // wrote the shared /etc files; the claim remounts both (empty) for
    // another size and writes passwd and group for the sandbox's ids.
    let script = "grep -E ' /(tmp|dev/shm) ' /proc/self/mounts | cut -d' ' -f2,4; \
                  id -un; id -gn; cat /etc/hosts; ls -A /tmp /dev/shm";
    let mut small = sh("test.pool-tmp", dir.path(), &parent, script);
    small.limits.tmp_size = 4 << 20;
    let default = sh("test.pool-tmp", dir.path(), &parent, script);
    for (spec, size) in [
        (&small, "size=4096k"),
        (&default, "size=65536k"),
        (&small, "size=4096k"),
    ] {
        let out = run_warm_pooled_ok(&mut launcher, &parent, spec);
        let mounts: Vec<&str> = out.lines().take(2).collect();
        assert_eq!(mounts.len(), 2, "{out}");
        for m in mounts {
            assert!(
                m.contains(size) && m.contains("nosuid,nodev,noexec"),
                "{m}: {out}"
            );
        }
        assert!(
            out.contains("\nhutch\nhutch\n127.0.0.1 localhost\n::1 localhost\n"),
            "{out}"
        );
        assert!(out.ends_with("/dev/shm:\n\n/tmp:\n"), "not empty: {out}");
    }
}

#[test]
fn a_slot_zygote_keeps_only_the_host_mounts_its_inits_need() {
    if !privileged("a_slot_zygote_keeps_only_the_host_mounts_its_inits_need") {
        return;
    }
    let parent = Parent::new("pool-mounts");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let lpid = launcher.pid();
    parent.wait_for_pool(lpid, 1);
    let (zygotes, _) = parent.pool_processes(lpid);
    assert!(!zygotes.is_empty(), "no zygote");
    let points = |pid: &str| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .collect()
    };
    let host = points("self");
    for z in &zygotes {
        let own = points(&z.to_string());
        // Its own namespace (a copy), without /sys and its cgroup
        // hierarchies: nothing an init reaches before pivot_root.
        assert_ne!(
            std::fs::read_link(format!("/proc/{z}/ns/mnt")).unwrap(),
            std::fs::read_link("/proc/self/ns/mnt").unwrap()
        );
        assert!(
            own.iter().any(|m| m == "/") && own.iter().any(|m| m == "/proc"),
            "{own:?}"
        );
        assert!(!own.iter().any(|m| m.starts_with("/sys")), "{own:?}");
        assert!(own.len() < host.len(), "{own:?} against {host:?}");
    }
    // Its inits still build every sandbox.
    let spec = sh(
        "test.pool-mounts",
        dir.path(),
        &parent,
        "cat /etc/hosts >/dev/null && ls /usr/bin/env",
    );
    for _ in 0..2 {
        run_warm_pooled_ok(&mut launcher, &parent, &spec);
    }
}

#[test]
fn host_mounts_under_system_trees_stay_visible_to_pooled_sandboxes() {
    const NAME: &str = "host_mounts_under_system_trees_stay_visible_to_pooled_sandboxes";
    if !privileged(NAME) || !in_private_mount_namespace(NAME) {
        return;
    }
    // A separate file system under /usr (as /usr/local often is), mounted
    // before the launcher starts; /sys stays out of the zygote's table.
    let under = Path::new("/usr/local/src");
    if !under.is_dir() {
        eprintln!("SKIP {NAME}: no {under:?}");
        return;
    }
    nix::mount::mount(
        Some("tmpfs"),
        under,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755,size=1m"),
    )
    .unwrap();
    std::fs::write(under.join("hutch-marker"), "seen").unwrap();
    std::fs::set_permissions(
        under.join("hutch-marker"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let parent = Parent::new("pool-submount");
    let dir = plugin_dir();
    let mut launcher = parent.pool_launcher(1);
    let spec = sh(
        "test.pool-submount",
        dir.path(),
        &parent,
        "cat /usr/local/src/hutch-marker",
    );
    for _ in 0..2 {
        let out = run_warm_pooled_ok(&mut launcher, &parent, &spec);
        assert_eq!(out, "seen");
    }
    drop(launcher);
    nix::mount::umount(under).unwrap();
}
