//! Signal masks and signalfd, for a supervisor that handles signals in its poll loop.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A saved signal mask, restored with [`restore_mask`].
pub struct SavedMask(libc::sigset_t);

fn set_of(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` for the calling thread and returns the previous mask.
pub fn block(signals: &[i32]) -> io::Result<SavedMask> {
    let set = set_of(signals);
    // SAFETY: a zeroed sigset_t is a valid out-parameter.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(SavedMask(old))
}

/// Restores a mask saved by [`block`].
pub fn restore_mask(mask: &SavedMask) {
    // SAFETY: the saved mask is a valid sigset_t.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) };
}

/// Unblocks every signal and restores the default action of SIGPIPE (which the
/// Rust runtime ignores, and an ignored disposition would survive execve).
pub fn reset_for_exec() {
    let empty = set_of(&[]);
    // SAFETY: `empty` is a valid set; a null old-mask pointer is allowed; SIG_DFL
    // is a valid disposition for SIGPIPE.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The signals whose disposition is not the default now (ignored, or
/// caught; glibc's own 32 and 33 included), for a child to set back with
/// [`set_default`] before its exec: found once, so that each start need
/// not ask about all 64.
pub fn changed_dispositions() -> Vec<i32> {
    (1..=64)
        .filter(|&signal| signal != libc::SIGKILL && signal != libc::SIGSTOP)
        .filter(|&signal| !is_default(signal))
        .collect()
}

/// Restores SIGPIPE's default action, so a command printing into a closed
/// pipe (`alcove image ls | head`) ends quietly as Unix tools do.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A non-blocking, close-on-exec signalfd for `signals` (which must be blocked).
pub fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = set_of(signals);
    // SAFETY: `set` is a valid sigset_t; -1 asks for a new descriptor.
    let fd = crate::cvt_int(unsafe {
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    })?;
    // SAFETY: signalfd returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from a signalfd; `None` when none is pending.
pub fn read_signal(fd: BorrowedFd<'_>) -> Option<i32> {
    // SAFETY: a zeroed signalfd_siginfo is a valid buffer.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let len = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is valid for writes of `len` bytes.
    let ret = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            len,
        )
    };
    (ret as usize == len).then_some(info.ssi_signo as i32)
}

/// Blocks every signal and returns the previous mask.
pub fn block_all() -> io::Result<SavedMask> {
    // SAFETY: sigfillset initialises the set.
    let all = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    };
    // SAFETY: a zeroed sigset_t is a valid out-parameter.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let ret = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old) };
    crate::cvt_int(ret)?;
    Ok(SavedMask(old))
}

/// Waits for any (blocked) signal and returns its number.
pub fn wait_any() -> i32 {
    // SAFETY: sigfillset initialises the set; sigwaitinfo accepts a null info.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if sig > 0 {
                return sig;
            }
        }
    }
}

/// Sets the calling thread's mask of all 64 signals to `mask` (bit n-1 for
/// signal n) and returns the one before: the kernel's call, since glibc's
/// leaves its own signals 32 and 33 out. Allocates nothing, so a vfork
/// child may call it.
pub fn swap_mask(mask: u64) -> io::Result<u64> {
    let mut old = 0u64;
    // SAFETY: both pointers are valid 8-byte sets for the call, and 8 is the
    // kernel's sigset size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    };
    crate::cvt(ret).map(|_| old)
}

/// The kernel's struct sigaction (not glibc's, which refuses glibc's own
/// signals 32 and 33): handler, flags, restorer, mask.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Sets `signal`'s disposition to the default, whatever glibc reserves it
/// for. Allocates nothing, so a vfork child may call it.
pub fn set_default(signal: i32) {
    let action = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: `action` is a valid kernel sigaction for the duration of the
    // call, the old-action pointer is null, and the size is the kernel's
    // sigset size (8 bytes). SIG_DFL runs no code of ours; SIGKILL and
    // SIGSTOP answer EINVAL, which changes nothing.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            &action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Whether `signal`'s disposition is the default, as the kernel has it.
fn is_default(signal: i32) -> bool {
    let mut old = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: a null new action only queries; `old` is a valid out-parameter
    // of the kernel's layout; the size is the kernel's sigset size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            std::ptr::null::<KernelSigaction>(),
            &mut old as *mut KernelSigaction,
            8usize,
        )
    };
    ret != 0 || old.handler == libc::SIG_DFL
}

/// Sets every signal's disposition back to the default (ignored ones stay
/// ignored across execve otherwise, whoever ignored them: the Rust runtime,
/// a caller, glibc's reserved real-time signals).
pub fn default_all_dispositions() {
    for signal in 1..=64 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            set_default(signal);
        }
    }
}
