//! The task hub of one instance: the daemon assigns tasks and receives their
//! events; the Agent stream delivers assignments to the plugin and feeds
//! the plugin's events back; Data calls ask it which user a task id acts as.
//!
//! A task id is usable by Data calls from assignment until the plugin
//! reports completed/failed, the daemon cancels it, or the agent stream
//! ends; after that it is refused like any id never assigned here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hutch_plugin_protocol::plugin::v1 as pb;
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Events per task buffered before the agent stream is back-pressured.
const EVENT_BUFFER: usize = 1024;

/// A task to hand to the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Unique task id (chosen by the daemon).
    pub task_id: String,
    /// The action to run (one of the manifest's actions).
    pub action: String,
    /// The action's arguments, JSON.
    pub args_json: String,
    /// The user who submitted the task; Data calls under it act as this user.
    pub acting_user: String,
    /// Input objects.
    pub inputs: Vec<pb::ObjectRef>,
}

/// Something the plugin reported about a task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// Work began.
    Started,
    /// Progress in percent and a message.
    Progress {
        /// 0..100.
        percent: f32,
        /// Short message.
        message: String,
    },
    /// A log line (cut to 8 KiB).
    Log {
        /// Severity.
        level: pb::LogLevel,
        /// The line.
        line: String,
    },
    /// A yielded output.
    Output {
        /// Its name.
        name: String,
        /// JSON value.
        value_json: String,
        /// Object written, if any.
        object: Option<pb::ObjectRef>,
    },
    /// The plugin listed the task as busy in a heartbeat.
    Heartbeat,
    /// Ended successfully (last event).
    Completed {
        /// Optional JSON result.
        result_json: String,
    },
    /// Ended with an error (last event). Also sent when the agent stream
    /// ends while the task is running.
    Failed {
        /// The error.
        error: String,
    },
}

/// Errors of task assignment and cancellation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// No agent stream is connected for this instance.
    #[error("instance {0}: no agent connected")]
    NoAgent(String),
    /// The task id is already in use on this instance.
    #[error("task {0} already assigned")]
    Duplicate(String),
    /// No such running task.
    #[error("task {0} is not running on this instance")]
    Unknown(String),
    /// Waiting for the agent timed out.
    #[error("instance {0}: agent did not connect in time")]
    Timeout(String),
}

/// Maximum log line length forwarded.
pub const MAX_LOG_LINE: usize = 8 * 1024;

#[derive(Debug)]
struct Running {
    user: String,
    cancelled: bool,
    events: mpsc::Sender<TaskEvent>,
}

#[derive(Debug, Default)]
struct State {
    agent: Option<(u64, mpsc::Sender<Result<pb::DaemonMessage, Status>>)>,
    next_session: u64,
    tasks: HashMap<String, Running>,
    last_heartbeat: Option<Instant>,
}

/// The hub of one instance. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskHub {
    instance: Arc<str>,
    state: Arc<Mutex<State>>,
    connected: Arc<watch::Sender<bool>>,
}

impl TaskHub {
    pub(crate) fn new(instance: &str) -> TaskHub {
        TaskHub {
            instance: instance.into(),
            state: Arc::default(),
            connected: Arc::new(watch::channel(false).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Hands `task` to the plugin; returns the stream of its events.
    ///
    /// # Errors
    /// [`TaskError::NoAgent`] if the plugin has no agent stream open,
    /// [`TaskError::Duplicate`] if the id is in use.
    pub fn assign(&self, task: Task) -> Result<mpsc::Receiver<TaskEvent>, TaskError> {
        let mut st = self.lock();
        let Some((_, agent)) = st.agent.clone() else {
            return Err(TaskError::NoAgent(self.instance.to_string()));
        };
        if st.tasks.contains_key(&task.task_id) {
            return Err(TaskError::Duplicate(task.task_id));
        }
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let msg = pb::DaemonMessage {
            msg: Some(pb::daemon_message::Msg::Task(pb::TaskAssignment {
                task_id: task.task_id.clone(),
                action: task.action,
                args_json: task.args_json,
                acting_user: task.acting_user.clone(),
                inputs: task.inputs,
            })),
        };
        if agent.try_send(Ok(msg)).is_err() {
            return Err(TaskError::NoAgent(self.instance.to_string()));
        }
        st.tasks.insert(
            task.task_id,
            Running {
                user: task.acting_user,
                cancelled: false,
                events: tx,
            },
        );
        Ok(rx)
    }

    /// Tells the plugin to stop `task_id`; Data calls under it are refused
    /// from now on. Its final event still arrives on the event stream.
    ///
    /// # Errors
    /// [`TaskError::Unknown`] if it is not running here.
    pub fn cancel(&self, task_id: &str, reason: &str) -> Result<(), TaskError> {
        let mut st = self.lock();
        let agent = st.agent.as_ref().map(|(_, a)| a.clone());
        let Some(t) = st.tasks.get_mut(task_id) else {
            return Err(TaskError::Unknown(task_id.to_owned()));
        };
        t.cancelled = true;
        if let Some(agent) = agent {
            let msg = pb::DaemonMessage {
                msg: Some(pb::daemon_message::Msg::Cancel(pb::Cancel {
                    task_id: task_id.to_owned(),
                    reason: reason.to_owned(),
                })),
            };
            let _ = agent.try_send(Ok(msg));
        }
        Ok(())
    }

    /// The acting user of a running, not cancelled task on this instance.
    pub fn task_user(&self, task_id: &str) -> Option<String> {
        let st = self.lock();
        st.tasks
            .get(task_id)
            .filter(|t| !t.cancelled)
            .map(|t| t.user.clone())
    }

    /// Whether an agent stream is connected.
    pub fn agent_connected(&self) -> bool {
        self.lock().agent.is_some()
    }

    /// When the plugin last sent a heartbeat.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.lock().last_heartbeat
    }

    /// Waits until an agent stream is connected (after its welcome).
    ///
    /// # Errors
    /// [`TaskError::Timeout`].
    pub async fn wait_agent(&self, timeout: std::time::Duration) -> Result<(), TaskError> {
        let mut rx = self.connected.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(TaskError::Timeout(self.instance.to_string())),
        }
    }

    /// Registers a new agent session; None if one is already connected.
    pub(crate) fn attach(
        &self,
        tx: mpsc::Sender<Result<pb::DaemonMessage, Status>>,
    ) -> Option<u64> {
        let mut st = self.lock();
        if st.agent.as_ref().is_some_and(|(_, a)| !a.is_closed()) {
            return None;
        }
        st.next_session += 1;
        let id = st.next_session;
        st.agent = Some((id, tx));
        drop(st);
        self.connected.send_replace(true);
        Some(id)
    }

    /// Ends session `id`: running tasks fail.
    pub(crate) fn detach(&self, id: u64) {
        let mut st = self.lock();
        if st.agent.as_ref().map(|(i, _)| *i) != Some(id) {
            return;
        }
        st.agent = None;
        let tasks: Vec<Running> = st.tasks.drain().map(|(_, t)| t).collect();
        drop(st);
        self.connected.send_replace(false);
        for t in tasks {
            let _ = t.events.try_send(TaskEvent::Failed {
                error: "plugin agent stream closed".into(),
            });
        }
    }

    /// Feeds one message from the plugin.
    pub(crate) async fn on_plugin_message(&self, msg: pb::plugin_message::Msg) {
        match msg {
            pb::plugin_message::Msg::Hello(_) => {}
            pb::plugin_message::Msg::Heartbeat(hb) => {
                let senders: Vec<_> = {
                    let mut st = self.lock();
                    st.last_heartbeat = Some(Instant::now());
                    hb.busy_tasks
                        .iter()
                        .take(64)
                        .filter_map(|id| st.tasks.get(id).map(|t| t.events.clone()))
                        .collect()
                };
                for s in senders {
                    let _ = s.try_send(TaskEvent::Heartbeat);
                }
            }
            pb::plugin_message::Msg::Event(ev) => {
                let Some(event) = ev.event else { return };
                let (event, last) = convert(event);
                let sender = {
                    let mut st = self.lock();
                    if last {
                        st.tasks.remove(&ev.task_id).map(|t| t.events)
                    } else {
                        st.tasks.get(&ev.task_id).map(|t| t.events.clone())
                    }
                };
                match sender {
                    // Back-pressure the plugin's stream if the daemon is slow.
                    Some(s) => {
                        let _ = s.send(event).await;
                    }
                    None => tracing::debug!(task = %ev.task_id, "event for unknown task ignored"),
                }
            }
        }
    }
}

fn convert(e: pb::task_event::Event) -> (TaskEvent, bool) {
    use pb::task_event::Event as E;
    match e {
        E::Started(_) => (TaskEvent::Started, false),
        E::Progress(p) => (
            TaskEvent::Progress {
                percent: p.percent.clamp(0.0, 100.0),
                message: cut(p.message, 1024),
            },
            false,
        ),
        E::Log(l) => (
            TaskEvent::Log {
                level: pb::LogLevel::try_from(l.level).unwrap_or(pb::LogLevel::Info),
                line: cut(l.line, MAX_LOG_LINE),
            },
            false,
        ),
        E::Output(o) => (
            TaskEvent::Output {
                name: cut(o.name, 256),
                value_json: cut(o.value_json, 64 * 1024),
                object: o.object,
            },
            false,
        ),
        E::Completed(c) => (
            TaskEvent::Completed {
                result_json: cut(c.result_json, 64 * 1024),
            },
            true,
        ),
        E::Failed(f) => (
            TaskEvent::Failed {
                error: cut(f.error, MAX_LOG_LINE),
            },
            true,
        ),
    }
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
    s
}
