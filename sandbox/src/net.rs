//! Network step: bring `lo` up in the sandbox's fresh network namespace.
//!
//! A new network namespace has only `lo`, and it is down; many programs
//! (Python's `socket.getaddrinfo("localhost")`, test servers) expect it up.
//! Nothing else is configured, so there is no route out.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::error::{StepContext, StepError};

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Step: `ioctl(SIOCGIFFLAGS)`, set `IFF_UP`, `ioctl(SIOCSIFFLAGS)` on `lo`.
///
/// # Errors
/// The socket or an ioctl failed.
pub fn bring_up_loopback() -> Result<(), StepError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .step("socket", "AF_INET")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a live ifreq-sized buffer the kernel fills for SIOCGIFFLAGS; `sock` is an open socket.
    Errno::result(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req as *mut IfReqFlags,
        )
    })
    .step("ioctl SIOCGIFFLAGS", "lo")?;
    req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `req` is a live ifreq-sized buffer holding the interface name and flags; the kernel only reads it.
    Errno::result(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &req as *const IfReqFlags,
        )
    })
    .step("ioctl SIOCSIFFLAGS", "lo")?;
    Ok(())
}
