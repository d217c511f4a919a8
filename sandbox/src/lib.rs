//! `hutch-sandbox`: the mechanism that confines one plugin process.
//!
//! **Owns**: turning a [`SandboxSpec`](spec::SandboxSpec) into a running,
//! confined process and reporting how it ended ([`Outcome`](outcome::Outcome)):
//! namespaces, the mount tree, identity (uid/gid, capabilities,
//! `no_new_privs`, descriptors), cgroups, Landlock and seccomp. The only crate
//! of Hutch allowed `unsafe`; each block is one line with a `SAFETY:` comment.
//!
//! **Must not**: use an async runtime, know about gRPC or the audit store, or
//! decide policy (the daemon builds the spec from the manifest and the
//! admin's approvals). It fails closed: a layer that cannot be applied is an
//! error, never a warning.
//!
//! # The flow of a spawn
//! The daemon forks the [`launcher`](launcher::Launcher) once, before any
//! runtime starts. Per sandbox, the launcher prepares everything
//! ([`spawn::Prepared`]: mount plan with host paths resolved, checked and
//! opened `O_PATH`; argv/envp; seccomp BPF), creates the cgroup, and forks:
//!
//! 0. **launcher**: attaches the stub to the cgroup right after the fork
//!    (a v1 `cgroup.procs` write can wait 10-15 ms for an RCU grace period;
//!    it overlaps steps 1-2).
//! 1. **stub** (host pid ns, root): `close_range` of foreign fds;
//!    `PR_SET_PDEATHSIG` checked with `getppid`; `unshare(mount, pid, net,
//!    ipc, uts [, user])` (user-ns maps written by the launcher); fork init;
//!    relay init's end.
//! 2. **init** (pid 1, root, in the new namespaces): `PR_SET_PDEATHSIG`
//!    (checked through a lifeline pipe) -> `/` rprivate -> open the bind
//!    sources again (`RESOLVE_NO_SYMLINKS`, device+inode must match the
//!    parent's check) -> tmpfs root -> skeleton -> `/dev` tmpfs -> mount
//!    points -> binds through `/proc/self/fd/N` with `mount_setattr`
//!    (system trees, `/plugin`, `/data`, `read_only`, API socket, devices,
//!    `/etc` files) -> mask sockets in `read_only` trees -> `/tmp` tmpfs ->
//!    `/etc` files -> new `/proc` (`hidepid=invisible`) -> `/dev` read-only
//!    -> close the `O_PATH` fds -> `pivot_root(".", ".")` + detach -> root
//!    read-only -> hostname, `lo` up -> wait for the cgroup attach (init is
//!    attached too) -> `unshare(CLONE_NEWCGROUP)` -> empty bounding set ->
//!    not dumpable -> block signals -> the plugin (`clone(CLONE_VM |
//!    CLONE_VFORK)`: shares init's memory until its `execve`) -> keep only
//!    `CAP_KILL`, `no_new_privs` -> reap and forward signals until the
//!    plugin exits.
//! 3. **plugin** (pid 2): setgroups/setresgid/setresuid to the per-plugin
//!    ids -> clear all capability sets (checked empty) -> `no_new_privs` ->
//!    default signal mask -> `setsid` -> stdin `/dev/null`, stdout/stderr
//!    pipes -> close every other fd except the setup channel (close-on-exec)
//!    -> Landlock -> seccomp (listener handed back over the channel) ->
//!    `execve`.
//!
//! **Warm spawns**: the launcher keeps pre-warmed inits per cgroup placement
//! that did the spec-independent steps ahead of time, with no stub: each is
//! forked straight into a new pid namespace (`unshare(CLONE_NEWPID)`,
//! `fork`, `setns` back), by the zygote of a pool slot (a cgroup joined once
//! and reused after normal ends) or by the launcher when there is no
//! cgroup; it unshares mount, net, ipc and uts, pivots into the base tree,
//! mounts `/proc` and enters its cgroup namespace. A spawn claims one,
//! writes its limits, and hands it the prepared spec and the spec's bind
//! sources as detached mounts. See docs/sandbox.md.
//!
//! [`host`] probes what the kernel offers (behind `hutchd check-host`).
//!
//! Every failing step sends a [`StepError`](error::StepError) ("mount
//! read-only /plugin: EPERM") back over the channel. See docs/sandbox.md.
#![allow(unsafe_code)]
pub mod cgroup;
pub mod channel;
pub mod error;
pub mod host;
pub mod identity;
pub mod landlock;
pub mod launcher;
pub mod mounts;
pub mod namespaces;
pub mod net;
pub mod outcome;
pub mod policy;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod trace;
pub mod zygote;
