//! Ready sandboxes: a few default ones (no image, no template, no
//! environment, the daemon's default limits, `net: none`, container
//! isolation) started before any create asks for them, so that a create
//! asking for nothing else (metadata, a timeout and an idle pause may be
//! given: they are set when it is claimed) is handed a sandbox whose agent
//! already answers, as Daytona's warm pools do.
//!
//! The pool fills only once a create of that kind was asked for (a daemon
//! that never makes sandboxes pays nothing), one sandbox at a time (a
//! refill on a small host competes with the claimed sandbox's first
//! command), up to `--sandbox-pool` (bounded: [`MAX_POOL`]); after a failed
//! start it waits [`RETRY_AFTER`] before trying again. Pooled sandboxes do
//! not count against `--max-sandboxes` until claimed, are not listed, and
//! have no record: a daemon stopping removes them, and a daemon killed
//! leaves only their homes, which the next one reclaims (a directory with
//! no record).

use super::live::{self, Launched};
use super::CreateSandbox;
use crate::engine::Engine;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most ready sandboxes `--sandbox-pool` may ask for.
pub const MAX_POOL: usize = 64;
/// How long a pool waits after a sandbox failed to start.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a refill waits while the pool still holds a ready sandbox: a
/// start takes a few ms of CPU, which on a small host would otherwise be
/// taken from the claimed sandbox's first command.
const REFILL_PAUSE: Duration = Duration::from_millis(25);
/// How long a stopping daemon waits for a start in flight.
const STOP_WAIT: Duration = Duration::from_secs(15);

#[derive(Default)]
pub(super) struct Pool {
    size: usize,
    state: Mutex<PoolState>,
    /// Said when a start in flight ends.
    started: tokio::sync::Notify,
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Launched>,
    /// A start is in flight (one at a time).
    filling: bool,
    /// The daemon is stopping: nothing more is started or handed out.
    closed: bool,
    /// The stopping daemon has taken what was ready: a start that ends
    /// later removes its sandbox itself.
    drained: bool,
    /// No start before this instant (after a failed one).
    retry_at: Option<std::time::Instant>,
}

impl Pool {
    pub(super) fn new(size: usize) -> Self {
        Pool {
            size: size.min(MAX_POOL),
            ..Default::default()
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn enabled(&self) -> bool {
        self.size > 0
    }

    /// How many are ready now.
    pub(super) fn ready(&self) -> usize {
        self.state().ready.len()
    }

    /// The oldest ready sandbox still alive; dead ones (killed, out of
    /// memory) are removed on the way.
    fn take(&self) -> (Option<Launched>, Vec<Launched>) {
        let mut state = self.state();
        let mut dead = Vec::new();
        if state.closed {
            return (None, dead);
        }
        while let Some(one) = state.ready.pop_front() {
            if one.alive() {
                return (Some(one), dead);
            }
            dead.push(one);
        }
        (None, dead)
    }
}

/// Whether a pooled sandbox is what `req` would make: it asks for nothing
/// but metadata, a timeout, an idle pause and environment variables (set at
/// the claim; the agent's own environment, which every command and the
/// interpreter start with, is added to then). Every field is named, so
/// that a new one must be decided here.
pub(super) fn poolable(req: &CreateSandbox) -> bool {
    let CreateSandbox {
        image,
        template,
        timeout_s: _,
        idle_pause_s: _,
        env: _,
        metadata: _,
        memory,
        cpus,
        pids,
        disk,
        net,
        allow_out,
        guard,
        forkable,
        isolation,
        parent,
    } = req;
    image.is_none()
        && template.is_none()
        && memory.is_none()
        && cpus.is_none()
        && pids.is_none()
        && disk.is_none()
        && matches!(net.as_deref(), None | Some("none"))
        && allow_out.is_empty()
        && guard.is_none()
        && !forkable
        && matches!(isolation.as_deref(), None | Some("container"))
        && parent.is_none()
}

impl Engine {
    fn count_ready_sandboxes(&self) {
        let ready = self.sandboxes.pool.ready();
        self.metrics.agent_sandbox_pool_ready.set(ready as i64);
    }

    /// A ready sandbox for `req` (poolable, checked), if one is; the pool
    /// is refilled after the caller's sandbox is made (`refill_ready_sandboxes`).
    pub(super) fn take_ready_sandbox(self: &Arc<Self>) -> Option<Launched> {
        let (one, dead) = self.sandboxes.pool.take();
        self.count_ready_sandboxes();
        for gone in dead {
            tracing::warn!(sandbox = %gone.id(), "a ready sandbox had ended before it was claimed: removed");
            tokio::spawn(gone.discard());
        }
        one
    }

    /// Starts one more ready sandbox if the pool is short and none is being
    /// started; when it is ready, the next is started, until the pool is full.
    pub(super) fn refill_ready_sandboxes(self: &Arc<Self>) {
        let pool = &self.sandboxes.pool;
        let still_ready = {
            let mut state = pool.state();
            let waiting = state
                .retry_at
                .is_some_and(|at| std::time::Instant::now() < at);
            if state.closed || state.filling || waiting || state.ready.len() >= pool.size {
                return;
            }
            state.filling = true;
            state.ready.len()
        };
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            // However this task ends (a panic included), the start is over.
            let filling = Filling(Arc::clone(&engine));
            let pool = &engine.sandboxes.pool;
            if still_ready > 0 {
                tokio::time::sleep(REFILL_PAUSE).await;
                if pool.state().closed {
                    return;
                }
            }
            let started = live::launch(&engine, CreateSandbox::default(), None, true).await;
            let late = {
                let mut state = pool.state();
                match started {
                    // The stop is past waiting for it: removed here.
                    Ok(one) if state.drained => Some(one),
                    // Even when closed: the stopping daemon removes what is here.
                    Ok(one) => {
                        engine.watch_ready_sandbox(&one);
                        state.ready.push_back(one);
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a ready sandbox failed to start: the pool tries again in 5 s");
                        state.retry_at = Some(std::time::Instant::now() + RETRY_AFTER);
                        None
                    }
                }
            };
            drop(filling);
            match late {
                Some(one) => one.discard().await,
                None => engine.refill_ready_sandboxes(),
            }
        });
    }

    /// A ready sandbox that ends before it is claimed (killed, out of
    /// memory) is taken out and removed at once, and the pool refilled
    /// after [`RETRY_AFTER`] (a sandbox that cannot live is not restarted in
    /// a loop).
    fn watch_ready_sandbox(self: &Arc<Self>, one: &Launched) {
        let (mut ended, mut gone) = (one.ended(), one.gone());
        let id = one.id().to_owned();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = ended.wait_for(|e| *e) => {}
                _ = gone.wait_for(|g| *g) => {}
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let dead = {
                let mut state = engine.sandboxes.pool.state();
                let at = state.ready.iter().position(|r| r.id() == id);
                let dead = at.and_then(|at| state.ready.remove(at));
                if dead.is_some() {
                    state.retry_at = Some(std::time::Instant::now() + RETRY_AFTER);
                }
                dead
            };
            // Claimed (or removed by a stop) meanwhile: not the pool's.
            let Some(dead) = dead else { return };
            tracing::warn!(sandbox = %id, "a ready sandbox ended before it was claimed: removed");
            engine.count_ready_sandboxes();
            dead.discard().await;
            tokio::time::sleep(RETRY_AFTER).await;
            engine.refill_ready_sandboxes();
        });
    }

    /// Closes the pool and removes its sandboxes, a start in flight waited
    /// for (up to 15 s): what a stopping daemon does.
    pub(super) async fn drain_ready_sandboxes(&self) {
        let pool = &self.sandboxes.pool;
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        loop {
            // Wakes on any notify_waiters from here on, polled or not.
            let started = pool.started.notified();
            let filling = {
                let mut state = pool.state();
                state.closed = true;
                state.filling
            };
            if !filling || tokio::time::timeout_at(deadline, started).await.is_err() {
                break;
            }
        }
        let ready: Vec<Launched> = {
            let mut state = pool.state();
            state.drained = true;
            state.ready.drain(..).collect()
        };
        self.count_ready_sandboxes();
        let mut removals = tokio::task::JoinSet::new();
        for one in ready {
            removals.spawn(one.discard());
        }
        while removals.join_next().await.is_some() {}
    }
}

/// A start in flight (`PoolState::filling`) until dropped; then the
/// pool's count is refreshed and a stop waiting for it is woken.
struct Filling(Arc<Engine>);

impl Drop for Filling {
    fn drop(&mut self) {
        let pool = &self.0.sandboxes.pool;
        pool.state().filling = false;
        self.0.count_ready_sandboxes();
        pool.started.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metadata_a_clock_and_an_environment_are_served_from_the_pool() {
        let served = CreateSandbox {
            timeout_s: Some(60),
            idle_pause_s: Some(5),
            metadata: [("who".to_owned(), "a".to_owned())].into(),
            env: [("A".to_owned(), "1".to_owned())].into(),
            net: Some("none".into()),
            isolation: Some("container".into()),
            ..Default::default()
        };
        assert!(poolable(&CreateSandbox::default()));
        assert!(poolable(&served));
        type Change = fn(&mut CreateSandbox);
        let fresh: Vec<(&str, Change)> = vec![
            ("image", |r| r.image = Some("alpine".into())),
            ("template", |r| r.template = Some("t".into())),
            ("memory", |r| r.memory = Some("256M".into())),
            ("cpus", |r| r.cpus = Some(1.0)),
            ("pids", |r| r.pids = Some(64)),
            ("disk", |r| r.disk = Some("256M".into())),
            ("net host", |r| r.net = Some("host".into())),
            ("net outbound", |r| r.net = Some("outbound".into())),
            ("net unknown", |r| r.net = Some("bogus".into())),
            ("allow_out", |r| r.allow_out = vec!["10.0.0.0/8".into()]),
            ("guard", |r| r.guard = Some(Default::default())),
            ("forkable", |r| r.forkable = true),
            ("gvisor", |r| r.isolation = Some("gvisor".into())),
            ("parent", |r| r.parent = Some("sb-1".into())),
        ];
        for (what, change) in fresh {
            let mut req = served.clone();
            change(&mut req);
            assert!(!poolable(&req), "{what} must be made afresh");
        }
    }
}
