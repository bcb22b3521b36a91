//! alcove-sys owns every raw Linux syscall alcove makes, each wrapped once.
//!
//! Every function here turns the kernel's return code into an [`std::io::Result`] at
//! once, and every `unsafe` block states the invariants it relies on. Nothing here
//! allocates after [`clone::clone3`] returns in a child, so the wrappers are safe
//! to call between `clone3` and `execve` in a single-threaded parent's child.
//! This crate must not hold policy: which namespaces, mounts or limits a sandbox
//! gets is decided by `alcove-sandbox`.

pub mod bpf_prog;
pub mod caps;
pub mod clone;
pub mod dirfd;
pub mod fd;
pub mod fs;
pub mod landlock;
pub mod mount;
pub mod net;
pub mod ns;
pub mod perf;
pub mod pidfd;
pub mod process;
pub mod pty;
pub mod seccomp;
pub mod seqpacket;
pub mod signal;
pub mod spawn;
pub mod unix;

use std::io;

/// Turns a `-1`-on-error return value into an `io::Result`, reading `errno`.
#[inline]
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls that return `c_int`.
#[inline]
pub(crate) fn cvt_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
