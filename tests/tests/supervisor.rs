//! The daemon library driven in-process (no control socket): registry,
//! supervisor, tasks, kill switch, policies and the recovery sweep, with the
//! real sandbox launcher, real cgroups, real API sockets and the example
//! plugin (`hutch-example-plugin`, written with the client helper).
//!
//! Each test forks its own launcher, uses its own state dir and its own
//! cgroup parent (`hutch-sv-<pid>-<test>`), and checks at the end that no
//! cgroup, socket or process of it is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hutch_api::audit::AuditFilter;
use hutch_api::authz::{Effect, Policy, Role};
use hutch_daemon::config::Config;
use hutch_daemon::daemon::{
    Caller, Daemon, DaemonOptions, ErrorKind, InstallRequest, LimitOverrides, PluginState,
    TaskRequest, TaskState,
};
use hutch_sandbox::launcher::Launcher;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn root() -> Caller {
    Caller {
        name: "root".into(),
        admin: true,
        uid: 0,
    }
}

/// One daemon on temp paths with its own launcher and cgroup parent.
struct Env {
    dir: tempfile::TempDir,
    parent: String,
    config: Config,
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
}

impl Env {
    fn new(test: &str, tweak: impl FnOnce(&mut Config)) -> Result<Env> {
        let dir = tempfile::Builder::new().prefix("hutch-sv-").tempdir()?;
        let parent = format!("hutch-sv-{}-{test}", std::process::id());
        let mut config = Config::default();
        config.paths.state_dir = dir.path().join("state");
        config.paths.runtime_dir = dir.path().join("run");
        config.sandbox.cgroup_parent = parent.clone();
        config.supervisor.backoff_initial = Duration::from_millis(100);
        config.supervisor.backoff_max = Duration::from_millis(400);
        config.supervisor.stop_grace = Duration::from_secs(2);
        tweak(&mut config);
        let mut env = Env {
            dir,
            parent,
            config,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
            daemon: None,
        };
        env.open()?;
        Ok(env)
    }

    /// Opens (or re-opens) the daemon on the same state.
    fn open(&mut self) -> Result {
        // Forked from the test thread; see `Launcher::start`.
        let launcher = Launcher::start()?;
        let d = self.rt.block_on(Daemon::open(
            DaemonOptions {
                config: self.config.clone(),
                config_path: None,
            },
            launcher,
        ))?;
        self.daemon = Some(d);
        Ok(())
    }

    fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon open")
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A plugin dir with the example plugin binary and this manifest body
    /// (after id, version and exec).
    fn plugin(&self, id: &str, version: &str, extra: &str) -> Result<PathBuf> {
        let dir = self.dir.path().join(format!("src-{id}-{version}"));
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::copy(
            env!("CARGO_BIN_EXE_hutch-example-plugin"),
            dir.join("bin/example"),
        )?;
        std::fs::write(
            dir.join("hutch-plugin.toml"),
            format!(
                "id = \"{id}\"\nversion = \"{version}\"\nexec = \"bin/example\"\n{extra}\n{ACTIONS}"
            ),
        )?;
        Ok(dir)
    }

    fn install(&self, dir: &Path, grant: Option<&[&str]>, enable: bool) -> Result<String> {
        let info = self.block(self.d().install(
            &root(),
            InstallRequest {
                dir: dir.to_owned(),
                grant: grant.map(|g| g.iter().map(|s| (*s).to_owned()).collect()),
                limits: LimitOverrides::default(),
                enable,
            },
        ))?;
        Ok(info.id)
    }

    fn wait_state(&self, id: &str, want: PluginState, timeout: Duration) -> Result {
        let until = Instant::now() + timeout;
        loop {
            let s = self.block(self.d().plugin(id))?.runtime;
            if s.state == want {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("{id}: state {:?}, wanted {want:?} ({s:?})", s.state).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_task(&self, plugin: &str, action: &str, args: &str) -> Result<String> {
        let t = self.block(self.d().run_task(
            &root(),
            TaskRequest {
                plugin_id: plugin.into(),
                action: action.into(),
                args_json: args.into(),
                inputs: vec![],
            },
        ))?;
        Ok(t.id)
    }

    fn wait_task(&self, id: &str, timeout: Duration) -> Result<hutch_daemon::daemon::TaskInfo> {
        let mut rx = self.block(self.d().watch_task(&root(), id))?;
        self.block(async {
            let r = tokio::time::timeout(timeout, rx.wait_for(|t| t.state.is_final())).await;
            match r {
                Ok(Ok(t)) => Ok(t.clone()),
                // The sender is gone: the task ended; read its final row.
                Ok(Err(_)) => Ok(self.d().task(&root(), id).await?),
                Err(_) => Err(format!("task {id} did not end in {timeout:?}").into()),
            }
        })
    }

    fn audit_ops(&self, filter: AuditFilter) -> Result<Vec<String>> {
        let evs = self.block(self.d().core().audit().query(&filter))?;
        Ok(evs.into_iter().map(|e| e.event.operation).collect())
    }

    fn shutdown(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.shutdown());
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown();
        // Nothing of this daemon may be left behind.
        let left = hutch_tests::cgroups_matching(&self.parent);
        for d in left.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if !std::thread::panicking() {
            assert!(left.is_empty(), "cgroups left: {left:?}");
            let run = self.config.paths.instances_dir();
            let sockets: Vec<_> = std::fs::read_dir(&run)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(sockets.is_empty(), "instance dirs left: {sockets:?}");
        }
    }
}

const ACTIONS: &str = r#"
[[actions]]
name = "sleep"
[[actions]]
name = "count"
[[actions]]
name = "fail"
[[actions]]
name = "exit"
[[actions]]
name = "hang"
[[actions]]
name = "threshold"
"#;

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0)
}

#[test]
fn registry_install_grants_upgrade_remove() -> Result {
    if !hutch_tests::privileged("registry_install_grants_upgrade_remove") {
        return Ok(());
    }
    let env = Env::new("reg", |_| {})?;
    let d = env.d();
    let v1 = env.plugin(
        "org.test.reg",
        "1.0.0",
        r#"scopes = ["data:read", "data:write"]"#,
    )?;
    // A grant outside the request is refused, naming the scope.
    let err = env
        .install(&v1, Some(&["data:delete"]), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data:delete") && err.contains("not requested"),
        "{err}"
    );
    // Raising a limit is refused.
    let raise = env.block(d.install(
        &root(),
        InstallRequest {
            dir: v1.clone(),
            grant: None,
            limits: LimitOverrides {
                memory_max: Some(64 << 30),
                ..LimitOverrides::default()
            },
            enable: false,
        },
    ));
    assert_eq!(raise.unwrap_err().kind(), ErrorKind::Invalid);
    // A subset is granted; the copy is root-owned, read-only and hashed.
    env.install(&v1, Some(&["data:read"]), false)?;
    let info = env.block(d.plugin("org.test.reg"))?;
    assert_eq!(info.granted_scopes, vec!["data:read".to_owned()]);
    assert_eq!(info.requested_scopes.len(), 2);
    assert_eq!(info.content_hash.len(), 64);
    assert!(info.path.starts_with(env.config.paths.plugins_dir()));
    assert_eq!(mode(&info.path), 0o555);
    assert_eq!(mode(&info.path.join("bin/example")), 0o555);
    assert_eq!(mode(&info.path.join("hutch-plugin.toml")), 0o444);
    let uid = info.uid;
    assert!(uid >= env.config.sandbox.uid_base);
    // Installing again is a conflict, pointing at upgrade.
    let again = env.install(&v1, None, false).unwrap_err().to_string();
    assert!(again.contains("upgrade"), "{again}");
    // Upgrade: a newly requested scope is not granted unless listed.
    let v2 = env.plugin(
        "org.test.reg",
        "1.1.0",
        r#"scopes = ["data:read", "data:write", "data:delete"]"#,
    )?;
    let up = env.block(d.upgrade(
        &root(),
        InstallRequest {
            dir: v2.clone(),
            grant: Some(vec![]),
            ..InstallRequest::default()
        },
    ))?;
    assert_eq!(up.version, "1.1.0");
    assert_eq!(up.granted_scopes, vec!["data:read".to_owned()]);
    assert_eq!(up.versions, vec!["1.0.0".to_owned(), "1.1.0".to_owned()]);
    assert_eq!(up.uid, uid, "the uid survives upgrades");
    // Not newer: refused.
    let down = env.block(d.upgrade(
        &root(),
        InstallRequest {
            dir: v1.clone(),
            ..InstallRequest::default()
        },
    ));
    assert_eq!(down.unwrap_err().kind(), ErrorKind::Conflict);
    // Another plugin gets another uid.
    let other = env.plugin("org.test.other", "1.0.0", "")?;
    env.install(&other, None, false)?;
    let other_uid = env.block(d.plugin("org.test.other"))?.uid;
    assert_ne!(other_uid, uid);
    // Non-admins may not install.
    let alice = Caller {
        name: "alice".into(),
        admin: false,
        uid: 1000,
    };
    let denied = env.block(d.install(
        &alice,
        InstallRequest {
            dir: other.clone(),
            ..InstallRequest::default()
        },
    ));
    assert_eq!(denied.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // Remove: gone from the registry and disk, audit trail kept, and the
    // same id gets its old uid back when reinstalled.
    env.block(d.remove(&root(), "org.test.reg"))?;
    assert_eq!(
        env.block(d.plugin("org.test.reg")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!info.path.exists());
    let ops = env.audit_ops(AuditFilter {
        resource: Some("plugin/org.test.reg".into()),
        ..AuditFilter::default()
    })?;
    for op in ["plugin.install", "plugin.upgrade", "plugin.remove"] {
        assert!(ops.iter().any(|o| o == op), "{op} missing in {ops:?}");
    }
    env.install(&v1, None, false)?;
    assert_eq!(env.block(d.plugin("org.test.reg"))?.uid, uid);
    Ok(())
}

#[test]
fn start_task_logs_and_graceful_stop() -> Result {
    if !hutch_tests::privileged("start_task_logs_and_graceful_stop") {
        return Ok(());
    }
    let env = Env::new("run", |_| {})?;
    let d = env.d();
    let dir = env.plugin("org.test.run", "1.0.0", "")?;
    env.install(&dir, None, true)?;
    env.wait_state(
        "org.test.run",
        PluginState::Running,
        Duration::from_secs(20),
    )?;
    let st = env.block(d.plugin("org.test.run"))?.runtime;
    let instance = st.instance.clone().unwrap();
    let sock = env
        .config
        .paths
        .instances_dir()
        .join(&instance)
        .join("api.sock");
    assert!(sock.exists(), "{sock:?}");
    // A task runs through the Agent stream with progress, as root.
    let t = env.run_task("org.test.run", "sleep", r#"{"ms": 600, "step_ms": 100}"#)?;
    let done = env.wait_task(&t, Duration::from_secs(30))?;
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert_eq!(done.progress, 100.0);
    assert_eq!(done.instance.as_deref(), Some(instance.as_str()));
    let ops = env.audit_ops(AuditFilter {
        task_id: Some(t.clone()),
        ..AuditFilter::default()
    })?;
    assert_eq!(ops, ["task.submit", "task.assigned", "task.completed"]);
    // Its stdout reached the ring (the hello line and the task line).
    let logs = d.logs(&root(), "org.test.run", 100)?;
    let text: Vec<String> = logs.lines.iter().map(|l| l.line.clone()).collect();
    assert!(
        text.iter().any(|l| l.contains("example plugin up")),
        "{text:?}"
    );
    assert!(text.iter().any(|l| l.contains(&t)), "{text:?}");
    // Unknown action, bad JSON: refused before anything runs.
    let bad = env.run_task("org.test.run", "nope", "{}").unwrap_err();
    assert!(bad.to_string().contains("no action"), "{bad}");
    let bad = env
        .run_task("org.test.run", "sleep", "{not json")
        .unwrap_err();
    assert!(bad.to_string().contains("not JSON"), "{bad}");
    // Graceful stop: SIGTERM reaches the plugin; nothing is left.
    env.block(d.stop(&root(), "org.test.run"))?;
    let st = env.block(d.plugin("org.test.run"))?.runtime;
    assert_eq!(st.state, PluginState::Stopped);
    assert!(!sock.exists());
    // (The launcher's pre-warmed stubs, `hutch-pool-*`, stay while the daemon
    // runs; the drop check below covers them after shutdown.) The outcome is
    // reported once every plugin process is gone; the launcher removes a cold
    // spawn's cgroup right after, so allow it a moment.
    let plugin_cgroups = || -> Vec<_> {
        hutch_tests::cgroups_matching(&format!("{}/", env.parent))
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("/hutch-pool-"))
            .collect()
    };
    let cleaned = hutch_tests::daemon::wait_for(Duration::from_secs(3), || {
        plugin_cgroups().is_empty().then_some(())
    });
    assert!(cleaned.is_some(), "{:?}", plugin_cgroups());
    let exit = st.last_exit.unwrap_or_default();
    assert!(
        exit.contains("SIGTERM") || exit.contains("status 0"),
        "{exit}"
    );
    Ok(())
}

#[test]
fn crash_restarts_with_backoff_then_crash_loop_disables() -> Result {
    if !hutch_tests::privileged("crash_restarts_with_backoff_then_crash_loop_disables") {
        return Ok(());
    }
    let env = Env::new("loop", |c| {
        c.supervisor.crash_loop_failures = 3;
        c.supervisor.crash_loop_window = Duration::from_secs(60);
    })?;
    let d = env.d();
    // A plugin that dies at once: a host shell exiting 7.
    let dir = env.dir.path().join("crasher");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("hutch-plugin.toml"),
        "id = \"org.test.crasher\"\nversion = \"1.0.0\"\nexec = \"/bin/sh\"\nargs = [\"-c\", \"echo dying; exit 7\"]\n",
    )?;
    env.install(&dir, None, false)?;
    let first = env.block(d.enable(&root(), "org.test.crasher"));
    // Start may report success (it ran) or failure (it ended at once).
    drop(first);
    env.wait_state(
        "org.test.crasher",
        PluginState::Failed,
        Duration::from_secs(30),
    )?;
    let info = env.block(d.plugin("org.test.crasher"))?;
    assert!(!info.enabled, "a crash loop disables the plugin");
    let why = info.disabled_reason.unwrap_or_default();
    assert!(
        why.contains("crash loop") && why.contains("status 7"),
        "{why}"
    );
    assert!(info.runtime.restarts >= 2, "{:?}", info.runtime);
    let ops = env.audit_ops(AuditFilter {
        resource: Some("plugin/org.test.crasher".into()),
        ..AuditFilter::default()
    })?;
    assert_eq!(
        ops.iter().filter(|o| *o == "plugin.exit").count(),
        3,
        "{ops:?}"
    );
    assert!(ops.iter().any(|o| o == "plugin.crash_loop"), "{ops:?}");
    let logs = d.logs(&root(), "org.test.crasher", 100)?;
    assert!(logs.lines.iter().any(|l| l.line == "dying"));
    assert!(logs.lines.iter().any(|l| l.line.contains("restarting in")));
    // Disabled: tasks are refused with the reason and how to fix it.
    let err = env
        .run_task("org.test.crasher", "x", "{}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("disabled") && err.contains("enable"), "{err}");
    Ok(())
}

#[test]
fn watchdog_kills_a_hung_plugin_and_its_task_fails() -> Result {
    if !hutch_tests::privileged("watchdog_kills_a_hung_plugin_and_its_task_fails") {
        return Ok(());
    }
    // The example plugin heartbeats every 3 s while idle.
    let env = Env::new("wd", |c| {
        c.supervisor.watchdog_timeout = Duration::from_secs(5)
    })?;
    let d = env.d();
    let dir = env.plugin("org.test.wd", "1.0.0", "")?;
    env.install(&dir, None, true)?;
    env.wait_state("org.test.wd", PluginState::Running, Duration::from_secs(20))?;
    let first = env.block(d.plugin("org.test.wd"))?.runtime.instance;
    let t = env.run_task("org.test.wd", "hang", "{}")?;
    let done = env.wait_task(&t, Duration::from_secs(40))?;
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    let why = done.error.clone().unwrap_or_default();
    assert!(why.contains("watchdog"), "{why}");
    let ops = env.audit_ops(AuditFilter {
        resource: Some("plugin/org.test.wd".into()),
        ..AuditFilter::default()
    })?;
    assert!(
        ops.iter().any(|o| o == "plugin.watchdog"),
        "{ops:?} {done:?}"
    );
    // Restarted by the on-failure policy, as a new instance.
    env.wait_state("org.test.wd", PluginState::Running, Duration::from_secs(20))?;
    let info = env.block(d.plugin("org.test.wd"))?.runtime;
    assert_ne!(info.instance, first);
    assert!(info.last_exit.unwrap_or_default().contains("watchdog"));
    Ok(())
}

#[test]
fn cancel_wall_timeout_and_kill_switch() -> Result {
    if !hutch_tests::privileged("cancel_wall_timeout_and_kill_switch") {
        return Ok(());
    }
    let env = Env::new("ks", |_| {})?;
    let d = env.d();
    let dir = env.plugin("org.test.ks", "1.0.0", "[resources]\nwall_timeout = \"1s\"")?;
    env.install(&dir, None, true)?;
    // Cancel by the submitter.
    let t = env.run_task("org.test.ks", "sleep", r#"{"ms": 60000, "step_ms": 100}"#)?;
    std::thread::sleep(Duration::from_millis(300));
    env.block(d.cancel_task(&root(), &t))?;
    let done = env.wait_task(&t, Duration::from_secs(20))?;
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    // Cancelling again: it has ended.
    assert_eq!(
        env.block(d.cancel_task(&root(), &t)).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    // The manifest's 1 s wall timeout fails a long task.
    let t = env.run_task("org.test.ks", "sleep", r#"{"ms": 60000, "step_ms": 100}"#)?;
    let done = env.wait_task(&t, Duration::from_secs(20))?;
    assert_eq!(done.state, TaskState::Failed);
    assert!(done.error.unwrap_or_default().contains("wall timeout"));
    // Kill switch: running plugin stopped, running task cancelled, new
    // tasks and starts refused, and it survives a restart.
    env.wait_state("org.test.ks", PluginState::Running, Duration::from_secs(20))?;
    let t = env.run_task("org.test.ks", "sleep", r#"{"ms": 800, "step_ms": 100}"#)?;
    std::thread::sleep(Duration::from_millis(200));
    env.block(d.set_kill_switch(&root(), Some("incident 42".into())))?;
    let st = env.block(d.plugin("org.test.ks"))?.runtime;
    assert_eq!(st.state, PluginState::Stopped);
    let done = env.wait_task(&t, Duration::from_secs(20))?;
    assert_ne!(done.state, TaskState::Completed);
    let err = env
        .run_task("org.test.ks", "sleep", "{}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("incident 42"), "{err}");
    assert_eq!(
        env.block(d.start(&root(), "org.test.ks"))
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    env.block(d.set_kill_switch(&root(), None))?;
    env.wait_state("org.test.ks", PluginState::Running, Duration::from_secs(20))?;
    let ops = env.audit_ops(AuditFilter {
        resource: Some("daemon".into()),
        ..AuditFilter::default()
    })?;
    assert!(ops.iter().any(|o| o == "killswitch.engage"));
    assert!(ops.iter().any(|o| o == "killswitch.lift"));
    Ok(())
}

#[test]
fn policy_blocks_tasks_and_users_need_rights() -> Result {
    if !hutch_tests::privileged("policy_blocks_tasks_and_users_need_rights") {
        return Ok(());
    }
    let env = Env::new("pol", |_| {})?;
    let d = env.d();
    let dir = env.plugin("org.napari.test", "1.0.0", "")?;
    env.install(&dir, None, true)?;
    let authz = d.core().authz();
    env.block(authz.set_user("alice", Role::Member))?;
    let alice = Caller {
        name: "alice".into(),
        admin: false,
        uid: 1000,
    };
    let bob = Caller {
        name: "bob".into(),
        admin: false,
        uid: 1001,
    };
    let req = || TaskRequest {
        plugin_id: "org.napari.test".into(),
        action: "sleep".into(),
        args_json: r#"{"ms": 10}"#.into(),
        inputs: vec![],
    };
    // Unregistered users get nothing.
    let err = env.block(d.run_task(&bob, req())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    // A deny policy on the plugin pattern blocks, citing the rule.
    let policy = Policy {
        id: 0,
        name: "no-napari".into(),
        effect: Effect::Deny,
        plugin_pattern: "org.napari.*".into(),
        user: None,
        team: None,
        operation_class: None,
        not_before_ms: None,
        not_after_ms: None,
        weekdays: None,
        hour_start: None,
        hour_end: None,
        reason: "maintenance".into(),
    };
    let pid = env.block(d.add_policy(&root(), policy))?;
    let err = env.block(d.run_task(&alice, req())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("no-napari"), "{err}");
    env.block(d.remove_policy(&root(), pid))?;
    let t = env.block(d.run_task(&alice, req()))?;
    let done = env.wait_task(&t.id, Duration::from_secs(30))?;
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.user, "alice");
    // Bob cannot see or cancel alice's task; alice sees it.
    assert_eq!(
        env.block(d.task(&bob, &t.id)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        env.block(d.list_tasks(&alice, Default::default()))?.len(),
        1
    );
    assert!(
        env.block(d.list_tasks(&bob, Default::default()))?
            .is_empty()
    );
    Ok(())
}

#[test]
fn recovery_sweep_kills_leftovers_and_fails_their_tasks() -> Result {
    if !hutch_tests::privileged("recovery_sweep_kills_leftovers_and_fails_their_tasks") {
        return Ok(());
    }
    let mut env = Env::new("rec", |_| {})?;
    let dir = env.plugin("org.test.rec", "1.0.0", "")?;
    env.install(&dir, None, false)?;
    env.shutdown();
    // What a crashed daemon leaves: a task row still running, a sandbox
    // cgroup with a live process in it, an instance socket dir.
    let t = "t-crashed1".to_owned();
    env.block(async {
        let db = hutch_api::db::Db::open(env.config.paths.database()).await?;
        sqlx::query(
            "INSERT INTO tasks (id, plugin_id, action, args_json, user_name, state, created_ms)
             VALUES (?, 'org.test.rec', 'sleep', '{}', 'root', 'running', 0)",
        )
        .bind(t.clone())
        .execute(db.pool())
        .await?;
        db.close().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let mut sleeper = std::process::Command::new("/bin/sleep")
        .arg("300")
        .spawn()?;
    let stale = Path::new("/sys/fs/cgroup/pids")
        .join(&env.parent)
        .join("stale-1");
    std::fs::create_dir_all(&stale)?;
    std::fs::write(stale.join("cgroup.procs"), sleeper.id().to_string())?;
    let stale_sock = env.config.paths.instances_dir().join("i-stale");
    std::fs::create_dir_all(&stale_sock)?;
    std::fs::write(stale_sock.join("api.sock"), b"")?;
    env.open()?;
    let rec = env.d().recovery().clone();
    assert!(rec.cgroups.iter().any(|c| c == "stale-1"), "{rec:?}");
    assert!(rec.sockets.iter().any(|s| s == "i-stale"), "{rec:?}");
    assert!(rec.tasks.contains(&t), "{rec:?}");
    assert!(!stale.exists());
    let status = sleeper.wait()?;
    assert!(!status.success(), "the stray process was killed");
    let task = env.block(env.d().task(&root(), &t))?;
    assert_eq!(task.state, TaskState::Failed);
    let ops = env.audit_ops(AuditFilter {
        operation: Some("daemon.recovery".into()),
        ..AuditFilter::default()
    })?;
    assert_eq!(ops.len(), 1);
    Ok(())
}

/// `hutchd` speaks sd_notify: READY with its pid once serving, WATCHDOG at
/// half the period systemd asked for, STOPPING on SIGTERM, then exits 0.
#[test]
fn sd_notify_ready_watchdog_stopping() -> Result {
    if !hutch_tests::privileged("sd_notify_ready_watchdog_stopping") {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("hutch-sv-notify-")
        .tempdir()?;
    let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify.sock"))?;
    notify.set_read_timeout(Some(Duration::from_secs(30)))?;
    let parent = format!("hutch-sv-{}-notify", std::process::id());
    let cfg = dir.path().join("hutchd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[sandbox]\ncgroup_parent = \"{parent}\"\n",
            dir.path().display()
        ),
    )?;
    let mut child = std::process::Command::new(hutch_tests::hutchd_path())
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 512];
    let mut recv = || -> Result<String> {
        let n = notify.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let ready = recv();
    let watchdog = recv();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut stopping = String::new();
    for _ in 0..20 {
        match recv() {
            Ok(m) if m.contains("STOPPING=1") => {
                stopping = m;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let status = child.wait()?;
    let ready = ready?;
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready}"
    );
    assert_eq!(watchdog?, "WATCHDOG=1");
    assert_eq!(stopping, "STOPPING=1");
    assert_eq!(status.code(), Some(0));
    assert!(!dir.path().join("run/control.sock").exists());
    assert!(hutch_tests::cgroups_matching(&parent).is_empty());
    Ok(())
}

/// If the sandbox launcher dies, hutchd cannot confine anything any more:
/// it shuts down and exits non-zero (systemd then restarts it) rather than
/// marking every plugin as crashing.
#[test]
fn launcher_death_stops_the_daemon() -> Result {
    if !hutch_tests::privileged("launcher_death_stops_the_daemon") {
        return Ok(());
    }
    let dir = tempfile::Builder::new().prefix("hutch-sv-ld-").tempdir()?;
    let parent = format!("hutch-sv-{}-ld", std::process::id());
    let cfg = dir.path().join("hutchd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[sandbox]\ncgroup_parent = \"{parent}\"\n",
            dir.path().display()
        ),
    )?;
    let mut child = std::process::Command::new(hutch_tests::hutchd_path())
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let sock = dir.path().join("run/control.sock");
    let until = Instant::now() + Duration::from_secs(30);
    while !sock.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The launcher is hutchd's only child process.
    let children = std::fs::read_dir(format!("/proc/{}/task", child.id()))?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let killed = children.len() == 1
        && nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(children[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(killed, "launcher not found among {children:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(hutch_tests::cgroups_matching(&parent).is_empty());
    Ok(())
}

/// A second daemon on the same state dir is refused before it sweeps
/// anything (it would otherwise kill the first one's sandboxes).
#[test]
fn one_daemon_per_state_dir() -> Result {
    if !hutch_tests::privileged("one_daemon_per_state_dir") {
        return Ok(());
    }
    let env = Env::new("lock", |_| {})?;
    let dir = env.plugin("org.test.lock", "1.0.0", "")?;
    env.install(&dir, None, true)?;
    env.wait_state(
        "org.test.lock",
        PluginState::Running,
        Duration::from_secs(20),
    )?;
    let second = env.block(Daemon::open(
        DaemonOptions {
            config: env.config.clone(),
            config_path: None,
        },
        Launcher::start()?,
    ));
    let err = second.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("another hutchd"), "{err}");
    // The first one's plugin is untouched.
    let st = env.block(env.d().plugin("org.test.lock"))?.runtime;
    assert_eq!(st.state, PluginState::Running);
    Ok(())
}
