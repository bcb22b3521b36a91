//! File-descriptor plumbing: pipes, duplication, closing everything inherited.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A pipe whose ends are both close-on-exec; returns `(read, write)`.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    crate::cvt_int(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `target` a copy of `source` that survives `execve`.
pub fn dup_onto(source: RawFd, target: RawFd) -> io::Result<()> {
    if source == target {
        return set_cloexec(source, false);
    }
    // SAFETY: dup3 on integers touches no memory; a stale fd yields EBADF.
    crate::cvt_int(unsafe { libc::dup3(source, target, 0) }).map(drop)
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, cloexec: bool) -> io::Result<()> {
    let flag = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD takes an integer argument and touches no memory.
    crate::cvt_int(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) }).map(drop)
}

/// Marks every descriptor from `first` upward close-on-exec, so the program
/// inherits only stdin, stdout and stderr, while setup can still use its fds.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    crate::cvt(ret).map(drop)
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument.
    let flags = crate::cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an integer argument.
    crate::cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// Writes all of `bytes` to `fd`, retrying on `EINTR` and short writes.
/// Allocation-free, so usable in a freshly cloned child.
pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let ret = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[ret as usize..];
    }
    Ok(())
}

/// Writes what `fd` takes of `bytes` at once, retrying on `EINTR`: on a
/// non-blocking descriptor with no room, `WouldBlock`.
pub fn write_some(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length.
        let ret = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads into `buf` once, retrying on `EINTR`; `Ok(0)` is end of file.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let ret = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits for events on `fds` for at most `timeout` (forever if `None`).
/// Returns the number of ready descriptors; `EINTR` counts as zero.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<std::time::Duration>) -> io::Result<usize> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a valid array of its length; `ts_ptr` is null or points at
    // a live timespec; a null sigmask leaves the mask alone.
    let ret = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    match crate::cvt_int(ret) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Whether `fd` is readable (or hung up) within `timeout`: [`poll`] of one
/// descriptor, polled again when a signal cuts the wait short.
pub fn readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut polled = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if poll(&mut polled, Some(left))? > 0 {
            return Ok(true);
        }
        if left.is_zero() || std::time::Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// A close-on-exec memfd holding `bytes`, positioned at its start: a stdin
/// that never blocks the writer and needs no pumping.
pub fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is NUL-terminated; flags are plain.
    let fd =
        crate::cvt_int(unsafe { libc::memfd_create(c"alcove-stdin".as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    write_all(fd.as_raw_fd(), bytes)?;
    // SAFETY: lseek on an fd we own.
    crate::cvt(unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } as libc::c_long)?;
    Ok(fd)
}

/// How [`flock`] locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Shared,
    Exclusive,
    /// Exclusive, or `Ok(false)` at once if someone holds the file.
    TryExclusive,
}

/// Takes an advisory lock on the open file `fd` (released when it closes);
/// `Ok(false)` only for [`Lock::TryExclusive`] on a held file.
pub fn flock(fd: BorrowedFd<'_>, how: Lock) -> io::Result<bool> {
    let op = match how {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
        Lock::TryExclusive => libc::LOCK_EX | libc::LOCK_NB,
    };
    // SAFETY: flock takes an fd and plain flags.
    match crate::cvt_int(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) && how == Lock::TryExclusive => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Closes the descriptor `fd`, which the caller owns and will not use again.
pub fn close(fd: RawFd) -> io::Result<()> {
    // SAFETY: closing a descriptor only affects our own table; the caller
    // owns it.
    crate::cvt_int(unsafe { libc::close(fd) }).map(drop)
}

/// Closes every descriptor of the process (close_range 0..=max): for a
/// process that keeps none of what it inherited.
pub fn close_all() -> io::Result<()> {
    // SAFETY: close_range on our own descriptor table, plain integers.
    crate::cvt(unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) }).map(drop)
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Closes every descriptor from `first` upward except those in `keep`
/// (close_range over the gaps between them).
pub fn close_from_except(first: RawFd, keep: &[RawFd]) -> io::Result<()> {
    let mut kept: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= first).collect();
    kept.sort_unstable();
    kept.dedup();
    let mut low = first as libc::c_uint;
    for fd in kept.into_iter().map(|fd| fd as libc::c_uint) {
        if fd > low {
            // SAFETY: close_range on our own descriptor table, plain integers.
            crate::cvt(unsafe { libc::syscall(libc::SYS_close_range, low, fd - 1, 0u32) })?;
        }
        low = fd + 1;
    }
    // SAFETY: as above.
    crate::cvt(unsafe { libc::syscall(libc::SYS_close_range, low, libc::c_uint::MAX, 0u32) })
        .map(drop)
}
