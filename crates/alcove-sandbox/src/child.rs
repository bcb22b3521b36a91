//! What the sandbox's first process does between `clone3` and `execve`.
//!
//! Everything here was computed by the parent; the child only executes it,
//! without allocating, and reports the first failure through a pipe as a fixed
//! record the parent turns into an error message.

use crate::mounts::{Applier, MountOp};
use alcove_sys::{caps, fd, fs, net, ns, process, seccomp};
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

/// Which setup step failed, as sent through the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    Lifeline = 1,
    CgroupJoin,
    CgroupNamespace,
    NetworkNamespace,
    Loopback,
    Session,
    MountNamespace,
    Mount,
    Hostname,
    Workdir,
    Rlimits,
    Capabilities,
    Groups,
    Uid,
    DeathSignal,
    Stdio,
    FdCleanup,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Init,
    Exec,
    ExecNotFound,
    ExecDenied,
}

impl Stage {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        // Stages are numbered consecutively from Lifeline (1) to ExecDenied.
        (Stage::Lifeline as u32..=Stage::ExecDenied as u32)
            .contains(&v)
            // SAFETY: Stage is repr(u32) with consecutive discriminants, and
            // `v` lies within them.
            .then(|| unsafe { std::mem::transmute::<u32, Stage>(v) })
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::Lifeline => "checking that alcove is still alive",
            Stage::CgroupJoin => "joining the sandbox's cgroups",
            Stage::CgroupNamespace => "creating the cgroup namespace",
            Stage::NetworkNamespace => "joining the network namespace",
            Stage::Loopback => "bringing up loopback",
            Stage::Session => "starting a new session",
            Stage::MountNamespace => "entering the template mount namespace",
            Stage::Mount => "building the filesystem",
            Stage::Hostname => "setting the hostname",
            Stage::Workdir => "entering the working directory",
            Stage::Rlimits => "setting resource limits",
            Stage::Capabilities => "dropping capabilities",
            Stage::Groups => "setting the group ids",
            Stage::Uid => "setting the user id",
            Stage::DeathSignal => "arming the parent-death signal",
            Stage::Stdio => "connecting stdio",
            Stage::FdCleanup => "closing inherited file descriptors",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Landlock => "imposing the Landlock path rules",
            Stage::Seccomp => "loading the seccomp filter",
            Stage::Init => "starting the init process",
            Stage::Exec | Stage::ExecNotFound | Stage::ExecDenied => "executing the program",
        }
    }
}

/// The fixed-size failure record: stage, index of the failing op, errno.
pub(crate) const REPORT_LEN: usize = 12;

/// Phase timestamps the child records when asked (see `Phases`), in the first
/// slots of the shared page.
pub(crate) const PHASE_SLOTS: usize = 4;
/// Where, in the shared page, `--init` leaves the program's wait status
/// (`1 << 32 | status`), since its own exit cannot carry a signal.
pub(crate) const PROGRAM_STATUS_SLOT: usize = 4;
/// Slots in the shared page.
pub(crate) const SHARED_SLOTS: usize = 5;

/// Everything the child needs, prepared by the parent.
pub(crate) struct ChildPlan {
    pub lifeline_write: RawFd,
    pub lifeline_read: RawFd,
    pub error_pipe: RawFd,
    pub cgroup_procs: Vec<RawFd>,
    /// v1 hierarchies are joined after clone, so the cgroup namespace must be
    /// created after that rather than by clone3.
    pub unshare_cgroupns: bool,
    pub netns: Option<RawFd>,
    /// A template mount namespace to copy (host view); `None` when the child was
    /// cloned into a copy of the host's and builds everything itself (--rootfs).
    pub template: Option<RawFd>,
    pub loopback_up: bool,
    pub mount_ops: Vec<MountOp>,
    pub hostname: Vec<u8>,
    pub workdir: CString,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub uid: u32,
    pub gid: u32,
    /// `(fd in the child, target)` pairs for captured stdout/stderr.
    pub stdio: Vec<(RawFd, RawFd)>,
    /// Descriptors the program keeps across exec.
    pub keep_fds: Vec<RawFd>,
    pub seccomp: &'static [libc::sock_filter],
    pub exec_candidates: Vec<CString>,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// The page shared with the parent (phase timestamps, the program's
    /// status under `--init`), or null.
    pub shared: *mut u64,
    /// Whether to write phase timestamps to the shared page.
    pub record_phases: bool,
    /// Stay as PID 1 (a minimal init) and run the program as its child.
    pub init: bool,
    /// A Landlock ruleset to impose.
    pub landlock: Option<LandlockPlan>,
    /// A second seccomp filter: a `--policy` profile's allow-list.
    pub profile_filter: Option<Vec<libc::sock_filter>>,
}

/// The Landlock rights the ruleset handles, and `(path, allowed rights)` rules.
pub(crate) struct LandlockPlan {
    pub handled: u64,
    pub rules: Vec<(CString, u64)>,
}

/// Runs the plan and execs the program. Never returns.
pub(crate) fn run(plan: &ChildPlan) -> ! {
    mark(plan, 0);
    let result = setup(plan);
    let (stage, index, err) = match result {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    let errno = err.raw_os_error().unwrap_or(0);
    let mut record = [0u8; REPORT_LEN];
    record[0..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    record[4..8].copy_from_slice(&index.to_ne_bytes());
    record[8..12].copy_from_slice(&errno.to_ne_bytes());
    let _ = fd::write_all(plan.error_pipe, &record);
    let code = match stage {
        Stage::ExecNotFound => 127,
        Stage::ExecDenied => 126,
        _ => 125,
    };
    process::exit_now(code)
}

type Failure = (Stage, u32, io::Error);

fn at(stage: Stage) -> impl Fn(io::Error) -> Failure {
    move |e| (stage, 0, e)
}

fn mark(plan: &ChildPlan, slot: usize) {
    if plan.record_phases && !plan.shared.is_null() && slot < PHASE_SLOTS {
        // SAFETY: the parent mapped SHARED_SLOTS u64s, shared and writable, at
        // `shared`; this process is single-threaded.
        unsafe {
            plan.shared
                .add(slot)
                .write_volatile(process::monotonic_ns())
        };
    }
}

enum Never {}

fn setup(plan: &ChildPlan) -> Result<Never, Failure> {
    for &procs in &plan.cgroup_procs {
        fd::write_all(procs, b"0").map_err(at(Stage::CgroupJoin))?;
    }
    if plan.unshare_cgroupns {
        ns::unshare(libc::CLONE_NEWCGROUP).map_err(at(Stage::CgroupNamespace))?;
    }
    if let Some(netns) = plan.netns {
        // SAFETY: the parent opened this namespace fd and keeps it open until
        // the child has exec'd.
        let netns = unsafe { std::os::fd::BorrowedFd::borrow_raw(netns) };
        ns::setns(netns, libc::CLONE_NEWNET).map_err(at(Stage::NetworkNamespace))?;
    }
    if plan.loopback_up {
        net::loopback_up().map_err(at(Stage::Loopback))?;
    }
    process::setsid().map_err(at(Stage::Session))?;
    // Modes in the plan are exact while building; the program gets the usual 022.
    process::set_umask(0);
    mark(plan, 1);
    if let Some(template) = plan.template {
        // SAFETY: the parent keeps the template fd open until the child has exec'd.
        let template = unsafe { std::os::fd::BorrowedFd::borrow_raw(template) };
        ns::setns(template, libc::CLONE_NEWNS).map_err(at(Stage::MountNamespace))?;
        ns::unshare(libc::CLONE_NEWNS).map_err(at(Stage::MountNamespace))?;
    }
    let mut applier = Applier::default();
    for (index, op) in plan.mount_ops.iter().enumerate() {
        applier
            .apply(op)
            .map_err(|e| (Stage::Mount, index as u32, e))?;
    }
    drop(applier);
    process::set_umask(0o022);
    mark(plan, 2);
    ns::sethostname(&plan.hostname).map_err(at(Stage::Hostname))?;
    fs::chdir(&plan.workdir).map_err(at(Stage::Workdir))?;
    for &(resource, soft, hard) in &plan.rlimits {
        process::setrlimit(resource, soft, hard).map_err(at(Stage::Rlimits))?;
    }
    caps::drop_bounding_and_lock().map_err(at(Stage::Capabilities))?;
    process::set_gids(plan.gid, &[plan.gid]).map_err(at(Stage::Groups))?;
    process::set_uid(plan.uid).map_err(at(Stage::Uid))?;
    caps::clear_all().map_err(at(Stage::Capabilities))?;
    // After the uid change, which clears it.
    process::set_parent_death_signal(libc::SIGKILL).map_err(at(Stage::DeathSignal))?;
    check_lifeline(plan)?;
    for &(source, target) in &plan.stdio {
        fd::dup_onto(source, target).map_err(at(Stage::Stdio))?;
    }
    alcove_sys::signal::reset_for_exec();
    fd::cloexec_from(3).map_err(at(Stage::FdCleanup))?;
    for &keep in &plan.keep_fds {
        fd::set_cloexec(keep, false).map_err(at(Stage::FdCleanup))?;
    }
    process::set_no_new_privs().map_err(at(Stage::NoNewPrivs))?;
    if let Some(landlock) = &plan.landlock {
        restrict_paths(landlock.handled, &landlock.rules)?;
    }
    seccomp::install_filter(plan.seccomp).map_err(at(Stage::Seccomp))?;
    if let Some(profile) = &plan.profile_filter {
        seccomp::install_filter(profile).map_err(at(Stage::Seccomp))?;
    }
    mark(plan, 3);
    if plan.init {
        return init(plan);
    }
    exec(plan)
}

/// `--init`: fork the program, then stay as PID 1 forwarding signals to it and
/// reaping orphans, and exit when it does, leaving its wait status for alcove.
fn init(plan: &ChildPlan) -> Result<Never, Failure> {
    let all = alcove_sys::signal::block_all().map_err(at(Stage::Init))?;
    // SAFETY: this process is single-threaded; the child only restores the
    // signal mask and execs (or reports failure and _exits).
    let program = unsafe { process::fork() }.map_err(at(Stage::Init))?;
    if program == 0 {
        alcove_sys::signal::restore_mask(&all);
        return exec(plan);
    }
    // The init needs no descriptor: drop them all, so that the error pipe
    // reaches end-of-file at the program's exec, and the output pipes' read
    // ends (inherited from alcove, which the init never execs away) do not
    // keep a stream open that alcove has closed.
    let _ = fd::close_all();
    loop {
        match alcove_sys::signal::wait_any() {
            libc::SIGCHLD => {
                while let Some((pid, status)) = process::reap_any() {
                    if pid == program {
                        if !plan.shared.is_null() {
                            // SAFETY: the shared page holds SHARED_SLOTS u64s.
                            unsafe {
                                plan.shared
                                    .add(PROGRAM_STATUS_SLOT)
                                    .write_volatile(1 << 32 | status as u32 as u64)
                            };
                        }
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        process::exit_now(code);
                    }
                }
            }
            signal => {
                let _ = process::kill(program, signal); // our own child
            }
        }
    }
}

/// Imposes the Landlock path allow-list; paths missing in this root are skipped.
fn restrict_paths(handled: u64, rules: &[(CString, u64)]) -> Result<(), Failure> {
    use alcove_sys::landlock;
    use std::os::fd::AsFd;
    let ruleset = landlock::create_ruleset(handled).map_err(at(Stage::Landlock))?;
    for (index, (path, access)) in rules.iter().enumerate() {
        match landlock::allow_path(ruleset.as_fd(), path, *access) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err((Stage::Landlock, index as u32, e)),
        }
    }
    landlock::restrict_self(ruleset.as_fd()).map_err(at(Stage::Landlock))
}

/// Exits if alcove died before the parent-death signal was armed.
fn check_lifeline(plan: &ChildPlan) -> Result<(), Failure> {
    let _ = fd::close(plan.lifeline_write); // our inherited copy of the write end
    let mut pfd = [libc::pollfd {
        fd: plan.lifeline_read,
        events: libc::POLLIN,
        revents: 0,
    }];
    let ready = fd::poll(&mut pfd, Some(std::time::Duration::ZERO)).map_err(at(Stage::Lifeline))?;
    if ready > 0 && pfd[0].revents & libc::POLLHUP != 0 {
        process::exit_now(125); // alcove is gone; nobody is waiting for us
    }
    Ok(())
}

fn exec(plan: &ChildPlan) -> Result<Never, Failure> {
    let mut denied = None;
    for candidate in &plan.exec_candidates {
        let err = process::execve(candidate, &plan.argv, &plan.envp);
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => continue,
            Some(libc::EACCES) => denied = Some(err),
            _ => return Err((Stage::Exec, 0, err)),
        }
    }
    Err(match denied {
        Some(err) => (Stage::ExecDenied, 0, err),
        None => (
            Stage::ExecNotFound,
            0,
            io::Error::from_raw_os_error(libc::ENOENT),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::Stage;

    #[test]
    fn stages_round_trip_through_the_error_pipe_numbering() {
        for stage in [
            Stage::Lifeline,
            Stage::Mount,
            Stage::Seccomp,
            Stage::ExecDenied,
        ] {
            assert_eq!(Stage::from_u32(stage as u32), Some(stage));
        }
        assert_eq!(Stage::from_u32(0), None);
        assert_eq!(Stage::from_u32(Stage::ExecDenied as u32 + 1), None);
    }
}
