//! Shared helpers for Hutch's end-to-end tests and hostile plugins.
//!
//! **Owns**: the privilege gate for tests that need root; throw-away plugin
//! directories ([`PluginDir`]) holding the hostile probe; running the real
//! `hutchd try` ([`TryRun`]) and parsing its `--report` JSON ([`Report`]) and
//! the probe's JSON line ([`ProbeLine`]); host-side bait (a marked sleeper
//! process, loopback and Unix listeners) and leftover scans (processes,
//! cgroups, mounts).
//!
//! **Must not**: be used by production code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

pub mod daemon;
pub mod examples;
pub mod python;

/// Name of the variable that turns a privileged-test skip into a failure.
pub const REQUIRE_PRIVILEGED: &str = "HUTCH_REQUIRE_PRIVILEGED_TESTS";

/// Environment variable (set in every test plugin's manifest) carrying the
/// plugin's unique marker, so leftover processes can be found on the host.
pub const MARKER_ENV: &str = "PROBE_MARKER";

/// Variable carrying [`PluginDir::daemon_secret`] in hutchd's environment.
pub const DAEMON_SECRET_ENV: &str = "HUTCH_TEST_DAEMON_SECRET";

/// Prefix of every temp dir these helpers create.
pub const TEMP_PREFIX: &str = "hutch-t-";

/// Returns `true` when the current test may use root-only kernel features.
///
/// When not root, prints a visible `SKIP` line and returns `false`, unless
/// `HUTCH_REQUIRE_PRIVILEGED_TESTS=1` is set, in which case it panics so CI
/// can never pass by skipping.
///
/// # Panics
/// When not root and `HUTCH_REQUIRE_PRIVILEGED_TESTS=1`.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_PRIVILEGED).as_deref() == Ok("1") {
        panic!("{test}: needs root, and {REQUIRE_PRIVILEGED}=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs root (set {REQUIRE_PRIVILEGED}=1 to make this a failure)");
    false
}

/// A string unique to this process and call: `hutchmk-<pid>-<n>-<nanos>`.
pub fn unique_marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("hutchmk-{}-{n}-{nanos}", std::process::id())
}

/// Path of the `hutchd` binary: `HUTCH_HUTCHD` if set, else next to the
/// running test executable's directory (`target/debug/hutchd`).
///
/// # Panics
/// When the binary does not exist, with a message saying how to build it.
pub fn hutchd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HUTCH_HUTCHD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/hostile-xxxx -> target/debug/hutchd
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("hutchd"))
        .collect();
    for c in &candidates {
        if c.is_file() {
            refuse_stale(c);
            return c.clone();
        }
    }
    panic!(
        "hutchd not found (looked at {candidates:?}): run `cargo build --workspace --bins` first \
         (or set HUTCH_HUTCHD=/path/to/hutchd)"
    );
}

/// Panics when a binary found next to the tests is older than a file it was
/// built from.
///
/// `cargo test -p hutch-tests` does not rebuild another package's binaries, so
/// without this check an end-to-end test would silently exercise yesterday's
/// `hutchd`. The sources are the ones cargo itself recorded in the binary's
/// dep-info file (`target/debug/hutchd.d`); without that file nothing is
/// checked.
///
/// # Panics
/// When a listed source is newer than the binary, naming both.
pub fn refuse_stale(bin: &Path) {
    if let Some(source) = newer_source(bin) {
        panic!(
            "{} is older than {}: it does not contain that change; run `cargo build --workspace \
             --bins` first (./scripts/test does), or set HUTCH_HUTCHD to the binary to test",
            bin.display(),
            source.display()
        );
    }
}

/// The first source in `bin`'s dep-info file (`bin` with extension `.d`)
/// modified after `bin`, if any.
pub fn newer_source(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    dep_info_sources(bin)?.into_iter().find(|p| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
    })
}

/// The sources cargo listed for `bin` in its dep-info file (`bin` with
/// extension `.d`: its first line, `bin: source source ...`).
fn dep_info_sources(bin: &Path) -> Option<Vec<PathBuf>> {
    let dep_info = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    Some(dep_info_paths(sources))
}

/// Splits a dep-info dependency list on unescaped spaces (`\ ` is a space
/// inside a path).
fn dep_info_paths(list: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            ' ' => {
                if !cur.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        paths.push(PathBuf::from(cur));
    }
    paths
}

/// Escape a string as a TOML basic string (JSON string escapes are valid TOML).
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A throw-away plugin directory per SPEC §4 (`hutch-plugin.toml`,
/// `bin/probe`), plus a private work dir for the report and host sockets.
/// Both are removed on drop.
pub struct PluginDir {
    dir: tempfile::TempDir,
    work: tempfile::TempDir,
    /// Manifest `id` (unique: contains the test name and a counter).
    pub id: String,
    /// Unique marker, set as `PROBE_MARKER` in the manifest's `env`.
    pub marker: String,
    /// Unique string behind [`PluginDir::daemon_secret`].
    secret: String,
    /// Manifest `exec`.
    pub exec: String,
    /// Manifest `args`.
    pub args: Vec<String>,
    /// Manifest `env` (besides the marker).
    pub env: Vec<(String, String)>,
    /// `[resources]` entries as raw TOML values, e.g. `("memory_max", "\"64M\"")`.
    pub resources: Vec<(String, String)>,
    /// `[filesystem] read_only`.
    pub read_only: Vec<String>,
    /// `[filesystem] persistent_data`.
    pub persistent_data: bool,
}

impl PluginDir {
    /// A plugin dir for test `test` whose `bin/probe` is a copy of `probe`.
    ///
    /// # Errors
    /// Creating the temp dirs or copying the probe failed.
    pub fn new(test: &str, probe: &Path) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir()?;
        let work = tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir()?;
        // The sandbox uid must be able to traverse /plugin.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(probe, bin.join("probe"))?;
        std::fs::set_permissions(bin.join("probe"), std::fs::Permissions::from_mode(0o755))?;
        let marker = unique_marker();
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(60)
            .collect();
        let tail = marker.trim_start_matches("hutchmk-");
        let id = format!("org.hutchtests.{}-{tail}", slug.trim_matches('-'));
        Ok(Self {
            dir,
            work,
            id,
            marker,
            secret: unique_marker(),
            exec: "bin/probe".into(),
            args: Vec::new(),
            env: Vec::new(),
            resources: Vec::new(),
            read_only: Vec::new(),
            persistent_data: false,
        })
    }

    /// A secret put into `hutchd`'s own environment for this run (as
    /// `HUTCH_TEST_DAEMON_SECRET`): no plugin may ever read it.
    /// (Unrelated to [`PluginDir::marker`], so that hutchd itself never
    /// matches a scan for the plugin's marker.)
    pub fn daemon_secret(&self) -> String {
        format!("daemon-secret-{}", self.secret)
    }

    /// Host path of the plugin dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Host path of the private work dir (report, host sockets).
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// Set a `[resources]` key to a raw TOML value.
    pub fn resource(&mut self, key: &str, toml_value: &str) -> &mut Self {
        self.resources.push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Write a file into the plugin dir with the given mode.
    ///
    /// # Errors
    /// Writing or chmod failed.
    pub fn add_file(&self, rel: &str, contents: &[u8], mode: u32) -> io::Result<PathBuf> {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, contents)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(p)
    }

    /// The manifest text.
    pub fn manifest(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "id = {}", toml_str(&self.id));
        let _ = writeln!(m, "version = \"0.1.0\"");
        let _ = writeln!(m, "exec = {}", toml_str(&self.exec));
        if !self.args.is_empty() {
            let a: Vec<String> = self.args.iter().map(|s| toml_str(s)).collect();
            let _ = writeln!(m, "args = [{}]", a.join(", "));
        }
        let mut env = vec![format!("{MARKER_ENV} = {}", toml_str(&self.marker))];
        env.extend(
            self.env
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_str(v))),
        );
        let _ = writeln!(m, "env = {{ {} }}", env.join(", "));
        let _ = writeln!(m, "scopes = []");
        if !self.resources.is_empty() {
            let _ = writeln!(m, "\n[resources]");
            for (k, v) in &self.resources {
                let _ = writeln!(m, "{k} = {v}");
            }
        }
        if !self.read_only.is_empty() || self.persistent_data {
            let r: Vec<String> = self.read_only.iter().map(|s| toml_str(s)).collect();
            let _ = writeln!(m, "\n[filesystem]\nread_only = [{}]", r.join(", "));
            let _ = writeln!(m, "persistent_data = {}", self.persistent_data);
        }
        m
    }

    /// Write the manifest and run `hutchd try DIR --report FILE [FLAGS] -- ARGS`
    /// with a 90 s safety deadline (hutchd is killed by pid after it).
    ///
    /// # Errors
    /// Writing the manifest or spawning hutchd failed, or the deadline passed.
    pub fn run(&self, args: &[&str]) -> io::Result<TryRun> {
        self.run_with(&[], args)
    }

    /// Like [`PluginDir::run`] with extra `hutchd try` flags (e.g. `--timeout 1s`).
    ///
    /// # Errors
    /// As [`PluginDir::run`].
    pub fn run_with(&self, flags: &[&str], args: &[&str]) -> io::Result<TryRun> {
        let (cmd, report) = self.command(flags, args)?;
        let started = Instant::now();
        let out = run_with_deadline(cmd, Duration::from_secs(90))?;
        let elapsed = started.elapsed();
        let (report, report_error) = match std::fs::read(&report) {
            Ok(b) => match serde_json::from_slice::<Report>(&b) {
                Ok(r) => (Some(r), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "parse report: {e}: {}",
                        String::from_utf8_lossy(&b)
                    )),
                ),
            },
            Err(e) => (None, Some(format!("read report {}: {e}", report.display()))),
        };
        Ok(TryRun {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            status: out.0,
            stdout: out.1,
            stderr: out.2,
            elapsed,
            report,
            report_error,
            id: self.id.clone(),
            marker: self.marker.clone(),
            plugin_dir: self.dir.path().to_path_buf(),
        })
    }
}

/// A `hutchd try` running in the background; SIGKILLed and reaped on drop.
pub struct TryChild {
    /// The hutchd process.
    pub child: Child,
}

impl TryChild {
    /// hutchd's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for TryChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PluginDir {
    fn command(&self, flags: &[&str], args: &[&str]) -> io::Result<(Command, PathBuf)> {
        std::fs::write(self.dir.path().join("hutch-plugin.toml"), self.manifest())?;
        let report = self.work.path().join("report.json");
        let _ = std::fs::remove_file(&report);
        let mut cmd = Command::new(hutchd_path());
        cmd.arg("try")
            .arg(self.dir.path())
            .arg("--report")
            .arg(&report);
        cmd.args(flags).arg("--").args(args);
        cmd.env(DAEMON_SECRET_ENV, self.daemon_secret());
        Ok((cmd, report))
    }

    /// Start `hutchd try` in the background (stdio to /dev/null).
    ///
    /// # Errors
    /// Writing the manifest or spawning failed.
    pub fn spawn(&self, flags: &[&str], args: &[&str]) -> io::Result<TryChild> {
        let (mut cmd, _) = self.command(flags, args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(TryChild {
            child: cmd.spawn()?,
        })
    }
}

fn run_with_deadline(
    mut cmd: Command,
    deadline: Duration,
) -> io::Result<(ExitStatus, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("hutchd try still running after {deadline:?}; killed it"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// One denied syscall in the report.
#[derive(Debug, Clone, Deserialize)]
pub struct Denial {
    /// Syscall name.
    pub syscall: String,
    /// How many times.
    pub count: u64,
}

/// The `hutchd try --report` JSON (hutch-sandbox `Outcome`).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Exit status, if the plugin exited.
    pub exit_code: Option<i32>,
    /// Killing signal, if any.
    pub signal: Option<i32>,
    /// The OOM killer fired.
    pub oom_killed: bool,
    /// A fork hit the pids limit.
    pub pids_limit_hit: bool,
    /// The wall timeout expired.
    pub timed_out: bool,
    /// Peak memory.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time of the whole sandbox.
    pub cpu_time_ns: u64,
    /// Wall time.
    pub wall_time_ms: u64,
    /// Denied syscalls.
    pub denials: Vec<Denial>,
    /// Landlock status, as reported.
    pub landlock: Option<serde_json::Value>,
    /// Denials came through seccomp user notification.
    pub seccomp_notify: bool,
    /// Setup failure, if any.
    #[serde(default)]
    pub setup_error: Option<String>,
}

/// The probe's one-line JSON result.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeLine {
    /// Attack name.
    pub attack: String,
    /// The attack (or control) did what it tried.
    pub succeeded: bool,
    /// errno name of the first failure.
    pub errno: Option<String>,
    /// Human detail.
    pub detail: String,
    /// The verdict is the test's, not the probe's.
    #[serde(default)]
    pub external: bool,
    /// Attack-specific fields.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One finished `hutchd try`.
#[derive(Debug)]
pub struct TryRun {
    /// Probe arguments.
    pub args: Vec<String>,
    /// hutchd's exit status.
    pub status: ExitStatus,
    /// Plugin stdout (passed through).
    pub stdout: String,
    /// Plugin stderr plus hutchd's `hutch: ...` lines.
    pub stderr: String,
    /// Wall time of the whole `hutchd try`.
    pub elapsed: Duration,
    /// Parsed report.
    pub report: Option<Report>,
    /// Why the report is missing.
    pub report_error: Option<String>,
    /// Plugin id.
    pub id: String,
    /// Plugin marker.
    pub marker: String,
    /// Host plugin dir.
    pub plugin_dir: PathBuf,
}

impl TryRun {
    /// Everything about this run, for panic messages.
    pub fn context(&self) -> String {
        format!(
            "hutchd try -- {:?}\n  status: {:?}\n  stdout: {}\n  stderr: {}\n  report: {:?}{}",
            self.args,
            self.status,
            self.stdout.trim(),
            self.stderr.trim(),
            self.report,
            self.report_error
                .as_deref()
                .map(|e| format!("\n  report error: {e}"))
                .unwrap_or_default()
        )
    }

    /// The last probe JSON line on stdout, if any.
    pub fn probe(&self) -> Option<ProbeLine> {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<ProbeLine>(l.trim()).ok())
    }

    /// The report.
    ///
    /// # Panics
    /// When hutchd wrote none.
    pub fn report(&self) -> &Report {
        match &self.report {
            Some(r) => r,
            None => panic!("no report\n{}", self.context()),
        }
    }

    /// hutchd's exit code (None when hutchd itself was killed).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Assert the probe ran, printed its line, reported the attack as failed
    /// and exited 0 (so `hutchd try` exited 0); returns the line.
    ///
    /// # Panics
    /// On any of those not holding.
    pub fn blocked(&self) -> ProbeLine {
        let Some(p) = self.probe() else {
            panic!("probe printed no result line\n{}", self.context())
        };
        assert!(
            !p.succeeded,
            "ATTACK SUCCEEDED: {}\n{}",
            p.detail,
            self.context()
        );
        assert_eq!(
            self.code(),
            Some(0),
            "probe should exit 0 when blocked\n{}",
            self.context()
        );
        let r = self.report();
        assert_eq!(r.exit_code, Some(0), "report exit_code\n{}", self.context());
        assert!(r.setup_error.is_none(), "setup error\n{}", self.context());
        p
    }

    /// [`TryRun::blocked`] plus: the probe's errno is one of `errnos`.
    ///
    /// # Panics
    /// When it is not.
    pub fn blocked_with(&self, errnos: &[&str]) -> ProbeLine {
        let p = self.blocked();
        let e = p.errno.clone().unwrap_or_default();
        assert!(
            errnos.contains(&e.as_str()),
            "errno {e:?}, expected one of {errnos:?}\n{}",
            self.context()
        );
        p
    }

    /// [`TryRun::blocked_with`] EPERM, plus the report lists a denial of
    /// `syscall` (when the report says denials come through notification).
    ///
    /// # Panics
    /// When it does not.
    pub fn seccomp_denied(&self, syscall: &str) -> ProbeLine {
        let p = self.blocked_with(&["EPERM"]);
        self.assert_denial(syscall);
        p
    }

    /// The report lists a denial of `syscall`, and stderr tells it.
    ///
    /// # Panics
    /// When the denial is missing, or the report says notification was not
    /// used although this kernel offers it.
    pub fn assert_denial(&self, syscall: &str) {
        let r = self.report();
        if !r.seccomp_notify {
            // A sandbox without seccomp looks exactly like this.
            assert!(
                !kernel_has_seccomp_user_notif(),
                "report.seccomp_notify is false on a kernel with user notification: was the \
                 filter installed at all?\n{}",
                self.context()
            );
            eprintln!(
                "NOTE: no seccomp user notification on this kernel; cannot check the denial of {syscall}"
            );
            return;
        }
        assert!(
            r.denials
                .iter()
                .any(|d| d.syscall == syscall && d.count > 0),
            "no denial of {syscall} in the report\n{}",
            self.context()
        );
        assert!(
            self.stderr.contains(&format!("denied syscall {syscall}")),
            "stderr does not tell the denial of {syscall}\n{}",
            self.context()
        );
    }

    /// The plugin was killed by signal `sig`: report.signal and exit 128+sig.
    ///
    /// # Panics
    /// When it was not.
    pub fn killed_by(&self, sig: i32) {
        assert_eq!(
            self.report().signal,
            Some(sig),
            "report.signal\n{}",
            self.context()
        );
        assert_eq!(
            self.code(),
            Some(128 + sig),
            "hutchd exit status\n{}",
            self.context()
        );
    }

    /// Nothing of this run is left on the host: no process carrying the
    /// marker, no cgroup named after the plugin id, no mount referencing the
    /// plugin dir. Polls up to 3 s for the kernel to finish tearing down.
    ///
    /// # Panics
    /// When something is left.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let procs = processes_with(&self.marker);
            let cgroups = cgroups_matching(&self.id);
            let mounts = mounts_referencing(&self.plugin_dir);
            if procs.is_empty() && cgroups.is_empty() && mounts.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind: processes {procs:?}, cgroups {cgroups:?}, mounts {mounts:?}\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether this kernel offers `SECCOMP_RET_USER_NOTIF` (from
/// `/proc/sys/kernel/seccomp/actions_avail`).
pub fn kernel_has_seccomp_user_notif() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .is_ok_and(|s| s.split_whitespace().any(|a| a == "user_notif"))
}

/// Pids of host processes (not us) whose cmdline or environ contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        for f in ["cmdline", "environ"] {
            if let Ok(b) = std::fs::read(e.path().join(f))
                && b.windows(marker.len()).any(|w| w == marker.as_bytes())
            {
                out.push(pid);
                break;
            }
        }
    }
    out
}

/// Cgroup directories under `/sys/fs/cgroup/**/hutch*` whose path contains `token`.
pub fn cgroups_matching(token: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, token: &str, depth: u32, out: &mut Vec<PathBuf>) {
        if depth > 6 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let p = e.path();
                if p.to_string_lossy().contains(token) {
                    out.push(p.clone());
                }
                walk(&p, token, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut tops = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        tops.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for top in tops {
        let Ok(rd) = std::fs::read_dir(&top) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("hutch") && e.path().is_dir() {
                walk(&e.path(), token, 0, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Lines of our and init's mountinfo that mention `path`.
pub fn mounts_referencing(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for f in ["/proc/self/mountinfo", "/proc/1/mountinfo"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            out.extend(
                s.lines()
                    .filter(|l| l.contains(&needle))
                    .map(|l| format!("{f}: {l}")),
            );
        }
    }
    out
}

/// A host process (`hutch-probe idle SECS MARKER`, with `HUTCH_SECRET=MARKER`
/// in its environment) as bait for process attacks; SIGKILLed on drop.
pub struct HostSleeper {
    child: Child,
    /// Its marker (in argv and environ).
    pub marker: String,
}

impl HostSleeper {
    /// Start one.
    ///
    /// # Errors
    /// Spawning failed.
    pub fn start(probe: &Path) -> io::Result<Self> {
        let marker = unique_marker();
        let child = Command::new(probe)
            .args(["idle", "300", &marker])
            .env("HUTCH_SECRET", &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self { child, marker })
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Still running (not killed, not traced-stopped).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its `TracerPid` from `/proc/PID/status` (0 = not traced).
    pub fn tracer(&self) -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("TracerPid:")?.trim().parse().ok())
    }
}

impl Drop for HostSleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host listeners the network attacks aim at; they count what got through.
pub struct HostListeners {
    /// TCP on 127.0.0.1.
    pub tcp: TcpListener,
    /// UDP on 127.0.0.1.
    pub udp: UdpSocket,
    /// Abstract Unix socket.
    pub abstract_unix: UnixListener,
    /// Its name (without the leading NUL).
    pub abstract_name: String,
    /// Path Unix socket.
    pub path_unix: UnixListener,
    /// Its path.
    pub path: PathBuf,
}

impl HostListeners {
    /// Bind all of them; the path socket goes into `dir`.
    ///
    /// # Errors
    /// Binding failed.
    pub fn bind(dir: &Path) -> io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        tcp.set_nonblocking(true)?;
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        udp.set_nonblocking(true)?;
        let abstract_name = unique_marker();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
        let abstract_unix = UnixListener::bind_addr(&addr)?;
        abstract_unix.set_nonblocking(true)?;
        let path = dir.join("host.sock");
        let path_unix = UnixListener::bind(&path)?;
        path_unix.set_nonblocking(true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        Ok(Self {
            tcp,
            udp,
            abstract_unix,
            abstract_name,
            path_unix,
            path,
        })
    }

    /// TCP port.
    pub fn tcp_port(&self) -> u16 {
        self.tcp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// UDP port.
    pub fn udp_port(&self) -> u16 {
        self.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Whether anything reached any of them (drains what is pending).
    pub fn anything_arrived(&self) -> Vec<&'static str> {
        let mut got = Vec::new();
        if self.tcp.accept().is_ok() {
            got.push("tcp");
        }
        let mut buf = [0u8; 64];
        if self.udp.recv_from(&mut buf).is_ok() {
            got.push("udp");
        }
        if self.abstract_unix.accept().is_ok() {
            got.push("abstract unix");
        }
        if self.path_unix.accept().is_ok() {
            got.push("path unix");
        }
        got
    }
}

#[cfg(test)]
mod stale_tests {
    use std::fs::File;
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A fake binary and a source listed in its dep-info, with set mtimes.
    fn fake_build(
        source_age: Duration,
        bin_age: Duration,
    ) -> io::Result<(tempfile::TempDir, PathBuf, PathBuf)> {
        let dir = tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir()?;
        let source = dir.path().join("src dir").join("main.rs");
        std::fs::create_dir_all(source.parent().unwrap_or(dir.path()))?;
        let bin = dir.path().join("hutchd");
        let now = SystemTime::now();
        File::create(&source)?.set_modified(now - source_age)?;
        File::create(&bin)?.set_modified(now - bin_age)?;
        let other = dir.path().join("lib.rs");
        File::create(&other)?.set_modified(now - Duration::from_secs(3600))?;
        let escaped = source.display().to_string().replace(' ', "\\ ");
        std::fs::write(
            bin.with_extension("d"),
            format!("{}: {} {escaped}\n", bin.display(), other.display()),
        )?;
        Ok((dir, bin, source))
    }

    #[test]
    fn a_binary_older_than_a_listed_source_is_stale() -> io::Result<()> {
        let (_dir, bin, source) = fake_build(Duration::from_secs(10), Duration::from_secs(60))?;
        assert_eq!(newer_source(&bin), Some(source));
        Ok(())
    }

    #[test]
    fn a_binary_newer_than_its_sources_is_fresh() -> io::Result<()> {
        let (_dir, bin, _source) = fake_build(Duration::from_secs(60), Duration::from_secs(10))?;
        assert_eq!(newer_source(&bin), None);
        Ok(())
    }

    #[test]
    fn the_real_dep_info_parses_into_existing_sources() -> io::Result<()> {
        // The format the check relies on, read from cargo's own file.
        let sources = dep_info_sources(&hutchd_path()).unwrap_or_default();
        assert!(
            sources
                .iter()
                .any(|p| p.ends_with("daemon/src/bin/hutchd.rs")),
            "{sources:?}"
        );
        assert!(sources.iter().all(|p| p.is_file()), "{sources:?}");
        Ok(())
    }
}
