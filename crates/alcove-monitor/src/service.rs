//! The thread that owns the loaded programs. libbpf's objects are not
//! `Send`, and loading costs tens of milliseconds, so one thread loads them
//! once and every run asks it, by message, to watch and unwatch its sandbox
//! (microseconds each). The same thread reads the event ring, tags each
//! event with the run it belongs to, wakes a run whose budget the kernel
//! enforced, and hands every event to the service's sink.

use crate::watch::{Shared, WatchResult};
use crate::{Attached, Event, EventKind, MonitorError, SandboxPolicy, Stats};
use alcove_bpf::{FastPath, Monitor};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the owner reads the ring when nothing wakes it (routine events
/// wake it only while someone follows them live), and detaches programs no
/// sandbox needs any more.
const TURN: Duration = Duration::from_millis(100);

/// How long the events of a sandbox that was unwatched on its own thread
/// are still delivered (they may wait in the ring until the owner's next turn).
const LATE_EVENTS: Duration = Duration::from_secs(2);

/// Who a watched sandbox runs for: what its events are tagged with.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Subject {
    pub function: Option<String>,
    pub version: Option<u32>,
    pub invocation: Option<String>,
    /// An agent sandbox (the daemon's `/v1/sandboxes`), for its events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One event of a watched sandbox, with who it ran for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MonitorEvent {
    #[serde(flatten)]
    pub subject: Arc<Subject>,
    #[serde(flatten)]
    pub event: Event,
}

/// Where every event goes, called on the monitor thread: it must not block.
pub type Sink = Box<dyn Fn(&MonitorEvent) + Send>;

/// What the monitor is doing now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStatus {
    /// The costly programs attached now (they are attached only while a
    /// watched sandbox needs them).
    pub attached: Attached,
    /// Sandboxes watched now.
    pub watched: usize,
    /// Events the kernel's ring had no room for, since the start.
    pub events_dropped: u64,
}

pub(crate) enum Request {
    Watch {
        cgroup_id: u64,
        dir: PathBuf,
        policy: SandboxPolicy,
        running: bool,
        subject: Arc<Subject>,
        shared: Arc<Shared>,
        done: mpsc::SyncSender<Result<(), MonitorError>>,
    },
    Unwatch {
        cgroup_id: u64,
        done: mpsc::SyncSender<WatchResult>,
    },
    Killed {
        cgroup_id: u64,
        done: mpsc::SyncSender<Option<String>>,
    },
    Live {
        cgroup_ids: Vec<u64>,
        done: mpsc::SyncSender<Vec<(u64, Stats)>>,
    },
    Status {
        done: mpsc::SyncSender<ServiceStatus>,
    },
    SetLive(bool),
    /// Hands on every event the ring holds now; answers when done.
    Flush {
        done: mpsc::SyncSender<()>,
    },
    AllowNet {
        cgroup_id: u64,
        net: alcove_bpf::IpNet,
        done: mpsc::SyncSender<Result<bool, MonitorError>>,
    },
}

/// A watched sandbox, as the owner knows it: whose it is, and where its
/// run waits. Shared with the runs that register on their own thread.
pub(crate) struct Registration {
    pub(crate) subject: Arc<Subject>,
    pub(crate) shared: Arc<Shared>,
    /// When it was unwatched, for one registered on its run's own thread.
    pub(crate) ended: Option<Instant>,
    /// When it was registered (CLOCK_MONOTONIC, as events are stamped): an
    /// older event of the same cgroup id (a pooled cgroup) was another run's.
    pub(crate) since_ns: u64,
    /// The ring's drop count when it was registered (thread path only).
    pub(crate) dropped_at_start: u64,
}

pub(crate) type Registry = Arc<Mutex<HashMap<u64, Registration>>>;

/// The monitor thread, shared by cloning. It stops, detaching and unloading
/// everything, when the last clone is dropped.
#[derive(Clone)]
pub struct MonitorService {
    inner: Arc<Inner>,
}

struct Inner {
    requests: std::sync::Mutex<mpsc::Sender<Request>>,
    wake: OwnedFd,
    capabilities: SandboxPolicy,
    fast: FastPath,
    registry: Registry,
    /// Sandboxes watched on their own thread now.
    fast_watched: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sender goes with this; the byte makes the thread notice.
        let _ = alcove_sys::fd::write_some(self.wake.as_fd(), &[0]);
    }
}

impl MonitorService {
    /// Loads the programs that runs with `capabilities` could need (see
    /// [`SandboxPolicy::everything`]) on a thread of their own, and attaches
    /// the always-on ones (exec, exit, OOM: once per process, not per syscall).
    pub fn start(capabilities: SandboxPolicy, sink: Option<Sink>) -> Result<Self, MonitorError> {
        let (requests, incoming) = mpsc::channel();
        let (wake_read, wake) = alcove_sys::fd::pipe_cloexec().map_err(MonitorError::Thread)?;
        alcove_sys::fd::set_nonblocking(wake_read.as_fd(), true).map_err(MonitorError::Thread)?;
        let (loaded, load_result) = mpsc::sync_channel(1);
        let caps = capabilities.clone();
        let registry: Registry = Arc::default();
        let owner_registry = Arc::clone(&registry);
        std::thread::Builder::new()
            .name("alcove-monitor".into())
            .spawn(move || {
                let started = Monitor::load(&caps)
                    .and_then(|m| Ok((m.fast_path()?, m)))
                    .map_err(MonitorError::Load);
                match started {
                    Ok((fast, monitor)) => {
                        let _ = loaded.send(Ok(fast));
                        let owner = Owner {
                            monitor,
                            sink,
                            registry: owner_registry,
                        };
                        owner.serve(&incoming, wake_read);
                    }
                    Err(e) => {
                        let _ = loaded.send(Err(e));
                    }
                }
            })
            .map_err(MonitorError::Thread)?;
        let fast = load_result.recv().map_err(|_| MonitorError::Gone)??;
        Ok(MonitorService {
            inner: Arc::new(Inner {
                requests: std::sync::Mutex::new(requests),
                wake,
                capabilities,
                fast,
                registry,
                fast_watched: AtomicUsize::new(0),
            }),
        })
    }

    /// What the service was loaded to serve.
    pub fn capabilities(&self) -> &SandboxPolicy {
        &self.inner.capabilities
    }

    pub(crate) fn send(&self, request: Request) -> Result<(), MonitorError> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(request)
            .map_err(|_| MonitorError::Gone)?;
        alcove_sys::fd::write_some(self.inner.wake.as_fd(), &[0])
            .map(drop)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(()), // already woken
                _ => Err(MonitorError::Gone),
            })
    }

    /// Asks the thread and waits for its answer.
    pub(crate) fn ask<T>(
        &self,
        request: impl FnOnce(mpsc::SyncSender<T>) -> Request,
    ) -> Result<T, MonitorError> {
        let (done, answer) = mpsc::sync_channel(1);
        self.send(request(done))?;
        answer.recv().map_err(|_| MonitorError::Gone)
    }

    /// The counters so far of the watched sandboxes `cgroup_ids`.
    pub fn live(&self, cgroup_ids: Vec<u64>) -> Vec<(u64, Stats)> {
        self.ask(|done| Request::Live { cgroup_ids, done })
            .unwrap_or_default()
    }

    /// Lets the watched sandbox `cgroup_id`, whose network is restricted,
    /// reach `net` too, unless one of its rules refuses it (false then).
    pub fn allow_net(&self, cgroup_id: u64, net: alcove_bpf::IpNet) -> Result<bool, MonitorError> {
        self.ask(|done| Request::AllowNet {
            cgroup_id,
            net,
            done,
        })?
    }

    /// What the monitor is doing now.
    pub fn status(&self) -> Result<ServiceStatus, MonitorError> {
        let mut status = self.ask(|done| Request::Status { done })?;
        status.watched += self.inner.fast_watched.load(Ordering::SeqCst);
        Ok(status)
    }

    /// Whether routine events (exec, exit) wake the owner at once, for
    /// someone following them live; otherwise they are read every 100 ms.
    pub fn set_live(&self, on: bool) {
        let _ = self.send(Request::SetLive(on));
    }

    /// Returns once every event the kernel wrote before the call has gone to
    /// its run and to the sink: what a caller then says (a sandbox's end)
    /// comes after them on the stream.
    pub fn flush(&self) {
        let _ = self.ask(|done| Request::Flush { done });
    }

    pub(crate) fn fast(&self) -> &FastPath {
        &self.inner.fast
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn count_fast(&self, watched: bool) {
        if watched {
            self.inner.fast_watched.fetch_add(1, Ordering::SeqCst);
        } else {
            self.inner.fast_watched.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The monitor thread's state.
struct Owner {
    monitor: Monitor,
    sink: Option<Sink>,
    registry: Registry,
}

impl Owner {
    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Registration>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(mut self, incoming: &mpsc::Receiver<Request>, wake: OwnedFd) {
        let mut buf = [0u8; 64];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.monitor.event_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let _ = alcove_sys::fd::poll(&mut fds, Some(TURN));
            while matches!(alcove_sys::fd::read(wake.as_fd(), &mut buf), Ok(n) if n > 0) {}
            self.dispatch_events();
            loop {
                match incoming.try_recv() {
                    Ok(request) => self.handle(request),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.monitor.tick();
            self.registry()
                .retain(|_, r| r.ended.is_none_or(|t| t.elapsed() < LATE_EVENTS));
        }
    }

    /// Reads the ring: each event goes to its run (a budget kill wakes it)
    /// and to the sink.
    fn dispatch_events(&mut self) {
        for mut event in self.monitor.take_events() {
            // A refused syscall by name, as people read it.
            if let EventKind::Denied {
                what: crate::Denial::Syscall,
                detail,
            } = &mut event.kind
            {
                if let Some(name) = detail
                    .parse::<u32>()
                    .ok()
                    .and_then(alcove_sandbox::syscall_name)
                {
                    *detail = name.to_owned();
                }
            }
            let registry = self.registry();
            let Some(reg) = registry
                .get(&event.cgroup_id)
                .filter(|r| event.ts_ns >= r.since_ns)
            else {
                continue; // a sandbox no longer (or not yet) watched
            };
            if let EventKind::BudgetKill { reason, limit } = &event.kind {
                reg.shared.killed(reason.describe(*limit));
            }
            reg.shared.record(&event);
            if let Some(sink) = &self.sink {
                sink(&MonitorEvent {
                    subject: Arc::clone(&reg.subject),
                    event,
                });
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Watch {
                cgroup_id,
                dir,
                policy,
                running,
                subject,
                shared,
                done,
            } => {
                let result = self.monitor.watch(cgroup_id, &dir, &policy, running);
                if result.is_err() {
                    self.monitor.unwatch(cgroup_id);
                } else {
                    self.registry().insert(
                        cgroup_id,
                        Registration {
                            subject,
                            shared,
                            ended: None,
                            since_ns: alcove_sys::process::monotonic_ns(),
                            dropped_at_start: self.monitor.dropped(),
                        },
                    );
                }
                let _ = done.send(result.map_err(MonitorError::Watch));
            }
            Request::Unwatch { cgroup_id, done } => {
                self.dispatch_events(); // what it did up to its end
                let kill = self
                    .monitor
                    .killed(cgroup_id)
                    .map(|(reason, limit)| reason.describe(limit));
                let dropped = self.monitor.dropped();
                let dropped_at_start = self
                    .registry()
                    .get(&cgroup_id)
                    .map_or(dropped, |r| r.dropped_at_start);
                let result = WatchResult {
                    stats: self.monitor.stats(cgroup_id),
                    syscall_counts: self.monitor.syscall_counts(cgroup_id),
                    refused_counts: self.monitor.refused_counts(cgroup_id),
                    events_dropped: dropped,
                    dropped_during: dropped.saturating_sub(dropped_at_start),
                    kill,
                    events: Vec::new(),
                    events_lost: 0,
                    denials: Vec::new(),
                };
                self.monitor.unwatch(cgroup_id);
                self.registry().remove(&cgroup_id);
                let _ = done.send(result);
            }
            Request::Killed { cgroup_id, done } => {
                self.dispatch_events();
                let kill = self
                    .monitor
                    .killed(cgroup_id)
                    .map(|(reason, limit)| reason.describe(limit));
                let _ = done.send(kill);
            }
            Request::Live { cgroup_ids, done } => {
                let stats = cgroup_ids
                    .into_iter()
                    .filter(|id| self.registry().contains_key(id))
                    .map(|id| (id, self.monitor.stats(id)))
                    .collect();
                let _ = done.send(stats);
            }
            Request::SetLive(on) => {
                let _ = self.monitor.set_live(on);
            }
            Request::Flush { done } => {
                self.dispatch_events();
                let _ = done.send(());
            }
            Request::AllowNet {
                cgroup_id,
                net,
                done,
            } => {
                let allowed = match self.registry().contains_key(&cgroup_id) {
                    true => self
                        .monitor
                        .allow_net(cgroup_id, &net)
                        .map_err(MonitorError::Watch),
                    false => Ok(false),
                };
                let _ = done.send(allowed);
            }
            Request::Status { done } => {
                let _ = done.send(ServiceStatus {
                    attached: self.monitor.attached(),
                    watched: self.monitor.watched(),
                    events_dropped: self.monitor.dropped(),
                });
            }
        }
    }
}
