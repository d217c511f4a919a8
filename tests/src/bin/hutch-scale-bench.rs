//! `hutch-scale-bench`: Hutch at scale through a real `hutchd`, one table.
//!
//! 1. Starts the `hutchd` next to this binary on temp paths (the tests'
//!    [`Hutchd`] harness: own state dir, runtime dir, control socket, cgroup
//!    parent and uid range; API rate limits raised so they never throttle),
//!    registers root as an admin user and creates the dataset `bench`.
//! 2. Installs `max(sizes)` distinct plugins (`org.hutch-bench.pNNN`, each
//!    its own copy of `hutch-bench-plugin`, granted `data:read`/`data:write`)
//!    and reads the daemon's idle RSS.
//! 3. For each N in `--sizes` (default 1,10,50,100): sends N `StartPlugin`
//!    calls at once on the control socket and waits until every instance's
//!    Agent hello is in the audit log (`agent.session.open`; its timestamp is
//!    taken when the daemon handled the hello). Columns, as time since the
//!    first call went out: `requested` (the last `plugin.start_requested`
//!    event: control handling plus its durable audit write), `exec` (the last
//!    `StartPlugin` answer: the sandbox is set up and the plugin exec'd),
//!    `ready` (the last hello); then the daemon's VmRSS and its growth per
//!    running plugin over the idle RSS. Every plugin is stopped after a row.
//! 4. Throughput: `--callers` plugins (default 50) each run a `calls` task
//!    (a loop alternating a put and a get of a 1 KiB object, without task
//!    id, for `--secs`), all in the same window; then as many plain
//!    processes of the same binary, outside any sandbox, each running as its
//!    plugin's uid and connected to that instance's socket host path, do the
//!    same. `--rounds` rounds, alternating which of the two goes first; the
//!    ratio compares the means.
//! 5. Stops `hutchd` by pid (SIGTERM) and checks that no plugin cgroup is
//!    left; the harness removes the temp dir, and kills and removes anything
//!    left on failure.
//!
//! Targets (reported, not asserted): 100 plugins ready in <= 2 s; daemon RSS
//! <= 1 MiB per running plugin beyond idle; sandboxed throughput >= 0.8x the
//! unsandboxed one.
//!
//! Run as root, in release (see docs/daemon.md, "Benchmarks"):
//! `cargo build --release -p hutch-tests -p hutch-daemon &&
//! target/release/hutch-scale-bench [--sizes 1,10,50,100] [--callers 50]
//! [--secs 3] [--rounds 4] [--log HUTCH_LOG]`; `--log
//! info,hutch_sandbox::launcher=debug` keeps hutchd's log with the launcher's
//! per-spawn trace points, for profiling. Not a test: it asserts nothing; exit status 1
//! only when the bench itself could not run.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hutch_plugin_protocol::admin::v1 as pb;
use hutch_plugin_protocol::admin::v1::admin_client::AdminClient;
use hutch_tests::daemon::{Hutchd, Options, sibling_bin};
use tonic::transport::Channel;

type Res<T> = Result<T, String>;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const ID_PREFIX: &str = "org.hutch-bench.p";

struct Opts {
    sizes: Vec<usize>,
    callers: usize,
    secs: f64,
    rounds: usize,
    /// `HUTCH_LOG` for hutchd; its log is then kept (for profiling).
    log: Option<String>,
}

fn usage() -> String {
    "usage: hutch-scale-bench [--sizes 1,10,50,100] [--callers 50] [--secs 3] [--rounds 4] [--log HUTCH_LOG]".into()
}

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        sizes: vec![1, 10, 50, 100],
        callers: 50,
        secs: 3.0,
        rounds: 4,
        log: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--sizes: {e}"))
                    })
                    .collect::<Res<Vec<_>>>()?;
            }
            "--callers" => o.callers = val()?.parse().map_err(|e| format!("--callers: {e}"))?,
            "--secs" => o.secs = val()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--rounds" => o.rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--log" => o.log = Some(val()?),
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    o.sizes.retain(|n| *n > 0);
    if o.sizes.is_empty() || o.rounds == 0 || o.secs <= 0.0 {
        return Err(usage());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("hutch-scale-bench: run as root (hutchd creates namespaces and cgroups)");
        return ExitCode::from(1);
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hutch-scale-bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(opts: &Opts) -> Res<()> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let max_n = opts
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(opts.callers);
    // Per-instance API limits high enough never to throttle the loops: the
    // bench measures the sandbox and the proxy, not the rate limiter.
    let extra = "[api]\nrate_per_sec = 1000000.0\nburst = 1000000\n\n\
                 [supervisor]\nrestart = \"never\"\n";
    let mut d = Hutchd::start_with(
        "scale-bench",
        Options {
            config_extra: extra.into(),
            env: vec![(
                "HUTCH_LOG".into(),
                opts.log.clone().unwrap_or_else(|| "warn".into()),
            )],
        },
    )
    .map_err(|e| format!("start hutchd: {e}"))?;
    let pid = d.pid().ok_or("hutchd has no pid")?;
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    d.ctl(&["dataset", "create", "Bench", "--id", "bench"]).ok();

    // The plugin binary, readable and executable by the plugin uids (the
    // unsandboxed callers run it from here too).
    let bin_dir = d.root().join("bin");
    std::fs::create_dir_all(&bin_dir).map_err(|e| format!("mkdir {}: {e}", bin_dir.display()))?;
    let plugin_bin = bin_dir.join("hutch-bench-plugin");
    std::fs::copy(sibling_bin("hutch-bench-plugin"), &plugin_bin)
        .map_err(|e| format!("copy the bench plugin: {e}"))?;
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", bin_dir.display()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = rt.block_on(bench(&d, pid, &plugin_bin, max_n, opts, profile));
    drop(rt);

    let code = d.stop();
    let left = d.leftover_cgroups();
    println!(
        "\ncleanup: hutchd (pid {pid}) stopped by SIGTERM, exit status {}; plugin cgroups left: {}",
        code.map_or_else(|| "none (killed)".to_owned(), |c| c.to_string()),
        left.len()
    );
    if opts.log.is_some() {
        let keep = std::env::temp_dir().join("hutch-scale-bench-hutchd.log");
        match std::fs::copy(d.log_path(), &keep) {
            Ok(_) => println!("hutchd log kept at {}", keep.display()),
            Err(e) => println!("could not keep the hutchd log: {e}"),
        }
    }
    drop(d);
    result
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The first child of `pid` (hutchd's only child is the sandbox launcher).
fn first_child(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    s.split_whitespace().next().and_then(|c| c.parse().ok())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms_us(us: i64) -> String {
    format!("{:.0} ms", us as f64 / 1000.0)
}

fn plugin_id(i: usize) -> String {
    format!("{ID_PREFIX}{i:03}")
}

async fn admin(socket: &Path) -> Res<AdminClient<Channel>> {
    let ch = hutch_plugin_protocol::client::connect(socket)
        .await
        .map_err(|e| format!("control socket: {e}"))?;
    Ok(AdminClient::new(ch).max_decoding_message_size(64 << 20))
}

fn st(what: &str) -> impl FnOnce(tonic::Status) -> String + '_ {
    move |s| format!("{what}: {}", s.message())
}

async fn install_all(c: &mut AdminClient<Channel>, root: &Path, bin: &Path, n: usize) -> Res<()> {
    for i in 0..n {
        let id = plugin_id(i);
        let dir = root.join("bench-src").join(&id);
        std::fs::create_dir_all(dir.join("bin")).map_err(|e| format!("mkdir: {e}"))?;
        let exe = dir.join("bin/bench");
        if !exe.exists() {
            std::fs::hard_link(bin, &exe).map_err(|e| format!("link {}: {e}", exe.display()))?;
        }
        let manifest = format!(
            "id = \"{id}\"\nversion = \"1.0.0\"\nexec = \"bin/bench\"\n\
             scopes = [\"data:read\", \"data:write\"]\n\n\
             [[actions]]\nname = \"calls\"\ndescription = \"a loop of small Data calls\"\n\n\
             [resources]\nmemory_max = \"64M\"\npids_max = 16\n"
        );
        std::fs::write(dir.join("hutch-plugin.toml"), manifest)
            .map_err(|e| format!("write manifest: {e}"))?;
        c.install_plugin(pb::InstallPluginRequest {
            path: dir.display().to_string(),
            grant_all: true,
            ..Default::default()
        })
        .await
        .map_err(st("install"))?;
    }
    Ok(())
}

/// One start-up measurement (times in µs since the first `StartPlugin`).
struct Round {
    n: usize,
    requested_max: i64,
    exec_max: i64,
    exec_p50: i64,
    ready_max: i64,
    ready_p50: i64,
    ready_seen: i64,
    rss_kib: u64,
    launcher_kib: u64,
}

fn p50(v: &mut [i64]) -> i64 {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

async fn audit_head(c: &mut AdminClient<Channel>) -> Res<i64> {
    Ok(c.status(pb::StatusRequest {})
        .await
        .map_err(st("status"))?
        .into_inner()
        .audit_head)
}

/// Audit events of `op` after `after_id`, the first per plugin id.
async fn first_events(
    c: &mut AdminClient<Channel>,
    op: &str,
    after_id: i64,
    into: &mut HashMap<String, i64>,
) -> Res<()> {
    let mut after = after_id;
    loop {
        let evs = c
            .query_audit(pb::AuditQuery {
                operation: op.into(),
                after_id: after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .map_err(st("audit query"))?
            .into_inner()
            .events;
        let Some(last) = evs.last() else {
            return Ok(());
        };
        after = last.id;
        for e in &evs {
            let id = if e.actor_plugin_id.is_empty() {
                e.resource.trim_start_matches("plugin/").to_owned()
            } else {
                e.actor_plugin_id.clone()
            };
            into.entry(id).or_insert(e.ts_unix_us);
        }
        if evs.len() < 1000 {
            return Ok(());
        }
    }
}

/// Starts plugins `0..n` at once and waits until all said hello.
async fn start_round(socket: &Path, pid: i32, n: usize) -> Res<Round> {
    let mut c = admin(socket).await?;
    let head = audit_head(&mut c).await?;
    let ids: Vec<String> = (0..n).map(plugin_id).collect();
    let t0 = now_us();
    let calls = ids.iter().map(|id| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let r = c.start_plugin(pb::PluginRef { id: id.clone() }).await;
            (id, r.map(|_| now_us() - t0))
        }
    });
    let started = futures_join_all(calls).await;
    let mut exec = Vec::new();
    for (id, r) in started {
        match r {
            Ok(t) => exec.push(t),
            Err(s) => return Err(format!("start {id}: {}", s.message())),
        }
    }
    let mut hellos = HashMap::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    let ready_seen = loop {
        first_events(&mut c, "agent.session.open", head, &mut hellos).await?;
        if ids.iter().all(|id| hellos.contains_key(id)) {
            break now_us() - t0;
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = ids.iter().filter(|i| !hellos.contains_key(*i)).collect();
            return Err(format!(
                "{} of {n} plugins said no hello within {READY_TIMEOUT:?} (first missing: {:?})",
                missing.len(),
                missing.first()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut requested = HashMap::new();
    first_events(&mut c, "plugin.start_requested", head, &mut requested).await?;
    let requested_max = ids
        .iter()
        .filter_map(|id| requested.get(id))
        .map(|t| t - t0)
        .max()
        .unwrap_or(0);
    let mut ready: Vec<i64> = ids
        .iter()
        .filter_map(|id| hellos.get(id))
        .map(|t| t - t0)
        .collect();
    // Let queued work (audit batches, log lines) settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(pid).unwrap_or(0);
    let launcher = first_child(pid).and_then(rss_kib).unwrap_or(0);
    let exec_max = exec.iter().copied().max().unwrap_or(0);
    let ready_max = ready.iter().copied().max().unwrap_or(0);
    Ok(Round {
        n,
        requested_max,
        exec_max,
        exec_p50: p50(&mut exec),
        ready_max,
        ready_p50: p50(&mut ready),
        ready_seen,
        rss_kib: rss,
        launcher_kib: launcher,
    })
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

async fn stop_all(socket: &Path, n: usize) -> Res<()> {
    let c = admin(socket).await?;
    let calls = (0..n).map(|i| {
        let mut c = c.clone();
        async move { c.stop_plugin(pb::PluginRef { id: plugin_id(i) }).await }
    });
    for r in futures_join_all(calls).await {
        r.map_err(st("stop"))?;
    }
    let mut c = c;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c
            .status(pb::StatusRequest {})
            .await
            .map_err(st("status"))?
            .into_inner();
        if s.plugins_running == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} plugins still running after stop",
                s.plugins_running
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the sandboxes' teardown (namespaces, cgroups) finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// Sum of ops of one loop round, and the first error seen.
#[derive(Default)]
struct Calls {
    ops: u64,
    errors: u64,
    first_error: String,
    loops: usize,
}

impl Calls {
    fn add(&mut self, v: &serde_json::Value) {
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        self.ops += n("ops");
        self.errors += n("errors");
        self.loops += 1;
        if self.first_error.is_empty()
            && let Some(e) = v.get("first_error").and_then(serde_json::Value::as_str)
        {
            self.first_error = e.to_owned();
        }
    }
}

fn loop_args(prefix: &str, start_at_ms: i64, duration_ms: u64) -> String {
    serde_json::json!({
        "dataset": "bench",
        "prefix": prefix,
        "size": 1024,
        "start_at_ms": start_at_ms,
        "duration_ms": duration_ms,
    })
    .to_string()
}

async fn sandboxed_round(socket: &Path, callers: usize, round: usize, dur_ms: u64) -> Res<Calls> {
    let c = admin(socket).await?;
    let start_at = now_us() / 1000 + 1500;
    let runs = (0..callers).map(|i| {
        let mut c = c.clone();
        let args = loop_args(&format!("s{round}-{i}"), start_at, dur_ms);
        async move {
            c.run_task(pb::RunTaskRequest {
                plugin_id: plugin_id(i),
                action: "calls".into(),
                args_json: args,
                inputs: Vec::new(),
            })
            .await
            .map(|r| r.into_inner().id)
        }
    });
    let mut tasks = Vec::new();
    for r in futures_join_all(runs).await {
        tasks.push(r.map_err(st("run task"))?);
    }
    let mut c = c;
    let wait = u64::try_from(start_at - now_us() / 1000).unwrap_or(0) + dur_ms;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut out = Calls::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in tasks {
        loop {
            let t = c
                .get_task(pb::TaskRef { id: id.clone() })
                .await
                .map_err(st("get task"))?
                .into_inner()
                .task
                .ok_or("task without body")?;
            match t.state.as_str() {
                "completed" => {
                    let v: serde_json::Value =
                        serde_json::from_str(&t.result_json).unwrap_or_default();
                    out.add(&v);
                    break;
                }
                "failed" | "cancelled" => {
                    return Err(format!(
                        "task {id} on {}: {} {}",
                        t.plugin_id, t.state, t.error
                    ));
                }
                _ if Instant::now() > deadline => {
                    return Err(format!("task {id} still {} after the window", t.state));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(out)
}

async fn direct_round(
    bin: &Path,
    sockets: &[(PathBuf, u32)],
    round: usize,
    dur_ms: u64,
) -> Res<Calls> {
    let start_at = now_us() / 1000 + 1000;
    let mut children = Vec::new();
    for (i, (sock, uid)) in sockets.iter().enumerate() {
        let child = tokio::process::Command::new(bin)
            .arg("direct")
            .arg(loop_args(&format!("u{round}-{i}"), start_at, dur_ms))
            .env_clear()
            .env("HUTCH_SOCKET", sock)
            .uid(*uid)
            .gid(*uid)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        children.push(child);
    }
    let mut out = Calls::default();
    for ch in children {
        let o = ch
            .wait_with_output()
            .await
            .map_err(|e| format!("wait for an unsandboxed caller: {e}"))?;
        let text = String::from_utf8_lossy(&o.stdout);
        match serde_json::from_str::<serde_json::Value>(text.trim()) {
            Ok(v) => out.add(&v),
            Err(_) => {
                return Err(format!(
                    "unsandboxed caller ({}): {}{}",
                    o.status,
                    text.trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
    }
    Ok(out)
}

async fn bench(
    d: &Hutchd,
    pid: i32,
    plugin_bin: &Path,
    max_n: usize,
    opts: &Opts,
    profile: &str,
) -> Res<()> {
    let socket = d.socket.clone();
    let mut c = admin(&socket).await?;
    let fresh = rss_kib(pid).unwrap_or(0);
    let t = Instant::now();
    install_all(&mut c, d.root(), plugin_bin, max_n).await?;
    let install_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid).unwrap_or(0);
    let launcher_idle = first_child(pid).and_then(rss_kib).unwrap_or(0);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "hutch-scale-bench ({profile} build; kernel {}, {cpus} CPUs; hutchd pid {pid})",
        kernel.trim()
    );
    println!(
        "hutchd RSS: {} fresh, {} with {max_n} plugins installed (idle; {install_s:.1} s to install); launcher {}",
        mib(fresh),
        mib(idle),
        mib(launcher_idle)
    );
    println!(
        "\nStart N plugins at once (N StartPlugin calls on the control socket); times since the first call:"
    );
    println!(
        "{:>4} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>10} | {:>9} | {:>8} | verdict",
        "N",
        "requested",
        "answer p50",
        "answer max",
        "hello p50",
        "ready",
        "seen",
        "daemon RSS",
        "Δ/plugin",
        "launcher"
    );
    for &n in &opts.sizes {
        let r = start_round(&socket, pid, n).await?;
        let per = (r.rss_kib.saturating_sub(idle)) as f64 / r.n as f64;
        let mut verdict = Vec::new();
        if r.n == 100 {
            verdict.push(if r.ready_max <= 2_000_000 {
                "ready<=2s PASS"
            } else {
                "ready<=2s MISS"
            });
        }
        verdict.push(if per <= 1024.0 {
            "RSS PASS"
        } else {
            "RSS MISS"
        });
        println!(
            "{:>4} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>10} | {:>9} | {:>8} | {}",
            r.n,
            ms_us(r.requested_max),
            ms_us(r.exec_p50),
            ms_us(r.exec_max),
            ms_us(r.ready_p50),
            ms_us(r.ready_max),
            ms_us(r.ready_seen),
            mib(r.rss_kib),
            format!("{:.0} KiB", per),
            mib(r.launcher_kib),
            verdict.join(", ")
        );
        stop_all(&socket, n).await?;
    }
    println!(
        "(requested: last start audited; answer: StartPlugin answered (after the sandbox is set up and the plugin exec'd); \
         hello: Agent hello audited; ready: the last hello; seen: when the bench saw it in the audit log; \
         Δ/plugin: (RSS - idle RSS) / N; targets: ready <= 2 s for N = 100, Δ <= 1 MiB)"
    );

    // Throughput.
    let callers = opts.callers;
    if callers == 0 {
        return Ok(());
    }
    start_round(&socket, pid, callers).await?;
    // Tasks run only on enabled plugins (enabling a running one keeps it).
    for i in 0..callers {
        c.enable_plugin(pb::PluginRef { id: plugin_id(i) })
            .await
            .map_err(st("enable"))?;
    }
    let plugins = c
        .list_plugins(pb::ListPluginsRequest {})
        .await
        .map_err(st("list plugins"))?
        .into_inner()
        .plugins;
    let by_id: BTreeMap<String, pb::Plugin> =
        plugins.into_iter().map(|p| (p.id.clone(), p)).collect();
    let run_dir = socket
        .parent()
        .ok_or("control socket has no parent")?
        .to_path_buf();
    let mut sockets = Vec::new();
    for i in 0..callers {
        let p = by_id.get(&plugin_id(i)).ok_or("plugin missing")?;
        sockets.push((
            run_dir
                .join("plugins")
                .join(&p.instance_id)
                .join("api.sock"),
            p.uid,
        ));
    }
    let dur_ms = (opts.secs * 1000.0) as u64;
    let secs = dur_ms as f64 / 1000.0;
    let mut sandboxed = Vec::new();
    let mut direct = Vec::new();
    for round in 0..opts.rounds {
        // Alternate which goes first, so warm-up and drift hit both alike.
        let (s, u) = if round % 2 == 0 {
            let s = sandboxed_round(&socket, callers, round, dur_ms).await?;
            (s, direct_round(plugin_bin, &sockets, round, dur_ms).await?)
        } else {
            let u = direct_round(plugin_bin, &sockets, round, dur_ms).await?;
            (sandboxed_round(&socket, callers, round, dur_ms).await?, u)
        };
        for (what, calls) in [("sandboxed", &s), ("unsandboxed", &u)] {
            if calls.errors > 0 {
                println!(
                    "note: {what} round {round}: {} errors, first: {}",
                    calls.errors, calls.first_error
                );
            }
            if calls.loops != callers {
                return Err(format!(
                    "{what} round {round}: {} of {callers} loops reported",
                    calls.loops
                ));
            }
        }
        sandboxed.push(s.ops as f64 / secs);
        direct.push(u.ops as f64 / secs);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (ms, mu) = (mean(&sandboxed), mean(&direct));
    let ratio = if mu > 0.0 { ms / mu } else { 0.0 };
    println!(
        "\nAPI throughput: {callers} callers at once, each a loop of put + get of a 1 KiB object for {secs:.1} s \
         (mean of {} rounds, alternating which goes first):",
        opts.rounds
    );
    println!("{:<46} | {:>10} | {:>20}", "callers", "calls/s", "rounds");
    println!(
        "{:<46} | {:>10.0} | {:>20}",
        format!("{callers} sandboxed plugins"),
        ms,
        list(&sandboxed)
    );
    println!(
        "{:<46} | {:>10.0} | {:>20}",
        format!("{callers} unsandboxed processes (same uids, sockets)"),
        mu,
        list(&direct)
    );
    println!(
        "ratio sandboxed / unsandboxed: {ratio:.2}x (target >= 0.80x: {})",
        if ratio >= 0.8 { "PASS" } else { "MISS" }
    );
    println!(
        "hutchd RSS after the throughput runs: {}",
        mib(rss_kib(pid).unwrap_or(0))
    );
    stop_all(&socket, callers).await?;
    Ok(())
}
