//! Installing a classic-BPF seccomp filter, and answering the syscalls a
//! filter hands to user space (seccomp user notification).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Installs `filter` on the calling thread. Requires `no_new_privs` or
/// `CAP_SYS_ADMIN`; the filter survives execve and cannot be removed.
pub fn install_filter(filter: &[libc::sock_filter]) -> io::Result<()> {
    install_filter_with_flags(filter, 0).map(drop)
}

/// Installs `filter` with `SECCOMP_FILTER_FLAG_*` `flags` through seccomp(2).
/// Returns the notification listener when `flags` holds
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`. Requires `no_new_privs` or
/// `CAP_SYS_ADMIN`. Allocates nothing, so a forked child may call it.
pub fn install_filter_with_flags(
    filter: &[libc::sock_filter],
    flags: u32,
) -> io::Result<Option<OwnedFd>> {
    // The kernel refuses longer programs too, but `len` is 16 bits and a
    // silently truncated program would be a different filter.
    if filter.is_empty() || filter.len() > libc::BPF_MAXINSNS as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel
    // copies the program before returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    let ret = crate::cvt(ret)?;
    let new_listener = flags as libc::c_ulong & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER != 0;
    if new_listener {
        let fd = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: with NEW_LISTENER the kernel returns a fresh descriptor
        // that nothing else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    if ret > 0 {
        // TSYNC without TSYNC_ESRCH: the id of a thread that could not take
        // the filter, which was then not installed at all. ESRCH is what
        // TSYNC_ESRCH would have said (a message would allocate).
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(None)
}

/// A classic-BPF program from raw `struct sock_filter`s (8 bytes each, native
/// byte order), the form alcove writes them in; trailing bytes short of an
/// instruction are ignored (check the length first).
pub fn filter_from_bytes(bytes: &[u8]) -> Vec<libc::sock_filter> {
    bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// One syscall waiting for an answer on a listener (`struct seccomp_notif`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The cookie that [`notif_send`] answers.
    pub id: u64,
    /// The caller's thread id, in the listener owner's pid namespace (0 if
    /// it is not visible there).
    pub pid: u32,
    /// The syscall number.
    pub nr: i32,
    /// The caller's `AUDIT_ARCH_*`.
    pub arch: u32,
    /// Where the caller made the call.
    pub instruction_pointer: u64,
    /// The raw syscall arguments.
    pub args: [u64; 6],
}

/// The kernel's structures grow at the end; buffers this large hold every
/// version so far (80 and 24 bytes) with room to spare.
const NOTIF_BUF: usize = 256;

fn notif_sizes() -> io::Result<libc::seccomp_notif_sizes> {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one seccomp_notif_sizes to the
    // pointer, which is valid for that.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    crate::cvt(ret)?;
    if usize::from(sizes.seccomp_notif) > NOTIF_BUF
        || usize::from(sizes.seccomp_notif_resp) > NOTIF_BUF
    {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    }
    Ok(sizes)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(b)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(b)
}

/// Waits for the next notified syscall on `listener`
/// (`SECCOMP_IOCTL_NOTIF_RECV`). Fails with ENOENT when the caller went
/// away before it was read, and EINTR when interrupted.
pub fn notif_recv(listener: BorrowedFd<'_>) -> io::Result<Notification> {
    notif_sizes()?;
    // The kernel wants the buffer zeroed and writes its own size, which
    // notif_sizes checked fits.
    let mut buf = [0u8; NOTIF_BUF];
    // SAFETY: `buf` is writable for NOTIF_BUF bytes, at least the kernel's
    // sizeof(struct seccomp_notif); the ioctl writes nothing else.
    let ret = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV as _,
            buf.as_mut_ptr(),
        )
    };
    crate::cvt_int(ret)?;
    // struct seccomp_notif { u64 id; u32 pid; u32 flags; struct seccomp_data
    // { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; } data; }
    let mut args = [0u64; 6];
    for (i, arg) in args.iter_mut().enumerate() {
        *arg = u64_at(&buf, 32 + 8 * i);
    }
    Ok(Notification {
        id: u64_at(&buf, 0),
        pid: u32_at(&buf, 8),
        nr: u32_at(&buf, 16) as i32,
        arch: u32_at(&buf, 20),
        instruction_pointer: u64_at(&buf, 24),
        args,
    })
}

/// Answers notification `id` (`SECCOMP_IOCTL_NOTIF_SEND`): the syscall
/// returns `val`, or fails with `error` when it is non-zero (a positive
/// errno, sent negated as the kernel wants); `flags` may hold
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` to let the syscall run instead.
pub fn notif_send(
    listener: BorrowedFd<'_>,
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
) -> io::Result<()> {
    notif_sizes()?;
    let mut buf = [0u8; NOTIF_BUF];
    // struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }
    buf[0..8].copy_from_slice(&id.to_ne_bytes());
    buf[8..16].copy_from_slice(&val.to_ne_bytes());
    buf[16..20].copy_from_slice(&error.wrapping_neg().to_ne_bytes());
    buf[20..24].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `buf` is readable for NOTIF_BUF bytes, at least the kernel's
    // sizeof(struct seccomp_notif_resp), and zero past the fields we set.
    let ret = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            buf.as_ptr(),
        )
    };
    crate::cvt_int(ret).map(drop)
}
