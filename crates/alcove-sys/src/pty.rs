//! Pseudo-terminals: opening a pty master from a devpts instance's `ptmx`,
//! unlocking it, reaching its slave, its window size, and making a slave the
//! caller's controlling terminal. The console socket of an OCI runtime
//! (`alcove-oci`'s `console`) is built from these.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Opens a new pty master through `ptmx` (`/dev/ptmx`, or the `ptmx` node of
/// a devpts mount), close-on-exec and without becoming anyone's controlling
/// terminal. Which devpts instance the pty belongs to follows from the path,
/// so a container's init opens the one inside its own mount namespace.
pub fn open_master(ptmx: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `ptmx` is a NUL-terminated string that outlives the call; the
    // flags are plain integers.
    let fd = crate::cvt_int(unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: open just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unlocks the slave of `master` so it can be opened (unlockpt(3)).
pub fn unlock(master: BorrowedFd<'_>) -> io::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points at
    // a live local.
    crate::cvt_int(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) }).map(drop)
}

/// The number N of `master`'s slave, `/dev/pts/N` in its devpts instance.
pub fn number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, which
    // points at a live local.
    crate::cvt_int(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// Opens `master`'s slave through the master itself (TIOCGPTPEER, Linux
/// 4.13), close-on-exec and read-write. No path is looked up, so a devpts
/// mount or `/dev/pts/N` entry swapped underneath cannot hand back someone
/// else's terminal. `noctty` keeps the slave from becoming the caller's
/// controlling terminal on open.
pub fn open_slave(master: BorrowedFd<'_>, noctty: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
    if noctty {
        flags |= libc::O_NOCTTY;
    }
    // SAFETY: TIOCGPTPEER takes its flags by value and touches no memory.
    let fd = crate::cvt_int(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the window size of the terminal `fd` (master or slave) in character
/// cells; the pixel sizes are left at zero, as terminal emulators do.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which points
    // at a live local.
    crate::cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) }).map(drop)
}

/// The window size of the terminal `fd` as `(rows, cols)`.
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    // SAFETY: all-zero is a valid winsize.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which points
    // at a live local.
    crate::cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) })?;
    Ok((size.ws_row, size.ws_col))
}

/// Makes the terminal `fd` the controlling terminal of the caller's session
/// (TIOCSCTTY without stealing: fails with EPERM if it already controls
/// another session). The caller must be a session leader without one.
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal) and touches
    // no memory.
    crate::cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) })
        .map(drop)
}

/// Gives the terminal `fd` to user `uid`, leaving its group (devpts's
/// `gid=5`, tty) as it is: so a container process that runs as that user
/// may reopen and control its own terminal.
pub fn set_owner(fd: BorrowedFd<'_>, uid: u32) -> io::Result<()> {
    // SAFETY: fchown takes plain integers; gid -1 (as gid_t) means unchanged.
    crate::cvt_int(unsafe { libc::fchown(fd.as_raw_fd(), uid, libc::gid_t::MAX) }).map(drop)
}

/// Whether the caller leads its session (getsid(0) == getpid()), in which
/// case setsid(2) would fail with EPERM and is not needed.
pub fn is_session_leader() -> bool {
    // SAFETY: getsid and getpid take plain integers and touch no memory.
    unsafe { libc::getsid(0) == libc::getpid() }
}

/// Whether `fd` is a terminal (isatty(3), through TCGETS).
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: isatty takes a plain integer; a closed fd yields 0.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pty_opens_unlocks_and_carries_its_size() {
        let master = open_master(c"/dev/ptmx").expect("open /dev/ptmx");
        assert!(is_terminal(master.as_fd()));
        // Opening the slave of a locked pty fails: the lock is real.
        assert!(open_slave(master.as_fd(), true).is_err());
        unlock(master.as_fd()).unwrap();
        let n = number(master.as_fd()).unwrap();
        let slave = open_slave(master.as_fd(), true).unwrap();
        assert!(is_terminal(slave.as_fd()));
        // The slave is /dev/pts/N: same device number as the path's.
        let by_fd = std::fs::metadata(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
        let by_path = std::fs::metadata(format!("/dev/pts/{n}")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(by_fd.rdev(), by_path.rdev());
        set_window_size(master.as_fd(), 33, 101).unwrap();
        assert_eq!(window_size(slave.as_fd()).unwrap(), (33, 101));
        let gid = by_path.gid();
        set_owner(slave.as_fd(), 4321).unwrap();
        let after = std::fs::metadata(format!("/dev/pts/{n}")).unwrap();
        assert_eq!((after.uid(), after.gid()), (4321, gid));
    }
}
