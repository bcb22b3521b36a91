//! Starting a sandbox: prepare in the parent, one clone3, then supervise.

mod pieces;
mod program;

use crate::child::{self, ChildPlan};
use crate::mounts::{self, HostView, STAGING_DIR};
use crate::spec::{Bind, NetMode, SandboxSpec};
use crate::supervise::{self, Supervision};
use crate::{pool, template};
use crate::{Outcome, SandboxError};
use alcove_cgroup::{CgroupLayout, Controller, CpuQuota, SandboxCgroup};
use alcove_sys::clone::{self, Forked};
use alcove_sys::{fd, process};
pub(crate) use pieces::unique_name;
use pieces::{CgroupGuard, PhasePage, Pieces, CGROUP_PREFIX};
pub(crate) use program::envp as environment;
use program::{argv, envp, exec_candidates, pointers, rlimits};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How the caller wants the sandbox supervised.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Forward SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to this process to the
    /// sandbox, killing it if it is still alive a grace period later. Meant for
    /// command-line use: it changes this process's signal mask while it runs.
    pub forward_signals: bool,
    /// Read CPU time and peak memory and task counts from the cgroup after the
    /// run. Off, the outcome still says why the sandbox ended (OOM included),
    /// and the run skips a few cgroup reads.
    pub collect_usage: bool,
    /// Read ends of pipes: once the write end of any is closed, the sandbox
    /// is killed and its outcome says `cancelled`. One pipe can cancel many
    /// runs (a daemon's shutdown), another just this one (a client's cancel).
    pub cancel: Vec<std::sync::Arc<OwnedFd>>,
    /// Filled with where the sandbox's usage can be read while it runs.
    pub watch: Option<std::sync::Arc<crate::UsageWatch>>,
}

/// Runs `spec` to completion and reports how it ended.
pub fn run(spec: &SandboxSpec, options: &RunOptions) -> Result<Outcome, SandboxError> {
    run_observed(spec, options, &mut crate::NoObserver)
}

/// Runs `spec` to completion with `observer` watching it, and reports how it ended.
pub fn run_observed(
    spec: &SandboxSpec,
    options: &RunOptions,
    observer: &mut dyn crate::Observer,
) -> Result<Outcome, SandboxError> {
    let t_start = process::monotonic_ns();
    spec.validate()?;
    // Device nodes travel as binds mounted without nodev.
    let with_devices;
    let spec = if spec.device_nodes.is_empty() {
        spec
    } else {
        let mut s = spec.clone();
        s.binds.extend(spec.device_nodes.iter().map(|node| Bind {
            source: node.clone(),
            target: node.clone(),
            writable: true,
            device: true,
        }));
        with_devices = s;
        &with_devices
    };
    if !process::is_root() {
        return Err(SandboxError::NotRoot);
    }
    ensure_staging_dir()?;

    let layout = cgroup_layout()?;
    let limits = alcove_cgroup::Limits {
        memory_bytes: spec.limits.memory_bytes,
        cpu: spec.limits.cpus.map(CpuQuota::from_cpus),
        pids_max: spec.limits.pids,
    };
    let collect_usage = options.collect_usage || spec.record_phases;
    let needs = pool::Needs {
        cpu: collect_usage || spec.limits.cpu_time.is_some(),
        peaks: collect_usage,
    };
    let pooled = match spec.fresh_cgroup {
        true => None,
        false => pool::claim(layout, &limits, spec.net == NetMode::None, needs),
    };
    let pieces = match pooled {
        Some(slot) => Pieces::Pooled(slot),
        None => {
            let mut controllers = vec![Controller::Memory, Controller::Pids];
            if spec.limits.cpus.is_some() {
                controllers.push(Controller::Cpu);
            }
            let cgroup = CgroupGuard(Some(
                SandboxCgroup::create(layout, &unique_name(), &controllers)
                    .map_err(SandboxError::Cgroup)?,
            ));
            cgroup
                .get()
                .apply(&limits, Some(&alcove_cgroup::Limits::default()))
                .map_err(SandboxError::Cgroup)?;
            Pieces::Fresh(cgroup)
        }
    };

    let prepare = |what| move |source| SandboxError::Prepare { what, source };
    let cgroup_dir = match pieces.cgroup().unified_dir() {
        Some(dir) => {
            Some(open_dir(dir).map_err(prepare("opening the sandbox's cgroup2 directory"))?)
        }
        None => None,
    };
    // v1 has no CLONE_INTO_CGROUP: the child moves itself by writing "0" to each
    // hierarchy's `tasks`. Moving only the calling thread skips the global
    // threadgroup lock whose RCU sync made a `cgroup.procs` write cost ~7 ms
    // here; the child is single-threaded, so the thread is the whole process.
    let mut cgroup_procs = Vec::new();
    for dir in pieces.cgroup().v1_dirs() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("tasks"))
            .map_err(prepare("opening a v1 cgroup tasks file"))?;
        cgroup_procs.push(OwnedFd::from(file));
    }
    let (error_read, error_write) =
        fd::pipe_cloexec().map_err(prepare("creating the error pipe"))?;
    let (lifeline_read, lifeline_write) =
        fd::pipe_cloexec().map_err(prepare("creating the lifeline pipe"))?;
    let (outputs, child_stdio) = output_pipes(spec)?;
    let signals = if options.forward_signals {
        Some(
            supervise::SignalForwarder::install()
                .map_err(prepare("installing the signal forwarder"))?,
        )
    } else {
        None
    };
    let phases = if spec.record_phases || spec.init {
        Some(PhasePage::new().map_err(prepare("mapping the shared page"))?)
    } else {
        None
    };

    let bind_trees = clone_bind_trees(spec)?;
    let trees: Vec<i32> = bind_trees.iter().map(AsRawFd::as_raw_fd).collect();
    let resolv_conf = mounts::resolv_conf(spec);
    let template = template::open_or_create(spec, resolv_conf.as_deref())?;
    let mount_ops = match (&spec.rootfs, &template) {
        (Some(_), Some(_)) => mounts::rootfs_per_run_plan(spec, &trees),
        (Some(lower), None) => mounts::rootfs_plan(spec, lower, &trees),
        (None, Some(_)) => mounts::per_run_plan(spec, &trees),
        (None, None) => mounts::scratch_plan(spec, &HostView::read(spec), &trees),
    };
    let (argv_c, envp_c) = (argv(spec), envp(spec));
    let plan = ChildPlan {
        lifeline_write: lifeline_write.as_raw_fd(),
        lifeline_read: lifeline_read.as_raw_fd(),
        error_pipe: error_write.as_raw_fd(),
        cgroup_procs: cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect(),
        unshare_cgroupns: !cgroup_procs.is_empty(),
        netns: match &spec.netns {
            Some(joined) => Some(joined.as_raw_fd()),
            None => pieces.netns().map(|fd| fd.as_raw_fd()),
        },
        loopback_up: spec.net == NetMode::None && pieces.netns().is_none(),
        template: template.as_ref().map(AsRawFd::as_raw_fd),
        mount_ops,
        hostname: spec.hostname.as_bytes().to_vec(),
        workdir: CString::new(spec.workdir.as_os_str().as_bytes()).expect("validated"),
        rlimits: rlimits(spec),
        uid: spec.user.uid,
        gid: spec.user.gid,
        stdio: child_stdio
            .iter()
            .map(|(fd, t)| (fd.as_raw_fd(), *t))
            .collect(),
        keep_fds: spec.inherit_fds.iter().map(|fd| fd.as_raw_fd()).collect(),
        seccomp: if spec.warm_template {
            crate::seccomp::template_filter()
        } else {
            crate::seccomp::filter()
        },
        exec_candidates: exec_candidates(spec),
        argv: pointers(&argv_c),
        envp: pointers(&envp_c),
        shared: phases.as_ref().map_or(std::ptr::null_mut(), |p| p.ptr),
        record_phases: spec.record_phases,
        init: spec.init,
        landlock: program::landlock(spec)?,
        profile_filter: spec
            .syscall_allow_list
            .as_deref()
            .map(crate::seccomp::allow_list_filter),
    };

    let mut flags = clone::CLONE_NEWPID | clone::CLONE_NEWIPC | clone::CLONE_NEWUTS;
    if plan.template.is_none() {
        flags |= clone::CLONE_NEWNS; // the child builds its root from a copy of the host's
    }
    if plan.loopback_up {
        flags |= clone::CLONE_NEWNET; // no pooled namespace was free
    }
    if !plan.unshare_cgroupns {
        flags |= clone::CLONE_NEWCGROUP;
    }
    let cgroup2 = pieces.cgroup().id().zip(pieces.cgroup().unified_dir());
    observer
        .before_start(cgroup2)
        .map_err(SandboxError::Observer)?;
    let t_clone = process::monotonic_ns();
    let spawned = spawn(flags, cgroup_dir.as_ref().map(AsFd::as_fd), &plan);
    if spawned.is_err() {
        observer.after_end(); // what it set up for the sandbox is not needed
    }
    let (pid, pidfd) = spawned.map_err(SandboxError::Clone)?;
    drop((
        error_write,
        lifeline_read,
        child_stdio,
        cgroup_procs,
        cgroup_dir,
    ));

    let watching = options.watch.as_deref().map(|w| {
        let watching = w.watch(pieces.cgroup(), pieces.baseline());
        w.set_pid(Some(pid));
        watching
    });
    let supervision = Supervision {
        pidfd,
        error_pipe: error_read,
        lifeline: lifeline_write,
        outputs,
        signals,
        cancel: &options.cancel,
        cgroup: pieces.cgroup(),
        limits: &spec.limits,
        collect_usage,
        baseline: pieces.baseline(),
        plan: Some(&plan),
        reap: supervise::Reap::Child,
        program: spec.argv[0].to_string_lossy().into_owned(),
        t_start,
        t_clone,
        observer: &mut *observer,
    };
    let result = supervise::supervise(
        supervision,
        &|| {
            phases
                .as_ref()
                .filter(|_| spec.record_phases)
                .map(PhasePage::read)
        },
        &|| phases.as_ref().and_then(PhasePage::program_status),
    );
    observer.after_end();
    drop(watching); // before the cgroup may go to another run
    let (mut outcome, raw) = match result {
        Ok(done) => done,
        Err(e) => {
            // A child that failed its setup has exited: its slot is clean.
            let exited = matches!(
                e,
                SandboxError::Setup { .. }
                    | SandboxError::ProgramNotFound { .. }
                    | SandboxError::ProgramNotExecutable { .. }
            );
            if let (Pieces::Pooled(slot), true) = (pieces, exited) {
                let oom_kills = slot.cgroup.oom_kills().unwrap_or(slot.baseline.oom_kills);
                slot.release(None, oom_kills, None);
            }
            return Err(e);
        }
    };
    let t_teardown = process::monotonic_ns();
    outcome.cgroup_id = pieces.cgroup().id();
    match pieces {
        Pieces::Pooled(slot) => slot.release(raw.cpu_us, raw.oom_kills, raw.pids_peak),
        Pieces::Fresh(cgroup) => {
            if let Err(e) = cgroup.remove() {
                eprintln!("alcove: warning: {e} (run `alcove gc` to clean up)");
            }
        }
    }
    if let Some(p) = outcome.phases.as_mut() {
        p.teardown_us += (process::monotonic_ns() - t_teardown) as f64 / 1e3;
    }
    Ok(outcome)
}

/// The program's stdio as alcove wires it: `(read end, where it goes)` for each
/// captured stream, and `(descriptor, number in the program)` for the program:
/// with captured stdio, stdin is a memfd holding the request and stdout and
/// stderr pipes; otherwise only the capped streams pass through pipes.
#[allow(clippy::type_complexity)]
pub(crate) fn output_pipes(
    spec: &SandboxSpec,
) -> Result<(Vec<(OwnedFd, supervise::Sink)>, Vec<(OwnedFd, i32)>), SandboxError> {
    let prepare = |what| move |source| SandboxError::Prepare { what, source };
    let mut outputs = Vec::new();
    let mut child_stdio = Vec::new();
    if let crate::Stdio::Capture { stdin } | crate::Stdio::Stream { stdin, .. } = &spec.stdio {
        let memfd = fd::memfd_with(stdin).map_err(prepare("writing stdin to a memfd"))?;
        for target in [1, 2] {
            let (read, write) = fd::pipe_cloexec().map_err(prepare("creating an output pipe"))?;
            let sink = match &spec.stdio {
                crate::Stdio::Stream { stdout, .. } if target == 1 => {
                    supervise::Sink::Stream(crate::stream::StreamOut::new(stdout.0.clone()))
                }
                _ => supervise::Sink::Buffer(Vec::new()),
            };
            outputs.push((read, sink));
            child_stdio.push((write, target));
        }
        child_stdio.push((memfd, 0));
    } else if spec.limits.output_bytes.is_some() {
        // The limit is stdout's; stderr passes through a cap only when it has its own.
        let stderr_capped = spec.limits.stderr_bytes.is_some();
        for target in [1, 2].into_iter().filter(|&t| t == 1 || stderr_capped) {
            let (read, write) = fd::pipe_cloexec().map_err(prepare("creating an output pipe"))?;
            outputs.push((read, supervise::Sink::Fd(target)));
            child_stdio.push((write, target));
        }
    }
    Ok((outputs, child_stdio))
}

/// Starts the sandbox's first process running `child::run(plan)`. On x86_64 it
/// shares alcove's memory until it execs (`CLONE_VM | CLONE_VFORK`), which
/// spares copying page tables; elsewhere it is a fork-style clone3.
fn spawn(
    flags: u64,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    plan: &ChildPlan,
) -> std::io::Result<(libc::pid_t, OwnedFd)> {
    #[cfg(target_arch = "x86_64")]
    if !plan.init {
        extern "C" fn entry(arg: *mut libc::c_void) -> ! {
            // SAFETY: `arg` is the `&ChildPlan` below, which outlives the child's
            // use of it because the parent is suspended until the child execs.
            let plan = unsafe { &*(arg as *const ChildPlan) };
            child::run(plan)
        }
        let mut stack = clone::ChildStack::new(256 * 1024)?;
        let arg = plan as *const ChildPlan as *mut libc::c_void;
        // SAFETY: `child::run` executes the prepared plan without allocating,
        // taking locks or unwinding, so other threads of this process (the
        // daemon runs many) can neither deadlock it nor see it touch shared
        // state; it writes only the phase page and its own stack and ends in
        // execve or _exit; `plan` outlives the call.
        let (pid, pidfd) = unsafe { clone::spawn_vfork(flags, cgroup, &mut stack, entry, arg) }?;
        // Every kernel alcove runs sandboxes on gives one (Linux 5.3 on).
        return match pidfd {
            Some(pidfd) => Ok((pid, pidfd)),
            None => {
                let _ = alcove_sys::process::kill(pid, libc::SIGKILL);
                let _ = alcove_sys::process::wait_child(pid);
                Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
            }
        };
    }
    // With --init the first process never execs, so it cannot share our memory.
    // SAFETY: the child only runs `child::run`, which neither allocates nor
    // takes locks (a lock another thread held at fork would never be
    // released in the child) and ends in execve or _exit.
    match unsafe { clone::clone3(flags, cgroup) }? {
        Forked::Child => run_child_without_unwinding(plan),
        Forked::Parent { pid, pidfd } => Ok((pid, pidfd)),
    }
}

/// The child must never unwind back into the parent's code (the release
/// profile unwinds so that a daemon survives a panic in one request): a
/// panic that crosses this `extern "C"` boundary aborts the child alone.
fn run_child_without_unwinding(plan: &ChildPlan) -> ! {
    extern "C" fn entry(plan: &ChildPlan) -> ! {
        child::run(plan)
    }
    entry(plan)
}

/// Removes what sandboxes killed mid-run left behind (cgroups whose alcove is
/// gone) and the pooled network namespaces no run holds. Returns how many
/// things it removed.
/// The host's cgroup layout, found once per process: a daemon starting
/// thousands of sandboxes need not re-read /proc/self/cgroup and statfs the
/// hierarchies for each (alcove does not move itself between cgroups).
pub(crate) fn cgroup_layout() -> Result<&'static CgroupLayout, SandboxError> {
    static LAYOUT: std::sync::OnceLock<CgroupLayout> = std::sync::OnceLock::new();
    if let Some(layout) = LAYOUT.get() {
        return Ok(layout);
    }
    let layout = CgroupLayout::detect().map_err(SandboxError::Cgroup)?;
    Ok(LAYOUT.get_or_init(|| layout))
}

/// What [`gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Cgroups of runs whose alcove died mid-run.
    pub orphan_cgroups: usize,
    /// Pool slots' cgroups and network namespaces.
    pub pool_pieces: usize,
    /// Template mount namespaces.
    pub templates: usize,
    /// Empty parent cgroups (`…/alcove`) and the leaves alcoves had moved
    /// themselves into beside them.
    pub parents: usize,
}

/// Removes what `alcove gc` removes: dead runs' cgroups (see
/// [`gc_orphans`]), then the whole pool and every template not in use.
pub fn gc() -> Result<GcReport, SandboxError> {
    let layout = cgroup_layout()?;
    let mut report = GcReport {
        orphan_cgroups: gc_orphans()?,
        pool_pieces: pool::remove_all(layout),
        templates: template::remove_all(),
        parents: 0,
    };
    report.parents = prune_parents(layout);
    Ok(report)
}

/// Removes the template mount namespaces (runs that use one keep it open);
/// the next run builds a fresh one. For after layers were removed.
pub fn gc_templates() -> usize {
    template::remove_all()
}

/// Kills what is left in, and removes, the cgroups of alcove processes that
/// died mid-run (a killed `alcove run` or daemon), beneath this alcove's own
/// cgroup and wherever else an alcove made them (the places
/// [`alcove_cgroup::remembered_places`] lists); leaves the pool and the
/// templates, which live alcoves share. A daemon calls this when it starts.
pub fn gc_orphans() -> Result<usize, SandboxError> {
    let layout = cgroup_layout()?;
    let mut removed = 0;
    for parent in parent_dirs(layout) {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = name
                .strip_prefix(CGROUP_PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|o| o.parse::<i32>().ok())
            else {
                continue;
            };
            if owner == std::process::id() as i32 || process::exists(owner) {
                continue; // a live alcove still owns it
            }
            let cgroup = SandboxCgroup::open_dirs([entry.path()]);
            cgroup.kill_all();
            cgroup.remove().map_err(SandboxError::Cgroup)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Every parent cgroup (`…/alcove`) this alcove or another may have made.
fn parent_dirs(layout: &CgroupLayout) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = layout
        .unified_own_dir
        .iter()
        .chain(layout.v1.iter().map(|h| &h.own_dir))
        .map(|own| own.join(alcove_cgroup::PARENT_DIR))
        .chain(alcove_cgroup::remembered_places())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Removes the parent cgroups that nothing is left in, and the leaves that
/// alcoves moved themselves into beside them once those are empty; forgets
/// the places it removed. Returns how many directories it removed.
fn prune_parents(layout: &CgroupLayout) -> usize {
    let mut removed = 0;
    for parent in parent_dirs(layout) {
        if !parent.is_dir() {
            alcove_cgroup::forget_place(&parent);
            continue;
        }
        if std::fs::remove_dir(&parent).is_err() {
            continue; // sandboxes or pooled slots remain
        }
        removed += 1;
        alcove_cgroup::forget_place(&parent);
        // The leaf alcoves move into exists only on the unified hierarchy.
        if let Some(own) = parent
            .parent()
            .filter(|own| own.join("cgroup.subtree_control").exists())
        {
            removed += std::fs::remove_dir(own.join(alcove_cgroup::LEAF)).is_ok() as usize;
        }
    }
    removed
}

/// Takes charge of the cgroup alcove was started in, before it starts any
/// other process (a daemon's helpers would share that cgroup, and cgroup v2
/// would then refuse to give sandboxes their controllers): where the unified
/// hierarchy holds controllers, alcove moves itself into its leaf if need be
/// and enables them for its sandboxes. A clear error says what to change
/// when the host does not delegate them.
pub fn take_charge_of_cgroups() -> Result<(), SandboxError> {
    let layout = cgroup_layout()?;
    let Some(own) = &layout.unified_own_dir else {
        return Ok(());
    };
    let controllers: Vec<Controller> = [Controller::Cpu, Controller::Memory, Controller::Pids]
        .into_iter()
        .filter(|c| layout.unified_controllers.iter().any(|u| u == c.name()))
        .collect();
    if controllers.is_empty() {
        return Ok(());
    }
    alcove_cgroup::delegation::enable_for_children(own, &controllers).map_err(SandboxError::Cgroup)
}

/// Clones each bind source into a detached mount tree with its final
/// attributes, ready for the child to attach wherever its root is.
fn clone_bind_trees(spec: &SandboxSpec) -> Result<Vec<OwnedFd>, SandboxError> {
    use alcove_sys::mount::{
        clone_tree, set_attributes, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    };
    spec.binds
        .iter()
        .map(|bind| {
            let source = CString::new(bind.source.as_os_str().as_bytes()).expect("validated");
            let setup = |e| SandboxError::Setup {
                what: format!("cloning the bind source {}", bind.source.display()),
                source: e,
            };
            let tree = clone_tree(&source).map_err(setup)?;
            let mut attrs = MOUNT_ATTR_NOSUID;
            if !bind.device {
                attrs |= MOUNT_ATTR_NODEV;
            }
            if !bind.writable {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            set_attributes(tree.as_fd(), attrs).map_err(setup)?;
            Ok(tree)
        })
        .collect()
}

fn ensure_staging_dir() -> Result<(), SandboxError> {
    let path = Path::new(STAGING_DIR);
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => std::fs::create_dir_all(path).map_err(|source| SandboxError::Prepare {
            what: "creating the staging directory /run/alcove/root",
            source,
        }),
    }
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    Ok(file.into())
}
