//! seccomp: the allowlist profile, its compilation to BPF, and the denial monitor.
//!
//! The flow of one spawn:
//! 1. [`compile`] in the parent, before fork: turns [`profile::PROFILE`] plus the admin-approved
//!    [`SeccompConfig::additions`] into one BPF program (everything allocated here).
//! 2. [`CompiledFilters::apply`] in the child, the last step before `execve` (after the identity
//!    switch and Landlock): sets `no_new_privs` and installs the filter. With user notification
//!    it returns the listener fd, which the child hands to the launcher with [`send_listener`]
//!    (closing its own copy) before `execve`.
//! 3. [`DenialMonitor::spawn`] in the supervisor on the listener it got with [`recv_listener`]:
//!    answers every denied syscall with `EPERM` and counts it; [`DenialMonitor::finish`] after
//!    the plugin exited returns the aggregated [`Denial`]s.
//!
//! One filter. seccompiler 0.5 compiles one match action per filter, so the program is the
//! allowlist with the `ENOSYS` answers spliced in (each filter installed costs ~0.3 ms to
//! attach and about as much again over exec/exit, so two stacked filters were measurably slower):
//! - **allowlist**: match action `ALLOW`, default action `ERRNO(EPERM)`, or `USER_NOTIF` when
//!   notification is on (seccompiler has no `USER_NOTIF` action: the program is compiled with
//!   `ERRNO(EPERM)` as a placeholder and its default-action `RET` instructions are patched, see
//!   `patch_default_action`). Numbers are matched exactly against native x86_64 numbers, so
//!   x32 calls (bit `0x40000000` set) fall to the default action; seccompiler's architecture
//!   check kills the process on any other architecture (i386 `int 0x80`). seccompiler compiles
//!   the architecture check and each syscall's argument rules; `dispatch` arranges them behind
//!   a binary search on the syscall number instead of seccompiler's linear chain (installing
//!   the linear 1500-instruction chain costs ~1 ms, the tree ~0.1 ms).
//! - **enosys**: `clone3` (every [`profile::Rule::Enosys`] entry) returns `ENOSYS`, so glibc
//!   falls back to `clone`. `splice_enosys` inserts `JEQ nr; RET ERRNO(ENOSYS)` pairs right
//!   after the allowlist's prologue (architecture check, `LD nr`), where no jump crosses, so a
//!   foreign-architecture call is still killed and an x32 call (never equal to a native
//!   number) still falls to the default action.
//!
//! See docs/seccomp.md for the profile and how admins approve additions.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompRule, TargetArch, sock_filter,
};
use serde::{Deserialize, Serialize};

mod dispatch;
mod monitor;
pub mod profile;
#[allow(unsafe_code)]
mod sys;
mod syscalls;
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;

pub use monitor::{Denial, DenialMonitor};
use profile::{HARD_DENIED, PROFILE, Rule};

/// Per-plugin seccomp configuration, from the manifest as approved by an admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompConfig {
    /// Admin-approved syscalls allowed on top of [`profile::PROFILE`], by x86_64 name. Names in
    /// [`profile::HARD_DENIED`] or allowed by the profile only with an argument rule are refused.
    pub additions: Vec<String>,
    /// Report denials through seccomp user notification (falls back to plain `EPERM` where the
    /// kernel lacks it; [`CompiledFilters::notify`] tells which one is in force).
    pub notify: bool,
}

/// Errors of the seccomp module.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An addition names no x86_64 syscall.
    #[error("seccomp addition {name:?}: no such syscall on x86_64")]
    UnknownSyscall {
        /// The name as given.
        name: String,
    },
    /// An addition names a syscall that can never be allowed.
    #[error("seccomp addition {name:?}: hard-denied ({reason}); it cannot be allowed")]
    HardDenied {
        /// The syscall.
        name: String,
        /// Why it is hard-denied.
        reason: &'static str,
    },
    /// An addition names a syscall the profile allows only with an argument rule.
    #[error(
        "seccomp addition {name:?}: the profile allows it only as {rule:?}; it cannot be widened"
    )]
    ArgumentRestricted {
        /// The syscall.
        name: String,
        /// The profile's rule for it.
        rule: Rule,
    },
    /// The profile names a syscall missing from the syscall table (a bug in the profile).
    #[error("seccomp profile entry {name:?}: no such syscall on x86_64")]
    ProfileEntry {
        /// The syscall.
        name: &'static str,
    },
    /// The compiled allowlist did not start with the prologue the `ENOSYS` splice expects.
    #[error("splice ENOSYS answers into seccomp filter allowlist: {reason}")]
    Splice {
        /// What was wrong.
        reason: &'static str,
    },
    /// seccompiler refused to compile a filter.
    #[error("compile seccomp filter {filter}: {source}")]
    Compile {
        /// Which filter.
        filter: &'static str,
        /// seccompiler's error.
        source: BackendError,
    },
    /// The compiled allowlist did not have the shape the user-notification patch expects.
    #[error("patch seccomp filter allowlist for user notification: {reason}")]
    Patch {
        /// What was wrong.
        reason: &'static str,
    },
    /// seccompiler's output did not have the shape the dispatch assembly relies on.
    #[error("assemble seccomp filter allowlist: {reason}")]
    Assemble {
        /// What was wrong.
        reason: &'static str,
    },
    /// The filters are built for x86_64 only.
    #[error("seccomp profile: unsupported architecture {arch} (x86_64 only)")]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("prctl PR_SET_NO_NEW_PRIVS: {errno}")]
    NoNewPrivs {
        /// The errno.
        errno: Errno,
    },
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed.
    #[error("install seccomp filter {filter}: {errno}")]
    Install {
        /// Which filter.
        filter: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// Passing the listener fd over a Unix socket failed.
    #[error("{op} seccomp listener fd over the launcher socket: {errno}")]
    PassFd {
        /// `send` or `receive`.
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// Setting up the denial monitor failed.
    #[error("start seccomp denial monitor for {label}: {source}")]
    Monitor {
        /// The plugin label.
        label: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The allowlist's placeholder default action, patched to `USER_NOTIF` when notifying.
const DENY_ERRNO: u32 = libc::EPERM as u32;
/// The BPF `RET` instruction class (opcodes and the class mask: [`dispatch`]).
use dispatch::{CLASS_MASK, JEQ_K, LD_W_ABS, MAX_INSNS, RET_K};
const BPF_CLASS_RET: u16 = 0x06;

/// Offsets of `arch` and `nr` in `struct seccomp_data`.
const DATA_ARCH: u32 = 4;
const DATA_NR: u32 = 0;
/// The allowlist prologue: `LD arch; JEQ x86_64, 1, 0; RET KILL_PROCESS; LD nr`.
const PROLOGUE_LEN: usize = 4;

/// The compiled BPF program, built in the parent and installed in the child.
/// Serializable so the launcher can hand it to a pre-warmed sandbox process
/// (`crate::pool`), which was forked before the spec was known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompiledFilters {
    /// The one filter: the allowlist (default `EPERM` or `USER_NOTIF`) with `ENOSYS` answers
    /// for the [`Rule::Enosys`] syscalls spliced in after its prologue.
    #[serde(with = "bpf_serde")]
    program: BpfProgram,
    /// Whether the default action is `USER_NOTIF`.
    notify: bool,
}

/// A BPF program as `(code, jt, jf, k)` tuples (seccompiler's `sock_filter`
/// has no serde support).
mod bpf_serde {
    use seccompiler::{BpfProgram, sock_filter};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &BpfProgram, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(u16, u8, u8, u32)> = p.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect();
        v.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BpfProgram, D::Error> {
        let v: Vec<(u16, u8, u8, u32)> = Vec::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(code, jt, jf, k)| sock_filter { code, jt, jf, k })
            .collect())
    }
}

/// Whether the running kernel supports `SECCOMP_RET_USER_NOTIF` (also listed as `user_notif` in
/// `/proc/sys/kernel/seccomp/actions_avail`).
pub fn user_notif_available() -> bool {
    sys::action_available(libc::SECCOMP_RET_USER_NOTIF)
}

/// The x86_64 number of syscall `name`, if there is one.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls::number(name)
}

/// Compile the profile plus `config.additions` into the filters [`CompiledFilters::apply`]
/// installs. Call it in the parent; it allocates, `apply` does not.
///
/// With `config.notify` set but no kernel support for user notification, the filters deny
/// with plain `EPERM` and [`CompiledFilters::notify`] returns false.
///
/// # Errors
/// [`SeccompError::UnknownSyscall`], [`SeccompError::HardDenied`] or
/// [`SeccompError::ArgumentRestricted`] for a bad addition; [`SeccompError::UnsupportedArch`]
/// off x86_64; [`SeccompError::Compile`] / [`SeccompError::Patch`] if BPF generation fails.
pub fn compile(config: &SeccompConfig) -> Result<CompiledFilters, SeccompError> {
    compile_with(config, user_notif_available())
}

/// [`compile`] with the kernel's user-notification support given (so the fallback can be
/// tested on a kernel that has it).
fn compile_with(
    config: &SeccompConfig,
    kernel_has_user_notif: bool,
) -> Result<CompiledFilters, SeccompError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(SeccompError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        });
    }
    let additions = validate_additions(&config.additions)?;

    let mut allow = std::collections::BTreeMap::new();
    let mut enosys = Vec::new();
    for &(name, rule, _) in PROFILE {
        let nr = syscalls::number(name).ok_or(SeccompError::ProfileEntry { name })?;
        let rules = argument_rules(rule).map_err(|source| SeccompError::Compile {
            filter: "allowlist",
            source,
        })?;
        allow.insert(nr, rules);
        if rule == Rule::Enosys {
            enosys.push(u32::try_from(nr).map_err(|_| SeccompError::ProfileEntry { name })?);
        }
    }
    for nr in additions {
        allow.insert(nr, Vec::new());
    }

    let arch = TargetArch::x86_64;
    let mut program = dispatch::assemble(
        allow,
        SeccompAction::Allow,
        SeccompAction::Errno(DENY_ERRNO),
        arch,
    )?;

    let notify = config.notify && kernel_has_user_notif;
    if config.notify && !notify {
        tracing::warn!(
            "kernel lacks seccomp user notification; denials are plain EPERM, unreported"
        );
    }
    // Patch before splicing: the patch refuses any RET it does not know, ERRNO(ENOSYS) included.
    if notify {
        patch_default_action(&mut program, libc::SECCOMP_RET_USER_NOTIF)?;
    }
    splice_enosys(&mut program, &enosys)?;
    Ok(CompiledFilters { program, notify })
}

/// Insert `JEQ nr, 0, 1; RET ERRNO(ENOSYS)` for each of `numbers` right after the allowlist's
/// prologue (`LD arch; JEQ AUDIT_ARCH_X86_64, 1, 0; RET KILL_PROCESS; LD nr`).
///
/// BPF jumps are relative and only go forward. The prologue's one jump (index 1 to the `LD nr`
/// at index 3) ends before the insertion point and every later jump starts after it, so no
/// offset changes. Each inserted `JEQ` skips only its own `RET` and leaves the accumulator
/// (the syscall number) alone, so a number that matches none continues into the allowlist
/// exactly as before. The architecture check still runs first.
///
/// # Errors
/// [`SeccompError::Splice`] if the program does not start with that prologue or would exceed
/// the kernel's 4096-instruction limit.
pub(crate) fn splice_enosys(prog: &mut BpfProgram, numbers: &[u32]) -> Result<(), SeccompError> {
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let prologue_ok = prog.len() > PROLOGUE_LEN
        && prog[0] == stmt(LD_W_ABS, DATA_ARCH)
        && (prog[1].code, prog[1].jt, prog[1].jf) == (JEQ_K, 1, 0)
        && prog[2] == stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS)
        && prog[3] == stmt(LD_W_ABS, DATA_NR);
    if !prologue_ok {
        return Err(SeccompError::Splice {
            reason: "the program does not start with arch check + LD nr",
        });
    }
    if prog.len() + 2 * numbers.len() > MAX_INSNS {
        return Err(SeccompError::Splice {
            reason: "the program would exceed 4096 instructions",
        });
    }
    let enosys = numbers.iter().flat_map(|&nr| {
        [
            sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 1,
                k: nr,
            },
            stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ]
    });
    prog.splice(PROLOGUE_LEN..PROLOGUE_LEN, enosys);
    Ok(())
}

/// Map the additions to syscall numbers, refusing unknown, hard-denied and argument-restricted
/// names. Additions already allowed unconditionally by the profile are dropped.
fn validate_additions(additions: &[String]) -> Result<Vec<i64>, SeccompError> {
    let mut out = Vec::new();
    for name in additions {
        let nr = syscalls::number(name)
            .ok_or_else(|| SeccompError::UnknownSyscall { name: name.clone() })?;
        if let Some(&(_, reason)) = HARD_DENIED.iter().find(|(n, _)| n == name) {
            return Err(SeccompError::HardDenied {
                name: name.clone(),
                reason,
            });
        }
        match PROFILE.iter().find(|(n, _, _)| n == name) {
            Some(&(_, Rule::Always, _)) => {}
            Some(&(_, rule, _)) => {
                return Err(SeccompError::ArgumentRestricted {
                    name: name.clone(),
                    rule,
                });
            }
            None => out.push(nr),
        }
    }
    Ok(out)
}

/// A 32-bit condition on argument `arg`. Every rule in the profile compares an `int` or
/// `unsigned int` argument, which the kernel truncates to 32 bits itself, so comparing the low
/// 32 bits is exact (and a 64-bit comparison would let high bits slip past a deny).
fn dword(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// The seccompiler rules (OR of ANDs) that let a syscall through under `rule`.
fn argument_rules(rule: Rule) -> Result<Vec<SeccompRule>, BackendError> {
    use profile::{CLONE_NAMESPACE_FLAGS, DENIED_IOCTLS, PERSONALITY_VALUES, SOCKET_FAMILIES};
    let one_of = |arg: u8, values: &[u64]| -> Result<Vec<SeccompRule>, BackendError> {
        values
            .iter()
            .map(|&v| SeccompRule::new(vec![dword(arg, SeccompCmpOp::Eq, v)?]))
            .collect()
    };
    match rule {
        // The spliced ENOSYS answer catches clone3 before the allowlist's decision is reached.
        Rule::Always | Rule::Enosys => Ok(Vec::new()),
        Rule::CloneWithoutNamespaces => Ok(vec![SeccompRule::new(vec![dword(
            0,
            SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
            0,
        )?])?]),
        Rule::SocketFamilies => one_of(0, SOCKET_FAMILIES),
        Rule::PersonalityQueryOnly => one_of(0, PERSONALITY_VALUES),
        Rule::IoctlWithoutTtyInjection => {
            let conds = DENIED_IOCTLS
                .iter()
                .map(|&req| dword(1, SeccompCmpOp::Ne, req))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![SeccompRule::new(conds)?])
        }
        Rule::SeccompWithoutListener => Ok(vec![SeccompRule::new(vec![dword(
            1,
            SeccompCmpOp::MaskedEq(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER),
            0,
        )?])?]),
    }
}

/// Replace the allowlist's default action (`RET ERRNO(EPERM)`, the placeholder seccompiler was
/// given) with `action` in every `RET` instruction that returns it.
///
/// seccompiler emits exactly three kinds of `RET`: `KILL_PROCESS` after the architecture check,
/// the match action (`ALLOW`) and the mismatch action (the placeholder), which it repeats after
/// each syscall's argument rules and once at the end. The patch checks that shape: at least one
/// placeholder, no `RET` of another kind (e.g. `RET A`), no other return value, and none of the
/// placeholder left afterwards; otherwise it refuses rather than install a filter it does not
/// understand.
///
/// # Errors
/// [`SeccompError::Patch`] when the program does not have the expected shape.
pub(crate) fn patch_default_action(
    prog: &mut [sock_filter],
    action: u32,
) -> Result<usize, SeccompError> {
    let placeholder = libc::SECCOMP_RET_ERRNO | DENY_ERRNO;
    let mut patched = 0;
    for insn in prog.iter_mut() {
        if insn.code & CLASS_MASK != BPF_CLASS_RET {
            continue;
        }
        if insn.code != RET_K {
            return Err(SeccompError::Patch {
                reason: "a RET that does not return a constant",
            });
        }
        match insn.k {
            k if k == placeholder => {
                insn.k = action;
                patched += 1;
            }
            libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_KILL_PROCESS => {}
            _ => {
                return Err(SeccompError::Patch {
                    reason: "a RET with an unexpected action",
                });
            }
        }
    }
    if patched == 0 {
        return Err(SeccompError::Patch {
            reason: "no default-action RET found",
        });
    }
    Ok(patched)
}

impl CompiledFilters {
    /// Whether denials go to a user-notification listener (else plain `EPERM`).
    pub fn notify(&self) -> bool {
        self.notify
    }

    /// The one BPF program [`apply`](Self::apply) installs (for inspection and tests).
    pub fn program(&self) -> &[sock_filter] {
        &self.program
    }

    /// Install the filter on the calling thread: `no_new_privs`, then the one program (with a
    /// new listener when [`notify`](Self::notify) is on). Call it in the
    /// single-threaded child as the last step before `execve`. Does not allocate.
    ///
    /// With notification, every denied syscall the caller makes blocks until a
    /// [`DenialMonitor`] answers it, so the returned listener must reach the supervisor
    /// ([`send_listener`]) before the child does anything the profile denies, and the child
    /// must not keep it across `execve` (it is close-on-exec; `send_listener` closes it).
    ///
    /// # Errors
    /// [`SeccompError::NoNewPrivs`] or [`SeccompError::Install`] with the kernel's errno.
    pub fn apply(&self) -> Result<Option<OwnedFd>, SeccompError> {
        sys::set_no_new_privs().map_err(|errno| SeccompError::NoNewPrivs { errno })?;
        let flags = if self.notify {
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
        } else {
            0
        };
        let rc =
            sys::set_mode_filter(&self.program, flags).map_err(|errno| SeccompError::Install {
                filter: "allowlist",
                errno,
            })?;
        if !self.notify {
            return Ok(None);
        }
        let raw = i32::try_from(rc).map_err(|_| SeccompError::Install {
            filter: "allowlist",
            errno: Errno::EBADF,
        })?;
        Ok(Some(sys::owned_fd(raw)))
    }
}

/// Send the listener fd over the launcher's Unix socket (`SCM_RIGHTS`, one payload byte) and
/// close the local copy. Does not allocate; safe to call in the child after
/// [`CompiledFilters::apply`] (`sendmsg` and `close` are in the profile).
///
/// # Errors
/// [`SeccompError::PassFd`] with the errno of `sendmsg`.
pub fn send_listener(sock: BorrowedFd<'_>, listener: OwnedFd) -> Result<(), SeccompError> {
    sys::send_fd(sock, listener.as_fd()).map_err(|errno| SeccompError::PassFd { op: "send", errno })
}

/// Receive a listener fd sent with [`send_listener`] (close-on-exec).
///
/// # Errors
/// [`SeccompError::PassFd`] with the errno of `recvmsg`, `ECONNRESET` if the peer closed the
/// socket, or `EBADMSG` if the message carried no fd or the wrong payload.
pub fn recv_listener(sock: BorrowedFd<'_>) -> Result<OwnedFd, SeccompError> {
    sys::recv_fd(sock).map_err(|errno| SeccompError::PassFd {
        op: "receive",
        errno,
    })
}
