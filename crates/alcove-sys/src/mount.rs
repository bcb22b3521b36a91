//! mount(2), umount2(2) and pivot_root(2), the descriptor-based mount
//! calls (open_tree, move_mount, mount_setattr) that need no path lookup,
//! and a superblock's reconfiguration (fspick, fsconfig).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

pub use libc::{
    MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
    MS_SLAVE,
};
pub use libc::{MS_MOVE, MS_SHARED, MS_UNBINDABLE};

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

/// `OPEN_TREE_CLONE`: return a detached copy of the tree instead of a path fd.
pub const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOUNT_ATTR_RDONLY`, `MOUNT_ATTR_NOSUID`, `MOUNT_ATTR_NODEV` for [`set_attributes`].
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// A detached recursive copy of the mount tree at `path` (absolute): returns
/// an fd for it, to be attached later with [`move_mount_to`], possibly from
/// another mount namespace.
pub fn clone_tree(path: &CStr) -> io::Result<OwnedFd> {
    clone_tree_at(None, path, true)
}

/// Sets mount attributes (`MOUNT_ATTR_*`) on every mount of the tree behind
/// `tree` (a detached copy), and makes each private: a copy of a shared mount
/// would otherwise stay in its peer group, and mounts made under one side
/// would appear under the other.
pub fn set_attributes(tree: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    mount_setattr(tree, attr_set, libc::AT_RECURSIVE, libc::MS_PRIVATE)
}

/// mount_setattr(2) on what `target` refers to, with `flags` beside
/// AT_EMPTY_PATH; `propagation` 0 leaves it as it is.
fn mount_setattr(
    target: BorrowedFd<'_>,
    attr_set: u64,
    flags: libc::c_int,
    propagation: u64,
) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: an empty path with AT_EMPTY_PATH refers to `target` itself;
    // `attr` is a valid mount_attr of the size passed.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Attaches the detached tree behind `tree` at `target` in the caller's mount namespace.
pub fn move_mount_to(tree: std::os::fd::RawFd, target: &CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: an empty source path with MOVE_MOUNT_F_EMPTY_PATH refers to `tree`;
    // `target` is a valid NUL-terminated string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    crate::cvt(ret).map(drop)
}

/// A detached copy of the mount tree at `path` (absolute), recursive or not,
/// to attach with [`move_mount_onto`]; with an empty `path`, of the tree
/// `at` refers to.
pub fn clone_tree_at(
    at: Option<BorrowedFd<'_>>,
    path: &CStr,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    let dirfd = at.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is NUL-terminated; `dirfd` is AT_FDCWD or a borrowed
    // open descriptor; flags are plain.
    let fd =
        crate::cvt(unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) })?;
    // SAFETY: open_tree returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attaches the detached tree behind `tree` onto what `target` (an `O_PATH`
/// descriptor, of a directory or a file) refers to, with no path lookup.
pub fn move_mount_onto(tree: libc::c_int, target: BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: empty paths with the EMPTY_PATH flags refer to the two
    // descriptors themselves.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Sets the attributes `attr_set` (`MOUNT_ATTR_*`: read-only, nosuid, nodev,
/// noexec) on the mount whose root `target` refers to, not those below it:
/// a bind remount done through a descriptor.
pub fn set_mount_attributes(target: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    mount_setattr(target, attr_set, 0, 0)
}

/// Sets `attr_set` and clears `attr_clr` (`MOUNT_ATTR_*`) on the mount whose
/// root `target` refers to, and on every mount below it when `recursive`.
/// Setting an atime mode needs `MOUNT_ATTR__ATIME` in `attr_clr`.
pub fn change_attributes(
    target: BorrowedFd<'_>,
    attr_set: u64,
    attr_clr: u64,
    recursive: bool,
) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: an empty path with AT_EMPTY_PATH refers to `target` itself;
    // `attr` is a valid mount_attr of the size passed.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// The per-mount flags (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`,
/// the atime flags, ...) of the mount `path` is on, read with statvfs(3): what
/// a bind remount must keep when the kernel has locked them (a mount
/// inherited by a less privileged user namespace).
pub fn mount_flags(path: &CStr) -> io::Result<libc::c_ulong> {
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is valid for writes.
    crate::cvt_int(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    // The ST_* bits are not the MS_* bits (ST_RELATIME is 4096, MS_RELATIME
    // 1 << 21), so translate each.
    const ST_NOSYMFOLLOW: libc::c_ulong = 0x2000;
    let st_flags = st.f_flag;
    Ok([
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_SYNCHRONOUS, libc::MS_SYNCHRONOUS),
        (libc::ST_MANDLOCK, libc::MS_MANDLOCK),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (ST_NOSYMFOLLOW, libc::MS_NOSYMFOLLOW),
    ]
    .iter()
    .filter(|(st, _)| st_flags & st != 0)
    .fold(0, |flags, (_, ms)| flags | ms))
}

/// A configuration context for the superblock of the filesystem `fs` (an
/// open descriptor, `O_PATH` will do) is on (fspick(2) with an empty path),
/// to change its options with [`set_fs_flag`], [`set_fs_string`] and
/// [`reconfigure_fs`]: unlike a remount with mount(2), it leaves the
/// mount's own flags (nosuid, nodev, ...) alone.
pub fn pick_filesystem(fs: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const FSPICK_CLOEXEC: libc::c_uint = 0x1;
    const FSPICK_EMPTY_PATH: libc::c_uint = 0x8;
    // SAFETY: an empty path with FSPICK_EMPTY_PATH refers to `fs`, which the
    // borrow keeps open; the flags are plain.
    let fd = crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_fspick,
            fs.as_raw_fd(),
            c"".as_ptr(),
            FSPICK_CLOEXEC | FSPICK_EMPTY_PATH,
        )
    })?;
    // SAFETY: fspick returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_RECONFIGURE: libc::c_uint = 7;

/// Sets the flag option `key` in a context from [`pick_filesystem`].
pub fn set_fs_flag(fs: BorrowedFd<'_>, key: &CStr) -> io::Result<()> {
    // SAFETY: `key` is NUL-terminated; a flag takes no value (null, 0).
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FLAG,
            key.as_ptr(),
            ptr::null::<libc::c_char>(),
            0,
        )
    })
    .map(drop)
}

/// Sets the option `key` to `value` in a context from [`pick_filesystem`].
pub fn set_fs_string(fs: BorrowedFd<'_>, key: &CStr, value: &CStr) -> io::Result<()> {
    // SAFETY: `key` and `value` are NUL-terminated strings that outlive the call.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// Applies the options set in a context from [`pick_filesystem`] to its
/// superblock.
pub fn reconfigure_fs(fs: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the command takes no key or value.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_RECONFIGURE,
            ptr::null::<libc::c_char>(),
            ptr::null::<libc::c_char>(),
            0,
        )
    })
    .map(drop)
}

/// Makes `path` the caller's root directory (chroot(2)); the working
/// directory is left where it is.
pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}
