//! Registering sandboxes that need no program attached (counting only) from
//! any thread: two map updates on the caller's own thread, instead of a
//! message to the thread that owns the loaded programs and its answer (each
//! a wake-up of another thread, which costs more than the updates).

use crate::intf::{bytes_of, SandboxEntry, StatsEntry};
use crate::monitor::sum_stats;
use crate::{BpfError, Stats};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use std::sync::Arc;

/// Handles on the maps a counting-only watch touches; cloning shares them.
/// Valid while the monitor they came from is loaded (the maps live as long
/// as any handle does, but nothing fills them after it is dropped).
#[derive(Clone)]
pub struct FastPath {
    maps: Arc<Maps>,
}

struct Maps {
    sandboxes: MapHandle,
    stats: MapHandle,
    ncpus: usize,
}

impl FastPath {
    pub(crate) fn new(sandboxes: MapHandle, stats: MapHandle) -> Result<Self, BpfError> {
        let ncpus =
            libbpf_rs::num_possible_cpus().map_err(|e| BpfError::load("counting CPUs", e))?;
        Ok(FastPath {
            maps: Arc::new(Maps {
                sandboxes,
                stats,
                ncpus,
            }),
        })
    }

    /// Starts counting for the sandbox `cgroup_id`, from its first exec, or
    /// at once when `running` (an adopted process).
    pub fn watch(&self, cgroup_id: u64, running: bool) -> Result<(), BpfError> {
        let key = cgroup_id.to_ne_bytes();
        let zeroes = vec![bytes_of(&StatsEntry::default()).to_vec(); self.maps.ncpus];
        self.maps
            .stats
            .update_percpu(&key, &zeroes, MapFlags::ANY)
            .map_err(|e| BpfError::map("stats", e))?;
        let entry = SandboxEntry {
            armed: running.into(),
            ..SandboxEntry::default()
        };
        self.maps
            .sandboxes
            .update(&key, bytes_of(&entry), MapFlags::ANY)
            .map_err(|e| BpfError::map("sandboxes", e))
    }

    /// Stops counting for `cgroup_id` and returns what was counted.
    pub fn unwatch(&self, cgroup_id: u64) -> Stats {
        let key = cgroup_id.to_ne_bytes();
        let _ = self.maps.sandboxes.delete(&key);
        let stats = match self.maps.stats.lookup_percpu(&key, MapFlags::ANY) {
            Ok(Some(per_cpu)) => sum_stats(&per_cpu),
            _ => Stats::default(),
        };
        let _ = self.maps.stats.delete(&key);
        stats
    }
}
