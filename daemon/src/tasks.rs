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
