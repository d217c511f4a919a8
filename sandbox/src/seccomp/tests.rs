//! Tests of the seccomp module against the real kernel. Filters are installed in forked
//! children (they cannot be removed again); the child reports syscall results over a pipe and
//! the parent asserts. Children only make raw syscalls and `_exit`, nothing that allocates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

use super::profile::{HARD_DENIED, PROFILE, Rule};
use super::*;
use seccompiler::SeccompFilter;

type TestResult = Result<(), Box<dyn std::error::Error>>;
/// What a monitored child run yields: its results, how it ended, what was denied.
type MonitoredRun = ([i64; SLOTS], WaitStatus, Vec<Denial>);

/// Number of result slots a child can report.
const SLOTS: usize = 8;
/// Marks a slot the child never filled.
const UNSET: i64 = i64::MIN;

/// A raw syscall; returns the result, or `-errno` on failure.
fn sys6(nr: i64, a: [u64; 6]) -> i64 {
    // SAFETY: tests pass integers, null, or pointers to live locals; the kernel checks pointers (EFAULT).
    let rc = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if rc < 0 {
        -i64::from(nix::errno::Errno::last_raw())
    } else {
        rc
    }
}

fn sys(nr: i64, a0: u64, a1: u64, a2: u64) -> i64 {
    sys6(nr, [a0, a1, a2, 0, 0, 0])
}

/// `_exit` without running any user-space exit handlers.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// getpid through the i386 `int 0x80` entry point; returns `eax`.
fn int80_getpid() -> i64 {
    let mut rax: i64 = 20; // __NR_getpid on i386
    // SAFETY: int 0x80 with eax=getpid reads no memory; caller-saved registers are clobbered.
    unsafe { std::arch::asm!("int 0x80", inout("rax") rax, clobber_abi("C")) };
    rax
}

/// Fork; run `f` in the child with a result array and `_exit(0)`. Returns the results and how
/// the child ended.
fn in_child<F: FnOnce(&mut [i64; SLOTS])>(
    f: F,
) -> Result<([i64; SLOTS], WaitStatus), Box<dyn std::error::Error>> {
    let (rd, wr) = nix::unistd::pipe()?;
    // SAFETY: the child runs `f` (raw syscalls only) and `_exit`s; it never returns into the harness.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rd);
            let mut out = [UNSET; SLOTS];
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut out))).is_ok();
            let bytes: [u8; SLOTS * 8] = {
                let mut b = [0u8; SLOTS * 8];
                for (i, v) in out.iter().enumerate() {
                    b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
                }
                b
            };
            let _ = nix::unistd::write(&wr, &bytes);
            exit_now(if ok { 0 } else { 101 })
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = Vec::new();
            std::fs::File::from(rd).read_to_end(&mut buf)?;
            let status = waitpid(child, None)?;
            let mut out = [UNSET; SLOTS];
            for (i, chunk) in buf.chunks_exact(8).take(SLOTS).enumerate() {
                out[i] = i64::from_ne_bytes(chunk.try_into()?);
            }
            Ok((out, status))
        }
    }
}

fn plain() -> Result<CompiledFilters, SeccompError> {
    compile(&SeccompConfig::default())
}

fn apply_or_exit(filters: &CompiledFilters) -> Option<OwnedFd> {
    match filters.apply() {
        Ok(l) => l,
        Err(_) => exit_now(99),
    }
}

fn assert_exited_ok(status: WaitStatus) {
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "child ended with {status:?}"
    );
}

const EPERM: i64 = -(libc::EPERM as i64);

// --- the table --------------------------------------------------------------------------

#[test]
fn every_table_entry_is_a_real_x86_64_syscall() -> TestResult {
    for (name, _, _) in PROFILE {
        assert!(
            syscall_number(name).is_some(),
            "profile entry {name} is not a syscall"
        );
    }
    for (name, _) in HARD_DENIED {
        assert!(
            syscall_number(name).is_some(),
            "hard-denied {name} is not a syscall"
        );
    }
    // The syscall table itself against libc's constants and the installed kernel headers.
    assert_eq!(syscall_number("read"), Some(libc::SYS_read));
    assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
    assert_eq!(syscall_number("ptrace"), Some(libc::SYS_ptrace));
    assert_eq!(syscall_number("mseal"), Some(libc::SYS_mseal));
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    let Ok(text) = std::fs::read_to_string(header) else {
        println!("SKIP header cross-check: {header} missing");
        return Ok(());
    };
    let mut checked = 0;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if let (Some("#define"), Some(sym), Some(nr)) = (w.next(), w.next(), w.next())
            && let (Some(name), Ok(nr)) = (sym.strip_prefix("__NR_"), nr.parse::<i64>())
        {
            assert_eq!(syscall_number(name), Some(nr), "{name} in {header}");
            assert_eq!(syscalls::name(nr), Some(name), "number {nr} in {header}");
            checked += 1;
        }
    }
    assert!(
        checked > 300,
        "parsed only {checked} syscalls from {header}"
    );
    assert!(
        syscalls::X86_64.windows(2).all(|w| w[0].1 < w[1].1),
        "the table is sorted by number without duplicates"
    );
    Ok(())
}

#[test]
fn profile_has_no_duplicates_and_no_hard_denied_entry() {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _, reason) in PROFILE {
        assert!(seen.insert(*name), "{name} listed twice");
        assert!(!reason.is_empty(), "{name} has no reason");
        assert!(
            !HARD_DENIED.iter().any(|(h, _)| h == name),
            "{name} is both allowed and hard-denied"
        );
    }
}

#[test]
fn docs_name_every_hard_denied_and_restricted_syscall() -> TestResult {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/seccomp.md");
    let doc = std::fs::read_to_string(path)?;
    let restricted = PROFILE.iter().filter(|e| e.1 != Rule::Always).map(|e| e.0);
    for name in HARD_DENIED.iter().map(|e| e.0).chain(restricted) {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/seccomp.md does not mention `{name}`"
        );
    }
    Ok(())
}

// --- additions --------------------------------------------------------------------------

fn with_additions(names: &[&str]) -> Result<CompiledFilters, SeccompError> {
    compile(&SeccompConfig {
        additions: names.iter().map(|s| s.to_string()).collect(),
        notify: false,
    })
}

#[test]
fn unknown_addition_is_an_error_naming_it() {
    let err = with_additions(&["getpid", "frobnicate"]).unwrap_err();
    assert!(matches!(&err, SeccompError::UnknownSyscall { name } if name == "frobnicate"));
    assert!(err.to_string().contains("\"frobnicate\""), "{err}");
}

#[test]
fn hard_denied_addition_is_an_error() {
    for (name, _) in HARD_DENIED {
        let err = with_additions(&[name]).unwrap_err();
        assert!(
            matches!(&err, SeccompError::HardDenied { name: n, .. } if n == name),
            "{name}: {err}"
        );
    }
}

#[test]
fn argument_restricted_addition_is_an_error() {
    for (name, rule, _) in PROFILE.iter().filter(|e| e.1 != Rule::Always) {
        let err = with_additions(&[name]).unwrap_err();
        assert!(
            matches!(&err, SeccompError::ArgumentRestricted { rule: r, .. } if r == rule),
            "{name}: {err}"
        );
    }
}

#[test]
fn an_addition_allows_its_syscall() -> TestResult {
    // sysfs(3) (number of filesystem types) is harmless and not in the profile.
    let base = plain()?;
    let added = with_additions(&["sysfs"])?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&base);
        out[0] = sys(libc::SYS_sysfs, 3, 0, 0);
    })?;
    assert_exited_ok(st);
    assert_eq!(r[0], EPERM);
    let (r, st) = in_child(|out| {
        apply_or_exit(&added);
        out[0] = sys(libc::SYS_sysfs, 3, 0, 0);
    })?;
    assert_exited_ok(st);
    assert!(r[0] > 0, "sysfs with the addition returned {}", r[0]);
    Ok(())
}

// --- the dispatch tree ----------------------------------------------------------------------

/// seccompiler's own linear program for the same allowlist, to compare against.
fn linear_allowlist() -> Result<BpfProgram, Box<dyn std::error::Error>> {
    let mut allow = std::collections::BTreeMap::new();
    for &(name, rule, _) in PROFILE {
        let nr = syscall_number(name).ok_or("profile entry")?;
        allow.insert(nr, argument_rules(rule)?);
    }
    let f = SeccompFilter::new(
        allow,
        SeccompAction::Errno(DENY_ERRNO),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(BpfProgram::try_from(f)?)
}

#[test]
fn dispatch_tree_decides_exactly_like_the_linear_filter() -> TestResult {
    use super::dispatch::interp::{Data, run};
    let linear = linear_allowlist()?;
    let tree = plain()?.program().to_vec();
    // The one program differs from the linear allowlist only by the spliced ENOSYS answers.
    let enosys_ret = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let enosys: Vec<u32> = PROFILE
        .iter()
        .filter(|e| e.1 == Rule::Enosys)
        .map(|e| syscall_number(e.0).map(|n| n as u32).ok_or("profile entry"))
        .collect::<Result<_, _>>()?;
    assert!(enosys.contains(&(libc::SYS_clone3 as u32)));
    assert!(
        tree.len() < linear.len(),
        "{} vs {}",
        tree.len(),
        linear.len()
    );
    let arches = [
        0xc000_003e, /* x86_64 */
        0x4000_0003, /* i386 */
        0xc000_00b7, /* aarch64 */
    ];
    let mut numbers: Vec<u32> = (0..=600).collect();
    numbers.extend((0..=600).map(|n| 0x4000_0000 | n));
    numbers.extend([0x3fff_ffff, 0x7fff_ffff, 0x8000_0000, u32::MAX]);
    let specials: Vec<u64> = [
        0,
        1,
        2,
        10,
        17,
        libc::AF_PACKET as u64,
        libc::AF_NETLINK as u64,
        libc::TIOCSTI,
        libc::TIOCLINUX,
        libc::TCGETS,
        libc::CLONE_NEWUSER as u64,
        libc::CLONE_NEWNS as u64 | libc::SIGCHLD as u64,
        0x80,
        0x11,
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
        0xffff_ffff,
        libc::ADDR_NO_RANDOMIZE as u64,
    ]
    .into_iter()
    .flat_map(|v| [v, v | (1 << 32), v | 0xffff_ffff_0000_0000])
    .collect();
    let mut args_list = vec![[0u64; 6]];
    for &v in &specials {
        for idx in 0..2 {
            let mut a = [0u64; 6];
            a[idx] = v;
            args_list.push(a);
        }
    }
    let mut checked = 0u64;
    for &arch in &arches {
        for &nr in &numbers {
            for args in &args_list {
                let d = Data {
                    nr,
                    arch,
                    args: *args,
                };
                let (mut l, t) = (run(&linear, &d), run(&tree, &d));
                if arch == 0xc000_003e && enosys.contains(&nr) {
                    l = enosys_ret;
                }
                assert_eq!(l, t, "nr {nr:#x} arch {arch:#x} args {args:x?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100_000);
    // Spot checks of the decisions themselves.
    let x86 = |nr: i64, args: [u64; 6]| {
        run(
            &tree,
            &Data {
                nr: nr as u32,
                arch: 0xc000_003e,
                args,
            },
        )
    };
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    assert_eq!(x86(libc::SYS_read, [0; 6]), libc::SECCOMP_RET_ALLOW);
    assert_eq!(x86(libc::SYS_ptrace, [0; 6]), eperm);
    assert_eq!(x86(libc::SYS_clone3, [0; 6]), enosys_ret);
    assert_eq!(
        x86(syscalls::X32_SYSCALL_BIT | libc::SYS_clone3, [0; 6]),
        eperm
    );
    assert_eq!(
        x86(libc::SYS_ioctl, [0, libc::TIOCSTI | 1 << 32, 0, 0, 0, 0]),
        eperm
    );
    assert_eq!(
        x86(libc::SYS_ioctl, [0, libc::TCGETS, 0, 0, 0, 0]),
        libc::SECCOMP_RET_ALLOW
    );
    let i386 = run(
        &tree,
        &Data {
            nr: 20,
            arch: 0x4000_0003,
            args: [0; 6],
        },
    );
    assert_eq!(i386, libc::SECCOMP_RET_KILL_PROCESS);
    Ok(())
}

// --- the user-notification patch ---------------------------------------------------------

fn rets(prog: &[sock_filter]) -> Vec<u32> {
    prog.iter()
        .filter(|i| i.code == RET_K)
        .map(|i| i.k)
        .collect()
}

#[test]
fn notify_patch_replaces_exactly_the_default_action() -> TestResult {
    if !user_notif_available() {
        println!("SKIP notify_patch: kernel lacks user notification");
        return Ok(());
    }
    let plain = plain()?;
    let notify = compile(&SeccompConfig {
        additions: vec![],
        notify: true,
    })?;
    assert!(notify.notify());
    let (a, b) = (plain.program(), notify.program());
    assert_eq!(a.len(), b.len());
    let placeholder = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut patched = 0;
    for (x, y) in a.iter().zip(b) {
        if x == y {
            continue;
        }
        assert_eq!(
            (x.code, x.k),
            (RET_K, placeholder),
            "only placeholder RETs change"
        );
        assert_eq!((y.code, y.k), (RET_K, libc::SECCOMP_RET_USER_NOTIF));
        patched += 1;
    }
    // At least the RET after each rule block plus each block's own mismatch RET.
    let conditional = PROFILE
        .iter()
        .filter(|e| e.1 != Rule::Always && e.1 != Rule::Enosys);
    assert!(
        patched >= 2 * conditional.count(),
        "patched only {patched} RETs"
    );
    assert_eq!(
        patched,
        rets(a).iter().filter(|&&k| k == placeholder).count()
    );
    for k in rets(b) {
        assert!(
            [
                libc::SECCOMP_RET_ALLOW,
                libc::SECCOMP_RET_KILL_PROCESS,
                libc::SECCOMP_RET_USER_NOTIF,
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            ]
            .contains(&k),
            "unexpected RET {k:#x}"
        );
    }
    // The architecture check comes first and kills.
    assert_eq!(b[2].k, libc::SECCOMP_RET_KILL_PROCESS);
    Ok(())
}

#[test]
fn without_kernel_support_notify_falls_back_to_plain_eperm() -> TestResult {
    let config = SeccompConfig {
        additions: vec![],
        notify: true,
    };
    let f = compile_with(&config, false)?;
    assert!(!f.notify(), "reports notify=false");
    assert_eq!(f.program(), plain()?.program());
    assert!(!rets(f.program()).contains(&libc::SECCOMP_RET_USER_NOTIF));
    let (r, st) = in_child(|out| {
        out[0] = match f.apply() {
            Ok(None) => 0,
            Ok(Some(_)) => 1,
            Err(_) => exit_now(99),
        };
        out[1] = sys(libc::SYS_ptrace, libc::PTRACE_TRACEME as u64, 0, 0);
    })?;
    assert_exited_ok(st);
    assert_eq!(r[0], 0, "no listener without notification");
    assert_eq!(r[1], EPERM, "still denied");
    Ok(())
}

#[test]
fn notify_patch_refuses_programs_it_does_not_understand() {
    let ret = |k| sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k,
    };
    let mut no_default = vec![ret(libc::SECCOMP_RET_ALLOW)];
    assert!(patch_default_action(&mut no_default, libc::SECCOMP_RET_USER_NOTIF).is_err());
    let mut odd_action = vec![
        ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ret(libc::SECCOMP_RET_TRAP),
    ];
    assert!(patch_default_action(&mut odd_action, libc::SECCOMP_RET_USER_NOTIF).is_err());
    let mut ret_a = vec![
        ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        sock_filter {
            code: 0x16, // BPF_RET | BPF_A
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    assert!(patch_default_action(&mut ret_a, libc::SECCOMP_RET_USER_NOTIF).is_err());
}

// --- the ENOSYS splice -------------------------------------------------------------------

#[test]
fn enosys_splice_sits_after_the_prologue_and_refuses_other_shapes() -> TestResult {
    let prog = plain()?.program().to_vec();
    // LD arch; JEQ x86_64, 1, 0; RET KILL; LD nr; then JEQ clone3, 0, 1; RET ERRNO(ENOSYS).
    assert_eq!((prog[0].code, prog[0].k), (LD_W_ABS, DATA_ARCH));
    assert_eq!((prog[1].code, prog[1].jt, prog[1].jf), (JEQ_K, 1, 0));
    assert_eq!(prog[2].k, libc::SECCOMP_RET_KILL_PROCESS);
    assert_eq!((prog[3].code, prog[3].k), (LD_W_ABS, DATA_NR));
    let jeq = &prog[PROLOGUE_LEN];
    assert_eq!(
        (jeq.code, jeq.jt, jeq.jf, jeq.k),
        (JEQ_K, 0, 1, libc::SYS_clone3 as u32)
    );
    assert_eq!(
        (prog[PROLOGUE_LEN + 1].code, prog[PROLOGUE_LEN + 1].k),
        (RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32)
    );
    // A program without the prologue is refused, not spliced.
    let mut short: BpfProgram = prog[..3].to_vec();
    assert!(matches!(
        splice_enosys(&mut short, &[1]),
        Err(SeccompError::Splice { .. })
    ));
    let mut shifted: BpfProgram = prog[1..].to_vec();
    assert!(matches!(
        splice_enosys(&mut shifted, &[1]),
        Err(SeccompError::Splice { .. })
    ));
    Ok(())
}

/// `Seccomp_filters:` from /proc/self/status, with raw syscalls only (safe after fork).
fn seccomp_filter_count() -> i64 {
    let path = c"/proc/self/status";
    let fd = sys(
        libc::SYS_openat,
        libc::AT_FDCWD as u64,
        path.as_ptr() as u64,
        libc::O_RDONLY as u64,
    );
    if fd < 0 {
        return fd;
    }
    let mut buf = [0u8; 16384];
    let mut len = 0usize;
    while len < buf.len() {
        let n = sys(
            libc::SYS_read,
            fd as u64,
            buf[len..].as_mut_ptr() as u64,
            (buf.len() - len) as u64,
        );
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    sys(libc::SYS_close, fd as u64, 0, 0);
    let key = b"\nSeccomp_filters:";
    let Some(at) = buf[..len].windows(key.len()).position(|w| w == key) else {
        return -1;
    };
    let mut count = 0i64;
    for &c in buf[at + key.len()..len]
        .iter()
        .skip_while(|c| **c == b' ' || **c == b'\t')
    {
        if !c.is_ascii_digit() {
            break;
        }
        count = count * 10 + i64::from(c - b'0');
    }
    count
}

#[test]
fn exactly_one_filter_is_installed() -> TestResult {
    let f = plain()?;
    let (r, st) = in_child(|out| {
        out[0] = seccomp_filter_count();
        apply_or_exit(&f);
        out[1] = seccomp_filter_count();
        out[2] = sys(libc::SYS_clone3, 0, 88, 0);
        out[3] = sys(libc::SYS_getpid, 0, 0, 0);
        out[4] = sys(libc::SYS_ptrace, libc::PTRACE_TRACEME as u64, 0, 0);
    })?;
    assert_exited_ok(st);
    assert_eq!(r[0], 0, "no filter before apply");
    assert_eq!(r[1], 1, "apply installs exactly one filter");
    assert_eq!(r[2], -(libc::ENOSYS as i64), "clone3");
    assert!(r[3] > 0, "getpid: {}", r[3]);
    assert_eq!(r[4], EPERM, "ptrace");

    let Some(f) = notifying()? else {
        return Ok(());
    };
    let (r, st, denials) = with_monitor(&f, |out| {
        out[1] = seccomp_filter_count();
        out[2] = sys(libc::SYS_clone3, 0, 88, 0);
        out[3] = sys(libc::SYS_getpid, 0, 0, 0);
        out[4] = sys(libc::SYS_ptrace, libc::PTRACE_TRACEME as u64, 0, 0);
    })?;
    assert_exited_ok(st);
    assert_eq!(r[1], 1, "one filter with notification too");
    assert_eq!(r[2], -(libc::ENOSYS as i64), "clone3");
    assert!(r[3] > 0, "getpid: {}", r[3]);
    assert_eq!(r[4], EPERM, "ptrace answered by the monitor");
    assert_eq!(count_of(&denials, "ptrace"), Some(1), "{denials:?}");
    assert_eq!(denials.len(), 1, "only ptrace was denied: {denials:?}");
    Ok(())
}

// --- the filters in the kernel ------------------------------------------------------------

#[test]
fn allowed_calls_work_and_denied_calls_get_eperm() -> TestResult {
    let f = plain()?;
    let path = CString::new("/proc/self/status")?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&f);
        out[0] = sys(libc::SYS_getpid, 0, 0, 0);
        out[1] = sys(
            libc::SYS_openat,
            libc::AT_FDCWD as u64,
            path.as_ptr() as u64,
            0,
        );
        out[2] = sys(libc::SYS_syslog, 10, 0, 0); // SYSLOG_ACTION_SIZE_BUFFER
        out[3] = sys(libc::SYS_ptrace, libc::PTRACE_TRACEME as u64, 0, 0);
        out[4] = sys(libc::SYS_personality, 0xffff_ffff, 0, 0);
        out[5] = sys(libc::SYS_personality, libc::ADDR_NO_RANDOMIZE as u64, 0, 0);
        // seccomp with a new listener: refused before the kernel would even read the program.
        let flags = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        out[6] = sys(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as u64,
            flags,
            0,
        );
        out[7] = sys(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as u64,
            0,
            0,
        );
    })?;
    assert_exited_ok(st);
    assert!(r[0] > 0, "getpid: {}", r[0]);
    assert!(r[1] >= 0, "openat: {}", r[1]);
    assert_eq!(r[2], EPERM, "syslog");
    assert_eq!(r[3], EPERM, "ptrace");
    assert!(r[4] >= 0, "personality query: {}", r[4]);
    assert_eq!(r[5], EPERM, "personality ADDR_NO_RANDOMIZE");
    assert_eq!(r[6], EPERM, "seccomp NEW_LISTENER");
    assert_eq!(
        r[7],
        -(libc::EFAULT as i64),
        "seccomp without listener reaches the kernel"
    );
    Ok(())
}

#[test]
fn clone3_is_enosys_and_clone_is_refused_namespace_flags() -> TestResult {
    let f = plain()?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&f);
        // clone3 with a null args pointer: EFAULT if it reached the kernel.
        out[0] = sys(libc::SYS_clone3, 0, 88, 0);
        let ns = (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64;
        out[1] = sys(libc::SYS_clone, ns, 0, 0);
        if out[1] == 0 {
            exit_now(0); // the clone succeeded and we are the new child
        }
        out[2] = sys(
            libc::SYS_clone,
            (libc::CLONE_NEWNET | libc::SIGCHLD) as u64,
            0,
            0,
        );
        if out[2] == 0 {
            exit_now(0);
        }
        // A plain fork still works (glibc's fork uses clone without namespace flags).
        out[3] = sys(libc::SYS_clone, libc::SIGCHLD as u64, 0, 0);
        if out[3] == 0 {
            exit_now(7);
        }
        let mut status: i32 = 0;
        let st_ptr = &mut status as *mut i32 as u64;
        out[4] = sys(libc::SYS_wait4, out[3] as u64, st_ptr, 0);
        out[5] = i64::from(status);
        out[6] = sys(libc::SYS_unshare, libc::CLONE_NEWNS as u64, 0, 0);
    })?;
    assert_exited_ok(st);
    assert_eq!(r[0], -(libc::ENOSYS as i64), "clone3");
    assert_eq!(r[1], EPERM, "clone CLONE_NEWUSER");
    assert_eq!(r[2], EPERM, "clone CLONE_NEWNET");
    assert!(r[3] > 0, "plain clone: {}", r[3]);
    assert_eq!(r[4], r[3], "wait4");
    assert!(libc::WIFEXITED(r[5] as i32) && libc::WEXITSTATUS(r[5] as i32) == 7);
    assert_eq!(r[6], EPERM, "unshare");
    Ok(())
}

#[test]
fn socket_only_unix_and_inet() -> TestResult {
    let f = plain()?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&f);
        let stream = libc::SOCK_STREAM as u64;
        out[0] = sys(libc::SYS_socket, libc::AF_UNIX as u64, stream, 0);
        out[1] = sys(libc::SYS_socket, libc::AF_INET as u64, stream, 0);
        out[2] = sys(libc::SYS_socket, libc::AF_INET6 as u64, stream, 0);
        out[3] = sys(
            libc::SYS_socket,
            libc::AF_PACKET as u64,
            libc::SOCK_RAW as u64,
            0,
        );
        out[4] = sys(
            libc::SYS_socket,
            libc::AF_NETLINK as u64,
            libc::SOCK_RAW as u64,
            0,
        );
        out[5] = sys(
            libc::SYS_socket,
            libc::AF_ALG as u64,
            libc::SOCK_SEQPACKET as u64,
            0,
        );
        out[6] = sys(libc::SYS_socket, libc::AF_VSOCK as u64, stream, 0);
        // High bits on the family: the kernel takes an int, so this is AF_PACKET again.
        let hi = (1u64 << 32) | libc::AF_PACKET as u64;
        out[7] = sys(libc::SYS_socket, hi, libc::SOCK_RAW as u64, 0);
    })?;
    assert_exited_ok(st);
    assert!(
        r[0] >= 0 && r[1] >= 0 && r[2] >= 0,
        "unix/inet/inet6: {r:?}"
    );
    assert_eq!(
        &r[3..8],
        &[EPERM; 5],
        "packet, netlink, alg, vsock, packet|hi"
    );
    Ok(())
}

#[test]
fn tiocsti_and_tioclinux_refused_even_with_high_bits() -> TestResult {
    let f = plain()?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&f);
        let c = b'x';
        let p = &c as *const u8 as u64;
        let bad_fd = u64::MAX; // -1: EBADF if the call reaches the kernel
        out[0] = sys(libc::SYS_ioctl, bad_fd, libc::TIOCSTI, p);
        out[1] = sys(libc::SYS_ioctl, bad_fd, (1u64 << 32) | libc::TIOCSTI, p);
        out[2] = sys(
            libc::SYS_ioctl,
            bad_fd,
            0xffff_ffff_0000_0000 | libc::TIOCSTI,
            p,
        );
        out[3] = sys(libc::SYS_ioctl, bad_fd, libc::TIOCLINUX, p);
        out[4] = sys(libc::SYS_ioctl, bad_fd, (1u64 << 63) | libc::TIOCLINUX, p);
        out[5] = sys(libc::SYS_ioctl, bad_fd, libc::TCGETS, p);
        out[6] = sys(libc::SYS_ioctl, bad_fd, (1u64 << 32) | libc::TCGETS, p);
    })?;
    assert_exited_ok(st);
    assert_eq!(&r[0..5], &[EPERM; 5], "TIOCSTI/TIOCLINUX variants");
    let ebadf = -(libc::EBADF as i64);
    assert_eq!(&r[5..7], &[ebadf; 2], "other ioctls reach the kernel");
    Ok(())
}

#[test]
fn x32_syscalls_are_refused() -> TestResult {
    let f = plain()?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&f);
        out[0] = sys(syscalls::X32_SYSCALL_BIT | libc::SYS_getpid, 0, 0, 0);
        out[1] = sys(syscalls::X32_SYSCALL_BIT | libc::SYS_read, 0, 0, 0);
        out[2] = sys(libc::SYS_getpid, 0, 0, 0);
    })?;
    assert_exited_ok(st);
    assert_eq!(&r[0..2], &[EPERM; 2], "x32 getpid/read");
    assert!(r[2] > 0);
    Ok(())
}

#[test]
fn i386_int80_is_killed() -> TestResult {
    // Control: without the filter, int 0x80 getpid works on this kernel (IA32 emulation on).
    let (r, st) = in_child(|out| out[0] = int80_getpid())?;
    let emulation = matches!(st, WaitStatus::Exited(_, 0)) && r[0] > 0;
    println!("ia32 emulation without the filter: {emulation} ({st:?})");
    let f = plain()?;
    let (r, st) = in_child(|out| {
        apply_or_exit(&f);
        out[0] = int80_getpid();
    })?;
    if emulation {
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "int 0x80 under the filter: {st:?} {r:?}"
        );
    } else {
        assert!(!matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }
    Ok(())
}

// --- user notification --------------------------------------------------------------------

fn notifying() -> Result<Option<CompiledFilters>, SeccompError> {
    if !user_notif_available() {
        println!("SKIP: kernel lacks seccomp user notification");
        return Ok(None);
    }
    compile(&SeccompConfig {
        additions: vec![],
        notify: true,
    })
    .map(Some)
}

/// Fork a child that applies `f`'s filters, sends the listener back, then runs `body`.
/// Returns the child's results, its exit status and the monitor's denials.
fn with_monitor<B: FnOnce(&mut [i64; SLOTS])>(
    filters: &CompiledFilters,
    body: B,
) -> Result<MonitoredRun, Box<dyn std::error::Error>> {
    let (parent_sock, child_sock) = UnixStream::pair()?;
    let (rd, wr) = nix::unistd::pipe()?;
    // SAFETY: the child makes raw syscalls only and `_exit`s; it never returns into the harness.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rd);
            drop(parent_sock);
            let Some(listener) = apply_or_exit(filters) else {
                exit_now(98)
            };
            if send_listener(child_sock.as_fd(), listener).is_err() {
                exit_now(97);
            }
            let mut out = [UNSET; SLOTS];
            body(&mut out);
            let mut b = [0u8; SLOTS * 8];
            for (i, v) in out.iter().enumerate() {
                b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
            }
            let _ = nix::unistd::write(&wr, &b);
            exit_now(0)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            drop(child_sock);
            let listener = recv_listener(parent_sock.as_fd());
            let monitor = match listener {
                Ok(l) => Some(DenialMonitor::spawn(l, "test-plugin".into())?),
                Err(e) => {
                    println!("no listener: {e}");
                    None
                }
            };
            let mut buf = Vec::new();
            std::fs::File::from(rd).read_to_end(&mut buf)?;
            let status = waitpid(child, None)?;
            let denials = monitor.map(DenialMonitor::finish).unwrap_or_default();
            let mut out = [UNSET; SLOTS];
            for (i, chunk) in buf.chunks_exact(8).take(SLOTS).enumerate() {
                out[i] = i64::from_ne_bytes(chunk.try_into()?);
            }
            Ok((out, status, denials))
        }
    }
}

fn count_of(denials: &[Denial], name: &str) -> Option<u64> {
    denials.iter().find(|d| d.syscall == name).map(|d| d.count)
}

#[test]
fn monitor_reports_ptrace_and_aggregates_a_spinning_denial() -> TestResult {
    let Some(f) = notifying()? else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let (r, st, denials) = with_monitor(&f, |out| {
        out[0] = sys(libc::SYS_ptrace, libc::PTRACE_TRACEME as u64, 0, 0);
        let mut eperm = 0;
        for _ in 0..10_000 {
            if sys(libc::SYS_syslog, 10, 0, 0) == EPERM {
                eperm += 1;
            }
        }
        out[1] = eperm;
        out[2] = sys(syscalls::X32_SYSCALL_BIT | libc::SYS_getpid, 0, 0, 0);
        out[3] = sys(libc::SYS_getpid, 0, 0, 0);
        out[4] = sys(libc::SYS_clone3, 0, 88, 0);
    })?;
    println!(
        "10002 notified denials in {:?} (child run included)",
        started.elapsed()
    );
    assert_exited_ok(st);
    assert_eq!(r[0], EPERM, "ptrace answered EPERM by the monitor");
    assert_eq!(r[1], 10_000, "every syslog answered EPERM");
    assert_eq!(r[2], EPERM, "x32 getpid");
    assert!(r[3] > 0, "allowed calls are not notified");
    assert_eq!(
        r[4],
        -(libc::ENOSYS as i64),
        "clone3 stays ENOSYS with notification on"
    );
    assert_eq!(count_of(&denials, "ptrace"), Some(1), "{denials:?}");
    assert_eq!(count_of(&denials, "syslog"), Some(10_000), "{denials:?}");
    assert_eq!(count_of(&denials, "x32:getpid"), Some(1), "{denials:?}");
    assert_eq!(denials.len(), 3, "nothing else was denied: {denials:?}");
    let ptrace = denials.iter().find(|d| d.syscall == "ptrace");
    assert_eq!(
        ptrace.map(|d| d.first_args[0]),
        Some(libc::PTRACE_TRACEME as u64)
    );
    Ok(())
}

#[test]
fn the_monitor_closes_a_listener_whose_filter_lost_its_last_user() -> TestResult {
    let Some(f) = notifying()? else {
        return Ok(());
    };
    let (parent_sock, child_sock) = UnixStream::pair()?;
    // SAFETY: the child makes raw syscalls only and `_exit`s; it never returns into the harness.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let Some(listener) = apply_or_exit(&f) else {
                exit_now(98)
            };
            if send_listener(child_sock.as_fd(), listener).is_err() {
                exit_now(97);
            }
            // Wait until the parent's monitor runs, then one denied call, then exit.
            let mut b = [0u8; 1];
            if nix::unistd::read(&child_sock, &mut b) != Ok(1) {
                exit_now(96);
            }
            exit_now(
                if sys(libc::SYS_ptrace, libc::PTRACE_TRACEME as u64, 0, 0) == EPERM {
                    0
                } else {
                    95
                },
            )
        }
        ForkResult::Parent { child } => {
            drop(child_sock);
            let monitor = DenialMonitor::spawn(recv_listener(parent_sock.as_fd())?, "hup".into())?;
            assert!(monitor.listener_open(), "open while the plugin runs");
            nix::unistd::write(&parent_sock, b"g")?;
            assert_exited_ok(waitpid(child, None)?);
            // The filter's last user is gone: the monitor thread closes the listener at that
            // `EPOLLHUP`, before (and without) `finish`.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while monitor.listener_open() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(
                !monitor.listener_open(),
                "the listener is closed at the filter's orphaning"
            );
            let denials = monitor.finish();
            assert_eq!(count_of(&denials, "ptrace"), Some(1), "{denials:?}");
            assert_eq!(denials.len(), 1, "{denials:?}");
            Ok(())
        }
    }
}

#[test]
fn finish_returns_while_the_plugin_still_spins() -> TestResult {
    let Some(f) = notifying()? else {
        return Ok(());
    };
    let (parent_sock, child_sock) = UnixStream::pair()?;
    let (rd, wr) = nix::unistd::pipe()?;
    // SAFETY: the child makes raw syscalls only and `_exit`s; it never returns into the harness.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rd);
            let Some(listener) = apply_or_exit(&f) else {
                exit_now(98)
            };
            if send_listener(child_sock.as_fd(), listener).is_err() {
                exit_now(97);
            }
            // Spin on a denied call until the monitor is gone (then the kernel answers ENOSYS).
            let mut eperm: i64 = 0;
            let last = loop {
                match sys(libc::SYS_syslog, 10, 0, 0) {
                    EPERM => eperm += 1,
                    other => break other,
                }
            };
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&eperm.to_ne_bytes());
            b[8..].copy_from_slice(&last.to_ne_bytes());
            let _ = nix::unistd::write(&wr, &b);
            exit_now(0)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let monitor = DenialMonitor::spawn(recv_listener(parent_sock.as_fd())?, "spin".into())?;
            let denials = monitor.finish();
            let mut buf = Vec::new();
            std::fs::File::from(rd).read_to_end(&mut buf)?;
            let status = waitpid(child, None)?;
            assert_exited_ok(status);
            assert_eq!(buf.len(), 16, "child report");
            let eperm = i64::from_ne_bytes(buf[..8].try_into()?);
            let last = i64::from_ne_bytes(buf[8..].try_into()?);
            assert_eq!(
                last,
                -(libc::ENOSYS as i64),
                "denied calls fail once the monitor is gone"
            );
            let counted = count_of(&denials, "syslog").unwrap_or(0);
            assert_eq!(
                counted as i64, eperm,
                "every EPERM the child got was counted"
            );
            Ok(())
        }
    }
}

#[test]
fn listener_passes_over_a_socketpair() -> TestResult {
    let (a, b) = UnixStream::pair()?;
    let (rd, _wr) = nix::unistd::pipe()?;
    send_listener(a.as_fd(), rd)?;
    let got = recv_listener(b.as_fd())?;
    let flags = nix::fcntl::fcntl(&got, nix::fcntl::FcntlArg::F_GETFD)?;
    assert!(
        flags & libc::FD_CLOEXEC != 0,
        "received fd is close-on-exec"
    );
    // A message without an fd is refused.
    nix::unistd::write(&a, b"F")?;
    assert!(matches!(
        recv_listener(b.as_fd()),
        Err(SeccompError::PassFd {
            errno: Errno::EBADMSG,
            ..
        })
    ));
    drop(a);
    assert!(recv_listener(b.as_fd()).is_err());
    assert!(got.as_raw_fd() >= 0);
    Ok(())
}

// --- real programs under the filter ---------------------------------------------------------

/// Run `argv` under the filters (notification on when available) with stdout to a pipe.
/// Returns (exit status, stdout, denials).
fn run_program(
    argv: &[&str],
) -> Result<(WaitStatus, String, Vec<Denial>), Box<dyn std::error::Error>> {
    let filters = match notifying()? {
        Some(f) => f,
        None => plain()?,
    };
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(*a))
        .collect::<Result<_, _>>()?;
    let mut argp: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let env = [
        CString::new("PATH=/usr/bin:/bin")?,
        CString::new("LANG=C.UTF-8")?,
        CString::new("HOME=/tmp")?,
    ];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let (out_rd, out_wr) = nix::unistd::pipe()?;
    let (parent_sock, child_sock) = UnixStream::pair()?;
    // SAFETY: the child only dup2s, applies the prebuilt filters, passes the fd and execs.
    match unsafe { fork() }? {
        ForkResult::Child => {
            if nix::unistd::dup2_stdout(&out_wr).is_err() {
                exit_now(96);
            }
            if let Some(listener) = apply_or_exit(&filters)
                && send_listener(child_sock.as_fd(), listener).is_err()
            {
                exit_now(97);
            }
            // SAFETY: argp/envp are null-terminated arrays of pointers into CStrings still alive.
            unsafe { libc::execve(argp[0], argp.as_ptr(), envp.as_ptr()) };
            exit_now(95)
        }
        ForkResult::Parent { child } => {
            drop(out_wr);
            drop(child_sock);
            let monitor = if filters.notify() {
                Some(DenialMonitor::spawn(
                    recv_listener(parent_sock.as_fd())?,
                    "prog".into(),
                )?)
            } else {
                None
            };
            let mut stdout = String::new();
            std::fs::File::from(out_rd).read_to_string(&mut stdout)?;
            let status = waitpid(child, None)?;
            let denials = monitor.map(DenialMonitor::finish).unwrap_or_default();
            Ok((status, stdout, denials))
        }
    }
}

#[test]
fn python_stdlib_runs_under_the_profile() -> TestResult {
    let script = r#"
import json, hashlib, ssl, subprocess, threading, tempfile, os, socket, sqlite3, asyncio
ctx = ssl.create_default_context()
res = []
t = threading.Thread(target=lambda: res.append(hashlib.sha256(b"abc").hexdigest()[:8]))
t.start(); t.join()
sub = subprocess.run(["/bin/sh", "-c", "echo sub"], capture_output=True, check=True).stdout.decode().strip()
with tempfile.TemporaryDirectory() as d:
    db = sqlite3.connect(os.path.join(d, "x.db")); db.execute("create table t(x)"); db.commit(); db.close()
a, b = socket.socketpair(); a.send(b"y"); got = b.recv(1).decode()
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept(); c.send(b"z"); got += s.recv(1).decode()
asyncio.run(asyncio.sleep(0))
import multiprocessing
with multiprocessing.Pool(2) as pool:
    sq = sum(pool.map(abs, [-1, -2, 3]))
print(json.dumps({"h": res[0], "sub": sub, "sock": got, "pool": sq}))
"#;
    let (st, out, denials) = run_program(&["/usr/bin/python3", "-c", script])?;
    assert_exited_ok(st);
    assert_eq!(
        out.trim(),
        r#"{"h": "ba7816bf", "sub": "sub", "sock": "yz", "pool": 6}"#
    );
    assert!(
        denials.is_empty(),
        "python needed denied syscalls: {denials:?}"
    );
    Ok(())
}

#[test]
fn shell_and_coreutils_run_under_the_profile() -> TestResult {
    let script = "set -e; for i in 1 2 3; do echo $i; done | wc -l; ls -la / >/dev/null; echo ls; \
                  d=$(mktemp -d); cp -a /etc/hostname $d/h; ln -s h $d/l; chmod 600 $d/h; \
                  touch -d @0 $d/h; stat $d/l >/dev/null; du -s $d >/dev/null; df / >/dev/null; \
                  tar -czf $d/t.tgz -C $d h; tar -tzf $d/t.tgz >/dev/null; \
                  find $d -name h | xargs sha256sum >/dev/null; \
                  printf 'b\\na\\n' | sort | head -1 | sed s/a/x/ | awk '{print $1}' | grep -q x; \
                  timeout 5 sleep 0.01; id >/dev/null; nproc >/dev/null; env >/dev/null; \
                  uname -a >/dev/null; date +%Y >/dev/null; (sleep 0.01 & wait); rm -r $d; echo done";
    let (st, out, denials) = run_program(&["/bin/sh", "-c", script])?;
    assert_exited_ok(st);
    assert_eq!(out, "3\nls\ndone\n");
    assert!(denials.is_empty(), "sh needed denied syscalls: {denials:?}");
    Ok(())
}

#[test]
fn numpy_runs_under_the_profile() -> TestResult {
    let probe = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import numpy"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        println!("SKIP numpy_runs_under_the_profile: numpy not installed");
        return Ok(());
    }
    let script =
        "import numpy as np; a = np.arange(40000.0).reshape(200, 200); print((a @ a.T).shape[0])";
    let (st, out, denials) = run_program(&["/usr/bin/python3", "-c", script])?;
    assert_exited_ok(st);
    assert_eq!(out.trim(), "200");
    assert!(
        denials.is_empty(),
        "numpy needed denied syscalls: {denials:?}"
    );
    Ok(())
}

#[test]
fn a_rust_binary_runs_under_the_profile() -> TestResult {
    // This very test binary: libtest spawns a thread per test (clone3 -> ENOSYS -> clone) and
    // the chosen test uses socketpair, pipes, SCM_RIGHTS and fcntl.
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().ok_or("test binary path is not UTF-8")?;
    let name = "seccomp::tests::listener_passes_over_a_socketpair";
    let (st, out, denials) = run_program(&[exe, "--exact", name, "--test-threads=2"])?;
    assert_exited_ok(st);
    assert!(out.contains("1 passed"), "{out}");
    assert!(
        denials.is_empty(),
        "the Rust binary needed denied syscalls: {denials:?}"
    );
    Ok(())
}

/// A Go program: goroutines, a loopback HTTP server and client, os/exec, temp files.
const GO_PROGRAM: &str = r#"package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
)

func main() {
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); sha256.Sum256([]byte{byte(i)}) }(i)
	}
	wg.Wait()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong") }))
	resp, err := http.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	out, err := exec.Command("/bin/sh", "-c", "echo sub").Output()
	if err != nil {
		panic(err)
	}
	f, err := os.CreateTemp("", "go")
	if err != nil {
		panic(err)
	}
	f.Close()
	os.Remove(f.Name())
	fmt.Printf("%s %s", body, out)
}
"#;

#[test]
fn a_go_binary_runs_under_the_profile() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("main.go"), GO_PROGRAM)?;
    std::fs::write(dir.path().join("go.mod"), "module probe\n\ngo 1.19\n")?;
    let bin = dir.path().join("probe");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(dir.path())
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("go build failed: {s}").into()),
        Err(e) => {
            println!("SKIP a_go_binary_runs_under_the_profile: no Go toolchain ({e})");
            return Ok(());
        }
    }
    let bin = bin.to_str().ok_or("temp path is not UTF-8")?;
    let (st, out, denials) = run_program(&[bin])?;
    assert_exited_ok(st);
    assert_eq!(out, "pong sub\n");
    assert!(
        denials.is_empty(),
        "the Go binary needed denied syscalls: {denials:?}"
    );
    Ok(())
}
