//! The classic-BPF code generator: a [`Plan`] (per syscall number, its rules
//! in order) turned into the program the kernel runs on every syscall.
//!
//! The program checks the architecture, refuses x32 calls, finds the
//! syscall number in a binary search tree and runs that syscall's rules;
//! no match gives the default action. It is generated back to front, so
//! every jump's target already has a place when the jump is written: a
//! conditional jump reaches at most 255 instructions ahead, and one whose
//! target lies further goes through an unconditional `ja` (32-bit offset)
//! placed right after it.

use std::collections::{BTreeMap, HashMap};

/// `AUDIT_ARCH_X86_64`: what `seccomp_data.arch` holds for native calls.
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Set in the number of every x32 syscall (which shares x86_64's arch).
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Syscall numbers a tree leaf compares one after another: a few linear
/// compares cost less than the tree nodes that would split them.
const LEAF: usize = 4;

/// How one 64-bit argument is compared with the rule's value, as
/// libseccomp's `SCMP_CMP_*` (unsigned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cmp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
    },
}

/// One argument condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cond {
    /// 0..=5, checked by the caller.
    pub index: u8,
    pub cmp: Cmp,
    pub value: u64,
}

/// All `conds` hold (none: always) → `action` (a `SECCOMP_RET_*` value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rule {
    pub conds: Vec<Cond>,
    pub action: u32,
}

/// What the filter decides, before it is code.
#[derive(Clone, Debug, Default)]
pub(super) struct Plan {
    /// For calls no rule matches.
    pub default: u32,
    /// For calls of another architecture, and x32 calls.
    pub bad_arch: u32,
    /// Per syscall number, its rules; the first that matches decides.
    pub syscalls: BTreeMap<u32, Vec<Rule>>,
}

/// Where a jump goes: an instruction already written (its index in the
/// reversed program), or any `ret` of that action (one is written nearby
/// when none is in reach).
#[derive(Clone, Copy, Debug)]
enum Dest {
    At(usize),
    Ret(u32),
}

/// The program, last instruction first.
#[derive(Default)]
struct Rev {
    insns: Vec<libc::sock_filter>,
    /// The latest `ret` written for each action.
    rets: HashMap<u32, usize>,
}

impl Rev {
    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> usize {
        self.insns.push(libc::sock_filter { code, jt, jf, k });
        self.insns.len() - 1
    }

    fn ret(&mut self, action: u32) -> usize {
        let at = self.push(RET_K, 0, 0, action);
        self.rets.insert(action, at);
        at
    }

    /// How many instructions the next one written would skip to reach `t`.
    fn skip_to(&self, t: usize) -> usize {
        self.insns.len() - 1 - t
    }

    fn resolve(&mut self, dest: Dest) -> usize {
        match dest {
            Dest::At(t) => t,
            Dest::Ret(action) => match self.rets.get(&action) {
                Some(&t) if self.skip_to(t) <= usize::from(u8::MAX) => t,
                _ => self.ret(action),
            },
        }
    }

    fn load(&mut self, offset: u32) -> Dest {
        Dest::At(self.push(LD_ABS, 0, 0, offset))
    }

    fn and(&mut self, mask: u32) {
        self.push(AND_K, 0, 0, mask);
    }

    fn jump(&mut self, code: u16, k: u32, jt: Dest, jf: Dest) -> Dest {
        let mut jt = self.resolve(jt);
        let mut jf = self.resolve(jf);
        // Each trampoline moves the other target one further away, so
        // check both again after each.
        loop {
            let far = usize::from(u8::MAX);
            if self.skip_to(jf) > far {
                jf = self.trampoline(jf);
            } else if self.skip_to(jt) > far {
                jt = self.trampoline(jt);
            } else {
                break;
            }
        }
        let (t, f) = (self.skip_to(jt) as u8, self.skip_to(jf) as u8);
        Dest::At(self.push(code, t, f, k))
    }

    fn trampoline(&mut self, t: usize) -> usize {
        // Past BPF_MAXINSNS the caller refuses the program, so a truncated
        // offset is never installed.
        let k = self.skip_to(t) as u32;
        self.push(JA, 0, 0, k)
    }
}

/// The program for `plan`, first instruction first. Its length is not
/// bounded here; the caller checks it against `BPF_MAXINSNS`.
pub(super) fn generate(plan: &Plan) -> Vec<libc::sock_filter> {
    let mut rev = Rev::default();
    rev.ret(plan.default);
    let mut entries = Vec::with_capacity(plan.syscalls.len());
    for (&nr, rules) in plan.syscalls.iter().rev() {
        let mut next = Dest::Ret(plan.default);
        for rule in rules.iter().rev() {
            next = conds(&mut rev, &rule.conds, Dest::Ret(rule.action), next);
        }
        entries.push((nr, next));
    }
    entries.reverse();
    let tree = tree(&mut rev, &entries, Dest::Ret(plan.default));
    // x32 calls share x86_64's arch value; their numbers carry
    // X32_SYSCALL_BIT. Only -1 (a tracer skipping the call) passes, as
    // libseccomp lets it.
    let minus_one = rev.jump(JEQ, u32::MAX, tree, Dest::Ret(plan.bad_arch));
    rev.jump(JGE, X32_SYSCALL_BIT, minus_one, tree);
    let nr = rev.load(OFF_NR);
    rev.jump(JEQ, AUDIT_ARCH_X86_64, nr, Dest::Ret(plan.bad_arch));
    rev.load(OFF_ARCH);
    rev.insns.reverse();
    rev.insns
}

/// A binary search over `entries` (sorted by number) with the number in
/// the accumulator.
fn tree(rev: &mut Rev, entries: &[(u32, Dest)], miss: Dest) -> Dest {
    if entries.len() <= LEAF {
        let mut next = miss;
        for &(nr, dest) in entries.iter().rev() {
            next = rev.jump(JEQ, nr, dest, next);
        }
        return next;
    }
    let mid = entries.len() / 2;
    let upper = tree(rev, &entries[mid..], miss);
    let lower = tree(rev, &entries[..mid], miss);
    rev.jump(JGE, entries[mid].0, upper, lower)
}

/// All of `list` hold → `pass`, else `fail`.
fn conds(rev: &mut Rev, list: &[Cond], pass: Dest, fail: Dest) -> Dest {
    let mut pass = pass;
    for cond in list.iter().rev() {
        pass = one(rev, cond, pass, fail);
    }
    pass
}

/// One 64-bit comparison, made as two 32-bit ones: the high halves decide
/// unless they are equal. x86_64 is little-endian: the low half comes first.
fn one(rev: &mut Rev, cond: &Cond, pass: Dest, fail: Dest) -> Dest {
    let lo_at = OFF_ARGS + 8 * u32::from(cond.index);
    let hi_at = lo_at + 4;
    let (hi, lo) = ((cond.value >> 32) as u32, cond.value as u32);
    match cond.cmp {
        Cmp::Eq => {
            rev.jump(JEQ, lo, pass, fail);
            let load_lo = rev.load(lo_at);
            rev.jump(JEQ, hi, load_lo, fail);
            rev.load(hi_at)
        }
        Cmp::Ne => {
            rev.jump(JEQ, lo, fail, pass);
            let load_lo = rev.load(lo_at);
            rev.jump(JEQ, hi, load_lo, pass);
            rev.load(hi_at)
        }
        Cmp::Gt => greater(rev, cond, JGT, pass, fail),
        Cmp::Ge => greater(rev, cond, JGE, pass, fail),
        // arg < v is !(arg >= v), arg <= v is !(arg > v).
        Cmp::Lt => greater(rev, cond, JGE, fail, pass),
        Cmp::Le => greater(rev, cond, JGT, fail, pass),
        Cmp::MaskedEq { mask } => {
            rev.jump(JEQ, lo, pass, fail);
            rev.and(mask as u32);
            let load_lo = rev.load(lo_at);
            rev.jump(JEQ, hi, load_lo, fail);
            rev.and((mask >> 32) as u32);
            rev.load(hi_at)
        }
    }
}

/// `arg > value` (`low_cmp` JGT) or `arg >= value` (JGE).
fn greater(rev: &mut Rev, cond: &Cond, low_cmp: u16, pass: Dest, fail: Dest) -> Dest {
    let lo_at = OFF_ARGS + 8 * u32::from(cond.index);
    let (hi, lo) = ((cond.value >> 32) as u32, cond.value as u32);
    rev.jump(low_cmp, lo, pass, fail);
    let load_lo = rev.load(lo_at);
    let hi_equal = rev.jump(JEQ, hi, load_lo, fail);
    rev.jump(JGT, hi, pass, hi_equal);
    rev.load(lo_at + 4)
}
