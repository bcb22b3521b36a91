//! Agent sandboxes: long-lived sandboxes an AI agent works in, each an
//! ordinary alcove sandbox (namespaces, cgroup limits, seccomp, no
//! capabilities) whose first process is the agent (alcove-agent), kept until
//! removed or past its timeout. This module owns their registry, their
//! lifetimes (timeout, idle pause, reclaim), pause and resume (the cgroup
//! freezer), and what is asked of them (commands, files, code), and what
//! keeps them across a daemon restart (their homes and records: persist.rs;
//! a sandbox found at start is `stopped` until a call starts it again).

pub(crate) mod agent_program;
mod budget;
mod code;
mod copy;
mod dns;
mod error;
mod files;
mod fork_memory;
mod host_net;
mod live;
pub mod network;
mod persist;
mod pool;
pub mod process;
mod resolver;
mod templates;

pub use code::CodeEvent;
pub use error::SandboxesError;
pub use files::{FileWriter, WatchStream};
pub use live::{ExecRequest, InUse, LiveSandbox, SandboxInfo, SandboxState};
pub use pool::MAX_POOL;
pub use templates::TemplateInfo;

use crate::engine::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest timeout a sandbox may have (and be extended to), in seconds.
pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// The timeout of a sandbox created without one.
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// Metadata bounds: keys, a key's bytes, a value's bytes.
const MAX_METADATA_KEYS: usize = 32;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 256;
/// Environment bounds for a sandbox or a command.
pub(crate) const MAX_ENV: usize = 256;
pub(crate) const MAX_ENV_BYTES: usize = 64 << 10;
/// How long a sandbox's agent has to say it is ready.
const AGENT_READY: Duration = Duration::from_secs(10);

/// What a client asks for when creating a sandbox (the API's body, and
/// what a sandbox's record keeps of it).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// An imported image's name; none: the host's read-only view.
    pub image: Option<String>,
    pub template: Option<String>,
    pub timeout_s: Option<u64>,
    /// Pause after this long without a call (0 or none: never).
    pub idle_pause_s: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Memory limit, such as `512M`.
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Size of its writable layer (and /tmp), such as `256M`.
    pub disk: Option<String>,
    /// `none` (loopback only, the default), `outbound` (a link of its own
    /// out, see network.rs) or `host`.
    pub net: Option<String>,
    /// With `net: outbound`: where it may connect (CIDR ranges, addresses,
    /// host names, `*.domain`); empty: anywhere but the host and other
    /// sandboxes.
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// Kernel-enforced rules over its whole life, as a function's `guard`:
    /// `syscall_budget`, `cpu_budget_ms`, and `deny_net`/`allow_net` with
    /// `net: host`. Past a budget the sandbox is killed (and stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::Guard>,
    /// Its code interpreter may fork itself into a new sandbox (a fork with
    /// memory): it runs under a filter that lets it make the namespaces a
    /// copy needs (`net: none` only). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forkable: bool,
    /// `container` (the default) or `gvisor`: its processes run on gVisor's
    /// user-space kernel (runsc), see live.rs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The sandbox this one was forked from (set by a fork, not by clients).
    #[serde(skip)]
    pub parent: Option<String>,
}

/// The daemon's agent sandboxes.
pub struct Sandboxes {
    live: Mutex<HashMap<String, Arc<LiveSandbox>>>,
    /// Sandboxes whose processes ended (with a daemon, or their agent's end)
    /// and whose files and records were kept: a call starts them again.
    /// Locked after `live` when both are.
    stopped: Mutex<HashMap<String, Arc<Stopped>>>,
    /// Sandboxes being created count against the limit too.
    starting: Mutex<usize>,
    max: usize,
    /// Sandboxes started before a create asks (pool.rs).
    pool: pool::Pool,
}

/// A stopped sandbox: its record, why it stopped, and the lock a start
/// (or a removal) holds so that one start runs at a time.
pub(crate) struct Stopped {
    record: Mutex<persist::Record>,
    reason: String,
    dir: std::path::PathBuf,
    start: tokio::sync::Mutex<()>,
}

impl Stopped {
    fn record(&self) -> persist::Record {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn info(&self) -> SandboxInfo {
        let r = self.record();
        let req = r.request();
        SandboxInfo {
            id: r.id.clone(),
            state: SandboxState::Stopped,
            reason: Some(self.reason.clone()),
            created_at: r.created_at,
            expires_at: r.expires_at,
            timeout_s: r.timeout_s,
            idle_pause_s: req.idle_pause_s.unwrap_or(0),
            image: req.image.clone(),
            template: req.template.clone(),
            parent: req.parent.clone(),
            net: req.net.clone().unwrap_or_else(|| "none".into()),
            isolation: req.isolation.clone().unwrap_or_else(|| "container".into()),
            allow_out: req.allow_out.clone(),
            limits: live::LimitsView::of_request(&req),
            metadata: req.metadata,
            usage: Default::default(),
            interpreter: None,
        }
    }
}

/// Removes a running sandbox (taken from the registry): what it was.
async fn remove_live(sandbox: Arc<LiveSandbox>) -> SandboxInfo {
    let mut info = sandbox.info();
    sandbox.remove().await;
    info.state = SandboxState::Removed;
    info
}

impl Sandboxes {
    pub(crate) fn new(max: usize, pool: usize) -> Self {
        Sandboxes {
            live: Mutex::default(),
            stopped: Mutex::default(),
            starting: Mutex::new(0),
            max,
            pool: pool::Pool::new(pool),
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<LiveSandbox>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = live.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn all_stopped(&self) -> Vec<Arc<Stopped>> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<LiveSandbox>, SandboxesError> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxesError::NotFound(id.to_owned()))
    }

    fn get_stopped(&self, id: &str) -> Option<Arc<Stopped>> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn take(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Takes `stopped` out of the registry, if it is still there.
    fn stopped_one(&self, id: &str) -> Result<Arc<Stopped>, SandboxesError> {
        self.get_stopped(id)
            .ok_or_else(|| SandboxesError::NotFound(id.to_owned()))
    }

    /// Whether `stopped` is still the stopped sandbox of its id (not
    /// removed, started or replaced while a caller waited for its lock).
    fn is_current(&self, stopped: &Arc<Stopped>) -> bool {
        self.get_stopped(&stopped.record().id)
            .is_some_and(|now| Arc::ptr_eq(&now, stopped))
    }

    fn take_stopped(&self, stopped: &Arc<Stopped>) -> bool {
        let mut all = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let id = stopped.record().id;
        if all.get(&id).is_some_and(|s| Arc::ptr_eq(s, stopped)) {
            all.remove(&id);
            true
        } else {
            false
        }
    }

    fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.stopped.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Checks metadata or a metadata filter against the bounds.
pub fn check_filter(filter: &BTreeMap<String, String>) -> Result<(), SandboxesError> {
    check_metadata(filter)
}

pub(crate) fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), SandboxesError> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(SandboxesError::Invalid(format!(
            "metadata has {} keys; at most {MAX_METADATA_KEYS}",
            metadata.len()
        )));
    }
    for (k, v) in metadata {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_METADATA_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !key_ok {
            return Err(SandboxesError::Invalid(format!(
                "metadata key {k:?}: use 1 to {MAX_METADATA_KEY} of A-Z a-z 0-9 _ . -"
            )));
        }
        if v.len() > MAX_METADATA_VALUE {
            return Err(SandboxesError::Invalid(format!(
                "metadata {k:?}: its value is {} bytes; at most {MAX_METADATA_VALUE}",
                v.len()
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_env(env: &[(String, String)]) -> Result<(), SandboxesError> {
    let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env.len() > MAX_ENV || bytes > MAX_ENV_BYTES {
        return Err(SandboxesError::Invalid(format!(
            "the environment has {} variables of {bytes} bytes; at most {MAX_ENV} and {MAX_ENV_BYTES}",
            env.len()
        )));
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(SandboxesError::Invalid(format!(
                "environment variable {k:?}: a name is non-empty without '=' or NUL, a value without NUL"
            )));
        }
    }
    Ok(())
}

impl Engine {
    /// DATA_DIR/sandboxes, absolute (it names the homes' bind sources).
    pub(crate) fn sandboxes_dir(&self) -> std::path::PathBuf {
        let dir = self.config().data_dir.join(persist::SANDBOXES_DIR);
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// Creates an agent sandbox and waits for its agent: when this returns,
    /// commands can run in it.
    pub async fn create_sandbox(
        self: &Arc<Self>,
        req: CreateSandbox,
    ) -> Result<SandboxInfo, SandboxesError> {
        let _started = self.reserve()?;
        if !self.sandboxes.pool.enabled() || !pool::poolable(&req) {
            let sandbox = live::start(self, req, None).await?;
            let info = sandbox.info();
            self.register(&sandbox);
            return Ok(info);
        }
        // What a claim sets is checked before one is taken.
        check_metadata(&req.metadata)?;
        check_env(&req.env.clone().into_iter().collect::<Vec<_>>())?;
        let clock = live::check_clock(&req)?;
        let made = match self.take_ready_sandbox() {
            Some(ready) => {
                let watched = ready.watched();
                let afresh = req.clone();
                match ready.claimed_as(req, clock).with_env().await {
                    Ok(ready) => {
                        let made = ready.finish(true).await;
                        if let Ok(sandbox) = &made {
                            self.emit_sandbox(
                                &sandbox.id,
                                serde_json::json!({ "event": "sandbox_start", "watched": watched, "pooled": true }),
                            );
                        }
                        made
                    }
                    // Its agent went away before it took the environment (it
                    // was removed): this create is made afresh instead.
                    Err(e) => {
                        tracing::warn!(error = %e, "a ready sandbox failed at its claim: made afresh");
                        live::start(self, afresh, None).await
                    }
                }
            }
            None => live::start(self, req, None).await,
        };
        // After this create's own start: a refill would compete with it.
        self.refill_ready_sandboxes();
        let sandbox = made?;
        let info = sandbox.info();
        self.register(&sandbox);
        Ok(info)
    }

    /// The nearest sandbox whose process tree `sandbox` lives in (it is a
    /// fork with memory, or a fork of one) that is gone or ending.
    fn ended_ancestor(&self, sandbox: &LiveSandbox) -> Option<String> {
        let mut next = sandbox.nested_in().map(str::to_owned);
        for _ in 0..64 {
            let id = next?;
            match self.sandboxes.get(&id) {
                Ok(parent) if !*parent.ended().borrow() => {
                    next = parent.nested_in().map(str::to_owned)
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// A place for one more sandbox among the daemon's `max`, held while
    /// it starts.
    fn reserve(&self) -> Result<Starting<'_>, SandboxesError> {
        let sandboxes = &self.sandboxes;
        let held = sandboxes.count();
        let mut starting = sandboxes.starting.lock().unwrap_or_else(|e| e.into_inner());
        if held + *starting >= sandboxes.max {
            return Err(SandboxesError::TooMany(sandboxes.max));
        }
        *starting += 1;
        Ok(Starting(sandboxes))
    }

    /// A fork of `parent` with its interpreter's memory (fork_memory.rs),
    /// registered; an error says why it could not be made so.
    async fn fork_with_memory(
        self: &Arc<Self>,
        parent: &Arc<LiveSandbox>,
        req: CreateSandbox,
    ) -> Result<SandboxInfo, SandboxesError> {
        let _started = self.reserve()?;
        let sandbox = fork_memory::start(self, parent, req).await?;
        let mut info = sandbox.info();
        info.interpreter = Some("copied".into());
        self.register(&sandbox);
        Ok(info)
    }

    /// Puts a started sandbox in the registry, and watches for its end: a
    /// sandbox that ends without being removed (its agent killed, the
    /// daemon stopping) becomes `stopped`, its files and record kept.
    fn register(self: &Arc<Self>, sandbox: &Arc<LiveSandbox>) {
        {
            let mut live = self
                .sandboxes
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            live.insert(sandbox.id.clone(), Arc::clone(sandbox));
            self.sandboxes
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&sandbox.id);
        }
        let me = Arc::downgrade(self);
        let mut ended = sandbox.ended();
        let mut gone = sandbox.link.gone();
        let weak = Arc::downgrade(sandbox);
        let id = sandbox.id.clone();
        tokio::spawn(async move {
            let agent_gone = tokio::select! {
                _ = ended.wait_for(|e| *e) => false,
                _ = gone.wait_for(|g| *g) => true,
            };
            // An agent that hung up or was cut off: the sandbox is useless; end it.
            if agent_gone {
                if let Some(s) = weak.upgrade() {
                    s.kill().await;
                }
            }
            let Some(engine) = me.upgrade() else { return };
            // Still registered: nothing removed it, so its files stay.
            let Some(s) = engine.sandboxes.take(&id) else {
                return;
            };
            s.kill().await;
            let parent_gone = engine.ended_ancestor(&s).map(|p| {
                format!(
                    "{p}, which it was forked from with the interpreter's memory, ended (such \
                         a fork lives in its parent's process tree); its files and metadata were \
                         kept"
                )
            });
            let reason = match (s.end_reason(), parent_gone) {
                (Some(why), _) => format!("{why}; its files and metadata were kept"),
                (None, Some(why)) => why,
                (None, None) => persist::STOPPED_BY_END.to_owned(),
            };
            tracing::info!(sandbox = %id, %reason, "agent sandbox ended by itself: stopped, its files kept");
            engine
                .sandboxes
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    id,
                    Arc::new(Stopped {
                        record: Mutex::new(s.record()),
                        reason,
                        dir: s.dir().to_path_buf(),
                        start: tokio::sync::Mutex::new(()),
                    }),
                );
        });
    }

    /// The sandbox `id` running: a stopped one is started again first (a
    /// new agent with the same id, home, limits, environment, metadata and
    /// expiry; its processes and code interpreter start afresh).
    pub(crate) async fn live_sandbox(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Arc<LiveSandbox>, SandboxesError> {
        if let Ok(sandbox) = self.sandboxes.get(id) {
            return Ok(sandbox);
        }
        let stopped = self.sandboxes.stopped_one(id)?;
        let _one_at_a_time = stopped.start.lock().await;
        // Started, or removed, while this call waited.
        if let Ok(sandbox) = self.sandboxes.get(id) {
            return Ok(sandbox);
        }
        let still = self.sandboxes.is_current(&stopped);
        let record = stopped.record();
        if !still || record.expires_at <= crate::store::now() {
            return Err(SandboxesError::NotFound(id.to_owned()));
        }
        let restore = live::Restore {
            id: record.id.clone(),
            created_at: record.created_at,
            timeout_s: record.timeout_s,
            expires_at: record.expires_at,
            owner: (record.uid, record.gid),
        };
        let sandbox = live::start(self, record.request(), Some(restore)).await?;
        tracing::info!(sandbox = %id, "stopped sandbox started again");
        self.register(&sandbox);
        Ok(sandbox)
    }

    /// Starts the sandbox `id` again if it is stopped (nothing to do if it
    /// runs or is paused).
    pub async fn start_sandbox(self: &Arc<Self>, id: &str) -> Result<SandboxInfo, SandboxesError> {
        Ok(self.live_sandbox(id).await?.info())
    }

    /// The sandbox `id`, for what is asked of it (started if stopped,
    /// resumed if paused), in use (not idle) while the guard lives.
    pub async fn sandbox(self: &Arc<Self>, id: &str) -> Result<InUse, SandboxesError> {
        self.live_sandbox(id).await?.touch().await
    }

    /// The sandbox `id` as it is, without resuming it (to pause it, say);
    /// a stopped one is started.
    pub async fn sandbox_unresumed(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Arc<LiveSandbox>, SandboxesError> {
        self.live_sandbox(id).await
    }

    /// The sandbox `id` as it is, without resuming or starting it.
    pub fn sandbox_info(&self, id: &str) -> Result<SandboxInfo, SandboxesError> {
        if let Ok(sandbox) = self.sandboxes.get(id) {
            return Ok(sandbox.info());
        }
        self.sandboxes
            .get_stopped(id)
            .map(|s| s.info())
            .ok_or_else(|| SandboxesError::NotFound(id.to_owned()))
    }

    /// Sets the sandbox's timeout to `seconds` from now (a stopped one's
    /// too, without starting it), and rewrites its record.
    pub async fn set_sandbox_timeout(
        self: &Arc<Self>,
        id: &str,
        seconds: u64,
    ) -> Result<SandboxInfo, SandboxesError> {
        live::check_timeout(seconds)?;
        if let Ok(sandbox) = self.sandboxes.get(id) {
            let _in_use = sandbox.touch().await?;
            let info = sandbox.set_timeout(seconds)?;
            let s = Arc::clone(&sandbox);
            tokio::task::spawn_blocking(move || s.save_record())
                .await
                .map_err(|_| {
                    SandboxesError::Start("saving the sandbox's record failed".into())
                })??;
            return Ok(info);
        }
        let stopped = self.sandboxes.stopped_one(id)?;
        let _one_at_a_time = stopped.start.lock().await;
        if self.sandboxes.get(id).is_ok() {
            // Started while this call waited.
            return Box::pin(self.set_sandbox_timeout(id, seconds)).await;
        }
        // Removed (or reclaimed past its timeout) while this call waited: its
        // directory is going; a record written there now would outlive it.
        if !self.sandboxes.is_current(&stopped) {
            return Err(SandboxesError::NotFound(id.to_owned()));
        }
        let mut record = stopped.record();
        record.timeout_s = seconds;
        record.expires_at = crate::store::now() + seconds as f64;
        let dir = stopped.dir.clone();
        let saved = record.clone();
        tokio::task::spawn_blocking(move || persist::save(&dir, &saved))
            .await
            .map_err(|_| SandboxesError::Start("saving the sandbox's record failed".into()))?
            .map_err(SandboxesError::io("saving the sandbox's record"))?;
        *stopped.record.lock().unwrap_or_else(|e| e.into_inner()) = record;
        Ok(stopped.info())
    }

    /// Every sandbox whose metadata holds all of `filter`, and whose state
    /// is `state` when given.
    pub fn list_sandboxes(
        &self,
        filter: &BTreeMap<String, String>,
        state: Option<SandboxState>,
    ) -> Vec<SandboxInfo> {
        // Both at once: one being started moves from one to the other.
        let (live, stopped) = {
            let live = self
                .sandboxes
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let stopped = self
                .sandboxes
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let l: Vec<_> = live.values().cloned().collect();
            let s: Vec<_> = stopped.values().cloned().collect();
            (l, s)
        };
        let mut all: Vec<SandboxInfo> = live
            .iter()
            .map(|s| s.info())
            .chain(stopped.iter().map(|s| s.info()))
            .filter(|i| filter.iter().all(|(k, v)| i.metadata.get(k) == Some(v)))
            .filter(|i| state.is_none_or(|s| i.state == s))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Kills the sandbox and everything in it, and waits until nothing of it
    /// is left: processes, home, record.
    pub async fn remove_sandbox(&self, id: &str) -> Result<SandboxInfo, SandboxesError> {
        if let Some(sandbox) = self.sandboxes.take(id) {
            return Ok(remove_live(sandbox).await);
        }
        let stopped = self.sandboxes.stopped_one(id)?;
        // A start in flight finishes first; then it is live or still stopped.
        let _one_at_a_time = stopped.start.lock().await;
        if let Some(sandbox) = self.sandboxes.take(id) {
            return Ok(remove_live(sandbox).await);
        }
        if !self.sandboxes.take_stopped(&stopped) {
            return Err(SandboxesError::NotFound(id.to_owned()));
        }
        let mut info = stopped.info();
        info.state = SandboxState::Removed;
        info.reason = None;
        reclaim_files(stopped.dir.clone()).await;
        Ok(info)
    }

    /// Ends every sandbox's processes and waits (each up to 10 s, all at
    /// once) until they are gone: what a stopping daemon does. Their homes
    /// and records stay: the next daemon shows them as `stopped`.
    pub(crate) async fn stop_all_sandboxes(&self) {
        tokio::join!(self.drain_ready_sandboxes(), self.stop_live_sandboxes());
    }

    async fn stop_live_sandboxes(&self) {
        let all: Vec<_> = self
            .sandboxes
            .all()
            .into_iter()
            .filter_map(|s| self.sandboxes.take(&s.id))
            .collect();
        for sandbox in &all {
            sandbox.begin_kill();
        }
        for sandbox in &all {
            sandbox.wait_ended().await;
        }
    }

    /// At start: every sandbox a previous daemon left is registered as
    /// `stopped`, but those past their timeout, those whose home was lost
    /// (the host restarted) and those whose record is unreadable, which are
    /// reclaimed; so are directories a create cut short left without a
    /// record. Nothing here stops the daemon from starting.
    pub(crate) fn restore_sandboxes(&self) {
        let root = self.sandboxes_dir();
        if let Err(e) = persist::make_root(&root) {
            tracing::warn!(dir = %root.display(), error = %e, "cannot make the sandboxes' directory; sandboxes will fail to start");
            return;
        }
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let now = crate::store::now();
        let mut stopped = self
            .sandboxes
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir()); // a link is not
            if !persist::valid_id(&name) || !is_dir {
                tracing::warn!(dir = %entry.path().display(), "not a sandbox's directory: left alone");
                continue;
            }
            let dir = entry.path();
            persist::clean_temporaries(&dir);
            let why = match persist::load(&dir, &name) {
                Err(why) if !why.reclaimable() => {
                    tracing::warn!(sandbox = %name, reason = %why, "sandbox from another daemon's version left as it is (not started, not removed)");
                    None
                }
                Err(why) => Some(why.to_string()),
                Ok(_) if !persist::home_mounted(&dir) => Some(
                    "its home is no longer mounted (the host restarted?): its files were lost"
                        .to_owned(),
                ),
                Ok(record) if record.expires_at <= now => {
                    Some("it passed its timeout while the daemon was down".to_owned())
                }
                Ok(record) => {
                    // Kept even past --max-sandboxes (lowered since): they
                    // are the users' files; new creates wait for room.
                    tracing::info!(sandbox = %name, "sandbox kept from a previous daemon: stopped");
                    stopped.insert(
                        name.clone(),
                        Arc::new(Stopped {
                            record: Mutex::new(record),
                            reason: persist::STOPPED_BY_RESTART.to_owned(),
                            dir: dir.clone(),
                            start: tokio::sync::Mutex::new(()),
                        }),
                    );
                    None
                }
            };
            if let Some(why) = why {
                match persist::reclaim(&dir) {
                    Ok(()) => {
                        tracing::warn!(sandbox = %name, reason = %why, "sandbox from a previous daemon reclaimed")
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %name, reason = %why, error = %e, "sandbox from a previous daemon could not be reclaimed")
                    }
                }
            }
        }
    }

    /// Reclaims sandboxes past their timeout (stopped ones too) and pauses
    /// idle ones; runs until the engine is dropped.
    pub(crate) fn start_sandbox_reaper(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // no runtime (a unit test's engine): nothing to reap
        };
        handle.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = me.upgrade() else { return };
                let now = crate::store::now();
                for sandbox in engine.sandboxes.all() {
                    if sandbox.expired(now) {
                        if let Some(s) = engine.sandboxes.take(&sandbox.id) {
                            tracing::info!(sandbox = %s.id, "sandbox past its timeout: removed");
                            tokio::spawn(async move { s.remove().await });
                        }
                    } else if sandbox.idle_for_pause(now) {
                        // Its own task: a slow freeze holds up no other sandbox.
                        tokio::spawn(async move { sandbox.pause_if_idle().await });
                    }
                }
                for stopped in engine.sandboxes.all_stopped() {
                    if stopped.record().expires_at > now {
                        continue;
                    }
                    // One being started is left to its start (and its end).
                    let Ok(_one_at_a_time) = stopped.start.try_lock() else {
                        continue;
                    };
                    if engine.sandboxes.take_stopped(&stopped) {
                        tracing::info!(sandbox = %stopped.record().id, "stopped sandbox past its timeout: removed");
                        tokio::spawn(reclaim_files(stopped.dir.clone()));
                    }
                }
            }
        });
    }
}

/// Unmounts a sandbox's home and removes its directory, off the async
/// threads; a failure is logged (`alcove gc` retries).
pub(crate) async fn reclaim_files(dir: std::path::PathBuf) {
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || persist::reclaim(&dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(dir = %shown, error = %e, "a sandbox's files could not be removed")
        }
        Err(_) => tracing::warn!(dir = %shown, "a sandbox's files could not be removed"),
    }
}

/// Reclaims, beneath DATA_DIR/sandboxes, what no sandbox holds: directories
/// without a readable record (a create cut short, a corrupt record) and
/// their mounted homes; `min_age` spares those a running daemon may be
/// making now, and a running daemon's ready sandboxes (pool.rs) are spared
/// whatever their age. What `alcove gc` runs (the daemon does the same at
/// start). Returns how many it removed.
pub fn gc_sandbox_homes(data_dir: &std::path::Path, min_age: Duration) -> usize {
    let root = data_dir.join(persist::SANDBOXES_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    let daemon_runs = data_dir_in_use(data_dir);
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !persist::valid_id(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let young = std::fs::symlink_metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < min_age);
        let ready = daemon_runs && persist::is_pooled(&dir);
        let orphan = !young && !ready && persist::load(&dir, &name).is_err_and(|e| e.reclaimable());
        if !orphan {
            continue;
        }
        match persist::reclaim(&dir) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot reclaim an orphaned sandbox home")
            }
        }
    }
    removed
}

/// Whether a daemon holds DATA_DIR's lock now (engine.rs takes it for its
/// whole life). Asked by trying the lock and letting it go at once.
fn data_dir_in_use(data_dir: &std::path::Path) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(data_dir.join("daemon.lock"))
    else {
        return false; // no daemon ever ran here
    };
    !alcove_sys::fd::flock(file.as_fd(), alcove_sys::fd::Lock::TryExclusive).unwrap_or(false)
}

struct Starting<'a>(&'a Sandboxes);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        *self.0.starting.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}
