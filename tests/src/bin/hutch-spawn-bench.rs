//! `hutch-spawn-bench`: spawn-to-exit latency of `/bin/true`, one table.
//!
//! Rows: plain fork+exec; Hutch's full sandbox (cgroup included) and Hutch
//! without a cgroup, each cold (a launcher with the spawn pool off, as
//! `hutchd try`'s single spawn) and from the pool (a launcher with
//! pre-warmed stubs, as the daemon), all through
//! `hutch_sandbox::launcher::Launcher::run`; `bwrap` with comparable flags
//! (skipped with a note when not installed). Two regimes: back-to-back, and
//! with a 50 ms idle gap before each spawn (cold caches, v1 cgroup RCU grace
//! periods). Median, p95, and the ratio to bwrap. Then a per-step breakdown
//! of the full sandbox (from `Outcome::spawn_trace`), and the cost of each
//! namespace measured with `unshare(1)`.
//!
//! Run as root, in release: `cargo run --release -p hutch-tests --bin
//! hutch-spawn-bench` (`HUTCH_BENCH_N=…` sets the back-to-back sample count;
//! the gap regime uses half; `HUTCH_BENCH_POOL=…` the pool size;
//! `HUTCH_BENCH_ONLY=pool` only the rows naming "pool", plus plain
//! fork+exec and bwrap; `HUTCH_BENCH_ONLY='!full, pool'` that row alone, for
//! profiling; `HUTCH_BENCH_LOG=debug` the launchers' log on stderr). Not a
//! test: it asserts nothing.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use hutch_sandbox::launcher::{DEFAULT_POOL_SIZE, Launcher, LauncherConfig};
use hutch_sandbox::spec::{CgroupPlacement, Limits, SandboxSpec};
use hutch_sandbox::trace::{TracePoint, now_ns};

/// Unprivileged uid/gid the Hutch rows run `/bin/true` as.
const BENCH_UID: u32 = 65534;
const GAP: Duration = Duration::from_millis(50);
const WARMUP: usize = 5;

/// One way of running `/bin/true`; returns the latency of one spawn-to-exit.
type Runner<'a> = Box<dyn FnMut() -> Result<Duration, String> + 'a>;

struct Row {
    name: &'static str,
    b2b: Vec<Duration>,
    gap: Vec<Duration>,
    note: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied()
}

fn median(s: &[Duration]) -> Option<Duration> {
    percentile(s, 0.5)
}

fn p95(s: &[Duration]) -> Option<Duration> {
    percentile(s, 0.95)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    }
}

/// Back-to-back spawns of one runner in a row (a burst); runners take turns
/// burst by burst, so load changes on a shared machine hit all rows alike
/// while each sample still follows its predecessor of the same runner at
/// once (a pool must keep up with its own refills).
const BURST: usize = 25;

/// Run every runner `n` times back-to-back (in bursts of [`BURST`]), then
/// `n / 2` times each with a 50 ms idle gap before the spawn, interleaving
/// the runners (one spawn of each per round).
fn measure(
    n: usize,
    runners: &mut [(&'static str, Option<Runner<'_>>, Option<String>)],
    in_gap: &Cell<bool>,
) -> Vec<Row> {
    let mut rows: Vec<Row> = runners
        .iter()
        .map(|(name, _, note)| Row {
            name,
            b2b: Vec::new(),
            gap: Vec::new(),
            note: note.clone(),
        })
        .collect();
    for (row, (_, run, _)) in rows.iter_mut().zip(runners.iter_mut()) {
        if let Some(r) = run {
            for _ in 0..WARMUP {
                if let Err(e) = r() {
                    row.note = Some(format!("failed in warm-up: {e}"));
                    *run = None;
                    break;
                }
            }
        }
    }
    let mut done = 0;
    while done < n {
        let burst = BURST.min(n - done);
        for (row, (_, run, _)) in rows.iter_mut().zip(runners.iter_mut()) {
            let Some(r) = run else { continue };
            for _ in 0..burst {
                match r() {
                    Ok(d) => row.b2b.push(d),
                    Err(e) => {
                        row.note = Some(format!("failed after {done} runs: {e}"));
                        *run = None;
                        break;
                    }
                }
            }
        }
        done += burst;
    }
    in_gap.set(true);
    for i in 0..n / 2 {
        for (row, (_, run, _)) in rows.iter_mut().zip(runners.iter_mut()) {
            let Some(r) = run else { continue };
            std::thread::sleep(GAP);
            match r() {
                Ok(d) => row.gap.push(d),
                Err(e) => {
                    row.note = Some(format!("failed after {i} gap rounds: {e}"));
                    *run = None;
                }
            }
        }
    }
    for r in &mut rows {
        r.b2b.sort();
        r.gap.sort();
    }
    rows
}

fn plain() -> Runner<'static> {
    Box::new(|| {
        let t = Instant::now();
        let st = Command::new("/bin/true")
            .status()
            .map_err(|e| e.to_string())?;
        let d = t.elapsed();
        if st.success() {
            Ok(d)
        } else {
            Err(format!("/bin/true: {st}"))
        }
    })
}

/// One spawn's trace: the bench's own request time, the launcher's and the
/// sandbox's step marks, and when the outcome arrived (all CLOCK_MONOTONIC).
struct Sample {
    t0: u64,
    points: Vec<TracePoint>,
    t_end: u64,
}

fn hutch<'a>(
    launcher: &'a RefCell<Launcher>,
    plugin_dir: &Path,
    cgroup: bool,
    traces: &'a RefCell<Vec<(bool, Sample)>>,
    in_gap: &'a Cell<bool>,
) -> Runner<'a> {
    let mut spec = SandboxSpec::new(
        if cgroup {
            "bench.spawn-full"
        } else {
            "bench.spawn-nocg"
        },
        plugin_dir.to_path_buf(),
        PathBuf::from("/bin/true"),
        BENCH_UID,
        BENCH_UID,
    );
    spec.limits = Limits {
        memory_max: Some(256 << 20),
        swap_max: Some(0),
        cpu_max: Some(1.0),
        pids_max: Some(64),
        ..spec.limits
    };
    if !cgroup {
        spec.cgroup = None;
    }
    Box::new(move || {
        let t0 = now_ns();
        let t = Instant::now();
        let out = launcher
            .borrow_mut()
            .run(&spec, &mut std::io::sink(), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        let d = t.elapsed();
        let t_end = now_ns();
        match (out.exit_code, &out.setup_error) {
            (Some(0), None) => {
                traces.borrow_mut().push((
                    in_gap.get(),
                    Sample {
                        t0,
                        points: out.spawn_trace,
                        t_end,
                    },
                ));
                Ok(d)
            }
            _ => Err(format!("{out:?}")),
        }
    })
}

fn bwrap_path() -> Option<PathBuf> {
    ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn bwrap(bin: PathBuf, plugin_dir: &Path) -> Runner<'static> {
    // Comparable to Hutch: every namespace, a new session, die with parent,
    // no capabilities, an unprivileged uid, read-only /usr (+ the usrmerge
    // symlinks), the linker cache, fresh /proc, minimal /dev, private /tmp,
    // the plugin dir read-only at /plugin. (No cgroup, no seccomp, no Landlock.)
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "hutch",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend([
        "--ro-bind".into(),
        plugin_dir.display().to_string(),
        "/plugin".into(),
    ]);
    args.extend(["--".into(), "/bin/true".into()]);
    Box::new(move || {
        let t = Instant::now();
        let st = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        let d = t.elapsed();
        if st.success() {
            Ok(d)
        } else {
            Err(format!("bwrap: {st}"))
        }
    })
}

/// Median of `v` (unsorted), in ms.
fn median_ms(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Per-step medians of one set of samples: for each step, the median offset
/// from the bench's request (ms), and the median time since the previous
/// point of the same process chain (launcher, or stub/init/plugin, or the
/// pool stub's pre-warm).
fn breakdown(samples: &[&Sample]) -> Vec<(String, Option<f64>, Option<f64>)> {
    let chain = |step: &str| -> u8 {
        if step.starts_with("launcher") {
            0
        } else if step.starts_with("prewarm") {
            2
        } else {
            1
        }
    };
    let mut offsets: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut deltas: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for s in samples {
        let mut last: [Option<u64>; 3] = [Some(s.t0), Some(s.t0), None];
        let mut points = s.points.clone();
        points.push(TracePoint {
            step: "bench: outcome received".into(),
            ns: s.t_end,
        });
        for p in &points {
            let c = usize::from(chain(&p.step));
            let off = (p.ns as f64 - s.t0 as f64) / 1e6;
            offsets.entry(p.step.clone()).or_default().push(off);
            if p.step == "bench: outcome received" {
                last[0] = s.points.last().map(|l| l.ns);
            }
            if let Some(prev) = last[c] {
                deltas
                    .entry(p.step.clone())
                    .or_default()
                    .push((p.ns as f64 - prev as f64) / 1e6);
            }
            last[c] = Some(p.ns);
        }
    }
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = offsets
        .into_iter()
        .map(|(step, offs)| {
            let d = deltas.remove(&step).and_then(median_ms);
            (step, median_ms(offs), d)
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &(String, Option<f64>, Option<f64>)| {
            (u8::from(!r.0.starts_with("prewarm")), r.1.unwrap_or(0.0))
        };
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rows
}

/// Samples tagged with their regime (`true`: 50 ms gaps).
type Samples = Vec<(bool, Sample)>;

fn refs(v: &[(bool, Sample)]) -> Vec<&Sample> {
    v.iter().map(|(_, s)| s).collect()
}

fn print_breakdown(title: &str, cold: &[&Sample], warm: &[&Sample]) {
    let c = breakdown(cold);
    let w = breakdown(warm);
    let mut steps: Vec<(String, f64)> = Vec::new();
    for (step, off, _) in w.iter().chain(c.iter()) {
        if !steps.iter().any(|(s, _)| s == step) {
            let k = if step.starts_with("prewarm") {
                -1e9 + off.unwrap_or(0.0) * 1e-6
            } else {
                off.unwrap_or(0.0)
            };
            steps.push((step.clone(), k));
        }
    }
    steps.sort_by(|a, b| a.1.total_cmp(&b.1));
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.3}"));
    let find = |rows: &[(String, Option<f64>, Option<f64>)], step: &str| {
        rows.iter()
            .find(|r| r.0 == step)
            .map_or((None, None), |r| (r.1, r.2))
    };
    println!();
    println!(
        "per-step breakdown, {title}: median ms ({} cold / {} warm spawns; \"at\" = since the request, \"step\" = since the previous mark of the same process chain; prewarm rows happen before the request)",
        cold.len(),
        warm.len()
    );
    println!(
        "{:<48} | {:>9} {:>9} | {:>9} {:>9}",
        "step", "cold at", "cold step", "warm at", "warm step"
    );
    println!("{}", "-".repeat(92));
    for (step, _) in steps {
        let (co, cd) = find(&c, &step);
        let (wo, wd) = find(&w, &step);
        let (co, wo) = if step.starts_with("prewarm") {
            (None, None)
        } else {
            (co, wo)
        };
        println!(
            "{:<48} | {:>9} {:>9} | {:>9} {:>9}",
            step,
            f(co),
            f(cd),
            f(wo),
            f(wd)
        );
    }
}

/// How each pool spawn was served, from its trace: a ready pre-warmed init,
/// one still warming up (the claim waited for its pre-warm), or cold (no
/// init fit or the pool was empty). Count and median latency per kind.
fn print_kinds(title: &str, samples: &[&Sample]) {
    let kind = |s: &Sample| -> &'static str {
        let has = |step: &str| s.points.iter().any(|p| p.step == step);
        if has("launcher: claim sent") {
            "ready init"
        } else if has("launcher: claim sent (stub still warming up)") {
            "warming init"
        } else {
            "cold"
        }
    };
    let mut line = format!("pool spawns by kind, {title}:");
    for k in ["ready init", "warming init", "cold"] {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| kind(s) == k)
            .map(|s| (s.t_end as f64 - s.t0 as f64) / 1e6)
            .collect();
        let n = v.len();
        if let Some(m) = median_ms(v) {
            line.push_str(&format!(" {k} {n} (median {m:.2} ms);"));
        } else {
            line.push_str(&format!(" {k} 0;"));
        }
    }
    println!("{line}");
}

/// The hops between processes of a ready claim, per spawn (medians of each
/// spawn's own differences, ms): request to the launcher, claim sent to init
/// claimed, plugin reaped by init to its end at the launcher, and the
/// launcher's outcome (stats read) to the caller.
fn print_hops(title: &str, samples: &[&Sample]) {
    let at = |s: &Sample, step: &str| s.points.iter().find(|p| p.step == step).map(|p| p.ns);
    let hop = |from: &dyn Fn(&Sample) -> Option<u64>, to: &dyn Fn(&Sample) -> Option<u64>| {
        let v: Vec<f64> = samples
            .iter()
            .filter_map(|s| Some((to(s)? as f64 - from(s)? as f64) / 1e6))
            .collect();
        median_ms(v).map_or_else(|| "-".to_owned(), |m| format!("{m:.3}"))
    };
    println!(
        "hops of a claim, {title} (median ms): request -> launcher {}; claim sent -> init claimed {}; plugin reaped -> launcher {}; outcome sent -> caller {}",
        hop(&|s| Some(s.t0), &|s| at(s, "launcher: request received")),
        hop(&|s| at(s, "launcher: claim sent"), &|s| at(
            s,
            "init: claimed"
        )),
        hop(&|s| at(s, "init: plugin reaped"), &|s| at(
            s,
            "launcher: plugin end received"
        )),
        hop(&|s| at(s, "launcher: cgroup stats read"), &|s| Some(
            s.t_end
        )),
    );
}

/// Extra cost of each namespace, as `unshare(1) --X /bin/true` minus
/// `unshare(1) /bin/true` (creation and the synchronous part of teardown).
fn namespace_costs(runs: usize) {
    let Some(unshare) = ["/usr/bin/unshare", "/bin/unshare"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return;
    };
    let time = |args: &[&str]| -> Option<f64> {
        let mut v = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let ok = Command::new(&unshare)
                .args(args)
                .arg("/bin/true")
                .status()
                .ok()?
                .success();
            if !ok {
                return None;
            }
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        median_ms(v)
    };
    let Some(base) = time(&[]) else { return };
    println!();
    println!(
        "namespace creation, unshare(1) --X /bin/true minus unshare(1) /bin/true ({runs} runs, median ms; base {base:.3})"
    );
    for (name, args) in [
        ("mount", &["--mount"][..]),
        ("pid (+fork)", &["--pid", "--fork"][..]),
        ("net", &["--net"][..]),
        ("ipc", &["--ipc"][..]),
        ("uts", &["--uts"][..]),
        ("cgroup", &["--cgroup"][..]),
        (
            "all six",
            &[
                "--mount", "--pid", "--fork", "--net", "--ipc", "--uts", "--cgroup",
            ][..],
        ),
    ] {
        match time(args) {
            Some(t) => println!("  {name:<12} {:>8.3}", t - base),
            None => println!("  {name:<12} failed"),
        }
    }
}

fn main() -> ExitCode {
    // `HUTCH_BENCH_LOG=debug` (an `EnvFilter`): the launchers' log (e.g.
    // why a spawn went cold or a pool slot was buried) on stderr.
    if let Ok(filter) = std::env::var("HUTCH_BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    // The launchers must be forked before anything else (single-threaded).
    let root = nix::unistd::geteuid().is_root();
    let pool_size: usize = std::env::var("HUTCH_BENCH_POOL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_POOL_SIZE);
    let start = |pool_size| {
        if !root {
            return None;
        }
        match Launcher::start_with(LauncherConfig { pool_size }) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("launcher: {e}");
                None
            }
        }
    };
    let cold = start(0);
    let warm = start(pool_size);
    let n: usize = std::env::var("HUTCH_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let plugin = match tempfile::Builder::new().prefix("hutch-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = std::fs::set_permissions(
        plugin.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    if let Some(w) = &warm {
        let _ = w.prewarm(Some(&CgroupPlacement::default()));
        let _ = w.prewarm(None);
    }

    let cold = cold.map(RefCell::new);
    let warm = warm.map(RefCell::new);
    let hutch_note = (!root || cold.is_none() || warm.is_none()).then(|| {
        if root {
            "skipped: launcher failed to start".to_owned()
        } else {
            "skipped: needs root".to_owned()
        }
    });
    let in_gap = Cell::new(false);
    let traces: [RefCell<Vec<(bool, Sample)>>; 4] = Default::default();
    let bwrap_bin = bwrap_path();
    let mut runners: Vec<(&'static str, Option<Runner<'_>>, Option<String>)> = vec![
        ("plain fork+exec", Some(plain()), None),
        (
            "hutch full, cold",
            cold.as_ref()
                .map(|l| hutch(l, plugin.path(), true, &traces[0], &in_gap)),
            hutch_note.clone(),
        ),
        (
            "hutch full, pool",
            warm.as_ref()
                .map(|l| hutch(l, plugin.path(), true, &traces[1], &in_gap)),
            hutch_note.clone(),
        ),
        (
            "hutch no cgroup, cold",
            cold.as_ref()
                .map(|l| hutch(l, plugin.path(), false, &traces[2], &in_gap)),
            hutch_note.clone(),
        ),
        (
            "hutch no cgroup, pool",
            warm.as_ref()
                .map(|l| hutch(l, plugin.path(), false, &traces[3], &in_gap)),
            hutch_note,
        ),
        (
            "bwrap",
            bwrap_bin.map(|b| bwrap(b, plugin.path())),
            bwrap_path()
                .is_none()
                .then(|| "skipped: bwrap not installed (apt-get install bubblewrap)".to_owned()),
        ),
    ];
    // `HUTCH_BENCH_ONLY=pool`: only the rows whose name contains one of the
    // `|`-separated words, plus plain fork+exec and bwrap (the ratios need
    // bwrap) unless the list starts with `!` (`!full, pool`: for profiling).
    if let Ok(only) = std::env::var("HUTCH_BENCH_ONLY") {
        let (strict, list) = match only.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, only.as_str()),
        };
        let words: Vec<&str> = list.split('|').filter(|w| !w.is_empty()).collect();
        for (name, run, note) in &mut runners {
            let keep = (!strict && (*name == "bwrap" || *name == "plain fork+exec"))
                || words.iter().any(|w| name.contains(w));
            if !keep {
                *run = None;
                *note = Some(format!("skipped: HUTCH_BENCH_ONLY={only}"));
            }
        }
    }
    let rows = measure(n, &mut runners, &in_gap);
    drop(runners);

    let bw = rows
        .iter()
        .find(|r| r.name == "bwrap")
        .map(|r| (median(&r.b2b), p95(&r.b2b), median(&r.gap), p95(&r.gap)));
    let (bw_b2b_med, bw_b2b_p95, bw_gap_med, bw_gap_p95) = bw.unwrap_or((None, None, None, None));
    println!(
        "spawn-to-exit latency of /bin/true, ms (back-to-back: {n} runs in bursts of {BURST}; 50 ms gaps: {} runs; {} warm-up; pool size {pool_size})",
        n / 2,
        WARMUP
    );
    println!(
        "{:<22} | {:>8} {:>8} {:>9} {:>9} | {:>8} {:>8} {:>9} {:>9}",
        "runner",
        "b2b med",
        "b2b p95",
        "med/bwrap",
        "p95/bwrap",
        "gap med",
        "gap p95",
        "med/bwrap",
        "p95/bwrap"
    );
    println!("{}", "-".repeat(104));
    for r in &rows {
        let (bm, bp, gm, gp) = (median(&r.b2b), p95(&r.b2b), median(&r.gap), p95(&r.gap));
        println!(
            "{:<22} | {:>8} {:>8} {:>9} {:>9} | {:>8} {:>8} {:>9} {:>9}{}",
            r.name,
            ms(bm),
            ms(bp),
            ratio(bm, bw_b2b_med),
            ratio(bp, bw_b2b_p95),
            ms(gm),
            ms(gp),
            ratio(gm, bw_gap_med),
            ratio(gp, bw_gap_p95),
            r.note
                .as_deref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
    }
    println!(
        "target: hutch full sandbox median <= 0.5x bwrap's and p95 <= bwrap's p95, in both regimes"
    );
    let take = |i: usize| -> (Samples, Samples) {
        traces[i].borrow_mut().drain(..).partition(|(gap, _)| !*gap)
    };
    let (cold_b2b, cold_gap) = take(0);
    let (warm_b2b, warm_gap) = take(1);
    println!();
    print_kinds("full sandbox, back-to-back", &refs(&warm_b2b));
    print_kinds("full sandbox, 50 ms gaps", &refs(&warm_gap));
    print_hops("full sandbox, back-to-back", &refs(&warm_b2b));
    print_hops("full sandbox, 50 ms gaps", &refs(&warm_gap));
    print_breakdown(
        "full sandbox, back-to-back",
        &refs(&cold_b2b),
        &refs(&warm_b2b),
    );
    print_breakdown(
        "full sandbox, 50 ms gaps",
        &refs(&cold_gap),
        &refs(&warm_gap),
    );
    if root {
        namespace_costs(30);
    }
    ExitCode::SUCCESS
}
