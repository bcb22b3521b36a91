//! `alcove run --trace` and the in-kernel budgets: a watch from
//! alcove-monitor for the one run, and the `trace` section it adds to the report.

use alcove_monitor::{MonitorError, MonitorService, SandboxPolicy, Subject, Watch, WatchResult};
use std::io::Write;

/// How many syscalls the report lists by name.
const TOP: usize = 20;

/// A monitor loaded for this one run, and the run's watch. With `live`,
/// every event is printed on stderr as it happens.
pub fn watch(policy: SandboxPolicy, live: bool) -> Result<Watch, MonitorError> {
    let sink: Option<alcove_monitor::Sink> = live.then(|| {
        Box::new(|e: &alcove_monitor::MonitorEvent| {
            let _ = writeln!(
                std::io::stderr(),
                "alcove: event: {}",
                serde_json::to_string(&e.event).unwrap_or_default()
            );
        }) as alcove_monitor::Sink
    });
    let service = MonitorService::start(policy.clone(), sink)?;
    service.watch(policy, Subject::default(), true)
}

/// Syscalls that returned EPERM (refused by seccomp, or by the kernel).
pub fn refused(seen: &WatchResult) -> Vec<u32> {
    seen.refused_counts.iter().map(|(nr, _)| *nr).collect()
}

/// The report's `trace` section.
pub fn report(seen: &WatchResult, traced: bool) -> serde_json::Value {
    let counts = &seen.syscall_counts;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let top: Vec<serde_json::Value> = counts
        .iter()
        .take(TOP)
        .map(|&(nr, count)| {
            let name = alcove_sandbox::syscall_name(nr)
                .map_or_else(|| format!("syscall_{nr}"), str::to_owned);
            serde_json::json!({"name": name, "nr": nr, "count": count})
        })
        .collect();
    let mut trace = serde_json::json!({
        "events": seen.events,
        "events_dropped": seen.events_dropped + seen.events_lost,
        "execs": seen.stats.execs,
        "context_switches": seen.stats.ctx_switches,
        "page_faults": seen.stats.page_faults,
        "bytes_read": seen.stats.bytes_read,
        "bytes_written": seen.stats.bytes_written,
    });
    if traced {
        trace["syscalls"] =
            serde_json::json!({"total": total, "distinct": counts.len(), "top": top});
    }
    trace
}

/// The report's `trace` section in the gVisor tier: the program's own
/// syscalls, as the Sentry logged them (no eBPF events or counters there:
/// those would be the Sentry's).
pub fn gvisor_report(seen: &alcove_gvisor::GuestSyscalls) -> serde_json::Value {
    let total: u64 = seen.counts.iter().map(|(_, n)| n).sum();
    let top: Vec<serde_json::Value> = seen
        .counts
        .iter()
        .take(TOP)
        .map(|(name, count)| {
            let nr = alcove_sandbox::syscall_number(name);
            serde_json::json!({"name": name, "nr": nr, "count": count})
        })
        .collect();
    serde_json::json!({
        "source": "gvisor-strace",
        "syscalls": {"total": total, "distinct": seen.counts.len(), "top": top},
        "unparsed_lines": seen.unparsed,
    })
}
