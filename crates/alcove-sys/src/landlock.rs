//! Landlock: path-based access rules a process imposes on itself.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub const ACCESS_EXECUTE: u64 = 1 << 0;
pub const ACCESS_WRITE_FILE: u64 = 1 << 1;
pub const ACCESS_READ_FILE: u64 = 1 << 2;
pub const ACCESS_READ_DIR: u64 = 1 << 3;
pub const ACCESS_TRUNCATE: u64 = 1 << 14;
pub const ACCESS_IOCTL_DEV: u64 = 1 << 15;
/// The rights that make sense on a file (not a directory).
pub const FILE_ACCESS: u64 =
    ACCESS_EXECUTE | ACCESS_WRITE_FILE | ACCESS_READ_FILE | ACCESS_TRUNCATE | ACCESS_IOCTL_DEV;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

/// The Landlock ABI version this kernel offers, or an error when Landlock is
/// not built in or not enabled (`lsm=` without landlock).
pub fn abi_version() -> io::Result<i32> {
    // SAFETY: a null attribute with size 0 and the VERSION flag only queries.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    crate::cvt(ret).map(|v| v as i32)
}

/// Every filesystem access right `abi` knows.
pub fn handled_access(abi: i32) -> u64 {
    let bits = match abi {
        ..=0 => 0,
        1 => 13,
        2 => 14,
        3 | 4 => 15,
        _ => 16,
    };
    (1u64 << bits) - 1
}

/// Creates a ruleset that handles `handled` filesystem rights (denied unless a rule allows them).
pub fn create_ruleset(handled: u64) -> io::Result<OwnedFd> {
    let attr: u64 = handled;
    // SAFETY: a landlock_ruleset_attr of version 1 is one u64, valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const u64,
            std::mem::size_of::<u64>(),
            0u32,
        )
    };
    let fd = crate::cvt(ret)?;
    // SAFETY: the kernel returned a fresh ruleset descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Allows `access` beneath `path` (or on it, for a file) in `ruleset`.
/// Allocation-free, for use in a freshly cloned child.
pub fn allow_path(ruleset: BorrowedFd<'_>, path: &CStr, access: u64) -> io::Result<()> {
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    // SAFETY: `path` is NUL-terminated; O_PATH opens without access checks.
    let fd = crate::cvt_int(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) })?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open and `st` is valid for writes.
    let is_dir = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0
        // SAFETY: fstat succeeded, so `st` is initialised.
        && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let rule = PathBeneath {
        allowed_access: if is_dir { access } else { access & FILE_ACCESS },
        parent_fd: fd,
    };
    // SAFETY: `rule` is a valid landlock_path_beneath_attr for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule as *const PathBeneath,
            0u32,
        )
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    crate::cvt(ret).map(drop)
}

/// Enforces `ruleset` on the calling thread and its future children.
/// Requires `no_new_privs` (or CAP_SYS_ADMIN).
pub fn restrict_self(ruleset: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: takes a descriptor and flags only.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    crate::cvt(ret).map(drop)
}
