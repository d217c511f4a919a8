//! A binary-search dispatch on the syscall number around seccompiler's rule blocks.
//!
//! seccompiler 0.5 compiles a filter as one linear chain of `JEQ nr` tests, one per syscall.
//! For a 300-entry allowlist that chain is ~1500 instructions, and installing it costs about
//! 1 ms: the kernel emulates the filter for every syscall number to build its constant-action
//! cache, walking the chain each time. A syscall that is not cached (any syscall with an
//! argument rule, every denied one) also walks the chain at run time.
//!
//! So the allowlist is assembled here instead, from pieces seccompiler still compiles:
//!
//! ```text
//! seccompiler's architecture check (LD arch; JEQ AUDIT_ARCH_X86_64; RET KILL_PROCESS)
//! LD nr
//! tree(segments)
//! ```
//!
//! The syscall numbers `0..2^32` are cut into segments: a run of consecutive numbers that are
//! all allowed unconditionally, one number with argument rules, or a run of denied numbers
//! (which includes every x32 number, bit `0x40000000`, and everything above the table). The
//! tree is a binary search on the segments' first numbers: an inner node is
//! `JGE first_of_right_half (true: fall through to JA right) ; JA right ; left half ; right
//! half`; a leaf is `RET match`, `RET default`, or, for a number with argument rules, the block
//! seccompiler compiles for a one-syscall filter (its `JEQ nr`, its rule chain, its
//! `RET mismatch`) followed by `RET default`. seccompiler's blocks only jump within themselves
//! or to the instruction right after them (where its next syscall would start); [`block`]
//! checks that before using one.
//!
//! A test runs this program and seccompiler's linear program side by side in a BPF
//! interpreter over every syscall number up to 600, the x32 range and the extremes, three
//! architectures and the interesting argument values, and requires identical results.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

use super::SeccompError;

/// `BPF_LD | BPF_W | BPF_ABS`.
pub(super) const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`.
const JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub(super) const JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
pub(super) const RET_K: u16 = 0x06;
/// The instruction class bits and the jump class.
pub(super) const CLASS_MASK: u16 = 0x07;
const CLASS_JMP: u16 = 0x05;
/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub(super) const MAX_INSNS: usize = 4096;
/// seccompiler's architecture check: `LD arch; JEQ arch, 1, 0; RET KILL_PROCESS`.
const ARCH_CHECK_LEN: usize = 3;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn shape(reason: &'static str) -> SeccompError {
    SeccompError::Assemble { reason }
}

/// Build the allowlist program: `rules` maps syscall numbers to seccompiler rules (empty:
/// unconditional); `on_match` for allowed calls, `default` for everything else.
/// Every `RET` it emits returns `on_match`, `default` or seccompiler's `KILL_PROCESS`.
///
/// # Errors
/// [`SeccompError::Compile`] if seccompiler refuses a rule; [`SeccompError::Assemble`] if its
/// output does not have the shape this module relies on, or the program is too long.
pub(crate) fn assemble(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
    default: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let compile_err = |source: BackendError| SeccompError::Compile {
        filter: "allowlist",
        source,
    };
    // The architecture check, taken from seccompiler's output for an empty filter.
    let empty: BpfProgram =
        SeccompFilter::new(BTreeMap::new(), default.clone(), on_match.clone(), arch)
            .and_then(BpfProgram::try_from)
            .map_err(compile_err)?;
    let match_ret = u32::from(on_match.clone());
    let default_ret = stmt(RET_K, u32::from(default.clone()));
    let kill = stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS);
    if empty.len() != ARCH_CHECK_LEN + 1
        || empty[0] != stmt(LD_W_ABS, 4) // seccomp_data.arch
        || (empty[1].code, empty[1].jt, empty[1].jf) != (JEQ_K, 1, 0)
        || empty[2] != kill
        || empty[3] != default_ret
    {
        return Err(shape(
            "seccompiler's empty filter is not arch check + RET default",
        ));
    }

    let mut segments: Vec<(u32, Leaf)> = Vec::new();
    let mut next: u32 = 0; // the first number not covered by a segment yet
    for (nr, chain) in rules {
        let nr32 = u32::try_from(nr).map_err(|_| shape("syscall number out of range"))?;
        if nr32 < next || nr32 == u32::MAX {
            return Err(shape("syscall numbers out of order"));
        }
        if nr32 > next {
            segments.push((next, Leaf::Deny));
        }
        if chain.is_empty() {
            let extends_run = nr32 == next && matches!(segments.last(), Some((_, Leaf::Allow)));
            if !extends_run {
                segments.push((nr32, Leaf::Allow));
            }
        } else {
            let one = SeccompFilter::new(
                BTreeMap::from([(nr, chain)]),
                default.clone(),
                on_match.clone(),
                arch,
            )
            .and_then(BpfProgram::try_from)
            .map_err(compile_err)?;
            segments.push((nr32, Leaf::Block(block(&one, nr32, default_ret.k)?)));
        }
        next = nr32 + 1;
    }
    segments.push((next, Leaf::Deny));

    let mut prog: BpfProgram = empty[..ARCH_CHECK_LEN].to_vec();
    prog.push(stmt(LD_W_ABS, 0)); // seccomp_data.nr
    let rets = (stmt(RET_K, match_ret), default_ret);
    tree(&segments, &rets, &mut prog)?;
    if prog.len() > MAX_INSNS {
        return Err(shape("program longer than the kernel's 4096 instructions"));
    }
    check_jumps(&prog, prog.len())?;
    Ok(prog)
}

/// Cut syscall `nr`'s block out of seccompiler's one-syscall program `one`:
/// `[arch check (3)] [LD nr] [block…] [RET default]`.
fn block(one: &[sock_filter], nr: u32, default_k: u32) -> Result<Vec<sock_filter>, SeccompError> {
    let n = one.len();
    if n < ARCH_CHECK_LEN + 3 {
        return Err(shape("one-syscall program too short"));
    }
    if one[ARCH_CHECK_LEN] != stmt(LD_W_ABS, 0) {
        return Err(shape(
            "one-syscall program does not load nr after the arch check",
        ));
    }
    let first = &one[ARCH_CHECK_LEN + 1];
    if (first.code, first.k, first.jt, first.jf) != (JEQ_K, nr, 0, 1) {
        return Err(shape("block does not start with JEQ nr"));
    }
    if one[n - 1] != stmt(RET_K, default_k) {
        return Err(shape("one-syscall program does not end with RET default"));
    }
    let b = one[ARCH_CHECK_LEN + 1..n - 1].to_vec();
    // Every jump must stay inside the block or land right after it (our RET default).
    check_jumps(&b, b.len() + 1)?;
    Ok(b)
}

/// What a segment of syscall numbers does.
enum Leaf {
    /// Allowed with any arguments.
    Allow,
    /// Denied (default action).
    Deny,
    /// One syscall with argument rules: seccompiler's block for it.
    Block(Vec<sock_filter>),
}

/// Append the dispatch tree over `segments` (sorted by first number) to `out`; `rets` are the
/// `RET match` and `RET default` instructions.
fn tree(
    segments: &[(u32, Leaf)],
    rets: &(sock_filter, sock_filter),
    out: &mut BpfProgram,
) -> Result<(), SeccompError> {
    match segments {
        [] => Err(shape("empty dispatch range")),
        [(_, leaf)] => {
            match leaf {
                Leaf::Allow => out.push(rets.0.clone()),
                Leaf::Deny => out.push(rets.1.clone()),
                Leaf::Block(b) => {
                    out.extend_from_slice(b);
                    out.push(rets.1.clone());
                }
            }
            Ok(())
        }
        _ => {
            let mid = segments.len() / 2;
            let mut left = Vec::new();
            tree(&segments[..mid], rets, &mut left)?;
            let skip = u32::try_from(left.len()).map_err(|_| shape("left subtree too long"))?;
            // nr >= first of the right half: fall through to `JA right`; else skip into the left.
            out.push(jump(JGE_K, segments[mid].0, 0, 1));
            out.push(stmt(JA, skip));
            out.extend(left);
            tree(&segments[mid..], rets, out)
        }
    }
}

/// Check that every jump in `prog` lands at an index `< end`.
fn check_jumps(prog: &[sock_filter], end: usize) -> Result<(), SeccompError> {
    for (i, insn) in prog.iter().enumerate() {
        if insn.code & CLASS_MASK != CLASS_JMP {
            continue;
        }
        let targets = if insn.code == JA {
            [i + 1 + insn.k as usize, 0]
        } else {
            [i + 1 + insn.jt as usize, i + 1 + insn.jf as usize]
        };
        if targets.iter().any(|&t| t >= end) {
            return Err(shape("a jump leaves its block"));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod interp {
    //! A classic-BPF interpreter for the instructions seccomp filters use, for tests.

    use seccompiler::sock_filter;

    /// `struct seccomp_data`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Data {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    impl Data {
        fn word(&self, off: u32) -> u32 {
            let lo = |v: u64| v as u32;
            let hi = |v: u64| (v >> 32) as u32;
            match off {
                0 => self.nr,
                4 => self.arch,
                8 | 12 => 0, // instruction pointer
                16..=60 if off.is_multiple_of(4) => {
                    let a = self.args[((off - 16) / 8) as usize];
                    if off.is_multiple_of(8) { lo(a) } else { hi(a) }
                }
                _ => panic!("load from offset {off}"),
            }
        }
    }

    /// Run `prog` on `d`; returns the `RET` value.
    pub(crate) fn run(prog: &[sock_filter], d: &Data) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            let (jt, jf) = (i.jt as usize, i.jf as usize);
            pc += 1;
            match i.code {
                0x20 => a = d.word(i.k),
                0x54 => a &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += if a == i.k { jt } else { jf },
                0x25 => pc += if a > i.k { jt } else { jf },
                0x35 => pc += if a >= i.k { jt } else { jf },
                0x45 => pc += if a & i.k != 0 { jt } else { jf },
                0x06 => return i.k,
                c => panic!("unsupported BPF opcode {c:#x}"),
            }
        }
    }
}
