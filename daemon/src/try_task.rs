//! `hutchd try --task ACTION`: one task on the plugin `try` runs.
//!
//! Steps, in order (each says why it comes where it does):
//! 1. [`TaskPlan::new`], before anything is created: the action must be one
//!    the manifest declares (when it declares any), `--args` must be JSON,
//!    every `--input` must be a readable file with a usable key (exit 2).
//! 2. [`TaskPlan::load_inputs`], before the plugin starts: dataset `try`
//!    (owned by the acting user) and one object per input file, key = the
//!    file name, written through the built-in store like `hutchctl dataset
//!    put` does (audited with the user as actor).
//! 3. [`TaskPlan::drive`]: wait for the plugin's hello (or its end), check
//!    that it offers the action (from its audited `agent.session.open`),
//!    assign the task through the instance's `TaskHub` (Data calls carrying
//!    its id act as the user), print its progress, logs and outputs live on
//!    stderr, and record `task.assigned` / `task.completed` / `task.failed`
//!    as the daemon's task manager does.
//! 4. [`TaskPlan::write_outputs`], after the plugin was stopped: every output
//!    object is copied from the store into `--output DIR`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hutch_api::audit::{Actor, AuditEvent, AuditFilter};
use hutch_api::authz::Owner;
use hutch_api::server::{Task, TaskEvent, TaskHub};
use hutch_api::store::{ByteStream, DatasetId, Expect, NewDataset, ObjectKey, StoreError, Version};
use hutch_plugin_protocol::plugin::v1 as pb;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::daemon::{Daemon, DaemonError};
use crate::manifest::Manifest;
use crate::supervisor::neutralise;
use crate::tasks::TaskState;
use crate::try_cmd::{DEFAULT_OUTPUT_DIR, TRY_DATASET, TryArgs, TryError};

/// The task `try` was asked to run, validated.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    /// The action.
    pub action: String,
    /// Its arguments, JSON.
    pub args_json: String,
    /// Input files and their object keys.
    pub inputs: Vec<(PathBuf, String)>,
    /// Where outputs go.
    pub output_dir: PathBuf,
}

/// One output the task yielded.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    /// Its name.
    pub name: String,
    /// Its JSON value.
    pub value_json: String,
    /// The object written (`DATASET/KEY`), if any.
    pub object: Option<String>,
    /// That object's version.
    pub version: Option<u64>,
    /// Where `try` wrote its content.
    pub file: Option<PathBuf>,
    /// Its size in bytes.
    pub bytes: Option<u64>,
    /// Why it could not be written out.
    pub error: Option<String>,
}

/// How the task went.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRun {
    /// Task id.
    pub id: String,
    /// Action.
    pub action: String,
    /// Acting user.
    pub user: String,
    /// Final state.
    pub state: TaskState,
    /// Result JSON when completed.
    pub result_json: Option<String>,
    /// Error when failed.
    pub error: Option<String>,
    /// Outputs in the order yielded.
    pub outputs: Vec<OutputRecord>,
    /// Log lines the task sent.
    pub log_lines: usize,
    /// Last progress in percent.
    pub progress: f32,
    /// Wall time from assignment to the end, ms.
    pub duration_ms: u64,
}

impl TaskRun {
    /// Whether the task completed.
    pub fn completed(&self) -> bool {
        self.state == TaskState::Completed
    }
}

fn usage(msg: String) -> TryError {
    TryError::Usage(msg)
}

impl TaskPlan {
    /// Validates `--task`, `--args`, `--input` and `--output`.
    ///
    /// # Errors
    /// [`TryError::Usage`] naming the flag and the problem.
    pub fn new(action: &str, args: &TryArgs, manifest: &Manifest) -> Result<TaskPlan, TryError> {
        if action.is_empty() {
            return Err(usage("--task: the action name is empty".into()));
        }
        if !manifest.actions.is_empty() && !manifest.actions.iter().any(|a| a.name == action) {
            let names: Vec<&str> = manifest.actions.iter().map(|a| a.name.as_str()).collect();
            return Err(usage(format!(
                "--task {action}: plugin {} declares no action {action:?} in [[actions]] (it declares: {})",
                manifest.id,
                names.join(", ")
            )));
        }
        let args_json = match &args.task_args {
            None => "{}".to_owned(),
            Some(a) if a.trim().is_empty() => "{}".to_owned(),
            Some(a) => {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(a) {
                    return Err(usage(format!("--args is not JSON: {e} (in {a:?})")));
                }
                a.clone()
            }
        };
        let max = crate::config::Config::default().tasks.max_args_bytes;
        if args_json.len() > max {
            return Err(usage(format!(
                "--args is {} bytes, more than tasks.max_args_bytes ({max})",
                args_json.len()
            )));
        }
        let mut inputs: Vec<(PathBuf, String)> = Vec::new();
        for f in &args.inputs {
            let meta =
                std::fs::metadata(f).map_err(|e| usage(format!("--input {}: {e}", f.display())))?;
            if !meta.is_file() {
                return Err(usage(format!(
                    "--input {}: not a regular file",
                    f.display()
                )));
            }
            std::fs::File::open(f).map_err(|e| usage(format!("--input {}: {e}", f.display())))?;
            let key = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            ObjectKey::new(key.clone())
                .map_err(|e| usage(format!("--input {}: {e}", f.display())))?;
            if let Some((other, _)) = inputs.iter().find(|(_, k)| *k == key) {
                return Err(usage(format!(
                    "--input {} and --input {} would both be object {TRY_DATASET}/{key}",
                    other.display(),
                    f.display()
                )));
            }
            inputs.push((f.clone(), key));
        }
        Ok(TaskPlan {
            action: action.to_owned(),
            args_json,
            inputs,
            output_dir: args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT_DIR)),
        })
    }

    /// Creates dataset `try` (owned by `user`) if needed and stores every
    /// input file in it; returns the task's input references.
    ///
    /// # Errors
    /// The store failed or a file could not be read.
    pub async fn load_inputs(
        &self,
        daemon: &Daemon,
        user: &str,
    ) -> Result<Vec<pb::ObjectRef>, TryError> {
        let ds = DatasetId::new(TRY_DATASET).map_err(|e| DaemonError::internal("dataset", e))?;
        let backend = daemon.core().backend().clone();
        match backend
            .create_dataset(
                AuditEvent::new(Actor::user(user), hutch_api::audit::ops::DATASET_CREATE, ""),
                NewDataset {
                    id: Some(ds.clone()),
                    name: "hutchd try inputs and outputs".into(),
                    owner: Some(user.to_owned()),
                    metadata: Default::default(),
                },
            )
            .await
        {
            Ok(_) | Err(StoreError::DatasetExists(_)) => {}
            Err(e) => return Err(DaemonError::internal("create dataset try", e).into()),
        }
        daemon
            .core()
            .authz()
            .set_dataset_owner(TRY_DATASET, &Owner::User(user.to_owned()))
            .await
            .map_err(|e| DaemonError::internal("dataset owner", e))?;
        let mut refs = Vec::new();
        for (path, key) in &self.inputs {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(TryError::io("open", path))?;
            let content: ByteStream = Box::pin(
                tokio_util_like::chunks(file)
                    .map(|r| r.map_err(|e| StoreError::Input(e.to_string()))),
            );
            let k = ObjectKey::new(key.clone()).map_err(|e| usage(e.to_string()))?;
            let put = backend
                .put_object(
                    AuditEvent::new(Actor::user(user), hutch_api::audit::ops::OBJECT_PUT, "")
                        .with_details(
                            serde_json::json!({ "via": "hutchd try --input", "file": path }),
                        ),
                    &ds,
                    &k,
                    Expect::Any,
                    None,
                    content,
                )
                .await
                .map_err(|e| {
                    DaemonError::internal(&format!("store --input {}", path.display()), e)
                })?;
            say(&format!(
                "input {} -> {TRY_DATASET}/{key} v{} ({} bytes)",
                path.display(),
                put.value.version,
                put.value.size
            ));
            refs.push(pb::ObjectRef {
                dataset_id: TRY_DATASET.into(),
                key: key.clone(),
                version: u64::try_from(put.value.version.0).unwrap_or(0),
            });
        }
        Ok(refs)
    }

    /// Waits for the plugin's hello, assigns the task and follows it to its
    /// end, printing as it goes.
    ///
    /// # Errors
    /// The plugin ended or stayed silent before its hello, or does not offer
    /// the action (a usage error, exit 2).
    #[allow(clippy::too_many_arguments)]
    pub async fn drive(
        &self,
        daemon: &Daemon,
        hub: &TaskHub,
        user: &str,
        inputs: Vec<pb::ObjectRef>,
        instance: &str,
        manifest: &Manifest,
        mut ended: watch::Receiver<bool>,
        mut intr: watch::Receiver<u32>,
        hello_timeout: Duration,
        since_us: i64,
    ) -> Result<TaskRun, TryError> {
        tokio::select! {
            r = hub.wait_agent(hello_timeout) => if r.is_err() {
                return Err(TryError::Daemon(DaemonError::Conflict(format!(
                    "the plugin did not say hello within {}: it must open the Agent session on \
                     $HUTCH_SOCKET and send Hello (see docs/plugin-authors.md)",
                    humantime::format_duration(hello_timeout)
                ))));
            },
            _ = ended.wait_for(|e| *e) => {
                return Err(TryError::Daemon(DaemonError::Conflict(
                    "the plugin ended before it said hello: a task needs the Agent session on \
                     $HUTCH_SOCKET (see docs/plugin-authors.md)".into(),
                )));
            }
            _ = intr.wait_for(|n| *n > 0) => {
                return Err(TryError::Daemon(DaemonError::Conflict(
                    "interrupted before the plugin said hello".into(),
                )));
            }
        }
        let offered = offered_actions(daemon, &manifest.id, instance, since_us).await;
        if let Some(offered) = &offered
            && !offered.is_empty()
            && !offered.contains(&self.action)
        {
            return Err(usage(format!(
                "--task {}: the plugin does not offer this action; its hello offers: {}",
                self.action,
                offered.join(", ")
            )));
        }
        let id = crate::supervisor::fresh_id("t");
        let started = Instant::now();
        let inputs_text: Vec<String> = inputs
            .iter()
            .map(|i| format!("{}/{} v{}", i.dataset_id, i.key, i.version))
            .collect();
        let mut events = hub
            .assign(Task {
                task_id: id.clone(),
                action: self.action.clone(),
                args_json: self.args_json.clone(),
                acting_user: user.to_owned(),
                inputs,
            })
            .map_err(|e| DaemonError::Conflict(e.to_string()))?;
        say(&format!(
            "task {id}: {} {} as {user}{}",
            self.action,
            self.args_json,
            if inputs_text.is_empty() {
                String::new()
            } else {
                format!(" on {}", inputs_text.join(", "))
            }
        ));
        let _ = daemon
            .audit(
                AuditEvent::new(Actor::daemon(), "task.assigned", format!("task/{id}"))
                    .with_task(id.clone())
                    .with_details(serde_json::json!({
                        "plugin_id": manifest.id, "instance": instance,
                        "version": manifest.version.to_string(), "action": self.action,
                        "user": user, "via": "hutchd try",
                    })),
            )
            .await;
        let mut run = TaskRun {
            id: id.clone(),
            action: self.action.clone(),
            user: user.to_owned(),
            state: TaskState::Running,
            result_json: None,
            error: None,
            outputs: Vec::new(),
            log_lines: 0,
            progress: 0.0,
            duration_ms: 0,
        };
        let mut last_progress: Option<Instant> = None;
        let mut ended_seen = *ended.borrow();
        let mut grace = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        // Set by the first interrupt (the task is cancelled; the plugin's
        // final event then ends it as cancelled).
        let mut cancelled: Option<String> = None;
        let mut intr_open = true;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(TaskEvent::Started) => say("task started"),
                    Some(TaskEvent::Progress { percent, message }) => {
                        run.progress = percent;
                        let due = last_progress.is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
                        if due || percent >= 100.0 {
                            last_progress = Some(Instant::now());
                            say(&format!("[{percent:3.0}%] {}", neutralise(message.as_bytes(), 200)));
                        }
                    }
                    Some(TaskEvent::Log { level, line }) => {
                        run.log_lines += 1;
                        let level = level.as_str_name().trim_start_matches("LOG_LEVEL_").to_ascii_lowercase();
                        say(&format!("{level}: {}", neutralise(line.as_bytes(), 2000)));
                    }
                    Some(TaskEvent::Output { name, value_json, object }) => {
                        let name = neutralise(name.as_bytes(), 256);
                        match &object {
                            Some(o) => say(&format!("output {name}: {}/{} v{}", o.dataset_id, o.key, o.version)),
                            None => say(&format!("output {name}: {}", neutralise(value_json.as_bytes(), 200))),
                        }
                        run.outputs.push(OutputRecord {
                            name,
                            value_json,
                            object: object.as_ref().map(|o| format!("{}/{}", o.dataset_id, o.key)),
                            version: object.as_ref().map(|o| o.version),
                            file: None,
                            bytes: None,
                            error: None,
                        });
                    }
                    Some(TaskEvent::Heartbeat) => {}
                    Some(TaskEvent::Completed { result_json }) => {
                        run.state = TaskState::Completed;
                        run.progress = 100.0;
                        run.result_json = Some(result_json);
                        break;
                    }
                    Some(TaskEvent::Failed { error }) if cancelled.is_some() => {
                        run.state = TaskState::Cancelled;
                        run.error = Some(format!("{} ({})", cancelled.take().unwrap_or_default(), neutralise(error.as_bytes(), 2000)));
                        break;
                    }
                    Some(TaskEvent::Failed { error }) => {
                        run.state = TaskState::Failed;
                        run.error = Some(if error == "plugin agent stream closed" {
                            "the plugin closed its agent stream (or ended) during the task".into()
                        } else {
                            neutralise(error.as_bytes(), 8192)
                        });
                        break;
                    }
                    None => {
                        run.state = TaskState::Failed;
                        run.error = Some("the plugin ended during the task".into());
                        break;
                    }
                },
                _ = ended.wait_for(|e| *e), if !ended_seen => {
                    // Its agent stream closes with it; give the hub a moment
                    // to deliver the final event.
                    ended_seen = true;
                    grace = tokio::time::Instant::now() + Duration::from_secs(5);
                }
                () = tokio::time::sleep_until(grace) => {
                    run.state = TaskState::Failed;
                    run.error = Some("the plugin ended during the task".into());
                    break;
                }
                r = intr.changed(), if intr_open => {
                    if r.is_err() {
                        intr_open = false;
                    } else if cancelled.is_none() {
                        let why = "interrupted (Ctrl-C)".to_owned();
                        let _ = hub.cancel(&id, &why);
                        say("interrupted: cancelling the task (interrupt again to stop the plugin)");
                        cancelled = Some(why);
                    } else {
                        run.state = TaskState::Cancelled;
                        run.error = cancelled.take();
                        break;
                    }
                }
            }
        }
        run.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let op = match run.state {
            TaskState::Completed => "task.completed",
            TaskState::Cancelled => "task.cancelled",
            _ => "task.failed",
        };
        let mut ev = AuditEvent::new(Actor::daemon(), op, format!("task/{id}"))
            .with_task(id.clone())
            .with_details(serde_json::json!({
                "plugin_id": manifest.id, "instance": instance, "action": self.action,
                "user": user, "error": run.error, "outputs": run.outputs.len(), "via": "hutchd try",
            }));
        if !run.completed() {
            ev.outcome = hutch_api::audit::Outcome::Error(run.error.clone().unwrap_or_default());
        }
        let _ = daemon.audit(ev).await;
        Ok(run)
    }

    /// Copies every output object of `run` into the output dir (audited as
    /// reads by the acting user); records the file or the error per output.
    pub async fn write_outputs(&self, daemon: &Daemon, user: &str, run: &mut TaskRun) {
        for o in &mut run.outputs {
            let (Some(obj), Some(version)) = (&o.object, o.version) else {
                continue;
            };
            match self.write_one(daemon, user, obj, version).await {
                Ok((file, bytes)) => {
                    o.file = Some(file);
                    o.bytes = Some(bytes);
                }
                Err(e) => o.error = Some(e),
            }
        }
    }

    async fn write_one(
        &self,
        daemon: &Daemon,
        user: &str,
        obj: &str,
        version: u64,
    ) -> Result<(PathBuf, u64), String> {
        let (ds, key) = obj
            .split_once('/')
            .ok_or_else(|| format!("output object {obj:?}: not DATASET/KEY"))?;
        let ds = DatasetId::new(ds).map_err(|e| e.to_string())?;
        let key = ObjectKey::new(key).map_err(|e| e.to_string())?;
        let version = (version != 0)
            .then(|| i64::try_from(version).map(Version))
            .transpose()
            .map_err(|_| format!("output object {obj}: version out of range"))?;
        let (info, mut content) = daemon
            .core()
            .backend()
            .get_object(&ds, &key, version)
            .await
            .map_err(|e| e.to_string())?;
        daemon.core().audit_sink().record(
            AuditEvent::new(
                Actor::user(user),
                hutch_api::authz::Operation::ObjectGet.name(),
                hutch_api::store::object_resource(&ds, &key),
            )
            .with_details(
                serde_json::json!({ "version": info.version.0, "via": "hutchd try --output" }),
            ),
        );
        let path = self.output_dir.join(safe_relative(key.as_str()));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut n = 0u64;
        while let Some(chunk) = content.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            n += chunk.len() as u64;
            f.write_all(&chunk)
                .await
                .map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        f.flush()
            .await
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok((path, n))
    }
}

/// An object key as a relative path below the output dir: `/`-separated
/// parts become directories; empty, `.` and `..` parts become `_`, so no key
/// can name a path outside the dir.
pub fn safe_relative(key: &str) -> PathBuf {
    key.split('/')
        .map(|p| {
            if p.is_empty() || p == "." || p == ".." {
                "_"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .iter()
        .collect()
}

/// The actions the plugin's hello offered, from its audited
/// `agent.session.open` (queued by the API server; waited for up to 2 s).
async fn offered_actions(
    daemon: &Daemon,
    plugin: &str,
    instance: &str,
    since_us: i64,
) -> Option<Vec<String>> {
    let filter = AuditFilter {
        plugin_id: Some(plugin.to_owned()),
        operation: Some("agent.session.open".into()),
        since_us: Some(since_us),
        ..AuditFilter::default()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(evs) = daemon.core().audit().query(&filter).await
            && let Some(ev) = evs
                .iter()
                .rev()
                .find(|e| e.event.actor.instance.as_deref() == Some(instance))
        {
            let actions = ev.event.details.get("actions")?.as_array()?;
            return Some(
                actions
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// One `hutch: ` line on stderr.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "hutch: {line}");
}

/// Reading a file as a stream of chunks (1 MiB), without holding it whole.
mod tokio_util_like {
    use futures::Stream;
    use tokio::io::AsyncReadExt;

    pub fn chunks(file: tokio::fs::File) -> impl Stream<Item = std::io::Result<Vec<u8>>> + Send {
        futures::stream::unfold(Some(file), |state| async move {
            let mut file = state?;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_below_the_output_dir() {
        assert_eq!(safe_relative("a.pgm"), PathBuf::from("a.pgm"));
        assert_eq!(safe_relative("raw/c.pgm"), PathBuf::from("raw/c.pgm"));
        assert_eq!(safe_relative("../../etc/x"), PathBuf::from("_/_/etc/x"));
        assert_eq!(safe_relative("/abs//x"), PathBuf::from("_/abs/_/x"));
        assert!(
            !std::path::Path::new("out")
                .join(safe_relative("../x"))
                .starts_with("..")
        );
    }
}
