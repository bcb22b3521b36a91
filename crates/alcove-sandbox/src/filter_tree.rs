//! Seccomp filters as a binary search on the syscall number, so that any path
//! through the filter is a few dozen instructions and the kernel builds its
//! per-syscall action cache in microseconds. Shared by build.rs (the default
//! policy) and the runtime (`--policy` profiles); it depends on nothing.

/// A classic BPF instruction, as `struct sock_filter` lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// What the search does for a run of syscall numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Return this seccomp action.
    Return(u32),
    /// Jump to leaf program number `n`, placed after the search by the caller
    /// (build.rs uses leaves for rules on arguments; the runtime does not).
    #[allow(dead_code)]
    Leaf(usize),
}

pub const BPF_LD_W_ABS: u16 = 0x20;
pub const BPF_JMP_JEQ_K: u16 = 0x15;
pub const BPF_JMP_JGE_K: u16 = 0x35;
pub const BPF_JMP_JA: u16 = 0x05;
pub const BPF_RET_K: u16 = 0x06;
pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// Kills a process calling with another architecture's convention, then
/// loads the syscall number.
pub fn prologue(audit_arch: u32) -> Vec<Insn> {
    vec![
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(BPF_JMP_JEQ_K, 1, 0, audit_arch),
        insn(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
    ]
}

/// Runs of equal verdicts over 0..=`last`, then `past` for every higher number.
pub fn segments(
    last: u32,
    verdict_of: impl Fn(u32) -> Verdict,
    past: Verdict,
) -> Vec<(u32, Verdict)> {
    let mut segments: Vec<(u32, Verdict)> = Vec::new();
    for nr in 0..=last + 1 {
        let v = if nr > last { past } else { verdict_of(nr) };
        if segments.last().map(|s| s.1) != Some(v) || matches!(v, Verdict::Leaf(_)) {
            segments.push((nr, v));
        }
    }
    segments
}

/// Appends a binary search over `segments` (sorted by first number) to
/// `program`, as `[JGE mid,0,1][JA right][left...][right...]`. Returns where
/// each leaf jump sits, as `(instruction index, leaf)`, for the caller to patch.
pub fn search(segments: &[(u32, Verdict)], program: &mut Vec<Insn>) -> Vec<(usize, usize)> {
    let mut leaf_jumps = Vec::new();
    emit(segments, program, &mut leaf_jumps);
    leaf_jumps
}

fn emit(
    segments: &[(u32, Verdict)],
    program: &mut Vec<Insn>,
    leaf_jumps: &mut Vec<(usize, usize)>,
) {
    if segments.len() == 1 {
        match segments[0].1 {
            Verdict::Return(action) => program.push(insn(BPF_RET_K, 0, 0, action)),
            Verdict::Leaf(i) => {
                leaf_jumps.push((program.len(), i));
                program.push(insn(BPF_JMP_JA, 0, 0, 0));
            }
        }
        return;
    }
    let mid = segments.len() / 2;
    program.push(insn(BPF_JMP_JGE_K, 0, 1, segments[mid].0));
    let ja = program.len();
    program.push(insn(BPF_JMP_JA, 0, 0, 0));
    emit(&segments[..mid], program, leaf_jumps);
    program[ja].k = (program.len() - ja - 1) as u32;
    emit(&segments[mid..], program, leaf_jumps);
}
