//! Listening SOCK_SEQPACKET unix sockets, their peers' credentials, and
//! messages that carry several descriptors: what warm copies connect through.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The most descriptors one message carries here.
pub const MAX_FDS: usize = 8;

/// A close-on-exec SOCK_SEQPACKET socket bound at `path` and listening.
pub fn listen(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a unix socket path must be shorter than 108 bytes and hold no NUL",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    // SAFETY: plain socket(2) call; its result is checked.
    let fd = crate::cvt_int(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: the kernel just returned `fd` and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, initialised sockaddr_un of `len` bytes.
    crate::cvt_int(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // SAFETY: plain listen(2) on a socket we own.
    crate::cvt_int(unsafe { libc::listen(sock.as_raw_fd(), backlog) })?;
    Ok(sock)
}

/// Accepts one connection (close-on-exec); `WouldBlock` on a non-blocking
/// listener with none waiting.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers ask accept4 not to report the peer address.
    let fd = crate::cvt_int(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned `fd` and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid of the process that connected `sock`, in this process's pid
/// namespace, as the kernel recorded it at connect time (`SO_PEERCRED`).
pub fn peer_pid(sock: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
    // SAFETY: all-zero is a valid ucred.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of a ucred.
    crate::cvt_int(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.pid)
}

/// Sends `bytes` as one message with `fds` attached (SCM_RIGHTS).
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 8]; // 64 bytes, aligned for cmsghdr: room for MAX_FDS
                                 // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are size computations; CMSG_SPACE of
        // MAX_FDS ints (32 bytes) fits the 64-byte control buffer, so the header
        // CMSG_FIRSTHDR returns and the data written after it lie inside it.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
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

/// Receives one message into `buf`: its length (0 at end of stream) and the
/// descriptors sent with it, made close-on-exec (at most [`MAX_FDS`]; a
/// message that carried more is refused, and what it carried is closed).
/// With `nonblocking`, `WouldBlock` when none is queued.
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8]; // 64 bytes, aligned for cmsghdr: room for MAX_FDS
                                 // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let flags = libc::MSG_CMSG_CLOEXEC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = crate::cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) } as libc::c_long)?
        as usize;
    let mut received = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG
    // macros walk only within it, and an SCM_RIGHTS header carries
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors, each now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    received.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message longer than the buffer, or with too many descriptors",
        ));
    }
    Ok((n, received))
}

/// Receives one message without waiting: `Ok(None)` when none is queued,
/// `Ok(Some(0))` at end of stream. Descriptors sent with it are closed.
pub fn recv_now(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    match crate::cvt(n as libc::c_long) {
        Ok(n) => Ok(Some(n as usize)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Raises the socket's send buffer to `bytes` (root may pass the system maximum).
pub fn force_send_buffer(sock: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    set_int_option(sock, libc::SO_SNDBUFFORCE, bytes)
}

/// Sets the socket's send buffer to `bytes`, within the system maximum
/// (the kernel doubles it for its own bookkeeping; any user may).
pub fn set_send_buffer(sock: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    set_int_option(sock, libc::SO_SNDBUF, bytes)
}

/// The socket's send buffer, as the kernel counts it (doubled).
pub fn send_buffer(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `bytes` and `len` are valid for getsockopt to write an int and
    // its length into for the call's duration.
    crate::cvt_int(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut bytes as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(usize::try_from(bytes).unwrap_or(0))
}

fn set_int_option(sock: BorrowedFd<'_>, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid int option value for the call's duration.
    crate::cvt_int(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A pidfd for `pid`, which need not be our child (`pidfd_open`).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (0); its result is checked.
    let fd = crate::cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Asks the kernel to attach each sender's credentials to what `sock`
/// receives (`SO_PASSCRED`), for [`recv_credentials`].
pub fn pass_credentials(sock: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(sock, libc::SO_PASSCRED, 1)
}

/// Receives one message into `buf` (waiting for it): its length (0 at end
/// of stream) and the pid that sent it, as the kernel checked it and
/// translated it into our pid namespace (`SCM_CREDENTIALS`; the socket must
/// have [`pass_credentials`] set). Descriptors sent with it are closed.
pub fn recv_credentials(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<libc::pid_t>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16]; // 128 bytes: a ucred, and descriptors to close
                                  // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = crate::cvt(
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }
            as libc::c_long,
    )? as usize;
    let mut pid = None;
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG
    // macros walk only within it; an SCM_CREDENTIALS header carries one
    // ucred, and an SCM_RIGHTS one descriptors that are now ours to close.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if bytes >= std::mem::size_of::<libc::ucred>() =>
                {
                    let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    pid = Some(cred.pid);
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    let fds = data.cast::<RawFd>();
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        drop(OwnedFd::from_raw_fd(std::ptr::read_unaligned(fds.add(i))));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message longer than the buffer, or with too much attached",
        ));
    }
    Ok((n, pid))
}
