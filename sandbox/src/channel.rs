//! Typed messages over a `SOCK_SEQPACKET` socketpair, with file descriptors.
//!
//! One message is one datagram: a frame byte, then the message in
//! `postcard`'s compact binary serde format (both ends are this crate's code,
//! one build: no schema evolution to carry); descriptors travel alongside as
//! `SCM_RIGHTS`. Used between the daemon and the launcher and between the
//! launcher and a sandbox being set up. (JSON took 90 µs to decode a pooled
//! init's claim, whose paths are byte strings that JSON spells as arrays of
//! numbers, on the claim's critical path: docs/sandbox.md "Session 8".)

use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message accepted (a spec with many paths still fits easily).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// The first byte of every datagram: a message is never empty (a `()`
/// encodes to nothing), so an empty read is always the end of the stream.
const FRAME: u8 = 0x48;

/// Most descriptors carried by one message (a pooled claim carries one per
/// spec-dependent bind).
pub const MAX_FDS: usize = 32;

/// A channel error.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket call failed.
    #[error("{op} on channel: {errno:?}")]
    Sys {
        /// `sendmsg`, `recvmsg`, `socketpair`.
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// A message could not be encoded or decoded.
    #[error("bad message on channel: {0}")]
    Codec(#[from] postcard::Error),
    /// The message was truncated (larger than [`MAX_MESSAGE`]).
    #[error("message on channel truncated")]
    Truncated,
    /// The datagram does not start with the frame byte.
    #[error("message on channel without its frame byte")]
    Unframed,
}

/// One end of a typed channel: sends `S`, receives `R`.
#[derive(Debug)]
pub struct Channel<S, R> {
    fd: OwnedFd,
    _types: PhantomData<fn(S) -> R>,
}

/// Two connected ends of a channel, see [`pair`].
pub type Pair<A, B> = (Channel<A, B>, Channel<B, A>);

/// Two connected ends: the first sends `A` and receives `B`, the second the
/// reverse. Both are close-on-exec.
///
/// # Errors
/// `socketpair` failed.
pub fn pair<A, B>() -> Result<Pair<A, B>, ChannelError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| ChannelError::Sys {
        op: "socketpair",
        errno,
    })?;
    Ok((Channel::from_fd(a), Channel::from_fd(b)))
}

impl<S, R> Channel<S, R> {
    /// Wrap a connected `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd,
            _types: PhantomData,
        }
    }
}

impl<S: Serialize, R: DeserializeOwned> Channel<S, R> {
    /// Send one message with descriptors.
    ///
    /// # Errors
    /// Encoding or `sendmsg` failed (`EPIPE` when the other end is gone).
    pub fn send(&self, msg: &S, fds: &[RawFd]) -> Result<(), ChannelError> {
        let bytes = postcard::to_extend(msg, vec![FRAME])?;
        let iov = [IoSlice::new(&bytes)];
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(ChannelError::Sys {
                        op: "sendmsg",
                        errno,
                    });
                }
            }
        }
    }

    /// Receive one message and its descriptors; `None` at end of stream.
    ///
    /// # Errors
    /// `recvmsg` failed or the message does not decode.
    pub fn recv(&self) -> Result<Option<(R, Vec<OwnedFd>)>, ChannelError> {
        // A buffer of the datagram's own size, not `MAX_MESSAGE`: zeroing
        // 256 KiB on every message cost a pre-warmed init up to 64
        // copy-on-write page faults (its heap is shared with the zygote it
        // was forked from), 0.2-0.3 ms on the claim's critical path.
        let mut buf = vec![0u8; self.peek_len()?.clamp(1, MAX_MESSAGE)];
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().map_err(|errno| ChannelError::Sys {
                        op: "recvmsg",
                        errno,
                    })? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel just installed `fd` in our table for us; nothing else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, fds, truncated);
                }
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(ChannelError::Sys {
                        op: "recvmsg",
                        errno,
                    });
                }
            }
        };
        if truncated {
            return Err(ChannelError::Truncated);
        }
        if len == 0 {
            return Ok(None);
        }
        match buf[..len].split_first() {
            Some((&FRAME, body)) => Ok(Some((postcard::from_bytes(body)?, fds))),
            _ => Err(ChannelError::Unframed),
        }
    }

    /// The length of the next datagram (`MSG_PEEK | MSG_TRUNC`: the real
    /// length, nothing consumed, no descriptors installed); 0 at EOF.
    fn peek_len(&self) -> Result<usize, ChannelError> {
        loop {
            match nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut [],
                MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Ok(len) => return Ok(len),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(ChannelError::Sys {
                        op: "recv (peek)",
                        errno,
                    });
                }
            }
        }
    }
}

impl<S, R> AsFd for Channel<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<S, R> AsRawFd for Channel<S, R> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn messages_and_descriptors_round_trip() -> TestResult {
        let (a, b) = pair::<Vec<std::ffi::CString>, Option<u64>>()?;
        let (rd, _wr) = nix::unistd::pipe()?;
        let paths = vec![c"/usr".to_owned(), c"/data/\xff".to_owned()];
        a.send(&paths, &[rd.as_raw_fd()])?;
        let (got, fds) = b.recv()?.ok_or("end of stream")?;
        assert_eq!(got, paths);
        assert_eq!(fds.len(), 1);
        b.send(&Some(7), &[])?;
        assert_eq!(a.recv()?.map(|(m, _)| m), Some(Some(7)));
        Ok(())
    }

    /// A `()` encodes to no bytes: it still arrives as a message (with its
    /// descriptor), and only a closed peer reads as the end.
    #[test]
    fn an_empty_message_is_not_the_end_of_the_stream() -> TestResult {
        let (a, b) = pair::<(), ()>()?;
        let (rd, _wr) = nix::unistd::pipe()?;
        a.send(&(), &[rd.as_raw_fd()])?;
        let (unit, fds) = b.recv()?.ok_or("a () read as the end of the stream")?;
        assert_eq!(unit, ());
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(b.recv()?.is_none(), "closed peer: end of stream");
        Ok(())
    }

    #[test]
    fn unframed_and_undecodable_datagrams_are_errors() -> TestResult {
        // `a` receives `Vec<u64>`; raw datagrams are written on `b`'s end.
        let (a, b) = pair::<(), Vec<u64>>()?;
        nix::unistd::write(&b.fd, b"{\"json\":1}")?;
        let r = a.recv();
        assert!(matches!(r, Err(ChannelError::Unframed)), "{r:?}");
        // Framed, but a length prefix far beyond the bytes that follow.
        nix::unistd::write(&b.fd, &[FRAME, 0xff, 0xff, 0x03, 1])?;
        let r = a.recv();
        assert!(matches!(r, Err(ChannelError::Codec(_))), "{r:?}");
        Ok(())
    }
}
