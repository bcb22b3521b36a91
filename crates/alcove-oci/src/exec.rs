//! `exec`: a new process in a running container's namespaces and cgroup,
//! set up the way the container's own process was (user, capabilities,
//! rlimits, no_new_privs, seccomp, terminal).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process};

use crate::container::{open, ContainerError};
use crate::state::Status;
use crate::sync::{Channel, Msg};

/// The name of a namespace type under /proc/PID/ns.
pub fn ns_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Joined in this order: the user namespace gives the rights to join the rest.
const JOIN_ORDER: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

pub struct ExecOptions {
    pub root: PathBuf,
    pub id: String,
    pub process: Process,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// The container's namespaces that differ from ours, opened.
fn namespaces_of(pid: i32) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>, ContainerError> {
    let mut out = Vec::new();
    for typ in JOIN_ORDER {
        let name = ns_name(typ);
        let theirs = format!("/proc/{pid}/ns/{name}");
        let Ok(their_meta) = std::fs::metadata(&theirs) else {
            continue; // a namespace type this kernel lacks
        };
        let same = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .is_ok_and(|m| m.ino() == their_meta.ino() && m.dev() == their_meta.dev());
        if !same {
            let file = std::fs::File::open(&theirs).map_err(io(format!("open {theirs}")))?;
            out.push((typ, OwnedFd::from(file)));
        }
    }
    Ok(out)
}

/// Runs `opts.process` in the container. Detached: returns 0 once it has
/// exec'd; otherwise its exit code (128 + signal when killed).
pub fn exec(opts: &ExecOptions) -> Result<i32, ContainerError> {
    crate::container::check_preserved(opts.preserve_fds)?;
    let single = alcove_sys::process::SingleThreaded::check().map_err(io("check threads"))?;
    crate::config::check_process(&opts.process)?;
    let (dir, saved, status) = open(&opts.root, &opts.id, false)?;
    drop(dir);
    let saved = saved.ok_or_else(|| ContainerError::WrongStatus {
        id: opts.id.clone(),
        status,
        what: "it is still being created".into(),
    })?;
    match status {
        Status::Running | Status::Created => {}
        Status::Paused => {
            return Err(ContainerError::WrongStatus {
                id: opts.id.clone(),
                status,
                what: "cannot exec in a paused container".into(),
            })
        }
        _ => {
            return Err(ContainerError::WrongStatus {
                id: opts.id.clone(),
                status,
                what: "cannot exec in a stopped container: container not running".into(),
            })
        }
    }
    let namespaces = namespaces_of(saved.pid)?;
    let console = if opts.process.terminal().unwrap_or(false) {
        match &opts.console_socket {
            Some(path) => Some(crate::console::connect(path)?),
            None => {
                return Err(ContainerError::Failed(
                    "cannot allocate a terminal without --console-socket (exec --tty)".into(),
                ))
            }
        }
    } else {
        None
    };
    let seccomp = saved
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone());
    let listener = match seccomp.as_ref().and_then(|s| s.listener_path().clone()) {
        Some(path) => Some(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(&path)
                .map_err(io(format!("connect to {}", path.display())))?,
        )),
        None => None,
    };
    let state = String::from_utf8_lossy(&crate::state::hook_state(&saved, status)).into_owned();
    let signals = if opts.detach {
        None
    } else {
        // The process is a grandchild; as subreaper we inherit it when the
        // process between exits, and can wait for it.
        alcove_sys::process::set_child_subreaper().map_err(io("PR_SET_CHILD_SUBREAPER"))?;
        Some(crate::container::catch_forwarded()?)
    };
    let (ours, theirs) = Channel::pair().map_err(io("socketpair"))?;
    let unified = saved.cgroup.open_unified()?;
    let setup = match single
        .fork_into(unified.as_ref().map(|fd| fd.as_fd()))
        .map_err(io("fork"))?
    {
        None => {
            let _ = alcove_sys::fd::close(ours.0.as_raw_fd());
            if let Err(e) = saved.cgroup.join_self_v1() {
                let _ = theirs.send(&Msg::Fail(format!("join the container's cgroup: {e}")));
                alcove_sys::process::exit_now(1);
            }
            join_and_fork(
                single,
                &theirs,
                namespaces,
                &opts.process,
                seccomp.as_ref(),
                console,
                listener,
                &state,
                opts.preserve_fds,
            )
        }
        Some(pid) => pid,
    };
    drop(theirs);
    let first = ours.recv().map_err(io("setup channel"));
    let _ = alcove_sys::process::wait_child(setup);
    let pid = match first? {
        Some(Msg::Pid(pid)) => pid,
        Some(Msg::Fail(text)) => return Err(ContainerError::Failed(text)),
        _ => return Err(ContainerError::Failed("exec setup ended early".into())),
    };
    let go = ours.send(&Msg::Go).map_err(io("setup channel"));
    if let Err(e) = go {
        let _ = alcove_sys::process::kill(pid, libc::SIGKILL);
        return Err(e);
    }
    // The channel is close-on-exec: end of stream means the exec succeeded.
    match ours.recv().map_err(io("setup channel"))? {
        None => {}
        Some(Msg::Fail(text)) => {
            if !opts.detach {
                let _ = alcove_sys::process::wait_child(pid);
            }
            return Err(ContainerError::Failed(text));
        }
        Some(_) => return Err(ContainerError::Failed("exec protocol out of order".into())),
    }
    if let Some(pid_file) = &opts.pid_file {
        crate::container::write_pid_file(pid_file, pid)?;
    }
    let Some(signals) = signals else {
        return Ok(0);
    };
    let status = crate::container::wait_forwarding(pid, &signals)?;
    Ok(alcove_sys::process::exit_code_of(status))
}

#[allow(clippy::too_many_arguments)]
fn join_and_fork(
    single: alcove_sys::process::SingleThreaded,
    channel: &Channel,
    namespaces: Vec<(LinuxNamespaceType, OwnedFd)>,
    process: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    console: Option<OwnedFd>,
    listener: Option<OwnedFd>,
    state: &str,
    preserve_fds: u32,
) -> ! {
    let result = (|| -> Result<(), String> {
        for (typ, fd) in &namespaces {
            alcove_sys::ns::setns(fd.as_fd(), *typ as libc::c_int)
                .map_err(|e| format!("join the container's {} namespace: {e}", ns_name(*typ)))?;
        }
        drop(namespaces);
        match single.fork().map_err(|e| format!("fork: {e}"))? {
            None => {
                let error = (|| -> Result<String, String> {
                    match channel.recv().map_err(|e| e.to_string())? {
                        Some(Msg::Go) => {}
                        _ => return Err("the runtime went away during exec".into()),
                    }
                    let prepared = crate::init::prepare_process(process, console.as_ref(), false)?;
                    let mut keep = vec![channel.0.as_raw_fd()];
                    keep.extend(listener.as_ref().map(|fd| fd.as_raw_fd()));
                    crate::init::become_user(
                        process,
                        seccomp,
                        listener.as_ref(),
                        state,
                        preserve_fds,
                        &keep,
                    )?;
                    Ok(crate::init::exec(&prepared))
                })()
                .unwrap_or_else(|e| e);
                let _ = channel.send(&Msg::Fail(error));
                alcove_sys::process::exit_now(127)
            }
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

/// A process for `exec` built from the command line (no --process file):
/// the container's own process with these arguments and additions.
pub fn process_from_args(
    base: Option<&Process>,
    args: Vec<String>,
    env: &[String],
    cwd: Option<&Path>,
    user: Option<(u32, u32)>,
    tty: bool,
) -> Process {
    let mut process = base.cloned().unwrap_or_default();
    process.set_args(Some(args));
    let mut all_env = process.env().clone().unwrap_or_default();
    all_env.extend(env.iter().cloned());
    process.set_env(Some(all_env));
    if let Some(cwd) = cwd {
        process.set_cwd(cwd.to_path_buf());
    }
    if let Some((uid, gid)) = user {
        let mut u = process.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        process.set_user(u);
    }
    process.set_terminal(Some(tty));
    process
}
