//! Tasks: an action of a plugin run for a user, tracked from submission to
//! its end in `hutch.db` (migration `0101_tasks.sql`).

use serde::{Deserialize, Serialize};

/// `hutchctl task run PLUGIN ACTION --args JSON --input DATASET/OBJECT`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The plugin id.
    pub plugin_id: String,
    /// The action.
    pub action: String,
    /// Arguments, JSON (empty = `{}`).
    pub args_json: String,
    /// Input objects.
    pub inputs: Vec<InputRef>,
}

/// An input object of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Dataset id.
    pub dataset: String,
    /// Object key.
    pub key: String,
    /// Version; `None` = current.
    pub version: Option<u64>,
}

impl InputRef {
    /// Parses `DATASET/OBJECT[@VERSION]`.
    ///
    /// # Errors
    /// No `/`, empty parts or a bad version.
    pub fn parse(s: &str) -> Result<InputRef, String> {
        let (ds, rest) = s
            .split_once('/')
            .ok_or_else(|| format!("input {s:?}: expected DATASET/OBJECT"))?;
        let (key, version) = match rest.rsplit_once('@') {
            Some((k, v)) => (
                k,
                Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("input {s:?}: bad version {v:?}"))?,
                ),
            ),
            None => (rest, None),
        };
        if ds.is_empty() || key.is_empty() {
            return Err(format!("input {s:?}: expected DATASET/OBJECT"));
        }
        Ok(InputRef {
            dataset: ds.to_owned(),
            key: key.to_owned(),
            version,
        })
    }
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for the plugin's agent.
    Queued,
    /// Assigned to the plugin.
    Running,
    /// Ended successfully.
    Completed,
    /// Ended with an error (plugin error, timeout, crash, daemon restart).
    Failed,
    /// Cancelled by its submitter or an admin.
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Queued,
            TaskState::Running,
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// An output a task yielded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// Name.
    pub name: String,
    /// JSON value.
    pub value_json: String,
    /// An object it wrote, if any.
    pub object: Option<InputRef>,
}

/// A log line of a task (from the Agent stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLog {
    /// When (ms since the epoch).
    pub ts_ms: i64,
    /// `debug`, `info`, `warn`, `error`.
    pub level: String,
    /// The line (control characters neutralised).
    pub line: String,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Task id (`t-…`).
    pub id: String,
    /// Plugin id.
    pub plugin_id: String,
    /// Plugin version it ran on (once assigned).
    pub plugin_version: Option<String>,
    /// Instance it ran on (once assigned).
    pub instance: Option<String>,
    /// Action.
    pub action: String,
    /// Arguments, JSON.
    pub args_json: String,
    /// Inputs.
    pub inputs: Vec<InputRef>,
    /// The submitting (acting) user.
    pub user: String,
    /// State.
    pub state: TaskState,
    /// Progress in percent.
    pub progress: f32,
    /// Last progress message.
    pub progress_message: String,
    /// Outputs so far.
    pub outputs: Vec<TaskOutput>,
    /// Result JSON when completed.
    pub result_json: Option<String>,
    /// Error when failed or cancelled.
    pub error: Option<String>,
    /// Submitted (ms since the epoch).
    pub created_ms: i64,
    /// Started by the plugin.
    pub started_ms: Option<i64>,
    /// Ended.
    pub ended_ms: Option<i64>,
    /// Log lines (bounded by `tasks.max_log_lines`).
    pub logs: Vec<TaskLog>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Only this plugin.
    pub plugin_id: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only these states (empty = all).
    pub states: Vec<TaskState>,
    /// At most this many (0 = 100).
    pub limit: usize,
}

// ---------------------------------------------------------------- engine

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hutch_api::audit::{Actor, AuditEvent};
use hutch_api::server::{ApiCore, Task, TaskEvent};
use hutch_plugin_protocol::plugin::v1 as pb;
use sqlx::{Row, SqlitePool};
use tokio::sync::watch;

use crate::config::Config;
use crate::daemon::{DaemonError, now_ms};
use crate::registry::Registry;
use crate::supervisor::{Supervisor, neutralise};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn db_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> DaemonError {
    move |e| DaemonError::internal(op, e)
}

struct LiveTask {
    info: watch::Sender<TaskInfo>,
    cancel: watch::Sender<Option<String>>,
}

/// Submitted and running tasks; finished ones live in the database.
pub(crate) struct TaskManager {
    pool: SqlitePool,
    core: ApiCore,
    sup: Arc<Supervisor>,
    registry: Registry,
    config: Arc<RwLock<Arc<Config>>>,
    live: Mutex<HashMap<String, Arc<LiveTask>>>,
}

impl TaskManager {
    pub fn new(
        pool: SqlitePool,
        core: ApiCore,
        sup: Arc<Supervisor>,
        registry: Registry,
        config: Arc<RwLock<Arc<Config>>>,
    ) -> Arc<TaskManager> {
        Arc::new(TaskManager {
            pool,
            core,
            sup,
            registry,
            config,
            live: Mutex::new(HashMap::new()),
        })
    }

    fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Tasks queued or running.
    pub fn active(&self) -> usize {
        lock(&self.live).len()
    }

    /// Ids of active tasks of a plugin (or all).
    pub fn active_ids(&self, plugin: Option<&str>) -> Vec<String> {
        lock(&self.live)
            .iter()
            .filter(|(_, t)| plugin.is_none_or(|p| t.info.borrow().plugin_id == p))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Records and starts a task that passed the daemon's checks.
    pub async fn submit(
        self: &Arc<Self>,
        req: TaskRequest,
        user: &str,
    ) -> Result<TaskInfo, DaemonError> {
        if self.active() >= self.config().tasks.max_active {
            return Err(DaemonError::Conflict(format!(
                "too many active tasks (tasks.max_active = {}); try again later",
                self.config().tasks.max_active
            )));
        }
        let info = TaskInfo {
            id: crate::supervisor::fresh_id("t"),
            plugin_id: req.plugin_id,
            plugin_version: None,
            instance: None,
            action: req.action,
            args_json: if req.args_json.trim().is_empty() {
                "{}".into()
            } else {
                req.args_json
            },
            inputs: req.inputs,
            user: user.to_owned(),
            state: TaskState::Queued,
            progress: 0.0,
            progress_message: String::new(),
            outputs: Vec::new(),
            result_json: None,
            error: None,
            created_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
            logs: Vec::new(),
        };
        self.insert(&info).await?;
        let live = Arc::new(LiveTask {
            info: watch::channel(info.clone()).0,
            cancel: watch::channel(None).0,
        });
        lock(&self.live).insert(info.id.clone(), live.clone());
        let me = self.clone();
        tokio::spawn(async move { me.drive(live).await });
        Ok(info)
    }

    async fn insert(&self, t: &TaskInfo) -> Result<(), DaemonError> {
        sqlx::query(
            "INSERT INTO tasks (id, plugin_id, action, args_json, inputs, user_name, state, created_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t.id.clone())
        .bind(t.plugin_id.clone())
        .bind(t.action.clone())
        .bind(t.args_json.clone())
        .bind(serde_json::to_string(&t.inputs).unwrap_or_else(|_| "[]".into()))
        .bind(t.user.clone())
        .bind(t.state.as_str())
        .bind(t.created_ms)
        .execute(&self.pool)
        .await
        .map_err(db_err("record task"))?;
        Ok(())
    }

    async fn persist(&self, t: &TaskInfo) {
        let r = sqlx::query(
            "UPDATE tasks SET plugin_version = ?, instance = ?, state = ?, progress = ?,
                progress_message = ?, outputs = ?, result_json = ?, error = ?, logs = ?,
                started_ms = ?, ended_ms = ?
             WHERE id = ?",
        )
        .bind(t.plugin_version.clone())
        .bind(t.instance.clone())
        .bind(t.state.as_str())
        .bind(f64::from(t.progress))
        .bind(t.progress_message.clone())
        .bind(serde_json::to_string(&t.outputs).unwrap_or_else(|_| "[]".into()))
        .bind(t.result_json.clone())
        .bind(t.error.clone())
        .bind(serde_json::to_string(&t.logs).unwrap_or_else(|_| "[]".into()))
        .bind(t.started_ms)
        .bind(t.ended_ms)
        .bind(t.id.clone())
        .execute(&self.pool)
        .await;
        if let Err(e) = r {
            tracing::error!(task = %t.id, error = %e, "persist task");
        }
    }

    async fn audit(&self, ev: AuditEvent) {
        if let Err(e) = self.core.audit().record(ev).await {
            tracing::error!(error = %e, "audit a task event");
        }
    }

    /// One task: live, else from the database.
    pub async fn get(&self, id: &str) -> Result<Option<TaskInfo>, DaemonError> {
        if let Some(t) = lock(&self.live).get(id) {
            return Ok(Some(t.info.borrow().clone()));
        }
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("read task"))?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Tasks matching `f`, of `users` if given, newest first.
    pub async fn list(
        &self,
        f: &TaskFilter,
        users: Option<&[String]>,
    ) -> Result<Vec<TaskInfo>, DaemonError> {
        let limit = if f.limit == 0 {
            100
        } else {
            f.limit.min(10_000)
        };
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT * FROM tasks WHERE 1 = 1");
        if let Some(p) = &f.plugin_id {
            qb.push(" AND plugin_id = ").push_bind(p.clone());
        }
        if let Some(u) = &f.user {
            qb.push(" AND user_name = ").push_bind(u.clone());
        }
        if let Some(users) = users {
            qb.push(" AND user_name IN (");
            let mut sep = qb.separated(", ");
            sep.push_bind("".to_owned());
            for u in users {
                sep.push_bind(u.clone());
            }
            qb.push(")");
        }
        if !f.states.is_empty() {
            qb.push(" AND state IN (");
            let mut sep = qb.separated(", ");
            for s in &f.states {
                sep.push_bind(s.as_str());
            }
            qb.push(")");
        }
        qb.push(" ORDER BY created_ms DESC, id LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(100));
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("list tasks"))?;
        let live = lock(&self.live);
        rows.iter()
            .map(|r| {
                let t = from_row(r)?;
                Ok(match live.get(&t.id) {
                    Some(l) => l.info.borrow().clone(),
                    None => t,
                })
            })
            .collect()
    }

    /// A watcher of a live task, or `None` if it has ended.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<TaskInfo>> {
        lock(&self.live).get(id).map(|t| t.info.subscribe())
    }

    /// Asks a live task to stop; false if it is not live.
    pub fn cancel(&self, id: &str, reason: String) -> bool {
        match lock(&self.live).get(id) {
            Some(t) => {
                t.cancel.send_if_modified(|c| {
                    if c.is_none() {
                        *c = Some(reason);
                        true
                    } else {
                        false
                    }
                });
                true
            }
            None => false,
        }
    }

    /// Cancels every live task (kill switch, shutdown, plugin removal).
    pub fn cancel_all(&self, plugin: Option<&str>, reason: &str) {
        for id in self.active_ids(plugin) {
            self.cancel(&id, reason.to_owned());
        }
    }

    /// Waits until no task is live (bounded).
    pub async fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks tasks left queued or running by a previous run as failed.
    pub async fn fail_leftovers(&self) -> Result<Vec<String>, DaemonError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE tasks SET state = 'failed', ended_ms = ?,
               error = 'the daemon stopped while the task was active (recovered at start)'
             WHERE state IN ('queued', 'running') RETURNING id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("fail leftover tasks"))?;
        Ok(ids)
    }

    async fn drive(self: Arc<Self>, live: Arc<LiveTask>) {
        let mut info = live.info.borrow().clone();
        let mut cancel = live.cancel.subscribe();
        let id = info.id.clone();
        let end = self.run(&live, &mut info, &mut cancel).await;
        let (state, error) = end;
        info.state = state;
        if info.error.is_none() {
            info.error = error;
        }
        info.ended_ms = Some(now_ms());
        self.persist(&info).await;
        let op = match state {
            TaskState::Completed => "task.completed",
            TaskState::Cancelled => "task.cancelled",
            _ => "task.failed",
        };
        let mut ev = AuditEvent::new(Actor::daemon(), op, format!("task/{id}"))
            .with_task(id.clone())
            .with_details(serde_json::json!({
                "plugin_id": info.plugin_id,
                "plugin_version": info.plugin_version,
                "instance": info.instance,
                "action": info.action,
                "user": info.user,
                "error": info.error,
                "outputs": info.outputs.len(),
            }));
        if state != TaskState::Completed {
            ev.outcome = hutch_api::audit::Outcome::Error(info.error.clone().unwrap_or_default());
        }
        self.audit(ev).await;
        live.info.send_replace(info);
        lock(&self.live).remove(&id);
    }

    /// Runs the task to its end; returns the final state and error.
    async fn run(
        &self,
        live: &LiveTask,
        info: &mut TaskInfo,
        cancel: &mut watch::Receiver<Option<String>>,
    ) -> (TaskState, Option<String>) {
        let cancelled = |c: &watch::Receiver<Option<String>>| c.borrow().clone();
        // 1. An instance with its agent (starting the plugin if needed).
        let inst = tokio::select! {
            r = self.sup.ensure_agent(&info.plugin_id) => r,
            r = cancel.wait_for(Option::is_some) => {
                return (TaskState::Cancelled, r.ok().and_then(|g| g.clone()));
            }
        };
        let inst = match inst {
            Ok(i) => i,
            Err(e) => return (TaskState::Failed, Some(e.to_string())),
        };
        if let Some(c) = cancelled(cancel) {
            return (TaskState::Cancelled, Some(c));
        }
        // 2. Still allowed? (policies may have changed while it was queued)
        if let Err(e) =
            crate::daemon::task_policy_check(&self.pool, &info.plugin_id, &info.user).await
        {
            return (TaskState::Failed, Some(e.to_string()));
        }
        let wall = match self.registry.get(&info.plugin_id).await {
            Ok(Some(rec)) if rec.enabled => rec.limits(&self.config().limits).wall_timeout,
            Ok(_) => {
                return (
                    TaskState::Failed,
                    Some(format!("plugin {} is not enabled", info.plugin_id)),
                );
            }
            Err(e) => return (TaskState::Failed, Some(e.to_string())),
        };
        let inputs = info
            .inputs
            .iter()
            .map(|i| pb::ObjectRef {
                dataset_id: i.dataset.clone(),
                key: i.key.clone(),
                version: i.version.unwrap_or(0),
            })
            .collect();
        let mut events = match inst.hub.assign(Task {
            task_id: info.id.clone(),
            action: info.action.clone(),
            args_json: info.args_json.clone(),
            acting_user: info.user.clone(),
            inputs,
        }) {
            Ok(rx) => rx,
            Err(e) => return (TaskState::Failed, Some(e.to_string())),
        };
        info.state = TaskState::Running;
        info.instance = Some(inst.instance_id.clone());
        info.plugin_version = Some(inst.version.clone());
        self.persist(info).await;
        live.info.send_replace(info.clone());
        self.sup.set_tasks_running(&info.plugin_id, 1);
        self.audit(
            AuditEvent::new(
                Actor::daemon(),
                "task.assigned",
                format!("task/{}", info.id),
            )
            .with_task(info.id.clone())
            .with_details(serde_json::json!({
                "plugin_id": info.plugin_id, "instance": inst.instance_id,
                "version": inst.version, "action": info.action, "user": info.user,
            })),
        )
        .await;
        let cfg = self.config();
        let grace = cfg.supervisor.stop_grace;
        let max_logs = cfg.tasks.max_log_lines;
        let max_outputs = cfg.tasks.max_outputs;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let deadline = wall.map_or(far, |w| tokio::time::Instant::now() + w);
        let mut escalate_at = far;
        let mut stop_reason: Option<(TaskState, String)> = None;
        let mut last_persist = Instant::now();
        let result = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(TaskEvent::Started) => { info.started_ms.get_or_insert(now_ms()); }
                    Some(TaskEvent::Progress { percent, message }) => {
                        info.progress = percent;
                        info.progress_message = neutralise(message.as_bytes(), 1024);
                    }
                    Some(TaskEvent::Log { level, line }) => {
                        if info.logs.len() >= max_logs { info.logs.remove(0); }
                        info.logs.push(TaskLog {
                            ts_ms: now_ms(),
                            level: level.as_str_name().trim_start_matches("LOG_LEVEL_").to_ascii_lowercase(),
                            line: neutralise(line.as_bytes(), hutch_api::server::tasks::MAX_LOG_LINE),
                        });
                    }
                    Some(TaskEvent::Output { name, value_json, object }) => {
                        if info.outputs.len() < max_outputs {
                            info.outputs.push(TaskOutput {
                                name: neutralise(name.as_bytes(), 256),
                                value_json,
                                object: object.map(|o| InputRef {
                                    dataset: o.dataset_id, key: o.key,
                                    version: (o.version != 0).then_some(o.version),
                                }),
                            });
                        }
                        self.persist(info).await;
                    }
                    Some(TaskEvent::Heartbeat) => {}
                    Some(TaskEvent::Completed { result_json }) => {
                        info.progress = 100.0;
                        info.result_json = Some(result_json);
                        break (TaskState::Completed, None);
                    }
                    Some(TaskEvent::Failed { error }) => {
                        break match stop_reason.take() {
                            Some((state, why)) => (state, Some(why)),
                            None if error == AGENT_CLOSED => (TaskState::Failed, Some(self.instance_ended(info, &inst.instance_id).await)),
                            None => (TaskState::Failed, Some(neutralise(error.as_bytes(), 8192))),
                        };
                    }
                    None => break match stop_reason.take() {
                        Some((state, why)) => (state, Some(why)),
                        None => (TaskState::Failed, Some(self.instance_ended(info, &inst.instance_id).await)),
                    },
                },
                () = tokio::time::sleep_until(deadline), if stop_reason.is_none() => {
                    let why = format!("wall timeout after {}", humantime::format_duration(wall.unwrap_or_default()));
                    let _ = inst.hub.cancel(&info.id, &why);
                    stop_reason = Some((TaskState::Failed, why));
                    escalate_at = tokio::time::Instant::now() + grace;
                }
                r = cancel.changed(), if stop_reason.is_none() => {
                    if r.is_ok() && let Some(why) = cancel.borrow().clone() {
                        let _ = inst.hub.cancel(&info.id, &why);
                        stop_reason = Some((TaskState::Cancelled, why));
                        escalate_at = tokio::time::Instant::now() + grace;
                    }
                }
                () = tokio::time::sleep_until(escalate_at), if stop_reason.is_some() => {
                    // The plugin ignored the cancel: kill its instance.
                    self.sup.kill_instance(&info.plugin_id, format!("task {} did not stop within {} of its cancel", info.id, humantime::format_duration(grace)));
                    let (state, why) = stop_reason.take().unwrap_or((TaskState::Failed, String::new()));
                    break (state, Some(format!("{why}; the plugin did not stop it and was killed")));
                }
            }
            self.sup.touch(&info.plugin_id);
            live.info.send_replace(info.clone());
            if last_persist.elapsed() > Duration::from_secs(1) {
                last_persist = Instant::now();
                self.persist(info).await;
            }
        };
        self.sup.set_tasks_running(&info.plugin_id, -1);
        result
    }
}

/// What the task hub reports when the agent stream of a running task ends.
const AGENT_CLOSED: &str = "plugin agent stream closed";

impl TaskManager {
    /// The error of a task whose instance went away: how it ended, if the
    /// supervisor learns that within a few seconds.
    async fn instance_ended(&self, info: &TaskInfo, instance: &str) -> String {
        match self
            .sup
            .instance_end(&info.plugin_id, instance, Duration::from_secs(5))
            .await
        {
            Some(end) => format!("the plugin instance ended during the task ({end})"),
            None => "the plugin closed its agent stream during the task".into(),
        }
    }
}

fn from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TaskInfo, DaemonError> {
    let e = |e: sqlx::Error| DaemonError::internal("read task", e);
    let state: String = r.try_get("state").map_err(e)?;
    let json = |c: &str| -> Result<String, DaemonError> { r.try_get::<String, _>(c).map_err(e) };
    let progress: f64 = r.try_get("progress").map_err(e)?;
    Ok(TaskInfo {
        id: r.try_get("id").map_err(e)?,
        plugin_id: r.try_get("plugin_id").map_err(e)?,
        plugin_version: r.try_get("plugin_version").map_err(e)?,
        instance: r.try_get("instance").map_err(e)?,
        action: r.try_get("action").map_err(e)?,
        args_json: r.try_get("args_json").map_err(e)?,
        inputs: serde_json::from_str(&json("inputs")?).unwrap_or_default(),
        user: r.try_get("user_name").map_err(e)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Failed),
        progress: progress as f32,
        progress_message: r.try_get("progress_message").map_err(e)?,
        outputs: serde_json::from_str(&json("outputs")?).unwrap_or_default(),
        result_json: r.try_get("result_json").map_err(e)?,
        error: r.try_get("error").map_err(e)?,
        created_ms: r.try_get("created_ms").map_err(e)?,
        started_ms: r.try_get("started_ms").map_err(e)?,
        ended_ms: r.try_get("ended_ms").map_err(e)?,
        logs: serde_json::from_str(&json("logs")?).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_refs_parse() {
        assert_eq!(
            InputRef::parse("ds1/a/b.raw@3"),
            Ok(InputRef {
                dataset: "ds1".into(),
                key: "a/b.raw".into(),
                version: Some(3)
            })
        );
        assert!(InputRef::parse("nodataset").is_err());
        assert!(InputRef::parse("/key").is_err());
        assert!(InputRef::parse("ds/k@x").is_err());
    }
}
