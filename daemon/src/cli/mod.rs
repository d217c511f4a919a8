//! `hutchctl`: the admin and user CLI over the control socket (SPEC §8).
//!
//! Every command is one or a few calls of the `hutch.admin.v1.Admin`
//! service; the daemon decides what the caller may do from the socket's peer
//! uid. Output is a human table by default and the protocol message as JSON
//! with `--json`. Exit codes ([`exit_code`]): 0 ok, 1 error, 2 usage, 3
//! permission denied, 4 not found.

pub mod output;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hutch_plugin_protocol::admin::v1 as pb;
use hutch_plugin_protocol::admin::v1::admin_client::AdminClient;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::manifest::{parse_duration, parse_size};

/// Where `hutchctl` finds the daemon when neither `--socket` nor
/// `HUTCH_SOCKET_CONTROL` say otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hutch/control.sock";

/// Environment variable overriding the default control socket.
pub const SOCKET_ENV: &str = "HUTCH_CONTROL_SOCKET";

/// Admin and user CLI for the Hutch daemon.
#[derive(Debug, Parser)]
#[command(name = "hutchctl", version, about, long_about = None)]
pub struct Cli {
    /// The control socket (default $HUTCH_CONTROL_SOCKET or /run/hutch/control.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print JSON (the protocol messages) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Daemon status: version, uptime, plugins, tasks, kill switch, audit head.
    Status,
    /// Who the daemon thinks you are (uid, Hutch user, role, admin or not).
    Whoami,
    /// Install, inspect and run plugins (admins; list/status for everyone).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Run and follow tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Hutch users and their Unix uids (admins).
    #[command(subcommand)]
    User(UserCmd),
    /// Teams (admins).
    #[command(subcommand)]
    Team(TeamCmd),
    /// Datasets and objects in the built-in store.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Admin policies: deny (or allow) plugins by id, user, team, operation and time.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The audit log: query, export, verify the hash chain, revert changes.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The global kill switch: stop every plugin and refuse new tasks (admins).
    #[command(subcommand, name = "kill-switch")]
    KillSwitch(KillSwitchCmd),
    /// The daemon's configuration (admins).
    #[command(subcommand)]
    Config(ConfigCmd),
}

/// `hutchctl plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Install a plugin directory, granting some of the scopes it requests.
    Install {
        /// The plugin directory (with hutch-plugin.toml).
        dir: PathBuf,
        /// Grant this requested scope (repeat); none by default.
        #[arg(long = "grant", value_name = "SCOPE")]
        grant: Vec<String>,
        /// Grant every scope the manifest requests.
        #[arg(long, conflicts_with = "grant")]
        grant_all: bool,
        /// Enable it: start now and with the daemon.
        #[arg(long)]
        enable: bool,
        /// Limits to lower.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Upgrade an installed plugin to the version in DIR.
    Upgrade {
        /// The plugin id.
        id: String,
        /// The new version's directory.
        dir: PathBuf,
        /// Also grant this newly requested scope (repeat); grants never grow otherwise.
        #[arg(long = "grant", value_name = "SCOPE")]
        grant: Vec<String>,
    },
    /// Every installed plugin.
    List,
    /// One plugin in detail (state, pid, grants, limits, actions).
    Status {
        /// The plugin id.
        id: String,
    },
    /// Start the plugin now.
    Start {
        /// The plugin id.
        id: String,
    },
    /// Stop it gracefully (SIGTERM, grace period, then kill).
    Stop {
        /// The plugin id.
        id: String,
    },
    /// Stop then start.
    Restart {
        /// The plugin id.
        id: String,
    },
    /// Start it now and with the daemon; allow tasks on it.
    Enable {
        /// The plugin id.
        id: String,
    },
    /// Stop it; no tasks run on it until enabled.
    Disable {
        /// The plugin id.
        id: String,
    },
    /// Show the requested and granted scopes, or replace the grant.
    Grants {
        /// The plugin id.
        id: String,
        /// Replace the grant with these scopes (repeat).
        #[arg(long = "set", value_name = "SCOPE")]
        set: Vec<String>,
        /// Revoke every scope.
        #[arg(long, conflicts_with = "set")]
        clear: bool,
    },
    /// Show the limits, or lower them.
    Limits {
        /// The plugin id.
        id: String,
        /// Limits to lower.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// The plugin's stdout/stderr.
    Logs {
        /// The plugin id.
        id: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines first.
        #[arg(short = 'n', long, value_name = "N")]
        tail: Option<u32>,
    },
    /// Stop and uninstall it (its audit trail stays).
    Remove {
        /// The plugin id.
        id: String,
    },
}

/// Resource limits on the command line.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Memory limit, e.g. 256M.
    #[arg(long, value_name = "SIZE")]
    pub memory_max: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long, value_name = "CPUS")]
    pub cpu_max: Option<f64>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pub pids_max: Option<u32>,
    /// Size of the private /tmp, e.g. 64M.
    #[arg(long, value_name = "SIZE")]
    pub tmp_size: Option<String>,
    /// Per-task wall time, e.g. 10m.
    #[arg(long, value_name = "DURATION")]
    pub wall_timeout: Option<String>,
}

impl LimitArgs {
    fn is_empty(&self) -> bool {
        self.memory_max.is_none()
            && self.cpu_max.is_none()
            && self.pids_max.is_none()
            && self.tmp_size.is_none()
            && self.wall_timeout.is_none()
    }

    fn to_pb(&self) -> Result<pb::Limits, CliError> {
        let size = |flag: &str, v: &Option<String>| -> Result<u64, CliError> {
            v.as_deref()
                .map(|s| parse_size(s).map_err(|e| CliError::Usage(format!("--{flag}: {e}"))))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        Ok(pb::Limits {
            memory_max_bytes: size("memory-max", &self.memory_max)?,
            cpu_max: self.cpu_max.unwrap_or(0.0),
            pids_max: self.pids_max.unwrap_or(0),
            tmp_size_bytes: size("tmp-size", &self.tmp_size)?,
            wall_timeout_ms: match &self.wall_timeout {
                None => 0,
                Some(s) => parse_duration(s)
                    .map_err(|e| CliError::Usage(format!("--wall-timeout: {e}")))?
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            },
        })
    }
}

/// `hutchctl task ...`
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Run ACTION of PLUGIN as you, print its progress and outputs.
    Run {
        /// The plugin id.
        plugin: String,
        /// One of the plugin's actions.
        action: String,
        /// The action's arguments, a JSON document.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
        /// An input object DATASET/OBJECT, or DATASET/OBJECT@VERSION (repeat).
        #[arg(long = "input", value_name = "DATASET/OBJECT")]
        inputs: Vec<String>,
        /// Print the task id and return at once instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Tasks (yours; admins see everyone's).
    List {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// Only this user's (admins).
        #[arg(long)]
        user: Option<String>,
        /// Only in this state (queued, running, completed, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most N, newest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A task's status, progress, outputs, log and audit trail.
    Show {
        /// The task id.
        id: String,
    },
    /// Follow a task until it ends.
    Watch {
        /// The task id.
        id: String,
    },
    /// Cancel a queued or running task.
    Cancel {
        /// The task id.
        id: String,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `hutchctl user ...`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Every user (you only, unless admin).
    List,
    /// Create or update a user.
    Add {
        /// The Hutch user name.
        name: String,
        /// admin, member or viewer.
        #[arg(long, default_value = "member")]
        role: String,
        /// The local Unix uid acting as this user (default: the account with this login name).
        #[arg(long)]
        uid: Option<u32>,
    },
    /// Remove a user (their audit trail stays).
    Remove {
        /// The Hutch user name.
        name: String,
    },
}

/// `hutchctl team ...`
#[derive(Debug, Subcommand)]
pub enum TeamCmd {
    /// Teams and members (yours only, unless admin).
    List,
    /// Add a user to a team (creates the team).
    AddMember {
        /// The team.
        team: String,
        /// The user.
        user: String,
    },
    /// Remove a user from a team.
    RemoveMember {
        /// The team.
        team: String,
        /// The user.
        user: String,
    },
}

/// `hutchctl dataset ...`
#[derive(Debug, Subcommand)]
pub enum DatasetCmd {
    /// Create a dataset (owned by you, or by --owner/--team for admins).
    Create {
        /// Display name.
        name: String,
        /// A chosen id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Owning user (admins).
        #[arg(long)]
        owner: Option<String>,
        /// Owning team (admins).
        #[arg(long, conflicts_with = "owner")]
        team: Option<String>,
    },
    /// Datasets you may read.
    List,
    /// Objects of a dataset.
    Objects {
        /// The dataset id.
        dataset: String,
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Store a file (or stdin with -) as an object.
    Put {
        /// The dataset id.
        dataset: String,
        /// The object key.
        key: String,
        /// The file, or - for stdin.
        file: PathBuf,
        /// Metadata of the new version, NAME=VALUE (repeatable).
        #[arg(long = "meta", value_name = "NAME=VALUE")]
        meta: Vec<String>,
    },
    /// Show an object's metadata, or change it: NAME=VALUE sets, --unset
    /// NAME removes; the rest is kept (a new version, refused if the object
    /// changed meanwhile).
    Meta {
        /// The dataset id.
        dataset: String,
        /// The object key.
        key: String,
        /// Entries to set, NAME=VALUE.
        #[arg(value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Names to remove (repeatable).
        #[arg(long, value_name = "NAME")]
        unset: Vec<String>,
    },
    /// Write an object's content to stdout or a file.
    Get {
        /// The dataset id.
        dataset: String,
        /// The object key.
        key: String,
        /// An old version (default: current).
        #[arg(long)]
        version: Option<u64>,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Share a dataset with a team.
    Share {
        /// The dataset id.
        dataset: String,
        /// The team.
        team: String,
        /// read or write.
        #[arg(long, default_value = "read")]
        access: String,
    },
}

/// `hutchctl policy ...`
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum PolicyCmd {
    /// Every policy, and whether it applies now.
    List,
    /// Add a policy (effective at once). E.g. deny every org.napari.* plugin on 2026-12-24:
    /// `hutchctl policy add xmas --plugin 'org.napari.*' --on 2026-12-24 --reason "lab closed"`.
    Add {
        /// A unique name (cited in denials).
        name: String,
        /// An exception to deny policies instead of a denial.
        #[arg(long)]
        allow: bool,
        /// Plugin id glob (`*`, `?`).
        #[arg(long, default_value = "*")]
        plugin: String,
        /// Only this acting user.
        #[arg(long)]
        user: Option<String>,
        /// Only acting users in this team.
        #[arg(long)]
        team: Option<String>,
        /// Only this operation class: read, write, delete, create.
        #[arg(long = "op")]
        op: Option<String>,
        /// From this time (RFC 3339, e.g. 2026-12-24T08:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Until this time (exclusive).
        #[arg(long)]
        until: Option<String>,
        /// That whole UTC day (YYYY-MM-DD).
        #[arg(long, conflicts_with_all = ["from", "until"])]
        on: Option<String>,
        /// Recurring weekdays, e.g. mon-fri or sat,sun.
        #[arg(long)]
        weekdays: Option<String>,
        /// Recurring hours (UTC), e.g. 9-17 or 22-6.
        #[arg(long)]
        hours: Option<String>,
        /// Why (quoted in every denial).
        #[arg(long)]
        reason: String,
    },
    /// Remove a policy by id or name.
    Remove {
        /// The policy id or name.
        policy: String,
    },
}

/// Audit filters on the command line.
#[derive(Debug, Clone, Default, Args)]
pub struct AuditFilterArgs {
    /// Only events of this plugin.
    #[arg(long)]
    pub plugin: Option<String>,
    /// Only events by (or acting as) this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only events of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only this exact operation, e.g. data.object.put.
    #[arg(long = "op")]
    pub op: Option<String>,
    /// Only resources starting with this, e.g. dataset/ds1/.
    #[arg(long)]
    pub resource: Option<String>,
    /// allowed or denied.
    #[arg(long)]
    pub decision: Option<String>,
    /// Since this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// At most N events.
    #[arg(long)]
    pub limit: Option<u32>,
}

/// `hutchctl audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Events matching the filters (yours only, unless admin).
    Query(AuditFilterArgs),
    /// Events as JSON lines.
    Export {
        /// Which events.
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Re-check the hash chain; exit 1 if it is broken.
    Verify,
    /// Restore the before-state of EVENT, or of every change of --task.
    Revert {
        /// The event id.
        event: Option<i64>,
        /// Revert every change of this task.
        #[arg(long, conflicts_with = "event")]
        task: Option<String>,
        /// Revert even over later conflicting changes.
        #[arg(long)]
        force: bool,
    },
}

/// `hutchctl kill-switch ...`
#[derive(Debug, Subcommand)]
pub enum KillSwitchCmd {
    /// Stop every plugin and refuse new tasks.
    On {
        /// Why (recorded and shown).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift the kill switch.
    Off,
}

/// `hutchctl config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the config file in effect.
    Show,
    /// Re-read the config file, or install FILE as the new config first.
    Reload {
        /// A new config to validate, install and load.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon answered with an error.
    #[error("{}", .0.message())]
    Status(#[from] Status),
    /// The control socket could not be reached.
    #[error(
        "cannot reach hutchd at {socket}: {reason}; is hutchd running? (use --socket PATH for another socket)"
    )]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The command line is wrong in a way clap could not see.
    #[error("{0}")]
    Usage(String),
    /// A local file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The command ran but the result is a failure (task failed, chain broken).
    #[error("{0}")]
    Failed(String),
    /// Standard output was closed by the reader (`hutchctl ... | head`): not
    /// an error worth a message; exits quietly with status 141 as a shell
    /// reports a process ended by SIGPIPE.
    #[error("standard output closed")]
    OutputClosed,
}

/// The exit status for an error: 1 error, 2 usage, 3 permission denied, 4 not found.
pub fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Status(s) => match s.code() {
            Code::PermissionDenied | Code::Unauthenticated => 3,
            Code::NotFound => 4,
            Code::InvalidArgument => 2,
            _ => 1,
        },
        CliError::Usage(_) => 2,
        CliError::Connect { .. } | CliError::Io { .. } | CliError::Failed(_) => 1,
        CliError::OutputClosed => 141,
    }
}

/// Parses the command line and runs it; the whole of `hutchctl`'s `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutchctl: start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::OutputClosed) => ExitCode::from(exit_code(&CliError::OutputClosed)),
        Err(e) => {
            eprintln!("hutchctl: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The socket to use: `--socket`, else `$HUTCH_CONTROL_SOCKET`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Connects to the control socket.
///
/// # Errors
/// [`CliError::Connect`] saying how to fix it.
pub async fn connect(socket: &Path) -> Result<AdminClient<Channel>, CliError> {
    let reason = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(x) = src {
            s = format!("{s}: {x}");
            src = x.source();
        }
        s
    };
    if !socket.exists() {
        return Err(CliError::Connect {
            socket: socket.to_owned(),
            reason: "no such socket".into(),
        });
    }
    let ch = hutch_plugin_protocol::client::connect(socket)
        .await
        .map_err(|e| CliError::Connect {
            socket: socket.to_owned(),
            reason: reason(&e),
        })?;
    Ok(AdminClient::new(ch)
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Failed(e.to_string()))?;
    write_stdout(&format!("{s}\n"))
}

/// Writes to standard output; a reader that went away (`| head`) is
/// [`CliError::OutputClosed`] instead of a panic.
fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::OutputClosed),
        Err(source) => Err(CliError::Io {
            op: "write",
            path: "stdout".into(),
            source,
        }),
    }
}

/// Parses `NAME=VALUE` metadata arguments.
///
/// # Errors
/// [`CliError::Usage`] naming the argument without `=` or with an empty name.
pub fn parse_metadata(
    args: &[String],
) -> Result<std::collections::HashMap<String, String>, CliError> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
            _ => Err(CliError::Usage(format!(
                "metadata {a:?}: expected NAME=VALUE with a non-empty NAME"
            ))),
        })
        .collect()
}

/// Metadata as `a=1, b=2`, sorted by name.
fn metadata_line(m: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(", ")
}

/// Prints `v` as JSON or as `human(v)`.
fn show<T: serde::Serialize>(
    json: bool,
    v: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if json {
        print_json(v)
    } else {
        write_stdout(&human(v))
    }
}

/// Parses an RFC 3339 time (date alone = midnight UTC) to ms since the epoch.
///
/// # Errors
/// [`CliError::Usage`] naming the flag.
pub fn parse_time(flag: &str, s: &str) -> Result<i64, CliError> {
    let text = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&text).map_err(|_| {
        CliError::Usage(format!(
            "--{flag} {s:?}: expected a time like 2026-12-24T08:00:00Z or a date like 2026-12-24"
        ))
    })?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| CliError::Usage(format!("--{flag} {s:?}: before 1970")))
}

/// Parses `mon-fri`, `sat,sun`, `mon,wed-fri` into a bit mask (bit 0 = Monday).
///
/// # Errors
/// [`CliError::Usage`].
pub fn parse_weekdays(s: &str) -> Result<u32, CliError> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let day = |d: &str| {
        let d = d.trim().to_ascii_lowercase();
        DAYS.iter()
            .position(|x| d.starts_with(x))
            .ok_or_else(|| CliError::Usage(format!("--weekdays: unknown day {d:?} (mon..sun)")))
    };
    let mut mask = 0u32;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    mask |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

/// Parses `9-17` into (start, end) hours.
///
/// # Errors
/// [`CliError::Usage`].
pub fn parse_hours(s: &str) -> Result<(u32, u32), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--hours {s:?}: expected START-END in hours, e.g. 9-17 or 22-6"
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u32 = a.trim().parse().map_err(|_| bad())?;
    let b: u32 = b.trim().parse().map_err(|_| bad())?;
    if a > 23 || b > 24 {
        return Err(bad());
    }
    Ok((a, b))
}

fn audit_query(f: &AuditFilterArgs) -> Result<pb::AuditQuery, CliError> {
    Ok(pb::AuditQuery {
        plugin_id: f.plugin.clone().unwrap_or_default(),
        user: f.user.clone().unwrap_or_default(),
        task_id: f.task.clone().unwrap_or_default(),
        resource: String::new(),
        resource_prefix: f.resource.clone().unwrap_or_default(),
        operation: f.op.clone().unwrap_or_default(),
        decision: f.decision.clone().unwrap_or_default(),
        since_unix_ms: f
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?
            .unwrap_or(0),
        until_unix_ms: f
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?
            .unwrap_or(0),
        after_id: 0,
        limit: f.limit.unwrap_or(0),
    })
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    std::fs::canonicalize(p).map_err(|source| CliError::Io {
        op: "resolve",
        path: p.to_owned(),
        source,
    })
}

/// Runs one parsed command line.
///
/// # Errors
/// What the daemon refused, or a local failure; see [`exit_code`].
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let socket = socket_path(cli.socket.as_deref());
    let json = cli.json;
    let mut c = connect(&socket).await?;
    match cli.command {
        Command::Status => {
            let s = c.status(pb::StatusRequest {}).await?.into_inner();
            show(json, &s, |s| {
                output::fields(&[
                    ("hutchd", format!("{} (pid {})", s.version, s.pid)),
                    ("started", output::time_ms(s.started_unix_ms)),
                    ("state dir", s.state_dir.clone()),
                    ("control socket", s.control_socket.clone()),
                    (
                        "config",
                        if s.config_path.is_empty() {
                            "built-in defaults".into()
                        } else {
                            s.config_path.clone()
                        },
                    ),
                    (
                        "plugins",
                        format!(
                            "{} installed, {} running",
                            s.plugins_installed, s.plugins_running
                        ),
                    ),
                    ("tasks active", s.tasks_active.to_string()),
                    (
                        "kill switch",
                        if s.kill_switch {
                            format!("ENGAGED: {}", s.kill_switch_reason)
                        } else {
                            "off".into()
                        },
                    ),
                    ("audit head", s.audit_head.to_string()),
                ])
            })
        }
        Command::Whoami => {
            let w = c.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            show(json, &w, |w| {
                output::fields(&[
                    ("uid", w.uid.to_string()),
                    ("login", output::dash(&w.unix_name)),
                    (
                        "hutch user",
                        if w.user.is_empty() {
                            "(not registered)".into()
                        } else {
                            w.user.clone()
                        },
                    ),
                    ("role", output::dash(&w.role)),
                    (
                        "admin",
                        if w.admin {
                            format!("yes ({})", w.admin_reason)
                        } else {
                            "no".into()
                        },
                    ),
                ])
            })
        }
        Command::Plugin(cmd) => plugin(&mut c, json, cmd).await,
        Command::Task(cmd) => task(&mut c, json, cmd).await,
        Command::User(cmd) => user(&mut c, json, cmd).await,
        Command::Team(cmd) => team(&mut c, json, cmd).await,
        Command::Dataset(cmd) => dataset(&mut c, json, cmd).await,
        Command::Policy(cmd) => policy(&mut c, json, cmd).await,
        Command::Audit(cmd) => audit(&mut c, json, cmd).await,
        Command::KillSwitch(cmd) => {
            let (engaged, reason) = match cmd {
                KillSwitchCmd::On { reason } => (true, reason),
                KillSwitchCmd::Off => (false, String::new()),
            };
            let s = c
                .set_kill_switch(pb::SetKillSwitchRequest { engaged, reason })
                .await?
                .into_inner();
            show(json, &s, |s| {
                if s.kill_switch {
                    format!("kill switch ENGAGED: {}\n", s.kill_switch_reason)
                } else {
                    "kill switch off\n".into()
                }
            })
        }
        Command::Config(ConfigCmd::Show) => {
            let i = c.get_config(pb::GetConfigRequest {}).await?.into_inner();
            show(json, &i, |i| {
                if i.path.is_empty() {
                    "# hutchd runs on built-in defaults (no config file)\n".into()
                } else {
                    format!("# {}\n{}", i.path, i.toml)
                }
            })
        }
        Command::Config(ConfigCmd::Reload { file }) => {
            let new_toml = match file {
                None => String::new(),
                Some(f) => std::fs::read_to_string(&f).map_err(|source| CliError::Io {
                    op: "read",
                    path: f,
                    source,
                })?,
            };
            let i = c
                .reload_config(pb::ReloadConfigRequest { new_toml })
                .await?
                .into_inner();
            show(json, &i, |i| {
                format!("config reloaded from {}\n", output::dash(&i.path))
            })
        }
    }
}

async fn plugin(c: &mut AdminClient<Channel>, json: bool, cmd: PluginCmd) -> Result<(), CliError> {
    let one = |p: &pb::Plugin| output::plugin_detail(p);
    let r = |id: String| pb::PluginRef { id };
    match cmd {
        PluginCmd::Install {
            dir,
            grant,
            grant_all,
            enable,
            limits,
        } => {
            let p = c
                .install_plugin(pb::InstallPluginRequest {
                    path: absolute(&dir)?.display().to_string(),
                    grant_scopes: grant,
                    grant_all,
                    limits: Some(limits.to_pb()?),
                    enable,
                })
                .await?
                .into_inner();
            show(json, &p, |p| {
                format!("installed {} {}\n{}", p.id, p.version, one(p))
            })
        }
        PluginCmd::Upgrade { id, dir, grant } => {
            let p = c
                .upgrade_plugin(pb::UpgradePluginRequest {
                    id,
                    path: absolute(&dir)?.display().to_string(),
                    grant_scopes: grant,
                })
                .await?
                .into_inner();
            show(json, &p, |p| {
                format!("upgraded {} to {}\n{}", p.id, p.version, one(p))
            })
        }
        PluginCmd::List => {
            let l = c
                .list_plugins(pb::ListPluginsRequest {})
                .await?
                .into_inner();
            show(json, &l, |l| output::plugin_table(&l.plugins))
        }
        PluginCmd::Status { id } => {
            let p = c.get_plugin(r(id)).await?.into_inner();
            show(json, &p, one)
        }
        PluginCmd::Start { id } => {
            let p = c.start_plugin(r(id)).await?.into_inner();
            show(json, &p, |p| {
                format!("{} {}: {}\n", p.id, p.version, p.state)
            })
        }
        PluginCmd::Stop { id } => {
            let p = c.stop_plugin(r(id)).await?.into_inner();
            show(json, &p, |p| {
                format!("{} {}: {}\n", p.id, p.version, p.state)
            })
        }
        PluginCmd::Restart { id } => {
            let p = c.restart_plugin(r(id)).await?.into_inner();
            show(json, &p, |p| {
                format!("{} {}: {}\n", p.id, p.version, p.state)
            })
        }
        PluginCmd::Enable { id } => {
            let p = c.enable_plugin(r(id)).await?.into_inner();
            show(json, &p, |p| {
                format!("{} {}: enabled, {}\n", p.id, p.version, p.state)
            })
        }
        PluginCmd::Disable { id } => {
            let p = c.disable_plugin(r(id)).await?.into_inner();
            show(json, &p, |p| {
                format!("{} {}: disabled, {}\n", p.id, p.version, p.state)
            })
        }
        PluginCmd::Grants { id, set, clear } => {
            let p = if set.is_empty() && !clear {
                c.get_plugin(r(id)).await?.into_inner()
            } else {
                c.set_grants(pb::SetGrantsRequest { id, scopes: set })
                    .await?
                    .into_inner()
            };
            show(json, &p, |p| {
                output::fields(&[
                    ("requested", output::dash(&p.requested_scopes.join(", "))),
                    ("granted", output::dash(&p.granted_scopes.join(", "))),
                ])
            })
        }
        PluginCmd::Limits { id, limits } => {
            let p = if limits.is_empty() {
                c.get_plugin(r(id)).await?.into_inner()
            } else {
                c.set_limits(pb::SetLimitsRequest {
                    id,
                    limits: Some(limits.to_pb()?),
                })
                .await?
                .into_inner()
            };
            show(json, &p.limits.unwrap_or_default(), |l| {
                output::fields(&[
                    ("memory max", output::bytes(l.memory_max_bytes)),
                    (
                        "cpu max",
                        if l.cpu_max > 0.0 {
                            l.cpu_max.to_string()
                        } else {
                            "-".into()
                        },
                    ),
                    ("pids max", l.pids_max.to_string()),
                    ("tmp size", output::bytes(l.tmp_size_bytes)),
                    (
                        "wall timeout",
                        if l.wall_timeout_ms == 0 {
                            "none".into()
                        } else {
                            humantime::format_duration(Duration::from_millis(l.wall_timeout_ms))
                                .to_string()
                        },
                    ),
                ])
            })
        }
        PluginCmd::Logs { id, follow, tail } => {
            let mut s = c
                .plugin_logs(pb::PluginLogsRequest {
                    id,
                    tail: tail.unwrap_or(0),
                    follow,
                })
                .await?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(l) = s.message().await? {
                let line = if json {
                    serde_json::to_string(&l).map_err(|e| CliError::Failed(e.to_string()))?
                } else {
                    format!("{} {:<6} {}", output::time_ms(l.unix_ms), l.stream, l.line)
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            Ok(())
        }
        PluginCmd::Remove { id } => {
            let x = c
                .remove_plugin(pb::RemovePluginRequest { id })
                .await?
                .into_inner();
            show(json, &x, |x| {
                format!("removed {} {} (its audit trail is kept)\n", x.id, x.version)
            })
        }
    }
}

async fn task(c: &mut AdminClient<Channel>, json: bool, cmd: TaskCmd) -> Result<(), CliError> {
    match cmd {
        TaskCmd::Run {
            plugin,
            action,
            args,
            inputs,
            detach,
        } => {
            if serde_json::from_str::<serde_json::Value>(&args).is_err() {
                return Err(CliError::Usage(format!(
                    "--args {args:?} is not valid JSON"
                )));
            }
            let inputs = inputs
                .iter()
                .map(|s| {
                    crate::tasks::InputRef::parse(s)
                        .map(|i| pb::ObjectRef {
                            dataset_id: i.dataset,
                            key: i.key,
                            version: i.version.unwrap_or(0),
                        })
                        .map_err(CliError::Usage)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let t = c
                .run_task(pb::RunTaskRequest {
                    plugin_id: plugin,
                    action,
                    args_json: args,
                    inputs,
                })
                .await?
                .into_inner();
            if detach {
                return show(json, &t, |t| format!("{}\n", t.id));
            }
            if !json {
                eprintln!(
                    "task {} queued ({} {} as {})",
                    t.id, t.plugin_id, t.action, t.user
                );
            }
            watch(c, json, &t.id).await?;
            let d = c
                .get_task(pb::TaskRef { id: t.id.clone() })
                .await?
                .into_inner();
            show(json, &d, output::task_detail)?;
            task_result(&d.task.unwrap_or_default())
        }
        TaskCmd::List {
            plugin,
            user,
            state,
            limit,
        } => {
            let l = c
                .list_tasks(pb::ListTasksRequest {
                    plugin_id: plugin.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner();
            show(json, &l, |l| output::task_table(&l.tasks))
        }
        TaskCmd::Show { id } => {
            let d = c.get_task(pb::TaskRef { id }).await?.into_inner();
            show(json, &d, output::task_detail)
        }
        TaskCmd::Watch { id } => {
            let last = watch(c, json, &id).await?;
            task_result(&last)
        }
        TaskCmd::Cancel { id, reason } => {
            let t = c
                .cancel_task(pb::CancelTaskRequest { id, reason })
                .await?
                .into_inner();
            show(json, &t, |t| format!("task {}: {}\n", t.id, t.state))
        }
    }
}

/// Follows a task, printing progress changes (human: to stderr; JSON: one
/// object per line to stdout); returns its final state.
async fn watch(c: &mut AdminClient<Channel>, json: bool, id: &str) -> Result<pb::Task, CliError> {
    let mut s = c
        .watch_task(pb::TaskRef { id: id.to_owned() })
        .await?
        .into_inner();
    let mut last = pb::Task::default();
    let mut shown = (String::new(), -1.0f32, String::new());
    while let Some(t) = s.message().await? {
        let key = (
            t.state.clone(),
            t.progress_percent,
            t.progress_message.clone(),
        );
        if key != shown && !json {
            eprintln!(
                "  [{:>3.0}%] {:<9} {}",
                t.progress_percent, t.state, t.progress_message
            );
            shown = key;
        }
        last = t;
    }
    Ok(last)
}

fn task_result(t: &pb::Task) -> Result<(), CliError> {
    match t.state.as_str() {
        "completed" => Ok(()),
        "" => Err(CliError::Failed("the task's state is unknown".into())),
        s => Err(CliError::Failed(format!(
            "task {} {s}{}",
            t.id,
            if t.error.is_empty() {
                String::new()
            } else {
                format!(": {}", t.error)
            }
        ))),
    }
}

async fn user(c: &mut AdminClient<Channel>, json: bool, cmd: UserCmd) -> Result<(), CliError> {
    match cmd {
        UserCmd::List => {
            let l = c.list_users(pb::ListUsersRequest {}).await?.into_inner();
            show(json, &l, |l| {
                let mut t = output::Table::new(&["NAME", "ROLE", "UID", "TEAMS"]);
                for u in &l.users {
                    t.row(vec![
                        u.name.clone(),
                        u.role.clone(),
                        u.uid.map_or("(by login)".into(), |x| x.to_string()),
                        output::dash(&u.teams.join(",")),
                    ]);
                }
                t.render()
            })
        }
        UserCmd::Add { name, role, uid } => {
            let u = c
                .set_user(pb::SetUserRequest { name, role, uid })
                .await?
                .into_inner();
            show(json, &u, |u| {
                format!(
                    "user {} ({}){}\n",
                    u.name,
                    u.role,
                    u.uid.map_or(String::new(), |x| format!(", uid {x}"))
                )
            })
        }
        UserCmd::Remove { name } => {
            let r = c
                .remove_user(pb::RemoveUserRequest { name })
                .await?
                .into_inner();
            show(json, &r, |r| format!("removed user {}\n", r.name))
        }
    }
}

async fn team(c: &mut AdminClient<Channel>, json: bool, cmd: TeamCmd) -> Result<(), CliError> {
    let team_line =
        |t: &pb::Team| format!("team {}: {}\n", t.name, output::dash(&t.members.join(", ")));
    match cmd {
        TeamCmd::List => {
            let l = c.list_teams(pb::ListTeamsRequest {}).await?.into_inner();
            show(json, &l, |l| {
                let mut t = output::Table::new(&["TEAM", "MEMBERS"]);
                for x in &l.teams {
                    t.row(vec![x.name.clone(), output::dash(&x.members.join(","))]);
                }
                t.render()
            })
        }
        TeamCmd::AddMember { team, user } => {
            let t = c
                .add_team_member(pb::TeamMemberRequest { team, user })
                .await?
                .into_inner();
            show(json, &t, team_line)
        }
        TeamCmd::RemoveMember { team, user } => {
            let t = c
                .remove_team_member(pb::TeamMemberRequest { team, user })
                .await?
                .into_inner();
            show(json, &t, team_line)
        }
    }
}

async fn dataset(
    c: &mut AdminClient<Channel>,
    json: bool,
    cmd: DatasetCmd,
) -> Result<(), CliError> {
    let ds_line = |d: &pb::Dataset| {
        format!(
            "dataset {} ({}), owner {}\n",
            d.id,
            d.name,
            if d.owner_team.is_empty() {
                d.owner_user.clone()
            } else {
                format!("team {}", d.owner_team)
            }
        )
    };
    match cmd {
        DatasetCmd::Create {
            name,
            id,
            owner,
            team,
        } => {
            let d = c
                .create_dataset(pb::CreateDatasetRequest {
                    name,
                    id: id.unwrap_or_default(),
                    owner_user: owner.unwrap_or_default(),
                    owner_team: team.unwrap_or_default(),
                })
                .await?
                .into_inner();
            show(json, &d, ds_line)
        }
        DatasetCmd::List => {
            let l = c
                .list_datasets(pb::ListDatasetsRequest {})
                .await?
                .into_inner();
            show(json, &l, |l| {
                let mut t = output::Table::new(&["ID", "NAME", "OWNER", "SHARED", "CREATED"]);
                for d in &l.datasets {
                    t.row(vec![
                        d.id.clone(),
                        d.name.clone(),
                        if d.owner_team.is_empty() {
                            d.owner_user.clone()
                        } else {
                            format!("team:{}", d.owner_team)
                        },
                        output::dash(&d.shares.join(",")),
                        output::time_ms(d.created_unix_ms),
                    ]);
                }
                t.render()
            })
        }
        DatasetCmd::Objects { dataset, prefix } => {
            let l = c
                .list_objects(pb::ListObjectsRequest {
                    dataset_id: dataset,
                    prefix,
                })
                .await?
                .into_inner();
            show(json, &l, |l| {
                let mut t = output::Table::new(&[
                    "KEY", "VERSION", "SIZE", "SHA256", "MODIFIED", "METADATA",
                ]);
                for o in &l.objects {
                    t.row(vec![
                        o.key.clone(),
                        o.version.to_string(),
                        o.size.to_string(),
                        o.sha256.chars().take(16).collect(),
                        output::time_ms(o.modified_unix_ms),
                        output::dash(&metadata_line(&o.metadata)),
                    ]);
                }
                t.render()
            })
        }
        DatasetCmd::Put {
            dataset,
            key,
            file,
            meta,
        } => {
            let metadata = parse_metadata(&meta)?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let header = pb::PutObjectRequest {
                part: Some(pb::put_object_request::Part::Header(pb::PutObjectHeader {
                    dataset_id: dataset,
                    key,
                    metadata,
                })),
            };
            let _ = tx.send(header).await;
            let path = file.clone();
            let reader = tokio::spawn(async move {
                let mut src: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
                    if path.as_os_str() == "-" {
                        Box::new(tokio::io::stdin())
                    } else {
                        Box::new(tokio::fs::File::open(&path).await?)
                    };
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = src.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    let m = pb::PutObjectRequest {
                        part: Some(pb::put_object_request::Part::Chunk(buf[..n].to_vec())),
                    };
                    if tx.send(m).await.is_err() {
                        return Ok(());
                    }
                }
            });
            let res = c
                .put_object(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            match reader.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    return Err(CliError::Io {
                        op: "read",
                        path: file,
                        source,
                    });
                }
                Err(e) => return Err(CliError::Failed(e.to_string())),
            }
            let o = res?.into_inner();
            show(json, &o, |o| {
                format!(
                    "{}/{} version {} ({} bytes, sha256 {})\n",
                    o.dataset_id, o.key, o.version, o.size, o.sha256
                )
            })
        }
        DatasetCmd::Get {
            dataset,
            key,
            version,
            output: out_path,
        } => {
            let mut s = c
                .get_object(pb::GetObjectRequest {
                    dataset_id: dataset,
                    key,
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            let mut out: Box<dyn std::io::Write> = match &out_path {
                Some(p) => Box::new(std::fs::File::create(p).map_err(|source| CliError::Io {
                    op: "create",
                    path: p.clone(),
                    source,
                })?),
                None => Box::new(std::io::stdout()),
            };
            while let Some(m) = s.message().await? {
                if let Some(pb::get_object_response::Part::Chunk(b)) = m.part {
                    out.write_all(&b).map_err(|source| CliError::Io {
                        op: "write",
                        path: out_path.clone().unwrap_or_else(|| "stdout".into()),
                        source,
                    })?;
                }
            }
            out.flush().map_err(|source| CliError::Io {
                op: "write",
                path: "stdout".into(),
                source,
            })?;
            Ok(())
        }
        DatasetCmd::Meta {
            dataset,
            key,
            set,
            unset,
        } => {
            let changes = parse_metadata(&set)?;
            let current = c
                .get_metadata(pb::GetMetadataRequest {
                    dataset_id: dataset.clone(),
                    key: key.clone(),
                })
                .await?
                .into_inner();
            let info = if changes.is_empty() && unset.is_empty() {
                current
            } else {
                let mut metadata = current.metadata.clone();
                for name in &unset {
                    if metadata.remove(name).is_none() {
                        return Err(CliError::Usage(format!(
                            "--unset {name:?}: {dataset}/{key} has no such metadata entry"
                        )));
                    }
                }
                metadata.extend(changes);
                c.set_metadata(pb::SetMetadataRequest {
                    dataset_id: dataset,
                    key,
                    metadata,
                    expected_version: Some(current.version),
                })
                .await?
                .into_inner()
            };
            show(json, &info, |o| {
                let mut names: Vec<&String> = o.metadata.keys().collect();
                names.sort();
                let mut out = format!("{}/{} version {}\n", o.dataset_id, o.key, o.version);
                for n in names {
                    out.push_str(&format!("{n}={}\n", o.metadata[n]));
                }
                out
            })
        }
        DatasetCmd::Share {
            dataset,
            team,
            access,
        } => {
            let d = c
                .share_dataset(pb::ShareDatasetRequest {
                    dataset_id: dataset,
                    team,
                    access,
                })
                .await?
                .into_inner();
            show(json, &d, |d| {
                format!("dataset {} shared: {}\n", d.id, d.shares.join(", "))
            })
        }
    }
}

async fn policy(c: &mut AdminClient<Channel>, json: bool, cmd: PolicyCmd) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::List => {
            let l = c
                .list_policies(pb::ListPoliciesRequest {})
                .await?
                .into_inner();
            show(json, &l, output::policy_table)
        }
        PolicyCmd::Add {
            name,
            allow,
            plugin,
            user,
            team,
            op,
            from,
            until,
            on,
            weekdays,
            hours,
            reason,
        } => {
            let (mut nb, mut na) = (0, 0);
            if let Some(day) = on {
                nb = parse_time("on", &day)?;
                na = nb + 86_400_000;
            }
            if let Some(f) = from {
                nb = parse_time("from", &f)?;
            }
            if let Some(u) = until {
                na = parse_time("until", &u)?;
            }
            let (hour_start, hour_end) = match hours {
                Some(h) => {
                    let (a, b) = parse_hours(&h)?;
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            let p = pb::Policy {
                id: 0,
                name,
                effect: if allow { "allow" } else { "deny" }.into(),
                plugin_pattern: plugin,
                user: user.unwrap_or_default(),
                team: team.unwrap_or_default(),
                operation_class: op.unwrap_or_default(),
                not_before_unix_ms: nb,
                not_after_unix_ms: na,
                weekdays: weekdays
                    .as_deref()
                    .map(parse_weekdays)
                    .transpose()?
                    .unwrap_or(0),
                hour_start,
                hour_end,
                reason,
                active_now: false,
            };
            let p = c
                .add_policy(pb::AddPolicyRequest { policy: Some(p) })
                .await?
                .into_inner();
            show(json, &p, |p| {
                format!(
                    "policy #{} {} ({} {} {}){}\n",
                    p.id,
                    p.name,
                    p.effect,
                    p.plugin_pattern,
                    output::when(p),
                    if p.active_now {
                        ", active now"
                    } else {
                        ", not active now"
                    }
                )
            })
        }
        PolicyCmd::Remove { policy } => {
            let r = match policy.parse::<i64>() {
                Ok(id) => pb::PolicyRef {
                    id,
                    name: String::new(),
                },
                Err(_) => pb::PolicyRef {
                    id: 0,
                    name: policy,
                },
            };
            let x = c.remove_policy(r).await?.into_inner();
            show(json, &x, |x| format!("removed policy #{}\n", x.id))
        }
    }
}

async fn audit(c: &mut AdminClient<Channel>, json: bool, cmd: AuditCmd) -> Result<(), CliError> {
    match cmd {
        AuditCmd::Query(f) => {
            let e = c.query_audit(audit_query(&f)?).await?.into_inner();
            show(json, &e, |e| output::audit_table(&e.events))
        }
        AuditCmd::Export {
            filter,
            output: out_path,
        } => {
            let mut s = c.export_audit(audit_query(&filter)?).await?.into_inner();
            let name = out_path.clone().unwrap_or_else(|| "stdout".into());
            let mut out: Box<dyn std::io::Write> = match &out_path {
                Some(p) => Box::new(std::fs::File::create(p).map_err(|source| CliError::Io {
                    op: "create",
                    path: p.clone(),
                    source,
                })?),
                None => Box::new(std::io::stdout()),
            };
            while let Some(chunk) = s.message().await? {
                out.write_all(&chunk.data).map_err(|source| CliError::Io {
                    op: "write",
                    path: name.clone(),
                    source,
                })?;
            }
            out.flush().map_err(|source| CliError::Io {
                op: "write",
                path: name,
                source,
            })
        }
        AuditCmd::Verify => {
            let r = c
                .verify_audit(pb::VerifyAuditRequest {})
                .await?
                .into_inner();
            show(json, &r, |r| {
                let mut s = if r.ok {
                    format!(
                        "audit chain intact: {} events checked, head {}\n",
                        r.checked, r.last_id
                    )
                } else {
                    format!("audit chain BROKEN ({} events checked):\n", r.checked)
                };
                for p in &r.problems {
                    s.push_str(&format!("  {p}\n"));
                }
                s
            })?;
            if r.ok {
                Ok(())
            } else {
                Err(CliError::Failed(format!(
                    "the audit chain is broken ({} problems)",
                    r.problems.len()
                )))
            }
        }
        AuditCmd::Revert { event, task, force } => {
            if event.is_none() && task.is_none() {
                return Err(CliError::Usage("give an EVENT id or --task TASK".into()));
            }
            let r = c
                .revert(pb::RevertRequest {
                    event_id: event.unwrap_or(0),
                    task_id: task.unwrap_or_default(),
                    force,
                })
                .await?
                .into_inner();
            show(json, &r, |r| {
                let mut t = output::Table::new(&[
                    "OBJECT",
                    "RESTORED",
                    "NEW VERSION",
                    "REVERTED EVENTS",
                    "EVENT",
                ]);
                for o in &r.objects {
                    t.row(vec![
                        format!("{}/{}", o.dataset_id, o.key),
                        o.restored_version
                            .map_or("(deleted)".into(), |v| format!("version {v}")),
                        o.new_version.to_string(),
                        o.reverted_events
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        o.event_id.to_string(),
                    ]);
                }
                format!(
                    "reverted{}:\n{}",
                    if r.forced { " (forced)" } else { "" },
                    t.render()
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekday_and_hour_syntax() {
        assert_eq!(parse_weekdays("mon-fri").ok(), Some(0b001_1111));
        assert_eq!(parse_weekdays("sat,sun").ok(), Some(0b110_0000));
        assert_eq!(parse_weekdays("fri-mon").ok(), Some(0b111_0001));
        assert!(parse_weekdays("someday").is_err());
        assert_eq!(parse_hours("22-6").ok(), Some((22, 6)));
        assert!(parse_hours("25-3").is_err());
        assert_eq!(parse_time("on", "2026-11-30").ok(), Some(1_795_996_800_000));
        assert!(parse_time("on", "tomorrow").is_err());
    }

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(
            exit_code(&CliError::Status(Status::permission_denied("x"))),
            3
        );
        assert_eq!(exit_code(&CliError::Status(Status::not_found("x"))), 4);
        assert_eq!(
            exit_code(&CliError::Status(Status::invalid_argument("x"))),
            2
        );
        assert_eq!(exit_code(&CliError::Status(Status::internal("x"))), 1);
        assert_eq!(exit_code(&CliError::Usage("x".into())), 2);
    }

    #[test]
    fn every_command_has_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        fn walk(c: &clap::Command) {
            for s in c.get_subcommands() {
                assert!(s.get_about().is_some(), "{} has no help", s.get_name());
                walk(s);
            }
        }
        walk(&cmd);
    }
}
