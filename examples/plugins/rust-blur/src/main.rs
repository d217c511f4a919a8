//! `hutch-blur`: the Rust example plugin. Blur and threshold of 8-bit PGM
//! images, exactly as the image contract defines them (the Python example
//! plugin does the same job), written with the
//! `hutch_plugin_protocol::client` helper:
//!
//! - `blur` `{"passes": N}` (1..=16, default 1): N passes of the 3x3
//!   binomial kernel with clamped edges, `(sum + 8) >> 4`;
//! - `threshold` `{"level": L}` (0..=255, default 128): 255 if `in >= L`.
//!
//! For each input `DATASET/KEY` it streams the object in, writes
//! `DATASET/<KEY without .pgm>.<action>.pgm` (streamed in chunks) with
//! metadata linking it to its input, yields it as an output, reports
//! progress per block of rows (every 5 %), logs at start and end, and
//! returns `{"outputs": [...], "pixels": N}`. A cancel aborts the handler at
//! its next block (the helper reports `failed("cancelled: ...")`); the
//! helper heartbeats while a task runs.

mod image;

use std::collections::BTreeMap;
use std::process::ExitCode;

use hutch_plugin_protocol::client::{self, AgentSession, TaskReporter};
use hutch_plugin_protocol::plugin::v1 as pb;
use tonic::transport::Channel;

use crate::image::{Image, blur_rows, encode_pgm, parse_pgm, threshold_rows};

/// Blocks of rows per pass: progress and cancel points.
const BLOCKS: usize = 20;

fn main() -> ExitCode {
    // Two workers: the task loop (cancel, heartbeats) stays responsive while
    // a handler computes.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch-blur: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hutch-blur: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> Result<(), client::ClientError> {
    let channel = client::connect_from_env().await?;
    let agent = AgentSession::hello(channel.clone(), &["blur", "threshold"]).await?;
    eprintln!(
        "hutch-blur: {} {} up on instance {} (scopes {:?})",
        agent.welcome.plugin_id,
        agent.welcome.plugin_version,
        agent.welcome.instance_id,
        agent.welcome.granted_scopes
    );
    agent
        .run_tasks(move |task, report| {
            let channel = channel.clone();
            async move { handle(task, report, channel).await }
        })
        .await
}

/// The action and its checked arguments (defaults filled in).
#[derive(Debug, Clone, Copy)]
enum Op {
    Blur { passes: u32 },
    Threshold { level: u8 },
}

impl Op {
    fn args_json(self) -> serde_json::Value {
        match self {
            Op::Blur { passes } => serde_json::json!({ "passes": passes }),
            Op::Threshold { level } => serde_json::json!({ "level": level }),
        }
    }
}

/// `args` checked against `allowed: (name, default, lo, hi)`.
fn int_args(
    action: &str,
    args_json: &str,
    allowed: &[(&str, u64, u64, u64)],
) -> Result<BTreeMap<String, u64>, String> {
    let args: serde_json::Value = if args_json.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(args_json).map_err(|e| format!("{action}: args are not JSON: {e}"))?
    };
    let obj = args
        .as_object()
        .ok_or_else(|| format!("{action}: args must be a JSON object"))?;
    let names: Vec<&str> = allowed.iter().map(|a| a.0).collect();
    if let Some(k) = obj.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(format!(
            "{action}: unknown argument {k:?} (allowed: {})",
            names.join(", ")
        ));
    }
    let mut out = BTreeMap::new();
    for (name, default, lo, hi) in allowed {
        let v = match obj.get(*name) {
            None => *default,
            Some(v) => v
                .as_u64()
                .filter(|n| (*lo..=*hi).contains(n))
                .ok_or_else(|| {
                    format!("{action}: {name} must be an integer in {lo}..={hi}, got {v}")
                })?,
        };
        out.insert((*name).to_owned(), v);
    }
    Ok(out)
}

fn parse_op(task: &pb::TaskAssignment) -> Result<Op, String> {
    match task.action.as_str() {
        "blur" => {
            let a = int_args("blur", &task.args_json, &[("passes", 1, 1, 16)])?;
            Ok(Op::Blur {
                passes: u32::try_from(a["passes"]).unwrap_or(1),
            })
        }
        "threshold" => {
            let a = int_args("threshold", &task.args_json, &[("level", 128, 0, 255)])?;
            Ok(Op::Threshold {
                level: u8::try_from(a["level"]).unwrap_or(128),
            })
        }
        other => Err(format!(
            "unknown action {other:?} (this plugin offers blur, threshold)"
        )),
    }
}

async fn handle(
    task: pb::TaskAssignment,
    report: TaskReporter,
    channel: Channel,
) -> Result<String, String> {
    let op = parse_op(&task)?;
    if task.inputs.is_empty() {
        return Err(format!(
            "{}: no input objects (pass --input DATASET/KEY)",
            task.action
        ));
    }
    let mut data = client::data_client(channel);
    let tid = Some(task.task_id.as_str());
    let e = |e: client::ClientError| e.to_string();
    report
        .log(
            pb::LogLevel::Info,
            &format!(
                "{} {} on {} input(s)",
                task.action,
                op.args_json(),
                task.inputs.len()
            ),
        )
        .await
        .map_err(e)?;
    let share = 100.0 / task.inputs.len() as f32;
    let mut outputs = Vec::new();
    let mut pixels: u64 = 0;
    for (n, input) in task.inputs.iter().enumerate() {
        let done = n as f32 * share;
        let mut content = Vec::new();
        let info = client::get_object(
            &mut data,
            tid,
            pb::GetObjectRequest {
                dataset_id: input.dataset_id.clone(),
                key: input.key.clone(),
                version: input.version,
            },
            &mut content,
        )
        .await
        .map_err(e)?;
        let img = parse_pgm(&content, &input.key)?;
        drop(content);
        let out = match op {
            Op::Blur { passes } => {
                let mut img = img;
                for pass in 0..passes {
                    let step = share * 0.9 / passes as f32;
                    img = apply(&img, &report, done + step * pass as f32, step, blur_rows).await?;
                }
                img
            }
            Op::Threshold { level } => {
                apply(&img, &report, done, share * 0.9, |s, d, a, b| {
                    threshold_rows(s, d, level, a, b)
                })
                .await?
            }
        };
        let base = input.key.strip_suffix(".pgm").unwrap_or(&input.key);
        let key = format!("{base}.{}.pgm", task.action);
        let source = format!("{}/{}", input.dataset_id, input.key);
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("source".to_owned(), source.clone());
        metadata.insert("source_version".to_owned(), info.version.to_string());
        metadata.insert("action".to_owned(), task.action.clone());
        metadata.insert("args".to_owned(), op.args_json().to_string());
        let header = pb::PutObjectHeader {
            dataset_id: input.dataset_id.clone(),
            key: key.clone(),
            expected_version: None,
            metadata,
        };
        // Streamed in chunks of at most 1 MiB by the helper.
        let written = client::put_object(
            &mut data,
            tid,
            header,
            std::io::Cursor::new(encode_pgm(&out)),
        )
        .await
        .map_err(e)?;
        let value = serde_json::json!({
            "source": source, "source_version": info.version,
            "action": task.action, "args": op.args_json(),
        });
        report
            .output(
                &key,
                &value.to_string(),
                Some(pb::ObjectRef {
                    dataset_id: written.dataset_id.clone(),
                    key: written.key.clone(),
                    version: written.version,
                }),
            )
            .await
            .map_err(e)?;
        report
            .progress(
                done + share,
                &format!("wrote {}/{key} v{}", written.dataset_id, written.version),
            )
            .await
            .map_err(e)?;
        pixels += (out.width * out.height) as u64;
        outputs.push(key);
    }
    report
        .log(
            pb::LogLevel::Info,
            &format!(
                "{} done: {} output(s), {pixels} pixels",
                task.action,
                outputs.len()
            ),
        )
        .await
        .map_err(e)?;
    Ok(serde_json::json!({ "outputs": outputs, "pixels": pixels }).to_string())
}

/// One pass of `rows` over `src` by blocks of rows, reporting progress
/// from `from` to `from + span` percent after each block (an await point,
/// where a cancel takes effect).
async fn apply(
    src: &Image,
    report: &TaskReporter,
    from: f32,
    span: f32,
    rows: impl Fn(&Image, &mut [u8], usize, usize),
) -> Result<Image, String> {
    let h = src.height;
    let mut dst = vec![0u8; src.pixels.len()];
    let step = h.div_ceil(BLOCKS).max(1);
    let mut y = 0;
    while y < h {
        let end = (y + step).min(h);
        rows(src, &mut dst, y, end);
        report
            .progress(
                from + span * end as f32 / h as f32,
                &format!("rows {end}/{h}"),
            )
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::yield_now().await;
        y = end;
    }
    Ok(Image {
        width: src.width,
        height: h,
        pixels: dst,
    })
}
