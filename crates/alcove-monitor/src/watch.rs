//! One sandbox run under the monitor: registered by cgroup id before its
//! first process runs, unregistered (rules detached, counters read) once its
//! last one is gone. It is the run's `Observer`.

use crate::service::{MonitorService, Request};
use crate::{Event, EventKind, MonitorError, SandboxPolicy, Stats, Subject};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most events one watch keeps for its caller (a run's report, a
/// learning invocation); later ones are counted, not kept.
const KEPT_EVENTS: usize = 10_000;

/// What the monitor saw of one run.
#[derive(Debug, Clone, Default)]
pub struct WatchResult {
    pub stats: Stats,
    /// Syscalls by number, most frequent first (traced runs only).
    pub syscall_counts: Vec<(u32, u64)>,
    /// Syscalls that returned EPERM, by number (traced runs only).
    pub refused_counts: Vec<(u32, u64)>,
    /// Why the kernel killed it, if a budget did.
    pub kill: Option<String>,
    /// Its events, oldest first, when the watch kept them.
    pub events: Vec<Event>,
    /// Events past what the watch keeps.
    pub events_lost: u64,
    /// The first rule decisions against it (kept whether or not `events` are).
    pub denials: Vec<Event>,
    /// Events the kernel's ring had no room for (all sandboxes, since the start).
    pub events_dropped: u64,
    /// Of those, the ones dropped while this run was watched (any sandbox's:
    /// some of this run's may be among them).
    pub dropped_during: u64,
}

/// The most rule decisions one watch keeps.
const KEPT_DENIALS: usize = 64;

/// What the monitor thread and the run share.
pub(crate) struct Shared {
    kill: Mutex<Option<String>>,
    /// Written when the kernel killed the run for a budget.
    /// Only for a run a budget can kill (a pipe per run costs descriptors).
    notify: Option<OwnedFd>,
    keep_events: bool,
    events: Mutex<(Vec<Event>, u64)>,
    denials: Mutex<Vec<Event>>,
}

impl Shared {
    pub(crate) fn killed(&self, reason: String) {
        let mut kill = self.kill.lock().unwrap_or_else(|e| e.into_inner());
        if kill.is_none() {
            *kill = Some(reason);
            if let Some(notify) = &self.notify {
                let _ = alcove_sys::fd::write_some(notify.as_fd(), &[1]);
            }
        }
    }

    pub(crate) fn record(&self, event: &Event) {
        if matches!(event.kind, EventKind::Denied { .. }) {
            let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
            if denials.len() < KEPT_DENIALS {
                denials.push(event.clone());
            }
        }
        if !self.keep_events {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.0.len() < KEPT_EVENTS {
            events.0.push(event.clone());
        } else {
            events.1 += 1;
        }
    }
}

/// One run under the monitor; pass it to the sandbox as its observer.
pub struct Watch {
    service: MonitorService,
    policy: SandboxPolicy,
    subject: Arc<Subject>,
    running: bool,
    shared: Arc<Shared>,
    woken: Option<OwnedFd>,
    cgroup_id: Option<u64>,
    cgroup_cell: Option<Arc<AtomicU64>>,
    result: Option<WatchResult>,
    required: bool,
    /// Registered on the run's own thread (counting only).
    fast: bool,
}

impl MonitorService {
    /// A watch for one run with `policy`, its events tagged with `subject`.
    /// With `keep_events`, the result holds the run's events.
    pub fn watch(
        &self,
        policy: SandboxPolicy,
        subject: Subject,
        keep_events: bool,
    ) -> Result<Watch, MonitorError> {
        let can_kill = policy.syscall_budget.is_some() || policy.cpu_budget.is_some();
        let (woken, notify) = if can_kill {
            let (woken, notify) = alcove_sys::fd::pipe_cloexec().map_err(MonitorError::Thread)?;
            for end in [&woken, &notify] {
                alcove_sys::fd::set_nonblocking(end.as_fd(), true).map_err(MonitorError::Thread)?;
            }
            (Some(woken), Some(notify))
        } else {
            (None, None)
        };
        Ok(Watch {
            service: self.clone(),
            policy,
            subject: Arc::new(subject),
            running: false,
            shared: Arc::new(Shared {
                kill: Mutex::new(None),
                notify,
                keep_events,
                events: Mutex::new((Vec::new(), 0)),
                denials: Mutex::new(Vec::new()),
            }),
            woken,
            cgroup_id: None,
            cgroup_cell: None,
            result: None,
            required: true,
            fast: false,
        })
    }
}

impl Watch {
    /// Sets `cell` to the sandbox's cgroup id while it is watched (0 before
    /// and after), for live readings of its counters.
    pub fn with_cgroup_cell(mut self, cell: Arc<AtomicU64>) -> Self {
        self.cgroup_cell = Some(cell);
        self
    }

    /// Whether a run that cannot be watched must fail (true, the default:
    /// its policy needs the kernel), or may run unwatched (counting only).
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// What the monitor saw, once the run ended.
    pub fn result(&self) -> Option<&WatchResult> {
        self.result.as_ref()
    }

    /// Hands on the events the kernel has written so far (see
    /// [`crate::MonitorService::flush`]).
    pub fn flush(&self) {
        self.service.flush();
    }

    /// The policy the run is watched with.
    pub fn policy(&self) -> &SandboxPolicy {
        &self.policy
    }

    fn can_kill(&self) -> bool {
        self.policy.syscall_budget.is_some() || self.policy.cpu_budget.is_some()
    }

    /// Counting only: registered by two map updates on this thread, with no
    /// message to the owner (see alcove_bpf::FastPath).
    fn watch_here(
        &mut self,
        cgroup_id: u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.service
            .registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                cgroup_id,
                crate::service::Registration {
                    subject: Arc::clone(&self.subject),
                    shared: Arc::clone(&self.shared),
                    ended: None,
                    since_ns: alcove_sys::process::monotonic_ns(),
                    dropped_at_start: 0,
                },
            );
        if let Err(e) = self.service.fast().watch(cgroup_id, self.running) {
            self.service
                .registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&cgroup_id);
            return match self.required {
                true => Err(MonitorError::Watch(e).into()),
                false => Ok(()),
            };
        }
        self.fast = true;
        self.service.count_fast(true);
        self.cgroup_id = Some(cgroup_id);
        if let Some(cell) = &self.cgroup_cell {
            cell.store(cgroup_id, Ordering::SeqCst);
        }
        Ok(())
    }

    fn unwatch(&mut self) {
        self.running = false; // a fallback run of the same watch starts afresh
        let Some(cgroup_id) = self.cgroup_id.take() else {
            return;
        };
        if let Some(cell) = &self.cgroup_cell {
            cell.store(0, Ordering::SeqCst);
        }
        // Waits until the rules are off: the cgroup may be a pool slot that
        // the next run, with other rules, takes as soon as this one returns.
        let mut result = if self.fast {
            self.fast = false;
            self.service.count_fast(false);
            let stats = self.service.fast().unwatch(cgroup_id);
            if let Some(reg) = self
                .service
                .registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&cgroup_id)
            {
                reg.ended = Some(std::time::Instant::now()); // its late events still go out
            }
            WatchResult {
                stats,
                ..WatchResult::default()
            }
        } else {
            self.service
                .ask(|done| Request::Unwatch { cgroup_id, done })
                .unwrap_or_default()
        };
        let (events, lost) =
            std::mem::take(&mut *self.shared.events.lock().unwrap_or_else(|e| e.into_inner()));
        result.events = events;
        result.events_lost = lost;
        result.denials = std::mem::take(
            &mut *self
                .shared
                .denials
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if result.kill.is_none() {
            result.kill = self
                .shared
                .kill
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        self.result = Some(result);
    }
}

impl alcove_sandbox::Observer for Watch {
    fn already_running(&mut self) {
        self.running = true;
    }

    fn counts_exits(&self) -> bool {
        self.cgroup_id.is_some()
    }

    fn before_start(
        &mut self,
        cgroup: Option<(u64, &Path)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some((cgroup_id, dir)) = cgroup else {
            return match self.required {
                true => Err(MonitorError::NoCgroup2.into()),
                false => Ok(()), // counting only: runs unwatched
            };
        };
        if self.policy.is_empty() && !self.shared.keep_events {
            return self.watch_here(cgroup_id);
        }
        let (policy, subject, shared) = (
            self.policy.clone(),
            Arc::clone(&self.subject),
            Arc::clone(&self.shared),
        );
        let running = self.running;
        let asked = self
            .service
            .ask(|done| Request::Watch {
                cgroup_id,
                dir: dir.to_owned(),
                policy,
                running,
                subject,
                shared,
                done,
            })
            .and_then(|answer| answer);
        match asked {
            Ok(()) => {}
            Err(_) if !self.required => return Ok(()), // runs unwatched
            Err(e) => return Err(e.into()),
        }
        self.cgroup_id = Some(cgroup_id);
        if let Some(cell) = &self.cgroup_cell {
            cell.store(cgroup_id, Ordering::SeqCst);
        }
        Ok(())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.woken.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn on_ready(&mut self) -> Option<String> {
        let mut buf = [0u8; 8];
        let woken = self
            .woken
            .as_ref()
            .is_some_and(|w| matches!(alcove_sys::fd::read(w.as_fd(), &mut buf), Ok(n) if n > 0));
        let known = self
            .shared
            .kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if known.is_some() || woken || !self.can_kill() {
            return known;
        }
        // Called once more after the end: the kernel may have killed it for
        // a budget before the thread read the event, so ask.
        let cgroup_id = self.cgroup_id?;
        self.service
            .ask(|done| Request::Killed { cgroup_id, done })
            .ok()
            .flatten()
    }

    fn after_end(&mut self) {
        self.unwatch();
    }
}

impl Drop for Watch {
    /// A run that ended early (an error after it was registered) is still
    /// unregistered, so no rule outlives it on a reused cgroup.
    fn drop(&mut self) {
        self.unwatch();
    }
}
