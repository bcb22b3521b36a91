//! The default seccomp policy, compiled from seccomp/default.json at build time
//! (see build.rs): one filter that lets through every syscall the policy knows,
//! answers ENOSYS for the rest (new or obscure calls look unimplemented, so libc
//! falls back), and EPERM for the dangerous ones (mount, bpf, ptrace, keyctl,
//! unshare, namespace flags to clone, ...). Any path through it is about twenty
//! instructions, so the kernel builds its per-syscall action cache in
//! microseconds, and argument-free allowed calls then skip the filter entirely.

use std::sync::OnceLock;

static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_default.bpf"));
static TEMPLATE_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_template.bpf"));

/// The one `unshare(2)` flag set a warm template's copies make (and build.rs
/// lets through): new user, mount, network, IPC, UTS and pid namespaces.
pub const COPY_UNSHARE_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWPID) as u64;

/// What each copy of a warm template stacks on the template's filter once it
/// is set up: EPERM for the calls only its setup needed (`unshare`, `mount`)
/// and the ones that would undo it. As raw `struct sock_filter`s in native
/// byte order, the form docs/warm-protocol.md gives copies.
pub fn copy_filter_bytes() -> Vec<u8> {
    let denied = [
        libc::SYS_unshare,
        libc::SYS_mount,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_umount2,
        libc::SYS_setns,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
    ]
    .map(|nr| nr as u32);
    let mut bytes = Vec::new();
    let last = denied.iter().copied().max().unwrap_or(0);
    for i in list_filter(|nr| !denied.contains(&nr), last, true) {
        bytes.extend_from_slice(&i.code.to_ne_bytes());
        bytes.push(i.jt);
        bytes.push(i.jf);
        bytes.extend_from_slice(&i.k.to_ne_bytes());
    }
    bytes
}
include!(concat!(env!("OUT_DIR"), "/syscall_table.rs"));

/// The name of syscall `nr` on this architecture, if the policy knows it.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    SYSCALLS
        .binary_search_by_key(&nr, |(n, _)| *n)
        .ok()
        .map(|i| SYSCALLS[i].1)
}

/// The number of the syscall called `name`, if the policy knows it.
pub fn syscall_number(name: &str) -> Option<u32> {
    SYSCALLS.iter().find(|(_, n)| *n == name).map(|(nr, _)| *nr)
}

/// A filter that allows exactly `allowed` (syscall numbers) and answers EPERM
/// to every other call; stacked after the default filter for `--policy`.
pub(crate) fn allow_list_filter(allowed: &[u32]) -> Vec<libc::sock_filter> {
    let last = allowed.iter().copied().max().unwrap_or(0);
    list_filter(|nr| allowed.contains(&nr), last, false)
}

/// A filter that allows the syscalls `allows` says yes to, up to `last`, and
/// answers EPERM to the rest; numbers past `last` are allowed if `beyond`.
fn list_filter(allows: impl Fn(u32) -> bool, last: u32, beyond: bool) -> Vec<libc::sock_filter> {
    use crate::filter_tree::{self, Verdict, RET_ALLOW, RET_ERRNO};
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let deny = Verdict::Return(RET_ERRNO | libc::EPERM as u32);
    let segments = filter_tree::segments(
        last,
        |nr| {
            if allows(nr) {
                Verdict::Return(RET_ALLOW)
            } else {
                deny
            }
        },
        if beyond {
            Verdict::Return(RET_ALLOW)
        } else {
            deny
        },
    );
    let mut program = filter_tree::prologue(AUDIT_ARCH);
    filter_tree::search(&segments, &mut program);
    program
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// The filter's instructions.
pub(crate) fn filter() -> &'static [libc::sock_filter] {
    static FILTER: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    FILTER.get_or_init(|| instructions(PROGRAM))
}

/// The warm template's filter: the default one, but for `unshare` of exactly
/// [`COPY_UNSHARE_FLAGS`] and `mount`.
pub(crate) fn template_filter() -> &'static [libc::sock_filter] {
    static FILTER: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    FILTER.get_or_init(|| instructions(TEMPLATE_PROGRAM))
}

fn instructions(program: &[u8]) -> Vec<libc::sock_filter> {
    alcove_sys::seccomp::filter_from_bytes(program)
}

#[cfg(test)]
mod tests {
    /// A classic-BPF interpreter for the instructions seccomp filters use.
    fn decide(nr: u32, args: [u64; 6]) -> u32 {
        decide_with(super::filter(), nr, args)
    }

    fn decide_with(filter: &[libc::sock_filter], nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&0xc000_003eu32.to_ne_bytes()); // AUDIT_ARCH_X86_64
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let insn = filter[pc];
            pc += 1;
            match insn.code {
                0x20 => {
                    let at = insn.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x05 => pc += insn.k as usize,
                0x06 => return insn.k,
                code if code & 0x07 == 0x05 => {
                    let taken = match code & 0xf0 {
                        0x10 => acc == insn.k,
                        0x20 => acc > insn.k,
                        0x30 => acc >= insn.k,
                        0x40 => acc & insn.k != 0,
                        other => panic!("jump op {other:#x}"),
                    };
                    pc += if taken { insn.jt } else { insn.jf } as usize;
                }
                0x54 => acc &= insn.k, // ALU AND K
                other => panic!("unexpected BPF opcode {other:#x} at {pc}"),
            }
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;
    const ENOSYS: u32 = 0x0005_0026;

    #[test]
    fn a_warm_template_may_unshare_only_the_copies_flags_and_mount() {
        let template = super::template_filter();
        let flags = super::COPY_UNSHARE_FLAGS;
        let unshare = libc::SYS_unshare as u32;
        assert_eq!(
            decide_with(template, unshare, [flags, 0, 0, 0, 0, 0]),
            ALLOW
        );
        for other in [
            flags & !(libc::CLONE_NEWUSER as u64),
            flags | libc::CLONE_NEWCGROUP as u64,
            libc::CLONE_NEWNET as u64,
            0,
        ] {
            assert_eq!(
                decide_with(template, unshare, [other, 0, 0, 0, 0, 0]),
                EPERM
            );
        }
        assert_eq!(decide_with(template, libc::SYS_mount as u32, [0; 6]), ALLOW);
        for allowed in [libc::SYS_mount_setattr, libc::SYS_move_mount] {
            assert_eq!(decide_with(template, allowed as u32, [0; 6]), ALLOW);
            assert_eq!(decide(allowed as u32, [0; 6]), EPERM);
        }
        // The rest is the default filter's answer.
        for denied in [
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_bpf,
            libc::SYS_open_tree,
        ] {
            assert_eq!(decide_with(template, denied as u32, [0; 6]), EPERM);
            assert_eq!(decide(denied as u32, [0; 6]), EPERM);
        }
        let clone = libc::SYS_clone as u32;
        let ns_clone = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
        assert_eq!(decide_with(template, clone, ns_clone), EPERM);
        assert_eq!(decide(unshare, [flags, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(libc::SYS_mount as u32, [0; 6]), EPERM);
    }

    #[test]
    fn a_copy_stacks_a_filter_that_takes_unshare_and_mount_back() {
        let bytes = super::copy_filter_bytes();
        let copy = super::instructions(&bytes);
        for denied in [
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_move_mount,
            libc::SYS_setns,
            libc::SYS_umount2,
        ] {
            assert_eq!(decide_with(&copy, denied as u32, [0; 6]), EPERM);
        }
        for allowed in [libc::SYS_read, libc::SYS_getpid, 1000] {
            assert_eq!(decide_with(&copy, allowed as u32, [0; 6]), ALLOW);
        }
    }

    #[test]
    fn the_filter_fits_the_kernel_limit() {
        let filter = super::filter();
        assert!(!filter.is_empty());
        assert!(filter.len() <= 4096, "BPF_MAXINSNS is 4096");
    }

    #[test]
    fn syscall_names_round_trip() {
        assert_eq!(super::syscall_name(libc::SYS_getpid as u32), Some("getpid"));
        assert_eq!(
            super::syscall_number("openat"),
            Some(libc::SYS_openat as u32)
        );
        assert_eq!(super::syscall_name(100_000), None);
    }

    #[test]
    fn decisions_match_the_policy() {
        let none = [0; 6];
        assert_eq!(decide(libc::SYS_getpid as u32, none), ALLOW);
        assert_eq!(decide(libc::SYS_read as u32, none), ALLOW);
        assert_eq!(decide(libc::SYS_execve as u32, none), ALLOW);
        assert_eq!(decide(libc::SYS_mount as u32, none), EPERM);
        assert_eq!(decide(libc::SYS_bpf as u32, none), EPERM);
        assert_eq!(decide(libc::SYS_ptrace as u32, none), EPERM);
        assert_eq!(decide(libc::SYS_unshare as u32, none), EPERM);
        assert_eq!(
            decide(libc::SYS_clone3 as u32, none),
            ENOSYS,
            "glibc falls back to clone on ENOSYS"
        );
        assert_eq!(decide(1000, none), ENOSYS);
        assert_eq!(
            decide(0x4000_0000 + libc::SYS_getpid as u32, none),
            ENOSYS,
            "x32"
        );
        let clone = libc::SYS_clone as u32;
        assert_eq!(decide(clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            decide(
                clone,
                [(libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(
            decide(clone, [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]),
            EPERM
        );
        let personality = libc::SYS_personality as u32;
        assert_eq!(decide(personality, [0xffff_ffff, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(decide(personality, [0x0040_0000, 0, 0, 0, 0, 0]), EPERM);
        let ioctl = libc::SYS_ioctl as u32;
        assert_eq!(decide(ioctl, [0, libc::TIOCSTI, 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(ioctl, [0, libc::TCGETS, 0, 0, 0, 0]), ALLOW);
    }

    /// A classic-BPF instruction, whichever crate's type it came from.
    type Insn = (u16, u8, u8, u32);

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const X32_BIT: u32 = 0x4000_0000;

    /// `struct seccomp_data` as the kernel lays it out for a filter.
    fn seccomp_data(nr: u32, arch: u32, args: [u64; 6]) -> [u8; 64] {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[8..16].copy_from_slice(&0x7f00_dead_beefu64.to_ne_bytes()); // instruction_pointer
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        data
    }

    /// Runs a classic-BPF program over `data` as the kernel runs a seccomp
    /// filter: every instruction class the kernel accepts in one, and a
    /// panic for anything its checker would refuse (a jump or load out of
    /// bounds, falling off the end, an unknown opcode).
    fn run_bpf(program: &[Insn], data: &[u8; 64]) -> u32 {
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        loop {
            let &(code, jt, jf, k) = program
                .get(pc)
                .unwrap_or_else(|| panic!("ran off the end of the program at {pc}"));
            pc += 1;
            let src = if code & 0x08 != 0 { x } else { k };
            match code & 0x07 {
                0x00 | 0x01 => {
                    let value = match code & 0xe0 {
                        0x00 => k,
                        0x20 if code & 0x18 == 0 && k % 4 == 0 && k < 64 => {
                            let at = k as usize;
                            u32::from_ne_bytes(data[at..at + 4].try_into().unwrap())
                        }
                        0x60 => mem[k as usize],
                        0x80 => 64,
                        _ => panic!("load {code:#x} {k} at {}", pc - 1),
                    };
                    if code & 0x07 == 0x00 {
                        a = value;
                    } else {
                        x = value;
                    }
                }
                0x02 => mem[k as usize] = a,
                0x03 => mem[k as usize] = x,
                0x04 => {
                    a = match code & 0xf0 {
                        0x00 => a.wrapping_add(src),
                        0x10 => a.wrapping_sub(src),
                        0x20 => a.wrapping_mul(src),
                        0x30 => a.checked_div(src).expect("division by zero"),
                        0x40 => a | src,
                        0x50 => a & src,
                        0x60 => a.checked_shl(src).unwrap_or(0),
                        0x70 => a.checked_shr(src).unwrap_or(0),
                        0x80 => a.wrapping_neg(),
                        0x90 => a.checked_rem(src).expect("modulo by zero"),
                        0xa0 => a ^ src,
                        other => panic!("ALU op {other:#x}"),
                    }
                }
                0x05 => {
                    let offset = match code & 0xf0 {
                        0x00 => k as usize,
                        op => {
                            let taken = match op {
                                0x10 => a == src,
                                0x20 => a > src,
                                0x30 => a >= src,
                                0x40 => a & src != 0,
                                other => panic!("jump op {other:#x}"),
                            };
                            usize::from(if taken { jt } else { jf })
                        }
                    };
                    pc += offset;
                    assert!(pc < program.len(), "a jump past the end at {}", pc - offset);
                }
                0x06 => return if code & 0x18 == 0x10 { a } else { k },
                _ => match code {
                    0x07 => x = a,
                    0x87 => a = x,
                    other => panic!("misc op {other:#x}"),
                },
            }
        }
    }

    /// What the kernel returns for stacked filters: the action of highest
    /// precedence (its top 16 bits, compared as signed), the later-installed
    /// filter winning ties. `results` are in installation order.
    fn stacked(results: &[u32]) -> u32 {
        let precedence = |r: u32| (r & 0xffff_0000) as i32;
        let mut ret = RET_ALLOW_ALL;
        for &r in results.iter().rev() {
            if precedence(r) < precedence(ret) {
                ret = r;
            }
        }
        ret
    }
    const RET_ALLOW_ALL: u32 = 0x7fff_0000;

    /// A small deterministic generator (xorshift64*), so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Argument vectors that probe the rules on `nr`'s arguments: each
    /// rule's value alone, beside others, off by one, under noise in the
    /// bits it does not look at; and random ones.
    fn argument_cases(values: &[(usize, u64)], rng: &mut Rng) -> Vec<[u64; 6]> {
        let mut cases = vec![[0; 6], [u64::MAX; 6], [rng.next(); 6]];
        if values.is_empty() {
            return cases;
        }
        for &(i, v) in values {
            for value in [v, v.wrapping_add(1), v.wrapping_sub(1), !v] {
                for noise in [0, u64::MAX, rng.next(), rng.next() << 32, rng.next() >> 32] {
                    let mut args = [noise; 6];
                    args[i] = value;
                    cases.push(args);
                    args[i] = value | (noise & 0xffff_ffff_0000_0000);
                    cases.push(args);
                    args[i] = value | noise;
                    cases.push(args);
                }
            }
        }
        for _ in 0..64 {
            let mut args = [0u64; 6];
            for arg in &mut args {
                *arg = match rng.next() % 4 {
                    0 => rng.next(),
                    1 => rng.next() & 0xffff_ffff,
                    _ => values.iter().fold(
                        0,
                        |acc, &(_, v)| if rng.next() & 1 == 0 { acc | v } else { acc },
                    ),
                };
            }
            cases.push(args);
        }
        cases
    }

    /// The build-time filter (one binary search, leaves from seccompiler)
    /// decides exactly as seccompiler's own filters compiled from the same
    /// policy at test time and stacked as the kernel stacks them: for every
    /// syscall number the table knows and beyond it, x32's numbers, other
    /// architectures, and arguments that probe every argument rule.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_build_time_filter_decides_as_seccompiler_does_for_every_syscall() {
        let policy = include_str!("../seccomp/default.json");
        let compiled =
            seccompiler::compile_from_json(policy.as_bytes(), seccompiler::TargetArch::x86_64)
                .expect("seccompiler compiles the policy");
        let insns = |p: &[seccompiler::sock_filter]| -> Vec<Insn> {
            p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
        };
        let known = insns(&compiled["known"]);
        let deny = insns(&compiled["deny"]);
        let ours: Vec<Insn> = super::filter()
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect();

        let json: serde_json::Value = serde_json::from_str(policy).unwrap();
        let mut arg_values: std::collections::BTreeMap<u32, Vec<(usize, u64)>> = Default::default();
        for rule in json["deny"]["filter"].as_array().unwrap() {
            let nr = super::syscall_number(rule["syscall"].as_str().unwrap()).unwrap();
            for arg in rule["args"].as_array().into_iter().flatten() {
                let index = arg["index"].as_u64().unwrap() as usize;
                arg_values
                    .entry(nr)
                    .or_default()
                    .push((index, arg["val"].as_u64().unwrap()));
            }
        }
        assert!(
            arg_values.contains_key(&(libc::SYS_clone as u32)),
            "{arg_values:?}"
        );

        let max = super::SYSCALLS.last().unwrap().0;
        let mut numbers: Vec<u32> = (0..=max + 64).collect();
        numbers.extend((0..=max + 64).map(|nr| nr | X32_BIT));
        numbers.extend([X32_BIT - 1, 0x7fff_ffff, 0x8000_0000, 0xbfff_ffff, u32::MAX]);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut checked, mut seen) = (0usize, std::collections::BTreeSet::new());
        for arch in [
            AUDIT_ARCH_X86_64,
            AUDIT_ARCH_I386,
            AUDIT_ARCH_X86_64 & !0x8000_0000,
            0,
        ] {
            for &nr in &numbers {
                let values = arg_values.get(&nr).map_or(&[][..], Vec::as_slice);
                for args in argument_cases(values, &mut rng) {
                    let data = seccomp_data(nr, arch, args);
                    let (k, d) = (run_bpf(&known, &data), run_bpf(&deny, &data));
                    let reference = stacked(&[k, d]);
                    assert_eq!(
                        reference,
                        stacked(&[d, k]),
                        "the policy's filters disagree in a way their order decides: nr {nr:#x}"
                    );
                    let got = run_bpf(&ours, &data);
                    assert_eq!(
                        got, reference,
                        "syscall {nr:#x} ({:?}) arch {arch:#x} args {args:x?}: ours {got:#x}, seccompiler {reference:#x}",
                        super::syscall_name(nr)
                    );
                    seen.insert(got);
                    checked += 1;
                }
            }
        }
        // Every kind of answer came up, so the comparison covered each path.
        for action in [ALLOW, EPERM, ENOSYS, 0x8000_0000] {
            assert!(
                seen.contains(&action),
                "no case answered {action:#x}: {seen:x?}"
            );
        }
        assert!(checked > 4 * numbers.len(), "{checked} cases");
    }
}
