//! Warm functions: one template per function's latest version (alcove-warm),
//! started by its deploy (which fails if it cannot start), rebuilt in the
//! background when it dies or the daemon restarts, and stopped when the
//! function goes. An invocation takes a copy when the template is up and
//! runs cold, from the same code, while it is not.

use crate::engine::Engine;
use crate::model::{FunctionConfig, VersionInfo};
use crate::EngineError;
use alcove_warm::{Budget, GoneHook, Template, TemplateSpec};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default and the most a function's initialisation may take.
pub const INIT_TIMEOUT_DEFAULT_MS: u64 = 30_000;
pub const INIT_TIMEOUT_MAX_MS: u64 = 600_000;
/// A template that failed to start is not tried again for this long.
const REBUILD_BACKOFF: Duration = Duration::from_secs(5);

/// How warm functions may use this host (`alcove serve --warm-*`).
#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// Memory all templates and their ready copies may hold.
    pub memory_bytes: u64,
    /// The most ready copies per function.
    pub max_ready: usize,
    /// Ready copies are dropped after this long without a request.
    pub idle: Duration,
}

impl Default for WarmConfig {
    fn default() -> Self {
        WarmConfig {
            memory_bytes: 1 << 30,
            max_ready: 8,
            idle: Duration::from_secs(60),
        }
    }
}

struct Entry {
    version: u32,
    template: Arc<Template>,
    _lease: Option<alcove_image::Lease>,
}

/// The templates of warm functions, by function name.
#[derive(Default)]
pub(crate) struct WarmTemplates {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    budget: std::sync::OnceLock<Arc<Budget>>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Functions whose template is being started, and when a start last failed.
    building: Mutex<HashSet<String>>,
    failed: Mutex<HashMap<(String, u32), Instant>>,
}

/// What `--warm` cannot be combined with, refused at deploy.
pub(crate) fn check_config(c: &FunctionConfig) -> Result<(), String> {
    if let Some(ms) = c.init_timeout_ms {
        if ms == 0 || ms > INIT_TIMEOUT_MAX_MS {
            return Err(format!(
                "init timeout {ms} ms: use 1 ms to {} s",
                INIT_TIMEOUT_MAX_MS / 1000
            ));
        }
    }
    if !c.warm {
        return Ok(());
    }
    if c.accel.is_some() {
        return Err(
            "warm: a warm function cannot use --accel yet (its connection to the \
                    accelerator is made per invocation); deploy it without --warm"
                .into(),
        );
    }
    // Parsed as the sandbox will parse it: "00" and "+0" are uid 0 too.
    let root = c
        .user
        .as_deref()
        .and_then(|u| alcove_sandbox::User::parse(u).ok())
        .is_some_and(|u| u.uid == 0);
    if root {
        return Err(
            "warm: a warm function cannot run as uid 0: each copy mounts its own /proc, \
                    which the kernel refuses over root's masked one; give another --user, such \
                    as 65534 (nobody, the default)"
                .into(),
        );
    }
    Ok(())
}

impl Engine {
    fn warm_budget(&self) -> Arc<Budget> {
        self.warm
            .inner
            .budget
            .get_or_init(|| Arc::new(Budget::new(self.config.warm.memory_bytes)))
            .clone()
    }

    /// The template's spec: the version's sandbox as an invocation would
    /// get it, without a request.
    fn template_spec(&self, v: &VersionInfo) -> Result<(TemplateSpec, Holds), EngineError> {
        let (spec, lease, pinned) = self.spec_without_request(v)?;
        let init = v
            .config
            .init_timeout_ms
            .unwrap_or(INIT_TIMEOUT_DEFAULT_MS)
            .min(INIT_TIMEOUT_MAX_MS);
        Ok((
            TemplateSpec {
                name: format!("{}@{}", v.function, v.version),
                sandbox: spec,
                init_timeout: Duration::from_millis(init),
                max_ready: self.config.warm.max_ready,
                idle: self.config.warm.idle,
            },
            Holds { lease, pinned },
        ))
    }

    /// Starts `v`'s template and puts it in place of the function's old one
    /// (which is stopped). Blocking: a deploy waits for this.
    pub(crate) fn start_template(&self, v: &VersionInfo) -> Result<(), EngineError> {
        let (spec, holds) = self.template_spec(v)?;
        let template = Template::start(spec, self.warm_budget()).map_err(|e| {
            EngineError::Invalid(format!("warm: {}", alcove_sandbox::error_chain(&e)))
        })?;
        template.on_gone(self.gone_hook(v));
        install(&self.warm.inner, v, template, holds);
        Ok(())
    }

    /// Starts `v`'s template again when it goes on its own, if `v` is still
    /// the function's latest version (on a thread of its own: the hook runs
    /// on the dying template's).
    fn gone_hook(&self, v: &VersionInfo) -> GoneHook {
        let me = self.me.get().cloned();
        let v = v.clone();
        GoneHook(Arc::new(move |why: &str| {
            let (me, v) = (me.clone(), v.clone());
            tracing::warn!(
                function = %v.function,
                version = v.version,
                "warm: its template is gone ({why}); starting it again"
            );
            let _ = std::thread::Builder::new()
                .name(format!("warm {}", v.function))
                .spawn(move || {
                    if let Some(engine) = me.as_ref().and_then(std::sync::Weak::upgrade) {
                        let current = engine
                            .store
                            .function(&v.function)
                            .is_ok_and(|f| f.latest == v.version && v.config.warm);
                        if current {
                            engine.rebuild_in_background(&v);
                        }
                    }
                });
        }))
    }

    /// The running template of `v`, if it has one. When it has none (the
    /// daemon restarted, or it died), one is started in the background and
    /// this invocation runs cold.
    pub(crate) fn template_for(&self, v: &VersionInfo) -> Option<Arc<Template>> {
        if !v.config.warm {
            return None;
        }
        let live = self.live_template(v);
        if live.is_none() {
            self.rebuild_in_background(v);
        }
        live
    }

    /// The running template of `v`, if it has one (starting none).
    pub(crate) fn live_template(&self, v: &VersionInfo) -> Option<Arc<Template>> {
        let entries = self
            .warm
            .inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        entries
            .get(&v.function)
            .filter(|e| e.version == v.version && e.template.gone().is_none())
            .map(|e| e.template.clone())
    }

    /// Starts `v`'s template on a thread of its own, unless one is starting
    /// or the last start failed moments ago.
    fn rebuild_in_background(&self, v: &VersionInfo) {
        let inner = &self.warm.inner;
        let key = (v.function.clone(), v.version);
        if inner
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|t| t.elapsed() < REBUILD_BACKOFF)
        {
            return;
        }
        if !inner
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(v.function.clone())
        {
            return;
        }
        let prepared = self.template_spec(v);
        let budget = self.warm_budget();
        let hook = self.gone_hook(v);
        let inner = self.warm.inner.clone();
        let v = v.clone();
        let started = std::thread::Builder::new()
            .name(format!("warm {}", v.function))
            .spawn(move || {
                let result = prepared.and_then(|(spec, holds)| {
                    Template::start(spec, budget)
                        .map(|t| (t, holds))
                        .map_err(|e| EngineError::Invalid(alcove_sandbox::error_chain(&e)))
                });
                match result {
                    Ok((template, holds)) => {
                        template.on_gone(hook);
                        install(&inner, &v, template, holds)
                    }
                    Err(e) => {
                        tracing::warn!(
                            function = %v.function,
                            version = v.version,
                            "warm: cannot start its template (invocations run cold): {}",
                            alcove_sandbox::error_chain(&e)
                        );
                        inner
                            .failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert((v.function.clone(), v.version), Instant::now());
                    }
                }
                inner
                    .building
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&v.function);
            });
        if started.is_err() {
            self.warm
                .inner
                .building
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key.0);
        }
    }

    /// Stops the function's template (it was removed, or is no longer warm).
    pub(crate) fn stop_template(&self, function: &str) {
        let entry = self
            .warm
            .inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
        drop(entry); // the template stops when its last user lets go
    }

    /// After a rollback: the function's template follows its latest version
    /// (stopped when that one is cold, started when it is warm).
    pub(crate) fn follow_latest(&self, name: &str) {
        let latest = self
            .store
            .function(name)
            .ok()
            .and_then(|f| f.versions.into_iter().find(|v| v.version == f.latest));
        self.follow_pool(name, latest.as_ref());
        match latest {
            Some(v) if v.config.warm => {
                if self.live_template(&v).is_none() {
                    self.rebuild_in_background(&v);
                }
            }
            _ => self.stop_template(name),
        }
    }

    /// Stops every template (the daemon is shutting down).
    pub(crate) fn stop_all_templates(&self) {
        let entries: Vec<Entry> = self
            .warm
            .inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, e)| e)
            .collect();
        drop(entries);
    }

    /// At daemon start: starts the templates of warm functions' latest versions.
    pub fn restore_warm(&self) {
        let Ok(functions) = self.functions() else {
            return;
        };
        for f in functions {
            if let Some(v) = f.versions.iter().find(|v| v.version == f.latest) {
                if v.config.warm {
                    self.rebuild_in_background(v);
                }
            }
        }
    }

    /// (ready copies, copies made, copies refused) of the function's template.
    pub fn warm_counts(&self, function: &str) -> Option<(usize, u64, u64)> {
        let entries = self
            .warm
            .inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        entries.get(function).map(|e| e.template.counts())
    }
}

/// What a template's sandbox holds on to while it runs: its image's layers.
struct Holds {
    lease: Option<alcove_image::Lease>,
    /// Bind sources, pinned until the template's sandbox has mounted them.
    pinned: Vec<std::os::fd::OwnedFd>,
}

fn install(inner: &Inner, v: &VersionInfo, template: Template, holds: Holds) {
    drop(holds.pinned);
    let old = inner
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            v.function.clone(),
            Entry {
                version: v.version,
                template: Arc::new(template),
                _lease: holds.lease,
            },
        );
    drop(old);
}
