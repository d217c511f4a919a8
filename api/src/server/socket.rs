//! The instance's Unix socket: created with safe permissions, and an accept
//! loop that admits only connections from the instance's uid.
//!
//! Steps of [`bind_instance_socket`]:
//! 1. the parent directory must exist or is created mode 0711, and must be
//!    owned by the daemon's euid and not writable by group or others (so no
//!    one else can swap the socket file);
//! 2. a stale socket at the path is removed (anything else there is an error);
//! 3. bind under a temporary name in the same directory, chmod 0600, chown to
//!    the instance uid, then rename onto the final path, so the socket is
//!    never reachable under its real name with looser permissions.
//!
//! [`PeerFilteredIncoming`] then checks `SO_PEERCRED` of every accepted
//! connection: a peer uid other than the instance uid is closed at once and
//! reported (the server audits it). The daemon's own uid is *not* exempt;
//! there is no uid-0 bypass.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, UdsConnectInfo};

/// Errors preparing the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// chown failed.
    #[error("chown {path} to uid {uid}: {errno}")]
    Chown {
        /// The path.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// The errno.
        errno: nix::errno::Errno,
    },
    /// The directory holding the socket is not safe.
    #[error("socket directory {path}: {reason}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Something other than a socket sits at the socket path.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SocketError + use<> {
    let path = path.to_path_buf();
    move |source| SocketError::Io { op, path, source }
}

/// Creates the listening socket at `path` for instance uid `uid` (see the
/// module doc for the steps).
///
/// # Errors
/// [`SocketError`] naming the step and path that failed.
pub fn bind_instance_socket(path: &Path, uid: u32) -> Result<UnixListener, SocketError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "api.sock".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err("bind", &tmp))?;
    let cleanup = |e: SocketError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod 0600", &tmp))
        .map_err(cleanup)?;
    nix::unistd::chown(&tmp, Some(nix::unistd::Uid::from_raw(uid)), None)
        .map_err(|errno| SocketError::Chown {
            path: tmp.clone(),
            uid,
            errno,
        })
        .map_err(cleanup)?;
    std::fs::rename(&tmp, path)
        .map_err(io_err("rename socket into place", path))
        .map_err(cleanup)?;
    Ok(listener)
}

fn ensure_dir(dir: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err("create socket directory", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io_err("chmod 0711", dir))?;
        }
        Err(e) => return Err(io_err("stat socket directory", dir)(e)),
        Ok(_) => {}
    }
    let m = std::fs::symlink_metadata(dir).map_err(io_err("stat socket directory", dir))?;
    let unsafe_dir = |reason: String| SocketError::UnsafeDir {
        path: dir.to_path_buf(),
        reason,
    };
    if !m.is_dir() {
        return Err(unsafe_dir("not a directory (or a symlink)".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if m.uid() != euid {
        return Err(unsafe_dir(format!(
            "owned by uid {}, not the daemon's uid {euid}",
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:o} is writable by group or others",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// A connection refused because of its peer credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedPeer {
    /// The peer's uid (None if the kernel gave no credentials).
    pub uid: Option<u32>,
    /// The peer's pid, if known.
    pub pid: Option<i32>,
}

/// An accepted connection from the right uid. Holds a connection slot.
#[derive(Debug)]
pub struct PeerConn {
    inner: UnixStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for PeerConn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections, admitting only peers with uid `uid` and at most
/// `max_connections` at once; refused peers go to `on_refused`.
pub fn peer_filtered_incoming(
    listener: UnixListener,
    uid: u32,
    max_connections: u32,
    on_refused: Arc<dyn Fn(RefusedPeer, &'static str) + Send + Sync>,
) -> impl futures::Stream<Item = Result<PeerConn, io::Error>> + Send {
    let slots = Arc::new(Semaphore::new(max_connections.max(1) as usize));
    futures::stream::unfold(
        (listener, slots, on_refused),
        move |(listener, slots, on_refused)| async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept on plugin socket failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let cred = stream.peer_cred().ok();
                let peer_uid = cred.as_ref().map(|c| c.uid());
                if peer_uid != Some(uid) {
                    on_refused(
                        RefusedPeer {
                            uid: peer_uid,
                            pid: cred.and_then(|c| c.pid()),
                        },
                        "peer uid does not match the instance uid",
                    );
                    drop(stream);
                    continue;
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    on_refused(
                        RefusedPeer {
                            uid: peer_uid,
                            pid: cred.and_then(|c| c.pid()),
                        },
                        "too many open connections",
                    );
                    drop(stream);
                    continue;
                };
                let conn = PeerConn {
                    inner: stream,
                    _slot: slot,
                };
                return Some((Ok(conn), (listener, slots, on_refused)));
            }
        },
    )
}
