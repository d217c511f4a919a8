//! The denial monitor: answers a sandbox's user notifications with `EPERM` and counts them.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use serde::{Deserialize, Serialize};

use super::{SeccompError, sys, syscalls};

/// At most this many distinct syscalls are tracked per plugin run; further ones are counted
/// together under [`OTHER`]. Keeps the monitor's memory bounded whatever the plugin does.
pub const MAX_DISTINCT: usize = 64;
/// The name of the bucket for syscalls beyond [`MAX_DISTINCT`].
pub const OTHER: &str = "(other)";
/// After a stop request, at most this many pending notifications are still answered, so that
/// stopping the monitor of a plugin that is still alive and spinning on a denied call ends.
const DRAIN_BUDGET: u32 = 1024;

/// One denied syscall, aggregated over a plugin run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The syscall's x86_64 name (`x32:<name>` for an x32-ABI call, `nr:<n>` if unknown).
    pub syscall: String,
    /// How many times it was denied.
    pub count: u64,
    /// The arguments of its first occurrence.
    pub first_args: [u64; 6],
}

/// A thread answering one sandbox's seccomp notifications with `EPERM`.
///
/// Every denied syscall of the plugin blocks until the monitor has answered it, so a plugin
/// spinning on a denied call is throttled to the monitor's pace and costs one map entry; the
/// first occurrence of each syscall is logged (`tracing` warn), later ones only counted.
#[derive(Debug)]
pub struct DenialMonitor {
    label: String,
    stop: EventFd,
    thread: Option<JoinHandle<Vec<Denial>>>,
}

impl DenialMonitor {
    /// Start the monitor thread on `listener` (from [`CompiledFilters::apply`](super::CompiledFilters::apply)
    /// via [`recv_listener`](super::recv_listener)); `label` names the plugin in logs.
    ///
    /// # Errors
    /// [`SeccompError::Monitor`] if the wake-up eventfd or the thread cannot be created.
    pub fn spawn(listener: OwnedFd, label: String) -> Result<DenialMonitor, SeccompError> {
        let monitor_err = |source: std::io::Error| SeccompError::Monitor {
            label: label.clone(),
            source,
        };
        let stop = EventFd::new().map_err(|e| monitor_err(e.into()))?;
        let stop_fd = stop.as_fd().try_clone_to_owned().map_err(monitor_err)?;
        let thread_label = label.clone();
        let thread = std::thread::Builder::new()
            .name(format!("seccomp-{label}"))
            .spawn(move || run(listener, stop_fd, thread_label))
            .map_err(monitor_err)?;
        Ok(DenialMonitor {
            label,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the monitor and return what was denied, most frequent first. Call it after the
    /// plugin (every process in its sandbox) has exited: pending notifications are answered
    /// first (at most 1024 of them, so this returns even if the plugin is still spinning), and
    /// after the monitor stops, denied syscalls fail with `ENOSYS` instead.
    pub fn finish(mut self) -> Vec<Denial> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Vec<Denial> {
        let Some(thread) = self.thread.take() else {
            return Vec::new();
        };
        if let Err(e) = self.stop.write(1) {
            tracing::error!(plugin = %self.label, "wake seccomp denial monitor: {e}");
        }
        thread.join().unwrap_or_else(|_| {
            tracing::error!(plugin = %self.label, "seccomp denial monitor panicked");
            Vec::new()
        })
    }
}

impl Drop for DenialMonitor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The monitor thread: poll the listener and the stop eventfd; answer notifications until the
/// filter has no users left (`POLLHUP`) or a stop was requested and nothing is pending.
fn run(listener: OwnedFd, stop: OwnedFd, label: String) -> Vec<Denial> {
    let mut counts = Counts::new(label);
    let mut stopping = false;
    let mut drain_budget = DRAIN_BUDGET;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = if stopping {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(plugin = %counts.label, "poll seccomp listener: {e}");
                break;
            }
        }
        let listener_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let stop_ev = fds[1].revents().unwrap_or(PollFlags::empty());
        if listener_ev.contains(PollFlags::POLLIN) {
            if stopping {
                if drain_budget == 0 {
                    break;
                }
                drain_budget -= 1;
            }
            if let Err(e) = answer_one(listener.as_fd(), &mut counts) {
                tracing::error!(plugin = %counts.label, "seccomp notification: {e}");
                break;
            }
            continue;
        }
        if listener_ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            break;
        }
        if stopping {
            break;
        }
        if stop_ev.contains(PollFlags::POLLIN) {
            stopping = true;
        }
    }
    counts.into_denials()
}

/// Receive one notification, count it, answer `EPERM`. Errors that only mean the calling task
/// went away (`ENOENT`) or a signal interrupted us (`EINTR`) are not errors.
fn answer_one(listener: BorrowedFd<'_>, counts: &mut Counts) -> Result<(), String> {
    let mut notif = sys::zeroed_notif();
    match sys::notif_recv(listener, &mut notif) {
        Ok(()) => {}
        Err(Errno::EINTR | Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(format!("ioctl SECCOMP_IOCTL_NOTIF_RECV: {e}")),
    }
    counts.record(i64::from(notif.data.nr), notif.data.args, notif.pid);
    if sys::notif_id_valid(listener, notif.id).is_err() {
        return Ok(());
    }
    let resp = libc::seccomp_notif_resp {
        id: notif.id,
        val: 0,
        error: -libc::EPERM,
        flags: 0,
    };
    match sys::notif_send(listener, &resp) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("ioctl SECCOMP_IOCTL_NOTIF_SEND: {e}")),
    }
}

/// Bounded aggregation of denials by syscall number.
struct Counts {
    label: String,
    by_nr: BTreeMap<i64, (u64, [u64; 6])>,
    other: Option<(u64, [u64; 6])>,
}

impl Counts {
    fn new(label: String) -> Self {
        Counts {
            label,
            by_nr: BTreeMap::new(),
            other: None,
        }
    }

    fn record(&mut self, nr: i64, args: [u64; 6], pid: u32) {
        if let Some((count, _)) = self.by_nr.get_mut(&nr) {
            *count = count.saturating_add(1);
            return;
        }
        if self.by_nr.len() < MAX_DISTINCT {
            let name = syscalls::display_name(nr);
            tracing::warn!(plugin = %self.label, syscall = %name, nr, pid, ?args,
                "seccomp denied a syscall (further denials of it are only counted)");
            self.by_nr.insert(nr, (1, args));
            return;
        }
        match &mut self.other {
            Some((count, _)) => *count = count.saturating_add(1),
            None => {
                tracing::warn!(plugin = %self.label, nr, pid,
                    "seccomp denied more than {MAX_DISTINCT} distinct syscalls; counting the rest together");
                self.other = Some((1, args));
            }
        }
    }

    fn into_denials(self) -> Vec<Denial> {
        let mut out: Vec<Denial> = self
            .by_nr
            .into_iter()
            .map(|(nr, (count, first_args))| Denial {
                syscall: syscalls::display_name(nr),
                count,
                first_args,
            })
            .collect();
        if let Some((count, first_args)) = self.other {
            out.push(Denial {
                syscall: OTHER.to_string(),
                count,
                first_args,
            });
        }
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.syscall.cmp(&b.syscall))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_aggregated() {
        let mut c = Counts::new("t".into());
        for nr in 0..(MAX_DISTINCT as i64 + 10) {
            c.record(nr, [0; 6], 1);
        }
        for _ in 0..5 {
            c.record(1000, [0; 6], 1);
        }
        c.record(0, [9; 6], 1);
        let d = c.into_denials();
        assert_eq!(d.len(), MAX_DISTINCT + 1);
        let other = d.iter().find(|x| x.syscall == OTHER);
        assert_eq!(other.map(|x| x.count), Some(10 + 5));
        let read = d.iter().find(|x| x.syscall == "read");
        assert_eq!(read.map(|x| (x.count, x.first_args)), Some((2, [0; 6])));
        assert_eq!(d[0].syscall, OTHER, "sorted by count, most frequent first");
    }

    #[test]
    fn names_native_x32_and_unknown_numbers() {
        assert_eq!(syscalls::display_name(101), "ptrace");
        assert_eq!(syscalls::display_name(0x4000_0000 | 39), "x32:getpid");
        assert_eq!(syscalls::display_name(99_999), "nr:99999");
    }
}
