//! What the engine offers to control what runs: the invocations in flight
//! and their usage, cancelling one, and removing a function whose
//! invocations may still be in flight (the registry is in `running.rs`).

use crate::admission::Slots;
use crate::engine::{blocking, Engine};
use crate::model::InvocationRecord;
use crate::running::{Entry, RunningList};
use crate::EngineError;
use std::sync::Arc;
use std::time::Duration;

/// How long a cancel waits for its invocation to end before it answers.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// How long a forced removal waits for the function's invocations to end.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

impl Engine {
    /// The invocations in flight (of `function`, if given), oldest first, at
    /// most `limit` (itself at most [`MAX_LISTED`](crate::MAX_LISTED)), with their sandboxes'
    /// usage so far. Reads cgroup files: call it from a blocking thread.
    pub fn running_invocations(&self, function: Option<&str>, limit: usize) -> RunningList {
        let mut list = self.running.list(function, limit);
        let ids: Vec<u64> = list
            .invocations
            .iter()
            .map(|i| i.cgroup_id)
            .filter(|id| *id != 0)
            .collect();
        let live: std::collections::HashMap<u64, alcove_monitor::Stats> =
            self.monitor.live(ids).into_iter().collect();
        for i in &mut list.invocations {
            i.node = self.config.node.clone();
            if let Some(stats) = live.get(&i.cgroup_id) {
                i.syscalls = (stats.syscalls > 0).then_some(stats.syscalls);
                i.bytes_read = Some(stats.bytes_read);
                i.bytes_written = Some(stats.bytes_written);
            }
        }
        if let Some(shared) = self.store.shared() {
            self.add_other_nodes(shared, &mut list, function, limit);
        }
        list
    }

    /// Adds what runs on the other daemons of a shared store (their usage is
    /// theirs to report: only what the store records is listed).
    fn add_other_nodes(
        &self,
        shared: &dyn crate::store::SharedStore,
        list: &mut RunningList,
        function: Option<&str>,
        limit: usize,
    ) {
        let elsewhere = match shared.running(function, limit) {
            Ok(elsewhere) => elsewhere,
            Err(e) => {
                tracing::warn!(
                    "listing what the other daemons run: {}",
                    crate::error_chain(&e)
                );
                return;
            }
        };
        let now = crate::store::now();
        // A record still `running` past the longest timeout plus a minute is
        // one a daemon that never came back left: not listed as running.
        let oldest = now - self.config.limits.max_timeout_ms as f64 / 1e3 - 60.0;
        for r in elsewhere {
            if r.node == self.config.node
                || r.started_at < oldest
                || list.invocations.iter().any(|i| i.id == r.id)
            {
                continue;
            }
            list.total += 1;
            list.invocations.push(crate::RunningInvocation {
                id: r.id,
                function: r.function,
                version: r.version,
                status: "running",
                is_async: r.is_async,
                attempts: 0,
                created_at: r.started_at,
                age_ms: ((now - r.started_at) * 1e3).max(0.0),
                memory_bytes: None,
                memory_peak_bytes: None,
                cpu_ms: None,
                cancelled: false,
                syscalls: None,
                bytes_read: None,
                bytes_written: None,
                cgroup_id: 0,
                node: r.node,
            });
        }
        list.invocations
            .sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        list.invocations.truncate(limit);
        list.truncated = list.invocations.len() < list.total;
    }

    /// Cancels invocation `id`: a running one's sandbox is killed, a queued
    /// one never starts, an async one does not retry. Waits (briefly) for it
    /// to end and returns its record. An invocation that has ended is a
    /// `Conflict`.
    pub async fn cancel(self: &Arc<Self>, id: &str) -> Result<InvocationRecord, EngineError> {
        let entry = self.running.get(id);
        let Some(entry) = entry else {
            let (engine, wanted) = (Arc::clone(self), id.to_owned());
            let record = blocking(move || engine.store.invocation(&wanted)).await?;
            if !record.finished() {
                // On a shared store: waiting in the queue (cancelled here),
                // or running on another daemon.
                let (engine, wanted) = (Arc::clone(self), id.to_owned());
                let cancelled = blocking(move || match engine.store.shared() {
                    Some(shared) => {
                        let reason =
                            format!("cancelled by a client (DELETE /v1/invocations/{wanted})");
                        shared.cancel_queued(&wanted, &reason)
                    }
                    None => Ok(false),
                })
                .await?;
                if cancelled {
                    let (engine, wanted) = (Arc::clone(self), id.to_owned());
                    return blocking(move || engine.store.invocation(&wanted)).await;
                }
                return Err(EngineError::Conflict(
                    "invocation_elsewhere",
                    format!(
                        "invocation {id} is {} on node {}: cancel it through that daemon",
                        record.status,
                        record.node.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
            return Err(EngineError::Conflict(
                "invocation_finished",
                format!(
                    "invocation {id} has already ended (status {}); there is nothing to cancel",
                    record.status
                ),
            ));
        };
        entry.cancel(format!(
            "cancelled by a client (DELETE /v1/invocations/{id})"
        ));
        drop(entry);
        self.running
            .wait_until_none(CANCEL_WAIT, |e| e.id == id)
            .await;
        let (engine, id) = (Arc::clone(self), id.to_owned());
        blocking(move || engine.store.invocation(&id)).await
    }

    /// Removes a function (see [`Engine::remove`]). While it has invocations
    /// in flight this is refused, unless `force`: then they are cancelled,
    /// and the function is removed once they have ended (their sandboxes
    /// gone, their records written). Returns how many were cancelled.
    pub async fn remove_function(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<usize, EngineError> {
        let (removal, busy) = self.running.begin_removal(name, force)?;
        for entry in &busy {
            entry.cancel(format!(
                "cancelled by the removal of its function (DELETE /v1/functions/{name}?force=true)"
            ));
        }
        let ended = self
            .running
            .wait_until_none(REMOVE_WAIT, |e| e.function == name)
            .await;
        if !ended {
            return Err(EngineError::Conflict(
                "function_busy",
                format!(
                    "invocations of {name:?} did not end within {}s of being cancelled, so the \
                     function was kept; try again",
                    REMOVE_WAIT.as_secs()
                ),
            ));
        }
        let (engine, owned) = (Arc::clone(self), name.to_owned());
        blocking(move || engine.remove_unchecked(&owned)).await?;
        drop(removal);
        Ok(busy.len())
    }

    /// Waits for `function`'s slots (capped at `cap`), unless the invocation
    /// is cancelled first (`None`).
    pub(crate) async fn slots_unless_cancelled(
        self: &Arc<Self>,
        entry: &Entry,
        function: &str,
        cap: u32,
    ) -> Result<Option<Slots>, EngineError> {
        let all = async {
            let mut slots = self.admission.slots(function, cap).await?;
            slots.cluster = self.cluster_slot(function, cap, &entry.id).await?;
            Ok(slots)
        };
        tokio::select! {
            slots = all => slots.map(Some),
            () = entry.cancelled() => Ok(None),
        }
    }

    /// Records a synchronous invocation cancelled before it had a slot.
    pub(crate) async fn record_cancelled(
        self: &Arc<Self>,
        mut record: InvocationRecord,
        entry: &Entry,
    ) -> Result<InvocationRecord, EngineError> {
        entry.mark_cancelled(&mut record);
        let engine = Arc::clone(self);
        blocking(move || {
            engine.store.insert_invocation(&record)?;
            engine.store.update_invocation(&record)?;
            Ok(record)
        })
        .await
    }
}
