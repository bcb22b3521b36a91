//! Cluster mode: what a daemon on a shared store does besides serving
//! requests. It takes async invocations from the shared queue under leases
//! (as many as it has room for), keeps its leases alive while it runs them,
//! holds each function's cluster-wide concurrency slots, and fetches code
//! other daemons deployed. A daemon that dies stops renewing: its jobs'
//! leases expire and another daemon takes them, counting the attempt.

use crate::engine::{blocking, Engine};
use crate::store::ClaimedJob;
use crate::EngineError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How a daemon on a shared store takes part in the cluster.
#[derive(Clone)]
pub struct SharedStoreConfig {
    /// `postgres://user[:password]@host[:port]/database[?options]`.
    pub url: String,
    /// The key secrets are sealed with (64 hex digits), the same on every daemon.
    pub secrets_key: String,
    /// How long start-up waits for the database.
    pub wait: Duration,
    /// How long a daemon holds a job or a slot without renewing it.
    pub lease: Duration,
    /// The most jobs one claim takes (1: one job per query).
    pub batch: usize,
}

impl std::fmt::Debug for SharedStoreConfig {
    // The URL may hold a password and the key is a secret: neither is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStoreConfig")
            .field("wait", &self.wait)
            .field("lease", &self.lease)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// The most jobs one claim may take.
pub const MAX_QUEUE_BATCH: usize = 256;
/// Lease bounds, in seconds.
pub const MIN_LEASE_SECS: u64 = 1;
pub const MAX_LEASE_SECS: u64 = 3600;

/// When nothing was due, the next look at the queue (unless woken sooner).
const IDLE_POLL: Duration = Duration::from_millis(50);
/// After a store error, the next try.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The cluster side of one engine.
#[derive(Default)]
pub(crate) struct Cluster {
    /// Jobs this daemon holds (claimed, not yet settled).
    active: AtomicUsize,
    /// Woken when this daemon queues a job or settles one.
    wake: tokio::sync::Notify,
    /// Why the store failed last, while it fails (readiness says it).
    store_error: Mutex<Option<String>>,
    /// Set once this daemon's leases went unrenewed for longer than a
    /// lease: its running jobs were cancelled (others may have them).
    leases_lost: AtomicBool,
}

impl Cluster {
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    fn failed(&self, e: &EngineError) {
        let text = crate::error_chain(e);
        let mut last = self.store_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(text.as_str()) {
            tracing::warn!("the shared store failed: {text}");
        }
        *last = Some(text);
    }

    fn answered(&self) {
        let mut last = self.store_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.take().is_some() {
            tracing::info!("the shared store answers again");
        }
    }
}

/// A function's cluster-wide slot, held by one running invocation and given
/// back when dropped (or, if this daemon dies, when its lease expires).
pub(crate) struct ClusterSlot {
    engine: Weak<Engine>,
    invocation: String,
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let id = std::mem::take(&mut self.invocation);
        let release = move || {
            if let Some(shared) = engine.store.shared() {
                if let Err(e) = shared.release_slot(&id) {
                    // Its lease runs out instead.
                    tracing::warn!("giving back the slot of {id}: {}", crate::error_chain(&e));
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(release)),
            Err(_) => release(),
        }
    }
}

impl Engine {
    /// Takes one of `function`'s cluster-wide slots for `invocation`,
    /// waiting while all `cap` are held; None on a store of one machine.
    pub(crate) async fn cluster_slot(
        self: &Arc<Self>,
        function: &str,
        cap: u32,
        invocation: &str,
    ) -> Result<Option<ClusterSlot>, EngineError> {
        let Some(lease) = self.config.shared.as_ref().map(|s| s.lease) else {
            return Ok(None);
        };
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(slot) = self
                .try_cluster_slot(function, cap, invocation, lease)
                .await?
            {
                return Ok(Some(slot));
            }
            if self.admission.is_closed() {
                return Err(EngineError::Stopping);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn try_cluster_slot(
        self: &Arc<Self>,
        function: &str,
        cap: u32,
        invocation: &str,
        lease: Duration,
    ) -> Result<Option<ClusterSlot>, EngineError> {
        let (engine, f, id) = (Arc::clone(self), function.to_owned(), invocation.to_owned());
        let took = blocking(move || match engine.store.shared() {
            Some(shared) => shared.take_slot(&f, cap, &id, lease),
            None => Ok(true),
        })
        .await?;
        Ok(took.then(|| ClusterSlot {
            engine: Arc::downgrade(self),
            invocation: invocation.to_owned(),
        }))
    }

    /// Makes sure the code `digest` is in this daemon's code directory,
    /// fetching it from the shared store when another daemon deployed it.
    pub(crate) fn ensure_code(&self, digest: &str) -> Result<(), EngineError> {
        let dir = self.config.data_dir.join("code").join(digest);
        if dir.is_dir() {
            return Ok(());
        }
        let Some(shared) = self.store.shared() else {
            return Ok(()); // the bind fails with the missing path, as before
        };
        let _code = self.code_lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir() {
            return Ok(()); // fetched while this call waited
        }
        let tar = shared.code(digest)?.ok_or_else(|| {
            EngineError::Internal(format!("the shared store has no code {digest}"))
        })?;
        let stored = crate::code::store_code(&self.config.data_dir, &tar)?;
        if stored != digest {
            return Err(EngineError::Internal(format!(
                "the shared store's code {digest} unpacks to {stored}: it was altered"
            )));
        }
        Ok(())
    }

    /// Whether this daemon takes work now: not stopping, and its store answers.
    pub fn ready(&self) -> Result<(), String> {
        if self.admission.is_closed() {
            return Err("the daemon is stopping".into());
        }
        let Some(shared) = self.store.shared() else {
            return Ok(());
        };
        if self.cluster.leases_lost.load(Ordering::SeqCst) {
            return Err("its leases lapsed while the shared store was away".into());
        }
        match shared.ping() {
            Ok(()) => {
                self.cluster.answered();
                Ok(())
            }
            Err(e) => {
                self.cluster.failed(&e);
                Err(crate::error_chain(&e))
            }
        }
    }

    /// This daemon's node name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Starts the queue's poller and the lease keeper (shared stores only).
    pub(crate) fn start_cluster(self: &Arc<Self>) -> Result<(), EngineError> {
        if self.store.shared().is_none() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            EngineError::Internal(
                "a shared store needs the engine opened in a tokio runtime".into(),
            )
        })?;
        runtime.spawn(poll_queue(Arc::downgrade(self)));
        runtime.spawn(keep_leases(Arc::downgrade(self)));
        Ok(())
    }
}

/// Claims due jobs while this daemon has room, and runs each in its own task.
async fn poll_queue(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        if e.admission.is_closed() {
            return;
        }
        let Some(shared_config) = e.config.shared.clone() else {
            return;
        };
        let room = e
            .config
            .max_running
            .saturating_sub(e.cluster.active.load(Ordering::SeqCst))
            .min(shared_config.batch);
        let claimed = if room == 0 || e.cluster.leases_lost.load(Ordering::SeqCst) {
            Ok(Vec::new())
        } else {
            let (engine, lease) = (Arc::clone(&e), shared_config.lease);
            blocking(move || match engine.store.shared() {
                Some(shared) => shared.claim(room, lease),
                None => Ok(Vec::new()),
            })
            .await
        };
        let pause = match claimed {
            Ok(jobs) => {
                e.cluster.answered();
                let full = jobs.len() == room && room > 0;
                for job in jobs {
                    e.cluster.active.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(run_job(Arc::clone(&e), job));
                }
                if full {
                    Duration::ZERO // more may be due
                } else {
                    IDLE_POLL
                }
            }
            Err(err) => {
                e.cluster.failed(&err);
                STORE_RETRY
            }
        };
        if !pause.is_zero() {
            // Holding the engine for one pause at most.
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = e.cluster.wake.notified() => {}
                () = e.admission.closed() => return,
            }
        }
    }
}

/// Renews this daemon's leases (jobs and slots) three times a lease; if
/// they could not be renewed for a whole lease, other daemons may have
/// taken its jobs: it cancels the attempts it still runs and stops claiming
/// until it renews again.
async fn keep_leases(engine: Weak<Engine>) {
    let mut renewed = Instant::now();
    loop {
        let Some(e) = engine.upgrade() else { return };
        let Some(lease) = e.config.shared.as_ref().map(|s| s.lease) else {
            return;
        };
        let engine_for_call = Arc::clone(&e);
        let result = blocking(move || match engine_for_call.store.shared() {
            Some(shared) => shared.renew(lease),
            None => Ok(()),
        })
        .await;
        match result {
            Ok(()) => {
                renewed = Instant::now();
                if e.cluster.leases_lost.swap(false, Ordering::SeqCst) {
                    tracing::info!("leases renewed again: taking jobs from the queue again");
                }
                e.cluster.answered();
            }
            Err(err) => {
                e.cluster.failed(&err);
                if renewed.elapsed() > lease && !e.cluster.leases_lost.swap(true, Ordering::SeqCst)
                {
                    tracing::warn!(
                        "this daemon's leases lapsed ({}s without renewal): cancelling the queued jobs it runs, which other daemons may take",
                        lease.as_secs()
                    );
                    e.running
                        .cancel_async("its lease lapsed while the shared store was away");
                }
            }
        }
        let stopping = e.admission.is_closed() && e.cluster.active.load(Ordering::SeqCst) == 0;
        drop(e);
        if stopping {
            return;
        }
        tokio::time::sleep(lease / 3).await;
    }
}

/// How a claimed job leaves this daemon.
enum Settle {
    /// It is over: out of the queue.
    Finish,
    /// Its attempt failed and another may follow after the delay.
    Retry(Duration),
    /// It never started here (no cluster slot): back, attempt uncounted.
    GiveBack(Duration),
}

async fn run_job(engine: Arc<Engine>, job: ClaimedJob) {
    let _alive = engine.in_flight();
    let id = job.id.clone();
    let settle = match attempt_job(&engine, job).await {
        Ok(settle) => settle,
        Err(e) => {
            // The store failed around the attempt: try again later (the
            // attempt counted); a stale lease would be reclaimed anyway.
            engine.cluster.failed(&e);
            tracing::warn!("queued invocation {id}: {}", crate::error_chain(&e));
            Settle::Retry(STORE_RETRY)
        }
    };
    settle_job(&engine, &id, settle).await;
    engine.cluster.active.fetch_sub(1, Ordering::SeqCst);
    engine.cluster.wake();
}

/// Runs one claimed attempt, recording it; says how the job leaves.
async fn attempt_job(engine: &Arc<Engine>, job: ClaimedJob) -> Result<Settle, EngineError> {
    let e = Arc::clone(engine);
    let id = job.id.clone();
    let mut record = match blocking(move || e.store.invocation(&id)).await {
        Ok(record) => record,
        Err(EngineError::NoInvocation(_)) => return Ok(Settle::Finish), // its function went
        Err(err) => return Err(err),
    };
    // A previous holder recorded the end and died before taking it out.
    if record.finished() {
        return Ok(Settle::Finish);
    }
    let last = job.attempt > job.retries;
    if job.attempt > job.retries + 1 {
        // Its last allowed attempt was on a daemon that stopped mid-way.
        record.status = "error".into();
        record.ended_at = Some(crate::store::now());
        record.error = Some(format!(
            "the daemon running its last attempt ({}) stopped before it finished; {} attempt(s) allowed",
            record.node.as_deref().unwrap_or("unknown"),
            job.retries + 1
        ));
        let e = Arc::clone(engine);
        blocking(move || e.store.update_invocation(&record)).await?;
        return Ok(Settle::Finish);
    }
    let (version, cap) = match engine.resolve(&job.function, Some(job.version)).await {
        Ok(found) => found,
        Err(EngineError::NoFunction(_) | EngineError::NoVersion(..)) => return Ok(Settle::Finish),
        Err(err) => return Err(err),
    };
    let lease = engine
        .config
        .shared
        .as_ref()
        .map_or(Duration::from_secs(10), |s| s.lease);
    // The function's slot here and its cluster-wide one, both now: a job
    // that would wait goes back, uncounted, for another daemon (or later).
    let jitter = u64::from(alcove_sys::process::random_id().as_bytes()[0] % 100);
    let give_back = Settle::GiveBack(Duration::from_millis(50 + jitter));
    let Some(mut local) = engine.admission.try_slots(&job.function, cap)? else {
        return Ok(give_back);
    };
    let Some(slot) = engine
        .try_cluster_slot(&job.function, cap, &job.id, lease)
        .await?
    else {
        drop(local);
        return Ok(give_back);
    };
    local.cluster = Some(slot);
    let node = engine.config.node.clone();
    record.node = Some(node.clone());
    record.nodes.push(node);
    record.attempts = job.attempt - 1; // the attempt counts itself
    let entry = engine.running.register(&record)?;
    let (record, _) = engine
        .run(version, record, job.body.into(), local, false, !last)
        .await?;
    drop(entry);
    if engine.cluster.leases_lost.load(Ordering::SeqCst) {
        // Cancelled because its lease lapsed: back to the queue, counted.
        return Ok(Settle::Retry(Duration::ZERO));
    }
    if record.succeeded() || last || record.status == "cancelled" {
        return Ok(Settle::Finish);
    }
    Ok(Settle::Retry(Duration::from_millis(
        100 << (job.attempt - 1).min(6),
    )))
}

/// Takes the job out of the queue, or puts it back, retrying while the
/// store is away (until the daemon stops: then its lease runs out).
async fn settle_job(engine: &Arc<Engine>, id: &str, settle: Settle) {
    let mut pause = Duration::from_millis(200);
    loop {
        let (e, id_owned) = (Arc::clone(engine), id.to_owned());
        let result = match settle {
            Settle::Finish => blocking(move || shared_call(&e, |s| s.finish_job(&id_owned))).await,
            Settle::Retry(delay) => {
                blocking(move || shared_call(&e, |s| s.retry_job(&id_owned, delay))).await
            }
            Settle::GiveBack(delay) => {
                blocking(move || shared_call(&e, |s| s.release_job(&id_owned, delay))).await
            }
        };
        match result {
            Ok(()) => return,
            Err(err) => {
                engine.cluster.failed(&err);
                if engine.admission.is_closed() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn shared_call(
    engine: &Engine,
    call: impl FnOnce(&dyn crate::store::SharedStore) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    match engine.store.shared() {
        Some(shared) => call(shared),
        None => Ok(()),
    }
}
