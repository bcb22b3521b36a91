//! `alcove run --trace` and the in-kernel budgets: alcove-bpf's monitor as a
//! sandbox observer, and the `trace` section it adds to the report.

use alcove_bpf::{Event, EventKind, KillReason, Monitor, SandboxPolicy, Stats};
use alcove_sandbox::Observer;
use std::io::Write;
use std::os::fd::RawFd;

/// How many syscalls the report lists by name.
const TOP: usize = 20;

pub struct BpfObserver {
    monitor: Monitor,
    policy: SandboxPolicy,
    live: bool,
    cgroup_id: Option<u64>,
    events: Vec<Event>,
    kill: Option<String>,
    stats: Stats,
    counts: Vec<(u32, u64)>,
    refused: Vec<(u32, u64)>,
    dropped: u64,
}

impl BpfObserver {
    pub fn new(policy: SandboxPolicy, live: bool) -> Result<Self, alcove_bpf::BpfError> {
        Ok(BpfObserver {
            monitor: Monitor::load(&policy)?,
            policy,
            live,
            cgroup_id: None,
            events: Vec::new(),
            kill: None,
            stats: Stats::default(),
            counts: Vec::new(),
            refused: Vec::new(),
            dropped: 0,
        })
    }

    fn drain(&mut self) {
        let Some(id) = self.cgroup_id else { return };
        for event in self.monitor.take_events() {
            if event.cgroup_id != id {
                continue;
            }
            if self.live {
                let _ = writeln!(
                    std::io::stderr(),
                    "alcove: event: {}",
                    serde_json::to_string(&event).unwrap_or_default()
                );
            }
            if let (EventKind::BudgetKill { reason, limit }, None) = (&event.kind, &self.kill) {
                self.kill = Some(describe(*reason, *limit));
            }
            self.events.push(event);
        }
    }

    /// The report's `trace` section.
    pub fn report(&self) -> serde_json::Value {
        let total: u64 = self.counts.iter().map(|(_, n)| n).sum();
        let top: Vec<serde_json::Value> = self
            .counts
            .iter()
            .take(TOP)
            .map(|&(nr, count)| {
                let name = alcove_sandbox::syscall_name(nr)
                    .map_or_else(|| format!("syscall_{nr}"), str::to_owned);
                serde_json::json!({"name": name, "nr": nr, "count": count})
            })
            .collect();
        let mut trace = serde_json::json!({
            "events": self.events,
            "events_dropped": self.dropped,
            "execs": self.stats.execs,
        });
        if self.policy.trace {
            let extra = serde_json::json!({
                "syscalls": {"total": total, "distinct": self.counts.len(), "top": top},
                "context_switches": self.stats.ctx_switches,
                "page_faults": self.stats.page_faults,
                "bytes_read": self.stats.bytes_read,
                "bytes_written": self.stats.bytes_written,
            });
            if let (Some(t), Some(e)) = (trace.as_object_mut(), extra.as_object()) {
                t.extend(e.clone());
            }
        }
        trace
    }

    /// Every syscall number the sandbox used.
    pub fn syscalls_used(&self) -> Vec<u32> {
        self.counts.iter().map(|(nr, _)| *nr).collect()
    }

    /// Syscalls that returned EPERM (refused by seccomp, or by the kernel).
    pub fn refused_syscalls(&self) -> Vec<u32> {
        self.refused.iter().map(|(nr, _)| *nr).collect()
    }

    /// Every event of the sandbox, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The events where a rule refused something.
    pub fn denials(&self) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Denied { .. }))
            .collect()
    }
}

fn describe(reason: KillReason, limit: u64) -> String {
    match reason {
        KillReason::Syscalls => format!("syscall budget of {limit} exceeded"),
        KillReason::CpuTime => format!(
            "CPU budget of {:?} exceeded",
            std::time::Duration::from_nanos(limit)
        ),
        KillReason::WallTime => "wall-clock budget exceeded".to_owned(),
    }
}

impl Observer for BpfObserver {
    fn before_start(
        &mut self,
        cgroup: Option<(u64, &std::path::Path)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (id, dir) = cgroup.ok_or(
            "eBPF monitoring identifies sandboxes by their cgroup2 id, and no cgroup2 tree is mounted \
             (mount one, for example at /sys/fs/cgroup/unified)",
        )?;
        self.cgroup_id = Some(id);
        self.monitor.watch(id, dir, &self.policy)?;
        Ok(())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.monitor.event_fd())
    }

    fn on_ready(&mut self) -> Option<String> {
        self.drain();
        self.kill.clone()
    }

    fn after_end(&mut self) {
        self.drain();
        if let Some(id) = self.cgroup_id {
            self.stats = self.monitor.stats(id);
            self.counts = self.monitor.syscall_counts(id);
            self.refused = self.monitor.refused_counts(id);
            self.dropped = self.monitor.dropped();
            self.monitor.unwatch(id);
        }
    }
}
