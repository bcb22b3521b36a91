//! What runs inside the container before the user's program: the container's
//! init (`run_init`) and, shared with `exec`, the last steps every container
//! process takes (`prepare_process`, `become_user`): terminal, rlimits,
//! finding the program, then user and capabilities, no_new_privs, seccomp.
//!
//! These functions run in a forked child of the (single-threaded) runtime and
//! end in `execve` or `_exit`; an error is sent to the runtime over the setup
//! channel and becomes the message the caller sees.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process, Spec};

use crate::sync::{Channel, Msg};

/// PATH when the process's environment has none (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the init needs that the runtime prepared before the fork.
pub struct InitContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// Relative mount sources are resolved from here, as runc (which runs
    /// in the bundle) does.
    pub bundle: &'a Path,
    pub channel: &'a Channel,
    /// A second open of the container's state directory (not the locked
    /// one): the init opens the exec fifo through it after pivot_root.
    pub state_dir: OwnedFd,
    pub console: Option<OwnedFd>,
    /// Connected to linux.seccomp.listenerPath, when the profile notifies.
    pub seccomp_listener: Option<OwnedFd>,
    pub new_mount_ns: bool,
    pub new_uts_ns: bool,
    pub new_user_ns: bool,
    pub no_pivot: bool,
    pub preserve_fds: u32,
}

/// A program ready to exec: path, argv and environment.
pub struct Prepared {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
}

/// An error and its causes on one line (it crosses the setup channel as text).
fn fail(what: impl std::error::Error) -> String {
    let mut text = what.to_string();
    let mut cause = what.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The container's init: sets everything up, reports, waits for `start`,
/// execs. Never returns.
pub fn run_init(ctx: InitContext<'_>) -> ! {
    let error = match setup_and_wait(&ctx) {
        Ok(prepared) => exec(&prepared),
        Err(e) => e,
    };
    // After `create` returned nobody reads the channel: the container's
    // stderr (conmon's log, the shim's) is where the error can still be seen.
    if ctx.channel.send(&Msg::Fail(error.clone())).is_err() {
        eprintln!("alcove-oci: {error}");
    }
    alcove_sys::process::exit_now(1)
}

fn setup_and_wait(ctx: &InitContext<'_>) -> Result<Prepared, String> {
    let spec = ctx.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or("config.json has no process")?;
    let linux = spec.linux().clone().unwrap_or_default();
    if ctx.new_uts_ns {
        if let Some(name) = spec.hostname() {
            alcove_sys::ns::sethostname(name.as_bytes())
                .map_err(|e| format!("sethostname {name:?}: {e}"))?;
        }
        if let Some(name) = spec.domainname() {
            alcove_sys::ns::setdomainname(name.as_bytes())
                .map_err(|e| format!("setdomainname {name:?}: {e}"))?;
        }
    }
    let plan = crate::rootfs::RootfsPlan {
        spec,
        rootfs: ctx.rootfs,
        no_pivot: ctx.no_pivot,
        new_user_ns: ctx.new_user_ns,
    };
    if ctx.new_mount_ns {
        let bundle = cstring(ctx.bundle.as_os_str())?;
        alcove_sys::fs::chdir(&bundle)
            .map_err(|e| format!("chdir to the bundle {}: {e}", ctx.bundle.display()))?;
        crate::rootfs::prepare(&plan).map_err(fail)?;
    }
    ctx.channel.send(&Msg::Mounted).map_err(fail)?;
    let state = match ctx.channel.recv().map_err(fail)? {
        Some(Msg::HookState(state)) => state,
        _ => return Err("the runtime went away during create".into()),
    };
    if let Some(hooks) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().clone())
    {
        crate::hooks::run_hooks(&hooks, "createContainer", state.as_bytes()).map_err(fail)?;
    }
    if ctx.new_mount_ns {
        crate::rootfs::pivot(&plan).map_err(fail)?;
    } else {
        chroot_into(ctx.rootfs)?;
    }
    // Before read-only and masked paths cover /proc/sys, as runc orders it.
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    if ctx.new_mount_ns {
        crate::rootfs::finalize(&plan).map_err(fail)?;
    }
    if let Some(persona) = linux.personality() {
        let domain = match persona.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
            _ => 0x0000,
        };
        alcove_sys::process::set_personality(domain).map_err(|e| format!("personality: {e}"))?;
    }
    // Opened now, while the init may still search the state directory (the
    // program's user may not). Read-write, so the open does not wait for a
    // reader; `start` writes the byte the read below waits for.
    let fifo = alcove_sys::dirfd::open_at(
        ctx.state_dir.as_fd(),
        c"exec.fifo",
        libc::O_RDWR,
        alcove_sys::dirfd::Scope::Beneath,
    )
    .map_err(|e| format!("open exec fifo: {e}"))?;
    let prepared = prepare_process(process, ctx.console.as_ref(), true)?;
    ctx.channel.send(&Msg::Ready).map_err(fail)?;
    // Waits for `start`, still holding the capabilities the steps below
    // need: the user's seccomp profile may forbid what the runtime does
    // before exec (spawning a startContainer hook, say).
    let mut byte = [0u8; 1];
    loop {
        match alcove_sys::fd::read(fifo.as_fd(), &mut byte) {
            Ok(1) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(_) => return Err("exec fifo: closed without a start".into()),
            Err(e) => return Err(format!("exec fifo: {e}")),
        }
    }
    if let Some(hooks) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().clone())
    {
        crate::hooks::run_hooks(&hooks, "startContainer", state.as_bytes()).map_err(fail)?;
    }
    // The fifo stays open until the exec (it is close-on-exec): `start` waits
    // for its last holder to go before running poststart hooks, which the
    // spec puts after the user's program is executed.
    let mut keep = vec![ctx.channel.0.as_raw_fd(), fifo.as_raw_fd()];
    let _until_exec = std::os::fd::IntoRawFd::into_raw_fd(fifo);
    keep.extend(ctx.seccomp_listener.as_ref().map(|fd| fd.as_raw_fd()));
    become_user(
        process,
        linux.seccomp().as_ref(),
        ctx.seccomp_listener.as_ref(),
        &state,
        ctx.preserve_fds,
        &keep,
    )?;
    Ok(prepared)
}

fn chroot_into(rootfs: &Path) -> Result<(), String> {
    let c = cstring(rootfs.as_os_str())?;
    alcove_sys::fs::chdir(&c).map_err(|e| format!("chdir {}: {e}", rootfs.display()))?;
    alcove_sys::process::chroot(c".").map_err(|e| format!("chroot: {e}"))?;
    alcove_sys::fs::chdir(c"/").map_err(|e| format!("chdir /: {e}"))
}

/// The steps of every container process that need no change of user:
/// terminal, rlimits, oomScoreAdj, the working directory (made when missing,
/// for the init, as runc does), and finding the program. Errors here still
/// reach the caller of `create` or `exec`.
pub fn prepare_process(
    process: &Process,
    console: Option<&OwnedFd>,
    is_init: bool,
) -> Result<Prepared, String> {
    if process.terminal().unwrap_or(false) {
        let console = console.ok_or(
            "process.terminal is true but no --console-socket was given: \
             pass --console-socket or set terminal to false",
        )?;
        let pty = crate::console::open_pty(Path::new("/dev/ptmx")).map_err(fail)?;
        if let Some(size) = process.console_size() {
            if size.height() > 0 && size.width() > 0 {
                let rows = u16::try_from(size.height()).unwrap_or(u16::MAX);
                let cols = u16::try_from(size.width()).unwrap_or(u16::MAX);
                crate::console::set_size(pty.master.as_fd(), rows, cols).map_err(fail)?;
            }
        }
        // The user the program runs as must own its terminal (runc's
        // fixStdioPermissions); the init's terminal is also /dev/console.
        crate::console::give_to_user(pty.slave.as_fd(), process.user().uid()).map_err(fail)?;
        if is_init {
            bind_console(&pty.name)?;
        }
        crate::console::send_master(console.as_fd(), &pty).map_err(fail)?;
        let crate::console::Pty { slave, .. } = pty;
        crate::console::become_controlling(slave).map_err(fail)?;
    }
    for rlimit in process.rlimits().iter().flatten() {
        let resource = rlimit_resource(rlimit.typ());
        alcove_sys::process::setrlimit(resource, rlimit.soft(), rlimit.hard()).map_err(|e| {
            format!(
                "setrlimit {:?} soft {} hard {}: {e}",
                rlimit.typ(),
                rlimit.soft(),
                rlimit.hard()
            )
        })?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj {adj}: {e}"))?;
    }
    if is_init && !process.cwd().exists() {
        std::fs::create_dir_all(process.cwd()).map_err(|e| {
            format!(
                "create cwd {} set in config.json: {e}",
                process.cwd().display()
            )
        })?;
    }
    prepare_exec(process)
}

/// The last steps before exec, in runc's order: seccomp while the process
/// may still load it (without no_new_privs only CAP_SYS_ADMIN may), then
/// user, groups and capabilities, umask, the working directory,
/// no_new_privs, the AppArmor profile, and with no_new_privs the seccomp
/// profile last, so the runtime's own calls before exec need nothing it
/// allows. Descriptors are closed first, for the same reason.
pub fn become_user(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    listener: Option<&OwnedFd>,
    state: &str,
    preserve_fds: u32,
    keep: &[std::os::fd::RawFd],
) -> Result<(), String> {
    // Nothing the runtime or its caller holds reaches the program, but for
    // stdio and the descriptors --preserve-fds passes on: closed now, not at
    // exec, so that no directory of the host's is left to reach through
    // /proc/self/fd (as a cwd, say: runc's CVE-2024-21626). `keep` are the
    // runtime's own sockets still needed before exec (close-on-exec).
    alcove_sys::fd::close_from_except(3i32.saturating_add(preserve_fds.min(1 << 16) as i32), keep)
        .map_err(|e| format!("close inherited descriptors: {e}"))?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let Some(seccomp) = seccomp {
        if !nnp {
            load_seccomp(seccomp, listener, state)?;
        }
    }
    let user = process.user();
    let sets = crate::caps::sets(process.capabilities().as_ref());
    alcove_sys::process::set_keep_caps(true).map_err(|e| format!("keepcaps: {e}"))?;
    alcove_sys::caps::limit_bounding(sets.bounding)
        .map_err(|e| format!("capability bounding set: {e}"))?;
    let groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    alcove_sys::process::set_gids(user.gid(), &groups)
        .map_err(|e| format!("setgid {} (groups {groups:?}): {e}", user.gid()))?;
    alcove_sys::process::set_uid(user.uid()).map_err(|e| format!("setuid {}: {e}", user.uid()))?;
    alcove_sys::caps::set_process_sets(&sets).map_err(|e| format!("capabilities: {e}"))?;
    alcove_sys::process::set_keep_caps(false).map_err(|e| format!("keepcaps: {e}"))?;
    alcove_sys::process::set_umask(user.umask().unwrap_or(0o022) as libc::mode_t);
    let cwd = cstring(process.cwd().as_os_str())?;
    alcove_sys::fs::chdir(&cwd).map_err(|e| {
        format!(
            "chdir to cwd ({}) set in config.json: {e}",
            process.cwd().display()
        )
    })?;
    // A cwd outside the root reads back as "(unreachable)/…", not "/…".
    let inside = std::env::current_dir().is_ok_and(|d| d.is_absolute());
    if !inside {
        return Err(format!(
            "cwd {} set in config.json is outside the container's root",
            process.cwd().display()
        ));
    }
    if nnp {
        alcove_sys::process::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        apply_apparmor(profile)?;
    }
    if let Some(seccomp) = seccomp {
        if nnp {
            load_seccomp(seccomp, listener, state)?;
        }
    }
    Ok(())
}

/// Asks AppArmor to confine the program to `profile` from its exec on, as
/// runc does; a host without AppArmor has nothing to apply it with (runc
/// ignores the profile there too).
fn apply_apparmor(profile: &str) -> Result<(), String> {
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    if !enabled {
        return Ok(());
    }
    let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
        "/proc/self/attr/apparmor/exec"
    } else {
        "/proc/self/attr/exec"
    };
    std::fs::write(attr, format!("exec {profile}"))
        .map_err(|e| format!("apply AppArmor profile {profile:?}: {e}"))
}

/// Shows the init's terminal at /dev/console, as runc's mountConsole does.
fn bind_console(pty: &str) -> Result<(), String> {
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        std::fs::write(console, b"").map_err(|e| format!("create /dev/console: {e}"))?;
    }
    let source = cstring(OsStr::new(pty))?;
    alcove_sys::mount::mount(
        Some(&source),
        c"/dev/console",
        None,
        alcove_sys::mount::MS_BIND,
        None,
    )
    .map_err(|e| format!("bind {pty} on /dev/console: {e}"))
}

fn load_seccomp(
    seccomp: &LinuxSeccomp,
    listener_sock: Option<&OwnedFd>,
    state: &str,
) -> Result<(), String> {
    let compiled = crate::seccomp::compile(seccomp).map_err(fail)?;
    let listener = crate::seccomp::install(&compiled).map_err(fail)?;
    if let (Some(listener), Some(sock)) = (listener, listener_sock) {
        let metadata = seccomp.listener_metadata().clone().unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(state).unwrap_or_default();
        let doc = serde_json::json!({
            "ociVersion": crate::state::OCI_VERSION,
            "fds": ["seccompFd"],
            "pid": state.get("pid").cloned().unwrap_or_default(),
            "metadata": metadata,
            "state": state,
        });
        let bytes = serde_json::to_vec(&doc).map_err(fail)?;
        crate::seccomp::send_listener(sock.as_fd(), listener, &bytes).map_err(fail)?;
    }
    Ok(())
}

fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match typ {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

fn cstring(s: &OsStr) -> Result<CString, String> {
    CString::new(s.as_bytes()).map_err(|_| format!("{s:?} holds a NUL byte"))
}

/// Finds the program (in the container's PATH, as the caller's process
/// env gives it) and builds argv and envp, failing with the wording podman
/// and containerd recognise.
pub fn prepare_exec(process: &Process) -> Result<Prepared, String> {
    let args = process.args().as_deref().unwrap_or_default();
    let program = args.first().ok_or("process.args is empty")?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push("HOME=/".into());
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let found = lookup(program, path_var)?;
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
    Ok(Prepared {
        path: cstring(found.as_os_str())?,
        argv: args.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|e| to_c(e)).collect::<Result<_, _>>()?,
    })
}

fn lookup(program: &str, path_var: &str) -> Result<PathBuf, String> {
    let executable = |p: &Path| -> Result<bool, String> {
        let Ok(meta) = std::fs::metadata(p) else {
            return Ok(false);
        };
        if meta.is_dir() {
            return Ok(false);
        }
        let c = cstring(p.as_os_str())?;
        Ok(alcove_sys::fs::is_executable(&c))
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        if !p.exists() {
            return Err(format!(
                "exec: \"{program}\": stat {program}: no such file or directory"
            ));
        }
        if !executable(&p)? {
            return Err(format!("exec: \"{program}\": permission denied"));
        }
        return Ok(p);
    }
    let mut denied = false;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        if executable(&candidate)? {
            return Ok(candidate);
        }
        denied |= candidate.is_file();
    }
    if denied {
        Err(format!("exec: \"{program}\": permission denied"))
    } else {
        Err(format!(
            "exec: \"{program}\": executable file not found in $PATH"
        ))
    }
}

/// execve; returns only the error, worded for the caller.
pub fn exec(prepared: &Prepared) -> String {
    let mut argv: Vec<*const libc::c_char> = prepared.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prepared.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // The runtime's ignored SIGPIPE and blocked signals must not survive exec.
    alcove_sys::signal::reset_for_exec();
    alcove_sys::signal::default_all_dispositions();
    let err = alcove_sys::process::execve(&prepared.path, &argv, &envp);
    let name = prepared.path.to_string_lossy();
    match err.raw_os_error() {
        Some(libc::EACCES) => format!("exec: \"{name}\": permission denied"),
        Some(libc::ENOENT) => format!("exec: \"{name}\": no such file or directory"),
        _ => format!("exec {name}: {err}"),
    }
}
