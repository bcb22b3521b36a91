//! Watching a running sandbox through its pidfd: limits, output, signals, exit.

use crate::child::{ChildPlan, Stage, PHASE_SLOTS, REPORT_LEN};
use crate::outcome::{Outcome, Phases, Status};
use crate::spec::Limits;
use crate::SandboxError;
use alcove_cgroup::SandboxCgroup;
use alcove_sys::pidfd::{self, ExitStatus};
use alcove_sys::{fd, process, signal};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

/// Signals `alcove run` passes on to the sandbox.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
/// How long a forwarded signal has to end the program before alcove kills it.
const GRACE: Duration = Duration::from_secs(2);

/// Receives forwarded signals through a signalfd while the sandbox runs.
pub(crate) struct SignalForwarder {
    fd: OwnedFd,
    saved: signal::SavedMask,
}

impl SignalForwarder {
    pub(crate) fn install() -> io::Result<Self> {
        let saved = signal::block(&FORWARDED)?;
        match signal::signalfd(&FORWARDED) {
            Ok(fd) => Ok(SignalForwarder { fd, saved }),
            Err(e) => {
                signal::restore_mask(&saved);
                Err(e)
            }
        }
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        while signal::read_signal(self.fd.as_fd()).is_some() {}
        signal::restore_mask(&self.saved);
    }
}

/// Everything the supervisor watches.
pub(crate) struct Supervision<'a> {
    pub pidfd: OwnedFd,
    pub error_pipe: OwnedFd,
    /// Held open so the child can tell alcove is alive; closed when alcove exits.
    pub lifeline: OwnedFd,
    /// `(read end, where it goes)` for captured stdout and stderr.
    pub outputs: Vec<(OwnedFd, Sink)>,
    pub signals: Option<SignalForwarder>,
    /// Readable (a write end closed) when the caller wants the sandbox gone.
    pub cancel: &'a [std::sync::Arc<OwnedFd>],
    pub cgroup: &'a SandboxCgroup,
    pub limits: &'a Limits,
    pub collect_usage: bool,
    /// Counter values when the run began (non-zero for a reused pool slot).
    pub baseline: crate::pool::Baseline,
    /// The child's plan; `None` for an adopted process (it had no setup here).
    pub plan: Option<&'a ChildPlan>,
    pub reap: Reap,
    pub program: String,
    pub t_start: u64,
    pub t_clone: u64,
    pub observer: &'a mut dyn crate::Observer,
}

/// How the supervised process's end is learned.
pub(crate) enum Reap {
    /// It is our child: `waitid` on its pidfd.
    Child,
    /// alcove did not start it (a warm copy): its last message on this socket,
    /// `exit CODE START_NS END_NS`, says how it ended; none means a signal.
    Adopted(OwnedFd),
}

/// Where captured output goes.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Copied on to this descriptor of alcove's.
    Fd(i32),
    /// Kept for the outcome.
    Buffer(Vec<u8>),
    /// Handed on to a reader's pipe as it takes it.
    Stream(crate::stream::StreamOut),
}

/// How long an adopted process's output may stay open after its end.
const ADOPTED_DRAIN: Duration = Duration::from_secs(1);

/// How long streamed stdout may take to reach its reader once the sandbox
/// has ended; then what is left is dropped (a reader that stopped reading
/// must not hold the invocation open).
const STREAM_DRAIN: Duration = Duration::from_secs(5);

struct Pump {
    read: Option<OwnedFd>,
    sink: Sink,
    remaining: u64,
    truncated: bool,
}

impl Pump {
    /// Moves what is readable to the target, up to the limit; closes the pipe
    /// at end of file, past the limit (the writer then gets EPIPE, as in
    /// `| head -c N`), or when the target stops accepting output.
    fn pump(&mut self, buf: &mut [u8]) {
        if let Sink::Stream(out) = &mut self.sink {
            if out.waiting() {
                out.flush();
                if out.gone {
                    self.read = None;
                }
                return;
            }
        }
        let Some(read) = &self.read else { return };
        match fd::read(read.as_fd(), buf) {
            Ok(0) | Err(_) => self.read = None,
            Ok(n) => {
                let keep = (n as u64).min(self.remaining) as usize;
                self.remaining -= keep as u64;
                let delivered = match &mut self.sink {
                    Sink::Fd(target) => fd::write_all(*target, &buf[..keep]).is_ok(),
                    Sink::Buffer(kept) => {
                        kept.extend_from_slice(&buf[..keep]);
                        true
                    }
                    Sink::Stream(out) => {
                        out.offer(&buf[..keep]);
                        !out.gone
                    }
                };
                if keep < n {
                    self.truncated = true;
                }
                if keep < n || !delivered {
                    self.read = None;
                }
            }
        }
    }
}

impl Pump {
    /// Whether output may still come or still waits to go out.
    fn open(&self) -> bool {
        self.read.is_some() || self.waiting()
    }

    fn waiting(&self) -> bool {
        matches!(&self.sink, Sink::Stream(out) if out.waiting())
    }

    /// The reader's pipe, while bytes wait for room in it.
    fn waiting_fd(&self) -> Option<i32> {
        match &self.sink {
            Sink::Stream(out) if out.waiting() => Some(out.target_fd()),
            _ => None,
        }
    }

    fn abandon_stream(&mut self) {
        if let Sink::Stream(out) = &mut self.sink {
            if out.waiting() || self.read.is_some() {
                out.abandon();
                self.read = None;
            }
        }
    }

    /// Whether streamed output stopped short of its reader.
    fn undelivered(&self) -> bool {
        matches!(&self.sink, Sink::Stream(out) if out.gone)
    }
}

/// The cgroup's own counters after the run (not net of the baseline), which a
/// pool slot records for the next run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawUsage {
    pub cpu_us: Option<(u64, u64)>,
    pub oom_kills: u64,
    pub pids_peak: Option<u64>,
    /// An adopted process's own report of when its handler ran (monotonic ns).
    pub handler_ns: Option<(u64, u64)>,
}

/// Watches the sandbox to its end. `read_marks` gives the child's phase
/// timestamps; `program_status`, under `--init`, the program's own wait status
/// (the init's exit cannot carry the signal that killed the program).
pub(crate) fn supervise(
    mut s: Supervision<'_>,
    read_marks: &dyn Fn() -> Option<[u64; PHASE_SLOTS]>,
    program_status: &dyn Fn() -> Option<i32>,
) -> Result<(Outcome, RawUsage), SandboxError> {
    // Saturating: a limit of centuries must mean "never", not wrap into "now".
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let deadline = s.limits.timeout.map(|t| s.t_clone.saturating_add(ns(t)));
    let cpu_limit_us = s
        .limits
        .cpu_time
        .map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
    let parallelism = s
        .limits
        .cpus
        .map_or(online_cpus(), |c| c.ceil() as u64)
        .clamp(1, online_cpus());
    let mut next_cpu_check = cpu_limit_us.map(|_| s.t_clone);
    let mut grace_deadline: Option<u64> = None;
    let mut kill_reason: Option<Status> = None;
    let mut policy_reason: Option<String> = None;
    let mut error_pipe = Some(s.error_pipe);
    let mut report = Vec::with_capacity(REPORT_LEN);
    let mut t_exec: Option<u64> = None;
    let mut exit: Option<(ExitStatus, u64)> = None;
    let mut handler_ns: Option<(u64, u64)> = None;
    // An adopted process's connection: its report comes on it; closed as soon
    // as its end is known, so that nothing it queued there (descriptors of its
    // own output pipes, say) keeps the output open.
    let adopted = matches!(s.reap, Reap::Adopted(_));
    let mut connection: Option<OwnedFd> = match std::mem::replace(&mut s.reap, Reap::Child) {
        Reap::Adopted(fd) => Some(fd),
        Reap::Child => None,
    };
    // An adopted process's connection ended without its report.
    let mut report_closed = false;
    let mut pumps: Vec<Pump> = s
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, (read, sink))| Pump {
            remaining: match sink {
                Sink::Buffer(_) if i == 1 => s
                    .limits
                    .stderr_bytes
                    .or(s.limits.output_bytes)
                    .unwrap_or(1 << 20),
                Sink::Buffer(_) => s.limits.output_bytes.unwrap_or(1 << 20),
                Sink::Fd(2) => s.limits.stderr_bytes.unwrap_or(u64::MAX),
                Sink::Fd(_) | Sink::Stream(_) => s.limits.output_bytes.unwrap_or(u64::MAX),
            },
            read: Some(read),
            sink,
            truncated: false,
        })
        .collect();
    let mut buf = vec![0u8; if pumps.is_empty() { 0 } else { 64 * 1024 }];
    let kill = |reason: &mut Option<Status>, why: Option<Status>| {
        let _ = pidfd::send_signal(s.pidfd.as_fd(), libc::SIGKILL);
        if reason.is_none() {
            *reason = why;
        }
    };

    loop {
        let now = process::monotonic_ns();
        let mut wake: Option<u64> = None;
        if let Some((_, t_exit)) = exit {
            let drain_end = t_exit.saturating_add(ns(STREAM_DRAIN));
            if now >= drain_end {
                for pump in &mut pumps {
                    pump.abandon_stream();
                }
            } else if pumps.iter().any(Pump::waiting) {
                wake = Some(drain_end);
            }
            // An adopted process is gone, but its pipes' write ends could have
            // been handed on: its output ends a moment after it does, whatever.
            let adopted_end = t_exit.saturating_add(ns(ADOPTED_DRAIN));
            if adopted && pumps.iter().any(|p| p.read.is_some()) {
                if now >= adopted_end {
                    for pump in &mut pumps {
                        pump.read = None;
                    }
                } else {
                    wake = Some(wake.map_or(adopted_end, |w| w.min(adopted_end)));
                }
            }
        }
        if exit.is_some() {
            connection = None;
        }
        let streams_open = error_pipe.is_some() || pumps.iter().any(Pump::open);
        if exit.is_some() && !streams_open {
            break;
        }
        if exit.is_none() {
            if let Some(d) = deadline {
                if now >= d {
                    kill(&mut kill_reason, Some(Status::Timeout));
                } else {
                    wake = Some(d);
                }
            }
            if let (Some(limit), Some(check)) = (cpu_limit_us, next_cpu_check) {
                if now >= check {
                    let used = s
                        .cgroup
                        .cpu_usage_us()
                        .map_or(0, |(u, sys)| u + sys)
                        .saturating_sub(s.baseline.cpu_us.0 + s.baseline.cpu_us.1);
                    if used >= limit {
                        kill(&mut kill_reason, Some(Status::CpuTime));
                        next_cpu_check = None;
                    } else {
                        // The earliest moment the sandbox could reach its limit.
                        let wait_us = ((limit - used) / parallelism).max(1_000);
                        next_cpu_check = Some(now + wait_us * 1_000);
                    }
                }
                if let Some(check) = next_cpu_check {
                    wake = Some(wake.map_or(check, |w| w.min(check)));
                }
            }
            if let Some(g) = grace_deadline {
                if now >= g {
                    kill(&mut kill_reason, None);
                    grace_deadline = None;
                } else {
                    wake = Some(wake.map_or(g, |w| w.min(g)));
                }
            }
        }

        let mut pollfds = Vec::with_capacity(4 + pumps.len());
        let mut push = |fd: i32| {
            pollfds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            pollfds.len() - 1
        };
        let i_pid = exit.is_none().then(|| push(s.pidfd.as_raw_fd()));
        // An adopted copy reports its exit before it goes; its namespaces' teardown,
        // which the pidfd waits for, is not the request's business.
        let i_report = match (&connection, exit.is_none() && !report_closed) {
            (Some(report), true) => Some(push(report.as_raw_fd())),
            _ => None,
        };
        let i_err = error_pipe.as_ref().map(|p| push(p.as_raw_fd()));
        let i_sig = s.signals.as_ref().map(|f| push(f.fd.as_raw_fd()));
        let i_obs = s.observer.poll_fd().map(&mut push);
        let i_cancel: Vec<usize> = if exit.is_none() && kill_reason.is_none() {
            s.cancel.iter().map(|f| push(f.as_raw_fd())).collect()
        } else {
            Vec::new()
        };
        let i_pumps: Vec<Option<usize>> = pumps
            .iter()
            .map(|p| match p.waiting_fd() {
                Some(target) => Some(push(target)),
                None => p.read.as_ref().map(|r| push(r.as_raw_fd())),
            })
            .collect();
        // A stream holding bytes waits for room in its reader's pipe, not for more input.
        for (pump, index) in pumps.iter().zip(&i_pumps) {
            if let (Some(_), Some(i)) = (pump.waiting_fd(), index) {
                pollfds[*i].events = libc::POLLOUT;
            }
        }
        let timeout = wake.map(|w| Duration::from_nanos(w.saturating_sub(process::monotonic_ns())));
        fd::poll(&mut pollfds, timeout).map_err(SandboxError::Supervise)?;
        let ready = |i: Option<usize>| i.is_some_and(|i| pollfds[i].revents != 0);

        if ready(i_err) {
            let pipe = error_pipe.as_ref().expect("polled");
            let mut chunk = [0u8; REPORT_LEN];
            match fd::read(pipe.as_fd(), &mut chunk) {
                Ok(0) | Err(_) => {
                    error_pipe = None;
                    t_exec.get_or_insert_with(process::monotonic_ns);
                }
                Ok(n) => report.extend_from_slice(&chunk[..n]),
            }
        }
        for (pump, index) in pumps.iter_mut().zip(&i_pumps) {
            if ready(*index) {
                pump.pump(&mut buf);
            }
        }
        if ready(i_sig) {
            let forwarder = s.signals.as_ref().expect("polled");
            while let Some(sig) = signal::read_signal(forwarder.fd.as_fd()) {
                if exit.is_some() {
                    continue;
                }
                if grace_deadline.is_some() {
                    kill(&mut kill_reason, None); // a second signal: no more waiting
                } else {
                    let _ = pidfd::send_signal(s.pidfd.as_fd(), sig);
                    grace_deadline = Some(process::monotonic_ns() + ns(GRACE));
                }
            }
        }
        if ready(i_obs) {
            if let Some(reason) = s.observer.on_ready() {
                if exit.is_none() && policy_reason.is_none() {
                    kill(&mut kill_reason, Some(Status::KilledByPolicy));
                    policy_reason = Some(reason);
                }
            }
        }
        if i_cancel.iter().any(|i| ready(Some(*i))) {
            kill(&mut kill_reason, Some(Status::Cancelled));
        }
        if ready(i_report) && !ready(i_pid) {
            if let Some(open) = &connection {
                match adopted_report(open) {
                    Some((status, times)) => {
                        handler_ns = times;
                        // It is on its way out (or said so falsely): used once either way.
                        let _ = pidfd::send_signal(s.pidfd.as_fd(), libc::SIGKILL);
                        let t_report = process::monotonic_ns();
                        if s.observer.counts_exits() {
                            // Its descriptors close after the kernel counted its exit.
                            wait_closed(open, EXIT_COUNTED_WAIT);
                        }
                        exit = Some((status, t_report));
                    }
                    // Gone without a word: its pidfd will say how it ended.
                    None => report_closed = true,
                }
            }
        } else if ready(i_pid) {
            let status = match &connection {
                None => {
                    pidfd::wait(s.pidfd.as_fd())
                        .map_err(SandboxError::Supervise)?
                        .0
                }
                Some(open) => match adopted_report(open) {
                    Some((status, times)) => {
                        handler_ns = times;
                        status
                    }
                    None => adopted_end(s.pidfd.as_fd()),
                },
            };
            exit = Some((status, process::monotonic_ns()));
        }
    }
    drop(s.lifeline);
    // The kernel may have killed a process for a budget before we read its event.
    if policy_reason.is_none() {
        if let Some(reason) = s.observer.on_ready() {
            policy_reason = Some(reason);
            kill_reason.get_or_insert(Status::KilledByPolicy);
        }
    }
    let (mut status, t_exit) = exit.expect("loop ends after exit");
    if let Some(raw) = program_status() {
        status = if libc::WIFEXITED(raw) {
            ExitStatus::Exited(libc::WEXITSTATUS(raw))
        } else {
            ExitStatus::Signaled(libc::WTERMSIG(raw))
        };
    }

    if let (true, Some(plan)) = (report.len() >= REPORT_LEN, s.plan) {
        return Err(setup_failure(&report, plan, &s.program));
    }
    let (usage, mut raw) = read_usage(s.cgroup, s.baseline, s.collect_usage);
    raw.handler_ns = handler_ns;
    let signaled = matches!(status, ExitStatus::Signaled(_));
    let (exit_code, signal) = match status {
        ExitStatus::Exited(code) => (Some(code), None),
        ExitStatus::Signaled(0) => (None, None), // an adopted process's unknown signal
        ExitStatus::Signaled(sig) => (None, Some(sig)),
    };
    let status = classify(kill_reason, &usage, signal, signaled, cpu_limit_us);
    let t_end = process::monotonic_ns();
    let mut outcome = Outcome {
        status,
        exit_code,
        signal,
        wall_ms: 0.0,
        cpu_user_ms: usage.cpu_user_us as f64 / 1e3,
        cpu_sys_ms: usage.cpu_system_us as f64 / 1e3,
        memory_peak_bytes: usage.memory_peak_bytes,
        pids_peak: usage.pids_peak,
        output_truncated: pumps.iter().any(|p| p.truncated),
        stdout_truncated: pumps.first().is_some_and(|p| p.truncated),
        stderr_truncated: pumps.get(1).is_some_and(|p| p.truncated),
        stdout_undelivered: pumps.first().is_some_and(Pump::undelivered),
        cgroup_id: None,
        reason: policy_reason,
        phases: None,
        warm: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    // By position (stdout, then stderr): with a streamed stdout, stderr is
    // the only buffer, and must not be taken for stdout.
    let mut buffers = pumps.into_iter().map(|p| match p.sink {
        Sink::Buffer(kept) => kept,
        Sink::Fd(_) | Sink::Stream(_) => Vec::new(),
    });
    outcome.stdout = buffers.next().unwrap_or_default();
    outcome.stderr = buffers.next().unwrap_or_default();
    outcome.wall(Duration::from_nanos(t_exit - s.t_clone));
    if let Some(marks) = read_marks() {
        let us = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3;
        let exec = t_exec.unwrap_or(t_exit);
        outcome.phases = Some(Phases {
            prepare_us: us(s.t_start, s.t_clone),
            clone_us: us(s.t_clone, marks[0]),
            namespaces_us: us(marks[0], marks[1]),
            mounts_us: us(marks[1], marks[2]),
            harden_us: us(marks[2], marks[3]),
            exec_us: us(marks[3], exec),
            run_us: us(exec, t_exit),
            teardown_us: us(t_exit, t_end),
        });
    }
    Ok((outcome, raw))
}

/// The cgroup's usage, net of `b` (a reused pool slot's counters), and its
/// raw counters for the slot's record. Without `collect_usage`, only OOM kills.
fn read_usage(
    cgroup: &SandboxCgroup,
    b: crate::pool::Baseline,
    collect_usage: bool,
) -> (alcove_cgroup::Usage, RawUsage) {
    if !collect_usage {
        let oom_kills = cgroup.oom_kills().unwrap_or(0);
        let usage = alcove_cgroup::Usage {
            oom_kills: oom_kills.saturating_sub(b.oom_kills),
            ..Default::default()
        };
        return (
            usage,
            RawUsage {
                oom_kills,
                ..RawUsage::default()
            },
        );
    }
    let u = cgroup.usage().unwrap_or_default();
    let raw = RawUsage {
        cpu_us: Some((u.cpu_user_us, u.cpu_system_us)),
        oom_kills: u.oom_kills,
        pids_peak: u.pids_peak,
        handler_ns: None,
    };
    let usage = alcove_cgroup::Usage {
        cpu_user_us: u.cpu_user_us.saturating_sub(b.cpu_us.0),
        cpu_system_us: u.cpu_system_us.saturating_sub(b.cpu_us.1),
        memory_peak_bytes: u
            .memory_peak_bytes
            .filter(|_| b.memory_exact)
            .map(|p| p.saturating_sub(b.memory_leftover)),
        pids_peak: u.pids_peak.filter(|_| b.pids_exact),
        oom_kills: u.oom_kills.saturating_sub(b.oom_kills),
    };
    (usage, raw)
}

/// Why the sandbox ended: what alcove killed it for, else what its usage and
/// its end say.
fn classify(
    kill_reason: Option<Status>,
    usage: &alcove_cgroup::Usage,
    signal: Option<i32>,
    signaled: bool,
    cpu_limit_us: Option<u64>,
) -> Status {
    let cpu_used = usage.cpu_user_us + usage.cpu_system_us;
    match kill_reason {
        Some(reason) => reason,
        None if usage.oom_kills > 0 => Status::Oom,
        None if signal == Some(libc::SIGXCPU)
            || cpu_limit_us.is_some_and(|l| cpu_used >= l && signal.is_some()) =>
        {
            Status::CpuTime
        }
        None if signaled => Status::Signaled,
        None => Status::Exited,
    }
}

/// How an adopted process ended, from the report it queued before it exited
/// (`exit CODE START_NS END_NS`), with when its handler ran; `None` when it
/// sent none (it was killed, or never said).
/// How long an adopted process that reported its end is given to exit, when
/// an observer counts exits (it usually takes well under a millisecond).
const EXIT_COUNTED_WAIT: Duration = Duration::from_millis(20);

/// Waits until the peer of `connection` has closed it (it exited), or `limit`.
fn wait_closed(connection: &OwnedFd, limit: Duration) {
    let deadline = process::monotonic_ns() + limit.as_nanos() as u64;
    loop {
        let left = deadline.saturating_sub(process::monotonic_ns());
        if left == 0 {
            return;
        }
        let mut fds = [libc::pollfd {
            fd: connection.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        match alcove_sys::fd::poll(&mut fds, Some(Duration::from_nanos(left))) {
            Ok(0) => return,
            Ok(_) if fds[0].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 => {
                return
            }
            Ok(_) => {
                // A stale message before the close: read it away.
                let mut buf = [0u8; 128];
                if !matches!(
                    alcove_sys::seqpacket::recv_now(connection.as_fd(), &mut buf),
                    Ok(Some(n)) if n > 0
                ) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn adopted_report(report: &OwnedFd) -> Option<(ExitStatus, Option<(u64, u64)>)> {
    let mut buf = [0u8; 128];
    let mut last = None;
    // The report is the last message; take at most a few stale ones before it.
    for _ in 0..8 {
        match alcove_sys::seqpacket::recv_now(report.as_fd(), &mut buf) {
            Ok(Some(n)) if n > 0 => last = Some(buf[..n].to_vec()),
            _ => break,
        }
    }
    let text = String::from_utf8(last?).ok()?;
    let mut words = text.strip_prefix("exit ")?.split(' ');
    let code: i32 = words.next()?.parse().ok()?;
    let times = (|| Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?)))();
    Some((
        ExitStatus::Exited(code & 0xff),
        times.filter(|(a, b): &(u64, u64)| a <= b),
    ))
}

/// How an adopted process that sent no report ended: the kernel keeps it on
/// the pidfd once the process is reaped (Linux 6.15+; its parent, the
/// template, reaps at once). Where the kernel cannot say, signal 0 stands for
/// "killed by a signal alcove cannot name", which the outcome reports as none.
fn adopted_end(pidfd: std::os::fd::BorrowedFd<'_>) -> ExitStatus {
    for _ in 0..50 {
        if let Some(status) = pidfd::exit_info(pidfd) {
            return status;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    ExitStatus::Signaled(0)
}

fn setup_failure(report: &[u8], plan: &ChildPlan, program: &str) -> SandboxError {
    let word = |i: usize| [report[i], report[i + 1], report[i + 2], report[i + 3]];
    let stage = Stage::from_u32(u32::from_ne_bytes(word(0)));
    let index = u32::from_ne_bytes(word(4)) as usize;
    let source = io::Error::from_raw_os_error(i32::from_ne_bytes(word(8)));
    match stage {
        Some(Stage::ExecNotFound) => SandboxError::ProgramNotFound {
            program: program.to_owned(),
        },
        Some(Stage::ExecDenied) => SandboxError::ProgramNotExecutable {
            program: program.to_owned(),
            source,
        },
        Some(Stage::Mount) => SandboxError::Setup {
            what: plan
                .mount_ops
                .get(index)
                .map_or_else(|| "building the filesystem".into(), |op| op.describe()),
            source,
        },
        Some(stage) => SandboxError::Setup {
            what: stage.describe().into(),
            source,
        },
        None => SandboxError::Setup {
            what: "an unknown step".into(),
            source,
        },
    }
}

/// CPUs this process may use, read once (it reads cgroup files each call).
fn online_cpus() -> u64 {
    static CPUS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}
