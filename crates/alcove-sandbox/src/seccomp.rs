//! The default seccomp policy, compiled from seccomp/default.json at build time
//! (see build.rs): one filter that lets through every syscall the policy knows,
//! answers ENOSYS for the rest (new or obscure calls look unimplemented, so libc
//! falls back), and EPERM for the dangerous ones (mount, bpf, ptrace, keyctl,
//! unshare, namespace flags to clone, ...). Any path through it is about twenty
//! instructions, so the kernel builds its per-syscall action cache in
//! microseconds, and argument-free allowed calls then skip the filter entirely.

use std::sync::OnceLock;

static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_default.bpf"));
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
    use crate::filter_tree::{self, Verdict, RET_ALLOW, RET_ERRNO};
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let deny = Verdict::Return(RET_ERRNO | libc::EPERM as u32);
    let last = allowed.iter().copied().max().unwrap_or(0);
    let segments = filter_tree::segments(
        last,
        |nr| {
            if allowed.contains(&nr) {
                Verdict::Return(RET_ALLOW)
            } else {
                deny
            }
        },
        deny,
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
    FILTER.get_or_init(|| {
        PROGRAM
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    /// A classic-BPF interpreter for the instructions seccomp filters use.
    fn decide(nr: u32, args: [u64; 6]) -> u32 {
        let filter = super::filter();
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
}
