//! One run in the gVisor tier: bundle, cgroup, `runsc run`, the wall-clock
//! limit, the report, and nothing left behind.

use crate::bundle::Bundle;
use crate::runsc::{Runsc, STATE_ROOT};
use crate::GvisorError;
use alcove_cgroup::SandboxCgroup;
use alcove_sandbox::{NetMode, Outcome, SandboxSpec, Status, Stdio};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What gVisor's own processes (the Sentry, the Gofer, runsc) add to the
/// sandbox's cgroup on top of the program: added to the memory and task
/// limits, so that the program gets what it was given.
pub const MEMORY_OVERHEAD: u64 = 96 << 20;
pub const PIDS_OVERHEAD: u64 = 96;
/// Captured stdout and stderr are each cut here, as in the container tier.
const CAPTURE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct GvisorOptions {
    /// Where each run's bundle and runsc state go (default /run/alcove/gvisor).
    pub state_root: Option<PathBuf>,
}

/// Runs `spec` in gVisor to completion and reports how it ended.
pub fn run(spec: &SandboxSpec, options: &GvisorOptions) -> Result<Outcome, GvisorError> {
    let runsc = Runsc::find()?;
    let root = options
        .state_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(STATE_ROOT));
    let bundle = Bundle::create(&root, spec)?;
    let mut limits = spec.limits.clone();
    limits.memory_bytes = limits
        .memory_bytes
        .map(|m| m.saturating_add(MEMORY_OVERHEAD));
    limits.pids = limits.pids.map(|p| p.saturating_add(PIDS_OVERHEAD));
    let cgroup = alcove_sandbox::adoption_cgroup(&limits).map_err(GvisorError::Cgroup)?;
    let applied = cgroup.apply(
        &alcove_cgroup::Limits {
            memory_bytes: limits.memory_bytes,
            cpu: limits.cpus.map(alcove_cgroup::CpuQuota::from_cpus),
            pids_max: limits.pids,
        },
        Some(&alcove_cgroup::Limits::default()),
    );
    let result = applied
        .map_err(|e| GvisorError::Cgroup(alcove_sandbox::SandboxError::Cgroup(e)))
        .and_then(|()| run_in(&runsc, &bundle, &cgroup, spec));
    // Everything runsc started is in the cgroup: killing it all leaves no
    // Sentry, Gofer or mount namespace behind, whatever runsc did.
    cgroup.kill_all();
    let cgroup_id = cgroup.id();
    if let Err(e) = cgroup.remove() {
        eprintln!("alcove: warning: {e} (run `alcove gc` to clean up)");
    }
    drop(bundle);
    result.map(|mut outcome| {
        outcome.cgroup_id = cgroup_id;
        outcome
    })
}

fn run_in(
    runsc: &Runsc,
    bundle: &Bundle,
    cgroup: &SandboxCgroup,
    spec: &SandboxSpec,
) -> Result<Outcome, GvisorError> {
    let network = if spec.net == NetMode::Host {
        "host"
    } else {
        "none"
    };
    let mut cmd = runsc.command(&bundle.state(), network);
    cmd.arg("run")
        .arg("--bundle")
        .arg(bundle.bundle())
        .arg(&bundle.id);
    // runsc joins the cgroup before it runs, so the Sentry and Gofer it
    // starts are born there.
    start_in(&mut cmd, cgroup);
    let capture = match &spec.stdio {
        Stdio::Inherit => None,
        Stdio::Capture { stdin } => Some(stdin.clone()),
        Stdio::Stream { .. } => return Err(GvisorError::Unsupported("streamed output")),
    };
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    // Passed through to alcove's own stdout and stderr up to their caps,
    // then closed (as the container tier does), or captured up to theirs.
    let caps = match capture {
        Some(_) => {
            let out = spec.limits.output_bytes.map_or(CAPTURE_LIMIT, to_usize);
            let err = spec.limits.stderr_bytes.or(spec.limits.output_bytes);
            Some((
                out.min(CAPTURE_LIMIT),
                err.map_or(CAPTURE_LIMIT, to_usize).min(CAPTURE_LIMIT),
            ))
        }
        None if spec.limits.output_bytes.is_some() || spec.limits.stderr_bytes.is_some() => Some((
            spec.limits.output_bytes.map_or(usize::MAX, to_usize),
            spec.limits.stderr_bytes.map_or(usize::MAX, to_usize),
        )),
        None => None,
    };
    if capture.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    if caps.is_some() {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| GvisorError::Start {
        path: runsc.path.clone(),
        source,
    })?;
    let feeder = capture.map(|stdin| {
        let mut input = child.stdin.take().expect("piped");
        std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        })
    });
    let passing = feeder.is_none();
    let readers = caps.map(|(out_cap, err_cap)| {
        let out = child
            .stdout
            .take()
            .map(|r| capped_reader(r, out_cap, passing.then(std::io::stdout)));
        let err = child
            .stderr
            .take()
            .map(|r| capped_reader(r, err_cap, passing.then(std::io::stderr)));
        (out, err)
    });
    let pidfd = match alcove_sys::seqpacket::pidfd_open(child.id() as i32) {
        Ok(fd) => fd,
        Err(source) => {
            // Nothing may outlive a failed start: runsc and all it began go
            // with the cgroup, and runsc is reaped here, not left a zombie.
            cgroup.kill_all();
            let _ = child.wait();
            return Err(GvisorError::Prepare {
                what: "watching runsc",
                source,
            });
        }
    };
    let timed_out = match spec.limits.timeout {
        Some(limit) => !wait_readable(pidfd.as_fd(), limit),
        None => false,
    };
    if timed_out {
        cgroup.kill_all();
    }
    let status = child.wait().map_err(|source| GvisorError::Prepare {
        what: "waiting for runsc",
        source,
    })?;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    // What is left (the Sentry outlives runsc for a moment) goes before the
    // usage is read, so the peaks are final.
    cgroup.kill_all();
    let mut outcome = Outcome {
        status: Status::Exited,
        exit_code: None,
        signal: None,
        wall_ms,
        cpu_user_ms: 0.0,
        cpu_sys_ms: 0.0,
        memory_peak_bytes: None,
        pids_peak: None,
        output_truncated: false,
        stdout_truncated: false,
        stderr_truncated: false,
        stdout_undelivered: false,
        cgroup_id: None,
        reason: None,
        phases: None,
        warm: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Ok(usage) = cgroup.usage() {
        outcome.cpu_user_ms = usage.cpu_user_us as f64 / 1e3;
        outcome.cpu_sys_ms = usage.cpu_system_us as f64 / 1e3;
        outcome.memory_peak_bytes = usage.memory_peak_bytes;
        outcome.pids_peak = usage.pids_peak;
    }
    let oom = cgroup.oom_kills().unwrap_or(0) > 0;
    let task_limit_hit = spec.limits.pids.is_some() && pids_limit_reached(cgroup);
    // runsc exits with the program's code, or 128+N for signal N.
    let code = status.code().or(status.signal().map(|s| 128 + s));
    (outcome.status, outcome.exit_code, outcome.signal) = match code {
        _ if timed_out => (Status::Timeout, None, Some(libc::SIGKILL)),
        _ if oom => (Status::Oom, None, Some(libc::SIGKILL)),
        _ if task_limit_hit => (Status::KilledByPolicy, None, None),
        Some(c) if c > 128 && c <= 128 + 64 => (Status::Signaled, None, Some(c - 128)),
        Some(c) => (Status::Exited, Some(c), None),
        None => (Status::Signaled, None, status.signal()),
    };
    if task_limit_hit && !timed_out && !oom {
        outcome.reason = Some(
            "the task limit (--pids) was reached: gVisor's Sentry cannot start a task past it \
             and ended the sandbox"
                .into(),
        );
    }
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    if let Some((out, err)) = readers {
        let join = |r: Option<std::thread::JoinHandle<(Vec<u8>, bool)>>| {
            r.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        (outcome.stdout, outcome.stdout_truncated) = join(out);
        (outcome.stderr, outcome.stderr_truncated) = join(err);
        outcome.output_truncated = outcome.stdout_truncated || outcome.stderr_truncated;
    }
    Ok(outcome)
}

/// Makes `cmd`'s process join `cgroup` before it execs.
pub(crate) fn start_in(cmd: &mut std::process::Command, cgroup: &SandboxCgroup) {
    let procs: Vec<CString> = cgroup
        .dirs()
        .iter()
        .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).expect("no NUL"))
        .collect();
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only open, write and close calls (async-signal-safe) on paths made
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Whether the kernel refused a task to the cgroup at its pids limit
/// (`pids.events`, v1 and v2 alike).
fn pids_limit_reached(cgroup: &SandboxCgroup) -> bool {
    cgroup.dirs().iter().any(|dir| {
        std::fs::read_to_string(dir.join("pids.events")).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("max "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    })
}

/// Reads `source` to its end. Captured (`sink` none): keeps the first
/// `cap` bytes and drains the rest. Passed through to `sink`: writes the
/// first `cap` bytes, then closes `source`, so the program's next write
/// fails (EPIPE), as in the container tier.
fn capped_reader<W: Write + Send + 'static>(
    mut source: impl Read + Send + 'static,
    cap: usize,
    sink: Option<W>,
) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut sink = sink;
        let mut kept = Vec::new();
        let mut passed = 0usize;
        let mut cut = false;
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match sink.as_mut() {
                Some(out) => {
                    let room = cap - passed;
                    let _ = out
                        .write_all(&buf[..n.min(room)])
                        .and_then(|()| out.flush());
                    passed += n.min(room);
                    if n > room {
                        cut = true;
                        break; // dropping `source` closes the stream
                    }
                }
                None => {
                    let room = cap - kept.len();
                    cut |= n > room;
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        (kept, cut)
    })
}

/// Whether `fd` became readable (the process ended) within `limit`.
pub(crate) fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut polled = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        }];
        match alcove_sys::fd::poll(&mut polled, Some(left)) {
            Ok(_) if polled[0].revents != 0 => return true,
            Ok(_) if left.is_zero() => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
