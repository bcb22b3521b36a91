//! Admission: how many sandboxes run at once (per function and overall), and
//! a bounded backlog of invocations accepted but not yet running — their
//! count and the bytes of their bodies — so that no client can make the
//! daemon hold more than the operator allowed. Shutting down closes it all.

use crate::EngineError;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Admission {
    global: Arc<Semaphore>,
    /// Per function: its cap (the `latest` version's concurrency) and slots.
    per_function: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    backlog: Arc<Backlog>,
    stopping: AtomicBool,
    /// Wakes what waits for [`Admission::closed`].
    closing: tokio::sync::Notify,
}

struct Backlog {
    count: AtomicUsize,
    /// `alcove_invocations_queued`, kept equal to `count`.
    gauge: Gauge,
    bytes: AtomicU64,
    max_count: usize,
    max_bytes: u64,
}

/// One invocation's place in the backlog; dropping it gives the place back.
pub(crate) struct Ticket {
    backlog: Arc<Backlog>,
    bytes: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.backlog.count.fetch_sub(1, Ordering::SeqCst);
        self.backlog.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        self.backlog.gauge.dec();
    }
}

/// Bytes of a finished invocation's response that wait for their client to
/// take them, counted with the backlog's bytes until dropped: a client that
/// stops reading cannot make the daemon hold more than the operator allowed
/// (new invocations get `Busy` meanwhile).
#[derive(Debug)]
pub struct HeldBytes {
    backlog: Arc<Backlog>,
    bytes: u64,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.backlog.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backlog").finish_non_exhaustive()
    }
}

/// The slots one running invocation holds: its function's and one overall
/// on this daemon, and on a shared store its function's cluster-wide one.
pub(crate) struct Slots {
    _function: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    pub(crate) cluster: Option<crate::cluster::ClusterSlot>,
}

fn stopping() -> EngineError {
    EngineError::Stopping
}

impl Admission {
    /// `gauge` is kept equal to the number of invocations in the backlog.
    pub(crate) fn new(
        max_running: usize,
        max_waiting: usize,
        max_waiting_bytes: u64,
        gauge: Gauge,
    ) -> Self {
        Admission {
            global: Arc::new(Semaphore::new(max_running.max(1))),
            per_function: Mutex::new(HashMap::new()),
            backlog: Arc::new(Backlog {
                count: AtomicUsize::new(0),
                gauge,
                bytes: AtomicU64::new(0),
                max_count: max_waiting,
                max_bytes: max_waiting_bytes,
            }),
            stopping: AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
        }
    }

    /// A place in the backlog for an invocation with a body of `bytes`, or
    /// `Busy` when the backlog is full by count or by bytes.
    pub(crate) fn enter(&self, bytes: usize) -> Result<Ticket, EngineError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(stopping());
        }
        let b = &self.backlog;
        let bytes = bytes as u64;
        let count = b.count.fetch_add(1, Ordering::SeqCst) + 1;
        let held = b.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        b.gauge.inc();
        let ticket = Ticket {
            backlog: Arc::clone(b),
            bytes,
        };
        if count > b.max_count {
            return Err(EngineError::Busy(format!(
                "{} invocations are already waiting (the limit is {}); retry later",
                count - 1,
                b.max_count
            )));
        }
        if held > b.max_bytes {
            return Err(EngineError::Busy(format!(
                "the bodies of waiting invocations and the responses not yet taken by their clients would take {held} bytes (the limit is {}); retry later",
                b.max_bytes
            )));
        }
        Ok(ticket)
    }

    /// Counts `bytes` of a response waiting for its client (see
    /// [`HeldBytes`]), or `Busy` when that would pass the byte limit and
    /// other bytes are held already.
    pub(crate) fn hold(&self, bytes: usize) -> Result<HeldBytes, EngineError> {
        let b = &self.backlog;
        let bytes = bytes as u64;
        let held = HeldBytes {
            backlog: Arc::clone(b),
            bytes,
        };
        let before = b.bytes.fetch_add(bytes, Ordering::SeqCst);
        let total = before.saturating_add(bytes);
        // A response alone passes, whatever its size (it is within its
        // function's output limit): a low limit must not make it undeliverable.
        if before > 0 && total > b.max_bytes {
            return Err(EngineError::Busy(format!(
                "the invocation ended, but its response of {bytes} bytes would make the \
                 responses not yet taken by their clients and the bodies of waiting \
                 invocations take {total} bytes (the limit is {}); retry later",
                b.max_bytes
            )));
        }
        Ok(held)
    }

    /// Invocations in the backlog now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.backlog.count.load(Ordering::SeqCst)
    }

    /// Waits for a slot of `function` (capped at `cap` at once) and one overall.
    pub(crate) async fn slots(&self, function: &str, cap: u32) -> Result<Slots, EngineError> {
        let mine = self.function_slots(function, cap.max(1))?;
        let mine = mine.acquire_owned().await.map_err(|_| stopping())?;
        let global = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .map_err(|_| stopping())?;
        Ok(Slots {
            _function: mine,
            _global: global,
            cluster: None,
        })
    }

    /// A slot of `function` and one overall if both are free now (a queued
    /// job on a shared store goes back rather than wait here).
    pub(crate) fn try_slots(&self, function: &str, cap: u32) -> Result<Option<Slots>, EngineError> {
        let mine = self.function_slots(function, cap.max(1))?;
        let Ok(mine) = mine.try_acquire_owned() else {
            return Ok(None);
        };
        let Ok(global) = Arc::clone(&self.global).try_acquire_owned() else {
            return Ok(None);
        };
        Ok(Some(Slots {
            _function: mine,
            _global: global,
            cluster: None,
        }))
    }

    /// The function's semaphore, resized in place when its cap changed, so
    /// invocations already running keep counting against it.
    fn function_slots(&self, function: &str, cap: u32) -> Result<Arc<Semaphore>, EngineError> {
        let mut map = self.per_function.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopping.load(Ordering::SeqCst) {
            return Err(stopping());
        }
        let (current, slots) = map
            .entry(function.to_owned())
            .or_insert_with(|| (cap, Arc::new(Semaphore::new(cap as usize))));
        if *current < cap {
            slots.add_permits((cap - *current) as usize);
        } else if *current > cap {
            // Fewer slots: take the surplus out as running invocations end.
            let surplus = *current - cap;
            let shrinking = Arc::clone(slots);
            tokio::spawn(async move {
                if let Ok(taken) = shrinking.acquire_many_owned(surplus).await {
                    taken.forget();
                }
            });
        }
        *current = cap;
        Ok(Arc::clone(slots))
    }

    /// Forgets a removed function's slots (its running invocations keep theirs).
    pub(crate) fn forget(&self, function: &str) {
        self.per_function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
    }

    /// Refuses everything from now on; invocations waiting for a slot get
    /// `Stopping`. Those already running are not touched.
    pub(crate) fn close(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
        self.global.close();
        for (_, slots) in self
            .per_function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            slots.close();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once [`Admission::close`] has been called.
    pub(crate) async fn closed(&self) {
        let woken = self.closing.notified();
        if !self.is_closed() {
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_responses_count_against_the_bytes_but_one_alone_always_passes() {
        let a = Admission::new(1, 10, 100, Gauge::default());
        let first = a.hold(150).expect("a response alone passes");
        assert!(a.hold(1).is_err(), "over the limit with another held");
        assert!(a.enter(1).is_err(), "bodies wait behind held responses");
        drop(first);
        let _second = a.hold(60).unwrap();
        assert!(a.hold(40).is_ok() && a.hold(41).is_err());
        assert!(a.hold(0).is_ok());
    }

    #[test]
    fn the_backlog_refuses_beyond_its_count_and_its_bytes_and_frees_on_drop() {
        let a = Admission::new(1, 2, 100, Gauge::default());
        let first = a.enter(10).unwrap();
        let _second = a.enter(10).unwrap();
        assert!(matches!(a.enter(0), Err(EngineError::Busy(_))));
        drop(first);
        assert!(matches!(a.enter(91), Err(EngineError::Busy(_))));
        let _third = a.enter(90).unwrap();
        assert_eq!(a.waiting(), 2);
    }

    #[tokio::test]
    async fn alternating_caps_resize_one_semaphore_instead_of_resetting_it() {
        let a = Admission::new(100, 100, 1 << 20, Gauge::default());
        let _one = a.slots("f", 1).await.unwrap();
        // A version with a larger cap adds one slot: two may run, not three.
        let _two = a.slots("f", 2).await.unwrap();
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), a.slots("f", 2));
        assert!(
            third.await.is_err(),
            "a third invocation got a slot at cap 2"
        );
        // Back to cap 1 and up to 2 again: still only two in all.
        let back = tokio::time::timeout(std::time::Duration::from_millis(50), a.slots("f", 1));
        assert!(back.await.is_err());
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), a.slots("f", 2));
        assert!(again.await.is_err());
    }

    #[tokio::test]
    async fn closing_wakes_the_waiting_with_stopping() {
        let a = Arc::new(Admission::new(1, 10, 1 << 20, Gauge::default()));
        let held = a.slots("f", 1).await.unwrap();
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.slots("f", 1).await.map(|_| ()) })
        };
        let sleeper = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.closed().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        a.close();
        assert!(matches!(waiter.await.unwrap(), Err(EngineError::Stopping)));
        tokio::time::timeout(std::time::Duration::from_secs(1), sleeper)
            .await
            .expect("closed() resolves at close")
            .unwrap();
        a.closed().await; // and at once after it
        assert!(matches!(a.enter(1), Err(EngineError::Stopping)));
        drop(held);
    }
}
