//! The supervisor: one sandboxed instance per started plugin, its API
//! socket, its output, restarts, crash loops and the watchdog.

use serde::{Deserialize, Serialize};

/// Where a plugin is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// No instance.
    Stopped,
    /// The sandbox is being set up.
    Starting,
    /// The instance runs.
    Running,
    /// SIGTERM sent, waiting for the end.
    Stopping,
    /// Ended with a failure; restarting after a delay.
    Backoff,
    /// Ended with a failure and will not restart (policy or crash loop).
    Failed,
}

/// The supervisor's view of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    /// Lifecycle state.
    pub state: PluginState,
    /// The running instance id.
    pub instance: Option<String>,
    /// Host pid of the sandbox's init.
    pub pid: Option<i32>,
    /// When the instance started (ms since the epoch).
    pub started_at_ms: Option<i64>,
    /// The agent stream is connected.
    pub agent_connected: bool,
    /// Milliseconds since the last heartbeat, if any arrived.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// Failures within the crash-loop window.
    pub recent_failures: u32,
    /// How the last instance ended ("exited with status 1", "killed by
    /// the watchdog", "OOM kill").
    pub last_exit: Option<String>,
    /// Tasks running on it.
    pub tasks_running: usize,
}

impl Default for RuntimeStatus {
    fn default() -> Self {
        RuntimeStatus {
            state: PluginState::Stopped,
            instance: None,
            pid: None,
            started_at_ms: None,
            agent_connected: false,
            last_heartbeat_ms_ago: None,
            restarts: 0,
            recent_failures: 0,
            last_exit: None,
            tasks_running: 0,
        }
    }
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// The plugin's stdout.
    Stdout,
    /// The plugin's stderr.
    Stderr,
    /// A line the supervisor added (started, exited, lines dropped).
    Supervisor,
}

/// One line of a plugin's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Per-plugin sequence number (gaps = lines dropped by the rate bound
    /// or a lagging follower).
    pub seq: u64,
    /// When it was read (ms since the epoch).
    pub ts_ms: i64,
    /// Stream.
    pub stream: LogStream,
    /// The instance that wrote it.
    pub instance: String,
    /// The text: UTF-8 (lossy), control characters shown as `\xNN`, cut to
    /// `logs.max_line_bytes`.
    pub line: String,
}
