//! A bounded pool of prepared network namespaces.
//!
//! Creating a network namespace is the most expensive part of a sandbox's start
//! (0.4-0.6 ms here, serialised in the kernel, with seconds of deferred
//! teardown). So `alcove run` keeps up to [`SLOTS`] namespaces, each holding only
//! loopback (up), bind-mounted at `/run/alcove/netns/slot-N`. A run takes a free
//! slot under an exclusive `flock` and joins its namespace; the lock dies with
//! the process, so a killed run frees its slot. A sandbox cannot change a pooled
//! namespace (it has no CAP_NET_ADMIN there), and none of its sockets outlive its
//! processes, which are all dead before the slot is released. When every slot
//! is busy, the sandbox gets a fresh namespace of its own. `alcove gc` unmounts
//! and removes the pool.

use alcove_sys::{mount, net, ns};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where pooled namespaces and their locks live.
pub const POOL_DIR: &str = "/run/alcove/netns";
/// How many namespaces the pool keeps at most.
pub const SLOTS: usize = 16;

/// A claimed pool slot: its namespace fd and the lock that makes it ours.
pub(crate) struct NetnsSlot {
    pub netns: OwnedFd,
    _lock: File,
}

/// Claims a free slot, creating its namespace on first use. `None` when every
/// slot is busy or the pool cannot be used (the caller then makes a fresh one).
pub(crate) fn claim() -> Option<NetnsSlot> {
    let start = 0;
    for i in (0..SLOTS).map(|k| (start + k) % SLOTS) {
        let Ok(lock) = open_lock(i) else {
            std::fs::create_dir_all(POOL_DIR).ok()?;
            continue;
        };
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let path = slot_path(i);
        let netns = match open_netns(&path) {
            Ok(fd) => fd,
            Err(_) => match create(&path) {
                Ok(fd) => fd,
                Err(_) => return None,
            },
        };
        return Some(NetnsSlot { netns, _lock: lock });
    }
    None
}

/// Unmounts and removes every pooled namespace nobody holds; returns how many.
pub(crate) fn remove_all() -> usize {
    let mut removed = 0;
    for i in 0..SLOTS {
        let Ok(lock) = open_lock(i) else { continue };
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // in use
        }
        let path = slot_path(i);
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            if mount::umount(&c, mount::MNT_DETACH).is_ok() {
                removed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(lock_path(i));
    }
    removed
}

fn slot_path(i: usize) -> PathBuf {
    Path::new(POOL_DIR).join(format!("slot-{i}"))
}

fn lock_path(i: usize) -> PathBuf {
    Path::new(POOL_DIR).join(format!("slot-{i}.lock"))
}

fn open_lock(i: usize) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(lock_path(i))
}

/// Opens the slot's namespace, checking that a namespace really is mounted there.
fn open_netns(path: &Path) -> io::Result<OwnedFd> {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: a zeroed statfs is a valid out-parameter for fstatfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open and `st` is valid for writes.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 || st.f_type as i64 != NSFS_MAGIC {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(file.into())
}

/// Makes a new namespace with loopback up and mounts it at `path`, from this
/// thread: unshare into it, bind-mount it, and return to the original one.
fn create(path: &Path) -> io::Result<OwnedFd> {
    let original = File::open("/proc/thread-self/ns/net")?;
    File::create(path)?;
    ns::unshare(libc::CLONE_NEWNET)?;
    let result = net::loopback_up().and_then(|()| {
        let target = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        mount::mount(
            Some(c"/proc/thread-self/ns/net"),
            &target,
            None,
            mount::MS_BIND,
            None,
        )
    });
    ns::setns(original.as_fd(), libc::CLONE_NEWNET)
        .expect("return to alcove's own network namespace");
    result?;
    open_netns(path)
}
