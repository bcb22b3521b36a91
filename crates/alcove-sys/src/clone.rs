//! `clone3(2)`: one call that creates the sandbox's first process in its new
//! namespaces, hands back a pidfd, and (on cgroup v2) places it in its cgroup.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `CLONE_PIDFD`: return a pidfd for the child.
pub const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP`: start the child in the cgroup v2 directory given by fd.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
pub const CLONE_NEWNS: u64 = libc::CLONE_NEWNS as u64;
pub const CLONE_NEWPID: u64 = libc::CLONE_NEWPID as u64;
pub const CLONE_NEWIPC: u64 = libc::CLONE_NEWIPC as u64;
pub const CLONE_NEWUTS: u64 = libc::CLONE_NEWUTS as u64;
pub const CLONE_NEWNET: u64 = libc::CLONE_NEWNET as u64;
pub const CLONE_NEWCGROUP: u64 = libc::CLONE_NEWCGROUP as u64;
pub const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of the clone this process is on.
#[derive(Debug)]
pub enum Forked {
    /// The new process. It must end in `execve` or `_exit`.
    Child,
    /// The caller, with the child's pid (in the caller's pid namespace) and pidfd.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// Creates a child process with `flags` (namespace flags; `CLONE_PIDFD` is always
/// added) that receives `SIGCHLD` on exit, optionally starting in the cgroup v2
/// directory `cgroup`.
///
/// # Safety
///
/// Like `fork(2)`: the caller must be single-threaded, or the child must do only
/// async-signal-safe work. The child shares no memory with the parent, and must
/// leave only through `execve` or `_exit`, never by returning into code that
/// assumes it is the parent (destructors, buffered output, test harnesses).
pub unsafe fn clone3(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid, fully initialised `clone_args` of the size we
    // pass, `pidfd` outlives the call, and no stack is given so the child runs on
    // a copy of this stack exactly like fork. The caller upholds the fork-safety
    // contract documented above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match crate::cvt(ret)? {
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a fresh, owned pidfd.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: pid as libc::pid_t,
                pidfd,
            })
        }
    }
}
