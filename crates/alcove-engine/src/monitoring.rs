//! The daemon's eBPF monitor: loaded once at start (`--monitor counters`,
//! the default) and shared by every invocation, cold or warm; each
//! invocation's sandbox is registered by cgroup id before its first
//! instruction and unregistered at its end. Its events, tagged with the
//! function, version and invocation, go to the event stream; its counters
//! go to the record and the per-function metrics.
//!
//! With `--monitor off` nothing is loaded at start; an invocation whose
//! guard needs the kernel (a budget, a rule, learning) loads it then.

use crate::engine::Engine;
use crate::model::{InvocationRecord, VersionInfo};
use crate::EngineError;
use alcove_monitor::{EventKind, MonitorService, SandboxPolicy, Subject, Watch, WatchResult};
use serde::Serialize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// What the daemon watches every invocation with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MonitorMode {
    /// Only invocations whose guard needs the kernel.
    Off,
    /// Every invocation: exec, exit and OOM events and exit-time counters
    /// (no per-syscall program unless a guard needs one).
    #[default]
    Counters,
}

/// Events kept for a slow reader of the stream before it misses some.
pub const EVENT_BACKLOG: usize = 4096;

/// The most refused syscalls and rule denials one record lists.
const DENIALS_KEPT: usize = 16;

/// One event on the engine's stream, already in its JSON form.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    /// The function it belongs to (for filtering).
    pub function: Option<Arc<str>>,
    pub json: Arc<str>,
}

/// What the kernel saw of one invocation, kept in its record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KernelRecord {
    /// Syscalls made (only where a per-syscall program watched it: a syscall
    /// budget or learning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<u64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub context_switches: u64,
    pub page_faults: u64,
    pub execs: u64,
    /// Syscalls its policy refused.
    pub refused_syscalls: u64,
    /// Rule decisions against it (refused syscalls named, devices, addresses), the first few.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<DenialRecord>,
    /// Why the kernel killed it, when a budget did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_kill: Option<String>,
}

/// One rule decision.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DenialRecord {
    /// `syscall`, `device`, `connect` or `bind`.
    pub what: String,
    /// The syscall's name, the device, or the address.
    pub detail: String,
}

/// The engine's side of the monitor.
pub(crate) struct EngineMonitor {
    mode: MonitorMode,
    service: Mutex<Option<MonitorService>>,
    /// Why loading failed, once it did (said again instead of retrying each time).
    failed: Mutex<Option<String>>,
    pub(crate) events: tokio::sync::broadcast::Sender<EngineEvent>,
}

impl EngineMonitor {
    pub(crate) fn new(mode: MonitorMode) -> Self {
        let (events, _) = tokio::sync::broadcast::channel(EVENT_BACKLOG);
        EngineMonitor {
            mode,
            service: Mutex::new(None),
            failed: Mutex::new(None),
            events,
        }
    }

    /// The loaded service, loading it now if it was not.
    fn service(&self) -> Result<MonitorService, String> {
        let mut service = self.service.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = service.as_ref() {
            return Ok(s.clone());
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = failed.as_ref() {
            return Err(why.clone());
        }
        let sink = self.sink();
        // Everything first; on a kernel that refuses the cgroup rule programs,
        // the rest still counts and budgets (a rule then fails its own runs).
        let without_rules = SandboxPolicy {
            devices: None,
            net_allow: None,
            ..SandboxPolicy::everything()
        };
        let started = MonitorService::start(SandboxPolicy::everything(), Some(sink)).or_else(|e| {
            tracing::warn!(
                "eBPF monitor: cannot load the device and network rule programs ({}); \
                 loading the rest",
                alcove_sandbox::error_chain(&e)
            );
            MonitorService::start(without_rules, Some(self.sink()))
        });
        match started {
            Ok(s) => {
                s.set_live(self.events.receiver_count() > 0);
                *service = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                let why = alcove_sandbox::error_chain(&e);
                *failed = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Where the monitor's events go: the engine's stream, tagged with the
    /// time, serialised only while someone listens.
    fn sink(&self) -> alcove_monitor::Sink {
        let sender = self.events.clone();
        Box::new(move |e| {
            if sender.receiver_count() == 0 {
                return;
            }
            let mut json = serde_json::to_value(e).unwrap_or_default();
            json["time"] = crate::store::now().into();
            let function = e.subject.function.as_deref().map(Arc::from);
            let _ = sender.send(EngineEvent {
                function,
                json: json.to_string().into(),
            });
        })
    }

    /// Loads the programs at start (counters mode); a failure is logged and
    /// invocations run unwatched unless their guard needs the kernel.
    pub(crate) fn start(&self) {
        if self.mode == MonitorMode::Counters {
            if let Err(why) = self.service() {
                tracing::warn!("eBPF monitoring is off: {why}");
            }
        }
    }

    /// The service, if it is loaded (never loading it).
    fn loaded(&self) -> Option<MonitorService> {
        self.service
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What `/metrics` and `alcove doctor` say about the monitor.
    pub(crate) fn status(&self) -> Option<alcove_monitor::ServiceStatus> {
        self.loaded()?.status().ok()
    }

    /// Live counters of watched sandboxes by cgroup id.
    pub(crate) fn live(&self, cgroup_ids: Vec<u64>) -> Vec<(u64, alcove_monitor::Stats)> {
        match self.loaded() {
            Some(s) if !cgroup_ids.is_empty() => s.live(cgroup_ids),
            _ => Vec::new(),
        }
    }

    /// Sends an event the engine itself makes (an invocation's start and end).
    pub(crate) fn emit(&self, function: &str, json: serde_json::Value) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let mut json = json;
        json["function"] = function.into();
        json["time"] = crate::store::now().into();
        let _ = self.events.send(EngineEvent {
            function: Some(Arc::from(function)),
            json: json.to_string().into(),
        });
    }
}

impl Engine {
    /// `/metrics` in Prometheus text format, with the monitor's state read now.
    pub fn metrics_text(&self) -> String {
        self.metrics.set_monitor(self.monitor.status().as_ref());
        self.metrics.encode()
    }

    /// The monitor's state: `None` when it is not loaded (`--monitor off`,
    /// or it failed to load: `monitor_error` says why).
    pub fn monitor_status(&self) -> Option<alcove_monitor::ServiceStatus> {
        self.monitor.status()
    }

    /// Why the monitor could not load, if it could not.
    pub fn monitor_error(&self) -> Option<String> {
        self.monitor
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A receiver of the event stream from now on. While any is open,
    /// routine events wake the monitor at once (see [`Self::events_closed`]).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<EngineEvent> {
        let receiver = self.monitor.events.subscribe();
        if let Some(service) = self.monitor.loaded() {
            service.set_live(true);
        }
        receiver
    }

    /// A receiver was dropped: when none is left, routine events wait for
    /// the monitor's next turn again (no wake-up per exec and exit).
    pub fn events_closed(&self) {
        if self.monitor.events.receiver_count() == 0 {
            if let Some(service) = self.monitor.loaded() {
                service.set_live(false);
            }
        }
    }

    /// The watch one invocation's sandbox runs under, if any: always in
    /// counters mode, else only when `policy` needs the kernel.
    pub(crate) fn watch_for(
        &self,
        v: &VersionInfo,
        record: &InvocationRecord,
        policy: SandboxPolicy,
        cgroup_cell: Arc<AtomicU64>,
    ) -> Result<Option<Watch>, EngineError> {
        let needed = !policy.is_empty();
        if !needed && self.monitor.mode == MonitorMode::Off {
            return Ok(None);
        }
        let service = match self.monitor.service() {
            Ok(s) => s,
            Err(_) if !needed => return Ok(None),
            Err(why) => {
                return Err(EngineError::Invalid(format!(
                    "this function's guard (budgets, rules or learning) needs alcove's eBPF \
                     monitor, which cannot load here: {why}"
                )))
            }
        };
        let subject = Subject {
            function: Some(v.function.clone()),
            version: Some(v.version),
            invocation: Some(record.id.clone()),
            sandbox: None,
        };
        let keep_events = policy.learn;
        let watch = match service.watch(policy, subject, keep_events) {
            Ok(w) => w,
            Err(_) if !needed => return Ok(None),
            Err(e) => return Err(EngineError::Invalid(alcove_sandbox::error_chain(&e))),
        };
        // Counting alone never fails an invocation: it runs unwatched instead.
        Ok(Some(watch.with_cgroup_cell(cgroup_cell).required(needed)))
    }

    /// The watch an agent sandbox runs under: its exec, exit and OOM events
    /// tagged with its id, and its counters (none in `--monitor off`, or
    /// where the monitor cannot load: the sandbox then runs unwatched).
    pub(crate) fn watch_sandbox(&self, id: &str) -> Option<Watch> {
        if self.monitor.mode == MonitorMode::Off {
            return None;
        }
        let service = self.monitor.service().ok()?;
        let subject = Subject {
            sandbox: Some(id.to_owned()),
            ..Subject::default()
        };
        service.watch(SandboxPolicy::default(), subject, false).ok()
    }

    /// The watch an outbound agent sandbox must run under (its network
    /// rules live in the kernel), and the service that adds to them; an
    /// error that says why when the monitor cannot load here.
    pub(crate) fn guard_sandbox(
        &self,
        id: &str,
        policy: SandboxPolicy,
        cgroup_cell: Arc<AtomicU64>,
    ) -> Result<(Watch, MonitorService), String> {
        let service = self.monitor.service().map_err(|why| {
            format!("net: outbound needs alcove's eBPF monitor for its rules, which cannot load here: {why}")
        })?;
        let subject = Subject {
            sandbox: Some(id.to_owned()),
            ..Subject::default()
        };
        let watch = service
            .watch(policy, subject, false)
            .map_err(|e| alcove_sandbox::error_chain(&e))?;
        Ok((watch.with_cgroup_cell(cgroup_cell).required(true), service))
    }

    /// An event the engine makes about an agent sandbox (created, ended).
    pub(crate) fn emit_sandbox(&self, id: &str, json: serde_json::Value) {
        if self.monitor.events.receiver_count() == 0 {
            return;
        }
        let mut json = json;
        json["sandbox"] = id.into();
        json["time"] = crate::store::now().into();
        let _ = self.monitor.events.send(EngineEvent {
            function: None,
            json: json.to_string().into(),
        });
    }

    /// Puts what the kernel saw into the record and the metrics, and feeds
    /// a learning function's profile.
    pub(crate) fn after_watch(
        &self,
        v: &VersionInfo,
        record: &mut InvocationRecord,
        watch: &Watch,
    ) {
        let Some(seen) = watch.result() else { return };
        let kernel = kernel_record(seen, watch.policy());
        self.metrics.count_kernel(&v.function, &kernel);
        for d in &kernel.denials {
            tracing::info!(
                function = %v.function,
                invocation = %record.id,
                what = %d.what,
                detail = %d.detail,
                "rule refused"
            );
        }
        if let Some(kill) = &kernel.policy_kill {
            tracing::info!(function = %v.function, invocation = %record.id, reason = %kill, "killed by policy");
        }
        if watch.policy().learn {
            self.learn_from(v, seen);
        }
        record.kernel = Some(kernel);
    }
}

fn kernel_record(seen: &WatchResult, policy: &SandboxPolicy) -> KernelRecord {
    let s = &seen.stats;
    let denials = seen
        .denials
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Denied { what, detail } => Some(DenialRecord {
                what: serde_json::to_value(what)
                    .ok()
                    .and_then(|w| w.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                detail: detail.clone(), // a refused syscall comes named by the monitor
            }),
            _ => None,
        })
        .take(DENIALS_KEPT)
        .collect();
    let per_syscall = policy.trace || policy.syscall_budget.is_some();
    KernelRecord {
        syscalls: per_syscall.then_some(s.syscalls),
        bytes_read: s.bytes_read,
        bytes_written: s.bytes_written,
        context_switches: s.ctx_switches,
        page_faults: s.page_faults,
        execs: s.execs,
        refused_syscalls: s.denied_syscalls,
        denials,
        policy_kill: seen.kill.clone(),
    }
}
