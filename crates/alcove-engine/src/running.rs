//! The registry of invocations in flight — accepted and not yet ended:
//! waiting for a slot, running, or between an async invocation's attempts —
//! kept in memory so that listing them (`fn ps`) reads no store; each one's
//! own cancel; and the functions being removed, which take no new ones.
//! What the engine does with it is in `control.rs`.
//!
//! An entry is added when an invocation is accepted and removed by a guard
//! when its task ends, also when that task panics.

use crate::model::InvocationRecord;
use crate::store::now;
use crate::EngineError;
use alcove_sandbox::UsageWatch;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most invocations one listing returns.
pub const MAX_LISTED: usize = 1000;

/// The registry of invocations in flight.
#[derive(Default)]
pub(crate) struct Running {
    state: Mutex<State>,
    /// Woken whenever an entry goes.
    ended: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Arc<Entry>>,
    /// Functions being removed: they take no new invocations.
    removing: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One invocation in flight.
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) function: String,
    version: u32,
    is_async: bool,
    created_at: f64,
    since: Instant,
    attempts: AtomicU32,
    running: AtomicBool,
    watch: Arc<UsageWatch>,
    /// The running attempt's cgroup2 id while the monitor watches it (0: none).
    cgroup_id: Arc<AtomicU64>,
    cancel: Mutex<Cancel>,
    cancelled: tokio::sync::Notify,
}

#[derive(Default)]
struct Cancel {
    /// Why it was cancelled, once it was.
    reason: Option<String>,
    /// The write end of the running attempt's own cancel pipe: dropping it
    /// kills that attempt's sandbox.
    pipe: Option<OwnedFd>,
}

impl Entry {
    /// Cancels the invocation: kills its running sandbox, and keeps it from
    /// starting or retrying. The first reason given is the one recorded.
    pub(crate) fn cancel(&self, reason: String) {
        let mut c = lock(&self.cancel);
        c.reason.get_or_insert(reason);
        c.pipe = None;
        drop(c);
        self.cancelled.notify_waiters();
    }

    /// Why it was cancelled, if it was.
    pub(crate) fn cancel_reason(&self) -> Option<String> {
        lock(&self.cancel).reason.clone()
    }

    /// Resolves once the invocation is cancelled.
    pub(crate) async fn cancelled(&self) {
        loop {
            let woken = self.cancelled.notified();
            if self.cancel_reason().is_some() {
                return;
            }
            woken.await;
        }
    }

    /// Records `r` as ended by its cancel.
    pub(crate) fn mark_cancelled(&self, r: &mut InvocationRecord) {
        r.status = "cancelled".into();
        r.error = self.cancel_reason();
        r.ended_at = Some(now());
    }
}

/// A running attempt of an invocation: the read end of its own cancel pipe
/// and the watch its sandbox fills. Dropping it ends the attempt.
pub(crate) struct Attempt {
    entry: Arc<Entry>,
    pub(crate) cancel: Arc<OwnedFd>,
}

impl Attempt {
    pub(crate) fn watch(&self) -> Arc<UsageWatch> {
        Arc::clone(&self.entry.watch)
    }

    /// Where the monitor puts the sandbox's cgroup id while it watches it.
    pub(crate) fn cgroup_cell(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.entry.cgroup_id)
    }

    pub(crate) fn cancel_reason(&self) -> Option<String> {
        self.entry.cancel_reason()
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        lock(&self.entry.cancel).pipe = None;
        self.entry.running.store(false, Ordering::SeqCst);
    }
}

/// Why an attempt did not start.
pub(crate) enum Refused {
    Cancelled(String),
    Io(std::io::Error),
}

impl Refused {
    /// Records why in `r`; returns whether another attempt may follow.
    pub(crate) fn apply(self, r: &mut InvocationRecord) -> bool {
        r.ended_at = Some(now());
        match self {
            Refused::Cancelled(reason) => {
                r.status = "cancelled".into();
                r.error = Some(reason);
                false
            }
            Refused::Io(e) => {
                r.status = "error".into();
                r.error = Some(format!("creating the invocation's cancel pipe failed: {e}"));
                true
            }
        }
    }
}

/// An invocation's place in the registry, given up when dropped.
pub(crate) struct Registered {
    running: Arc<Running>,
    entry: Arc<Entry>,
}

impl std::ops::Deref for Registered {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.running.state).entries.remove(&self.entry.id);
        self.running.ended.notify_waiters();
    }
}

/// A function held back from new invocations while it is removed.
pub(crate) struct Removal<'a> {
    running: &'a Running,
    name: String,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        lock(&self.running.state).removing.remove(&self.name);
    }
}

impl Running {
    /// Adds an accepted invocation; refused while its function is removed.
    pub(crate) fn register(
        self: &Arc<Self>,
        r: &InvocationRecord,
    ) -> Result<Registered, EngineError> {
        let mut state = lock(&self.state);
        if state.removing.contains(&r.function) {
            return Err(EngineError::NoFunction(r.function.clone()));
        }
        let entry = Arc::new(Entry {
            id: r.id.clone(),
            function: r.function.clone(),
            version: r.version,
            is_async: r.is_async,
            created_at: r.created_at,
            since: Instant::now(),
            attempts: AtomicU32::new(r.attempts),
            running: AtomicBool::new(false),
            watch: Arc::new(UsageWatch::new()),
            cgroup_id: Arc::new(AtomicU64::new(0)),
            cancel: Mutex::new(Cancel::default()),
            cancelled: tokio::sync::Notify::new(),
        });
        state.entries.insert(r.id.clone(), Arc::clone(&entry));
        Ok(Registered {
            running: Arc::clone(self),
            entry,
        })
    }

    /// Starts an attempt of invocation `id` with its own cancel pipe,
    /// unless it was cancelled; `None` when it is not registered (it then
    /// has no cancel of its own).
    pub(crate) fn begin_attempt(&self, id: &str) -> Result<Option<Attempt>, Refused> {
        let Some(entry) = lock(&self.state).entries.get(id).cloned() else {
            return Ok(None);
        };
        let cancel = {
            let mut c = lock(&entry.cancel);
            if let Some(reason) = &c.reason {
                return Err(Refused::Cancelled(reason.clone()));
            }
            let (read, write) = alcove_sys::fd::pipe_cloexec().map_err(Refused::Io)?;
            c.pipe = Some(write);
            Arc::new(read)
        };
        entry.attempts.fetch_add(1, Ordering::SeqCst);
        entry.running.store(true, Ordering::SeqCst);
        Ok(Some(Attempt { entry, cancel }))
    }

    /// Marks `name` as being removed, with the invocations it has in flight;
    /// refused while it has some, unless `force`.
    pub(crate) fn begin_removal(
        &self,
        name: &str,
        force: bool,
    ) -> Result<(Removal<'_>, Vec<Arc<Entry>>), EngineError> {
        let mut state = lock(&self.state);
        if state.removing.contains(name) {
            return Err(EngineError::Conflict(
                "function_busy",
                format!("function {name:?} is being removed already"),
            ));
        }
        let busy: Vec<Arc<Entry>> = state
            .entries
            .values()
            .filter(|e| e.function == name)
            .cloned()
            .collect();
        if !busy.is_empty() && !force {
            return Err(EngineError::Conflict(
                "function_busy",
                format!(
                    "function {name:?} has {} invocation(s) in flight (see `alcove fn ps`); \
                     wait for them to end, or use --force to cancel them first",
                    busy.len()
                ),
            ));
        }
        state.removing.insert(name.to_owned());
        let removal = Removal {
            running: self,
            name: name.to_owned(),
        };
        Ok((removal, busy))
    }

    /// The oldest `limit` entries (at most [`MAX_LISTED`]) of `function`, or
    /// of all, and how many there are in all.
    fn oldest(&self, function: Option<&str>, limit: usize) -> (Vec<Arc<Entry>>, usize) {
        let mut entries: Vec<Arc<Entry>> = lock(&self.state)
            .entries
            .values()
            .filter(|e| function.is_none_or(|f| e.function == f))
            .cloned()
            .collect();
        entries.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.id.cmp(&b.id)));
        let total = entries.len();
        entries.truncate(limit.min(MAX_LISTED));
        (entries, total)
    }

    /// The entry of invocation `id`, while it is in flight.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.state).entries.get(id).cloned()
    }

    /// The entries (of `function`, if given), oldest first, at most `limit`
    /// (itself at most [`MAX_LISTED`]), with their sandboxes' usage so far.
    pub(crate) fn list(&self, function: Option<&str>, limit: usize) -> RunningList {
        let (entries, total) = self.oldest(function, limit);
        let invocations = entries
            .iter()
            .map(|e| {
                let running = e.running.load(Ordering::SeqCst);
                let usage = running.then(|| e.watch.usage()).flatten();
                RunningInvocation {
                    id: e.id.clone(),
                    function: e.function.clone(),
                    version: e.version,
                    status: if running { "running" } else { "queued" },
                    is_async: e.is_async,
                    attempts: e.attempts.load(Ordering::SeqCst),
                    created_at: e.created_at,
                    age_ms: e.since.elapsed().as_secs_f64() * 1e3,
                    memory_bytes: usage.and_then(|u| u.memory_bytes),
                    memory_peak_bytes: usage.and_then(|u| u.memory_peak_bytes),
                    cpu_ms: usage.and_then(|u| u.cpu_ms),
                    cancelled: e.cancel_reason().is_some(),
                    syscalls: None,
                    bytes_read: None,
                    bytes_written: None,
                    cgroup_id: if running {
                        e.cgroup_id.load(Ordering::SeqCst)
                    } else {
                        0
                    },
                    node: String::new(), // the engine knows its node
                }
            })
            .collect::<Vec<_>>();
        RunningList {
            truncated: invocations.len() < total,
            invocations,
            total,
        }
    }

    /// Waits until no entry matches `pending`, for up to `limit`.
    pub(crate) async fn wait_until_none(
        &self,
        limit: Duration,
        pending: impl Fn(&Entry) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let woken = self.ended.notified();
            if !lock(&self.state).entries.values().any(|e| pending(e)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return !lock(&self.state).entries.values().any(|e| pending(e));
            }
        }
    }
}

/// One invocation in flight, as `GET /v1/invocations` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningInvocation {
    pub id: String,
    pub function: String,
    pub version: u32,
    /// `queued` (waiting for a slot, or between attempts) or `running`.
    pub status: &'static str,
    #[serde(rename = "async")]
    pub is_async: bool,
    pub attempts: u32,
    /// Unix seconds.
    pub created_at: f64,
    /// Milliseconds since it was accepted.
    pub age_ms: f64,
    /// Memory charged to its sandbox's cgroup now (what its limit counts),
    /// in bytes; running only.
    pub memory_bytes: Option<u64>,
    /// The peak of that charge in this attempt, where the kernel keeps one.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time (user and system) its sandbox used so far, in milliseconds.
    pub cpu_ms: Option<f64>,
    /// Whether it was cancelled and is ending.
    pub cancelled: bool,
    /// Syscalls so far, where a per-syscall program watches it (a syscall
    /// budget or learning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<u64>,
    /// Bytes read and written by its processes that have exited so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// The sandbox's cgroup2 id while the monitor watches it.
    #[serde(skip)]
    pub cgroup_id: u64,
    /// The daemon it runs on.
    pub node: String,
}

/// A listing of invocations in flight, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningList {
    pub invocations: Vec<RunningInvocation>,
    /// How many matched, listed or not.
    pub total: usize,
    /// Whether `invocations` stops short of `total`.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, function: &str) -> InvocationRecord {
        InvocationRecord {
            id: id.into(),
            function: function.into(),
            version: 1,
            status: "queued".into(),
            ..InvocationRecord::default()
        }
    }

    #[test]
    fn entries_go_with_their_guard_and_a_removed_function_takes_none() {
        let running = Arc::new(Running::default());
        let a = running.register(&record("a", "f")).unwrap();
        let b = running.register(&record("b", "g")).unwrap();
        assert!(matches!(
            running.begin_removal("f", false),
            Err(EngineError::Conflict("function_busy", _))
        ));
        let (removal, busy) = running.begin_removal("f", true).unwrap();
        assert_eq!(busy.len(), 1);
        assert!(matches!(
            running.register(&record("c", "f")),
            Err(EngineError::NoFunction(_))
        ));
        drop(a);
        assert!(!lock(&running.state).entries.contains_key("a"));
        drop(removal);
        drop(running.register(&record("d", "f")).unwrap());
        drop(b);
        assert!(lock(&running.state).entries.is_empty());
    }

    #[test]
    fn listings_are_oldest_first_bounded_and_count_what_they_leave_out() {
        let running = Arc::new(Running::default());
        let held: Vec<Registered> = (0..MAX_LISTED + 2)
            .map(|i| {
                let function = if i % 2 == 0 { "even" } else { "odd" };
                running
                    .register(&record(&format!("{i:05}"), function))
                    .unwrap()
            })
            .collect();
        let (listed, total) = running.oldest(None, usize::MAX);
        assert_eq!((listed.len(), total), (MAX_LISTED, MAX_LISTED + 2));
        assert_eq!(listed[0].id, "00000");
        let (listed, total) = running.oldest(Some("odd"), 2);
        let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!((ids, total), (vec!["00001", "00003"], MAX_LISTED / 2 + 1));
        assert_eq!(running.oldest(Some("none"), 10).1, 0);
        drop(held);
        assert_eq!(running.oldest(None, 10).1, 0);
    }

    #[test]
    fn a_cancelled_invocation_starts_no_attempt_and_a_running_one_loses_its_pipe() {
        let running = Arc::new(Running::default());
        let entry = running.register(&record("a", "f")).unwrap();
        let attempt = running.begin_attempt("a").ok().flatten().unwrap();
        assert!(lock(&entry.cancel).pipe.is_some());
        entry.cancel("by a test".into());
        assert!(lock(&entry.cancel).pipe.is_none());
        // The read end sees end of file: what the sandbox's supervisor polls.
        let mut buf = [0u8; 1];
        let n = alcove_sys::fd::read(std::os::fd::AsFd::as_fd(&*attempt.cancel), &mut buf);
        assert_eq!(n.unwrap(), 0);
        drop(attempt);
        assert!(matches!(
            running.begin_attempt("a"),
            Err(Refused::Cancelled(why)) if why == "by a test"
        ));
        entry.cancel("again".into());
        assert_eq!(entry.cancel_reason().as_deref(), Some("by a test"));
    }
}
