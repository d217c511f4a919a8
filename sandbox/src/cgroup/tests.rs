//! cgroup tests: file logic against temp dirs, and real kernel behaviour as
//! root (v1 hierarchies of this host, and the cgroup2 mount without
//! controllers for `cgroup.kill`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- helpers

/// Same gate as `hutch_tests::privileged` (this crate cannot depend on it).
fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HUTCH_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("{test}: needs root, and HUTCH_REQUIRE_PRIVILEGED_TESTS=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs root");
    false
}

fn unique_parent(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "hutch-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A manager whose parent (and everything below) is removed on drop.
struct ManagerGuard(CgroupManager);

impl Drop for ManagerGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_parent() {
            eprintln!("cleanup of {:?} failed: {e}", self.0.parent_dirs());
        }
    }
}

fn real_manager(tag: &str) -> Result<ManagerGuard, CgroupError> {
    Ok(ManagerGuard(CgroupManager::new(CgroupConfig {
        parent: unique_parent(tag),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    })?))
}

/// A child killed and reaped on drop, by its own pid only.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c 'read go; SCRIPT'`: blocks until [`go`] so it can be attached first.
fn spawn_waiting(script: &str) -> std::io::Result<ChildGuard> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(ChildGuard)
}

fn go(child: &mut ChildGuard) -> std::io::Result<()> {
    let stdin = child
        .0
        .stdin
        .as_mut()
        .ok_or(std::io::ErrorKind::BrokenPipe)?;
    stdin.write_all(b"go\n")
}

fn pid_of(child: &ChildGuard) -> i32 {
    i32::try_from(child.0.id()).unwrap()
}

/// Gone or a zombie (a reparented child waiting for init to reap it).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Every existing `/sys/fs/cgroup/*/<rel>` (any hierarchy, also name=systemd).
fn leftovers(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join(rel);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------- unit tests (temp dirs)

#[test]
fn names_must_be_single_safe_components() {
    for bad in ["", ".", "..", "a/b", "a b", "x\n", "\u{e9}"] {
        assert!(check_component(bad).is_err(), "{bad:?} accepted");
    }
    for good in ["plugin-1", "hutch_a.b", "user@x", "io.github.x-1-2"] {
        assert!(check_component(good).is_ok(), "{good:?} rejected");
    }
    assert!(check_parent("/abs").is_err());
    assert!(check_parent("hutch/../x").is_err());
    assert!(check_parent("hutch/sub").is_ok());
}

/// A fake v2 hierarchy root in a temp dir.
fn fake_v2(controllers: &str) -> Result<(tempfile::TempDir, tempfile::TempDir), std::io::Error> {
    let root = tempfile::tempdir()?;
    std::fs::write(root.path().join("cgroup.controllers"), controllers)?;
    std::fs::write(root.path().join("cgroup.subtree_control"), "")?;
    std::fs::write(root.path().join("cgroup.procs"), "")?;
    let parent = root.path().join("hutch");
    std::fs::create_dir(&parent)?;
    std::fs::write(parent.join("cgroup.controllers"), controllers)?;
    std::fs::write(parent.join("cgroup.subtree_control"), "")?;
    std::fs::write(parent.join("cgroup.procs"), "")?;
    let proc_root = tempfile::tempdir()?;
    std::fs::write(
        proc_root.path().join("swaps"),
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
    )?;
    Ok((root, proc_root))
}

fn fake_config(mounts: CgroupHierarchies, proc_root: &Path) -> CgroupConfig {
    CgroupConfig {
        mounts: Some(mounts),
        proc_root: proc_root.to_owned(),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    }
}

#[test]
fn v2_enables_controllers_writes_limits_and_reads_stats() -> TestResult {
    let (root, proc_root) = fake_v2("cpuset cpu io memory pids")?;
    let mgr = CgroupManager::new(fake_config(
        CgroupHierarchies::V2 {
            mount: root.path().to_owned(),
        },
        proc_root.path(),
    ))?;
    assert_eq!(
        std::fs::read_to_string(root.path().join("cgroup.subtree_control"))?,
        "+memory +pids +cpu"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("hutch/cgroup.subtree_control"))?,
        "+memory +pids +cpu"
    );
    let limits = CgroupLimits {
        memory_max: Some(32 << 20),
        swap_max: Some(0),
        cpu_max: None,
        pids_max: Some(8),
    };
    let cg = mgr.create("sb1", &limits)?;
    let dir = root.path().join("hutch/sb1");
    assert_eq!(cg.dirs(), std::slice::from_ref(&dir));
    assert_eq!(std::fs::read_to_string(dir.join("memory.max"))?, "33554432");
    assert_eq!(std::fs::read_to_string(dir.join("pids.max"))?, "8");
    assert!(cg.v2_dir_fd()?.is_some());
    assert_eq!(cg.procs_paths(), [dir.join("cgroup.procs")]);

    // The kernel's formats, as written by a real cgroup2.
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
    )?;
    std::fs::write(dir.join("pids.events"), "max 3\n")?;
    std::fs::write(dir.join("memory.peak"), "4194304\n")?;
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
    )?;
    let s = cg.stats()?;
    assert_eq!(
        s,
        CgroupStats {
            oom_kills: 1,
            pids_limit_hits: 3,
            memory_peak: Some(4 << 20),
            cpu_usage_ns: 2_500_000
        }
    );
    // Creating the same name again is a collision, not a silent reuse.
    assert!(matches!(
        mgr.create("sb1", &limits),
        Err(CgroupError::Exists { .. })
    ));
    std::mem::forget(cg); // a temp dir: rmdir of a non-empty fake would only log
    Ok(())
}

#[test]
fn v2_writes_swap_max_when_the_file_exists_and_cpu_max_as_quota_period() -> TestResult {
    let (root, proc_root) = fake_v2("cpu memory pids")?;
    let mgr = CgroupManager::new(fake_config(
        CgroupHierarchies::V2 {
            mount: root.path().to_owned(),
        },
        proc_root.path(),
    ))?;
    let cg = mgr.create("sb2", &CgroupLimits::default())?;
    let dir = root.path().join("hutch/sb2");
    std::fs::write(dir.join("memory.swap.max"), "max\n")?;
    std::fs::write(dir.join("cpu.max"), "max 100000\n")?;
    cg.set_limits(&CgroupLimits {
        memory_max: Some(1 << 30),
        swap_max: Some(0),
        cpu_max: Some(0.5),
        pids_max: None,
    })?;
    assert_eq!(std::fs::read_to_string(dir.join("memory.swap.max"))?, "0");
    assert_eq!(
        std::fs::read_to_string(dir.join("cpu.max"))?,
        "50000 100000"
    );
    let err = cg
        .set_limits(&CgroupLimits {
            cpu_max: Some(0.0),
            ..CgroupLimits::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("cpu_max"), "{err}");
    std::mem::forget(cg);
    Ok(())
}

#[test]
fn swap_limit_without_accounting_is_refused_when_swap_is_active() -> TestResult {
    let (root, proc_root) = fake_v2("memory pids")?;
    std::fs::write(
        proc_root.path().join("swaps"),
        "Filename Type Size Used Priority\n/swapfile file 1048572 0 -2\n",
    )?;
    let mgr = CgroupManager::new(fake_config(
        CgroupHierarchies::V2 {
            mount: root.path().to_owned(),
        },
        proc_root.path(),
    ))?;
    let limits = CgroupLimits {
        memory_max: Some(1 << 20),
        swap_max: Some(0),
        ..CgroupLimits::default()
    };
    let err = mgr.create("sb3", &limits).unwrap_err();
    assert!(err.to_string().contains("swap accounting off"), "{err}");
    Ok(())
}

#[test]
fn v2_moves_daemon_processes_into_a_leaf_before_enabling_controllers() -> TestResult {
    let (root, proc_root) = fake_v2("memory pids")?;
    // The daemon's own cgroup, not the hierarchy root, holding processes.
    let own = root.path().join("system.slice/hutchd.service");
    std::fs::create_dir_all(&own)?;
    std::fs::write(own.join("cgroup.controllers"), "memory pids")?;
    std::fs::write(own.join("cgroup.subtree_control"), "")?;
    std::fs::write(own.join("cgroup.procs"), "4242\n")?;
    std::fs::create_dir(own.join("daemon"))?;
    std::fs::create_dir(own.join("hutch"))?;
    std::fs::write(own.join("hutch/cgroup.subtree_control"), "")?;
    std::fs::write(own.join("hutch/cgroup.procs"), "")?;
    std::fs::create_dir(proc_root.path().join("self"))?;
    std::fs::write(
        proc_root.path().join("self/cgroup"),
        "0::/system.slice/hutchd.service\n",
    )?;
    let mgr = CgroupManager::new(CgroupConfig {
        placement: Placement::Auto,
        ..fake_config(
            CgroupHierarchies::V2 {
                mount: root.path().to_owned(),
            },
            proc_root.path(),
        )
    })?;
    assert_eq!(
        std::fs::read_to_string(own.join("daemon/cgroup.procs"))?,
        "4242"
    );
    assert_eq!(
        std::fs::read_to_string(own.join("cgroup.subtree_control"))?,
        "+memory +pids"
    );
    assert_eq!(mgr.parent_dirs(), [own.join("hutch")]);
    Ok(())
}

#[test]
fn v2_missing_delegated_controller_is_just_not_enabled() -> TestResult {
    // The hybrid host's cgroup2 has only hugetlb: nothing to enable, the
    // manager still works for kill/accounting of the core files.
    let (root, proc_root) = fake_v2("hugetlb")?;
    let mgr = CgroupManager::new(fake_config(
        CgroupHierarchies::V2 {
            mount: root.path().to_owned(),
        },
        proc_root.path(),
    ))?;
    assert_eq!(
        std::fs::read_to_string(root.path().join("cgroup.subtree_control"))?,
        ""
    );
    let err = mgr
        .create(
            "x",
            &CgroupLimits {
                pids_max: Some(4),
                ..CgroupLimits::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, CgroupError::ControllerMissing { .. }),
        "{err}"
    );
    Ok(())
}

fn fake_v1() -> Result<(tempfile::TempDir, BTreeMap<Controller, PathBuf>), std::io::Error> {
    let root = tempfile::tempdir()?;
    let mut mounts = BTreeMap::new();
    for c in Controller::ALL {
        let d = root.path().join(c.name());
        std::fs::create_dir(&d)?;
        mounts.insert(c, d);
    }
    Ok((root, mounts))
}

#[test]
fn v1_creates_only_used_hierarchies_and_reads_v1_stats() -> TestResult {
    let (root, mounts) = fake_v1()?;
    let proc_root = tempfile::tempdir()?;
    std::fs::write(
        proc_root.path().join("swaps"),
        "Filename Type Size Used Priority\n",
    )?;
    let mgr = CgroupManager::new(fake_config(
        CgroupHierarchies::V1 { mounts },
        proc_root.path(),
    ))?;
    let cg = mgr.create(
        "a",
        &CgroupLimits {
            memory_max: Some(64 << 20),
            pids_max: Some(16),
            ..Default::default()
        },
    )?;
    // No cpu limit: no cpu cgroup.
    assert!(!root.path().join("cpu/hutch/a").exists());
    for c in ["memory", "pids", "cpuacct", "freezer"] {
        assert!(root.path().join(c).join("hutch/a").is_dir(), "{c}");
    }
    let mem = root.path().join("memory/hutch/a");
    assert_eq!(
        std::fs::read_to_string(mem.join("memory.limit_in_bytes"))?,
        "67108864"
    );
    // memsw = memory + swap, once the accounting file exists.
    std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "")?;
    cg.set_limits(&CgroupLimits {
        memory_max: Some(64 << 20),
        swap_max: Some(0),
        ..Default::default()
    })?;
    assert_eq!(
        std::fs::read_to_string(mem.join("memory.memsw.limit_in_bytes"))?,
        "67108864"
    );
    let err = cg
        .set_limits(&CgroupLimits {
            swap_max: Some(0),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("memory_max"), "{err}");

    std::fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )?;
    std::fs::write(mem.join("memory.max_usage_in_bytes"), "1000\n")?;
    std::fs::write(root.path().join("pids/hutch/a/pids.events"), "max 5\n")?;
    std::fs::write(
        root.path().join("cpuacct/hutch/a/cpuacct.usage"),
        "123456789\n",
    )?;
    let s = cg.stats()?;
    assert_eq!(
        s,
        CgroupStats {
            oom_kills: 2,
            pids_limit_hits: 5,
            memory_peak: Some(1000),
            cpu_usage_ns: 123_456_789
        }
    );

    let cpu = mgr.create(
        "b",
        &CgroupLimits {
            cpu_max: Some(1.5),
            ..Default::default()
        },
    )?;
    let cdir = root.path().join("cpu/hutch/b");
    assert_eq!(
        std::fs::read_to_string(cdir.join("cpu.cfs_quota_us"))?,
        "150000"
    );
    assert_eq!(
        std::fs::read_to_string(cdir.join("cpu.cfs_period_us"))?,
        "100000"
    );
    assert_eq!(cpu.procs_paths().len(), 5);
    assert!(cpu.v2_dir_fd()?.is_none());
    std::mem::forget(cpu);
    std::mem::forget(cg);
    Ok(())
}

// ---------------------------------------------------------------- real kernel (root)

#[test]
fn real_oom_kill_is_counted() -> TestResult {
    if !privileged("real_oom_kill_is_counted") {
        return Ok(());
    }
    let mgr = real_manager("oom")?;
    let limits = CgroupLimits {
        memory_max: Some(32 << 20),
        swap_max: Some(0),
        ..Default::default()
    };
    let cg = mgr.0.create("oom", &limits)?;
    let mut child = spawn_waiting("exec dd if=/dev/zero of=/dev/null bs=200M count=1")?;
    cg.attach(pid_of(&child))?;
    go(&mut child)?;
    let status = child.0.wait()?;
    assert_eq!(
        status.signal(),
        Some(9),
        "dd should be OOM-killed, got {status:?}"
    );
    let stats = cg.stats()?;
    assert!(stats.oom_kills >= 1, "{stats:?}");
    assert!(
        stats.memory_peak.is_some_and(|p| p <= 33 << 20),
        "{stats:?}"
    );
    let dirs = cg.dirs().to_vec();
    cg.remove()?;
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    Ok(())
}

#[test]
fn real_pids_limit_hit_is_counted() -> TestResult {
    if !privileged("real_pids_limit_hit_is_counted") {
        return Ok(());
    }
    let mgr = real_manager("pids")?;
    let cg = mgr.0.create(
        "pids",
        &CgroupLimits {
            pids_max: Some(8),
            ..Default::default()
        },
    )?;
    let mut child = spawn_waiting("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 60 & done; wait")?;
    cg.attach(pid_of(&child))?;
    go(&mut child)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stats = cg.stats()?;
    while stats.pids_limit_hits == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        stats = cg.stats()?;
    }
    assert!(stats.pids_limit_hits >= 1, "{stats:?}");
    assert!(cg.pids().len() <= 8, "{:?}", cg.pids());
    cg.remove()?;
    Ok(())
}

#[test]
fn real_kill_all_kills_sigterm_ignoring_process_and_its_children_then_remove_leaves_nothing()
-> TestResult {
    if !privileged("real_kill_all_kills_sigterm_ignoring_process_and_its_children") {
        return Ok(());
    }
    let mgr = real_manager("kill")?;
    let parent = mgr.0.parent_dirs()[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cg = mgr.0.create(
        "kill",
        &CgroupLimits {
            pids_max: Some(32),
            cpu_max: Some(1.0),
            ..Default::default()
        },
    )?;
    let mut child =
        spawn_waiting("trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait; wait")?;
    let pid = pid_of(&child);
    cg.attach(pid)?;
    go(&mut child)?;
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap()).read_line(&mut line)?;
    assert_eq!(line.trim(), "ready");
    let before = cg.pids();
    assert!(before.len() >= 3 && before.contains(&pid), "{before:?}");
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(50));
    assert!(child.0.try_wait()?.is_none(), "sh should ignore SIGTERM");

    cg.kill_all()?;
    let status = child.0.wait()?;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(cg.pids().is_empty(), "{:?}", cg.pids());
    for p in &before {
        assert!(dead(*p), "pid {p} survived kill_all");
    }
    // 5 hierarchies (memory, pids, cpu, cpuacct, freezer); never systemd.
    assert_eq!(cg.dirs().len(), 5, "{:?}", cg.dirs());
    assert!(leftovers(&format!("{parent}/kill")).len() == 5);
    cg.remove()?;
    assert!(
        leftovers(&format!("{parent}/kill")).is_empty(),
        "{:?}",
        leftovers(&format!("{parent}/kill"))
    );
    drop(mgr);
    assert!(leftovers(&parent).is_empty(), "{:?}", leftovers(&parent));
    Ok(())
}

#[test]
fn real_drop_removes_and_kills() -> TestResult {
    if !privileged("real_drop_removes_and_kills") {
        return Ok(());
    }
    let mgr = real_manager("drop")?;
    let cg = mgr.0.create("drop", &CgroupLimits::default())?;
    let mut child = spawn_waiting("sleep 1000")?;
    cg.attach(pid_of(&child))?;
    go(&mut child)?;
    let dirs = cg.dirs().to_vec();
    drop(cg);
    assert_eq!(child.0.wait()?.signal(), Some(9));
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    Ok(())
}

#[test]
fn real_sweep_stale_removes_a_leftover_with_its_process() -> TestResult {
    if !privileged("real_sweep_stale_removes_a_leftover") {
        return Ok(());
    }
    let mgr = real_manager("sweep")?;
    let parent = mgr.0.config.parent.clone();
    let cg = mgr.0.create(
        "stale-1",
        &CgroupLimits {
            memory_max: Some(64 << 20),
            ..Default::default()
        },
    )?;
    let mut child = spawn_waiting("sleep 1000")?;
    cg.attach(pid_of(&child))?;
    go(&mut child)?;
    let mut dirs = cg.dirs().to_vec();
    std::mem::forget(cg); // as if the daemon crashed
    // A crash mid-create: only the memory directory exists, with a process.
    let partial = mgr.0.parent_dirs()[0].join("partial-2");
    assert!(partial.starts_with("/sys/fs/cgroup/memory"), "{partial:?}");
    std::fs::create_dir(&partial)?;
    dirs.push(partial.clone());
    let mut child2 = spawn_waiting("sleep 1000")?;
    std::fs::write(partial.join("cgroup.procs"), pid_of(&child2).to_string())?;
    go(&mut child2)?;

    let again = CgroupManager::new(CgroupConfig {
        parent: parent.clone(),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    })?;
    assert_eq!(
        again.sweep_stale()?,
        vec!["partial-2".to_owned(), "stale-1".to_owned()]
    );
    assert_eq!(child.0.wait()?.signal(), Some(9));
    assert_eq!(child2.0.wait()?.signal(), Some(9));
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    assert!(again.sweep_stale()?.is_empty());
    Ok(())
}

/// A leftover without its freezer directory whose process keeps forking:
/// one kill pass misses children forked after `cgroup.procs` was read, so
/// the kill must repeat until the group is empty (found as a CI flake).
#[test]
fn real_sweep_stale_kills_a_forking_leftover_without_freezer() -> TestResult {
    if !privileged("real_sweep_stale_kills_a_forking_leftover_without_freezer") {
        return Ok(());
    }
    let mgr = real_manager("sweepfork")?;
    let partial = mgr.0.parent_dirs()[0].join("partial-3");
    assert!(partial.starts_with("/sys/fs/cgroup/memory"), "{partial:?}");
    std::fs::create_dir_all(&partial)?;
    // Bounded: at most 3000 sleepers, however slow the kill is.
    let mut child =
        spawn_waiting("i=0; while [ $i -lt 3000 ]; do sleep 1000 & i=$((i+1)); done; wait")?;
    std::fs::write(partial.join("cgroup.procs"), pid_of(&child).to_string())?;
    go(&mut child)?;
    std::thread::sleep(Duration::from_millis(30));
    let again = CgroupManager::new(CgroupConfig {
        parent: mgr.0.config.parent.clone(),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    })?;
    assert_eq!(again.sweep_stale()?, vec!["partial-3".to_owned()]);
    assert_eq!(child.0.wait()?.signal(), Some(9));
    assert!(!partial.exists());
    Ok(())
}

#[test]
fn real_v2_cgroup_kill_on_the_unified_mount() -> TestResult {
    if !privileged("real_v2_cgroup_kill_on_the_unified_mount") {
        return Ok(());
    }
    // Pure v2 hosts: the main mount; hybrid: the unified mount (no controllers,
    // but cgroup.procs, cgroup.kill, cgroup.events and cpu.stat are core).
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|m| m.join("cgroup.kill").exists() || m.join("cgroup.subtree_control").exists());
    let Some(mount) = mount else {
        eprintln!("SKIP real_v2_cgroup_kill_on_the_unified_mount: no cgroup2 mount");
        return Ok(());
    };
    let mgr = ManagerGuard(CgroupManager::new(CgroupConfig {
        parent: unique_parent("v2"),
        mounts: Some(CgroupHierarchies::V2 { mount }),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    })?);
    let cg = mgr.0.create("v2kill", &CgroupLimits::default())?;
    assert!(cg.v2_dir_fd()?.is_some());
    let mut child = spawn_waiting("trap '' TERM; sleep 1000 & echo ready; wait")?;
    cg.attach(pid_of(&child))?;
    go(&mut child)?;
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap()).read_line(&mut line)?;
    let before = cg.pids();
    assert_eq!(before.len(), 2, "{before:?}");
    cg.kill_all()?;
    assert_eq!(child.0.wait()?.signal(), Some(9));
    for p in &before {
        assert!(dead(*p), "pid {p} survived cgroup.kill");
    }
    let _ = cg.stats()?;
    let dirs = cg.dirs().to_vec();
    cg.remove()?;
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    Ok(())
}

/// A cgroup2 hierarchy without controllers (hybrid: the unified mount): a
/// reused cgroup's limits can be reset (nothing to lift), a limit it cannot
/// enforce is refused with the controller's name.
#[test]
fn real_v2_without_controllers_resets_nothing_and_refuses_limits() -> TestResult {
    if !privileged("real_v2_without_controllers_resets_nothing_and_refuses_limits") {
        return Ok(());
    }
    let mount = PathBuf::from("/sys/fs/cgroup/unified");
    if !mount.join("cgroup.subtree_control").exists()
        || read_trim(&mount.join("cgroup.controllers"))?.contains("memory")
    {
        eprintln!("SKIP real_v2_without_controllers_resets_nothing_and_refuses_limits");
        return Ok(());
    }
    let mgr = ManagerGuard(CgroupManager::new(CgroupConfig {
        parent: unique_parent("v2bare"),
        mounts: Some(CgroupHierarchies::V2 { mount }),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    })?);
    let cg = mgr.0.create_unlimited("slot")?;
    cg.rewrite_limits(&CgroupLimits::default())?;
    cg.change_limits(&CgroupLimits::default(), &CgroupLimits::default())?;
    for (what, limits) in [
        (
            "memory",
            CgroupLimits {
                memory_max: Some(1 << 26),
                ..CgroupLimits::default()
            },
        ),
        (
            "memory",
            CgroupLimits {
                swap_max: Some(0),
                ..CgroupLimits::default()
            },
        ),
        (
            "pids",
            CgroupLimits {
                pids_max: Some(8),
                ..CgroupLimits::default()
            },
        ),
        (
            "cpu",
            CgroupLimits {
                cpu_max: Some(0.5),
                ..CgroupLimits::default()
            },
        ),
    ] {
        for result in [
            cg.change_limits(&CgroupLimits::default(), &limits),
            cg.rewrite_limits(&limits),
        ] {
            match result {
                Err(CgroupError::ControllerMissing { controller, .. }) => {
                    assert_eq!(controller, what);
                }
                other => panic!("{limits:?} not refused: {other:?}"),
            }
        }
    }
    let base = cg.begin_stats()?;
    assert!(base.peak_reset(), "no peak to reset: nothing carried over");
    cg.remove()?;
    Ok(())
}

/// Not a test: prints create / attach / remove latencies on this host,
/// back-to-back and after 50 ms idle gaps (the `cgroup.procs` RCU stall), for
/// v1 attach, v2 attach (the cgroup2 mount) and v2 `clone3(CLONE_INTO_CGROUP)`
/// (whose "attach" column is the whole clone3, i.e. fork cost included).
/// `cargo test -p hutch-sandbox --lib cgroup_timings -- --ignored --nocapture`
#[test]
#[ignore = "timing table, run by hand"]
fn cgroup_timings() -> TestResult {
    if !privileged("cgroup_timings") {
        return Ok(());
    }
    let v1 = real_manager("timing")?;
    let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|m| m.join("cgroup.subtree_control").exists())
        .map(|mount| {
            CgroupManager::new(CgroupConfig {
                parent: unique_parent("timing2"),
                mounts: Some(CgroupHierarchies::V2 { mount }),
                placement: Placement::HierarchyRoot,
                ..CgroupConfig::default()
            })
            .map(ManagerGuard)
        })
        .transpose()?;
    let v1_limits = CgroupLimits {
        memory_max: Some(64 << 20),
        swap_max: Some(0),
        pids_max: Some(64),
        cpu_max: Some(1.0),
    };
    let pct = |v: &[f64], p: usize| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    println!(
        "{:<12} {:<13} {:>9} {:>9} {:>9} {:>10}",
        "mode", "regime", "create", "attach", "att p95", "kill+rm"
    );
    let mut modes: Vec<(&str, &CgroupManager, CgroupLimits, bool)> =
        vec![("v1 attach", &v1.0, v1_limits, false)];
    if let Some(v2) = &v2 {
        modes.push(("v2 attach", &v2.0, CgroupLimits::default(), false));
        modes.push(("v2 clone3", &v2.0, CgroupLimits::default(), true));
    }
    for (mode, mgr, limits, clone3) in modes {
        for (regime, gap) in [("back-to-back", 0u64), ("50ms idle", 50)] {
            let (mut c, mut a, mut r) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..30 {
                std::thread::sleep(Duration::from_millis(gap));
                let mut child = if clone3 {
                    None
                } else {
                    Some(spawn_waiting("sleep 1000")?)
                };
                let t0 = Instant::now();
                let cg = mgr.create(&format!("t{i}"), &limits)?;
                let t1 = Instant::now();
                let mut cloned = None;
                match &child {
                    Some(ch) => cg.attach(pid_of(ch))?,
                    None => {
                        let fd = cg.v2_dir_fd()?.ok_or("no v2 fd")?;
                        cloned = Some(clone_into_cgroup(std::os::fd::AsFd::as_fd(&fd))?);
                    }
                }
                let t2 = Instant::now();
                if let Some(ch) = child.as_mut() {
                    go(ch)?;
                }
                cg.remove()?;
                let t3 = Instant::now();
                if let Some(pid) = cloned {
                    nix::sys::wait::waitpid(Pid::from_raw(pid), None)?;
                }
                c.push((t1 - t0).as_secs_f64() * 1e3);
                a.push((t2 - t1).as_secs_f64() * 1e3);
                r.push((t3 - t2).as_secs_f64() * 1e3);
            }
            println!(
                "{mode:<12} {regime:<13} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
                pct(&c, 50),
                pct(&a, 50),
                pct(&a, 95),
                pct(&r, 50)
            );
        }
    }
    Ok(())
}

/// Fork straight into the cgroup of `fd` (the zygote's
/// `clone3(CLONE_INTO_CGROUP)`); the child only ever calls `pause`, so
/// nothing fork-unsafe runs in it.
fn clone_into_cgroup(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<i32> {
    match crate::zygote::clone_into_cgroup(fd)? {
        nix::unistd::ForkResult::Child => loop {
            // SAFETY: pause is async-signal-safe and touches no memory; the child waits for SIGKILL.
            unsafe { libc::pause() };
        },
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

#[test]
fn real_v2_dir_fd_works_with_clone_into_cgroup() -> TestResult {
    if !privileged("real_v2_dir_fd_works_with_clone_into_cgroup") {
        return Ok(());
    }
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|m| m.join("cgroup.subtree_control").exists());
    let Some(mount) = mount else {
        eprintln!("SKIP real_v2_dir_fd_works_with_clone_into_cgroup: no cgroup2 mount");
        return Ok(());
    };
    let parent = unique_parent("clone3");
    let mgr = ManagerGuard(CgroupManager::new(CgroupConfig {
        parent: parent.clone(),
        mounts: Some(CgroupHierarchies::V2 { mount }),
        placement: Placement::HierarchyRoot,
        ..CgroupConfig::default()
    })?);
    let cg = mgr.0.create("born-here", &CgroupLimits::default())?;
    let fd = cg.v2_dir_fd()?.ok_or("no v2 fd on v2")?;
    let pid = clone_into_cgroup(std::os::fd::AsFd::as_fd(&fd))?;
    // Reap on every path, by this pid only.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.0), None);
        }
    }
    let reap = Reap(pid);
    assert_eq!(cg.pids(), vec![pid]);
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        membership
            .lines()
            .any(|l| l == format!("0::/{parent}/born-here")),
        "{membership}"
    );
    cg.kill_all()?;
    let status = nix::sys::wait::waitpid(Pid::from_raw(pid), None)?;
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Signaled(Pid::from_raw(pid), Signal::SIGKILL, false)
    );
    std::mem::forget(reap);
    cg.remove()?;
    Ok(())
}

#[test]
fn real_names_of_control_files_are_refused_as_existing() -> TestResult {
    if !privileged("real_names_of_control_files_are_refused_as_existing") {
        return Ok(());
    }
    let mgr = real_manager("names")?;
    for name in ["tasks", "cgroup.procs", "notify_on_release"] {
        let err = mgr.0.create(name, &CgroupLimits::default()).unwrap_err();
        assert!(matches!(err, CgroupError::Exists { .. }), "{name}: {err}");
    }
    let cg = mgr.0.create("io.github.x-1-2", &CgroupLimits::default())?;
    cg.remove()?;
    Ok(())
}

/// A pool slot whose limits were changed live (behind the launcher's
/// record): a claim with the recorded limits writes nothing and keeps the
/// live values, so the launcher rewrites every file when the slot comes
/// back ([`SandboxCgroup::rewrite_limits`]); then the next sandbox gets the
/// values it asks for.
#[test]
fn real_rewrite_limits_undoes_a_live_change_on_a_reused_slot() -> TestResult {
    if !privileged("real_rewrite_limits_undoes_a_live_change_on_a_reused_slot") {
        return Ok(());
    }
    let mgr = real_manager("rewrite")?;
    let cg = mgr.0.create_unlimited("hutch-pool-1-1")?;
    let recorded = CgroupLimits {
        memory_max: Some(64 << 20),
        swap_max: None,
        cpu_max: Some(1.0),
        pids_max: Some(20),
    };
    cg.change_limits(&CgroupLimits::default(), &recorded)?;
    let file = |ctrl: Controller, v1: &str, v2: &str| -> PathBuf {
        let d = cg.dir_of(ctrl).unwrap_or_default();
        if cg.v2 { d.join(v2) } else { d.join(v1) }
    };
    let pids = file(Controller::Pids, "pids.max", "pids.max");
    let mem = file(Controller::Memory, "memory.limit_in_bytes", "memory.max");
    // A live change (as `cgroup::live` writes it).
    std::fs::write(&pids, "5")?;
    std::fs::write(&mem, (32u64 << 20).to_string())?;
    // The record says nothing changed: a claim writes nothing.
    cg.change_limits(&recorded, &recorded)?;
    assert_eq!(std::fs::read_to_string(&pids)?.trim(), "5");
    cg.rewrite_limits(&recorded)?;
    assert_eq!(std::fs::read_to_string(&pids)?.trim(), "20");
    assert_eq!(
        std::fs::read_to_string(&mem)?.trim(),
        (64u64 << 20).to_string()
    );
    cg.remove()?;
    Ok(())
}
