//! The engine: deploys versions, admits invocations, runs each in a fresh
//! sandbox on a blocking thread, and records what happened.

use crate::code;
use crate::metrics::{FunctionLabel, InvocationLabels, Metrics, StartLabel};
use crate::model::{DeployRequest, FunctionInfo, InvocationRecord, VersionInfo};
use crate::store::{now, Store};
use crate::{EngineError, STDERR_KEPT};
use alcove_sandbox::{Bind, NetMode, RunOptions, SandboxSpec, Stdio};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where the engine keeps its state and how much it runs at once.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Sandboxes running at once, over all functions.
    pub max_running: usize,
    /// Invocations waiting for a slot, over all functions; beyond it, `Busy`.
    pub max_queued: usize,
    /// How long finished invocation records are kept, in seconds.
    pub keep_records_secs: f64,
    /// The image store functions with an image run from.
    pub image_store: PathBuf,
    /// The `alcove-accel` program, started when a function first needs it.
    pub accel_program: PathBuf,
}

/// Old records are purged once per this many invocations.
const PURGE_EVERY: usize = 1024;

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            data_dir,
            max_running: 4 * cpus,
            max_queued: 1024,
            keep_records_secs: 7.0 * 86400.0,
            image_store: alcove_image::DEFAULT_STORE.into(),
            accel_program: std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("alcove-accel")))
                .filter(|p| p.exists())
                .unwrap_or_else(|| "alcove-accel".into()),
        }
    }
}

/// A finished synchronous invocation: its record and the handler's stdout.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub record: InvocationRecord,
    pub response: Vec<u8>,
}

/// The engine. Share it behind an `Arc`; its async methods need a tokio runtime.
pub struct Engine {
    config: EngineConfig,
    store: Store,
    global: Arc<Semaphore>,
    per_function: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    /// Functions as last read from the store, so an invocation does not read
    /// and parse every version; deploy, rollback and remove drop the entry.
    known: Mutex<HashMap<String, Arc<FunctionInfo>>>,
    /// Invocations recorded since the last purge of old records.
    since_purge: AtomicUsize,
    waiting: AtomicUsize,
    /// Opened when a function first needs an image.
    images: std::sync::OnceLock<alcove_image::Store>,
    /// Started when a function first needs it.
    accel: Mutex<Option<crate::accel::Service>>,
    /// Loaded on the first invocation that is given host devices.
    device_rules: Mutex<Option<crate::devices::DeviceRules>>,
    pub metrics: Metrics,
}

impl Engine {
    /// Opens (or creates) the data directory and store, marks invocations a
    /// previous daemon left in flight as failed, and removes what its killed
    /// sandboxes left behind.
    pub fn open(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let io = EngineError::io("preparing the data directory");
        std::fs::create_dir_all(&config.data_dir).map_err(&io)?;
        std::fs::set_permissions(
            &config.data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(&io)?;
        let _ = std::fs::remove_dir_all(config.data_dir.join("tmp")); // half-done deploys
        let store = Store::open(&config.data_dir.join("alcove.db"))?;
        store.recover()?;
        let _ = alcove_sandbox::gc_orphans();
        let metrics = Metrics::new();
        metrics.pool_slots.set(alcove_sandbox::POOL_SLOTS as i64);
        Ok(Arc::new(Engine {
            global: Arc::new(Semaphore::new(config.max_running)),
            config,
            store,
            per_function: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            since_purge: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            images: std::sync::OnceLock::new(),
            accel: Mutex::new(None),
            device_rules: Mutex::new(None),
            metrics,
        }))
    }

    /// Deploys a new version and points `latest` at it. Blocking: call it from
    /// a blocking thread.
    pub fn deploy(&self, mut req: DeployRequest) -> Result<VersionInfo, EngineError> {
        validate(&req)?;
        if let Some(name) = &req.config.image {
            let record = self.image_store()?.get(name).map_err(|e| {
                EngineError::Invalid(format!(
                    "image {name:?}: {e} (import it with `alcove image import`)"
                ))
            })?;
            req.config.image_id = Some(record.id);
        }
        let digest = match &req.code_tar {
            Some(tar) => Some(code::store_code(&self.config.data_dir, tar)?),
            None => None,
        };
        req.config.secrets = req.secrets.keys().cloned().collect();
        let version =
            self.store
                .add_version(&req.name, &req.config, digest.as_deref(), &req.secrets);
        self.forget(&req.name);
        version
    }

    fn image_store(&self) -> Result<&alcove_image::Store, EngineError> {
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

    fn forget(&self, name: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The function, from memory when it was read before.
    fn cached_function(&self, name: &str) -> Result<Arc<FunctionInfo>, EngineError> {
        if let Some(f) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(Arc::clone(f));
        }
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
        self.store.function(name)
    }

    /// Removes a function, its versions, secrets and invocation records.
    pub fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.store.delete_function(name)?;
        self.forget(name);
        let _ = std::fs::remove_dir_all(self.config.data_dir.join("secrets").join(name));
        Ok(())
    }

    pub fn invocation(&self, id: &str) -> Result<InvocationRecord, EngineError> {
        self.store.invocation(id)
    }

    /// The most recent invocations of a function, newest first.
    pub fn logs(&self, name: &str, limit: u32) -> Result<Vec<InvocationRecord>, EngineError> {
        self.store.function(name)?;
        self.store.recent_invocations(name, limit)
    }

    /// Runs `name` (its `latest` version unless `version`) once with `body` on
    /// stdin, and returns the record and stdout.
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
        body: Vec<u8>,
    ) -> Result<Invocation, EngineError> {
        let v = self.resolve(name, version)?;
        let mut record = self.new_record(&v, false)?;
        // Its own task: a client that goes away mid-invocation drops the
        // request's future, but the invocation still ends and is recorded.
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            match engine.attempt(&v, &mut record, body).await {
                Ok(response) => Ok(Invocation { record, response }),
                Err(e @ EngineError::Busy(_)) => {
                    // Refused: it never became an invocation.
                    let _ = engine.store.delete_invocation(&record.id);
                    Err(e)
                }
                Err(e) => Err(e),
            }
        })
        .await
        .expect("an invocation task does not panic")
    }

    /// Queues an invocation and returns its record at once; it runs in the
    /// background, retried up to `retries` more times while it fails.
    pub fn invoke_async(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
        body: Vec<u8>,
        retries: u32,
    ) -> Result<InvocationRecord, EngineError> {
        let v = self.resolve(name, version)?;
        let mut record = self.new_record(&v, true)?;
        let queued = record.clone();
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            for attempt in 0..=retries {
                match engine.attempt(&v, &mut record, body.clone()).await {
                    Ok(_) if record.succeeded() => break,
                    Err(EngineError::Busy(_)) | Ok(_) if attempt < retries => {
                        // Queued again: readers wait for the last attempt.
                        record.status = "queued".into();
                        let _ = engine.store.update_invocation(&record);
                        tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                    }
                    _ => break,
                }
            }
            if !record.finished() {
                record.status = "error".into();
                record
                    .error
                    .get_or_insert_with(|| "too many invocations waiting".into());
                record.ended_at = Some(now());
                let _ = engine.store.update_invocation(&record);
            }
        });
        Ok(queued)
    }

    fn resolve(&self, name: &str, version: Option<u32>) -> Result<VersionInfo, EngineError> {
        let f = self.cached_function(name)?;
        let wanted = version.unwrap_or(f.latest);
        f.versions
            .iter()
            .find(|v| v.version == wanted)
            .cloned()
            .ok_or_else(|| EngineError::NoVersion(name.to_owned(), wanted))
    }

    fn new_record(&self, v: &VersionInfo, is_async: bool) -> Result<InvocationRecord, EngineError> {
        let record = InvocationRecord {
            id: alcove_sys::process::random_id(),
            function: v.function.clone(),
            version: v.version,
            status: "queued".into(),
            is_async,
            created_at: now(),
            ..InvocationRecord::default()
        };
        self.store.insert_invocation(&record)?;
        if self.since_purge.fetch_add(1, Ordering::Relaxed) + 1 >= PURGE_EVERY {
            self.since_purge.store(0, Ordering::Relaxed);
            self.store
                .purge_invocations(now() - self.config.keep_records_secs)?;
        }
        Ok(record)
    }

    /// Waits for a slot, runs one attempt, records it. `Busy` when the queue is full.
    async fn attempt(
        self: &Arc<Self>,
        v: &VersionInfo,
        record: &mut InvocationRecord,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, EngineError> {
        let _permits = self.admit(v).await?;
        record.status = "running".into();
        record.attempts += 1;
        record.started_at = Some(now());
        self.store.update_invocation(record)?;
        let prepared = self
            .spec_for(v, record, body)
            .and_then(|(spec, lease)| Ok((self.device_rule_for(&spec)?, spec, lease)));
        let (device_rule, spec, lease) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // A version that cannot be prepared (its image is gone...) is a failed invocation.
                record.status = "error".into();
                record.error = Some(alcove_sandbox::error_chain(&e));
                record.ended_at = Some(now());
                self.store.update_invocation(record)?;
                return Ok(Vec::new());
            }
        };
        self.metrics.sandboxes_alive.inc();
        self.metrics
            .starts
            .get_or_create(&StartLabel {
                kind: "cold".into(),
            })
            .inc();
        let result = tokio::task::spawn_blocking(move || {
            let options = RunOptions {
                forward_signals: false,
                collect_usage: true,
            };
            let outcome = match device_rule {
                Some(mut rule) => alcove_sandbox::run_observed(&spec, &options, &mut rule),
                None => alcove_sandbox::run(&spec, &options),
            };
            drop(lease); // the image's layers may be pruned from now on
            outcome
        })
        .await
        .expect("the sandbox thread does not panic");
        self.metrics.sandboxes_alive.dec();
        record.ended_at = Some(now());
        let mut response = Vec::new();
        match result {
            Ok(outcome) => {
                record.status = serde_json::to_value(outcome.status)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_default();
                record.exit_code = outcome.exit_code;
                record.signal = outcome.signal;
                record.wall_ms = Some(outcome.wall_ms);
                record.cpu_user_ms = Some(outcome.cpu_user_ms);
                record.cpu_sys_ms = Some(outcome.cpu_sys_ms);
                record.memory_peak_bytes = outcome.memory_peak_bytes;
                record.pids_peak = outcome.pids_peak;
                record.output_truncated = outcome.output_truncated;
                record.error = outcome.reason.clone();
                let kept = outcome.stderr.len().min(STDERR_KEPT);
                record.stderr = String::from_utf8_lossy(&outcome.stderr[..kept]).into_owned();
                self.metrics
                    .duration
                    .get_or_create(&FunctionLabel {
                        function: v.function.clone(),
                    })
                    .observe(outcome.wall_ms / 1e3);
                response = outcome.stdout;
            }
            Err(e) => {
                record.status = "error".into();
                record.error = Some(alcove_sandbox::error_chain(&e));
            }
        }
        if record.is_async {
            record.response = Some(response.clone());
        }
        self.store.update_invocation(record)?;
        self.metrics
            .invocations
            .get_or_create(&InvocationLabels {
                function: v.function.clone(),
                status: record.status.clone(),
                outcome: if record.succeeded() {
                    "success"
                } else {
                    "failure"
                }
                .into(),
            })
            .inc();
        Ok(response)
    }

    /// A slot for `v`'s function and one overall, waiting in a bounded queue.
    async fn admit(
        &self,
        v: &VersionInfo,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), EngineError> {
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        if waiting > self.config.max_queued {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Busy(format!(
                "{} invocations are already waiting (the limit is {}); retry later",
                waiting - 1,
                self.config.max_queued
            )));
        }
        self.metrics.queued.inc();
        let per_function = {
            let cap = v.config.concurrency.max(1);
            let mut map = self.per_function.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map
                .entry(v.function.clone())
                .or_insert_with(|| (cap, Arc::new(Semaphore::new(cap as usize))));
            if entry.0 != cap {
                *entry = (cap, Arc::new(Semaphore::new(cap as usize)));
            }
            Arc::clone(&entry.1)
        };
        let mine = per_function.acquire_owned().await.expect("never closed");
        let global = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .expect("never closed");
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queued.dec();
        Ok((mine, global))
    }

    /// The sandbox for one invocation of `v`.
    fn spec_for(
        &self,
        v: &VersionInfo,
        record: &InvocationRecord,
        body: Vec<u8>,
    ) -> Result<(SandboxSpec, Option<alcove_image::Lease>), EngineError> {
        let c = &v.config;
        let mut spec = SandboxSpec::new(c.handler.iter().map(Into::into).collect());
        let mut lease = None;
        if let Some(id) = &c.image_id {
            let (image, held) = self.image_store()?.lease(id).map_err(|e| {
                EngineError::Invalid(format!(
                    "the image of version {} ({}) is not in the store any more ({e}); import it again",
                    v.version,
                    c.image.as_deref().unwrap_or(id)
                ))
            })?;
            crate::image::apply_image(
                &mut spec,
                self.image_store()?,
                &image,
                false,
                v.code_digest.is_some(),
            )?;
            lease = Some(held);
        }
        if let Some(digest) = &v.code_digest {
            spec.binds.push(Bind {
                source: self.config.data_dir.join("code").join(digest),
                target: "/fn".into(),
                writable: false,
                device: false,
            });
            spec.workdir = "/fn".into();
        }
        if !c.secrets.is_empty() {
            let values = self.store.secrets(&v.function, v.version)?;
            let dir = code::secrets_dir(
                &self.config.data_dir,
                &v.function,
                v.version,
                &values,
                spec.user.uid,
            )?;
            spec.binds.push(Bind {
                source: dir,
                target: "/run/secrets".into(),
                writable: false,
                device: false,
            });
        }
        for (k, val) in &c.env {
            spec.env.push((k.into(), val.into()));
        }
        spec.env
            .push(("ALCOVE_FUNCTION".into(), v.function.clone().into()));
        spec.env
            .push(("ALCOVE_VERSION".into(), v.version.to_string().into()));
        spec.env
            .push(("ALCOVE_INVOCATION".into(), record.id.clone().into()));
        spec.limits.memory_bytes = c.memory_bytes;
        spec.limits.cpus = c.cpus;
        spec.limits.pids = c.pids;
        spec.limits.timeout = c.timeout_ms.map(Duration::from_millis);
        spec.limits.output_bytes = Some(c.output_bytes);
        spec.net = if c.net == "host" {
            NetMode::Host
        } else {
            NetMode::None
        };
        if c.accel.as_deref() == Some("gpu") {
            spec.device_nodes = gpu_device_nodes();
        }
        if let Some(placement) = &c.accel {
            let mut service = self.accel.lock().unwrap_or_else(|e| e.into_inner());
            let conn = crate::accel::connect(
                &mut service,
                &self.config.accel_program,
                placement,
                c.memory_bytes,
                c.timeout_ms,
            )?;
            spec.env.push((
                "ALCOVE_ACCEL_FD".into(),
                conn.as_raw_fd().to_string().into(),
            ));
            spec.inherit_fds.push(Arc::new(conn));
        }
        spec.stdio = Stdio::Capture { stdin: body };
        Ok((spec, lease))
    }
}

impl Engine {
    /// The device cgroup rule a run given host devices needs (none for a run
    /// that sees only the basic /dev, which its mounts already confine).
    fn device_rule_for(
        &self,
        spec: &SandboxSpec,
    ) -> Result<Option<crate::devices::DeviceRuleObserver>, EngineError> {
        if spec.device_nodes.is_empty() {
            return Ok(None);
        }
        let mut rules = self.device_rules.lock().unwrap_or_else(|e| e.into_inner());
        if rules.is_none() {
            *rules = Some(crate::devices::DeviceRules::start()?);
        }
        let rules = rules.as_ref().expect("started above");
        Ok(Some(rules.observer(&spec.device_nodes)?))
    }
}

/// The host's NVIDIA device nodes (/dev/nvidiactl, /dev/nvidia0...,
/// /dev/nvidia-uvm...): what a `gpu`-placed function may open besides
/// alcove's basic /dev. None on a host without a GPU.
fn gpu_device_nodes() -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut nodes: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_char_device()))
        .map(|e| e.path())
        .collect();
    nodes.sort();
    nodes
}

fn validate(req: &DeployRequest) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::Invalid(m));
    if !crate::valid_name(&req.name) {
        return invalid(format!(
            "function name {:?}: use 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            req.name
        ));
    }
    let c = &req.config;
    let no_handler = c.handler.is_empty() && c.image.is_none();
    if no_handler || c.handler.iter().any(|a| a.is_empty() || a.contains('\0')) {
        return invalid(
            "handler: give the command to run, such as [\"python3\", \"/fn/main.py\"]".into(),
        );
    }
    if let Some(a) = &c.accel {
        if !["auto", "cpu", "gpu"].contains(&a.as_str()) {
            return invalid(format!("accel {a:?}: use \"auto\", \"cpu\" or \"gpu\""));
        }
    }
    if c.net != "none" && c.net != "host" {
        return invalid(format!("net {:?}: use \"none\" or \"host\"", c.net));
    }
    if c.concurrency == 0 || c.concurrency > 10_000 {
        return invalid(format!("concurrency {}: use 1 to 10000", c.concurrency));
    }
    for name in req.secrets.keys() {
        if !crate::valid_name(name) {
            return invalid(format!(
                "secret name {name:?}: use 1 to 63 of a-z, 0-9, '-' and '_'"
            ));
        }
    }
    // The rest (memory, CPUs, env...) is checked as the sandbox would check it
    // (with an image and no handler, the image's command stands in).
    let argv = if c.handler.is_empty() {
        vec!["true".into()]
    } else {
        c.handler.iter().map(Into::into).collect()
    };
    let mut spec = SandboxSpec::new(argv);
    spec.limits.memory_bytes = c.memory_bytes;
    spec.limits.cpus = c.cpus;
    spec.limits.pids = c.pids;
    for (k, v) in &c.env {
        spec.env.push((k.into(), v.into()));
    }
    spec.validate()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    if c.timeout_ms == Some(0) {
        return invalid("timeout_ms 0: use a positive number of milliseconds".into());
    }
    Ok(())
}
