//! Joining and leaving namespaces.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Moves the caller into the namespace behind `fd` (of type `nstype`, or 0 for any).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; it touches no user memory.
    crate::cvt_int(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// Moves the caller into new namespaces of the kinds in `flags`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only flags.
    crate::cvt_int(unsafe { libc::unshare(flags) }).map(drop)
}

/// Sets the hostname of the caller's UTS namespace.
pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is valid for reads of its length.
    crate::cvt_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}
