//! Process identity and limits: uids, gids, rlimits, prctl flags, exec, exit.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Sets real, effective and saved gids to `gid` and the supplementary groups
/// to `groups`, for the calling thread only. These are the raw syscalls, not
/// libc's wrappers, which broadcast to every thread libc knows of; a vfork
/// child shares libc's memory with its parent and must change only itself.
pub fn set_gids(gid: libc::gid_t, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: `groups` is valid for reads of its length.
    crate::cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain integer arguments.
    crate::cvt(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

/// Sets real, effective and saved uids to `uid`, for the calling thread only
/// (the raw syscall; see [`set_gids`]).
pub fn set_uid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    crate::cvt(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// Sets resource limit `resource` to `soft`/`hard`.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    crate::cvt_int(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

/// The process group of `pid`, or `None` where it is gone (or not visible).
pub fn group_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    // SAFETY: getpgid takes a plain pid.
    let group = unsafe { libc::getpgid(pid) };
    (group > 0).then_some(group)
}

/// This process's soft and hard limits on open files.
fn open_files_limits() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer for the duration of the call.
    crate::cvt_int(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok(limit)
}

/// This process's soft limit on open files.
pub fn open_files_limit() -> io::Result<u64> {
    open_files_limits().map(|limit| limit.rlim_cur)
}

/// Raises this process's soft limit on open files to its hard limit (a
/// daemon holding many sandboxes' pipes and terminals needs more than the
/// usual 1024); returns the new soft limit.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let limit = open_files_limits()?;
    if limit.rlim_cur < limit.rlim_max {
        setrlimit(libc::RLIMIT_NOFILE, limit.rlim_max, limit.rlim_max)?;
    }
    Ok(limit.rlim_max)
}

/// Sets `no_new_privs`: execve can never grant privileges again.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    crate::cvt_int(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// Asks the kernel to send `signal` to the caller when its parent thread dies.
pub fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes integer arguments only.
    crate::cvt_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) }).map(drop)
}

/// Replaces the process image. Returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    assert!(argv.last().is_some_and(|p| p.is_null()));
    assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: `path` is NUL-terminated; `argv` and `envp` are null-terminated
    // arrays of pointers to NUL-terminated strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Ends the calling process at once, without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Reads `CLOCK_MONOTONIC` in nanoseconds (through the vDSO: no syscall).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reaps one exited child without blocking: `(pid, raw wait status)`, or
/// `None` when none is waiting.
pub fn reap_any() -> Option<(libc::pid_t, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-parameter.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// The host's memory in bytes (sysinfo(2)'s total RAM).
pub fn memory_total_bytes() -> io::Result<u64> {
    // SAFETY: sysinfo fills the zeroed struct it is given and keeps no pointer.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    crate::cvt_int(unsafe { libc::sysinfo(&mut info) })?;
    Ok((info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1))))
}

/// The caller's effective uid.
pub fn effective_uid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the caller's effective uid is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `signal` to process `pid` (allocation-free: a vfork child may call it).
pub fn kill(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    crate::cvt_int(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Sets the nice value of process `pid` (of its one thread, for a
/// single-threaded process); lowering it needs CAP_SYS_NICE.
pub fn set_nice(pid: libc::pid_t, nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers.
    crate::cvt_int(unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) })
        .map(drop)
}

/// Whether a process `pid` exists (signal 0: nothing is sent).
pub fn exists(pid: libc::pid_t) -> bool {
    kill(pid, 0).is_ok()
}

/// 16 bytes from the kernel's random source as 32 hex digits: ids and
/// unguessable names for staging directories.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(
        n, 16,
        "getrandom cannot fail for 16 bytes once the pool is ready"
    );
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a new session (and process group) led by the caller: no
/// controlling terminal, so nothing can be injected through one.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    crate::cvt_int(unsafe { libc::setsid() }).map(drop)
}

/// Sets the file mode creation mask; returns the previous one.
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask takes and returns plain integers and cannot fail.
    unsafe { libc::umask(mask) }
}

/// Forks: `Ok(0)` in the child, the child's pid in the parent.
///
/// # Safety
/// The caller must be single-threaded (or the child must only call
/// async-signal-safe functions before exec or `_exit`).
pub unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller upholds fork's single-threaded requirement.
    crate::cvt_int(unsafe { libc::fork() })
}

/// How many threads the calling process has (from /proc/self/status).
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Threads: line"))
}

/// Proof, checked once, that the process had one thread. Forking is safe
/// with it only while the process stays single-threaded: a program that
/// takes one must not start threads afterwards (it is `!Send`, so it cannot
/// be handed to a thread either). Children inherit it through the fork.
#[derive(Debug, Clone, Copy)]
pub struct SingleThreaded(std::marker::PhantomData<*const ()>);

impl SingleThreaded {
    /// Checks that the caller has exactly one thread.
    pub fn check() -> io::Result<SingleThreaded> {
        if thread_count()? != 1 {
            return Err(io::Error::from_raw_os_error(libc::EDEADLK));
        }
        Ok(SingleThreaded(std::marker::PhantomData))
    }

    /// Forks: `Ok(None)` in the child, `Ok(Some(pid))` in the parent. With one
    /// thread no lock can be held by a thread missing from the child, so the
    /// child may allocate and run ordinary code before it execs or exits.
    pub fn fork(&self) -> io::Result<Option<libc::pid_t>> {
        // SAFETY: `self` proves the process is single-threaded (see the type).
        match unsafe { fork() }? {
            0 => Ok(None),
            pid => Ok(Some(pid)),
        }
    }
}

/// Waits for child `pid` to end and returns its raw wait status (retrying
/// on EINTR).
pub fn wait_child(pid: libc::pid_t) -> io::Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-parameter.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The exit code a shell would report for raw wait status `status`
/// (128 + the signal for a process killed by one).
pub fn exit_code_of(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// Makes the caller a child subreaper: orphaned descendants are reparented
/// to it, so it can wait for a grandchild once the child between exits.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only.
    crate::cvt_int(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// Sets or clears PR_SET_KEEPCAPS: whether the permitted capabilities
/// survive a change from uid 0 to another uid.
pub fn set_keep_caps(keep: bool) -> io::Result<()> {
    // SAFETY: PR_SET_KEEPCAPS takes integer arguments only.
    crate::cvt_int(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// Sets the execution domain (personality(2)); only the base domain
/// (`PER_LINUX` or `PER_LINUX32`) is meant to be passed here.
pub fn set_personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: personality takes a plain integer.
    crate::cvt_int(unsafe { libc::personality(persona) }).map(drop)
}

/// Changes the root directory of the caller to `path` (chroot(2)).
pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    crate::cvt_int(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// Sets whether the process is dumpable. A non-dumpable process's
/// /proc/PID entries (exe, fd, mem) are closed to processes without
/// CAP_SYS_PTRACE in its user namespace, and ptrace needs that capability too:
/// what keeps a container from reaching the runtime while it works in the
/// container's namespaces. execve of an ordinary program sets it back.
pub fn set_dumpable(dumpable: bool) -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    crate::cvt_int(unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong, 0, 0, 0)
    })
    .map(drop)
}

/// A sealed, read-only copy of the running executable in a memfd named
/// `name`: nothing can write it, so a process that reaches it through
/// /proc/PID/exe cannot change the binary on the host (runc's fix for
/// CVE-2019-5736).
pub fn sealed_copy_of_self(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; flags are plain integers.
    let fd = crate::cvt_int(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut exe = std::fs::File::open("/proc/self/exe")?;
    let mut copy = std::fs::File::from(fd);
    std::io::copy(&mut exe, &mut copy)?;
    let fd = OwnedFd::from(copy);
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl F_ADD_SEALS on an fd we own takes plain flags.
    crate::cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(fd)
}

/// Executes the file open at `fd` (execveat with AT_EMPTY_PATH). Returns
/// only on failure.
pub fn execute_fd(
    fd: BorrowedFd<'_>,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    assert!(
        argv.last().is_some_and(|p| p.is_null()),
        "argv ends in null"
    );
    assert!(
        envp.last().is_some_and(|p| p.is_null()),
        "envp ends in null"
    );
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH uses
    // `fd`); `argv` and `envp` are null-terminated arrays (checked above) of
    // pointers to NUL-terminated strings that the caller keeps alive.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

impl SingleThreaded {
    /// As [`fork`](Self::fork), the child starting in the cgroup v2 directory
    /// open at `cgroup` (clone3 with CLONE_INTO_CGROUP): no migration
    /// afterwards, whose lock waits for an RCU grace period when the process
    /// moved is not the caller itself.
    pub fn fork_into(&self, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Option<libc::pid_t>> {
        // SAFETY: `self` proves the process is single-threaded (see the type).
        match unsafe { crate::clone::clone3(0, cgroup) }? {
            crate::clone::Forked::Child => Ok(None),
            crate::clone::Forked::Parent { pid, .. } => Ok(Some(pid)),
        }
    }
}

impl SingleThreaded {
    /// As [`fork_into`](Self::fork_into), the child also made in the new
    /// namespaces `flags` names (`CLONE_NEW*`): with `CLONE_NEWPID` it is
    /// pid 1 of its namespace.
    pub fn clone_into(
        &self,
        flags: u64,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> io::Result<Option<libc::pid_t>> {
        // SAFETY: `self` proves the process is single-threaded (see the type).
        match unsafe { crate::clone::clone3(flags, cgroup) }? {
            crate::clone::Forked::Child => Ok(None),
            crate::clone::Forked::Parent { pid, .. } => Ok(Some(pid)),
        }
    }
}

/// Whether `pid` is a child of this process (running, or ended and not yet
/// reaped), without reaping it.
pub fn is_child(pid: libc::pid_t) -> bool {
    // SAFETY: all-zero is a valid siginfo_t for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t; WNOWAIT leaves the child as it is.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    pid > 0 && rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raised, the soft limit reads back as the hard limit it was raised to.
    #[test]
    fn the_open_files_limit_reads_back_as_raised() {
        let before = open_files_limit().expect("getrlimit");
        let raised = raise_open_files_limit().expect("raising the limit");
        assert!(raised >= before, "{raised} < {before}");
        assert_eq!(open_files_limit().expect("getrlimit"), raised);
    }
}
