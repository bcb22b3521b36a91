//! Starting a program the way `posix_spawn` does (a `CLONE_VM | CLONE_VFORK`
//! child that execs at once, no page tables copied), without glibc's reset
//! of every signal disposition in each child: 64 queries and up to 64 sets,
//! ~50 us a start on a small VM. The caller names the dispositions to reset,
//! found once ([`crate::signal::changed_dispositions`]).

use crate::clone::ChildStack;
use std::ffi::CStr;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// What the child does between the clone and the exec, all prepared by the
/// caller: the child allocates nothing.
pub struct ExecPlan<'a> {
    /// The file to exec.
    pub path: &'a CStr,
    /// Null-terminated arrays of pointers to NUL-terminated strings.
    pub argv: &'a [*const libc::c_char],
    pub envp: &'a [*const libc::c_char],
    pub cwd: Option<&'a CStr>,
    /// `(source, target)`: the program gets `source` as `target`. Sources
    /// are left open in the caller.
    pub fds: &'a [(RawFd, RawFd)],
    /// A process group of its own (`setpgid(0, 0)`).
    pub new_process_group: bool,
    /// Set back to `SIG_DFL` (an ignored disposition survives `execve`).
    pub reset_signals: &'a [i32],
    /// A seccomp filter stacked on the caller's (which must have
    /// `no_new_privs` set already, or `CAP_SYS_ADMIN`).
    pub filter: Option<&'a [libc::sock_filter]>,
}

/// Which step of a start failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStep {
    /// The caller's side: descriptors, the signal mask, the clone.
    Prepare = 0,
    ProcessGroup,
    Descriptors,
    /// The change to `cwd`.
    Directory,
    Filter,
    Exec,
}

/// A start that failed, and at which step.
#[derive(Debug)]
pub struct SpawnError {
    pub step: SpawnStep,
    pub source: io::Error,
}

impl SpawnStep {
    /// What the step does, as a message names it.
    pub fn describe(self) -> &'static str {
        match self {
            SpawnStep::Prepare => "preparing the start",
            SpawnStep::ProcessGroup => "making its process group",
            SpawnStep::Descriptors => "setting up its descriptors",
            SpawnStep::Directory => "changing to its working directory",
            SpawnStep::Filter => "installing its seccomp filter",
            SpawnStep::Exec => "executing the program",
        }
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step.describe(), self.source)
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<io::Error> for SpawnError {
    fn from(source: io::Error) -> Self {
        SpawnError {
            step: SpawnStep::Prepare,
            source,
        }
    }
}

/// The plan and where the child reports why it failed (it shares our memory).
struct Shared<'p, 'a> {
    plan: &'p ExecPlan<'a>,
    fds: &'p [(RawFd, RawFd)],
    errno: AtomicI32,
    step: AtomicU8,
}

/// Starts `plan` on `stack` (reusable from call to call): the child's pid and
/// a pidfd for it (None on a kernel without pidfds: gVisor's). An error of the child's (a missing file or directory, a
/// refused exec) comes back as this call's error, with its step, the child
/// reaped. The new process
/// starts with every signal unblocked.
#[cfg(target_arch = "x86_64")]
pub fn spawn(
    plan: &ExecPlan<'_>,
    stack: &mut ChildStack,
) -> Result<(libc::pid_t, Option<OwnedFd>), SpawnError> {
    if plan.argv.last().is_none_or(|p| !p.is_null())
        || plan.envp.last().is_none_or(|p| !p.is_null())
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL).into());
    }
    // A source that an earlier pair's target would overwrite is moved out
    // of the way first (descriptors from SCM_RIGHTS take the lowest free
    // numbers, which can be 3).
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut fds = plan.fds.to_vec();
    let above = fds
        .iter()
        .map(|&(_, target)| target)
        .max()
        .unwrap_or(0)
        .max(2)
        + 1;
    for j in 0..fds.len() {
        if fds[..j].iter().any(|&(_, target)| target == fds[j].0) {
            // Above every target, so no target overwrites the copy either.
            // SAFETY: F_DUPFD_CLOEXEC takes integers and touches no memory.
            let copy =
                crate::cvt_int(unsafe { libc::fcntl(fds[j].0, libc::F_DUPFD_CLOEXEC, above) })?;
            // SAFETY: fcntl returned a new descriptor that nothing else owns.
            moved.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) });
            fds[j].0 = copy;
        }
    }
    let shared = Shared {
        plan,
        fds: &fds,
        errno: AtomicI32::new(0),
        step: AtomicU8::new(SpawnStep::Prepare as u8),
    };
    extern "C" fn entry(arg: *mut libc::c_void) -> ! {
        // SAFETY: `arg` is the `&Shared` below, alive until the child has
        // exec'd or exited: the parent is suspended until then.
        let shared = unsafe { &*(arg as *const Shared<'_, '_>) };
        let (step, err) = run_child(shared);
        shared.step.store(step as u8, Ordering::SeqCst);
        shared
            .errno
            .store(err.raw_os_error().unwrap_or(libc::EINVAL), Ordering::SeqCst);
        crate::process::exit_now(127)
    }
    // No signal handler of ours may run in the child (it shares our memory)
    // before it has reset the dispositions: all 64 blocked, glibc's own two
    // included (its sigprocmask leaves those out).
    let mask = crate::signal::swap_mask(u64::MAX)?;
    let arg = &shared as *const Shared<'_, '_> as *mut libc::c_void;
    // SAFETY: `run_child` makes only raw system calls through libc's thin
    // wrappers (no allocation, no lock, no unwinding), writes nothing of ours
    // but `errno` (an atomic) and ends in execve or _exit, so other threads
    // of this process can neither deadlock it nor see it change their state;
    // `shared` outlives the call (the parent resumes after the exec or exit).
    let started = unsafe { crate::clone::spawn_vfork(0, None, stack, entry, arg) };
    let _ = crate::signal::swap_mask(mask);
    drop(moved);
    let (pid, pidfd) = started?;
    match shared.errno.load(Ordering::SeqCst) {
        0 => Ok((pid, pidfd)),
        errno => {
            let _ = crate::process::wait_child(pid);
            let step = [
                SpawnStep::ProcessGroup,
                SpawnStep::Descriptors,
                SpawnStep::Directory,
                SpawnStep::Filter,
                SpawnStep::Exec,
            ]
            .into_iter()
            .find(|s| *s as u8 == shared.step.load(Ordering::SeqCst))
            .unwrap_or(SpawnStep::Prepare);
            Err(SpawnError {
                step,
                source: io::Error::from_raw_os_error(errno),
            })
        }
    }
}

/// A null-terminated array of pointers into `strings` (for
/// [`ExecPlan::argv`] and [`ExecPlan::envp`]), which must outlive it.
pub fn pointers(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn run_child(shared: &Shared<'_, '_>) -> (SpawnStep, io::Error) {
    let plan = shared.plan;
    for &signal in plan.reset_signals {
        crate::signal::set_default(signal);
    }
    // SAFETY: setpgid takes integers and touches no memory.
    if plan.new_process_group && unsafe { libc::setpgid(0, 0) } != 0 {
        return (SpawnStep::ProcessGroup, io::Error::last_os_error());
    }
    for &(source, target) in shared.fds {
        if let Err(e) = crate::fd::dup_onto(source, target) {
            return (SpawnStep::Descriptors, e);
        }
    }
    if let Some(dir) = plan.cwd {
        if let Err(e) = crate::fs::chdir(dir) {
            return (SpawnStep::Directory, e);
        }
    }
    if let Some(filter) = plan.filter {
        if let Err(e) = crate::seccomp::install_filter(filter) {
            return (SpawnStep::Filter, e);
        }
    }
    let _ = crate::signal::swap_mask(0);
    // SAFETY: the path is NUL-terminated; argv and envp are null-terminated
    // arrays (checked by `spawn`) of pointers the caller keeps alive.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    (SpawnStep::Exec, io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    /// Runs `sh -c script` with its stdout on a pipe: what it printed and its
    /// wait status.
    fn run(script: &str, reset: &[i32], cwd: Option<&CStr>) -> io::Result<(String, i32)> {
        let argv = [
            c"sh".to_owned(),
            c"-c".to_owned(),
            CString::new(script).unwrap(),
        ];
        let envp = [c"PATH=/usr/bin:/bin".to_owned(), c"ONLY=this".to_owned()];
        let (argv, envp) = (pointers(&argv), pointers(&envp));
        let (read, write) = crate::fd::pipe_cloexec()?;
        let plan = ExecPlan {
            path: c"/bin/sh",
            argv: &argv,
            envp: &envp,
            cwd,
            fds: &[(write.as_raw_fd(), 1)],
            new_process_group: true,
            reset_signals: reset,
            filter: None,
        };
        let mut stack = ChildStack::new(64 * 1024)?;
        let (pid, _pidfd) = spawn(&plan, &mut stack).map_err(|e| e.source)?;
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out)?;
        Ok((out, crate::process::wait_child(pid)?))
    }

    #[test]
    fn the_program_gets_its_arguments_descriptors_group_and_directory() {
        let (out, status) = run(
            "echo \"$ONLY $(env | wc -l)\"; pwd; ps -o pgid= -p $$; echo $$; exit 3",
            &[],
            Some(c"/tmp"),
        )
        .unwrap();
        assert_eq!(libc::WEXITSTATUS(status), 3, "{out}");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(
            lines[0], "this 3",
            "only its own environment (and sh's PWD)"
        );
        assert_eq!(lines[1], "/tmp");
        assert_eq!(lines[2], lines[3], "a process group of its own: {out}");
    }

    #[test]
    fn ignored_signals_named_are_reset_and_the_mask_is_empty() {
        let before = crate::signal::changed_dispositions();
        // SAFETY: SIG_IGN is a valid disposition for SIGUSR2; restored below.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        let named = crate::signal::changed_dispositions();
        assert!(
            named.contains(&libc::SIGUSR2),
            "{named:?} (before: {before:?})"
        );
        let status = "grep -E '^Sig(Ign|Blk)' /proc/self/status";
        let kept = run(status, &[], None).unwrap().0;
        let reset = run(status, &named, None).unwrap().0;
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_DFL) };
        let usr2 = 1u64 << (libc::SIGUSR2 - 1);
        let mask = |text: &str, key: &str| {
            let line = text.lines().find(|l| l.starts_with(key)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_ne!(mask(&kept, "SigIgn:") & usr2, 0, "not named: still ignored");
        assert_eq!(mask(&reset, "SigIgn:") & usr2, 0, "named: default again");
        assert_eq!(mask(&reset, "SigBlk:"), 0, "nothing blocked: {reset}");
    }

    #[test]
    fn under_a_filter_that_refuses_clone3_the_older_clone_starts_it() {
        // On a thread of its own: a filter without TSYNC binds this thread only.
        std::thread::spawn(|| {
            let stmt = |code: u32, k: u32| libc::sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            };
            let jump = |k: u32, jt: u8| libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt,
                jf: 0,
                k,
            };
            let filter = [
                stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0), // the syscall's number
                jump(libc::SYS_clone3 as u32, 1),
                stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
                stmt(
                    libc::BPF_RET | libc::BPF_K,
                    libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                ),
            ];
            crate::process::set_no_new_privs().unwrap();
            crate::seccomp::install_filter(&filter).unwrap();
            // SAFETY: a raw clone3 with a null argument only asks the filter.
            let refused = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
            let errno = io::Error::last_os_error().raw_os_error();
            assert_eq!(
                (refused, errno),
                (-1, Some(libc::ENOSYS)),
                "the filter holds"
            );
            let (out, status) = run("echo started", &[], None).unwrap();
            assert_eq!((out.as_str(), libc::WEXITSTATUS(status)), ("started\n", 0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_failed_exec_is_the_callers_error_and_leaves_no_child() {
        let strings = [c"nothing".to_owned()];
        let argv = pointers(&strings);
        let envp = pointers(&[]);
        let plan = ExecPlan {
            path: c"/nonexistent/program",
            argv: &argv,
            envp: &envp,
            cwd: None,
            fds: &[],
            new_process_group: false,
            reset_signals: &[],
            filter: None,
        };
        let mut stack = ChildStack::new(64 * 1024).unwrap();
        let err = spawn(&plan, &mut stack).unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert_eq!(err.step, SpawnStep::Exec, "{err}");
        let bad_dir = ExecPlan {
            path: c"/bin/true",
            cwd: Some(c"/nonexistent"),
            ..plan
        };
        let err = spawn(&bad_dir, &mut stack).unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert_eq!(err.step, SpawnStep::Directory, "{err}");
    }

    #[test]
    fn a_source_that_an_earlier_target_overwrites_is_moved_first() {
        // The pipe's write end becomes the child's 900 and 900 its 1, in that
        // order: the first must not overwrite 900 before it is copied onto 1.
        let (read, write) = crate::fd::pipe_cloexec().unwrap();
        let holder = crate::fd::pipe_cloexec().unwrap();
        let high = 900;
        crate::fd::dup_onto(holder.0.as_raw_fd(), high).unwrap();
        crate::fd::set_cloexec(high, true).unwrap();
        let strings = [c"sh".to_owned(), c"-c".to_owned(), c"echo ok".to_owned()];
        let argv = pointers(&strings);
        let envp = pointers(&[]);
        let plan = ExecPlan {
            path: c"/bin/sh",
            argv: &argv,
            envp: &envp,
            cwd: None,
            fds: &[(write.as_raw_fd(), high), (high, 1)],
            new_process_group: false,
            reset_signals: &[],
            filter: None,
        };
        let mut stack = ChildStack::new(64 * 1024).unwrap();
        let (pid, _pidfd) = spawn(&plan, &mut stack).unwrap();
        drop(write);
        crate::process::wait_child(pid).unwrap();
        crate::fd::close(high).unwrap();
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert_eq!(out, "", "its stdout was the other pipe (900 as it was)");
    }
}
