//! The denial monitor: answers a sandbox's user notifications with `EPERM` and counts them.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
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

/// Answers one sandbox's seccomp notifications with `EPERM` and counts them.
///
/// Every denied syscall of the plugin blocks until the monitor has answered it, so a plugin
/// spinning on a denied call is throttled to the monitor's pace and costs one map entry; the
/// first occurrence of each syscall is logged (`tracing` warn), later ones only counted.
///
/// One thread per process (`seccomp-monitor`, started by the first monitor) serves every
/// sandbox's listener through an `epoll` set: a spawn only adds its listener to the set (no
/// thread is created, woken or joined per sandbox, which cost the spawn path CPU on a small
/// host and, at the plugin's exit, a wake-up that preempted it; docs/sandbox.md).
pub struct DenialMonitor {
    label: String,
    token: u64,
    entry: Arc<Entry>,
}

impl std::fmt::Debug for DenialMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialMonitor")
            .field("label", &self.label)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl DenialMonitor {
    /// Start monitoring `listener` (from [`CompiledFilters::apply`](super::CompiledFilters::apply)
    /// via [`recv_listener`](super::recv_listener)); `label` names the plugin in logs.
    ///
    /// # Errors
    /// [`SeccompError::Monitor`] if the shared monitor thread or its `epoll` set cannot be
    /// created, or the listener cannot be added to it.
    pub fn spawn(listener: OwnedFd, label: String) -> Result<DenialMonitor, SeccompError> {
        let monitor_err = |source: std::io::Error| SeccompError::Monitor {
            label: label.clone(),
            source,
        };
        let hub = Hub::get().map_err(|e| monitor_err(std::io::Error::other(e)))?;
        let token = hub.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            state: Mutex::new(State {
                listener: None,
                counts: Counts::new(label.clone()),
            }),
        });
        // In the map before the epoll set: an event for the token always finds its entry.
        lock(&hub.entries).insert(token, entry.clone());
        if let Err(e) = hub.epoll.add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, token),
        ) {
            lock(&hub.entries).remove(&token);
            return Err(monitor_err(e.into()));
        }
        lock(&entry.state).listener = Some(listener);
        Ok(DenialMonitor {
            label,
            token,
            entry,
        })
    }

    /// Stop the monitor and return what was denied, most frequent first. Call it after the
    /// plugin (every process in its sandbox) has exited: pending notifications are answered
    /// first (at most 1024 of them, so this returns even if the plugin is still spinning), and
    /// after the monitor stops, denied syscalls fail with `ENOSYS` instead.
    pub fn finish(mut self) -> Vec<Denial> {
        self.stop()
    }

    /// Whether the listener is still open (tests: the monitor thread closes it once the
    /// filter has no users left).
    #[cfg(test)]
    pub(crate) fn listener_open(&self) -> bool {
        lock(&self.entry.state).listener.is_some()
    }

    fn stop(&mut self) -> Vec<Denial> {
        if let Ok(hub) = Hub::get() {
            lock(&hub.entries).remove(&self.token);
        }
        let mut state = lock(&self.entry.state);
        if let Some(listener) = state.listener.take() {
            let mut budget = DRAIN_BUDGET;
            while budget > 0 && pending(listener.as_fd()) {
                budget -= 1;
                if let Err(e) = answer_one(listener.as_fd(), &mut state.counts) {
                    tracing::error!(plugin = %self.label, "seccomp notification: {e}");
                    break;
                }
            }
            if let Ok(hub) = Hub::get() {
                let _ = hub.epoll.delete(listener.as_fd());
            }
            // Closed here: a denied call still waiting fails with ENOSYS, unanswered.
            drop(listener);
        }
        std::mem::replace(&mut state.counts, Counts::new(self.label.clone())).into_denials()
    }
}

impl Drop for DenialMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One monitored listener. Whoever answers a notification holds `state`'s lock and checks
/// first that one is pending, so a receive never blocks (one receiver at a time).
struct Entry {
    state: Mutex<State>,
}

struct State {
    /// `None` once the monitor stopped, the listener failed or its filter lost its last user:
    /// nothing more is answered.
    listener: Option<OwnedFd>,
    counts: Counts,
}

/// The process's monitor thread and its `epoll` set of listeners.
struct Hub {
    epoll: Epoll,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a notification is waiting on `listener` (a zero-timeout `poll`).
fn pending(listener: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

impl Hub {
    /// The process's hub, started on first use.
    fn get() -> Result<&'static Hub, String> {
        static HUB: OnceLock<Result<&'static Hub, String>> = OnceLock::new();
        HUB.get_or_init(|| {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                .map_err(|e| format!("epoll_create: {e}"))?;
            let hub: &'static Hub = Box::leak(Box::new(Hub {
                epoll,
                entries: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            }));
            std::thread::Builder::new()
                .name("seccomp-monitor".into())
                .spawn(move || hub.run())
                .map_err(|e| format!("start monitor thread: {e}"))?;
            Ok(hub)
        })
        .clone()
    }

    /// The monitor thread: wait for any listener; answer one notification of each readable
    /// one per round (level-triggered, so a flood from one plugin does not starve the
    /// others); drop and close a listener once its filter has no users left (`EPOLLHUP`).
    fn run(&self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("epoll_wait on seccomp listeners: {e}; denials go unanswered");
                    return;
                }
            };
            for ev in events.iter().take(n) {
                let Some(entry) = lock(&self.entries).get(&ev.data()).cloned() else {
                    continue;
                };
                let mut state = lock(&entry.state);
                let State { listener, counts } = &mut *state;
                let Some(fd) = listener.as_ref() else {
                    continue;
                };
                if pending(fd.as_fd()) {
                    if let Err(e) = answer_one(fd.as_fd(), counts) {
                        tracing::error!(plugin = %counts.label, "seccomp notification: {e}");
                        let _ = self.epoll.delete(fd.as_fd());
                        *listener = None;
                    }
                } else if ev
                    .events()
                    .intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                {
                    // No task uses the filter any more, so nothing can be pending: the listener
                    // is closed here, at the plugin's exit, not by `finish` on the caller's way
                    // to the outcome. Its close frees the filter stack (the BPF programs' release
                    // wakes a kworker): ~0.1 ms the caller no longer waits for (docs/sandbox.md
                    // "Session 8"). The counts stay for `finish`.
                    let _ = self.epoll.delete(fd.as_fd());
                    *listener = None;
                }
            }
        }
    }
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
