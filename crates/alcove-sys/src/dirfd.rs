//! File operations relative to a directory fd, for writing untrusted archives
//! into a directory and for building a sandbox's root inside an image: nothing
//! here follows a symbolic link out of the directory it starts from.
//! [`open_beneath`] follows no link at all; [`open_in_root`] follows links as
//! if the directory were the root, so absolute targets and `..` stay inside.

use std::ffi::CStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// How a path is resolved beneath a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No symbolic link is followed, `..` cannot climb out, no mount is crossed.
    Beneath,
    /// Links are followed as if the directory were the root (an image's
    /// `/etc -> /host` leads to the image's own `/host`); mounts are crossed.
    InRoot,
    /// No symbolic link (nor /proc magic link) is followed anywhere on the
    /// path; `..` and mounts are crossed. For an absolute path already
    /// resolved, so that a link swapped in since is refused.
    NoLinks,
}

/// Opens `path` (relative) beneath `root` with `openat2`, resolved as `scope`
/// says; /proc magic links are never followed. `flags` are `open(2)` flags
/// (`O_CLOEXEC` is added).
pub fn open_at(
    root: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    scope: Scope,
) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid open_how (the struct is non-exhaustive).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = match scope {
        Scope::Beneath => {
            libc::RESOLVE_BENEATH
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS
                | libc::RESOLVE_NO_XDEV
        }
        Scope::InRoot => libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        Scope::NoLinks => libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `path` is NUL-terminated, `how` is a valid open_how whose size
    // is passed; openat2 returns a new fd or -1.
    let fd = crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Opens `path` (relative) beneath `root`: `..` cannot climb out, and no
/// symbolic link (nor /proc magic link) is followed on the way, nor a mount
/// crossed ([`Scope::Beneath`]).
pub fn open_beneath(root: BorrowedFd<'_>, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    open_at(root, path, flags, Scope::Beneath)
}

/// Opens `path` (relative) inside `root` as if `root` were `/` ([`Scope::InRoot`]).
pub fn open_in_root(root: BorrowedFd<'_>, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    open_at(root, path, flags, Scope::InRoot)
}

/// Opens the directory `path` (a path alcove controls, used as it is) as an
/// `O_PATH` descriptor: a root for [`open_in_root`].
pub fn open_dir(path: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `path` is NUL-terminated; flags are plain integers.
    let fd = crate::cvt_int(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What [`open_regular`] found.
#[derive(Debug)]
pub enum Regular {
    /// A regular file, open for reading.
    File(File),
    /// Something else (a FIFO, a device node, a directory), left unopened.
    Not(Metadata),
}

/// Opens `path` beneath `root` (resolved as `scope` says) for reading if it
/// is a regular file. The type is checked on an `O_PATH` descriptor first,
/// so a FIFO (whose open would block) or a device node (whose open may act)
/// is never opened; the file opened is checked to be the one inspected.
pub fn open_regular(root: BorrowedFd<'_>, path: &CStr, scope: Scope) -> io::Result<Regular> {
    use std::os::unix::fs::MetadataExt;
    let probe = File::from(open_at(root, path, libc::O_PATH, scope)?).metadata()?;
    if !probe.is_file() {
        return Ok(Regular::Not(probe));
    }
    let flags = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK;
    let file = File::from(open_at(root, path, flags, scope)?);
    let opened = file.metadata()?;
    if (opened.dev(), opened.ino()) != (probe.dev(), probe.ino()) {
        return Err(io::Error::other(
            "the file changed while it was being opened",
        ));
    }
    Ok(Regular::File(file))
}

/// Creates the regular file `name` in `dir` if nothing by that name exists
/// (an existing one, of whatever type, is left alone): a mount point.
pub fn touch_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    match create_at(dir, name, mode) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates (or truncates) the regular file `name` in `dir`, without
/// following a link, and writes `contents` to it.
pub fn write_file_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    contents: &[u8],
    mode: libc::mode_t,
) -> io::Result<()> {
    // O_NONBLOCK: a FIFO by that name fails at once (ENXIO) rather than
    // waiting for a reader that never comes.
    let flags = libc::O_WRONLY
        | libc::O_CREAT
        | libc::O_TRUNC
        | libc::O_NOFOLLOW
        | libc::O_NONBLOCK
        | libc::O_CLOEXEC;
    let fd = openat(dir, name, flags, mode)?;
    crate::fd::write_all(fd.as_raw_fd(), contents)
}

/// What `name` in `dir` is, without following a link: its `st_mode`, or
/// `None` when there is nothing by that name.
pub fn mode_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::mode_t>> {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid out-pointer.
    match crate::cvt_int(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }) {
        Ok(_) => Ok(Some(st.st_mode)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates directory `name` in `dir`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    crate::cvt_int(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// Creates the regular file `name` in `dir`, which must not exist, for writing.
pub fn create_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    openat(dir, name, flags, mode)
}

/// `openat(2)`: the descriptor it opens.
fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; flags and mode are plain integers.
    let fd = crate::cvt_int(unsafe {
        libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint)
    })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, replacing what `to` names.
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the fds are borrowed, open.
    crate::cvt_int(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
    .map(drop)
}

/// Whether the caller may write `name` in `dir` (`faccessat(W_OK)`).
pub fn writable_at(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    // SAFETY: `name` is NUL-terminated; the fd is borrowed, open.
    unsafe { libc::faccessat(dir.as_raw_fd(), name.as_ptr(), libc::W_OK, 0) == 0 }
}

/// Opens `name` in `dir` as it is (`flags` may not create it) with plain
/// `openat` (`O_NOCTTY` and `O_CLOEXEC` added): where `openat2` may be
/// missing (gVisor) and no containment is needed.
pub fn open_plain_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = (flags & !libc::O_CREAT) | libc::O_NOCTTY | libc::O_CLOEXEC;
    openat(dir, name, flags, 0)
}

/// Removes `name` from `dir` (an empty directory when `directory`).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, directory: bool) -> io::Result<()> {
    let flags = if directory { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated.
    crate::cvt_int(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// Creates the symbolic link `name` in `dir` pointing at `target` (never followed here).
pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    crate::cvt_int(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
        .map(drop)
}

/// Makes `new_name` in `new_dir` a hard link to `old_name` in `old_dir`
/// (a link to a symbolic link links the link itself).
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; flags 0 means do not follow.
    crate::cvt_int(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// Creates the node `name` in `dir` (`mode` includes the file type bits).
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    crate::cvt_int(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

/// Sets the owner of `name` in `dir` without following a link.
pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    crate::cvt_int(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets the mode of `name` in `dir`; the caller knows it is not a link.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    crate::cvt_int(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// Sets the access and modification times of `name` in `dir` to `mtime`
/// (seconds), without following a link.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &CStr, mtime: i64) -> io::Result<()> {
    let t = libc::timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `name` is NUL-terminated and `times` holds two timespecs.
    crate::cvt_int(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets the extended attribute `name` of the open file `fd`.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `value` is valid for its length.
    crate::cvt_int(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// Writes out everything cached for the file system holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: syncfs takes an fd and nothing else.
    crate::cvt_int(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}
