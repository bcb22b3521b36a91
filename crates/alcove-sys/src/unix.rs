//! Unix sockets that carry descriptors, sealed memfds, and shared mappings:
//! what the accelerator service and its clients pass operands through.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A connected pair of close-on-exec SOCK_SEQPACKET sockets (message boundaries kept).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    crate::cvt_int(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned these and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

const CMSG_SPACE_ONE_FD: usize = 64;

/// Sends `bytes` as one message, with `fd` attached (SCM_RIGHTS) if given.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u8; CMSG_SPACE_ONE_FD];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations; the control
        // buffer is larger than CMSG_SPACE(sizeof(int)); CMSG_FIRSTHDR points
        // into it once msg_control and msg_controllen are set.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let sent = crate::cvt(
        unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } as libc::c_long,
    )?;
    if sent as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "a message was cut short",
        ));
    }
    Ok(())
}

/// Receives one message into `buf`: its length (0 at end of stream) and
/// the descriptor attached to it, if any (made close-on-exec).
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u8; CMSG_SPACE_ONE_FD];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = crate::cvt(
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }
            as libc::c_long,
    )? as usize;
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message longer than the buffer",
        ));
    }
    let mut received = None;
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG
    // macros walk only within it, and an SCM_RIGHTS header carries fds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                let owned = OwnedFd::from_raw_fd(fd);
                if received.is_none() {
                    received = Some(owned); // a second one is closed by the drop
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, received))
}

/// A memfd of `len` bytes that can no longer shrink (F_SEAL_SHRINK), so a
/// mapping of it cannot fault past a truncated end.
pub fn sealed_memfd(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; flags are plain.
    let fd = crate::cvt_int(unsafe {
        libc::memfd_create(
            c"alcove-operands".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on an fd we own, with a plain length.
    crate::cvt_int(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    // SAFETY: fcntl F_ADD_SEALS on an fd we own takes plain flags.
    crate::cvt_int(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// Gives the first `len` bytes of `fd` their pages now (fallocate), charged
/// to the caller's cgroup, so that whoever later writes there allocates
/// nothing: a client's result region written by the accelerator service.
pub fn allocate(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate takes plain integers.
    crate::cvt_int(unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) }).map(drop)
}

/// The size of `fd`, if it is a memfd sealed against shrinking.
pub fn sealed_size(fd: BorrowedFd<'_>) -> io::Result<Option<usize>> {
    // SAFETY: fcntl F_GET_SEALS takes no pointer.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals == -1 || seals & libc::F_SEAL_SHRINK == 0 {
        return Ok(None);
    }
    // SAFETY: all-zero is a valid stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for fstat.
    crate::cvt_int(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Some(st.st_size as usize))
}

/// Whether bytes `offset..offset + len` of `fd` are all backed by pages. A
/// memfd's holes read as zeros and cost whoever made it nothing, so a
/// receiver that will copy a range checks first that the sender paid for it.
/// The file offset `fd` shares with its sender is put back as it was.
pub fn range_is_backed(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<bool> {
    let Some(end) = offset.checked_add(len) else {
        return Ok(false);
    };
    if len == 0 {
        return Ok(true);
    }
    let seek = |to: u64, whence: libc::c_int| -> io::Result<u64> {
        let to =
            libc::off_t::try_from(to).map_err(|_| io::Error::from_raw_os_error(libc::ENXIO))?;
        // SAFETY: lseek takes plain integers.
        crate::cvt(unsafe { libc::lseek(fd.as_raw_fd(), to, whence) } as libc::c_long)
            .map(|at| at as u64)
    };
    let saved = seek(0, libc::SEEK_CUR)?;
    // The first hole at or after `offset`; the end of the file counts as one.
    let hole = seek(offset, libc::SEEK_HOLE);
    seek(saved, libc::SEEK_SET)?;
    match hole {
        Ok(hole) => Ok(hole >= end),
        // ENXIO: `offset` is at or past the end of the file.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A shared read-write mapping of a whole file, unmapped on drop.
pub struct SharedMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; callers synchronise their own use.
unsafe impl Send for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` shared (writes are seen by every mapper).
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMapping> {
        if len == 0 {
            return Ok(SharedMapping {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel; fd and len are plain.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Copies `out.len()` bytes from `offset` (the caller checked the range).
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(
            offset
                .checked_add(out.len())
                .is_some_and(|end| end <= self.len),
            "read past the mapping"
        );
        // SAFETY: the range is inside the mapping (asserted), which stays
        // mapped while `self` lives; bytes have no invalid values. Another
        // process may write concurrently: the caller gets whatever bytes
        // are there, which is that process's own business.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) };
    }

    /// Copies `data` to `offset` (the caller checked the range).
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        assert!(
            offset
                .checked_add(data.len())
                .is_some_and(|end| end <= self.len),
            "write past the mapping"
        );
        // SAFETY: as in `read`, for a write into the mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: ptr and len are exactly what mmap returned.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn only_written_ranges_are_backed() {
        let memfd = sealed_memfd(3 * 4096).unwrap();
        let fd = memfd.as_fd();
        // SAFETY: lseek takes plain integers.
        unsafe { libc::lseek(fd.as_raw_fd(), 100, libc::SEEK_SET) };
        let mut map = SharedMapping::new(fd, 3 * 4096).unwrap();
        map.write(4096, &[1]);
        assert!(range_is_backed(fd, 4096, 4096).unwrap());
        assert!(range_is_backed(fd, 5000, 10).unwrap());
        assert!(range_is_backed(fd, 0, 0).unwrap());
        assert!(!range_is_backed(fd, 0, 4096).unwrap(), "never written");
        assert!(
            !range_is_backed(fd, 4096, 4097).unwrap(),
            "runs into a hole"
        );
        assert!(!range_is_backed(fd, 3 * 4096, 1).unwrap(), "past the end");
        assert!(!range_is_backed(fd, u64::MAX, 2).unwrap(), "overflows");
        // Allocated pages count as holes until written (they read as zeros),
        // but they are there: writing them later allocates nothing.
        use std::os::unix::fs::MetadataExt;
        let blocks = || {
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .blocks()
        };
        let written = blocks();
        assert!(written >= 8, "one page written: {written} blocks");
        allocate(fd, 3 * 4096).unwrap();
        assert!(blocks() >= 24, "three pages allocated");
        // SAFETY: as above.
        let offset = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
        assert_eq!(offset, 100, "the shared file offset is put back");
    }
}
