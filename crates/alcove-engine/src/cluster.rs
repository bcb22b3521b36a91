//! Cluster mode: what a daemon on a shared store does besides serving
//! requests. It takes async invocations from the shared queue under leases
//! (as many as it has room for), keeps its leases alive while it runs them,
//! holds each function's cluster-wide concurrency slots, and fetches code
//! other daemons deployed. A daemon that dies stops renewing: its jobs'
//! leases expire and another daemon takes them, counting the attempt.

use crate::engine::{blocking, Engine};
use crate::store::ClaimedJob;
use crate::EngineError;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// CA certificates (PEM) the database's TLS certificate may chain to,
    /// besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
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
/// Why an attempt was cancelled when its lease lapsed (how the job's end
/// tells it from a client's cancel).
const LEASE_LAPSED: &str = "its lease lapsed";

/// Claims of one job by daemons that stopped before its attempt began,
/// beyond its attempts, before it is given up.
const LOST_CLAIMS: u32 = 5;
/// After a store error, the next try.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The cluster side of one engine.
#[derive(Default)]
pub(crate) struct Cluster {
    /// The jobs this daemon holds (claimed, not yet settled) and the
    /// invocations holding a cluster slot, by id: what the lease keeper
    /// renews (and nothing else); how many jobs is the daemon's load.
    held_jobs: Mutex<HashSet<String>>,
    held_slots: Mutex<HashSet<String>>,
    /// Woken when this daemon queues a job or settles one.
    wake: tokio::sync::Notify,
    /// Why the store failed last, while it fails (readiness says it).
    store_error: Mutex<Option<String>>,
    /// Set while this daemon's leases went unrenewed for too long: it
    /// cancelled what it ran under them (others may have it) and claims
    /// nothing until it renews again.
    leases_lost: AtomicBool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Notes a failed store call; only the store being away counts against
    /// readiness (a conflict or a missing function says nothing of it).
    fn failed(&self, e: &EngineError) {
        if !matches!(e, EngineError::StoreUnavailable(_)) {
            return;
        }
        let text = crate::error_chain(e);
        let mut last = locked(&self.store_error);
        if last.as_deref() != Some(text.as_str()) {
            tracing::warn!("the shared store failed: {text}");
        }
        *last = Some(text);
    }

    fn answered(&self) {
        if locked(&self.store_error).take().is_some() {
            tracing::info!("the shared store answers again");
        }
    }

    fn held(&self) -> (Vec<String>, Vec<String>) {
        let jobs = locked(&self.held_jobs).iter().cloned().collect();
        let slots = locked(&self.held_slots).iter().cloned().collect();
        (jobs, slots)
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
        // No longer renewed: if the release below fails, the lease runs out.
        locked(&engine.cluster.held_slots).remove(&id);
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
        if !took {
            return Ok(None);
        }
        locked(&self.cluster.held_slots).insert(invocation.to_owned());
        Ok(Some(ClusterSlot {
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

    /// Whether this daemon takes work now: not stopping, and its store
    /// answered its last call (the poller and the lease keeper call it
    /// every few seconds at most; a probe costs the database nothing). The
    /// reason names no host: probes need no token.
    pub fn ready(&self) -> Result<(), String> {
        if self.admission.is_closed() {
            return Err("the daemon is stopping".into());
        }
        if self.store.shared().is_none() {
            return Ok(());
        }
        if self.cluster.leases_lost.load(Ordering::SeqCst) {
            return Err("its leases lapsed while the shared store was away".into());
        }
        if locked(&self.cluster.store_error).is_some() {
            return Err("the shared store cannot be reached (the daemon's log says why)".into());
        }
        Ok(())
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
            .saturating_sub(locked(&e.cluster.held_jobs).len())
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
                    locked(&e.cluster.held_jobs).insert(job.id.clone());
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

/// Renews the leases this daemon holds (jobs and slots, by id) three times
/// a lease. An attempt whose lease another daemon now holds is cancelled;
/// if no renewal got through for half a lease (so, before the leases run
/// out), every attempt held under one is cancelled and the daemon claims
/// nothing until it renews again.
async fn keep_leases(engine: Weak<Engine>) {
    let mut last_good = Instant::now();
    loop {
        let Some(e) = engine.upgrade() else { return };
        let Some(lease) = e.config.shared.as_ref().map(|s| s.lease) else {
            return;
        };
        let (jobs, slots) = e.cluster.held();
        let sent = Instant::now();
        let call = {
            let (engine, jobs, slots) = (Arc::clone(&e), jobs.clone(), slots.clone());
            blocking(move || match engine.store.shared() {
                Some(shared) => shared.renew(lease, &jobs, &slots),
                None => Ok(Default::default()),
            })
        };
        // A renewal gets a sixth of a lease; with one every third and the
        // sweep past half a lease, the sweep comes before the leases run
        // out (by five sixths of one at the latest).
        let result = match tokio::time::timeout(lease / 6, call).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::StoreUnavailable(format!(
                "renewing leases took over {} ms",
                (lease / 6).as_millis()
            ))),
        };
        match result {
            Ok(renewed) => {
                last_good = sent;
                e.cluster.answered();
                if e.cluster.leases_lost.swap(false, Ordering::SeqCst) {
                    tracing::info!("leases renewed again: taking jobs from the queue again");
                }
                let kept: HashSet<&String> = renewed.jobs.iter().chain(&renewed.slots).collect();
                let lost: Vec<&String> = jobs
                    .iter()
                    .chain(&slots)
                    .filter(|id| !kept.contains(id))
                    .collect();
                for id in lost {
                    // Settled since the snapshot, or lapsed and taken by another.
                    let still = locked(&e.cluster.held_jobs).contains(id)
                        || locked(&e.cluster.held_slots).contains(id);
                    if still {
                        cancel(
                            &e,
                            id,
                            &format!("{LEASE_LAPSED}: another daemon may hold it"),
                        );
                    }
                }
            }
            Err(err) => {
                e.cluster.failed(&err);
                if last_good.elapsed() > lease / 2
                    && !e.cluster.leases_lost.swap(true, Ordering::SeqCst)
                {
                    tracing::warn!(
                        "this daemon's leases went unrenewed for {} ms: cancelling what it runs under them, which other daemons may take",
                        last_good.elapsed().as_millis()
                    );
                    let (jobs, slots) = e.cluster.held();
                    for id in jobs.iter().chain(&slots) {
                        cancel(
                            &e,
                            id,
                            &format!("{LEASE_LAPSED} while the shared store was away"),
                        );
                    }
                }
            }
        }
        // Sync invocations hold slots too: renewed until the last one ends.
        let (jobs_left, slots_left) = e.cluster.held();
        let stopping = e.admission.is_closed() && jobs_left.is_empty() && slots_left.is_empty();
        drop(e);
        if stopping {
            return;
        }
        tokio::time::sleep((lease / 3).saturating_sub(sent.elapsed())).await;
    }
}

fn cancel(engine: &Engine, id: &str, reason: &str) {
    if let Some(entry) = engine.running.get(id) {
        entry.cancel(reason.to_owned());
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
            // The store failed around the attempt: another one, later.
            engine.cluster.failed(&e);
            tracing::warn!("queued invocation {id}: {}", crate::error_chain(&e));
            Settle::Retry(STORE_RETRY)
        }
    };
    settle_job(&engine, &id, settle).await;
    locked(&engine.cluster.held_jobs).remove(&id);
    engine.cluster.wake();
}

/// Runs one claimed attempt, recording it; says how the job leaves. What
/// fails before the attempt starts gives the job back uncounted.
async fn attempt_job(engine: &Arc<Engine>, job: ClaimedJob) -> Result<Settle, EngineError> {
    let started = match prepare_job(engine, &job).await {
        Ok(Prepared::Run(started)) => started,
        Ok(Prepared::Settled(settle)) => return Ok(settle),
        Err(e) => {
            engine.cluster.failed(&e);
            tracing::warn!(
                "queued invocation {}: {} (back to the queue)",
                job.id,
                crate::error_chain(&e)
            );
            // The store away costs the job nothing; anything else (a
            // version this daemon cannot read, say) counts its claim, so a
            // job no daemon can start ends after a few.
            return Ok(match e {
                EngineError::StoreUnavailable(_) => Settle::GiveBack(STORE_RETRY),
                _ => Settle::Retry(STORE_RETRY),
            });
        }
    };
    let Started {
        version,
        record,
        slots,
        last,
    } = *started;
    let entry = engine.running.register(&record)?;
    if engine.cluster.leases_lost.load(Ordering::SeqCst) {
        // The keeper's sweep may have missed it (not yet registered).
        return Ok(Settle::GiveBack(STORE_RETRY));
    }
    let (record, _) = engine
        .run(version, record, job.body.into(), slots, false, !last)
        .await?;
    let lapsed = entry
        .cancel_reason()
        .is_some_and(|why| why.starts_with(LEASE_LAPSED));
    drop(entry);
    if lapsed {
        // Cancelled because its lease lapsed: back to the queue, counted
        // (a no-op if another daemon holds it now).
        return Ok(Settle::Retry(Duration::ZERO));
    }
    if record.succeeded() {
        return Ok(Settle::Finish);
    }
    if engine.admission.is_closed() && !last {
        // The daemon is stopping and ended it: another daemon runs it again.
        return Ok(Settle::Retry(Duration::ZERO));
    }
    if last || record.status == "cancelled" {
        // Its attempt was saved as `queued` when another could follow: the
        // record must say how it ended before the job leaves the queue.
        if !last {
            let e = Arc::clone(engine);
            let final_record = record.clone();
            blocking(move || e.store.update_invocation(&final_record)).await?;
        }
        return Ok(Settle::Finish);
    }
    Ok(Settle::Retry(Duration::from_millis(
        100 << record.attempts.saturating_sub(1).min(6),
    )))
}

/// What a claimed job needs to start: its version, record and slots.
struct Started {
    version: crate::VersionInfo,
    record: crate::InvocationRecord,
    slots: crate::admission::Slots,
    last: bool,
}

enum Prepared {
    Run(Box<Started>),
    /// It ends here without an attempt.
    Settled(Settle),
}

async fn prepare_job(engine: &Arc<Engine>, job: &ClaimedJob) -> Result<Prepared, EngineError> {
    let e = Arc::clone(engine);
    let id = job.id.clone();
    let mut record = match blocking(move || e.store.invocation(&id)).await {
        Ok(record) => record,
        // Its function went, records and all.
        Err(EngineError::NoInvocation(_)) => return Ok(Prepared::Settled(Settle::Finish)),
        Err(err) => return Err(err),
    };
    // A previous holder recorded the end and died before taking it out.
    if record.finished() {
        return Ok(Prepared::Settled(Settle::Finish));
    }
    // A job whose daemons keep stopping before its attempt begins (one it
    // crashes, say) is not handed round for ever.
    if job.attempt > job.retries + 1 + LOST_CLAIMS {
        record.status = "error".into();
        record.ended_at = Some(crate::store::now());
        record.error = Some(format!(
            "taken {} times by daemons that stopped or failed before starting it",
            job.attempt - 1
        ));
        return finish_with(engine, record).await;
    }
    // Attempts are counted when they begin (the record says `running` on
    // its node), not when a job is claimed: a daemon that died between its
    // claim and the start cost the job nothing.
    if record.attempts > job.retries {
        // Its last allowed attempt was on a daemon that stopped mid-way.
        record.status = "error".into();
        record.ended_at = Some(crate::store::now());
        record.error = Some(format!(
            "the daemon running its last attempt ({}) stopped before it finished; {} attempt(s) allowed",
            record.node.as_deref().unwrap_or("unknown"),
            job.retries + 1
        ));
        return finish_with(engine, record).await;
    }
    let (version, cap) = match engine.resolve(&job.function, Some(job.version)).await {
        Ok(found) => found,
        Err(err @ (EngineError::NoFunction(_) | EngineError::NoVersion(..))) => {
            record.status = "error".into();
            record.ended_at = Some(crate::store::now());
            record.error = Some(err.to_string());
            return finish_with(engine, record).await;
        }
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
    let give_back = Prepared::Settled(Settle::GiveBack(Duration::from_millis(50 + jitter)));
    let Some(mut slots) = engine.admission.try_slots(&job.function, cap)? else {
        return Ok(give_back);
    };
    let Some(slot) = engine
        .try_cluster_slot(&job.function, cap, &job.id, lease)
        .await?
    else {
        return Ok(give_back);
    };
    slots.cluster = Some(slot);
    let node = engine.config.node.clone();
    record.node = Some(node.clone());
    record.nodes.push(node);
    let last = record.attempts >= job.retries; // the attempt counts itself
    Ok(Prepared::Run(Box::new(Started {
        version,
        record,
        slots,
        last,
    })))
}

/// Records how a job ended without an attempt, then takes it out.
async fn finish_with(
    engine: &Arc<Engine>,
    record: crate::InvocationRecord,
) -> Result<Prepared, EngineError> {
    let e = Arc::clone(engine);
    blocking(move || e.store.update_invocation(&record)).await?;
    Ok(Prepared::Settled(Settle::Finish))
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
