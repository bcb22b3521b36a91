//! The lifecycle the runtime spec defines, on the runtime's side: `create`
//! forks the setup process and waits for the init to be ready; `start`,
//! `kill`, `delete`, `pause`, `resume`, `update`, `ps` and `events` act on a
//! container by its state directory.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;

use crate::cgroups::ContainerCgroup;
use crate::state::{ContainerDir, Saved, StateError, Status};
use crate::sync::{Channel, Msg};

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Cgroups(#[from] crate::cgroups::CgroupsError),
    #[error(transparent)]
    Hooks(#[from] crate::hooks::HooksError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error("{0}")]
    Failed(String),
    #[error("container \"{id}\" is {status}: {what}")]
    WrongStatus {
        id: String,
        status: Status,
        what: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// What `create` is asked for.
pub struct CreateOptions {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub systemd_cgroup: bool,
    pub preserve_fds: u32,
}

/// Checks that the `n` descriptors `--preserve-fds` passes on (3, 4, …) are
/// open, so that none of the runtime's own lands among them.
pub fn check_preserved(n: u32) -> Result<(), ContainerError> {
    if n > 1 << 16 {
        return Err(ContainerError::Failed(format!(
            "--preserve-fds {n} is too many (at most 65536)"
        )));
    }
    for fd in 3..3 + n as i32 {
        if !alcove_sys::fd::is_open(fd) {
            return Err(ContainerError::Failed(format!(
                "--preserve-fds {n}: descriptor {fd} is not open"
            )));
        }
    }
    Ok(())
}

/// Creates the container: when it returns the init is waiting for `start`.
pub fn create(opts: &CreateOptions) -> Result<i32, ContainerError> {
    check_preserved(opts.preserve_fds)?;
    let single = alcove_sys::process::SingleThreaded::check().map_err(io("check threads"))?;
    let bundle = crate::config::load(&opts.bundle)?;
    let dir = ContainerDir::create(&opts.root, &opts.id)?;
    let mut cgroup = None;
    let mut init_pid = None;
    match create_in(opts, &bundle, &dir, single, &mut cgroup, &mut init_pid) {
        Ok(pid) => Ok(pid),
        Err(e) => {
            if let Some(pid) = init_pid {
                let _ = alcove_sys::process::kill(pid, libc::SIGKILL);
                // Reaped here when it is our child (cloned directly), so no
                // zombie is left to an init that may not reap.
                let _ = alcove_sys::process::wait_child(pid);
            }
            if let Some(cg) = cgroup {
                let _ = cg.destroy();
            }
            let _ = dir.remove();
            Err(e)
        }
    }
}

fn new_namespaces(spec: &Spec) -> (libc::c_int, Vec<(LinuxNamespaceType, PathBuf)>) {
    let mut flags = 0;
    let mut joined = Vec::new();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        match ns.path() {
            Some(p) => joined.push((ns.typ(), p.clone())),
            None => flags |= ns.typ() as libc::c_int,
        }
    }
    (flags, joined)
}

fn create_in(
    opts: &CreateOptions,
    bundle: &crate::config::Bundle,
    dir: &ContainerDir,
    single: alcove_sys::process::SingleThreaded,
    cgroup_slot: &mut Option<ContainerCgroup>,
    init_slot: &mut Option<i32>,
) -> Result<i32, ContainerError> {
    let spec = &bundle.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| ContainerError::Failed("config.json has no process".into()))?;
    let linux = spec.linux().clone().unwrap_or_default();
    let (flags, joined) = new_namespaces(spec);
    let new_mount_ns = flags & libc::CLONE_NEWNS != 0;
    let joined_mount_ns = joined.iter().any(|(t, _)| *t == LinuxNamespaceType::Mount);
    if !new_mount_ns && !joined_mount_ns {
        return Err(ContainerError::Failed(
            "config.json: a mount namespace is required (add {\"type\": \"mount\"} to linux.namespaces)"
                .into(),
        ));
    }
    let cgroups_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let resources = with_default_devices(&linux);
    let cgroup = ContainerCgroup::create(
        cgroups_path.as_deref(),
        &opts.id,
        opts.systemd_cgroup,
        Some(&resources),
    )?;
    let cgroup = cgroup_slot.insert(cgroup).clone();
    dir.save_cgroup(&cgroup)?;
    let fifo = dir.fifo_path();
    let fifo_c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
        .map_err(|_| ContainerError::Failed("state path holds a NUL byte".into()))?;
    alcove_sys::fs::mkfifo(&fifo_c, 0o600).map_err(io(format!("mkfifo {}", fifo.display())))?;
    // The init opens it as the container's root: in a new user namespace
    // that is the host id uid and gid 0 map to.
    if flags & libc::CLONE_NEWUSER != 0 {
        let host = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
            maps.iter()
                .flatten()
                .find_map(|m| (m.container_id() == 0 && m.size() > 0).then_some(m.host_id()))
        };
        if let (Some(uid), Some(gid)) = (host(linux.uid_mappings()), host(linux.gid_mappings())) {
            std::os::unix::fs::chown(&fifo, Some(uid), Some(gid))
                .map_err(io(format!("chown {}", fifo.display())))?;
        }
    }
    let console = if process.terminal().unwrap_or(false) {
        match &opts.console_socket {
            Some(path) => Some(crate::console::connect(path)?),
            None => {
                return Err(ContainerError::Failed(
                    "cannot allocate a terminal without --console-socket: process.terminal is true in config.json"
                        .into(),
                ))
            }
        }
    } else {
        None
    };
    let listener = match linux
        .seccomp()
        .as_ref()
        .and_then(|s| s.listener_path().clone())
    {
        Some(path) => Some(connect_unix(&path)?),
        None => None,
    };
    let mut ns_fds = Vec::new();
    for (typ, path) in &joined {
        let file = std::fs::File::open(path).map_err(io(format!(
            "open {} namespace {}",
            crate::exec::ns_name(*typ),
            path.display()
        )))?;
        ns_fds.push((*typ, OwnedFd::from(file)));
    }
    // User namespace first: joining it is what gives the rights to join the others.
    ns_fds.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
    let state_dir_for_init = OwnedFd::from(
        std::fs::File::open(&dir.path).map_err(io(format!("open {}", dir.path.display())))?,
    );
    let (ours, theirs) = Channel::pair().map_err(io("socketpair"))?;
    let unified = cgroup.open_unified()?;
    // Without namespaces to join, a user namespace to map from outside or
    // time offsets to set before its first process, the init is cloned
    // straight into its namespaces: no setup process between.
    let direct = ns_fds.is_empty() && flags & (libc::CLONE_NEWUSER | libc::CLONE_NEWTIME) == 0;
    let mut ctx = Some(crate::init::InitContext {
        spec,
        rootfs: &bundle.rootfs,
        bundle: &bundle.dir,
        channel: &theirs,
        state_dir: state_dir_for_init,
        console,
        seccomp_listener: listener,
        new_mount_ns,
        new_uts_ns: flags & libc::CLONE_NEWUTS != 0,
        new_user_ns: flags & libc::CLONE_NEWUSER != 0,
        no_pivot: opts.no_pivot,
        preserve_fds: opts.preserve_fds,
    });
    let unified_fd = unified.as_ref().map(|fd| fd.as_fd());
    // In the child: the locked directory must not stay open in the init
    // (`start` could never take the lock while it waits), nor our end of
    // the channel.
    let child_closes = || {
        let _ = alcove_sys::fd::close(dir.dir_fd().as_raw_fd());
        let _ = alcove_sys::fd::close(ours.0.as_raw_fd());
    };
    let expect = |want: &str| -> Result<Msg, ContainerError> {
        match ours.recv().map_err(io("setup channel"))? {
            Some(Msg::Fail(text)) => Err(ContainerError::Failed(text)),
            Some(msg) => Ok(msg),
            None => Err(ContainerError::Failed(format!(
                "the container's setup ended before {want}"
            ))),
        }
    };
    let pid = if direct {
        // A cgroup namespace is made by the init itself once it is in its
        // v1 cgroups, so that its root is the container's cgroup there too.
        let clone_flags = (flags & !libc::CLONE_NEWCGROUP) as u64;
        match single
            .clone_into(clone_flags, unified_fd)
            .map_err(io("clone the container's init"))?
        {
            None => {
                child_closes();
                let ctx = ctx.take().expect("the context is there");
                let joined = cgroup
                    .join_self_v1()
                    .map_err(|e| format!("join the container's cgroup: {e}"))
                    .and_then(|()| {
                        if flags & libc::CLONE_NEWCGROUP == 0 {
                            return Ok(());
                        }
                        alcove_sys::ns::unshare(libc::CLONE_NEWCGROUP)
                            .map_err(|e| format!("unshare the cgroup namespace: {e}"))
                    });
                if let Err(e) = joined {
                    let _ = theirs.send(&Msg::Fail(e));
                    alcove_sys::process::exit_now(1);
                }
                crate::init::run_init(ctx)
            }
            Some(pid) => {
                *init_slot = Some(pid);
                pid
            }
        }
    } else {
        let setup_pid = match single.fork_into(unified_fd).map_err(io("fork"))? {
            None => {
                child_closes();
                let ctx = ctx.take().expect("the context is there");
                setup_process(single, flags, ns_fds, &cgroup, ctx)
            }
            Some(pid) => pid,
        };
        let result = (|| {
            expect("its user namespace was made")?;
            // From here an error must not leave the setup process waiting for Go.
            if flags & libc::CLONE_NEWUSER != 0 {
                write_id_maps(setup_pid, &linux)?;
            }
            ours.send(&Msg::Go).map_err(io("setup channel"))?;
            let Msg::Pid(pid) = expect("the init started")? else {
                return Err(ContainerError::Failed("setup protocol out of order".into()));
            };
            *init_slot = Some(pid);
            Ok(pid)
        })();
        if result.is_err() {
            let _ = alcove_sys::process::kill(setup_pid, libc::SIGKILL);
        }
        let _ = alcove_sys::process::wait_child(setup_pid);
        result?
    };
    drop(ctx);
    drop(theirs);
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(io(format!("oom_score_adj {adj}")))?;
    }
    if !matches!(expect("its rootfs was mounted")?, Msg::Mounted) {
        return Err(ContainerError::Failed("setup protocol out of order".into()));
    }
    let start_time = crate::state::proc_start(pid)
        .map(|(t, _)| t)
        .ok_or_else(|| ContainerError::Failed("the container's init died during create".into()))?;
    let saved = Saved {
        id: opts.id.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid,
        start_time,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup,
        spec: Box::new(spec.clone()),
        owner: String::new(),
    };
    let state = crate::state::hook_state(&saved, Status::Creating);
    if let Some(hooks) = spec.hooks() {
        // The deprecated prestart hooks see "created", as runtime-tools'
        // validation expects of them; createRuntime and createContainer
        // hooks see the truth, "creating".
        let prestart = hooks.prestart().clone().unwrap_or_default();
        let created = crate::state::hook_state(&saved, Status::Created);
        crate::hooks::run_hooks(&prestart, "prestart", &created)?;
        let create_runtime = hooks.create_runtime().clone().unwrap_or_default();
        crate::hooks::run_hooks(&create_runtime, "createRuntime", &state)?;
    }
    let state_text = String::from_utf8_lossy(&state).into_owned();
    ours.send(&Msg::HookState(state_text))
        .map_err(io("setup channel"))?;
    if !matches!(expect("it was ready")?, Msg::Ready) {
        return Err(ContainerError::Failed("setup protocol out of order".into()));
    }
    dir.save(&saved)?;
    dir.link_from_default_root();
    if let Some(pid_file) = &opts.pid_file {
        write_pid_file(pid_file, pid)?;
    }
    Ok(pid)
}

/// The spec's device rules, then what every container may use (the spec's
/// default devices, /dev/console, the pty devices) and each device
/// `linux.devices` creates: runc appends the same, and callers such as podman
/// send only "deny all" and count on it.
fn with_default_devices(linux: &oci_spec::runtime::Linux) -> oci_spec::runtime::LinuxResources {
    use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    let allow = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>| {
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(major);
        rule.set_minor(minor);
        rule.set_access(Some("rwm".into()));
        rule
    };
    let c = LinuxDeviceType::C;
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(allow(c, Some(major), Some(minor)));
    }
    rules.push(allow(c, Some(136), None));
    for device in linux.devices().iter().flatten() {
        // The device cgroup knows block and character devices only; a FIFO
        // needs no rule.
        let typ = match device.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            LinuxDeviceType::C | LinuxDeviceType::U => c,
            _ => continue,
        };
        rules.push(allow(typ, Some(device.major()), Some(device.minor())));
    }
    resources.set_devices(Some(rules));
    resources
}

/// The setup process: joins and makes namespaces, then forks the init
/// (pid 1 of a new pid namespace) and reports its pid. Never returns.
fn setup_process(
    single: alcove_sys::process::SingleThreaded,
    flags: libc::c_int,
    ns_fds: Vec<(LinuxNamespaceType, OwnedFd)>,
    cgroup: &ContainerCgroup,
    ctx: crate::init::InitContext<'_>,
) -> ! {
    let channel = ctx.channel;
    let result = (|| -> Result<(), String> {
        // Before the user namespace, in which the host's cgroup files are
        // no longer ours to write.
        cgroup
            .join_self_v1()
            .map_err(|e| format!("join the container's cgroup: {e}"))?;
        if flags & libc::CLONE_NEWUSER != 0 {
            alcove_sys::ns::unshare(libc::CLONE_NEWUSER)
                .map_err(|e| format!("unshare user namespace: {e}"))?;
        }
        channel.send(&Msg::SetupReady).map_err(|e| e.to_string())?;
        match channel.recv().map_err(|e| e.to_string())? {
            Some(Msg::Go) => {}
            _ => return Err("the runtime went away during create".into()),
        }
        if flags & libc::CLONE_NEWUSER != 0 {
            alcove_sys::process::set_gids(0, &[]).map_err(|e| format!("setgid 0: {e}"))?;
            alcove_sys::process::set_uid(0).map_err(|e| format!("setuid 0: {e}"))?;
        }
        for (typ, fd) in &ns_fds {
            alcove_sys::ns::setns(fd.as_fd(), *typ as libc::c_int)
                .map_err(|e| format!("join {} namespace: {e}", crate::exec::ns_name(*typ)))?;
        }
        drop(ns_fds);
        alcove_sys::ns::unshare(flags & !libc::CLONE_NEWUSER)
            .map_err(|e| format!("unshare namespaces: {e}"))?;
        // A new time namespace takes its offsets before its first process.
        if let Some(offsets) = ctx
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.time_offsets().clone())
        {
            let mut text = String::new();
            for (clock, offset) in &offsets {
                let secs = offset.secs().unwrap_or(0);
                let nanos = offset.nanosecs().unwrap_or(0);
                text.push_str(&format!("{clock} {secs} {nanos}\n"));
            }
            std::fs::write("/proc/self/timens_offsets", text)
                .map_err(|e| format!("linux.timeOffsets: {e}"))?;
        }
        match single.fork().map_err(|e| format!("fork init: {e}"))? {
            None => crate::init::run_init(ctx),
            Some(pid) => channel.send(&Msg::Pid(pid)).map_err(|e| e.to_string()),
        }
    })();
    match result {
        Ok(()) => alcove_sys::process::exit_now(0),
        Err(e) => {
            let _ = channel.send(&Msg::Fail(e));
            alcove_sys::process::exit_now(1)
        }
    }
}

fn write_id_maps(pid: i32, linux: &oci_spec::runtime::Linux) -> Result<(), ContainerError> {
    let render = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), render(linux.uid_mappings()))
        .map_err(io("write uid_map"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), render(linux.gid_mappings()))
        .map_err(io("write gid_map"))
}

fn connect_unix(path: &Path) -> Result<OwnedFd, ContainerError> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(io(format!("connect to {}", path.display())))?;
    Ok(OwnedFd::from(stream))
}

/// Writes the pid file atomically (conmon and the shim read it as soon as
/// the command returns).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), ContainerError> {
    // Renaming over a device or directory (--pid-file /dev/null) would replace it.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.is_file() {
            return Err(ContainerError::Failed(format!(
                "--pid-file {} exists and is not a regular file",
                path.display()
            )));
        }
    }
    let tmp = path.with_extension("alcove-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("write {}", path.display())))
}

/// Opens a container and its saved state; `None` state while creating.
pub fn open(
    root: &Path,
    id: &str,
    lock: bool,
) -> Result<(ContainerDir, Option<Saved>, Status), ContainerError> {
    let dir = ContainerDir::open(root, id, lock)?;
    let saved = dir.load()?;
    let status = dir.status(saved.as_ref());
    Ok((dir, saved, status))
}

fn require_saved(id: &str, saved: Option<Saved>, status: Status) -> Result<Saved, ContainerError> {
    saved.ok_or_else(|| ContainerError::WrongStatus {
        id: id.into(),
        status,
        what: "it is still being created".into(),
    })
}

/// Lets the init exec the user's program.
pub fn start(root: &Path, id: &str) -> Result<(), ContainerError> {
    let (dir, saved, status) = open(root, id, true)?;
    let saved = require_saved(id, saved, status)?;
    if status != Status::Created {
        return Err(ContainerError::WrongStatus {
            id: id.into(),
            status,
            what: "cannot start a container that is not in created state".into(),
        });
    }
    // The init holds the fifo open for reading while it waits: with no
    // reader left (it died) the open fails with ENXIO instead of blocking.
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.fifo_path())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => ContainerError::WrongStatus {
                id: id.into(),
                status: Status::Stopped,
                what: "its init exited before start: container not running".into(),
            },
            _ => ContainerError::Io {
                what: "open exec fifo".into(),
                source: e,
            },
        })?;
    alcove_sys::fd::write_all(fifo.as_raw_fd(), b"0").map_err(io("write exec fifo"))?;
    let _ = std::fs::remove_file(dir.fifo_path());
    if let Some(hooks) = saved
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststart().clone())
    {
        // After the program is executed: the init holds the fifo (close-on-
        // exec) through its startContainer hooks until its exec, and a
        // fifo's writer sees POLLERR once no reader is left.
        wait_for_exec(&fifo);
        let state = crate::state::hook_state(&saved, Status::Running);
        if let Err(e) = crate::hooks::run_hooks(&hooks, "poststart", &state) {
            // The spec: a poststart failure is logged, the container keeps running.
            eprintln!("warning: {e}");
        }
    }
    Ok(())
}

/// How long `start` waits for the init to exec before running poststart
/// hooks anyway (its startContainer hooks run meanwhile).
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until nothing but `fifo` (our write end) holds the exec fifo: the
/// init has exec'd or exited.
fn wait_for_exec(fifo: &std::fs::File) {
    let deadline = std::time::Instant::now() + EXEC_WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            eprintln!("warning: the container's process did not exec within {EXEC_WAIT:?}; running poststart hooks");
            return;
        }
        // No events asked: poll reports POLLERR (no reader) on its own.
        let mut polled = [libc::pollfd {
            fd: fifo.as_raw_fd(),
            events: 0,
            revents: 0,
        }];
        match alcove_sys::fd::poll(&mut polled, Some(left)) {
            Ok(_) if polled[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 => {
                return
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Parses a signal given as a name ("TERM", "SIGTERM") or a number.
pub fn parse_signal(text: &str) -> Result<i32, ContainerError> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("IOT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    let bad = || {
        ContainerError::Failed(format!(
            "invalid signal {text:?}: give a name (TERM, SIGKILL) or a number 1-64"
        ))
    };
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = name.strip_prefix("RTMIN+") {
        let n: i32 = rt.parse().map_err(|_| bad())?;
        return if (0..=30).contains(&n) {
            Ok(34 + n)
        } else {
            Err(bad())
        };
    }
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(bad)
}

/// Sends `signal` to the init, or with `all` to every process of the container.
pub fn kill(root: &Path, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
    let (_dir, saved, status) = open(root, id, true)?;
    let saved = require_saved(id, saved, status)?;
    if all {
        // Stopped processes cannot act on a signal until thawed.
        if status == Status::Paused && signal == libc::SIGKILL {
            saved.cgroup.kill_all(signal);
            let _ = saved.cgroup.thaw();
            return Ok(());
        }
        saved.cgroup.kill_all(signal);
        return Ok(());
    }
    if status == Status::Stopped {
        return Err(ContainerError::WrongStatus {
            id: id.into(),
            status,
            what: "container not running".into(),
        });
    }
    alcove_sys::process::kill(saved.pid, signal).map_err(io(format!("kill {}", saved.pid)))
}

/// Removes a container; a live one only with `force` (killed first).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), ContainerError> {
    let (dir, saved, status) = match open(root, id, true) {
        Ok(x) => x,
        Err(ContainerError::State(StateError::NotFound(_))) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(saved) = saved else {
        if !force {
            return Err(ContainerError::WrongStatus {
                id: id.into(),
                status,
                what: "cannot delete a container that is being created (use --force)".into(),
            });
        }
        // A create that died half-way: its processes and cgroup go too.
        if let Some(cgroup) = dir.load_cgroup() {
            cgroup.kill_all(libc::SIGKILL);
            let _ = cgroup.thaw();
            cgroup.destroy()?;
        }
        dir.remove()?;
        return Ok(());
    };
    match status {
        Status::Stopped | Status::Created => {}
        _ if force => {}
        _ => {
            return Err(ContainerError::WrongStatus {
                id: id.into(),
                status,
                what: format!("cannot delete container {id} that is not stopped: {status}"),
            })
        }
    }
    if status != Status::Stopped {
        if crate::state::init_alive(&saved) {
            let _ = alcove_sys::process::kill(saved.pid, libc::SIGKILL);
        }
        saved.cgroup.kill_all(libc::SIGKILL);
        let _ = saved.cgroup.thaw();
        wait_gone(&saved);
    }
    saved.cgroup.destroy()?;
    let poststop = saved
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().clone())
        .unwrap_or_default();
    let result = crate::hooks::run_hooks(
        &poststop,
        "poststop",
        &crate::state::hook_state(&saved, Status::Stopped),
    );
    dir.remove()?;
    // The spec: a poststop failure is logged; the container is gone anyway.
    if let Err(e) = result {
        eprintln!("warning: {e}");
    }
    Ok(())
}

/// Waits (up to ~5 s) for the init to end after SIGKILL.
fn wait_gone(saved: &Saved) {
    for _ in 0..500 {
        if !crate::state::init_alive(saved) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn pause(root: &Path, id: &str, freeze: bool) -> Result<(), ContainerError> {
    let (_dir, saved, status) = open(root, id, true)?;
    let saved = require_saved(id, saved, status)?;
    match (freeze, status) {
        (true, Status::Running | Status::Created) => Ok(saved.cgroup.freeze()?),
        (false, Status::Paused) => Ok(saved.cgroup.thaw()?),
        (true, _) => Err(ContainerError::WrongStatus {
            id: id.into(),
            status,
            what: "container not running".into(),
        }),
        (false, _) => Err(ContainerError::WrongStatus {
            id: id.into(),
            status,
            what: "container not paused".into(),
        }),
    }
}

pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>, ContainerError> {
    let (_dir, saved, status) = open(root, id, false)?;
    let saved = require_saved(id, saved, status)?;
    Ok(saved.cgroup.pids()?)
}

pub fn update(
    root: &Path,
    id: &str,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<(), ContainerError> {
    let (_dir, saved, status) = open(root, id, true)?;
    let saved = require_saved(id, saved, status)?;
    if status == Status::Stopped {
        return Err(ContainerError::WrongStatus {
            id: id.into(),
            status,
            what: "container not running".into(),
        });
    }
    Ok(saved.cgroup.update(resources)?)
}

/// One `events --stats` document.
pub fn stats(root: &Path, id: &str) -> Result<serde_json::Value, ContainerError> {
    let (_dir, saved, status) = open(root, id, false)?;
    let saved = require_saved(id, saved, status)?;
    if status == Status::Stopped {
        return Err(ContainerError::WrongStatus {
            id: id.into(),
            status,
            what: "container not running".into(),
        });
    }
    Ok(serde_json::json!({"type": "stats", "id": id, "data": saved.cgroup.stats()}))
}

/// OOM kills so far (for `events`).
pub fn oom_kills(root: &Path, id: &str) -> Result<Option<u64>, ContainerError> {
    let (_dir, saved, status) = open(root, id, false)?;
    Ok(match (saved, status) {
        (Some(s), st) if st != Status::Stopped => Some(s.cgroup.oom_kills()),
        _ => None,
    })
}

/// Signals a foreground `run` or `exec` passes on to the container's process.
const FORWARDED: [i32; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// Blocks the signals a foreground `run` or `exec` forwards, before it forks
/// (the container's process unblocks them before exec), and returns the
/// descriptor they arrive on.
pub fn catch_forwarded() -> Result<OwnedFd, ContainerError> {
    alcove_sys::signal::block(&FORWARDED).map_err(io("block signals"))?;
    alcove_sys::signal::signalfd(&FORWARDED).map_err(io("signalfd"))
}

/// Waits for child `pid` to end, passing on every signal that arrives on
/// `signals` (from [`catch_forwarded`]) as runc does; returns the wait status.
pub fn wait_forwarding(pid: i32, signals: &OwnedFd) -> Result<i32, ContainerError> {
    let pidfd = alcove_sys::seqpacket::pidfd_open(pid).map_err(io("pidfd_open"))?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        match alcove_sys::fd::poll(&mut fds, None) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("poll")(e)),
        }
        while let Some(signal) = alcove_sys::signal::read_signal(signals.as_fd()) {
            let _ = alcove_sys::process::kill(pid, signal);
        }
        if fds[1].revents != 0 {
            return alcove_sys::process::wait_child(pid).map_err(io("wait"));
        }
    }
}
