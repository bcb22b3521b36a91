//! The default seccomp policy, compiled from seccomp/default.json at build time
//! (see build.rs): one filter that lets through every syscall the policy knows,
//! answers ENOSYS for the rest (new or obscure calls look unimplemented, so libc
//! falls back), and EPERM for the dangerous ones (mount, bpf, ptrace, keyctl,
//! unshare, namespace flags to clone, ...). Any path through it is about twenty
//! instructions, so the kernel builds its per-syscall action cache in
//! microseconds, and argument-free allowed calls then skip the filter entirely.

use std::sync::OnceLock;

static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_default.bpf"));

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
    #[test]
    fn the_filter_fits_the_kernel_limit() {
        let filter = super::filter();
        assert!(!filter.is_empty());
        assert!(filter.len() <= 4096, "BPF_MAXINSNS is 4096");
    }
}
