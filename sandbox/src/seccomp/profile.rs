//! The default seccomp profile, as data.
//!
//! [`PROFILE`] is the allowlist: every syscall a plugin may make, with the [`Rule`] that
//! restricts its arguments and a one-line reason naming who needs it. Everything else is
//! denied with `EPERM` (and reported to the supervisor when user notification is available).
//! [`HARD_DENIED`] lists the syscalls an admin can never add back through
//! [`SeccompConfig::additions`](super::SeccompConfig::additions).
//!
//! The list was built from what real plugins use: CPython 3.11 (with `json`, `hashlib`, `ssl`,
//! `subprocess`, `threading`, `multiprocessing`, `asyncio`, `sqlite3`) and numpy/OpenBLAS,
//! Rust and Go binaries, C programs, `/bin/sh` (dash) scripts and coreutils, traced with
//! `strace -f -c`, cross-checked against the Docker/Moby default profile, minus everything
//! that reaches kernel attack surface a plugin does not need (see docs/seccomp.md).

/// How an allowlisted syscall's arguments are restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Allowed with any arguments.
    Always,
    /// `clone` only when no namespace flag is set in the (low 32 bits of the) flags
    /// argument: [`CLONE_NAMESPACE_FLAGS`]. The kernel's legacy `clone` only reads the low
    /// 32 bits of its flags, so the 32-bit comparison is exact.
    CloneWithoutNamespaces,
    /// `socket` only for `AF_UNIX`, `AF_INET` and `AF_INET6` ([`SOCKET_FAMILIES`]).
    SocketFamilies,
    /// `ioctl` except `TIOCSTI` and `TIOCLINUX` ([`DENIED_IOCTLS`]). The kernel truncates the
    /// request to 32 bits (`unsigned int cmd`), so the filter compares the low 32 bits: a
    /// request with high bits set is still `TIOCSTI` to the kernel and is still refused.
    IoctlWithoutTtyInjection,
    /// `seccomp` (a plugin restricting itself further) without
    /// `SECCOMP_FILTER_FLAG_NEW_LISTENER`: a plugin-owned listener on a newer filter would
    /// receive the notifications of Hutch's filter and could answer "continue".
    SeccompWithoutListener,
    /// `personality` only to query (`0xffffffff`) or to set `PER_LINUX` (0); no
    /// `ADDR_NO_RANDOMIZE`, `READ_IMPLIES_EXEC` and friends.
    PersonalityQueryOnly,
    /// Answered `ENOSYS` by a separate filter, so libc falls back to the older call
    /// (`clone3` -> `clone`, where the namespace flags can be checked).
    Enosys,
}

/// Namespace flags `clone` may not carry: NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET,
/// NEWCGROUP and NEWTIME (`0x80` overlaps the exit-signal byte of legacy `clone`; no valid
/// signal number sets it, so refusing it costs nothing).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | 0x80/* CLONE_NEWTIME */) as u64;

/// Address families `socket` may create.
pub const SOCKET_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
];

/// `ioctl` requests refused: terminal input injection and the Linux console multiplexer.
pub const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI, libc::TIOCLINUX];

/// `personality` values allowed: `PER_LINUX` and the query value.
pub const PERSONALITY_VALUES: &[u64] = &[0, 0xffff_ffff];

use Rule::*;

/// The allowlist: `(syscall, rule, reason)`.
pub const PROFILE: &[(&str, Rule, &str)] = &[
    // --- file descriptors and file I/O -----------------------------------------------------
    ("read", Always, "everything reads from fds"),
    ("write", Always, "everything writes to fds"),
    ("readv", Always, "vectored I/O (libc stdio, Python)"),
    ("writev", Always, "vectored I/O (libc stdio, Go, Rust)"),
    (
        "pread64",
        Always,
        "positioned reads (dynamic loader, sqlite)",
    ),
    ("pwrite64", Always, "positioned writes (sqlite)"),
    ("preadv", Always, "positioned vectored reads"),
    ("pwritev", Always, "positioned vectored writes"),
    ("preadv2", Always, "positioned vectored reads with flags"),
    ("pwritev2", Always, "positioned vectored writes with flags"),
    ("open", Always, "open files (older binaries)"),
    ("openat", Always, "open files (libc)"),
    (
        "openat2",
        Always,
        "open files with resolve flags (Rust, newer libc)",
    ),
    ("creat", Always, "create files (old C code)"),
    ("close", Always, "close fds"),
    (
        "close_range",
        Always,
        "close many fds at once (Python subprocess, glibc)",
    ),
    ("lseek", Always, "seek in files"),
    ("dup", Always, "duplicate fds (shell redirections)"),
    (
        "dup2",
        Always,
        "duplicate fds (shell redirections, subprocess)",
    ),
    ("dup3", Always, "duplicate fds with O_CLOEXEC (Go, Rust)"),
    ("fcntl", Always, "fd flags and record locks"),
    ("flock", Always, "advisory file locks (sqlite, pip)"),
    ("pipe", Always, "pipes (shell)"),
    ("pipe2", Always, "pipes with flags (Python subprocess, Go)"),
    (
        "ioctl",
        IoctlWithoutTtyInjection,
        "terminal queries (isatty, TIOCGWINSZ), FIONREAD, FIOCLEX",
    ),
    (
        "sendfile",
        Always,
        "in-kernel file copy (shutil, coreutils cp)",
    ),
    ("splice", Always, "pipe-based zero-copy I/O"),
    ("tee", Always, "pipe duplication"),
    ("vmsplice", Always, "user pages into a pipe"),
    (
        "copy_file_range",
        Always,
        "in-kernel file copy (coreutils cp, Rust fs::copy)",
    ),
    ("fsync", Always, "durability (sqlite, databases)"),
    ("fdatasync", Always, "durability (sqlite)"),
    ("sync_file_range", Always, "write-back hints"),
    (
        "syncfs",
        Always,
        "flush one filesystem (only the caller's mounts)",
    ),
    (
        "sync",
        Always,
        "coreutils sync; no-op cost on read-only mounts",
    ),
    (
        "fallocate",
        Always,
        "preallocate file space (sqlite, downloads)",
    ),
    ("ftruncate", Always, "resize open files"),
    ("truncate", Always, "resize files by path"),
    ("fadvise64", Always, "page-cache hints (coreutils, Python)"),
    ("readahead", Always, "page-cache hints"),
    (
        "memfd_create",
        Always,
        "anonymous files (Go, JITs, multiprocessing)",
    ),
    // --- paths and metadata ----------------------------------------------------------------
    ("stat", Always, "file metadata (older binaries)"),
    ("fstat", Always, "file metadata"),
    ("lstat", Always, "file metadata without following symlinks"),
    ("newfstatat", Always, "file metadata (glibc stat family)"),
    ("statx", Always, "file metadata (Rust std, coreutils)"),
    (
        "statfs",
        Always,
        "filesystem metadata (coreutils df, Python)",
    ),
    ("fstatfs", Always, "filesystem metadata of an fd"),
    ("access", Always, "permission checks (shell PATH search)"),
    ("faccessat", Always, "permission checks"),
    ("faccessat2", Always, "permission checks with flags (glibc)"),
    ("readlink", Always, "read symlinks (Python sys.executable)"),
    ("readlinkat", Always, "read symlinks"),
    ("getdents", Always, "list directories (older binaries)"),
    ("getdents64", Always, "list directories"),
    ("getcwd", Always, "current directory"),
    ("chdir", Always, "change directory"),
    ("fchdir", Always, "change directory by fd (coreutils, fts)"),
    ("rename", Always, "rename files"),
    ("renameat", Always, "rename files"),
    (
        "renameat2",
        Always,
        "rename files with flags (atomic replace)",
    ),
    ("link", Always, "hard links"),
    ("linkat", Always, "hard links"),
    ("unlink", Always, "remove files"),
    (
        "unlinkat",
        Always,
        "remove files and directories (tempfile cleanup)",
    ),
    ("symlink", Always, "symbolic links"),
    ("symlinkat", Always, "symbolic links"),
    ("mkdir", Always, "create directories"),
    ("mkdirat", Always, "create directories"),
    ("rmdir", Always, "remove directories"),
    (
        "mknod",
        Always,
        "FIFOs and sockets (device nodes need CAP_MKNOD and dev mounts)",
    ),
    (
        "mknodat",
        Always,
        "FIFOs and sockets (device nodes need CAP_MKNOD and dev mounts)",
    ),
    ("chmod", Always, "file modes (own files only)"),
    ("fchmod", Always, "file modes (own files only)"),
    ("fchmodat", Always, "file modes (own files only)"),
    ("fchmodat2", Always, "file modes with flags (newer libc)"),
    (
        "chown",
        Always,
        "ownership (without CAP_CHOWN only to own groups)",
    ),
    (
        "fchown",
        Always,
        "ownership (without CAP_CHOWN only to own groups)",
    ),
    (
        "lchown",
        Always,
        "ownership (without CAP_CHOWN only to own groups)",
    ),
    (
        "fchownat",
        Always,
        "ownership (without CAP_CHOWN only to own groups)",
    ),
    ("umask", Always, "file creation mask"),
    ("utime", Always, "file times (old binaries)"),
    ("utimes", Always, "file times"),
    ("futimesat", Always, "file times"),
    (
        "utimensat",
        Always,
        "file times (touch, cp -p, Python os.utime)",
    ),
    ("getxattr", Always, "extended attributes (coreutils ls, cp)"),
    ("lgetxattr", Always, "extended attributes (coreutils ls)"),
    ("fgetxattr", Always, "extended attributes"),
    ("listxattr", Always, "extended attributes (cp -a)"),
    ("llistxattr", Always, "extended attributes (cp -a)"),
    ("flistxattr", Always, "extended attributes"),
    (
        "setxattr",
        Always,
        "extended attributes (user.* on own files)",
    ),
    (
        "lsetxattr",
        Always,
        "extended attributes (user.* on own files)",
    ),
    (
        "fsetxattr",
        Always,
        "extended attributes (user.* on own files)",
    ),
    ("removexattr", Always, "extended attributes"),
    ("lremovexattr", Always, "extended attributes"),
    ("fremovexattr", Always, "extended attributes"),
    ("getxattrat", Always, "extended attributes (newer libc)"),
    ("setxattrat", Always, "extended attributes (newer libc)"),
    ("listxattrat", Always, "extended attributes (newer libc)"),
    ("removexattrat", Always, "extended attributes (newer libc)"),
    (
        "inotify_init",
        Always,
        "file change watches (older binaries)",
    ),
    (
        "inotify_init1",
        Always,
        "file change watches (watchdog-style plugins)",
    ),
    ("inotify_add_watch", Always, "file change watches"),
    ("inotify_rm_watch", Always, "file change watches"),
    // --- polling, events, timers -----------------------------------------------------------
    ("select", Always, "wait for fds (older C code)"),
    ("pselect6", Always, "wait for fds"),
    ("poll", Always, "wait for fds (Python subprocess, Rust std)"),
    ("ppoll", Always, "wait for fds"),
    ("epoll_create", Always, "event loops (older binaries)"),
    ("epoll_create1", Always, "event loops (asyncio, Go, tokio)"),
    ("epoll_ctl", Always, "event loops"),
    ("epoll_wait", Always, "event loops"),
    ("epoll_pwait", Always, "event loops (Go)"),
    ("epoll_pwait2", Always, "event loops with ns timeouts"),
    ("eventfd", Always, "wakeups (older binaries)"),
    ("eventfd2", Always, "wakeups (tokio, Go)"),
    ("signalfd", Always, "signals as fds"),
    ("signalfd4", Always, "signals as fds"),
    ("timerfd_create", Always, "timers as fds"),
    ("timerfd_settime", Always, "timers as fds"),
    ("timerfd_gettime", Always, "timers as fds"),
    (
        "io_setup",
        Always,
        "Linux AIO (libaio users); io_uring stays denied",
    ),
    ("io_destroy", Always, "Linux AIO"),
    ("io_getevents", Always, "Linux AIO"),
    ("io_pgetevents", Always, "Linux AIO"),
    ("io_submit", Always, "Linux AIO"),
    ("io_cancel", Always, "Linux AIO"),
    // --- memory ----------------------------------------------------------------------------
    ("brk", Always, "heap (malloc)"),
    ("mmap", Always, "memory mappings (loader, malloc, numpy)"),
    ("munmap", Always, "memory mappings"),
    ("mprotect", Always, "memory protection (loader, JITs)"),
    ("mremap", Always, "grow mappings (realloc of large blocks)"),
    (
        "madvise",
        Always,
        "memory hints (Go runtime, jemalloc, glibc)",
    ),
    (
        "msync",
        Always,
        "flush mapped files (sqlite mmap, numpy memmap)",
    ),
    ("mincore", Always, "page residency queries"),
    (
        "mlock",
        Always,
        "lock pages (bounded by RLIMIT_MEMLOCK; crypto libraries)",
    ),
    ("mlock2", Always, "lock pages (bounded by RLIMIT_MEMLOCK)"),
    ("munlock", Always, "unlock pages"),
    ("mlockall", Always, "lock pages (bounded by RLIMIT_MEMLOCK)"),
    ("munlockall", Always, "unlock pages"),
    ("membarrier", Always, "memory barriers (Go, .NET, liburcu)"),
    ("get_mempolicy", Always, "NUMA queries (OpenBLAS, numpy)"),
    ("set_mempolicy", Always, "NUMA placement of own memory"),
    ("mbind", Always, "NUMA placement of own memory (OpenBLAS)"),
    ("pkey_alloc", Always, "memory protection keys (glibc, V8)"),
    ("pkey_free", Always, "memory protection keys"),
    ("pkey_mprotect", Always, "memory protection keys"),
    ("mseal", Always, "seal own mappings (newer glibc)"),
    (
        "map_shadow_stack",
        Always,
        "CET shadow stacks (glibc with CET enabled)",
    ),
    // --- processes and threads -------------------------------------------------------------
    (
        "clone",
        CloneWithoutNamespaces,
        "threads and fork (pthread_create, posix_spawn, Go)",
    ),
    (
        "clone3",
        Enosys,
        "answered ENOSYS so glibc falls back to clone, whose flags we can check",
    ),
    ("fork", Always, "processes (old C code)"),
    ("vfork", Always, "processes (posix_spawn, dash)"),
    ("execve", Always, "run programs (shell scripts, subprocess)"),
    ("execveat", Always, "run programs by fd (fexecve)"),
    ("exit", Always, "thread exit"),
    ("exit_group", Always, "process exit"),
    ("wait4", Always, "reap children (shell, subprocess)"),
    ("waitid", Always, "reap children (Go, Python, pidfds)"),
    (
        "kill",
        Always,
        "signal own processes (the pid namespace hides others)",
    ),
    ("tkill", Always, "signal threads"),
    ("tgkill", Always, "signal threads (Go preemption, raise)"),
    ("pidfd_open", Always, "process handles (Python, Rust, Go)"),
    ("pidfd_send_signal", Always, "signal via process handles"),
    ("set_tid_address", Always, "thread setup (libc)"),
    ("set_robust_list", Always, "thread setup (libc)"),
    ("get_robust_list", Always, "thread setup (libc)"),
    ("rseq", Always, "restartable sequences (glibc >= 2.35)"),
    ("arch_prctl", Always, "TLS setup (libc)"),
    (
        "prctl",
        Always,
        "thread names, PDEATHSIG, no_new_privs (capabilities already dropped)",
    ),
    ("futex", Always, "locks and condition variables"),
    (
        "futex_waitv",
        Always,
        "vectored futex wait (Wine, newer runtimes)",
    ),
    ("futex_wake", Always, "futex2 wake"),
    ("futex_wait", Always, "futex2 wait"),
    ("futex_requeue", Always, "futex2 requeue"),
    ("sched_yield", Always, "yield the CPU (spin locks, Go)"),
    (
        "sched_getaffinity",
        Always,
        "CPU count (nproc, OpenBLAS, Go, Rust)",
    ),
    (
        "sched_setaffinity",
        Always,
        "pin own threads (OpenBLAS); the cgroup still limits CPU time",
    ),
    ("sched_getparam", Always, "scheduling queries"),
    (
        "sched_setparam",
        Always,
        "scheduling of own threads (RT needs CAP_SYS_NICE)",
    ),
    ("sched_getscheduler", Always, "scheduling queries"),
    (
        "sched_setscheduler",
        Always,
        "scheduling of own threads (RT needs CAP_SYS_NICE)",
    ),
    ("sched_getattr", Always, "scheduling queries"),
    (
        "sched_setattr",
        Always,
        "scheduling of own threads (RT needs CAP_SYS_NICE)",
    ),
    ("sched_get_priority_max", Always, "scheduling queries"),
    ("sched_get_priority_min", Always, "scheduling queries"),
    ("sched_rr_get_interval", Always, "scheduling queries"),
    ("getpriority", Always, "nice value"),
    (
        "setpriority",
        Always,
        "nice value (raising needs CAP_SYS_NICE)",
    ),
    ("ioprio_get", Always, "I/O priority"),
    (
        "ioprio_set",
        Always,
        "I/O priority (raising needs CAP_SYS_ADMIN)",
    ),
    ("getrlimit", Always, "resource limits"),
    (
        "setrlimit",
        Always,
        "resource limits (raising hard limits needs CAP_SYS_RESOURCE)",
    ),
    ("prlimit64", Always, "resource limits (Python, glibc)"),
    (
        "getrusage",
        Always,
        "resource usage (Python resource, time)",
    ),
    ("times", Always, "process times"),
    (
        "personality",
        PersonalityQueryOnly,
        "glibc and Python query the personality",
    ),
    (
        "seccomp",
        SeccompWithoutListener,
        "plugins may restrict themselves further",
    ),
    (
        "landlock_create_ruleset",
        Always,
        "plugins may restrict themselves further",
    ),
    (
        "landlock_add_rule",
        Always,
        "plugins may restrict themselves further",
    ),
    (
        "landlock_restrict_self",
        Always,
        "plugins may restrict themselves further",
    ),
    (
        "restart_syscall",
        Always,
        "kernel-internal restart after a signal",
    ),
    (
        "uretprobe",
        Always,
        "only reachable from a kernel uretprobe trampoline",
    ),
    // --- identity (no capabilities are left, so these can only drop or switch own ids) -----
    ("getpid", Always, "own pid"),
    ("getppid", Always, "parent pid"),
    ("gettid", Always, "thread id"),
    ("getuid", Always, "own uid"),
    ("geteuid", Always, "own uid"),
    ("getgid", Always, "own gid"),
    ("getegid", Always, "own gid"),
    ("getresuid", Always, "own uids"),
    ("getresgid", Always, "own gids"),
    ("getgroups", Always, "supplementary groups"),
    ("setuid", Always, "drop to own ids (no CAP_SETUID left)"),
    ("setgid", Always, "drop to own ids (no CAP_SETGID left)"),
    ("setreuid", Always, "drop to own ids"),
    ("setregid", Always, "drop to own ids"),
    ("setresuid", Always, "drop to own ids"),
    ("setresgid", Always, "drop to own ids"),
    ("setfsuid", Always, "drop to own ids"),
    ("setfsgid", Always, "drop to own ids"),
    (
        "setgroups",
        Always,
        "fails without CAP_SETGID; some daemons call it",
    ),
    ("getpgid", Always, "process groups (shell job control)"),
    ("setpgid", Always, "process groups (shell job control)"),
    ("getpgrp", Always, "process groups (dash)"),
    ("getsid", Always, "sessions"),
    ("setsid", Always, "sessions (daemonizing helpers)"),
    ("capget", Always, "capability queries (all are zero)"),
    ("capset", Always, "capabilities can only be dropped further"),
    // --- signals ---------------------------------------------------------------------------
    ("rt_sigaction", Always, "signal handlers"),
    ("rt_sigprocmask", Always, "signal masks"),
    ("rt_sigreturn", Always, "return from signal handlers"),
    ("rt_sigpending", Always, "pending signals"),
    ("rt_sigtimedwait", Always, "wait for signals"),
    ("rt_sigqueueinfo", Always, "queue signals to own processes"),
    ("rt_tgsigqueueinfo", Always, "queue signals to own threads"),
    ("rt_sigsuspend", Always, "wait for signals (shell wait)"),
    (
        "sigaltstack",
        Always,
        "alternate signal stacks (Go, Rust stack overflow guard)",
    ),
    ("pause", Always, "wait for signals"),
    // --- time ------------------------------------------------------------------------------
    ("clock_gettime", Always, "time (usually vDSO; fallback)"),
    ("clock_getres", Always, "clock resolution"),
    ("clock_nanosleep", Always, "sleep (time.sleep, Go)"),
    ("nanosleep", Always, "sleep"),
    ("gettimeofday", Always, "time (usually vDSO; fallback)"),
    ("time", Always, "time (usually vDSO; fallback)"),
    ("alarm", Always, "alarms (shell timeouts)"),
    ("getitimer", Always, "interval timers"),
    ("setitimer", Always, "interval timers (profilers)"),
    ("timer_create", Always, "POSIX timers"),
    ("timer_settime", Always, "POSIX timers"),
    ("timer_gettime", Always, "POSIX timers"),
    ("timer_getoverrun", Always, "POSIX timers"),
    ("timer_delete", Always, "POSIX timers"),
    // --- system information ----------------------------------------------------------------
    (
        "uname",
        Always,
        "kernel name and version (Python platform, shell)",
    ),
    ("sysinfo", Always, "memory and uptime (Python os, OpenBLAS)"),
    (
        "getrandom",
        Always,
        "randomness (hashlib, ssl, Rust HashMap seeds)",
    ),
    ("getcpu", Always, "current CPU (usually vDSO)"),
    // --- sockets (the network namespace only has lo; Landlock denies TCP) -------------------
    (
        "socket",
        SocketFamilies,
        "Unix sockets for the API; inet on lo only",
    ),
    (
        "socketpair",
        Always,
        "Unix socket pairs (multiprocessing, subprocess)",
    ),
    ("bind", Always, "bind sockets"),
    ("listen", Always, "listen on sockets"),
    ("accept", Always, "accept connections"),
    ("accept4", Always, "accept connections"),
    ("connect", Always, "connect sockets (the API socket)"),
    ("getsockname", Always, "socket addresses"),
    ("getpeername", Always, "socket addresses"),
    ("sendto", Always, "send on sockets"),
    ("recvfrom", Always, "receive on sockets"),
    ("sendmsg", Always, "send with ancillary data (fd passing)"),
    ("recvmsg", Always, "receive with ancillary data"),
    ("sendmmsg", Always, "batched sends (glibc resolver)"),
    ("recvmmsg", Always, "batched receives"),
    ("shutdown", Always, "half-close sockets"),
    ("setsockopt", Always, "socket options"),
    ("getsockopt", Always, "socket options"),
    // --- System V and POSIX IPC (the IPC namespace is private) -----------------------------
    ("shmget", Always, "shared memory (private IPC namespace)"),
    ("shmat", Always, "shared memory"),
    ("shmdt", Always, "shared memory"),
    ("shmctl", Always, "shared memory"),
    ("semget", Always, "semaphores (private IPC namespace)"),
    ("semop", Always, "semaphores"),
    ("semtimedop", Always, "semaphores"),
    ("semctl", Always, "semaphores"),
    ("msgget", Always, "message queues (private IPC namespace)"),
    ("msgsnd", Always, "message queues"),
    ("msgrcv", Always, "message queues"),
    ("msgctl", Always, "message queues"),
    (
        "mq_open",
        Always,
        "POSIX message queues (private IPC namespace)",
    ),
    ("mq_unlink", Always, "POSIX message queues"),
    ("mq_timedsend", Always, "POSIX message queues"),
    ("mq_timedreceive", Always, "POSIX message queues"),
    ("mq_notify", Always, "POSIX message queues"),
    ("mq_getsetattr", Always, "POSIX message queues"),
];

/// Syscalls that are never allowed, not even as an admin-approved addition: `(syscall, reason)`.
/// They are denied like every other unlisted syscall (and reported when notification is on).
pub const HARD_DENIED: &[(&str, &str)] = &[
    (
        "bpf",
        "eBPF programs and maps: a large kernel attack surface",
    ),
    ("keyctl", "the kernel keyring is not namespaced"),
    ("add_key", "the kernel keyring is not namespaced"),
    ("request_key", "the kernel keyring is not namespaced"),
    (
        "perf_event_open",
        "performance counters leak host activity and have a history of bugs",
    ),
    (
        "userfaultfd",
        "makes kernel races easy to win (exploit primitive)",
    ),
    (
        "io_uring_setup",
        "io_uring bypasses seccomp for the operations it performs",
    ),
    (
        "io_uring_enter",
        "io_uring bypasses seccomp for the operations it performs",
    ),
    (
        "io_uring_register",
        "io_uring bypasses seccomp for the operations it performs",
    ),
    ("mount", "the mount tree is Hutch's to build"),
    ("umount2", "the mount tree is Hutch's to build"),
    ("pivot_root", "the mount tree is Hutch's to build"),
    ("chroot", "the mount tree is Hutch's to build"),
    ("move_mount", "the mount tree is Hutch's to build"),
    ("open_tree", "the mount tree is Hutch's to build"),
    ("open_tree_attr", "the mount tree is Hutch's to build"),
    ("fsopen", "the mount tree is Hutch's to build"),
    ("fsmount", "the mount tree is Hutch's to build"),
    ("fsconfig", "the mount tree is Hutch's to build"),
    ("fspick", "the mount tree is Hutch's to build"),
    ("mount_setattr", "the mount tree is Hutch's to build"),
    (
        "ptrace",
        "debugging other processes; PTRACE_TRACEME would make the supervisor the tracer",
    ),
    ("process_vm_readv", "reads another process's memory"),
    ("process_vm_writev", "writes another process's memory"),
    ("kexec_load", "replaces the running kernel"),
    ("kexec_file_load", "replaces the running kernel"),
    ("init_module", "loads kernel code"),
    ("finit_module", "loads kernel code"),
    ("delete_module", "unloads kernel code"),
    ("create_module", "obsolete module loading"),
    (
        "open_by_handle_at",
        "opens files by handle, bypassing the mount tree (shocker)",
    ),
    (
        "name_to_handle_at",
        "file handles, the other half of open_by_handle_at",
    ),
    ("reboot", "reboots the host"),
    ("swapon", "host swap configuration"),
    ("swapoff", "host swap configuration"),
    ("acct", "host process accounting"),
    ("settimeofday", "sets the host clock"),
    ("clock_settime", "sets the host clock"),
    ("adjtimex", "adjusts the host clock"),
    ("clock_adjtime", "adjusts the host clock"),
    ("syslog", "the kernel log leaks host addresses and activity"),
    ("unshare", "new namespaces would undo the sandbox's view"),
    ("setns", "joining namespaces would undo the sandbox's view"),
    ("lookup_dcookie", "kernel profiling interface"),
    ("quotactl", "host quota configuration"),
    ("quotactl_fd", "host quota configuration"),
    ("iopl", "raw I/O port access"),
    ("ioperm", "raw I/O port access"),
];
