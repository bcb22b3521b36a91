//! The thread that owns the loaded programs. libbpf's objects are not
//! `Send`, and loading costs tens of milliseconds, so one thread loads them
//! once and every run asks it, by message, to watch and unwatch its sandbox
//! (microseconds each). The same thread reads the event ring, tags each
//! event with the run it belongs to, wakes a run whose budget the kernel
//! enforced, and hands every event to the service's sink.

use crate::watch::{Shared, WatchResult};
use crate::{Attached, Event, EventKind, MonitorError, SandboxPolicy, Stats};
use alcove_bpf::Monitor;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Who a watched sandbox runs for: what its events are tagged with.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Subject {
    pub function: Option<String>,
    pub version: Option<u32>,
    pub invocation: Option<String>,
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
}

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
        std::thread::Builder::new()
            .name("alcove-monitor".into())
            .spawn(move || match Monitor::load(&caps) {
                Ok(monitor) => {
                    let _ = loaded.send(Ok(()));
                    Owner::new(monitor, sink).serve(&incoming, wake_read);
                }
                Err(e) => {
                    let _ = loaded.send(Err(MonitorError::Load(e)));
                }
            })
            .map_err(MonitorError::Thread)?;
        load_result.recv().map_err(|_| MonitorError::Gone)??;
        Ok(MonitorService {
            inner: Arc::new(Inner {
                requests: std::sync::Mutex::new(requests),
                wake,
                capabilities,
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

    /// What the monitor is doing now.
    pub fn status(&self) -> Result<ServiceStatus, MonitorError> {
        self.ask(|done| Request::Status { done })
    }
}

/// A watched sandbox, as the thread knows it.
struct Registration {
    subject: Arc<Subject>,
    shared: Arc<Shared>,
}

/// The monitor thread's state.
struct Owner {
    monitor: Monitor,
    sink: Option<Sink>,
    watched: HashMap<u64, Registration>,
}

impl Owner {
    fn new(monitor: Monitor, sink: Option<Sink>) -> Self {
        Owner {
            monitor,
            sink,
            watched: HashMap::new(),
        }
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
            let _ = alcove_sys::fd::poll(&mut fds, Some(Duration::from_secs(1)));
            while matches!(alcove_sys::fd::read(wake.as_fd(), &mut buf), Ok(n) if n > 0) {}
            self.dispatch_events();
            loop {
                match incoming.try_recv() {
                    Ok(request) => self.handle(request),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
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
            let Some(reg) = self.watched.get(&event.cgroup_id) else {
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
                    self.watched
                        .insert(cgroup_id, Registration { subject, shared });
                }
                let _ = done.send(result.map_err(MonitorError::Watch));
            }
            Request::Unwatch { cgroup_id, done } => {
                self.dispatch_events(); // what it did up to its end
                let kill = self
                    .monitor
                    .killed(cgroup_id)
                    .map(|(reason, limit)| reason.describe(limit));
                let result = WatchResult {
                    stats: self.monitor.stats(cgroup_id),
                    syscall_counts: self.monitor.syscall_counts(cgroup_id),
                    refused_counts: self.monitor.refused_counts(cgroup_id),
                    events_dropped: self.monitor.dropped(),
                    kill,
                    events: Vec::new(),
                    events_lost: 0,
                    denials: Vec::new(),
                };
                self.monitor.unwatch(cgroup_id);
                self.watched.remove(&cgroup_id);
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
                    .filter(|id| self.watched.contains_key(id))
                    .map(|id| (id, self.monitor.stats(id)))
                    .collect();
                let _ = done.send(stats);
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
