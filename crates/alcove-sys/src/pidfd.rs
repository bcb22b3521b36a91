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
    send_signal_with(pidfd, signal, 0)
}

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9+).
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// Sends `signal` to the process group of the process behind `pidfd` (Linux
/// 6.9+; EINVAL before): the pidfd names it, so no pid reused meanwhile can
/// stand for it.
pub fn send_signal_to_group(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    send_signal_with(pidfd, signal, PIDFD_SIGNAL_PROCESS_GROUP)
}

fn send_signal_with(pidfd: BorrowedFd<'_>, signal: i32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: a pidfd, a signal number and flags are plain values; a null
    // info pointer asks the kernel to fill in the usual kill(2) siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    crate::cvt(ret).map(drop)
}

/// Reaps the child behind `pidfd`, blocking until it has ended, and returns how
/// it ended with its resource usage (the kernel's `waitid` takes an rusage).
pub fn wait(pidfd: BorrowedFd<'_>) -> io::Result<(ExitStatus, libc::rusage)> {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let info = waitid(pidfd, libc::WEXITED, &mut usage)?;
    // SAFETY: after a successful WEXITED wait the kernel filled si_code and
    // si_status.
    let status = unsafe { info.si_status() };
    let status = match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    };
    Ok((status, usage))
}

/// The kernel's `waitid(P_PIDFD, pidfd, ..., options, usage)`, again when a
/// signal cuts it short; `usage` may be null.
fn waitid(
    pidfd: BorrowedFd<'_>,
    options: libc::c_int,
    usage: *mut libc::rusage,
) -> io::Result<libc::siginfo_t> {
    // SAFETY: all-zero is a valid siginfo_t for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: the raw waitid takes (idtype, id, infop, options, rusage);
        // `info` is valid for writes, and `usage` is null or valid for writes
        // (the caller's).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                pidfd.as_raw_fd(),
                &mut info as *mut libc::siginfo_t,
                options,
                usage,
            )
        };
        match crate::cvt(ret) {
            Ok(_) => return Ok(info),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reaps the child behind `pidfd` if it has ended: `Ok(true)` once reaped,
/// `Ok(false)` while it runs; an error (ECHILD) when it is not the caller's
/// child or was reaped already. Never blocks.
pub fn reap_if_ended(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    waitid_now(pidfd, libc::WEXITED | libc::WNOHANG)
}

/// Whether the process behind `pidfd` is the caller's child, ended or not
/// (it is left as it is).
pub fn is_child(pidfd: BorrowedFd<'_>) -> bool {
    waitid_now(pidfd, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT).is_ok()
}

/// `waitid(P_PIDFD)` with WNOHANG among `options`: whether a child was found ended.
fn waitid_now(pidfd: BorrowedFd<'_>, options: libc::c_int) -> io::Result<bool> {
    let info = waitid(pidfd, options, std::ptr::null_mut())?;
    // SAFETY: after a successful waitid the kernel set si_pid (0: none ended).
    Ok(unsafe { info.si_pid() } != 0)
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

/// What the kernel can say, through a pidfd, of how a process that is not
/// our child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It ended and its parent reaped it: this is how it ended.
    Ended(ExitStatus),
    /// Not reaped yet (it runs, or it is a zombie): ask again later.
    NotReaped,
    /// This kernel keeps no exit status on pidfds (before Linux 6.15: no
    /// `PIDFD_GET_INFO` before 6.13, and a reaped process's info is gone
    /// on 6.13 and 6.14).
    Unknowable,
}

/// How a process that is not our child ended, as the kernel keeps it on its
/// pidfd once the process is reaped (`PIDFD_GET_INFO`, Linux 6.15+).
pub fn exit_state(pidfd: BorrowedFd<'_>) -> ExitInfo {
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
    if ret != 0 {
        // ENOTTY/EINVAL: no PIDFD_GET_INFO; ESRCH: reaped, and its info not kept.
        return ExitInfo::Unknowable;
    }
    if info.mask & PIDFD_INFO_EXIT == 0 {
        return ExitInfo::NotReaped;
    }
    let raw = info.exit_code;
    ExitInfo::Ended(if libc::WIFEXITED(raw) {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    } else {
        ExitStatus::Signaled(libc::WTERMSIG(raw))
    })
}

/// [`exit_state`], `None` where the kernel cannot say (yet, or at all).
pub fn exit_info(pidfd: BorrowedFd<'_>) -> Option<ExitStatus> {
    match exit_state(pidfd) {
        ExitInfo::Ended(status) => Some(status),
        ExitInfo::NotReaped | ExitInfo::Unknowable => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']);
        let mut next = || {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        (next(), next()) >= (major, minor)
    }

    /// A running child is a child and not reaped; once it ends it is
    /// reaped (its status gone: a wait finds nothing); a process that is not
    /// our child is neither.
    #[test]
    fn reap_if_ended_reaps_only_an_ended_child() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read line"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawning sh");
        let pid = child.id() as libc::pid_t;
        let pidfd = crate::seqpacket::pidfd_open(pid).expect("pidfd_open");
        assert!(is_child(pidfd.as_fd()));
        assert!(!reap_if_ended(pidfd.as_fd()).expect("a running child"));
        drop(child.stdin.take()); // its read ends: it exits
        let ended = crate::fd::readable(pidfd.as_fd(), std::time::Duration::from_secs(10));
        assert!(ended.expect("poll"), "the child did not end within 10 s");
        assert!(is_child(pidfd.as_fd()), "a zombie is still a child");
        assert!(reap_if_ended(pidfd.as_fd()).expect("an ended child"));
        assert!(!is_child(pidfd.as_fd()), "reaped, it is no child any more");
        assert!(reap_if_ended(pidfd.as_fd()).is_err(), "reaped twice");
        assert!(
            child.try_wait().is_err(),
            "the standard library found it unreaped"
        );
        // Our parent is not our child.
        // SAFETY: getppid has no preconditions.
        let parent = crate::seqpacket::pidfd_open(unsafe { libc::getppid() }).expect("pidfd_open");
        assert!(!is_child(parent.as_fd()));
        assert!(reap_if_ended(parent.as_fd()).is_err());
    }

    /// A zombie is not reaped yet; once reaped, Linux 6.15+ says how it
    /// ended (older kernels cannot, and say so rather than guess).
    #[test]
    fn exit_state_waits_for_the_reap_then_says_how_it_ended() {
        for (script, want) in [
            ("exit 7", ExitStatus::Exited(7)),
            ("kill -SEGV $$", ExitStatus::Signaled(libc::SIGSEGV)),
        ] {
            let mut child = std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .expect("spawning sh");
            let pid = child.id() as libc::pid_t;
            let pidfd = crate::seqpacket::pidfd_open(pid).expect("pidfd_open");
            let ended = crate::fd::readable(pidfd.as_fd(), std::time::Duration::from_secs(10));
            assert!(ended.expect("poll"), "the child did not end within 10 s");
            let zombie = exit_state(pidfd.as_fd());
            child.wait().expect("reaping the child");
            let reaped = exit_state(pidfd.as_fd());
            if !kernel_at_least(6, 13) {
                eprintln!("SKIPPED exit_state: this kernel predates PIDFD_GET_INFO (Linux 6.13)");
                assert_eq!(reaped, ExitInfo::Unknowable);
                return;
            }
            assert_eq!(zombie, ExitInfo::NotReaped, "{script}: before the reap");
            if kernel_at_least(6, 15) {
                assert_eq!(reaped, ExitInfo::Ended(want), "{script}: after the reap");
                assert_eq!(exit_info(pidfd.as_fd()), Some(want));
            } else {
                eprintln!("SKIPPED exit_state after the reap: Linux 6.13/6.14 keep no exit status");
                assert_eq!(reaped, ExitInfo::Unknowable);
            }
        }
    }
}
