//! Agent sandboxes: long-lived sandboxes an AI agent works in, each an
//! ordinary alcove sandbox (namespaces, cgroup limits, seccomp, no
//! capabilities) whose first process is the agent (alcove-agent), kept until
//! removed or past its timeout. This module owns their registry, their
//! lifetimes (timeout, idle pause, reclaim), pause and resume (the cgroup
//! freezer), and what is asked of them (commands, files, code).

mod agent_program;
mod code;
mod copy;
mod error;
mod files;
mod live;
pub mod process;
mod templates;

pub use code::CodeEvent;
pub use error::SandboxesError;
pub use files::{FileWriter, WatchStream};
pub use live::{ExecRequest, InUse, LiveSandbox, SandboxInfo, SandboxState};
pub use templates::TemplateInfo;

use crate::engine::Engine;
use serde::Deserialize;
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

/// What a client asks for when creating a sandbox (the API's body).
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// `none` (loopback only, the default) or `host`.
    pub net: Option<String>,
    /// The sandbox this one was forked from (set by a fork, not by clients).
    #[serde(skip)]
    pub parent: Option<String>,
}

/// The daemon's agent sandboxes.
pub struct Sandboxes {
    live: Mutex<HashMap<String, Arc<LiveSandbox>>>,
    /// Sandboxes being created count against the limit too.
    starting: Mutex<usize>,
    max: usize,
}

impl Sandboxes {
    pub(crate) fn new(max: usize) -> Self {
        Sandboxes {
            live: Mutex::default(),
            starting: Mutex::new(0),
            max,
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<LiveSandbox>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = live.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<LiveSandbox>, SandboxesError> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxesError::NotFound(id.to_owned()))
    }

    fn take(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
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
    /// Creates an agent sandbox and waits for its agent: when this returns,
    /// commands can run in it.
    pub async fn create_sandbox(
        self: &Arc<Self>,
        req: CreateSandbox,
    ) -> Result<SandboxInfo, SandboxesError> {
        let sandboxes = &self.sandboxes;
        {
            let live = sandboxes
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            let mut starting = sandboxes.starting.lock().unwrap_or_else(|e| e.into_inner());
            if live + *starting >= sandboxes.max {
                return Err(SandboxesError::TooMany(sandboxes.max));
            }
            *starting += 1;
        }
        let _started = Starting(sandboxes);
        let sandbox = live::start(self, req).await?;
        let info = sandbox.info();
        sandboxes
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sandbox.id.clone(), Arc::clone(&sandbox));
        // Gone from the registry when it ends, however it ends.
        let me = Arc::downgrade(self);
        let mut ended = sandbox.ended();
        let mut gone = sandbox.link.gone();
        let weak = Arc::downgrade(&sandbox);
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
            if let Some(engine) = me.upgrade() {
                engine.sandboxes.take(&id);
            }
        });
        Ok(info)
    }

    /// The sandbox `id`, for what is asked of it (resumed if paused), in
    /// use (not idle) while the guard lives.
    pub async fn sandbox(&self, id: &str) -> Result<InUse, SandboxesError> {
        self.sandboxes.get(id)?.touch().await
    }

    /// The sandbox `id` as it is, without resuming it (to pause it, say).
    pub fn sandbox_unresumed(&self, id: &str) -> Result<Arc<LiveSandbox>, SandboxesError> {
        self.sandboxes.get(id)
    }

    /// The sandbox `id` as it is, without resuming it.
    pub fn sandbox_info(&self, id: &str) -> Result<SandboxInfo, SandboxesError> {
        Ok(self.sandboxes.get(id)?.info())
    }

    /// Every sandbox whose metadata holds all of `filter`, and whose state
    /// is `state` when given.
    pub fn list_sandboxes(
        &self,
        filter: &BTreeMap<String, String>,
        state: Option<SandboxState>,
    ) -> Vec<SandboxInfo> {
        self.sandboxes
            .all()
            .iter()
            .map(|s| s.info())
            .filter(|i| filter.iter().all(|(k, v)| i.metadata.get(k) == Some(v)))
            .filter(|i| state.is_none_or(|s| i.state == s))
            .collect()
    }

    /// Kills the sandbox and everything in it, and waits until nothing of it is left.
    pub async fn remove_sandbox(&self, id: &str) -> Result<SandboxInfo, SandboxesError> {
        let sandbox = self
            .sandboxes
            .take(id)
            .ok_or_else(|| SandboxesError::NotFound(id.to_owned()))?;
        let mut info = sandbox.info();
        sandbox.kill().await;
        info.state = SandboxState::Removed;
        Ok(info)
    }

    /// Kills every sandbox and waits (each up to 10 s, all at once) until
    /// nothing of them is left: what a stopping daemon does.
    pub(crate) async fn remove_all_sandboxes(&self) {
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

    /// Reclaims sandboxes past their timeout and pauses idle ones; runs until
    /// the engine is dropped.
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
                            tokio::spawn(async move { s.kill().await });
                        }
                    } else if sandbox.idle_for_pause(now) {
                        // Its own task: a slow freeze holds up no other sandbox.
                        tokio::spawn(async move { sandbox.pause_if_idle().await });
                    }
                }
            }
        });
    }
}

struct Starting<'a>(&'a Sandboxes);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        *self.0.starting.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}
