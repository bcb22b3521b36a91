//! Supervising a child through its pidfd: signals and the final wait.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
}

/// Sends `signal` to the process behind `pidfd`.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a pidfd and a signal number are plain values; a null info pointer
    // asks the kernel to fill in the usual kill(2) siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    crate::cvt(ret).map(drop)
}

/// Reaps the child behind `pidfd`, blocking until it has ended, and returns how
/// it ended with its resource usage (the kernel's `waitid` takes an rusage).
pub fn wait(pidfd: BorrowedFd<'_>) -> io::Result<(ExitStatus, libc::rusage)> {
    // SAFETY: zeroed siginfo_t and rusage are valid out-parameters.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: the raw waitid takes (idtype, id, infop, options, rusage); both
        // out-pointers are valid for writes for the duration of the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                pidfd.as_raw_fd(),
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED,
                &mut usage as *mut libc::rusage,
            )
        };
        match crate::cvt(ret) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: after a successful WEXITED wait the kernel filled si_code and
    // si_status.
    let status = unsafe { info.si_status() };
    let status = match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    };
    Ok((status, usage))
}

/// `struct pidfd_info` (Linux 6.13+, `PIDFD_GET_INFO`), its first version.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
    coredump_mask: u32,
    spare: u32,
}

/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: u64 =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as u64) << 16) | (0xff << 8) | 11;
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// How a process that is not our child ended, once it has been reaped, as
/// the kernel keeps it on its pidfd (`PIDFD_GET_INFO`, Linux 6.15+). `None`
/// where the kernel cannot say (older, or not yet reaped).
pub fn exit_info(pidfd: BorrowedFd<'_>) -> Option<ExitStatus> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: `info` is a valid, writable struct pidfd_info of the size the
    // request number encodes; the kernel writes at most that many bytes.
    let ret = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    if ret != 0 || info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    let raw = info.exit_code;
    Some(if libc::WIFEXITED(raw) {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    } else {
        ExitStatus::Signaled(libc::WTERMSIG(raw))
    })
}
