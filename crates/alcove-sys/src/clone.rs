//! `clone3(2)`: one call that creates the sandbox's first process in its new
//! namespaces, hands back a pidfd, and (on cgroup v2) places it in its cgroup.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// `CLONE_VM`: share the address space (no page tables copied).
pub const CLONE_VM: u64 = libc::CLONE_VM as u64;
/// `CLONE_VFORK`: suspend the caller until the child execs or exits.
pub const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;

/// A stack for a [`spawn_vfork`] child, with a guard page below it.
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Maps `len` bytes (rounded up to pages) plus a guard page.
    pub fn new(len: usize) -> io::Result<Self> {
        let page = 4096;
        let len = len.div_ceil(page) * page + page;
        // SAFETY: an anonymous private mapping with no address hint.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping we just made becomes the guard.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: unmapping exactly what was mapped above.
            unsafe { libc::munmap(base, len) };
            return Err(err);
        }
        Ok(ChildStack { base, len })
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Creates a child that shares this process's memory, runs `entry(arg)` on
/// `stack`, and lets the caller continue only once the child has exec'd or
/// exited (`CLONE_VM | CLONE_VFORK`, the way `posix_spawn` starts programs). No
/// page tables are copied, so it costs a fraction of a fork. `flags` adds
/// namespace flags; `CLONE_PIDFD` is always added, and its pidfd is None
/// where the kernel ignored it (gVisor's Sentry has no pidfds).
///
/// # Safety
///
/// `entry` runs in a separate process that shares every byte of memory with
/// the suspended caller: it must not allocate, take locks, unwind, or return;
/// it may write only memory the caller expects it to; it must end in `execve`
/// or `_exit`. `arg` must stay valid until this function returns. The caller
/// must be single-threaded (a vfork child shares libc's thread bookkeeping).
#[cfg(target_arch = "x86_64")]
pub unsafe fn spawn_vfork(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    stack: &mut ChildStack,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | CLONE_PIDFD | CLONE_VM | CLONE_VFORK,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // Under a seccomp filter that answers ENOSYS for clone3 (it cannot see
    // clone3's flags, so alcove's own sandboxes refuse it that way), the
    // older clone does the same, but for a cgroup to start in and for flags
    // in the exit signal's byte or above 32 bits. A refusal does not change:
    // once seen, clone3 is not tried again.
    let legacy_can = cgroup.is_none() && args.flags & (0xff | !0xffff_ffff) == 0;
    let (legacy_flags, top) = (args.flags, stack.base as u64 + stack.len as u64);
    let legacy = |pidfd: &mut libc::c_int| {
        // SAFETY: legacy clone takes the flags (with the exit signal in the
        // low byte, which `legacy_can` keeps free), the new stack's top
        // (16-byte aligned: a page-aligned base plus whole pages), and where
        // to store the pidfd; the caller upholds the vfork contract.
        unsafe {
            vfork_syscall(
                libc::SYS_clone,
                [
                    legacy_flags | libc::SIGCHLD as u64,
                    top,
                    pidfd as *mut libc::c_int as u64,
                ],
                entry,
                arg,
            )
        }
    };
    if legacy_can && CLONE3_REFUSED.load(Ordering::Relaxed) {
        let ret = legacy(&mut pidfd);
        return vfork_result(ret, pidfd);
    }
    // SAFETY: clone3 with a stack starts the child at the top of `stack`
    // (16-byte aligned: the mapping is page-aligned); `args` and `pidfd`
    // outlive the call; the caller upholds the vfork contract.
    let mut ret = unsafe {
        vfork_syscall(
            libc::SYS_clone3,
            [
                &mut args as *mut CloneArgs as u64,
                std::mem::size_of::<CloneArgs>() as u64,
                0,
            ],
            entry,
            arg,
        )
    };
    if ret == -(libc::ENOSYS as i64) && legacy_can {
        CLONE3_REFUSED.store(true, Ordering::Relaxed);
        ret = legacy(&mut pidfd);
    }
    vfork_result(ret, pidfd)
}

/// clone3 answered ENOSYS in this process (a seccomp filter refuses it).
static CLONE3_REFUSED: AtomicBool = AtomicBool::new(false);

fn vfork_result(ret: i64, pidfd: libc::c_int) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a fresh, owned pidfd, or
    // (a kernel that ignores the flag) left the -1 it was given.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((ret as libc::pid_t, pidfd))
}

/// Makes the clone syscall `nr` with `args` (rdi, rsi, rdx) and runs
/// `entry(arg)` in the child, on the stack the syscall gave it.
///
/// # Safety
///
/// `nr` and `args` must make a clone that gives the child a stack of its
/// own and suspends the caller until the child execs or exits; the caller
/// upholds [`spawn_vfork`]'s contract.
#[cfg(target_arch = "x86_64")]
unsafe fn vfork_syscall(
    nr: i64,
    args: [u64; 3],
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: only rax, rcx and r11 change across `syscall`, so in the child
    // r12 and r13 still hold `arg` and `entry`; it clears the frame pointer
    // and calls `entry`, which never returns (ud2 guards that). The parent,
    // resumed after the child's exec or exit, falls through with the result
    // in rax. r10 and r8 (clone's child_tid and tls) are zero; clone3 reads
    // neither. The caller upholds the rest (see above).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") nr => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") 0u64,
            in("r8") 0u64,
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}
