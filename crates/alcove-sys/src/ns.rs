//! Joining and leaving namespaces.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

/// Opens a namespace pinned by a bind mount at `path` (as `ip netns` pins
/// them), failing with `NotFound` unless a namespace really is mounted there.
pub fn open_pinned(path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // SAFETY: `path` is NUL-terminated; flags are plain.
    let fd =
        crate::cvt_int(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is valid for writes.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 || st.f_type as i64 != NSFS_MAGIC {
        return Err(io::ErrorKind::NotFound.into());
    }
    Ok(fd)
}

/// Sets the NIS domain name of the caller's UTS namespace.
pub fn setdomainname(name: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is valid for reads of its length.
    crate::cvt_int(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }).map(drop)
}
