//! Installing a classic-BPF seccomp filter.

use std::io;

/// Installs `filter` on the calling thread. Requires `no_new_privs` or
/// `CAP_SYS_ADMIN`; the filter survives execve and cannot be removed.
pub fn install_filter(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel
    // copies the program before returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    crate::cvt(ret).map(drop)
}
