//! Allocation-free file operations for building a sandbox's root in the child.

use std::ffi::CStr;
use std::io;

/// Creates directory `path` with `mode`; an existing one is fine.
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    match crate::cvt_int(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

/// Creates the symbolic link `link` pointing at `target`.
pub fn symlink(target: &CStr, link: &CStr) -> io::Result<()> {
    // SAFETY: both are valid NUL-terminated strings.
    crate::cvt_int(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
}

/// Creates the device node `path` (`mode` includes the file type bits).
pub fn mknod(path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::mknod(path.as_ptr(), mode, dev) }).map(drop)
}

/// Creates (or truncates) `path` with `mode` and writes `contents` to it.
pub fn write_file(path: &CStr, contents: &[u8], mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; flags and mode are plain.
    let fd = crate::cvt_int(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    let result = crate::fd::write_all(fd, contents);
    // SAFETY: `fd` was opened above and is closed exactly once.
    unsafe { libc::close(fd) };
    result
}

/// Changes the working directory to `path`.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// Changes the mode of `path`.
pub fn chmod(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// Whether `path` names something executable by the caller (`access(X_OK)`).
pub fn is_executable(path: &CStr) -> bool {
    // SAFETY: `path` is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::X_OK) == 0 }
}

/// The magic number of the filesystem `path` is on (`statfs`'s `f_type`).
pub fn filesystem_magic(path: &CStr) -> io::Result<i64> {
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is valid for writes.
    crate::cvt_int(unsafe { libc::statfs(path.as_ptr(), &mut st) })?;
    Ok(st.f_type as i64)
}

/// The magic number of the filesystem `fd` is on (fstatfs(2): `f_type`).
pub fn filesystem_magic_of(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the borrow keeps `fd` open and `st` is valid for writes.
    crate::cvt_int(unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) })?;
    Ok(st.f_type as i64)
}

/// Makes the directory `dir` the working directory.
pub fn fchdir(dir: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchdir takes a descriptor the borrow keeps open.
    crate::cvt_int(unsafe { libc::fchdir(std::os::fd::AsRawFd::as_raw_fd(&dir)) }).map(drop)
}

/// Creates a FIFO at `path` with `mode` (mkfifo(3)).
pub fn mkfifo(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::mkfifo(path.as_ptr(), mode) }).map(drop)
}

/// Whether the file open at `fd` is on a read-only mount (or filesystem).
pub fn on_read_only_mount(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatvfs fills the zeroed struct it is given and keeps no pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-parameter for the duration of the call.
    crate::cvt_int(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// A close-on-exec, non-blocking inotify descriptor watching `path` for
/// entries created, written, deleted and moved (one watch, not recursive).
pub fn inotify_watch(path: &CStr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain flags; the result is checked.
    let fd = crate::cvt_int(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
    // SAFETY: the kernel just returned `fd` and nothing else owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_CREATE
        | libc::IN_CLOSE_WRITE
        | libc::IN_MODIFY
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_ONLYDIR;
    // SAFETY: `fd` is the inotify descriptor above; `path` is NUL-terminated.
    crate::cvt_int(unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) })?;
    Ok(owned)
}
