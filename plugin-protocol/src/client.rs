//! A small client helper for Rust plugin authors.
//!
//! It dials `$HUTCH_SOCKET`, performs the Agent hello handshake, runs a task
//! loop, and streams object content in chunks. Everything here is a thin
//! convenience over the generated code in [`crate::plugin::v1`]; plugins in
//! other languages generate a client from the `.proto` instead.
//!
//! ```no_run
//! use hutch_plugin_protocol::client::{self, AgentSession, Incoming};
//!
//! # async fn run() -> Result<(), client::ClientError> {
//! let channel = client::connect_from_env().await?;
//! let mut agent = AgentSession::hello(channel.clone(), &["threshold"]).await?;
//! let mut data = client::data_client(channel);
//! while let Some(msg) = agent.next().await? {
//!     if let Incoming::Task(task) = msg {
//!         let r = agent.reporter(&task.task_id);
//!         r.started().await?;
//!         let bytes = client::get_bytes(&mut data, Some(&task.task_id), "ds1", "in.raw").await?;
//!         r.progress(50.0, "read input").await?;
//!         client::put_bytes(&mut data, Some(&task.task_id), "ds1", "out.raw", None, &bytes).await?;
//!         r.completed("{}").await?;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::plugin::v1 as pb;

/// The gRPC metadata key carrying the task id a Data call works for.
pub const TASK_ID_METADATA: &str = "hutch-task-id";

/// The environment variable naming the plugin's API socket.
pub const SOCKET_ENV: &str = "HUTCH_SOCKET";

/// The largest object chunk Hutch accepts or sends in one message (1 MiB).
pub const MAX_CHUNK_SIZE: usize = pb::Limits::MaxChunkSize as usize;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: pb::ProtocolVersion = pb::ProtocolVersion::ProtocolVersion1;

/// Errors of the client helper.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `$HUTCH_SOCKET` is not set.
    #[error("environment variable {SOCKET_ENV} is not set")]
    NoSocketEnv,
    /// Dialing the socket failed.
    #[error("connect {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Hutch answered with an error status.
    #[error("{op}: {status}")]
    Status {
        /// The call that failed.
        op: &'static str,
        /// The gRPC status.
        #[source]
        status: Box<Status>,
    },
    /// Hutch speaks another protocol version.
    #[error("protocol version mismatch: plugin speaks {ours}, hutch speaks {theirs}")]
    VersionMismatch {
        /// This crate's version number.
        ours: i32,
        /// Hutch's version number.
        theirs: i32,
    },
    /// Hutch broke the protocol (e.g. no welcome, no object info first).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent stream is closed.
    #[error("agent stream closed")]
    Closed,
    /// Reading or writing local content failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn status(op: &'static str) -> impl FnOnce(Status) -> ClientError {
    move |s| ClientError::Status {
        op,
        status: Box::new(s),
    }
}

/// Connects to the API socket at `path`.
///
/// # Errors
/// [`ClientError::Connect`] when the socket cannot be dialed.
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, ClientError> {
    let path = path.as_ref().display().to_string();
    let endpoint =
        Endpoint::from_shared(format!("unix://{path}")).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
    endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect { path, source })
}

/// Connects to the socket named by `$HUTCH_SOCKET`.
///
/// # Errors
/// [`ClientError::NoSocketEnv`] if unset, else as [`connect`].
pub async fn connect_from_env() -> Result<Channel, ClientError> {
    let path = std::env::var_os(SOCKET_ENV).ok_or(ClientError::NoSocketEnv)?;
    connect(Path::new(&path)).await
}

/// A Data client on `channel`.
pub fn data_client(channel: Channel) -> pb::data_client::DataClient<Channel> {
    pb::data_client::DataClient::new(channel)
}

/// Wraps `msg` in a request that carries `task_id` in the `hutch-task-id`
/// metadata (or no task id when `None`).
pub fn with_task<T>(msg: T, task_id: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(id) = task_id
        && let Ok(v) = MetadataValue::try_from(id)
    {
        req.metadata_mut().insert(TASK_ID_METADATA, v);
    }
    req
}

/// What the daemon sent on the agent stream after the welcome.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A task to work on.
    Task(pb::TaskAssignment),
    /// A task to stop.
    Cancel(pb::Cancel),
}

/// An open Agent session (after a successful hello).
#[derive(Debug)]
pub struct AgentSession {
    tx: mpsc::Sender<pb::PluginMessage>,
    rx: Streaming<pb::DaemonMessage>,
    /// Hutch's welcome: instance id, plugin id, granted scopes.
    pub welcome: pb::Welcome,
}

impl AgentSession {
    /// Opens the Agent session, sends the hello and waits for the welcome.
    ///
    /// # Errors
    /// [`ClientError::VersionMismatch`] when Hutch speaks another version,
    /// [`ClientError::Status`] when the stream is refused.
    pub async fn hello(channel: Channel, actions: &[&str]) -> Result<Self, ClientError> {
        Self::hello_with_version(channel, actions, PROTOCOL_VERSION as i32).await
    }

    /// As [`AgentSession::hello`] but announcing an arbitrary protocol
    /// version number (for testing version negotiation).
    ///
    /// # Errors
    /// As [`AgentSession::hello`].
    pub async fn hello_with_version(
        channel: Channel,
        actions: &[&str],
        version: i32,
    ) -> Result<Self, ClientError> {
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::PluginMessage {
            msg: Some(pb::plugin_message::Msg::Hello(pb::Hello {
                protocol_version: version,
                actions: actions.iter().map(|s| (*s).to_owned()).collect(),
                client: concat!("hutch-plugin-protocol ", env!("CARGO_PKG_VERSION")).to_owned(),
            })),
        };
        tx.send(hello).await.map_err(|_| ClientError::Closed)?;
        let mut agent = pb::agent_client::AgentClient::new(channel);
        let mut stream = agent
            .session(ReceiverStream::new(rx))
            .await
            .map_err(status("agent session"))?
            .into_inner();
        let first = stream.message().await.map_err(status("agent hello"))?;
        let welcome = match first.and_then(|m| m.msg) {
            Some(pb::daemon_message::Msg::Welcome(w)) => w,
            _ => return Err(ClientError::Protocol("expected a welcome".into())),
        };
        if welcome.protocol_version != PROTOCOL_VERSION as i32 {
            return Err(ClientError::VersionMismatch {
                ours: PROTOCOL_VERSION as i32,
                theirs: welcome.protocol_version,
            });
        }
        Ok(Self {
            tx,
            rx: stream,
            welcome,
        })
    }

    /// Waits for the next task or cancel; `None` when Hutch closed the stream.
    ///
    /// # Errors
    /// [`ClientError::Status`] when the stream ends with an error.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ClientError> {
        loop {
            let Some(m) = self.rx.message().await.map_err(status("agent receive"))? else {
                return Ok(None);
            };
            match m.msg {
                Some(pb::daemon_message::Msg::Task(t)) => return Ok(Some(Incoming::Task(t))),
                Some(pb::daemon_message::Msg::Cancel(c)) => return Ok(Some(Incoming::Cancel(c))),
                _ => continue,
            }
        }
    }

    /// A reporter for events of task `task_id`.
    pub fn reporter(&self, task_id: &str) -> TaskReporter {
        TaskReporter {
            tx: self.tx.clone(),
            task_id: task_id.to_owned(),
        }
    }

    /// Sends a heartbeat listing the busy tasks.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream is gone.
    pub async fn heartbeat(&self, busy_tasks: &[String]) -> Result<(), ClientError> {
        let msg = pb::PluginMessage {
            msg: Some(pb::plugin_message::Msg::Heartbeat(pb::Heartbeat {
                busy_tasks: busy_tasks.to_vec(),
            })),
        };
        self.tx.send(msg).await.map_err(|_| ClientError::Closed)
    }
}

/// How often [`AgentSession::run_tasks`] sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

impl AgentSession {
    /// The task loop: runs `handler` for every assigned task, each in its own
    /// tokio task, reporting `started` before and `completed(result_json)` or
    /// `failed(error)` after it; a Cancel aborts the task's handler and
    /// reports `failed("cancelled: <reason>")`. Sends a heartbeat listing
    /// the running tasks every [`HEARTBEAT_INTERVAL`]. Returns when Hutch
    /// closes the stream.
    ///
    /// ```no_run
    /// # async fn f(agent: hutch_plugin_protocol::client::AgentSession) -> Result<(), hutch_plugin_protocol::client::ClientError> {
    /// agent.run_tasks(|task, report| async move {
    ///     report.progress(50.0, "halfway").await.map_err(|e| e.to_string())?;
    ///     Ok(format!("{{\"action\": {:?}}}", task.action))
    /// }).await
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Status`] when the stream ends with an error.
    pub async fn run_tasks<F, Fut>(mut self, handler: F) -> Result<(), ClientError>
    where
        F: Fn(pb::TaskAssignment, TaskReporter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut running: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            let msg = tokio::select! {
                m = self.next() => m?,
                _ = beat.tick() => {
                    running.retain(|_, a| !a.is_finished());
                    let busy: Vec<String> = running.keys().cloned().collect();
                    self.heartbeat(&busy).await?;
                    continue;
                }
            };
            match msg {
                None => return Ok(()),
                Some(Incoming::Task(task)) => {
                    let report = self.reporter(&task.task_id);
                    let id = task.task_id.clone();
                    let h = handler.clone();
                    let job = tokio::spawn(async move {
                        if report.started().await.is_err() {
                            return;
                        }
                        let _ = match h(task, report.clone()).await {
                            Ok(result) => report.completed(&result).await,
                            Err(error) => report.failed(&error).await,
                        };
                    });
                    running.retain(|_, a| !a.is_finished());
                    running.insert(id, job.abort_handle());
                }
                Some(Incoming::Cancel(c)) => {
                    if let Some(job) = running.remove(&c.task_id) {
                        job.abort();
                        let reason = format!("cancelled: {}", c.reason);
                        self.reporter(&c.task_id).failed(&reason).await?;
                    }
                }
            }
        }
    }
}

/// Sends events about one task on the agent stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskReporter {
    tx: mpsc::Sender<pb::PluginMessage>,
    task_id: String,
}

impl TaskReporter {
    async fn send(&self, event: pb::task_event::Event) -> Result<(), ClientError> {
        let msg = pb::PluginMessage {
            msg: Some(pb::plugin_message::Msg::Event(pb::TaskEvent {
                task_id: self.task_id.clone(),
                event: Some(event),
            })),
        };
        self.tx.send(msg).await.map_err(|_| ClientError::Closed)
    }

    /// The task id (for [`with_task`]).
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Reports that work began.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream is gone (same for all methods).
    pub async fn started(&self) -> Result<(), ClientError> {
        self.send(pb::task_event::Event::Started(pb::Started {}))
            .await
    }

    /// Reports progress in percent with a short message.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn progress(&self, percent: f32, message: &str) -> Result<(), ClientError> {
        self.send(pb::task_event::Event::Progress(pb::Progress {
            percent,
            message: message.to_owned(),
        }))
        .await
    }

    /// Sends one log line.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn log(&self, level: pb::LogLevel, line: &str) -> Result<(), ClientError> {
        self.send(pb::task_event::Event::Log(pb::LogLine {
            level: level as i32,
            line: line.to_owned(),
        }))
        .await
    }

    /// Yields a named output (JSON value and/or object reference).
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn output(
        &self,
        name: &str,
        value_json: &str,
        object: Option<pb::ObjectRef>,
    ) -> Result<(), ClientError> {
        self.send(pb::task_event::Event::Output(pb::Output {
            name: name.to_owned(),
            value_json: value_json.to_owned(),
            object,
        }))
        .await
    }

    /// Reports success with an optional JSON result.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn completed(&self, result_json: &str) -> Result<(), ClientError> {
        self.send(pb::task_event::Event::Completed(pb::Completed {
            result_json: result_json.to_owned(),
        }))
        .await
    }

    /// Reports failure.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn failed(&self, error: &str) -> Result<(), ClientError> {
        self.send(pb::task_event::Event::Failed(pb::Failed {
            error: error.to_owned(),
        }))
        .await
    }
}

/// Streams `content` into object `key` of `dataset_id` in chunks of at most
/// [`MAX_CHUNK_SIZE`], without holding it all in memory.
///
/// # Errors
/// [`ClientError::Io`] reading `content`, [`ClientError::Status`] from Hutch
/// (e.g. FAILED_PRECONDITION when `expected_version` does not match).
pub async fn put_object<R: AsyncRead + Unpin + Send + 'static>(
    data: &mut pb::data_client::DataClient<Channel>,
    task_id: Option<&str>,
    header: pb::PutObjectHeader,
    mut content: R,
) -> Result<pb::ObjectInfo, ClientError> {
    let (tx, rx) = mpsc::channel::<pb::PutObjectRequest>(4);
    let first = pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Header(header)),
    };
    tx.send(first).await.map_err(|_| ClientError::Closed)?;
    let reader = tokio::spawn(async move {
        // Capacity only: `read_buf` fills it without the buffer being zeroed
        // first (a small object touches only the pages it needs).
        let mut buf = Vec::with_capacity(MAX_CHUNK_SIZE);
        loop {
            buf.clear();
            let n = content.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let msg = pb::PutObjectRequest {
                part: Some(pb::put_object_request::Part::Chunk(buf[..n].to_vec())),
            };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
    });
    let res = data
        .put_object(with_task(ReceiverStream::new(rx), task_id))
        .await;
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(ClientError::Io {
                op: "read object content",
                source,
            });
        }
        Err(e) => return Err(ClientError::Protocol(format!("content reader: {e}"))),
    }
    Ok(res.map_err(status("put object"))?.into_inner())
}

/// Puts `bytes` as object `key` (see [`put_object`]).
///
/// # Errors
/// As [`put_object`].
pub async fn put_bytes(
    data: &mut pb::data_client::DataClient<Channel>,
    task_id: Option<&str>,
    dataset_id: &str,
    key: &str,
    expected_version: Option<u64>,
    bytes: &[u8],
) -> Result<pb::ObjectInfo, ClientError> {
    let header = pb::PutObjectHeader {
        dataset_id: dataset_id.to_owned(),
        key: key.to_owned(),
        expected_version,
        metadata: Default::default(),
    };
    // The content is already in memory: its chunks go out as one finished
    // stream (no reader task, no chunk-sized read buffer per call).
    let mut msgs = Vec::with_capacity(2 + bytes.len() / MAX_CHUNK_SIZE);
    msgs.push(pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Header(header)),
    });
    msgs.extend(bytes.chunks(MAX_CHUNK_SIZE).map(|c| pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Chunk(c.to_vec())),
    }));
    let res = data
        .put_object(with_task(tokio_stream::iter(msgs), task_id))
        .await;
    Ok(res.map_err(status("put object"))?.into_inner())
}

/// Streams object content into `out` chunk by chunk; returns its info.
///
/// # Errors
/// [`ClientError::Status`] from Hutch, [`ClientError::Io`] writing `out`.
pub async fn get_object<W: AsyncWrite + Unpin>(
    data: &mut pb::data_client::DataClient<Channel>,
    task_id: Option<&str>,
    req: pb::GetObjectRequest,
    out: &mut W,
) -> Result<pb::ObjectInfo, ClientError> {
    let mut stream = data
        .get_object(with_task(req, task_id))
        .await
        .map_err(status("get object"))?
        .into_inner();
    let info = match stream.message().await.map_err(status("get object"))? {
        Some(pb::GetObjectResponse {
            part: Some(pb::get_object_response::Part::Info(i)),
        }) => i,
        _ => return Err(ClientError::Protocol("expected object info first".into())),
    };
    while let Some(m) = stream.message().await.map_err(status("get object"))? {
        if let Some(pb::get_object_response::Part::Chunk(c)) = m.part {
            out.write_all(&c).await.map_err(|source| ClientError::Io {
                op: "write object content",
                source,
            })?;
        }
    }
    Ok(info)
}

/// Reads the current version of an object into memory (small objects only).
///
/// # Errors
/// As [`get_object`].
pub async fn get_bytes(
    data: &mut pb::data_client::DataClient<Channel>,
    task_id: Option<&str>,
    dataset_id: &str,
    key: &str,
) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    let req = pb::GetObjectRequest {
        dataset_id: dataset_id.to_owned(),
        key: key.to_owned(),
        version: 0,
    };
    get_object(data, task_id, req, &mut out).await?;
    Ok(out)
}
