//! The raw kernel calls of the seccomp module: each `unsafe` block is one line, wrapped in a
//! small function that turns the return code into a `Result` with the errno.
//!
//! Nothing here allocates: [`set_mode_filter`] and [`send_fd`] run in the sandboxed child
//! between the last setup step and `execve`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use seccompiler::sock_filter;

/// `struct sock_fprog` from `<linux/filter.h>`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub(crate) fn set_no_new_privs() -> Result<(), Errno> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`. Returns the syscall's non-negative result:
/// the listener fd number with `SECCOMP_FILTER_FLAG_NEW_LISTENER`, else 0.
pub(crate) fn set_mode_filter(prog: &[sock_filter], flags: libc::c_ulong) -> Result<i64, Errno> {
    let len = libc::c_ushort::try_from(prog.len()).map_err(|_| Errno::EINVAL)?;
    let fprog = SockFprog {
        len,
        filter: prog.as_ptr(),
    };
    let (op, p) = (libc::SECCOMP_SET_MODE_FILTER, &fprog as *const SockFprog);
    // SAFETY: `p` points at `fprog` -> `prog`, both alive for the call; the kernel copies them.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, op, flags, p) };
    Errno::result(rc)
}

/// `seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &action)`: whether the kernel knows `action`.
pub(crate) fn action_available(action: u32) -> bool {
    let (op, p) = (libc::SECCOMP_GET_ACTION_AVAIL, &action as *const u32);
    // SAFETY: the kernel reads one u32 at `p`, which is valid for the whole call.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, op, 0, p) };
    rc == 0
}

/// Take ownership of an fd the kernel just returned to us.
pub(crate) fn owned_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was just returned by the kernel as a new fd; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// An all-zero notification buffer: the kernel insists on zeroed input to NOTIF_RECV.
pub(crate) fn zeroed_notif() -> libc::seccomp_notif {
    // SAFETY: `seccomp_notif` is plain integers (id, pid, flags, seccomp_data); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// `ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, notif)`.
pub(crate) fn notif_recv(
    listener: BorrowedFd<'_>,
    notif: &mut libc::seccomp_notif,
) -> Result<(), Errno> {
    let (fd, req) = (listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV);
    let p = notif as *mut libc::seccomp_notif;
    // SAFETY: `p` is a valid, exclusively borrowed seccomp_notif the kernel fills in.
    let rc = unsafe { libc::ioctl(fd, req, p) };
    Errno::result(rc).map(drop)
}

/// `ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id)`: whether the notifying task still waits.
pub(crate) fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> Result<(), Errno> {
    let (fd, req) = (listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID);
    let p = &id as *const u64;
    // SAFETY: the kernel reads one u64 from `p`, valid for the whole call.
    let rc = unsafe { libc::ioctl(fd, req, p) };
    Errno::result(rc).map(drop)
}

/// `ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp)`.
pub(crate) fn notif_send(
    listener: BorrowedFd<'_>,
    resp: &libc::seccomp_notif_resp,
) -> Result<(), Errno> {
    let (fd, req) = (listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND);
    let p = resp as *const libc::seccomp_notif_resp;
    // SAFETY: the kernel reads the seccomp_notif_resp at `p`, valid for the whole call.
    let rc = unsafe { libc::ioctl(fd, req, p) };
    Errno::result(rc).map(drop)
}

/// A control message carrying exactly one fd, laid out as `CMSG_SPACE(sizeof(int))` bytes:
/// the 16-byte `cmsghdr` followed by the fd, padded to 8 bytes.
#[repr(C, align(8))]
struct FdCmsg {
    hdr: libc::cmsghdr,
    fd: [u8; 8],
}

/// `CMSG_LEN(sizeof(int))`: header plus one fd, without trailing padding.
const FD_CMSG_LEN: usize = std::mem::size_of::<libc::cmsghdr>() + std::mem::size_of::<RawFd>();

/// The one-byte payload that travels with a passed fd.
pub(crate) const FD_TAG: u8 = b'F';

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is pointers and integers; all-zero (null pointers, zero lengths) is valid.
    unsafe { std::mem::zeroed() }
}

fn empty_cmsg() -> FdCmsg {
    // SAFETY: `FdCmsg` is integers only; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Send `fd` over the Unix socket `sock` with `SCM_RIGHTS` (and a one-byte payload).
/// Does not allocate.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut payload = [FD_TAG];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut cmsg = empty_cmsg();
    cmsg.hdr.cmsg_len = FD_CMSG_LEN;
    cmsg.hdr.cmsg_level = libc::SOL_SOCKET;
    cmsg.hdr.cmsg_type = libc::SCM_RIGHTS;
    cmsg.fd[..4].copy_from_slice(&fd.as_raw_fd().to_ne_bytes());
    let mut msg = empty_msghdr();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut FdCmsg).cast();
    msg.msg_controllen = std::mem::size_of::<FdCmsg>();
    loop {
        // SAFETY: `msg` points at `iov`, `payload` and `cmsg`, all alive and sized as declared.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match Errno::result(rc) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(Errno::EMSGSIZE),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receive one fd sent by [`send_fd`] from `sock` (close-on-exec set on arrival).
pub(crate) fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut cmsg = empty_cmsg();
    let mut msg = empty_msghdr();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut FdCmsg).cast();
    msg.msg_controllen = std::mem::size_of::<FdCmsg>();
    let n = loop {
        // SAFETY: `msg` points at `iov`, `payload` and `cmsg`, all alive and sized as declared.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match Errno::result(rc) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    let has_fd = msg.msg_controllen >= FD_CMSG_LEN
        && cmsg.hdr.cmsg_level == libc::SOL_SOCKET
        && cmsg.hdr.cmsg_type == libc::SCM_RIGHTS
        && cmsg.hdr.cmsg_len == FD_CMSG_LEN;
    if !has_fd {
        return Err(if n == 0 {
            Errno::ECONNRESET
        } else {
            Errno::EBADMSG
        });
    }
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&cmsg.fd[..4]);
    // The fd is ours now; wrap it first so it is closed even if the rest is malformed.
    let fd = owned_fd(RawFd::from_ne_bytes(raw));
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || n != 1 || payload[0] != FD_TAG {
        return Err(Errno::EBADMSG);
    }
    Ok(fd)
}
