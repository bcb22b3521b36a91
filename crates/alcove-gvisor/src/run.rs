//! One run in the gVisor tier: bundle, cgroup, `runsc run`, the wall-clock
//! limit, the report, and nothing left behind.

use crate::bundle::Bundle;
use crate::runsc::{Runsc, STATE_ROOT};
use crate::strace::{Counter, GuestSyscalls};
use crate::GvisorError;
use alcove_cgroup::{SandboxCgroup, Usage};
use alcove_sandbox::{Outcome, SandboxSpec, Status, Stdio};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Read ends of pipes: once the write end of any is closed, the run is
    /// killed and reported `cancelled` (a daemon's shutdown, a client's cancel).
    pub cancel: Vec<Arc<OwnedFd>>,
}

impl GvisorOptions {
    pub(crate) fn root(&self) -> PathBuf {
        self.state_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(STATE_ROOT))
    }
}

/// Runs `spec` in gVisor to completion and reports how it ended.
pub fn run(spec: &SandboxSpec, options: &GvisorOptions) -> Result<Outcome, GvisorError> {
    run_with(spec, options, false).map(|(outcome, _)| outcome)
}

/// [`run`], with the program's own syscalls counted by the Sentry
/// (strace.rs: slower, as every call is logged).
pub fn run_counting_syscalls(
    spec: &SandboxSpec,
    options: &GvisorOptions,
) -> Result<(Outcome, GuestSyscalls), GvisorError> {
    run_with(spec, options, true).map(|(outcome, counted)| (outcome, counted.unwrap_or_default()))
}

fn run_with(
    spec: &SandboxSpec,
    options: &GvisorOptions,
    count: bool,
) -> Result<(Outcome, Option<GuestSyscalls>), GvisorError> {
    let runsc = Runsc::find()?;
    let bundle = Bundle::create(&options.root(), spec)?;
    let counter = count.then(|| Counter::start(&bundle.dir)).transpose()?;
    let cgroup = sandbox_cgroup(spec)?;
    let mut cmd = runsc.command(&bundle.state(), network(spec));
    if let Some(counter) = &counter {
        cmd.args(counter.flags());
    }
    cmd.arg("run")
        .arg("--bundle")
        .arg(bundle.bundle())
        .arg(&bundle.id);
    let result = supervise(cmd, &runsc, &cgroup, spec, options);
    let cgroup_id = finish(cgroup);
    let counted = counter.map(Counter::finish);
    drop(bundle);
    result.map(|mut outcome| {
        outcome.cgroup_id = cgroup_id;
        (outcome, counted)
    })
}

/// The `--network` runsc gets for `spec` (a run's or a function's).
pub(crate) fn network(spec: &SandboxSpec) -> &'static str {
    crate::bundle::Network::of(spec).runsc_flag()
}

/// A cgroup beneath alcove's own with `spec`'s limits, gVisor's own share
/// added.
pub(crate) fn sandbox_cgroup(spec: &SandboxSpec) -> Result<SandboxCgroup, GvisorError> {
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
    if let Err(e) = applied {
        finish(cgroup);
        return Err(GvisorError::Cgroup(alcove_sandbox::SandboxError::Cgroup(e)));
    }
    Ok(cgroup)
}

/// Kills everything in `cgroup` and removes it; returns its id. Everything
/// runsc started is in it: no Sentry, Gofer or mount namespace is left,
/// whatever runsc did.
pub(crate) fn finish(cgroup: SandboxCgroup) -> Option<u64> {
    cgroup.kill_all();
    let id = cgroup.id();
    if let Err(e) = cgroup.remove() {
        eprintln!("alcove: warning: {e} (run `alcove gc` to clean up)");
    }
    id
}

/// How the wait for runsc ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    Ended,
    TimedOut,
    /// The sandbox's cgroup used its CPU time (`--cpu-time`).
    CpuSpent,
    Cancelled,
}

/// A CPU-time limit a wait holds a sandbox to: its cgroup's CPU time (the
/// Sentry's and the Gofer's included), counted from `before_us`.
pub(crate) struct CpuLimit<'a> {
    pub cgroup: &'a SandboxCgroup,
    pub limit: Duration,
    pub before_us: u64,
    /// The most CPUs it can run on at once (`--cpus`, at most the host's).
    pub parallelism: u64,
}

impl<'a> CpuLimit<'a> {
    /// `spec`'s CPU-time limit on `cgroup`, counted from `before` on.
    pub(crate) fn of(
        spec: &SandboxSpec,
        cgroup: &'a SandboxCgroup,
        before: &Usage,
    ) -> Option<Self> {
        // Read once per run: it reads cgroup files each time.
        let host = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        spec.limits.cpu_time.map(|limit| CpuLimit {
            cgroup,
            limit,
            before_us: before.cpu_user_us + before.cpu_system_us,
            parallelism: spec
                .limits
                .cpus
                .map_or(host, |c| c.ceil() as u64)
                .clamp(1, host),
        })
    }

    /// Whether the limit is spent; if not, how long until it could be at
    /// the soonest (every CPU it may use busy), at least a millisecond.
    fn check(&self) -> Result<(), Duration> {
        let used_us = self
            .cgroup
            .cpu_usage_us()
            .map_or(0, |(user, sys)| user + sys)
            .saturating_sub(self.before_us);
        let limit_us = u64::try_from(self.limit.as_micros()).unwrap_or(u64::MAX);
        if used_us >= limit_us {
            return Ok(());
        }
        Err(
            Duration::from_micros((limit_us - used_us) / self.parallelism)
                .max(Duration::from_millis(1)),
        )
    }
}

/// How the program ended, as far as alcove could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Code(i32),
    Signal(i32),
    Unknown,
}

impl Ended {
    /// From runsc's exit: the program's code, or 128+N for signal N.
    pub(crate) fn of(status: std::process::ExitStatus) -> Ended {
        match status.code().or(status.signal().map(|s| 128 + s)) {
            Some(c) if c > 128 && c <= 128 + 64 => Ended::Signal(c - 128),
            Some(c) => Ended::Code(c),
            None => Ended::Unknown,
        }
    }
}

/// A pidfd for the runsc `child` just started in `cgroup`. Nothing may
/// outlive a failed one: runsc and all it began go with the cgroup, and
/// runsc is reaped here, not left a zombie.
pub(crate) fn watch_runsc(
    child: &mut std::process::Child,
    cgroup: &SandboxCgroup,
) -> Result<OwnedFd, GvisorError> {
    alcove_sys::seqpacket::pidfd_open(child.id() as i32).map_err(|source| {
        cgroup.kill_all();
        let _ = child.wait();
        GvisorError::Prepare {
            what: "watching runsc",
            source,
        }
    })
}

/// Where a run's stdin comes from and its stdout and stderr go.
pub(crate) struct Io {
    pub stdin: Option<Vec<u8>>,
    pub sinks: Option<(Sink, Sink)>,
}

/// The stdio `spec` asks for: passed through to alcove's own stdout and
/// stderr up to their caps (then closed, as in the container tier),
/// captured up to theirs, or streamed to a reader up to the output limit.
pub(crate) fn io_for(spec: &SandboxSpec) -> Result<Io, GvisorError> {
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let out_limit = spec.limits.output_bytes.map(to_usize);
    let err_limit = spec
        .limits
        .stderr_bytes
        .or(spec.limits.output_bytes)
        .map(to_usize);
    let kept =
        |limit: Option<usize>| Sink::Keep(limit.map_or(CAPTURE_LIMIT, |l| l.min(CAPTURE_LIMIT)));
    // gVisor writes a host file at offsets it keeps itself, from 0: a
    // regular file as stdout, already written through the same descriptor
    // (a script's `{ echo start; alcove run ...; } > log`), would be written
    // over, so the output goes through alcove, at the descriptor's offset.
    // Looked at only for inherited stdio (a pooled request's is captured).
    let regular =
        |fd: u8| std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| m.is_file());
    Ok(match &spec.stdio {
        Stdio::Inherit
            if out_limit.is_none()
                && spec.limits.stderr_bytes.is_none()
                && !regular(1)
                && !regular(2) =>
        {
            Io {
                stdin: None,
                sinks: None,
            }
        }
        Stdio::Inherit => Io {
            stdin: None,
            sinks: Some((
                Sink::Through(Box::new(std::io::stdout()), out_limit.unwrap_or(usize::MAX)),
                Sink::Through(
                    Box::new(std::io::stderr()),
                    spec.limits.stderr_bytes.map_or(usize::MAX, to_usize),
                ),
            )),
        },
        Stdio::Capture { stdin } => Io {
            stdin: Some(stdin.clone()),
            sinks: Some((kept(out_limit), kept(err_limit))),
        },
        Stdio::Stream { stdin, stdout } => {
            let target = stdout
                .0
                .try_clone()
                .map_err(|source| GvisorError::Prepare {
                    what: "the stream for stdout",
                    source,
                })?;
            Io {
                stdin: Some(stdin.clone()),
                sinks: Some((
                    Sink::Stream(std::fs::File::from(target), out_limit.unwrap_or(usize::MAX)),
                    kept(err_limit),
                )),
            }
        }
    })
}

/// Relays running for stdout and stderr.
pub(crate) type Relays = (
    Option<std::thread::JoinHandle<Relayed>>,
    Option<std::thread::JoinHandle<Relayed>>,
);

/// Starts `cmd` (a `runsc run`) inside `cgroup`, feeds and reads its stdio
/// as `spec` says, holds it to `spec`'s wall-clock limit and `options`'
/// cancel, and reports how it ended.
pub(crate) fn supervise(
    mut cmd: std::process::Command,
    runsc: &Runsc,
    cgroup: &SandboxCgroup,
    spec: &SandboxSpec,
    options: &GvisorOptions,
) -> Result<Outcome, GvisorError> {
    // runsc joins the cgroup before it runs, so all it starts is born there.
    start_in(&mut cmd, cgroup);
    let io = io_for(spec)?;
    if io.stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    if io.sinks.is_some() {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| GvisorError::Start {
        path: runsc.path.clone(),
        source,
    })?;
    let feeder = io.stdin.map(|stdin| {
        let mut input = child.stdin.take().expect("piped");
        std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        })
    });
    let relays = io.sinks.map(|(out_sink, err_sink)| {
        let out = child.stdout.take().map(|r| relay(r, out_sink));
        let err = child.stderr.take().map(|r| relay(r, err_sink));
        (out, err)
    });
    let pidfd = watch_runsc(&mut child, cgroup)?;
    let cpu = CpuLimit::of(spec, cgroup, &Usage::default());
    let waited = wait_within(
        pidfd.as_fd(),
        spec.limits.timeout,
        cpu.as_ref(),
        &options.cancel,
    );
    if waited != Waited::Ended {
        cgroup.kill_all();
    }
    let status = child.wait().map_err(|source| GvisorError::Prepare {
        what: "waiting for runsc",
        source,
    })?;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let ended = Ended::of(status);
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Ok(outcome(
        cgroup,
        spec,
        &Usage::default(),
        waited,
        ended,
        wall_ms,
        relays,
    ))
}

/// The report of a run that ended (`waited`, `ended`) after `wall_ms`:
/// what is left in `cgroup` is sent SIGKILL first (not waited for: the
/// relays reach the end of their streams as the Sentry dies, and peaks only
/// grow), so the usage is final. CPU time is counted from `before`
/// (what the cgroup had used when this run began).
pub(crate) fn outcome(
    cgroup: &SandboxCgroup,
    spec: &SandboxSpec,
    before: &Usage,
    waited: Waited,
    ended: Ended,
    wall_ms: f64,
    relays: Option<Relays>,
) -> Outcome {
    signal_all(cgroup);
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
        let ms = |now: u64, then: u64| now.saturating_sub(then) as f64 / 1e3;
        outcome.cpu_user_ms = ms(usage.cpu_user_us, before.cpu_user_us);
        outcome.cpu_sys_ms = ms(usage.cpu_system_us, before.cpu_system_us);
        outcome.memory_peak_bytes = usage.memory_peak_bytes;
        outcome.pids_peak = usage.pids_peak;
    }
    let oom = cgroup.oom_kills().unwrap_or(0) > before.oom_kills;
    let task_limit_hit = spec.limits.pids.is_some() && pids_limit_reached(cgroup);
    (outcome.status, outcome.exit_code, outcome.signal) = match ended {
        _ if waited == Waited::Cancelled => (Status::Cancelled, None, Some(libc::SIGKILL)),
        _ if waited == Waited::TimedOut => (Status::Timeout, None, Some(libc::SIGKILL)),
        _ if waited == Waited::CpuSpent => (Status::CpuTime, None, Some(libc::SIGKILL)),
        _ if oom => (Status::Oom, None, Some(libc::SIGKILL)),
        _ if task_limit_hit => (Status::KilledByPolicy, None, None),
        Ended::Signal(s) => (Status::Signaled, None, Some(s)),
        Ended::Code(c) => (Status::Exited, Some(c), None),
        Ended::Unknown => (Status::Signaled, None, Some(libc::SIGKILL)),
    };
    if outcome.status == Status::KilledByPolicy {
        outcome.reason = Some(
            "the task limit (--pids) was reached: gVisor's Sentry cannot start a task past it \
             and ended the sandbox"
                .into(),
        );
    }
    if let Some((out, err)) = relays {
        let join = |r: Option<std::thread::JoinHandle<Relayed>>| {
            r.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        let (out, err) = (join(out), join(err));
        (outcome.stdout, outcome.stdout_truncated) = (out.kept, out.cut);
        (outcome.stderr, outcome.stderr_truncated) = (err.kept, err.cut);
        outcome.stdout_undelivered = out.undelivered;
        outcome.output_truncated = outcome.stdout_truncated || outcome.stderr_truncated;
    }
    outcome
}

/// Sends SIGKILL once to every process in `cgroup`, without waiting for
/// them to go (`SandboxCgroup::kill_all` waits).
fn signal_all(cgroup: &SandboxCgroup) {
    for dir in cgroup.dirs() {
        let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // Pids in the run's own cgroup, which only its processes join.
            let _ = alcove_sys::process::kill(pid, libc::SIGKILL);
        }
    }
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
pub(crate) fn pids_limit_reached(cgroup: &SandboxCgroup) -> bool {
    cgroup.dirs().iter().any(|dir| {
        std::fs::read_to_string(dir.join("pids.events")).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("max "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    })
}

/// Where one of the program's output streams goes.
pub(crate) enum Sink {
    /// Kept, up to this many bytes; the rest is read and dropped.
    Keep(usize),
    /// Written through (alcove's own stdout or stderr) up to this many bytes.
    Through(Box<dyn Write + Send>, usize),
    /// Written to a reader's stream up to this many bytes.
    Stream(std::fs::File, usize),
}

/// What a relay did with its stream.
#[derive(Debug, Default)]
pub(crate) struct Relayed {
    kept: Vec<u8>,
    /// Cut at its cap.
    cut: bool,
    /// Its reader went away before the end.
    undelivered: bool,
}

/// Reads `source` to its end into `sink`. Passed on (through or streamed):
/// the first `cap` bytes, then `source` is closed, so the program's next
/// write fails (EPIPE), as in the container tier; a reader that goes away
/// closes it too.
pub(crate) fn relay(
    mut source: impl Read + Send + 'static,
    sink: Sink,
) -> std::thread::JoinHandle<Relayed> {
    std::thread::spawn(move || {
        let mut done = Relayed::default();
        let mut passed = 0usize;
        let (mut out, cap): (Option<Box<dyn Write + Send>>, usize) = match sink {
            Sink::Keep(cap) => (None, cap),
            Sink::Through(w, cap) => (Some(w), cap),
            Sink::Stream(f, cap) => (Some(Box::new(f)), cap),
        };
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match out.as_mut() {
                Some(w) => {
                    let room = cap - passed;
                    if w.write_all(&buf[..n.min(room)])
                        .and_then(|()| w.flush())
                        .is_err()
                    {
                        done.undelivered = true;
                        break; // dropping `source` closes the stream
                    }
                    passed += n.min(room);
                    if n > room {
                        done.cut = true;
                        break;
                    }
                }
                None => {
                    let room = cap - done.kept.len();
                    done.cut |= n > room;
                    done.kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        done
    })
}

/// Waits until `fd` becomes readable (the process ended), `limit` passes,
/// or the write end of one of `cancel`'s pipes is closed.
pub(crate) fn wait_for(
    fd: std::os::fd::BorrowedFd<'_>,
    limit: Option<Duration>,
    cancel: &[Arc<OwnedFd>],
) -> Waited {
    wait_within(fd, limit, None, cancel)
}

/// [`wait_for`], also ending the wait once `cpu`'s limit is spent (looked at
/// no sooner than the sandbox could have spent it).
pub(crate) fn wait_within(
    fd: std::os::fd::BorrowedFd<'_>,
    limit: Option<Duration>,
    cpu: Option<&CpuLimit<'_>>,
    cancel: &[Arc<OwnedFd>],
) -> Waited {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        let mut left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Waited::TimedOut;
        }
        if let Some(cpu) = cpu {
            match cpu.check() {
                Ok(()) => return Waited::CpuSpent,
                Err(soonest) => left = Some(left.map_or(soonest, |l| l.min(soonest))),
            }
        }
        let mut polled: Vec<libc::pollfd> = std::iter::once(fd.as_raw_fd())
            .chain(cancel.iter().map(|c| c.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        match alcove_sys::fd::poll(&mut polled, left) {
            Ok(_) if polled[0].revents != 0 => return Waited::Ended,
            Ok(_) if polled[1..].iter().any(|p| p.revents != 0) => return Waited::Cancelled,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Waited::Ended,
        }
    }
}
