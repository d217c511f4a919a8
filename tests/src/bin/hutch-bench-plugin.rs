//! The plugin `hutch-scale-bench` starts by the hundred: it says hello and
//! waits for tasks; its one action, `calls`, runs a loop of small Data calls
//! and reports how many completed. Written with the Rust client helper.
//!
//! ```text
//! hutch-bench-plugin                 as a plugin: hello on $HUTCH_SOCKET, serve `calls` tasks
//! hutch-bench-plugin direct ARGS     the same loop once, unsandboxed, against $HUTCH_SOCKET;
//!                                    prints the result JSON on stdout
//! ```
//!
//! The loop's arguments (JSON): `{"dataset": "bench", "prefix": "p1",
//! "size": 1024, "start_at_ms": <unix ms>, "duration_ms": 3000}`. It dials
//! its own connection, waits until `start_at_ms` (so many loops run in the
//! same window), then alternates a put of `size` bytes to
//! `<prefix>/k<i % 8>` with a get of it until `duration_ms` have passed. The
//! result is `{"ops": N, "puts": N, "gets": N, "errors": N, "first_error":
//! "...", "elapsed_ms": N}`; only calls that finished inside the window count.
//! Calls carry no task id, so they act as the installing admin in both modes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hutch_plugin_protocol::client::{self, AgentSession};

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench plugin: runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        None => rt.block_on(serve()),
        Some("direct") => match args.get(1) {
            Some(json) => rt.block_on(async {
                let out = calls(json).await;
                println!("{out}");
                Ok(())
            }),
            None => Err("usage: hutch-bench-plugin direct ARGS_JSON".to_owned()),
        },
        Some(other) => Err(format!("unknown mode {other:?}")),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench plugin: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve() -> Result<(), String> {
    let channel = client::connect_from_env()
        .await
        .map_err(|e| e.to_string())?;
    let agent = AgentSession::hello(channel, &["calls"])
        .await
        .map_err(|e| e.to_string())?;
    agent
        .run_tasks(|task, _report| async move {
            match task.action.as_str() {
                "calls" => Ok(calls(&task.args_json).await.to_string()),
                other => Err(format!("unknown action {other:?}")),
            }
        })
        .await
        .map_err(|e| e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The call loop; never fails, errors are counted in the result.
async fn calls(args_json: &str) -> serde_json::Value {
    let args: serde_json::Value = serde_json::from_str(args_json).unwrap_or_default();
    let s = |k: &str, d: &str| {
        args.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or(d)
            .to_owned()
    };
    let n = |k: &str, d: u64| args.get(k).and_then(serde_json::Value::as_u64).unwrap_or(d);
    let dataset = s("dataset", "bench");
    let prefix = s("prefix", "bench");
    let size = usize::try_from(n("size", 1024))
        .unwrap_or(1024)
        .min(1 << 20);
    let duration = Duration::from_millis(n("duration_ms", 3000));
    let start_at = n("start_at_ms", 0);

    let channel = match client::connect_from_env().await {
        Ok(c) => c,
        Err(e) => return serde_json::json!({ "ops": 0, "errors": 1, "first_error": e.to_string() }),
    };
    let mut data = client::data_client(channel);
    let payload = vec![0x5au8; size];
    let wait = start_at.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let t0 = Instant::now();
    let (mut puts, mut gets, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = String::new();
    let mut i: u64 = 0;
    while t0.elapsed() < duration {
        let key = format!("{prefix}/k{}", i % 8);
        let put = client::put_bytes(&mut data, None, &dataset, &key, None, &payload).await;
        let put_ok = put.is_ok();
        if let Err(e) = put {
            errors += 1;
            if first_error.is_empty() {
                first_error = e.to_string();
            }
        }
        let get = if put_ok {
            Some(client::get_bytes(&mut data, None, &dataset, &key).await)
        } else {
            None
        };
        if t0.elapsed() > duration {
            break;
        }
        if put_ok {
            puts += 1;
        }
        match get {
            Some(Ok(b)) if b.len() == size => gets += 1,
            Some(Ok(b)) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = format!("get {key}: {} bytes, expected {size}", b.len());
                }
            }
            Some(Err(e)) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = e.to_string();
                }
            }
            None => {}
        }
        i += 1;
        if !put_ok {
            // Do not spin on a refusal.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    serde_json::json!({
        "ops": puts + gets,
        "puts": puts,
        "gets": gets,
        "errors": errors,
        "first_error": first_error,
        "elapsed_ms": u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
