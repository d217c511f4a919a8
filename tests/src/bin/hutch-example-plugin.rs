//! A small, well-behaved Hutch plugin: the README demo's example and the
//! daemon end-to-end tests' workhorse. Written with the Rust client helper
//! (`hutch_plugin_protocol::client`), as a plugin author would.
//!
//! Actions (args are JSON):
//! - `threshold` `{"level": 128, "steps": 4}`: for each input object, writes
//!   `<key>.thresholded` into the input's dataset (every byte >= level
//!   becomes 255, else 0), reporting progress in `steps` steps; outputs the
//!   written objects and a count of bright bytes.
//! - `count`: reads the inputs and outputs their total size (read-only).
//! - `sleep` `{"ms": 60000, "step_ms": 200}`: reports progress until done or
//!   cancelled (for cancel and kill tests).
//! - `fail`: reports failure. `exit` `{"code": 3}`: the process exits
//!   (a crash, for restart tests). `hang`: stops heartbeating and blocks
//!   (for watchdog tests).
//! - `print` `{"text": "...", "count": 1, "bytes": 0}`: prints `text`
//!   (`<text> <n>` when `count` > 1) to stdout `count` times, raw (control
//!   characters included), plus one line of `bytes` `x`s if non-zero; for
//!   log capture and flood tests. Outputs how many lines it printed.
//! - `threads` `{"count": 20, "hold_ms": 1000}`: starts `count` threads that
//!   each live `hold_ms`, and outputs how many could be started (the cgroup
//!   pids limit counts threads).
//!
//! Every line it prints goes to stdout/stderr, which hutchd captures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hutch_plugin_protocol::client::{self, AgentSession, Incoming, TaskReporter};
use hutch_plugin_protocol::plugin::v1 as pb;
use tokio::sync::watch;

type Cancels = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("example plugin: runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example plugin: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run() -> Result<(), client::ClientError> {
    let channel = client::connect_from_env().await?;
    let mut agent = AgentSession::hello(
        channel.clone(),
        &[
            "threshold",
            "count",
            "sleep",
            "fail",
            "exit",
            "hang",
            "print",
            "threads",
        ],
    )
    .await?;
    println!(
        "example plugin up: {} {} instance {}, scopes {:?}",
        agent.welcome.plugin_id,
        agent.welcome.plugin_version,
        agent.welcome.instance_id,
        agent.welcome.granted_scopes
    );
    let cancels: Cancels = Arc::default();
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let next = tokio::select! {
            m = agent.next() => m?,
            () = tokio::time::sleep(Duration::from_secs(3)) => {
                if !hung.load(std::sync::atomic::Ordering::Relaxed) {
                    let busy: Vec<String> = match cancels.lock() {
                        Ok(c) => c.keys().cloned().collect(),
                        Err(p) => p.into_inner().keys().cloned().collect(),
                    };
                    agent.heartbeat(&busy).await?;
                }
                continue;
            }
        };
        match next {
            None => {
                println!("agent stream closed; exiting");
                return Ok(());
            }
            Some(Incoming::Cancel(c)) => {
                println!("cancel {}: {}", c.task_id, c.reason);
                if let Ok(map) = cancels.lock()
                    && let Some(tx) = map.get(&c.task_id)
                {
                    let _ = tx.send(true);
                }
            }
            Some(Incoming::Task(t)) => {
                println!(
                    "task {} action {} args {}",
                    t.task_id, t.action, t.args_json
                );
                if t.action == "exit" {
                    let code = arg_u64(&t.args_json, "code", 3);
                    eprintln!("exiting with {code} as asked");
                    std::process::exit(i32::try_from(code).unwrap_or(3));
                }
                if t.action == "hang" {
                    hung.store(true, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("hanging as asked (no more heartbeats)");
                    std::thread::sleep(Duration::from_secs(3600));
                }
                let (tx, rx) = watch::channel(false);
                if let Ok(mut map) = cancels.lock() {
                    map.insert(t.task_id.clone(), tx);
                }
                let reporter = agent.reporter(&t.task_id);
                let data = client::data_client(channel.clone());
                let cancels = cancels.clone();
                tokio::spawn(async move {
                    let id = t.task_id.clone();
                    if let Err(e) = work(&reporter, data, t, rx).await {
                        eprintln!("task {id}: {e}");
                        let _ = reporter.failed(&e.to_string()).await;
                    }
                    if let Ok(mut map) = cancels.lock() {
                        map.remove(&id);
                    }
                });
            }
        }
    }
}

fn arg_u64(args: &str, key: &str, default: u64) -> u64 {
    serde_json::from_str::<serde_json::Value>(args)
        .ok()
        .and_then(|v| v.get(key).and_then(serde_json::Value::as_u64))
        .unwrap_or(default)
}

/// Prints raw lines to stdout (one write per line, like a chatty program).
fn print_lines(text: &str, count: u64, bytes: u64) -> u64 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    for i in 0..count {
        let ok = if count > 1 {
            writeln!(out, "{text} {i}")
        } else {
            writeln!(out, "{text}")
        };
        if ok.and_then(|()| out.flush()).is_err() {
            return n;
        }
        n += 1;
    }
    if bytes > 0 {
        let long = "x".repeat(usize::try_from(bytes).unwrap_or(0));
        if writeln!(out, "{long}").and_then(|()| out.flush()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Starts up to `count` threads living `hold` each; returns how many started.
fn start_threads(count: u64, hold: Duration) -> u64 {
    let mut handles = Vec::new();
    for _ in 0..count {
        match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || std::thread::sleep(hold))
        {
            Ok(h) => handles.push(h),
            Err(e) => {
                println!("thread {} not started: {e}", handles.len());
                break;
            }
        }
    }
    let n = handles.len() as u64;
    for h in handles {
        let _ = h.join();
    }
    n
}

async fn work(
    r: &TaskReporter,
    mut data: pb::data_client::DataClient<tonic::transport::Channel>,
    t: pb::TaskAssignment,
    mut cancel: watch::Receiver<bool>,
) -> Result<(), client::ClientError> {
    r.started().await?;
    let task = Some(t.task_id.as_str());
    match t.action.as_str() {
        "threshold" => {
            let level = u8::try_from(arg_u64(&t.args_json, "level", 128)).unwrap_or(128);
            let steps = arg_u64(&t.args_json, "steps", 4).clamp(1, 100);
            let mut bright = 0u64;
            let n = t.inputs.len().max(1) as f32;
            for (i, input) in t.inputs.iter().enumerate() {
                r.progress(
                    100.0 * i as f32 / n,
                    &format!("reading {}/{}", input.dataset_id, input.key),
                )
                .await?;
                let bytes =
                    client::get_bytes(&mut data, task, &input.dataset_id, &input.key).await?;
                let mut out = Vec::with_capacity(bytes.len());
                for s in 0..steps {
                    let a = bytes.len() * s as usize / steps as usize;
                    let b = bytes.len() * (s as usize + 1) / steps as usize;
                    for &x in &bytes[a..b] {
                        out.push(if x >= level { 255 } else { 0 });
                    }
                    let done = (i as f32 + (s + 1) as f32 / steps as f32) / n;
                    r.progress(
                        100.0 * done,
                        &format!("thresholding {} ({}/{steps})", input.key, s + 1),
                    )
                    .await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                bright += out.iter().filter(|&&x| x == 255).count() as u64;
                let key = format!("{}.thresholded", input.key);
                let info =
                    client::put_bytes(&mut data, task, &input.dataset_id, &key, None, &out).await?;
                r.output(
                    &key,
                    &serde_json::json!({ "size": info.size, "sha256": info.sha256 }).to_string(),
                    Some(pb::ObjectRef {
                        dataset_id: info.dataset_id,
                        key: info.key,
                        version: info.version,
                    }),
                )
                .await?;
                r.log(
                    pb::LogLevel::Info,
                    &format!("wrote {key} version {}", info.version),
                )
                .await?;
            }
            r.output("bright_bytes", &bright.to_string(), None).await?;
            r.completed(&serde_json::json!({ "bright_bytes": bright, "level": level }).to_string())
                .await
        }
        "count" => {
            let mut total = 0u64;
            for input in &t.inputs {
                total += client::get_bytes(&mut data, task, &input.dataset_id, &input.key)
                    .await?
                    .len() as u64;
            }
            r.output("bytes", &total.to_string(), None).await?;
            r.completed(&total.to_string()).await
        }
        "sleep" => {
            let ms = arg_u64(&t.args_json, "ms", 60_000);
            let step = arg_u64(&t.args_json, "step_ms", 200).max(10);
            let mut slept = 0;
            while slept < ms {
                tokio::select! {
                    _ = cancel.changed() => {
                        return r.failed("cancelled").await;
                    }
                    () = tokio::time::sleep(Duration::from_millis(step)) => {}
                }
                slept += step;
                r.progress(
                    100.0 * slept as f32 / ms as f32,
                    &format!("slept {slept} ms"),
                )
                .await?;
            }
            r.completed("{}").await
        }
        "fail" => r.failed("failing as asked").await,
        "print" => {
            let args: serde_json::Value = serde_json::from_str(&t.args_json).unwrap_or_default();
            let text = args.get("text").and_then(|v| v.as_str()).unwrap_or("hello");
            let count = arg_u64(&t.args_json, "count", 1);
            let bytes = arg_u64(&t.args_json, "bytes", 0);
            let printed = print_lines(text, count, bytes);
            r.output("printed", &printed.to_string(), None).await?;
            r.completed(&printed.to_string()).await
        }
        "threads" => {
            let count = arg_u64(&t.args_json, "count", 20);
            let hold = Duration::from_millis(arg_u64(&t.args_json, "hold_ms", 1000));
            // Blocks this single-threaded runtime for `hold` at most: fine for a test.
            let started = start_threads(count, hold);
            r.output("started", &started.to_string(), None).await?;
            r.completed(&started.to_string()).await
        }
        other => r.failed(&format!("unknown action {other:?}")).await,
    }
}
