//! Functions deployed with `isolation: gvisor`: each invocation runs on
//! gVisor's user-space kernel (runsc), in a sandbox booted ahead of it when
//! the function's pool has one ready, else booted for it (cold). A pooled
//! sandbox serves one invocation and is killed whole after it; the pool is
//! refilled in the background. Pools follow the function's latest version
//! and go with the daemon (their cgroups, Sentries and run directories; what
//! a kill -9 leaves is reclaimed when the next daemon starts).

use crate::engine::Engine;
use crate::model::VersionInfo;
use crate::EngineError;
use alcove_gvisor::{GvisorOptions, PooledSandbox};
use alcove_sandbox::{Outcome, SandboxSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most sandboxes one function's pool may hold ready.
pub const MAX_POOL: u32 = 16;
/// The most pooled sandboxes the daemon holds for all functions together
/// (~13 MiB and 5 host processes each, idle): many functions each asking for
/// a pool cannot take the host's memory. Past it, requests boot their own.
pub const MAX_POOLED_TOTAL: usize = 64;
/// A pool whose boot failed is not booted again for this long.
const BOOT_BACKOFF: Duration = Duration::from_secs(10);

/// The gVisor functions' pools, by function name.
#[derive(Default)]
pub(crate) struct GvisorPools {
    inner: Arc<Mutex<HashMap<String, Pool>>>,
    /// Set at shutdown: nothing is booted from then on.
    closed: AtomicBool,
    /// Boots under way, on any pool's thread (shutdown waits for them).
    boots: AtomicUsize,
}

/// One function's pool: sandboxes of its latest version, booted ahead.
struct Pool {
    version: u32,
    ready: Vec<Pooled>,
    booting: usize,
    failed_at: Option<Instant>,
}

/// A booted sandbox and what must stay held while it lives.
pub(crate) struct Pooled {
    sandbox: PooledSandbox,
    _lease: Option<alcove_image::Lease>,
    /// Bind sources, pinned (the sandbox's Gofer opened them by these).
    _pinned: Vec<std::os::fd::OwnedFd>,
}

/// How many sandboxes `v` keeps booted ahead.
pub(crate) fn pool_size(v: &VersionInfo) -> usize {
    match v.config.isolation.as_str() {
        "gvisor" => v.config.pool.unwrap_or(1).min(MAX_POOL) as usize,
        _ => 0,
    }
}

/// The waiter a pooled sandbox starts with: this daemon's own program,
/// bound in as the agent sandboxes' agent is, so it runs in any image.
fn waiter() -> Result<(Vec<String>, Vec<alcove_sandbox::Bind>), EngineError> {
    let program = crate::sandboxes::agent_program::agent_program().map_err(EngineError::Invalid)?;
    let mut argv = program.argv.clone();
    if let Some(last) = argv.last_mut() {
        *last = "gvisor-wait".into();
    }
    Ok((argv, program.binds.clone()))
}

impl Engine {
    /// Runs one invocation of a gVisor function: in a pooled sandbox when
    /// one fits, else in one booted for it. Says which (`warm` or `cold`).
    pub(crate) fn run_gvisor(
        &self,
        v: &VersionInfo,
        spec: &SandboxSpec,
        options: &GvisorOptions,
    ) -> (&'static str, Result<Outcome, EngineError>) {
        let failed = |e: alcove_gvisor::GvisorError| {
            EngineError::Invalid(format!("gvisor: {}", alcove_sandbox::error_chain(&e)))
        };
        let pooled = self.take_pooled(v, spec);
        self.refill_pool(v);
        match pooled {
            Some(p) => ("warm", p.sandbox.exec(spec, options).map_err(failed)),
            None => ("cold", alcove_gvisor::run(spec, options).map_err(failed)),
        }
    }

    /// A ready sandbox of `v`'s pool that `spec` fits; the dead are dropped.
    fn take_pooled(&self, v: &VersionInfo, spec: &SandboxSpec) -> Option<Pooled> {
        let mut pools = self.gvisor.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.get_mut(&v.function)?;
        if pool.version != v.version {
            return None;
        }
        let mut found = None;
        while let Some(p) = pool.ready.pop() {
            if p.sandbox.alive() && p.sandbox.fits(spec) {
                found = Some(p);
                break;
            }
        }
        self.publish_ready(&v.function, pool.ready.len());
        found
    }

    /// The `alcove_gvisor_pool_ready` gauge of `function`.
    fn publish_ready(&self, function: &str, ready: usize) {
        self.metrics
            .gvisor_pool_ready
            .get_or_create(&crate::metrics::FunctionLabel {
                function: function.to_owned(),
            })
            .set(ready as i64);
    }

    fn boot_one(&self, v: &VersionInfo) -> Result<Pooled, EngineError> {
        let (spec, lease, pinned) = self.spec_without_request(v)?;
        let (argv, binds) = waiter()?;
        let sandbox =
            PooledSandbox::boot(&spec, argv, &binds, &GvisorOptions::default()).map_err(|e| {
                EngineError::Invalid(format!("gvisor: {}", alcove_sandbox::error_chain(&e)))
            })?;
        Ok(Pooled {
            sandbox,
            _lease: lease,
            _pinned: pinned,
        })
    }

    /// At a deploy of `v` (blocking): checks that gVisor can run it and
    /// boots the first sandbox of its pool, so that a version gVisor cannot
    /// run is refused now, not at every invocation. The old version's pool
    /// goes.
    pub(crate) fn start_pool(&self, v: &VersionInfo) -> Result<(), EngineError> {
        self.stop_pool(&v.function);
        if pool_size(v) == 0 {
            let (spec, _lease, _pinned) = self.spec_without_request(v)?;
            return alcove_gvisor::check(&spec)
                .map_err(|e| EngineError::Invalid(format!("gvisor: {e}")));
        }
        // Booted as the deploy's check; kept while the daemon's total allows.
        let first = self.boot_one(v)?;
        let mut pools = self.gvisor.inner.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = pools.values().map(|p| p.ready.len() + p.booting).sum();
        let ready = if held < MAX_POOLED_TOTAL {
            vec![first]
        } else {
            Vec::new() // `first` is killed here
        };
        self.publish_ready(&v.function, ready.len());
        pools.insert(
            v.function.clone(),
            Pool {
                version: v.version,
                ready,
                booting: 0,
                failed_at: None,
            },
        );
        drop(pools);
        self.refill_pool(v);
        Ok(())
    }

    /// Boots what `v`'s pool lacks, one after another on a thread of its
    /// own (boots are CPU-heavy: one at a time leaves the CPUs to requests).
    pub(crate) fn refill_pool(&self, v: &VersionInfo) {
        let size = pool_size(v);
        if self.gvisor.closed.load(Ordering::SeqCst) {
            return;
        }
        let need = {
            let mut pools = self.gvisor.inner.lock().unwrap_or_else(|e| e.into_inner());
            let pool = pools.entry(v.function.clone()).or_insert(Pool {
                version: v.version,
                ready: Vec::new(),
                booting: 0,
                failed_at: None,
            });
            if pool.version != v.version
                || pool.failed_at.is_some_and(|t| t.elapsed() < BOOT_BACKOFF)
            {
                return;
            }
            let need = size.saturating_sub(pool.ready.len() + pool.booting);
            let held: usize = pools.values().map(|p| p.ready.len() + p.booting).sum();
            let need = need.min(MAX_POOLED_TOTAL.saturating_sub(held));
            if let Some(pool) = pools.get_mut(&v.function) {
                pool.booting += need;
            }
            need
        };
        if need == 0 {
            return;
        }
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            self.booted(v, None, need);
            return;
        };
        let v2 = v.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("gvisor {}", v.function))
            .spawn(move || {
                for left in (0..need).rev() {
                    // Counted until the sandbox is in its pool or dropped.
                    me.gvisor.boots.fetch_add(1, Ordering::SeqCst);
                    let result = if me.gvisor.closed.load(Ordering::SeqCst) {
                        None
                    } else {
                        Some(me.boot_one(&v2))
                    };
                    let go_on = matches!(result, Some(Ok(_)));
                    let boots = if go_on { 1 } else { left + 1 };
                    me.booted(&v2, result, boots);
                    me.gvisor.boots.fetch_sub(1, Ordering::SeqCst);
                    if !go_on {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            self.booted(v, None, need);
        }
    }

    /// Puts a booted sandbox in `v`'s pool (or drops it, when the pool
    /// moved on to another version or went), and counts `boots` done.
    fn booted(&self, v: &VersionInfo, result: Option<Result<Pooled, EngineError>>, boots: usize) {
        let mut pools = self.gvisor.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pool) = pools
            .get_mut(&v.function)
            .filter(|p| p.version == v.version)
        else {
            return; // dropped (outside the lock would be kinder; it is rare)
        };
        pool.booting = pool.booting.saturating_sub(boots);
        match result {
            Some(Ok(p)) => {
                pool.ready.push(p);
                let ready = pool.ready.len();
                self.publish_ready(&v.function, ready);
            }
            Some(Err(e)) => {
                pool.failed_at = Some(Instant::now());
                tracing::warn!(
                    function = %v.function,
                    version = v.version,
                    "gvisor: cannot boot a pooled sandbox (invocations boot their own): {e}"
                );
            }
            None => {}
        }
    }

    /// After a rollback: the function's pool follows its latest version.
    pub(crate) fn follow_pool(&self, function: &str, latest: Option<&VersionInfo>) {
        let current = self
            .gvisor
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
            .map(|p| p.version);
        match latest.filter(|v| pool_size(v) > 0) {
            Some(v) => {
                if current.is_some_and(|c| c != v.version) {
                    self.stop_pool(function);
                }
                self.refill_pool(v);
            }
            None => self.stop_pool(function),
        }
    }

    /// Drops the function's pool (it was removed, rolled back, or is no
    /// longer a gVisor function): its sandboxes are killed whole.
    pub(crate) fn stop_pool(&self, function: &str) {
        let pool = self
            .gvisor
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
        if pool.is_some() {
            self.publish_ready(function, 0);
        }
        drop(pool);
    }

    /// At shutdown (blocking): every pool goes, cgroups and all, and boots
    /// under way finish and go too.
    pub(crate) fn stop_all_pools(&self) {
        self.gvisor.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.gvisor.boots.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pools: Vec<Pool> = self
            .gvisor
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        drop(pools);
        let left = alcove_gvisor::wait_for_teardowns(Duration::from_secs(10));
        if left > 0 {
            tracing::warn!(
                "{left} used gVisor sandboxes not yet torn down at shutdown (run `alcove gc`)"
            );
        }
    }

    /// How many pooled sandboxes each function has ready (for its page and
    /// the tests).
    pub fn pooled_ready(&self, function: &str) -> usize {
        self.gvisor
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
            .map_or(0, |p| p.ready.len())
    }

    /// At daemon start: what a kill -9 of the last daemon left of its pools
    /// is gone (`gc_orphans` killed their cgroups); refill the pools of
    /// gVisor functions' latest versions.
    pub(crate) fn restore_pools(&self) {
        alcove_gvisor::gc();
        let Ok(functions) = self.functions() else {
            return;
        };
        for f in functions {
            let latest = f.versions.into_iter().find(|v| v.version == f.latest);
            if let Some(v) = latest.filter(|v| pool_size(v) > 0) {
                self.refill_pool(&v);
            }
        }
    }
}
