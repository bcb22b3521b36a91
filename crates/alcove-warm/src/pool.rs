//! A template's checked copies, kept ready: how many (recent traffic), made
//! off the request path by one filler thread, dropped after idleness, all
//! within a memory budget shared by every template.

use crate::verify::{self, TemplateFacts};
use crate::WarmError;
use alcove_cgroup::SandboxCgroup;
use alcove_sandbox::Limits;
use alcove_sys::{fd, pidfd, process, seqpacket};
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// A fork the template has not answered with a copy within this long is
/// written off (the copy died in its setup, or the template ignored it).
const PENDING_EXPIRY: Duration = Duration::from_secs(5);
/// Traffic is sized over windows this long.
const WINDOW: Duration = Duration::from_secs(10);
/// This many refused copies in a row mean the template cannot make good ones.
const REFUSALS_TO_GIVE_UP: u32 = 5;
/// What a copy is assumed to cost before one has been measured.
const COPY_ESTIMATE: u64 = 4 << 20;
/// Why a template is gone when alcove stopped it (no rebuild then).
pub(crate) const STOPPED: &str = "it was stopped";
/// How long a connection has to say `copy`.
const COPY_HELLO: Duration = Duration::from_millis(100);
/// How long a copy's middle process has to be gone once the copy connected.
const MIDDLE_EXIT: Duration = Duration::from_millis(200);
/// How long a request waits for a copy when none is ready.
const TAKE_WAIT: Duration = Duration::from_secs(10);

/// Memory that templates and their ready copies may hold in all
/// (`alcove serve --warm-memory`).
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit_bytes: u64) -> Self {
        Budget {
            limit: limit_bytes,
            used: AtomicU64::new(0),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.limit).then_some(after)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    fn describe(&self) -> String {
        alcove_sandbox::units::format_size(self.limit)
    }
}

/// A copy that passed every check and waits for its request.
pub(crate) struct ReadyCopy {
    pub pidfd: OwnedFd,
    pub cgroup: SandboxCgroup,
    pub connection: OwnedFd,
    pub isolate_us: f64,
    memory: u64,
}

struct State {
    ready: VecDeque<ReadyCopy>,
    /// When each unanswered `fork` was sent (monotonic ns), oldest first.
    pending: VecDeque<u64>,
    in_flight: usize,
    /// Requests waiting for a copy.
    waiting: usize,
    peak: usize,
    /// Copies added to the target because requests found the pool empty.
    boost: usize,
    peak_since: Instant,
    last_use: Instant,
    gone: Option<String>,
    refused_in_row: u32,
    last_refusal: Option<String>,
    made: u64,
    refused: u64,
    template_memory: u64,
    copy_memory: u64,
    /// No copy is ready or coming and the budget has no room for one.
    budget_blocked: bool,
}

pub(crate) struct Pool {
    name: String,
    control: OwnedFd,
    listener: OwnedFd,
    copy_limits: Limits,
    shared_rw: Vec<PathBuf>,
    max_ready: usize,
    idle: Duration,
    budget: Arc<Budget>,
    /// Reaches end of file when the template's sandbox has ended.
    ended: OwnedFd,
    wake: (OwnedFd, OwnedFd),
    facts: OnceLock<TemplateFacts>,
    state: Mutex<State>,
    changed: Condvar,
    /// Called once, with why, when the template goes on its own (not stopped).
    on_gone: Mutex<Option<crate::GoneHook>>,
}

impl Pool {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        control: OwnedFd,
        listener: OwnedFd,
        copy_limits: Limits,
        shared_rw: Vec<PathBuf>,
        max_ready: usize,
        idle: Duration,
        budget: Arc<Budget>,
        ended: OwnedFd,
    ) -> std::io::Result<Pool> {
        // Out of descriptors is an error to report, not a panic.
        let wake = fd::pipe_cloexec()?;
        let _ = fd::set_nonblocking(wake.0.as_fd(), true);
        let _ = fd::set_nonblocking(wake.1.as_fd(), true);
        let now = Instant::now();
        Ok(Pool {
            name,
            control,
            listener,
            copy_limits,
            shared_rw,
            max_ready: max_ready.max(1),
            idle,
            budget,
            ended,
            wake,
            facts: OnceLock::new(),
            state: Mutex::new(State {
                ready: VecDeque::new(),
                pending: VecDeque::new(),
                in_flight: 0,
                waiting: 0,
                peak: 0,
                boost: 0,
                peak_since: now,
                last_use: now,
                gone: None,
                refused_in_row: 0,
                last_refusal: None,
                made: 0,
                refused: 0,
                template_memory: 0,
                copy_memory: COPY_ESTIMATE,
                budget_blocked: false,
            }),
            changed: Condvar::new(),
            on_gone: Mutex::new(None),
        })
    }

    /// Sets the hook [`Pool::close`] calls; called at once if it is gone already.
    pub(crate) fn set_on_gone(&self, hook: crate::GoneHook) {
        let gone = self.lock().gone.clone();
        match gone {
            Some(why) if why != STOPPED => (hook.0)(&why),
            Some(_) => {}
            None => *self.on_gone.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_filler(&self) {
        let _ = fd::write_some(self.wake.1.as_fd(), &[1]);
    }

    /// Waits for the template's `ready`: `Ok(true)` when it came, `Ok(false)`
    /// on timeout, `Err(())` when the template ended first.
    pub(crate) fn wait_ready(&self, timeout: Duration) -> Result<bool, ()> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut fds = [poll_in(&self.control), poll_in(&self.ended)];
            if fd::poll(&mut fds, Some(left)).is_err() {
                continue;
            }
            if fds[0].revents != 0 {
                match seqpacket::recv_now(self.control.as_fd(), &mut buf) {
                    Ok(Some(n)) if n > 0 && &buf[..n] == b"ready" => return Ok(true),
                    Ok(Some(n)) if n > 0 => continue, // not ours to understand; wait on
                    Ok(None) => continue,
                    _ => return Err(()),
                }
            }
            if fds[1].revents != 0 {
                return Err(());
            }
        }
    }

    /// The template said ready and passed its checks: copies may be made.
    pub(crate) fn begin(&self, facts: TemplateFacts, memory: u64) -> Result<(), WarmError> {
        if !self.budget.try_take(memory) {
            return Err(WarmError::Budget {
                limit: self.budget.describe(),
            });
        }
        let _ = self.facts.set(facts);
        let _ = fd::set_nonblocking(self.control.as_fd(), true);
        let mut state = self.lock();
        state.template_memory = memory;
        state.last_use = Instant::now();
        Ok(())
    }

    /// Waits until the first copy is ready, or says why there is none.
    pub(crate) fn wait_first_copy(&self, timeout: Duration) -> Result<(), WarmError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if !state.ready.is_empty() {
                return Ok(());
            }
            if state.budget_blocked {
                return Err(WarmError::Budget {
                    limit: self.budget.describe(),
                });
            }
            if let Some(why) = &state.gone {
                return Err(match &state.last_refusal {
                    Some(reason) => WarmError::CopiesRefused {
                        reason: reason.clone(),
                    },
                    None => WarmError::Gone { why: why.clone() },
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WarmError::NoCopy {
                    seconds: timeout.as_secs(),
                    detail: state
                        .last_refusal
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default(),
                });
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Takes a ready copy, waiting for one to be made when none is.
    pub(crate) fn take(&self) -> Result<ReadyCopy, WarmError> {
        let deadline = Instant::now() + TAKE_WAIT;
        let mut state = self.lock();
        state.in_flight += 1;
        state.peak = state.peak.max(state.in_flight);
        state.last_use = Instant::now();
        let mut waiting = false;
        let result = loop {
            if let Some(why) = &state.gone {
                break Err(WarmError::Gone { why: why.clone() });
            }
            if let Some(copy) = state.ready.pop_front() {
                if alive(&copy.pidfd) {
                    self.budget.give(copy.memory);
                    break Ok(copy);
                }
                self.budget.give(copy.memory);
                discard(copy);
                continue;
            }
            if !waiting {
                waiting = true;
                state.waiting += 1;
                state.boost = (state.boost + 1).min(self.max_ready);
            }
            self.wake_filler();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(WarmError::NoCopy {
                    seconds: TAKE_WAIT.as_secs(),
                    detail: String::new(),
                });
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        if waiting {
            state.waiting -= 1;
        }
        if result.is_err() {
            state.in_flight -= 1;
        }
        // With copies still ready, the next is made when this request ends,
        // not beside it (on a small machine the fork would slow it down).
        let empty = state.ready.is_empty();
        drop(state);
        if empty {
            self.wake_filler();
        }
        result
    }

    /// A request that took a copy has ended.
    pub(crate) fn finished(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.last_use = Instant::now();
        drop(state);
        self.wake_filler();
    }

    pub(crate) fn gone(&self) -> Option<String> {
        self.lock().gone.clone()
    }

    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        let state = self.lock();
        (state.ready.len(), state.made, state.refused)
    }

    /// Marks the template gone and kills its ready copies.
    pub(crate) fn close(&self, why: &str) {
        let mut first = false;
        let drained: Vec<ReadyCopy> = {
            let mut state = self.lock();
            if state.gone.is_none() {
                first = true;
                state.gone = Some(why.to_owned());
                self.budget.give(state.template_memory);
                state.template_memory = 0;
            }
            state.ready.drain(..).collect()
        };
        let hook = self
            .on_gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (true, Some(hook)) = (first && why != STOPPED, hook) {
            (hook.0)(why);
        }
        for copy in drained {
            self.budget.give(copy.memory);
            discard(copy);
        }
        self.changed.notify_all();
        self.wake_filler();
    }

    /// How many copies should be ready or on their way now.
    fn target(&self, state: &mut State, now: Instant) -> usize {
        if now.duration_since(state.peak_since) > WINDOW {
            state.peak = state.in_flight;
            state.boost /= 2;
            state.peak_since = now;
        }
        let busy = state.in_flight + state.waiting;
        if busy == 0 && now.duration_since(state.last_use) > self.idle {
            return 0;
        }
        // One spare beyond the recent peak: a request then takes a copy and the
        // next is made after it, not beside it.
        (state.peak.max(busy).max(1) + 1 + state.boost).min(self.max_ready)
    }

    /// The filler: runs until the template is gone.
    pub(crate) fn fill(&self) {
        loop {
            let now = Instant::now();
            let idle_copies: Vec<ReadyCopy> = {
                let mut state = self.lock();
                if state.gone.is_some() {
                    break;
                }
                let target = self.target(&mut state, now);
                let expiry =
                    process::monotonic_ns().saturating_sub(PENDING_EXPIRY.as_nanos() as u64);
                while state.pending.front().is_some_and(|&t| t < expiry) {
                    state.pending.pop_front();
                }
                let mut surplus = Vec::new();
                while state.ready.len() > target {
                    surplus.extend(state.ready.pop_back());
                }
                let have = state.ready.len() + state.pending.len();
                for _ in have..target {
                    if self.budget.used() + state.copy_memory > self.budget.limit {
                        if state.ready.is_empty() && state.pending.is_empty() {
                            state.budget_blocked = true;
                            self.changed.notify_all();
                        }
                        break;
                    }
                    match seqpacket::send(self.control.as_fd(), b"fork", &[]) {
                        Ok(()) => state.pending.push_back(process::monotonic_ns()),
                        Err(_) => break, // its queue is full, or it is gone: later
                    }
                }
                surplus
            };
            for copy in idle_copies {
                self.budget.give(copy.memory);
                discard(copy);
            }
            let mut fds = [
                poll_in(&self.listener),
                poll_in(&self.wake.0),
                poll_in(&self.ended),
            ];
            if fd::poll(&mut fds, Some(Duration::from_millis(250))).is_err() {
                continue;
            }
            if fds[2].revents != 0 {
                self.close("its sandbox ended");
                break;
            }
            if fds[1].revents != 0 {
                let mut sink = [0u8; 64];
                while matches!(fd::read(self.wake.0.as_fd(), &mut sink), Ok(n) if n > 0) {}
            }
            if fds[0].revents != 0 {
                while let Ok(connection) = seqpacket::accept(self.listener.as_fd()) {
                    self.admit(connection);
                }
            }
        }
        self.close(STOPPED);
    }

    /// Checks a copy that connected and pools it, or kills it.
    fn admit(&self, connection: OwnedFd) {
        let Some(facts) = self.facts.get() else {
            return;
        };
        let Ok(pid) = seqpacket::peer_pid(connection.as_fd()) else {
            return;
        };
        // A request's environment may be up to 1 MiB, in one packet.
        let _ = seqpacket::force_send_buffer(connection.as_fd(), 2 << 20);
        // `counts`: whether the template's own copy failed (a process that
        // merely connected, such as a request posing as a copy, says nothing
        // about the template and must not get it rebuilt).
        let refused_as = |reason: String, counts: bool| {
            let mut state = self.lock();
            if !counts {
                drop(state);
                tracing::warn!(function = %self.name, "warm: refused a connection: {reason}");
                return;
            }
            state.pending.pop_front();
            state.refused += 1;
            state.refused_in_row += 1;
            tracing::warn!(function = %self.name, "warm: refused a copy: {reason}");
            state.last_refusal = Some(reason);
            let give_up = state.refused_in_row >= REFUSALS_TO_GIVE_UP;
            drop(state);
            if give_up {
                self.close("its copies were refused");
            }
            self.changed.notify_all();
        };
        let refused = |reason: String| refused_as(reason, true);
        // The copy says `copy` right after it connects: a connection that does
        // not at once holds up no one.
        let mut fds = [poll_in(&connection)];
        let _ = fd::poll(&mut fds, Some(COPY_HELLO));
        let mut buf = [0u8; 16];
        let hello = matches!(
            seqpacket::recv_now(connection.as_fd(), &mut buf),
            Ok(Some(4)) if &buf[..4] == b"copy"
        );
        let Ok(pidfd) = seqpacket::pidfd_open(pid) else {
            return refused_as(
                format!("process {pid} ended before it could be checked"),
                false,
            );
        };
        let kill = |pidfd: &OwnedFd| {
            let _ = pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
        };
        if let Err(reason) = verify::came_from(pid, facts) {
            kill(&pidfd);
            return refused_as(reason.to_string(), false);
        }
        if !hello {
            kill(&pidfd);
            return refused(format!("process {pid} connected but did not say `copy`"));
        }
        // Its middle process may still be exiting (the copy can connect first).
        wait_for_parent(pid, facts.pid());
        let cgroup = match alcove_sandbox::adoption_cgroup(&self.copy_limits) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                kill(&pidfd);
                return refused(format!(
                    "no cgroup for it: {}",
                    alcove_sandbox::error_chain(&e)
                ));
            }
        };
        let checked = cgroup
            .adopt(pid)
            .map_err(|e| format!("cannot move it into its cgroup: {e}"))
            .and_then(|()| {
                // Stopped while it is checked, so that it cannot move a descriptor
                // or start a thread behind the checks' backs.
                stop(&pidfd, pid)?;
                let checked = verify::check_copy(pid, facts, &self.shared_rw)
                    .map_err(|e| alcove_sandbox::error_chain(&e));
                let _ = pidfd::send_signal(pidfd.as_fd(), libc::SIGCONT);
                checked
            });
        if let Err(reason) = checked {
            kill(&pidfd);
            cgroup.kill_all();
            let _ = cgroup.remove();
            return refused(reason);
        }
        let memory = cgroup.probe().read().memory_bytes.unwrap_or(COPY_ESTIMATE);
        let mut state = self.lock();
        let made_at = state.pending.pop_front();
        let isolate_us = made_at.map_or(0.0, |t| {
            process::monotonic_ns().saturating_sub(t) as f64 / 1e3
        });
        if state.gone.is_some() || !self.budget.try_take(memory) {
            if state.ready.is_empty() && state.pending.is_empty() {
                state.budget_blocked = true;
                self.changed.notify_all();
            }
            drop(state);
            kill(&pidfd);
            cgroup.kill_all();
            let _ = cgroup.remove();
            return;
        }
        // It serves at the priority of any sandbox (it was made at the template's).
        let _ = process::set_nice(pid, 0);
        state.copy_memory = memory.max(1 << 20);
        state.budget_blocked = false;
        state.made += 1;
        state.refused_in_row = 0;
        state.ready.push_back(ReadyCopy {
            pidfd,
            cgroup,
            connection,
            isolate_us,
            memory,
        });
        drop(state);
        self.changed.notify_all();
    }
}

fn poll_in(fd: &OwnedFd) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Whether the process behind `pidfd` still runs (its pidfd is not readable).
fn alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [poll_in(pidfd)];
    matches!(fd::poll(&mut fds, Some(Duration::ZERO)), Ok(0))
}

/// Waits (briefly) until `pid`'s parent is `parent`.
fn wait_for_parent(pid: libc::pid_t, parent: libc::pid_t) {
    let status = format!("/proc/{pid}/status");
    let deadline = Instant::now() + MIDDLE_EXIT;
    while Instant::now() < deadline {
        let ppid = std::fs::read_to_string(&status).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<libc::pid_t>().ok())
        });
        if ppid.is_none_or(|p| p == parent) {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Stops the copy (SIGSTOP: from an ancestor pid namespace even its pid 1
/// cannot ignore it) and waits until the kernel says it is stopped.
fn stop(pidfd: &OwnedFd, pid: libc::pid_t) -> Result<(), String> {
    pidfd::send_signal(pidfd.as_fd(), libc::SIGSTOP)
        .map_err(|e| format!("cannot stop it to check it: {e}"))?;
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        // The state follows the command, which is in parentheses and may hold spaces.
        let state = std::fs::read_to_string(&stat).ok().and_then(|text| {
            let after = text.rsplit_once(')')?.1;
            after.trim_start().chars().next()
        });
        match state {
            Some('T' | 't') => return Ok(()),
            None | Some('Z' | 'X') => {
                return Err(format!("process {pid} ended before it was checked"))
            }
            Some(_) if Instant::now() >= deadline => {
                return Err(format!(
                    "process {pid} did not stop to be checked within 500 ms"
                ))
            }
            Some(_) => std::thread::sleep(Duration::from_micros(20)),
        }
    }
}

/// Kills a copy that will not serve and removes its cgroup.
fn discard(copy: ReadyCopy) {
    let _ = pidfd::send_signal(copy.pidfd.as_fd(), libc::SIGKILL);
    copy.cgroup.kill_all();
    if let Err(e) = copy.cgroup.remove() {
        tracing::warn!("{e} (run `alcove gc` to clean up)");
    }
}
