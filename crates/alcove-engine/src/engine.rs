//! The engine: deploys versions, admits invocations, runs each in a fresh
//! sandbox on a blocking thread, records what happened, and stops within a
//! bounded time, killing what still runs.

use crate::admission::{Admission, Slots};
use crate::code;
use crate::limits::FunctionLimits;
use crate::metrics::Metrics;
use crate::model::{DeployRequest, Deployed, FunctionInfo, InvocationRecord, VersionInfo};
use crate::store::{now, SqliteStore, Store};
use crate::EngineError;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the engine keeps its state, how much it runs and holds at once, and
/// what it allows each function.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Sandboxes running at once, over all functions.
    pub max_running: usize,
    /// Invocations accepted but not running (waiting for a slot, async ones
    /// until they end), over all functions; beyond it, `Busy`.
    pub max_queued: usize,
    /// Bytes of request bodies those invocations may hold in all; beyond it, `Busy`.
    pub max_queued_bytes: u64,
    /// How long finished invocation records are kept, in seconds.
    pub keep_records_secs: f64,
    /// The image store functions with an image run from.
    pub image_store: PathBuf,
    /// The `alcove-accel` program, started when a function first needs it.
    pub accel_program: PathBuf,
    /// Each function's defaults and maxima.
    pub limits: FunctionLimits,
    /// Host directories functions may bind paths from (none: no binds).
    pub allow_binds: Vec<crate::AllowedBind>,
    /// What warm functions may use.
    pub warm: crate::WarmConfig,
    /// What every invocation is watched with (eBPF).
    pub monitor: crate::MonitorMode,
    /// This daemon's name in records, slots and metrics (the host name by default).
    pub node: String,
    /// The store several daemons share (PostgreSQL); None: SQLite in `data_dir`.
    pub shared: Option<crate::SharedStoreConfig>,
    /// Agent sandboxes held at once.
    pub max_sandboxes: usize,
    /// Default agent sandboxes kept started ahead of creates (0: none;
    /// at most `sandboxes::MAX_POOL`).
    pub sandbox_pool: usize,
    /// The resolver outbound agent sandboxes' allowed names are asked of
    /// (None: the host's first nameserver).
    pub sandbox_dns: Option<std::net::SocketAddr>,
}

/// Old records are purged once per this many invocations.
const PURGE_EVERY: usize = 1024;

/// What an alcove data directory may hold besides its database; an existing
/// directory holding anything else is not taken as one.
const DATA_DIR_ENTRIES: [&str; 11] = [
    "daemon.lock",
    "alcove.db",
    "alcove.db-wal",
    "alcove.db-shm",
    "code",
    "secrets",
    "tmp",
    "images",
    "token",
    "sandbox-templates",
    "sandboxes",
];

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            data_dir,
            max_running: 4 * cpus,
            max_queued: 1024,
            max_queued_bytes: 256 << 20,
            keep_records_secs: 7.0 * 86400.0,
            image_store: alcove_image::DEFAULT_STORE.into(),
            accel_program: std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("alcove-accel")))
                .filter(|p| p.exists())
                .unwrap_or_else(|| "alcove-accel".into()),
            limits: FunctionLimits::default(),
            allow_binds: Vec::new(),
            warm: crate::WarmConfig::default(),
            monitor: crate::MonitorMode::default(),
            node: host_name(),
            shared: None,
            max_sandboxes: 1024,
            sandbox_pool: 2,
            sandbox_dns: None,
        }
    }
}

/// The host's name, as `uname -n` says it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A finished synchronous invocation: its record and the handler's stdout.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub record: InvocationRecord,
    pub response: Vec<u8>,
}

/// The engine. Share it behind an `Arc`; its async methods need a tokio runtime.
pub struct Engine {
    pub(crate) config: EngineConfig,
    /// Held while this engine lives: one daemon per data directory (a
    /// second would reclaim the first's sandboxes in the making).
    _data_lock: std::fs::File,
    pub(crate) store: Store,
    pub(crate) admission: Admission,
    /// Functions as last read from the store, so an invocation does not read
    /// and parse every version; deploy, rollback and remove drop the entry.
    known: Mutex<HashMap<String, Arc<FunctionInfo>>>,
    /// Invocations recorded since the last purge of old records.
    since_purge: AtomicUsize,
    /// Opened when a function first needs an image.
    images: std::sync::OnceLock<alcove_image::Store>,
    /// Started when a function first needs it.
    pub(crate) accel: Mutex<Option<crate::accel::Service>>,
    /// The eBPF monitor every invocation is watched by, and the event stream.
    pub(crate) monitor: crate::monitoring::EngineMonitor,
    /// Functions learning their policy.
    pub(crate) learning: crate::learning::Learning,
    /// Every sandbox polls this pipe's read end; closing the write end
    /// (shutdown) kills them all.
    pub(crate) cancel: Arc<OwnedFd>,
    cancel_all: Mutex<Option<OwnedFd>>,
    /// Invocation tasks alive (sync ones from acceptance, async ones until
    /// their last attempt), and a wake-up when that reaches zero.
    in_flight: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
    /// Held while code is stored for a deploy or unreferenced code removed.
    pub(crate) code_lock: Mutex<()>,
    /// What a daemon on a shared store does for the cluster.
    pub(crate) cluster: crate::cluster::Cluster,
    /// The invocations in flight, each with its own cancel.
    pub(crate) running: Arc<crate::running::Running>,
    /// Warm functions' templates.
    pub(crate) warm: crate::warm::WarmTemplates,
    /// gVisor functions' pools of sandboxes booted ahead.
    pub(crate) gvisor: crate::gvisor_pool::GvisorPools,
    /// This engine, for threads that outlive a call (a template's rebuild).
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Engine>>,
    pub(crate) sandboxes: crate::sandboxes::Sandboxes,
    pub metrics: Metrics,
    /// Each function's last hour, minute by minute (the console's charts).
    pub(crate) stats: crate::stats::InvocationStats,
}

/// An invocation task alive; the engine waits for these at shutdown.
pub(crate) struct InFlight {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Runs blocking work (the store, the sandbox) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("a blocking task failed: {e}")))?
}

/// Refuses an `--allow-bind` directory that holds the data directory or lies
/// in it: a function could bind the database (every secret) or another
/// function's secrets.
fn check_binds_miss_data_dir(config: &EngineConfig) -> Result<(), EngineError> {
    let data = std::fs::canonicalize(&config.data_dir)
        .map_err(EngineError::io("resolving the data directory"))?;
    for a in &config.allow_binds {
        if data.starts_with(&a.dir) || a.dir.starts_with(&data) {
            return Err(EngineError::Invalid(format!(
                "--allow-bind {}: alcove's data directory {} (its database holds every secret) \
                 would be open to functions; allow a directory beside it, or move --data-dir",
                a.dir.display(),
                data.display()
            )));
        }
    }
    Ok(())
}

/// Checks that `dir` is, or can become, alcove's: new, empty, or holding only
/// what alcove puts there. Returns whether it had to be created.
fn claim_data_dir(dir: &Path) -> Result<bool, EngineError> {
    let io = EngineError::io("preparing the data directory");
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(&io)?;
            }
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(dir)
                .map_err(&io)?;
            Ok(true)
        }
        Err(e) => Err(io(e)),
        Ok(entries) => {
            let mut foreign: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !DATA_DIR_ENTRIES.contains(&n.as_str()))
                .collect();
            if foreign.is_empty() {
                return Ok(false);
            }
            foreign.sort();
            foreign.truncate(5);
            Err(EngineError::Invalid(format!(
                "{} is not an alcove data directory: it holds {} and alcove would take it over; \
                 give --data-dir a new or empty directory (alcove creates it, mode 0700)",
                dir.display(),
                foreign.join(", ")
            )))
        }
    }
}

/// Takes the data directory's lock, or says which daemon holds it.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, EngineError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let io = EngineError::io("locking the data directory");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join("daemon.lock"))
        .map_err(&io)?;
    // `alcove gc` takes the lock for an instant to learn whether a daemon
    // runs (sandboxes::gc_sandbox_homes): a start at that instant retries.
    let mut held = false;
    for _ in 0..20 {
        held =
            alcove_sys::fd::flock(file.as_fd(), alcove_sys::fd::Lock::TryExclusive).map_err(&io)?;
        if held {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if !held {
        return Err(EngineError::Invalid(format!(
            "another alcove daemon is using the data directory {}: stop it first, or give this \
             one another --data-dir",
            dir.display()
        )));
    }
    Ok(file)
}

impl Engine {
    /// Opens (or creates) the data directory and store, marks invocations a
    /// previous daemon left in flight as failed, and removes what its killed
    /// sandboxes left behind and the code no version runs any more.
    pub fn open(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        config.limits.check().map_err(EngineError::Invalid)?;
        claim_data_dir(&config.data_dir)?;
        let data_lock = lock_data_dir(&config.data_dir)?;
        check_binds_miss_data_dir(&config)?;
        let _ = std::fs::remove_dir_all(config.data_dir.join("tmp")); // half-done deploys
        let store = match &config.shared {
            None => Store::new(SqliteStore::open(&config.data_dir.join("alcove.db"))?),
            Some(shared) => {
                crate::valid_node(&config.node).map_err(EngineError::Invalid)?;
                let key = crate::store::SecretBox::from_hex(&shared.secrets_key)?;
                Store::new(crate::store::PgStore::open(
                    &shared.url,
                    &config.node,
                    key,
                    shared.wait,
                    shared.ca_file.as_deref(),
                )?)
            }
        };
        store.recover()?;
        let _ = alcove_sandbox::gc_orphans();
        alcove_warm::gc_sockets();
        let metrics = Metrics::new(config.shared.is_some().then_some(config.node.as_str()));
        metrics.pool_slots.set(alcove_sandbox::POOL_SLOTS as i64);
        let (cancel, cancel_all) = alcove_sys::fd::pipe_cloexec()
            .map_err(EngineError::io("creating the shutdown pipe"))?;
        let monitor = crate::monitoring::EngineMonitor::new(config.monitor);
        let config_max_sandboxes = config.max_sandboxes;
        let config_sandbox_pool = config.sandbox_pool;
        let engine = Arc::new(Engine {
            admission: Admission::new(
                config.max_running,
                config.max_queued,
                config.max_queued_bytes,
                metrics.queued.clone(),
            ),
            config,
            _data_lock: data_lock,
            store,
            known: Mutex::new(HashMap::new()),
            since_purge: AtomicUsize::new(0),
            images: std::sync::OnceLock::new(),
            accel: Mutex::new(None),
            monitor,
            learning: Default::default(),
            cancel: Arc::new(cancel),
            cancel_all: Mutex::new(Some(cancel_all)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            idle: Arc::new(tokio::sync::Notify::new()),
            code_lock: Mutex::new(()),
            cluster: Default::default(),
            running: Arc::default(),
            warm: Default::default(),
            gvisor: Default::default(),
            me: std::sync::OnceLock::new(),
            sandboxes: crate::sandboxes::Sandboxes::new(config_max_sandboxes, config_sandbox_pool),
            metrics,
            stats: Default::default(),
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        engine.remove_unused_code()?;
        engine.unpin_removed();
        engine.monitor.start();
        engine.restore_warm();
        engine.restore_pools();
        engine.start_cluster()?;
        engine.clean_template_staging();
        engine.restore_sandboxes();
        engine.start_sandbox_reaper();
        Ok(engine)
    }

    /// The operator's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Deploys a new version and points `latest` at it, inheriting what the
    /// request leaves out from `latest` (see [`crate::ConfigChange`]); when
    /// the result equals `latest`, makes none. Blocking: call it from a
    /// blocking thread.
    pub fn deploy(&self, req: DeployRequest) -> Result<Deployed, EngineError> {
        check_name(&req.name)?;
        // One deploy at a time: each reads `latest` and adds the version after it.
        let _code = self.code_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut plan, latest) = self.plan(&req)?;
        self.resolve_learned(&req.name, &mut plan.config.guard)?;
        validate(&mut plan, &self.config.limits, &self.config.allow_binds)?;
        let mut pinned = false;
        if plan.config.image_id.is_none() {
            if let Some(name) = &plan.config.image {
                // Pinned for the function (an inherited image_id is pinned
                // already), so that `image rm` and `prune` leave it.
                let (key, holder) = crate::image::pin_of(&self.config.data_dir, &req.name);
                let record = self.image_store()?.pin(name, &key, &holder).map_err(|e| {
                    EngineError::Invalid(format!(
                        "image {name:?}: {e} (import it with `alcove image import`)"
                    ))
                })?;
                plan.config.image_id = Some(record.id);
                pinned = true;
            }
        }
        let done = (|| {
            if let Some(tar) = &req.code_tar {
                let digest = code::store_code(&self.config.data_dir, tar)?;
                if let Some(shared) = self.store.shared() {
                    shared.put_code(&digest, tar)?;
                }
                plan.code_digest = Some(digest);
                plan.inherited.retain(|s| s != "code");
            }
            crate::config_change::finish(self, req.name, plan, latest)
        })();
        if done.is_err() && pinned {
            // A first deploy that failed leaves no function to hold the pin.
            self.unpin_removed_locked();
        }
        done
    }

    pub(crate) fn image_store(&self) -> Result<&alcove_image::Store, EngineError> {
        if let Some(store) = self.images.get() {
            return Ok(store);
        }
        let store = alcove_image::Store::open(&self.config.image_store).map_err(|e| {
            EngineError::Invalid(format!(
                "the image store: {}",
                alcove_sandbox::error_chain(&e)
            ))
        })?;
        Ok(self.images.get_or_init(|| store))
    }

    pub(crate) fn forget(&self, name: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    fn remembered(&self, name: &str) -> Option<Arc<FunctionInfo>> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The function, read from the store (blocking) and remembered.
    fn load_function(&self, name: &str) -> Result<Arc<FunctionInfo>, EngineError> {
        let f = Arc::new(self.store.function(name)?);
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::clone(&f));
        Ok(f)
    }

    pub fn functions(&self) -> Result<Vec<FunctionInfo>, EngineError> {
        self.store
            .function_names()?
            .iter()
            .map(|n| self.store.function(n))
            .collect()
    }

    pub fn function(&self, name: &str) -> Result<FunctionInfo, EngineError> {
        self.store.function(name)
    }

    /// Points `latest` at an earlier (or later) version.
    pub fn rollback(&self, name: &str, version: u32) -> Result<FunctionInfo, EngineError> {
        self.store.set_latest(name, version)?;
        self.forget(name);
        self.follow_latest(name);
        self.store.function(name)
    }

    /// Removes a function, its versions, secrets and invocation records, and
    /// its code where no other version shares it; refused while it has
    /// invocations in flight (see [`Engine::remove_function`]).
    pub fn remove(&self, name: &str) -> Result<(), EngineError> {
        let _removal = self.running.begin_removal(name, false)?;
        self.remove_unchecked(name)
    }

    pub(crate) fn remove_unchecked(&self, name: &str) -> Result<(), EngineError> {
        {
            // Not between a change's reading `latest` and its recording the
            // next version: that would bring the function back.
            let _code = self.code_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.store.delete_function(name)?;
            self.stop_pool(name); // before its series goes: it sets it to 0
            self.metrics.forget_function(name);
            self.stats.forget(name);
            self.forget_learning(name);
            self.stop_template(name);
            self.forget(name);
            self.admission.forget(name);
            let _ = std::fs::remove_dir_all(self.config.data_dir.join("secrets").join(name));
        }
        self.unpin_removed();
        self.remove_unused_code()
    }

    /// Drops this daemon's image pins of functions that no longer exist
    /// (removed now, or before a crash). Best effort: a pin left behind
    /// only keeps layers from `image prune`.
    fn unpin_removed(&self) {
        // Under the deploy lock: a deploy of a new function pins its image
        // before its first version is recorded, and that pin must stay.
        let _code = self.code_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.unpin_removed_locked()
    }

    /// [`Self::unpin_removed`], for a caller that holds the deploy lock.
    fn unpin_removed_locked(&self) {
        if !self.config.image_store.join("pins").is_dir() {
            return; // never pinned: do not create a store
        }
        let Ok(images) = self.image_store() else {
            return;
        };
        let Ok(names) = self.store.function_names() else {
            return;
        };
        let prefix = crate::image::pin_of(&self.config.data_dir, "").0;
        for key in images.pin_keys() {
            if let Some(function) = key.strip_prefix(&prefix) {
                if !names.iter().any(|n| n == function) {
                    let _ = images.unpin(&key);
                }
            }
        }
    }

    /// Deletes stored code that no version runs (removed functions, and what
    /// a daemon killed between storing code and recording its version left).
    fn remove_unused_code(&self) -> Result<(), EngineError> {
        let _code = self.code_lock.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.store.code_digests()?;
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("code")) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !used.contains(name.to_string_lossy().as_ref()) {
                // remove_dir_all removes the links stored code holds, never
                // what they point at.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    pub fn invocation(&self, id: &str) -> Result<InvocationRecord, EngineError> {
        self.store.invocation(id)
    }

    /// A function's invocations that `filter` picks, newest first.
    pub fn logs(
        &self,
        name: &str,
        filter: &crate::InvocationFilter,
    ) -> Result<Vec<InvocationRecord>, EngineError> {
        self.store.function(name)?;
        self.store.recent_invocations(name, filter)
    }

    /// A function's last hour, minute by minute, as this daemon ran it.
    pub fn function_stats(&self, name: &str) -> Result<crate::FunctionStats, EngineError> {
        self.store.function(name)?;
        Ok(self.stats.of(name, crate::store::now()))
    }

    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            count: Arc::clone(&self.in_flight),
            idle: Arc::clone(&self.idle),
        }
    }

    /// Runs `name` (its `latest` version unless `version`) once with `body` on
    /// stdin, and returns the record and stdout. The handler sees a POST to
    /// `/` ([`invoke_request`](Self::invoke_request) gives it a request).
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
        body: Vec<u8>,
    ) -> Result<Invocation, EngineError> {
        let request = crate::HttpRequest::post(&format!("/v1/functions/{name}/invoke"));
        Ok(self.invoke_request(name, version, &request, body).await?.0)
    }

    /// Queues an invocation and returns its record at once; it runs in the
    /// background, retried up to `retries` more times while it fails. Its
    /// body counts against the backlog until its last attempt ends.
    pub async fn invoke_async(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
        body: Vec<u8>,
        retries: u32,
    ) -> Result<InvocationRecord, EngineError> {
        if self.store.shared().is_some() {
            return self.enqueue(name, version, body, retries).await;
        }
        let ticket = self.admission.enter(body.len())?;
        let (v, cap) = self.resolve(name, version).await?;
        let record = {
            let (engine, v) = (Arc::clone(self), v.clone());
            blocking(move || {
                let record = engine.new_record(&v, true);
                // Registered first, so a removal of the function sees it
                // or the store refuses it.
                let entry = engine.running.register(&record)?;
                engine.store.insert_invocation(&record)?;
                Ok((record, entry))
            })
            .await?
        };
        let (record, entry) = record;
        let queued = record.clone();
        let engine = Arc::clone(self);
        let alive = self.in_flight();
        tokio::spawn(async move {
            let _alive = alive;
            engine
                .run_async(v, cap, record, body, retries, &entry)
                .await;
            drop(ticket);
        });
        Ok(queued)
    }

    /// Queues an async invocation in the shared store, for any daemon to
    /// take; the queue there is the backlog, bounded cluster-wide by
    /// `max_queued` jobs.
    async fn enqueue(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
        body: Vec<u8>,
        retries: u32,
    ) -> Result<InvocationRecord, EngineError> {
        if self.admission.is_closed() {
            return Err(EngineError::Stopping);
        }
        let (v, _) = self.resolve(name, version).await?;
        let engine = Arc::clone(self);
        let record = blocking(move || {
            let shared = engine
                .store
                .shared()
                .ok_or_else(|| EngineError::Internal("no shared store to queue in".into()))?;
            let depth = shared.queue_depth()?;
            if depth >= engine.config.max_queued as u64 {
                return Err(EngineError::Busy(format!(
                    "{depth} invocations are queued in the cluster (--max-queued {}); retry later",
                    engine.config.max_queued
                )));
            }
            let record = engine.new_record(&v, true);
            shared.enqueue(&record, &body, retries)?;
            Ok(record)
        })
        .await?;
        self.cluster.wake();
        Ok(record)
    }

    async fn run_async(
        self: &Arc<Self>,
        v: VersionInfo,
        cap: u32,
        mut record: InvocationRecord,
        body: Vec<u8>,
        retries: u32,
        entry: &crate::running::Entry,
    ) {
        for attempt in 0..=retries {
            let slots = match self.slots_unless_cancelled(entry, &v.function, cap).await {
                Ok(Some(slots)) => slots,
                Ok(None) => {
                    entry.mark_cancelled(&mut record);
                    break;
                }
                Err(e) => {
                    record.error = Some(e.to_string());
                    break;
                }
            };
            let last = attempt == retries;
            let input = body.clone().into();
            let run = self.run(v.clone(), record.clone(), input, slots, false, !last);
            match run.await {
                Ok((r, _)) => record = r,
                Err(e) => {
                    record.error = Some(e.to_string());
                    break;
                }
            }
            if record.succeeded() || last {
                break;
            }
            // The backoff ends early when the daemon stops or a client cancels.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))) => {}
                () = self.admission.closed() => break,
                () = entry.cancelled() => {
                    entry.mark_cancelled(&mut record);
                    break;
                }
            }
        }
        if record.succeeded() {
            return; // stored as it is by its attempt
        }
        // The store may say `queued` (another attempt was to follow).
        if !record.finished() {
            record.status = "error".into();
            record
                .error
                .get_or_insert_with(|| "the daemon stopped before this invocation ran".into());
            record.ended_at = Some(now());
        }
        let engine = Arc::clone(self);
        let _ = blocking(move || engine.store.update_invocation(&record)).await;
    }

    /// One attempt on a blocking thread, holding `slots` until it ends;
    /// `insert` records the invocation first (synchronous invocations are
    /// recorded once they have a slot).
    pub(crate) async fn run(
        self: &Arc<Self>,
        v: VersionInfo,
        mut record: InvocationRecord,
        input: crate::http::Input,
        slots: Slots,
        insert: bool,
        retry_on_failure: bool,
    ) -> Result<(InvocationRecord, Vec<u8>), EngineError> {
        let engine = Arc::clone(self);
        blocking(move || {
            let _slots = slots;
            if insert {
                engine.store.insert_invocation(&record)?;
            }
            let response = engine.attempt_blocking(&v, &mut record, input, retry_on_failure)?;
            Ok((record, response))
        })
        .await
    }

    /// The version to run and its function's concurrency cap (the `latest`
    /// version's), reading the store off the async threads when needed.
    pub(crate) async fn resolve(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
    ) -> Result<(VersionInfo, u32), EngineError> {
        let f = match self.remembered(name) {
            // Another daemon may have deployed since: on a shared store, the
            // cached function holds only while its `latest` is the store's.
            Some(f) if self.store.shared().is_some() => {
                let (engine, name) = (Arc::clone(self), name.to_owned());
                blocking(move || match engine.store.latest(&name)? {
                    Some(latest)
                        if latest == f.latest && f.versions.iter().any(|v| v.version == latest) =>
                    {
                        Ok(f)
                    }
                    Some(_) => {
                        engine.forget(&name);
                        engine.load_function(&name)
                    }
                    None => {
                        engine.forget(&name);
                        Err(EngineError::NoFunction(name))
                    }
                })
                .await?
            }
            Some(f) => f,
            None => {
                let (engine, name) = (Arc::clone(self), name.to_owned());
                blocking(move || engine.load_function(&name)).await?
            }
        };
        let cap = f
            .versions
            .iter()
            .find(|v| v.version == f.latest)
            .map_or(1, |v| v.config.concurrency);
        let wanted = version.unwrap_or(f.latest);
        let v = match f.versions.iter().find(|v| v.version == wanted) {
            Some(v) => v.clone(),
            // A version deployed (through another daemon) after the cache
            // was filled: read the function again before saying no.
            None if self.store.shared().is_some() => {
                let (engine, owned) = (Arc::clone(self), name.to_owned());
                let fresh = blocking(move || {
                    engine.forget(&owned);
                    engine.load_function(&owned)
                })
                .await?;
                fresh
                    .versions
                    .iter()
                    .find(|v| v.version == wanted)
                    .cloned()
                    .ok_or_else(|| EngineError::NoVersion(name.to_owned(), wanted))?
            }
            None => return Err(EngineError::NoVersion(name.to_owned(), wanted)),
        };
        Ok((v, cap))
    }

    /// A new record (not yet stored), and now and then a purge of old ones.
    pub(crate) fn new_record(&self, v: &VersionInfo, is_async: bool) -> InvocationRecord {
        if self.since_purge.fetch_add(1, Ordering::Relaxed) + 1 >= PURGE_EVERY {
            self.since_purge.store(0, Ordering::Relaxed);
            let before = now() - self.config.keep_records_secs;
            // Off the caller's thread, which may be an async one (a shared
            // store's call may wait for the network).
            let me = self.me.get().cloned();
            match (tokio::runtime::Handle::try_current(), me) {
                (Ok(runtime), Some(me)) => drop(runtime.spawn_blocking(move || {
                    if let Some(engine) = me.upgrade() {
                        let _ = engine.store.purge_invocations(before);
                    }
                })),
                _ => drop(self.store.purge_invocations(before)),
            }
        }
        InvocationRecord {
            id: alcove_sys::process::random_id(),
            function: v.function.clone(),
            version: v.version,
            status: "queued".into(),
            is_async,
            created_at: now(),
            // A shared store's queued job gets the node that runs it.
            node: (!is_async || self.store.shared().is_none()).then(|| self.config.node.clone()),
            ..InvocationRecord::default()
        }
    }

    /// Stops the engine: refuses new invocations at once, lets running ones
    /// finish for up to `grace`, then kills every sandbox still running and
    /// waits (up to `grace` again) for their teardown and records. Returns
    /// how many invocations were still in flight when it gave up waiting.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.admission.close();
        if !self.wait_idle(grace).await {
            drop(
                self.cancel_all
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            self.wait_idle(grace.max(Duration::from_secs(5))).await;
        }
        // Templates and their ready copies go with the daemon, cgroups and all,
        // and so do the cgroups of copies that served (removed on a thread
        // after their responses: a SIGTERM right after one left its cgroup).
        self.stop_all_templates();
        let me = self.me.get().and_then(std::sync::Weak::upgrade);
        let left = tokio::task::spawn_blocking(move || {
            if let Some(engine) = me {
                engine.stop_all_pools();
            }
            alcove_sandbox::wait_for_teardowns(Duration::from_secs(10))
        })
        .await
        .unwrap_or(0);
        if left > 0 {
            tracing::warn!(
                "{left} used warm copies' cgroups not yet removed at shutdown (run `alcove gc`)"
            );
        }
        // And agent sandboxes' processes (they cannot outlive the daemon);
        // their files and records stay for the next one.
        self.stop_all_sandboxes().await;
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no invocation is in flight, for up to `limit`.
    async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), EngineError> {
    if crate::valid_name(name) {
        return Ok(());
    }
    Err(EngineError::Invalid(format!(
        "function name {name:?}: use 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )))
}

/// The most binds a function has.
const MAX_BINDS: usize = 64;

fn validate(
    plan: &mut crate::config_change::Plan,
    limits: &FunctionLimits,
    allowed: &[crate::AllowedBind],
) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::Invalid(m));
    limits
        .check_and_fill(&mut plan.config)
        .map_err(EngineError::Invalid)?;
    let c = &plan.config;
    if c.runtime.is_some() && !c.handler.is_empty() {
        return invalid(format!(
            "runtime {:?} and handler {:?}: give one (the runtime is the handler)",
            c.runtime.as_deref().unwrap_or_default(),
            c.handler
        ));
    }
    if c.entry.is_some() && c.runtime.is_none() {
        return invalid(
            "entry: it names the file a --runtime serves; give --runtime python".into(),
        );
    }
    crate::warm::check_config(c).map_err(EngineError::Invalid)?;
    c.guard
        .check(c.warm)
        .map_err(|e| EngineError::Invalid(format!("guard: {e}")))?;
    let no_handler = c.handler.is_empty() && c.image.is_none() && c.runtime.is_none();
    if no_handler || c.handler.iter().any(|a| a.is_empty() || a.contains('\0')) {
        return invalid(
            "handler: give the command to run, such as [\"python3\", \"/fn/main.py\"]".into(),
        );
    }
    if let Some(a) = &c.accel {
        if !["auto", "cpu", "gpu"].contains(&a.as_str()) {
            return invalid(format!("accel {a:?}: use \"auto\", \"cpu\" or \"gpu\""));
        }
        // Refused now rather than failing every invocation later.
        if a == "gpu" && crate::attempt::gpu_device_nodes().is_empty() {
            return invalid(
                "accel \"gpu\": this machine has no GPU (no /dev/nvidia* devices); deploy with \
                 --accel auto (the CPU until a GPU is there) or --accel cpu"
                    .into(),
            );
        }
    }
    crate::http::check_config(c).map_err(EngineError::Invalid)?;
    check_isolation(c)?;
    if c.net != "none" && c.net != "host" {
        return invalid(format!("net {:?}: use \"none\" or \"host\"", c.net));
    }
    if c.concurrency == 0 || c.concurrency > 10_000 {
        return invalid(format!("concurrency {}: use 1 to 10000", c.concurrency));
    }
    crate::config_change::check_secrets(&plan.secrets)?;
    crate::config_change::check_env_size(c)?;
    // Each bind is a descriptor and a mount at every invocation.
    if c.binds.len() > MAX_BINDS {
        return invalid(format!(
            "{} binds: a function may have at most {MAX_BINDS}; bind a directory above them",
            c.binds.len()
        ));
    }
    // Code and secrets are mounted after the binds, over them: a bind there
    // would be hidden, and one above them (/run) would fail every invocation.
    for b in &c.binds {
        let target = std::path::Path::new(&b.target);
        for reserved in ["/fn", "/run/secrets"] {
            let reserved = std::path::Path::new(reserved);
            if target.starts_with(reserved) || reserved.starts_with(target) {
                return invalid(format!(
                    "bind {}:{}: /fn and /run/secrets are alcove's (the code and the secrets), \
                     and so is what holds them; bind elsewhere, such as /data",
                    b.source, b.target
                ));
            }
        }
    }
    // The rest (memory, CPUs, env, binds...) is checked as the sandbox
    // would check it (with an image and no handler, its command stands in).
    let mut spec = crate::function_spec::base_spec(c, &limits.effective(c), allowed)?;
    if spec.argv.is_empty() {
        spec.argv = vec!["true".into()];
    }
    spec.validate()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    // Sources are stored resolved: what `fn show` lists is what is checked.
    for (b, resolved) in plan.config.binds.iter_mut().zip(&spec.binds) {
        b.source = resolved.source.to_string_lossy().into_owned();
    }
    Ok(())
}

/// The isolation tier and what it allows: gVisor runs neither warm
/// templates (its pool takes their place), nor eBPF rules (they would see
/// the Sentry's syscalls, not the handler's), nor the accelerator (a host
/// descriptor), nor a CPU-time limit (not yet).
fn check_isolation(c: &crate::model::FunctionConfig) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::Invalid(m));
    match c.isolation.as_str() {
        "container" => {
            if c.pool.is_some() {
                return invalid(
                    "pool: it sizes a gVisor function's pool of booted sandboxes; give \
                     --isolation gvisor, or leave --pool out"
                        .into(),
                );
            }
            Ok(())
        }
        "gvisor" => {
            let refused = [
                (
                    c.warm,
                    "warm (its pool of booted sandboxes takes the place of warm starts)",
                ),
                (
                    !c.guard.is_empty(),
                    "guard (eBPF would watch gVisor's own syscalls, not the handler's)",
                ),
                (c.accel.is_some(), "accel"),
            ];
            if let Some((_, what)) = refused.iter().find(|(used, _)| *used) {
                return invalid(format!(
                    "isolation \"gvisor\" does not offer {what}: leave it out, or deploy with \
                     --isolation container"
                ));
            }
            match c.pool {
                Some(n) if n > crate::gvisor_pool::MAX_POOL => invalid(format!(
                    "pool {n}: use 0 to {}",
                    crate::gvisor_pool::MAX_POOL
                )),
                _ => Ok(()),
            }
        }
        other => invalid(format!(
            "isolation {other:?}: use \"container\" (the default) or \"gvisor\""
        )),
    }
}
