//! `hutch-spawn-bench`: spawn-to-exit latency of `/bin/true`, one table.
//!
//! Rows: plain fork+exec; Hutch's full sandbox (cgroup included) and Hutch
//! without a cgroup, both through `hutch_sandbox::launcher::Launcher::run`
//! exactly as `hutchd try` uses it; `bwrap` with comparable flags (skipped
//! with a note when not installed). Two regimes: back-to-back, and with a
//! 50 ms idle gap before each spawn (cold caches, v1 cgroup RCU grace
//! periods). Median, p95, and the ratio to bwrap.
//!
//! Run as root, in release: `cargo run --release -p hutch-tests --bin
//! hutch-spawn-bench` (`HUTCH_BENCH_N=…` sets the back-to-back sample count;
//! the gap regime uses half). Not a test: it asserts nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use hutch_sandbox::launcher::Launcher;
use hutch_sandbox::spec::{Limits, SandboxSpec};

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

fn measure(name: &'static str, n: usize, mut run: Runner<'_>) -> Row {
    let mut row = Row {
        name,
        b2b: Vec::new(),
        gap: Vec::new(),
        note: None,
    };
    for _ in 0..WARMUP {
        if let Err(e) = run() {
            row.note = Some(format!("failed: {e}"));
            return row;
        }
    }
    for i in 0..n + n / 2 {
        let gap = i >= n;
        if gap {
            std::thread::sleep(GAP);
        }
        match run() {
            Ok(d) if gap => row.gap.push(d),
            Ok(d) => row.b2b.push(d),
            Err(e) => {
                row.note = Some(format!("failed after {i} runs: {e}"));
                break;
            }
        }
    }
    row.b2b.sort();
    row.gap.sort();
    row
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

fn hutch<'a>(launcher: &'a mut Launcher, plugin_dir: &Path, cgroup: bool) -> Runner<'a> {
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
        let t = Instant::now();
        let out = launcher
            .run(&spec, &mut std::io::sink(), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        let d = t.elapsed();
        match (out.exit_code, &out.setup_error) {
            (Some(0), None) => Ok(d),
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

fn main() -> ExitCode {
    // The launcher must be forked before anything else (single-threaded).
    let root = nix::unistd::geteuid().is_root();
    let mut launcher = if root {
        match Launcher::start() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("launcher: {e}");
                None
            }
        }
    } else {
        None
    };
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

    let mut rows = vec![measure("plain fork+exec", n, plain())];
    match launcher.as_mut() {
        Some(l) => {
            rows.push(measure(
                "hutch full sandbox",
                n,
                hutch(l, plugin.path(), true),
            ));
            rows.push(measure(
                "hutch without cgroup",
                n,
                hutch(l, plugin.path(), false),
            ));
        }
        None => {
            let note = Some(if root {
                "launcher failed to start".into()
            } else {
                "skipped: needs root".to_owned()
            });
            rows.push(Row {
                name: "hutch full sandbox",
                b2b: vec![],
                gap: vec![],
                note: note.clone(),
            });
            rows.push(Row {
                name: "hutch without cgroup",
                b2b: vec![],
                gap: vec![],
                note,
            });
        }
    }
    match bwrap_path() {
        Some(b) => rows.push(measure("bwrap", n, bwrap(b, plugin.path()))),
        None => rows.push(Row {
            name: "bwrap",
            b2b: vec![],
            gap: vec![],
            note: Some("skipped: bwrap not installed (apt-get install bubblewrap)".into()),
        }),
    }

    let bw = rows
        .iter()
        .find(|r| r.name == "bwrap")
        .map(|r| (median(&r.b2b), p95(&r.b2b), median(&r.gap), p95(&r.gap)));
    let (bw_b2b_med, bw_b2b_p95, bw_gap_med, bw_gap_p95) = bw.unwrap_or((None, None, None, None));
    println!(
        "spawn-to-exit latency of /bin/true, ms (back-to-back: {n} runs; 50 ms gaps: {} runs; {} warm-up)",
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
    ExitCode::SUCCESS
}
