//! A running sandbox's usage so far, for a caller that wants to show it
//! while the run goes on (the daemon's `fn ps`). The run fills the watch
//! once its process starts and empties it before its cgroup is released, so
//! a reader never sees a later run's counters in a reused cgroup.

use crate::pool::Baseline;
use alcove_cgroup::{SandboxCgroup, UsageProbe};
use std::sync::Mutex;

/// Hand one to [`RunOptions::watch`](crate::RunOptions) and read it from
/// any thread while the sandbox runs.
#[derive(Debug, Default)]
pub struct UsageWatch {
    running: Mutex<Option<(UsageProbe, Baseline)>>,
    /// The sandbox's first process, in alcove's pid namespace, while it runs.
    pid: Mutex<Option<libc::pid_t>>,
}

/// What a running sandbox has used so far. Memory is what its cgroup is
/// charged, which is what its limit holds it to: in a reused cgroup, that
/// includes page cache an earlier run left (the finished run's outcome
/// reports its peak net of it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageSoFar {
    /// Memory charged to its cgroup now, in bytes.
    pub memory_bytes: Option<u64>,
    /// The peak of that charge during this run, where the kernel restarted
    /// the peak for it.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time (user and system), in milliseconds.
    pub cpu_ms: Option<f64>,
}

impl UsageWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The usage so far, or `None` when no sandbox runs under this watch.
    pub fn usage(&self) -> Option<UsageSoFar> {
        // Held while reading, so the run cannot end and hand its cgroup to
        // another run in between.
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (probe, base) = running.as_ref()?;
        let live = probe.read();
        Some(UsageSoFar {
            memory_bytes: live.memory_bytes,
            memory_peak_bytes: live.memory_peak_bytes.filter(|_| base.memory_exact),
            cpu_ms: live.cpu_us.map(|(user, sys)| {
                let used = (user + sys).saturating_sub(base.cpu_us.0 + base.cpu_us.1);
                used as f64 / 1e3
            }),
        })
    }

    /// The pid of the sandbox's first process (the program, without `init`),
    /// from its start until its run ends.
    pub fn pid(&self) -> Option<libc::pid_t> {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_pid(&self, pid: Option<libc::pid_t>) {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    }

    /// Watches a run this crate did not start (the gVisor tier's): `cgroup`,
    /// new and its own, holding `pid` as its first process, until the
    /// returned guard is dropped.
    pub fn watch_run(&self, cgroup: &SandboxCgroup, pid: libc::pid_t) -> Watching<'_> {
        let fresh = Baseline {
            memory_exact: true,
            pids_exact: true,
            ..Baseline::default()
        };
        let watching = self.watch(cgroup, fresh);
        self.set_pid(Some(pid));
        watching
    }

    /// Watches `cgroup` until the returned guard is dropped.
    pub(crate) fn watch(&self, cgroup: &SandboxCgroup, baseline: Baseline) -> Watching<'_> {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some((cgroup.probe(), baseline));
        Watching(self)
    }
}

/// Empties the watch when dropped, also when the run fails.
pub struct Watching<'a>(&'a UsageWatch);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.set_pid(None);
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
