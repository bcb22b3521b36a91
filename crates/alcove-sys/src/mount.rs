//! mount(2), umount2(2) and pivot_root(2).

use std::ffi::CStr;
use std::io;
use std::ptr;

pub use libc::{
    MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
    MS_SLAVE,
};

/// Calls mount(2). `None` arguments are passed as null pointers.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let opt = |s: Option<&CStr>| s.map_or(ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a valid NUL-terminated string that
    // outlives the call; `data` is a string for every filesystem we mount.
    let ret = unsafe {
        libc::mount(
            opt(source),
            target.as_ptr(),
            opt(fstype),
            flags,
            opt(data).cast(),
        )
    };
    crate::cvt_int(ret).map(drop)
}

/// Unmounts `target` with `flags` (for example [`MNT_DETACH`]).
pub fn umount(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `target` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// Makes `new_root` the root mount, stacking the old root at `put_old`.
/// `pivot_root(".", ".")` with the new root as the working directory stacks the
/// old root on top of the new one, ready to be detached.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are valid NUL-terminated strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    crate::cvt(ret).map(drop)
}
