//! A long-lived gVisor sandbox: an agent sandbox's run in this tier. Its
//! first process (the agent) gets the daemon's socket as its stdin, which
//! runsc hands in as a host descriptor: gVisor takes descriptors from the
//! host over it (a command's pipes) but cannot send its own out.
//!
//! Its sockets are host sockets (gVisor's hostinet) in a network namespace
//! of its own, loopback alone, or in its outbound link's: so its ports can
//! be reached from that namespace, its names are answered by the daemon's
//! resolver on that loopback, and alcove's eBPF rules for its cgroup (where
//! the Sentry runs) hold every connection, as in the container tier. The
//! host's network code is then reached through the Sentry's socket calls;
//! runs and functions keep gVisor's own stack (`Network::Isolated`).

use crate::bundle::{Bundle, Network};
use crate::run::{
    finish, outcome, pids_limit_reached, relay, sandbox_cgroup, start_in, watch_runsc, Ended, Sink,
    Waited,
};
use crate::runsc::Runsc;
use crate::{GvisorError, GvisorOptions};
use alcove_cgroup::{SandboxCgroup, Usage};
use alcove_sandbox::{NetMode, Observer, Outcome, SandboxSpec, UsageWatch};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::Instant;

/// What the agent's own stdout and stderr keep (its complaints, logged).
const AGENT_OUTPUT: usize = 64 << 10;

/// Runs `spec` until its first process ends or one of `options.cancel`
/// fires, with `agent` as that process's stdin. `observer` is told the
/// cgroup before anything runs in it (an error there aborts the run), may
/// end the run from its descriptor, and is told the end; `usage` watches the
/// cgroup meanwhile, with runsc's pid as the first process (the process
/// whose network namespace is the sandbox's; never its root, which is the
/// host's).
pub fn serve(
    spec: &SandboxSpec,
    agent: OwnedFd,
    options: &GvisorOptions,
    observer: &mut dyn Observer,
    usage: Option<&UsageWatch>,
) -> Result<Outcome, GvisorError> {
    let network = match spec.net {
        NetMode::None => Network::OwnLoopback,
        NetMode::Host => Network::Host,
        NetMode::Joined => Network::Joined,
    };
    let runsc = Runsc::find()?;
    let bundle = Bundle::create_for(&options.root(), spec, network)?;
    let cgroup = sandbox_cgroup(spec)?;
    let result = serve_in(
        &runsc, &bundle, &cgroup, spec, network, agent, options, observer, usage,
    );
    observer.after_end();
    let cgroup_id = finish(cgroup);
    drop(bundle);
    result.map(|mut outcome| {
        outcome.cgroup_id = cgroup_id;
        outcome
    })
}

#[allow(clippy::too_many_arguments)]
fn serve_in(
    runsc: &Runsc,
    bundle: &Bundle,
    cgroup: &SandboxCgroup,
    spec: &SandboxSpec,
    network: Network,
    agent: OwnedFd,
    options: &GvisorOptions,
    observer: &mut dyn Observer,
    usage: Option<&UsageWatch>,
) -> Result<Outcome, GvisorError> {
    observer
        .before_start(cgroup.id().zip(cgroup.unified_dir()))
        .map_err(|e| GvisorError::Invalid(format!("watching the sandbox: {e}")))?;
    let mut cmd = runsc.command(&bundle.state(), network.runsc_flag());
    cmd.arg("run")
        .arg("--bundle")
        .arg(bundle.bundle())
        .arg(&bundle.id);
    start_in(&mut cmd, cgroup);
    enter_network(&mut cmd, spec, network)?;
    cmd.stdin(std::process::Stdio::from(agent))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| GvisorError::Start {
        path: runsc.path.clone(),
        source,
    })?;
    // Dropped with `cmd`: the agent's end is then only the sandbox's.
    drop(cmd);
    let relays = (
        child
            .stdout
            .take()
            .map(|r| relay(r, Sink::Keep(AGENT_OUTPUT))),
        child
            .stderr
            .take()
            .map(|r| relay(r, Sink::Keep(AGENT_OUTPUT))),
    );
    let pid = child.id() as i32;
    let pidfd = watch_runsc(&mut child, cgroup)?;
    let watching = usage.map(|u| u.watch_run(cgroup, pid));
    let (waited, reason) = wait(pidfd.as_fd(), options, observer);
    if waited != Waited::Ended {
        cgroup.kill_all();
    }
    // Before runsc is reaped: its pid names the sandbox's network only while
    // it lives.
    drop(watching);
    let status = child.wait().map_err(|source| GvisorError::Prepare {
        what: "waiting for runsc",
        source,
    })?;
    let ended = Ended::of(status);
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    // The daemon cancels a run whose agent went away; when the kernel ended
    // it first (its memory or task limit), that is what the report says.
    let limited = cgroup.oom_kills().unwrap_or(0) > 0 || pids_limit_reached(cgroup);
    let waited = match waited {
        Waited::Cancelled if reason.is_none() && limited => Waited::Ended,
        other => other,
    };
    let mut outcome = outcome(
        cgroup,
        spec,
        &Usage::default(),
        waited,
        ended,
        wall_ms,
        Some(relays),
    );
    if let Some(why) = reason {
        outcome.status = alcove_sandbox::Status::KilledByPolicy;
        outcome.reason = Some(why);
    }
    Ok(outcome)
}

/// Puts runsc (and so the Sentry) in the sandbox's network namespace before
/// it runs: a new one with loopback up, or the spec's link.
fn enter_network(
    cmd: &mut std::process::Command,
    spec: &SandboxSpec,
    network: Network,
) -> Result<(), GvisorError> {
    match network {
        Network::Isolated | Network::Host => Ok(()),
        Network::OwnLoopback => {
            // SAFETY: the closure runs in the child between fork and exec and
            // makes unshare, socket, ioctl and close calls (async-signal-safe),
            // allocating nothing.
            unsafe {
                cmd.pre_exec(|| {
                    alcove_sys::ns::unshare(libc::CLONE_NEWNET)?;
                    alcove_sys::net::loopback_up()
                });
            }
            Ok(())
        }
        Network::Joined => {
            let netns = spec.netns.clone().ok_or_else(|| {
                GvisorError::Invalid("a joined network needs its namespace".into())
            })?;
            // SAFETY: the closure runs in the child between fork and exec and
            // makes one setns call (async-signal-safe) on a descriptor the
            // child shares with this process (held by the closure until the
            // command is dropped), allocating nothing.
            unsafe {
                cmd.pre_exec(move || alcove_sys::ns::setns(netns.as_fd(), libc::CLONE_NEWNET));
            }
            Ok(())
        }
    }
}

/// Waits for runsc's end, a cancel, or the observer's word that the run
/// must end (returned as the reason).
fn wait(
    pidfd: std::os::fd::BorrowedFd<'_>,
    options: &GvisorOptions,
    observer: &mut dyn Observer,
) -> (Waited, Option<String>) {
    loop {
        let watched = observer.poll_fd();
        let mut polled: Vec<libc::pollfd> = std::iter::once(pidfd.as_raw_fd())
            .chain(options.cancel.iter().map(|c| c.as_raw_fd()))
            .chain(watched)
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let cancels = 1..1 + options.cancel.len();
        match alcove_sys::fd::poll(&mut polled, None) {
            Ok(_) if polled[0].revents != 0 => return (Waited::Ended, None),
            Ok(_) if polled[cancels.clone()].iter().any(|p| p.revents != 0) => {
                return (Waited::Cancelled, None)
            }
            Ok(_) if watched.is_some() && polled[cancels.end].revents != 0 => {
                if let Some(why) = observer.on_ready() {
                    return (Waited::Cancelled, Some(why));
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Nothing could be watched any more: ended, not left running.
            Err(_) => return (Waited::Cancelled, None),
        }
    }
}
