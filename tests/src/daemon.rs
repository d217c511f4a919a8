//! A real `hutchd` on throw-away paths, driven through `hutchctl`.
//!
//! [`Hutchd::start`] writes a config naming a temp state dir, runtime dir and
//! control socket, a cgroup parent and uid range unique to the test (so
//! parallel tests never sweep each other's plugins), starts the daemon and
//! waits until `hutchctl status` answers. [`Hutchd::ctl`] runs the real
//! `hutchctl` binary (optionally as another uid). Dropping a [`Hutchd`] stops
//! the daemon (SIGTERM, then SIGKILL), kills whatever is left in its cgroups
//! and removes its directories.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TEMP_PREFIX, hutchd_path};

/// A binary next to `hutchd` (`target/<profile>/<name>`).
///
/// # Panics
/// When it does not exist, saying how to build it.
pub fn sibling_bin(name: &str) -> PathBuf {
    let p = hutchd_path().with_file_name(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        p.display()
    );
    if std::env::var_os("HUTCH_HUTCHD").is_none() {
        crate::refuse_stale(&p);
    }
    p
}

/// What `hutchctl` printed and how it exited.
#[derive(Debug, Clone)]
pub struct CtlOut {
    /// Exit status (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOut {
    /// Panics with both streams unless it exited 0.
    ///
    /// # Panics
    /// When the exit status is not 0.
    pub fn ok(self) -> CtlOut {
        assert_eq!(self.code, 0, "hutchctl failed: {self:?}");
        self
    }

    /// stdout parsed as JSON.
    ///
    /// # Panics
    /// When stdout is not JSON.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("hutchctl stdout is not JSON ({e}): {self:?}"),
        }
    }
}

/// Options for [`Hutchd::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra TOML appended to the generated config (whole sections).
    pub config_extra: String,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
}

/// A running `hutchd` on temp paths.
pub struct Hutchd {
    root: tempfile::TempDir,
    child: Option<Child>,
    /// The test name.
    pub test: String,
    /// The control socket.
    pub socket: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The state dir.
    pub state: PathBuf,
    /// The cgroup parent name (unique per test).
    pub cgroup_parent: String,
    options: Options,
}

fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl Hutchd {
    /// Starts a daemon for `test` with default options.
    ///
    /// # Errors
    /// When the directories cannot be made or hutchd does not come up.
    pub fn start(test: &str) -> io::Result<Hutchd> {
        Self::start_with(test, Options::default())
    }

    /// Starts a daemon for `test`.
    ///
    /// # Errors
    /// When the directories cannot be made or hutchd does not come up.
    pub fn start_with(test: &str, options: Options) -> io::Result<Hutchd> {
        let root = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}d-{test}-"))
            .tempdir()?;
        // Non-admin callers must reach the control socket.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
        let marker = crate::unique_marker();
        let cgroup_parent = format!("hutch-t-{}", fnv(&marker));
        let state = root.path().join("state");
        let run = root.path().join("run");
        let socket = run.join("control.sock");
        let config = root.path().join("hutchd.toml");
        // A uid range per test: 4096 uids from a hash of the test name.
        let uid_base = 0x7f00_0000u32 + (fnv(test) % 4096) * 4096;
        let text = format!(
            "[paths]\nstate_dir = {s:?}\nruntime_dir = {r:?}\ncontrol_socket = {c:?}\n\n\
             [sandbox]\ncgroup_parent = {cg:?}\nuid_base = {uid_base}\nuid_count = 4096\n\n{extra}",
            s = state.display().to_string(),
            r = run.display().to_string(),
            c = socket.display().to_string(),
            cg = cgroup_parent,
            extra = options.config_extra,
        );
        std::fs::write(&config, text)?;
        let mut d = Hutchd {
            root,
            child: None,
            test: test.to_owned(),
            socket,
            config,
            state,
            cgroup_parent,
            options,
        };
        d.spawn()?;
        Ok(d)
    }

    /// The daemon's log file (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("hutchd.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The temp root (for plugin dirs and files a test writes).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(hutchd_path());
        cmd.arg("--config")
            .arg(&self.config)
            .env("HUTCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn()?);
        self.wait_ready()
    }

    /// Waits until `hutchctl status` answers (30 s at most).
    ///
    /// # Errors
    /// When the daemon exits or does not answer in time; the error carries its log.
    pub fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "hutchd exited ({st}) before answering:\n{}",
                    self.log()
                )));
            }
            if self.socket.exists() && self.ctl(&["status"]).code == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "hutchd did not answer on {} in 30 s:\n{}",
                    self.socket.display(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `hutchctl --socket SOCKET ARGS` as root.
    pub fn ctl(&self, args: &[&str]) -> CtlOut {
        self.run_ctl(None, args)
    }

    /// Runs `hutchctl` as `uid` (gid the same) with no supplementary groups.
    pub fn ctl_as(&self, uid: u32, args: &[&str]) -> CtlOut {
        self.run_ctl(Some(uid), args)
    }

    fn run_ctl(&self, uid: Option<u32>, args: &[&str]) -> CtlOut {
        let mut cmd = Command::new(sibling_bin("hutchctl"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd.stdin(Stdio::null()).env_remove("HUTCH_CONTROL_SOCKET");
        if let Some(uid) = uid {
            // std drops supplementary groups when root sets a uid.
            cmd.uid(uid).gid(uid);
        }
        match cmd.output() {
            Ok(o) => CtlOut {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => CtlOut {
                code: -1,
                stdout: String::new(),
                stderr: format!("spawn hutchctl: {e}"),
            },
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM and wait (10 s, then SIGKILL); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the daemon (a crash) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same paths.
    ///
    /// # Errors
    /// As [`Hutchd::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Starts it again after [`Hutchd::kill9`] (no stop first).
    ///
    /// # Errors
    /// As [`Hutchd::start`].
    pub fn respawn(&mut self) -> io::Result<()> {
        self.spawn()
    }

    /// Cgroup directories of this daemon's plugins still present.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        crate::cgroups_matching(&self.cgroup_parent)
            .into_iter()
            .filter(|p| {
                // The parent itself may stay; anything below it is a plugin's,
                // except the launcher's pre-warmed stubs (`hutch-pool-*`,
                // no plugin in them yet), which live as long as the daemon.
                p.file_name().is_some_and(|n| {
                    n != self.cgroup_parent.as_str()
                        && !n.to_string_lossy().starts_with("hutch-pool-")
                })
            })
            .collect()
    }

    /// Writes a plugin directory `name` under the temp root running the
    /// example plugin binary, with this manifest body (`exec` is added).
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn example_plugin(&self, name: &str, manifest: &str) -> io::Result<PathBuf> {
        let dir = self.root.path().join("plugins-src").join(name);
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::copy(sibling_bin("hutch-example-plugin"), dir.join("bin/example"))?;
        std::fs::write(
            dir.join("hutch-plugin.toml"),
            format!("exec = \"bin/example\"\n{manifest}"),
        )?;
        Ok(dir)
    }
}

impl Drop for Hutchd {
    fn drop(&mut self) {
        self.stop();
        // Anything the daemon left (it should leave nothing): kill and remove.
        for cg in crate::cgroups_matching(&self.cgroup_parent)
            .into_iter()
            .rev()
        {
            if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = std::fs::write(cg.join("freezer.state"), "THAWED");
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut left = crate::cgroups_matching(&self.cgroup_parent);
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for cg in left {
            let _ = std::fs::remove_dir(&cg);
        }
    }
}

/// A json value's string field, "" when missing.
pub fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(serde_json::Value::as_str).unwrap_or("")
}

/// Polls `f` every 100 ms until it returns `Some` (or `timeout` passes).
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
