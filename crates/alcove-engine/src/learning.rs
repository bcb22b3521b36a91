//! Learning a function's policy from its real traffic (`alcove fn learn`):
//! for a number of invocations or a while, each invocation is traced (its
//! syscalls, files opened, network peers) and what it used is added to the
//! function's learned profile in the store. `--policy learned` on a deploy
//! pins that profile into the new version, which then enforces it.

use crate::engine::Engine;
use crate::model::VersionInfo;
use crate::store::now;
use crate::EngineError;
use alcove_monitor::{Profile, WatchResult};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// The most invocations one learning session may take, and the longest it may run.
pub const MAX_LEARN_INVOCATIONS: u32 = 100_000;
pub const MAX_LEARN_SECONDS: u64 = 7 * 24 * 3600;

/// `POST /v1/functions/{name}/learn`: learn from the next invocations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnRequest {
    /// Stop after this many invocations (default 100 when no window is given).
    #[serde(default)]
    pub invocations: Option<u32>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub seconds: Option<u64>,
    /// Forget what was learned before (default: add to it).
    #[serde(default)]
    pub reset: bool,
}

/// A function's learned profile and whether learning goes on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Learned {
    pub function: String,
    /// Learning now: invocations are traced.
    pub learning: bool,
    /// Invocations still to learn from, when the session counts them.
    pub remaining: Option<u32>,
    /// Unix seconds when the session ends, when it has a window.
    pub until: Option<f64>,
    /// Invocations learned from, in all.
    pub invocations: u64,
    /// What they used: `--policy learned` enforces this.
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    remaining: Option<u32>,
    until: Option<f64>,
}

impl Session {
    fn active(&self) -> bool {
        self.remaining.is_none_or(|n| n > 0) && self.until.is_none_or(|t| now() < t)
    }
}

/// The sessions in progress; the profiles are in the store.
#[derive(Default)]
pub(crate) struct Learning {
    sessions: Mutex<HashMap<String, Session>>,
    /// Held while a profile is read, merged and written back.
    merge: Mutex<()>,
}

impl Engine {
    /// Starts (or restarts) learning `name`'s policy from its next invocations.
    pub fn learn(&self, name: &str, req: LearnRequest) -> Result<Learned, EngineError> {
        self.store.function(name)?;
        if req.invocations == Some(0) || req.invocations > Some(MAX_LEARN_INVOCATIONS) {
            return Err(EngineError::Invalid(format!(
                "invocations: use 1 to {MAX_LEARN_INVOCATIONS}"
            )));
        }
        if req.seconds == Some(0) || req.seconds > Some(MAX_LEARN_SECONDS) {
            return Err(EngineError::Invalid(format!(
                "seconds: use 1 to {MAX_LEARN_SECONDS} (a week)"
            )));
        }
        let remaining = match (req.invocations, req.seconds) {
            (None, None) => Some(100),
            (n, _) => n,
        };
        let session = Session {
            remaining,
            until: req.seconds.map(|s| now() + s as f64),
        };
        if req.reset {
            let _merging = self
                .learning
                .merge
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.store.forget_learned(name)?;
        }
        self.learning
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), session);
        tracing::info!(function = %name, ?remaining, seconds = ?req.seconds, "learning started");
        self.learned(name)
    }

    /// Stops learning `name`'s policy (what was learned stays).
    pub fn stop_learning(&self, name: &str) -> Result<Learned, EngineError> {
        self.store.function(name)?;
        self.learning
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.learned(name)
    }

    /// `name`'s learned profile and session.
    pub fn learned(&self, name: &str) -> Result<Learned, EngineError> {
        self.store.function(name)?;
        let session = self.session(name);
        let (profile, invocations) = match self.store.learned(name)? {
            Some((p, n)) => (Some(p), n),
            None => (None, 0),
        };
        Ok(Learned {
            function: name.to_owned(),
            learning: session.is_some(),
            remaining: session.and_then(|s| s.remaining),
            until: session.and_then(|s| s.until),
            invocations,
            profile,
        })
    }

    /// The session of `name`, while it is active (an ended one is removed).
    fn session(&self, name: &str) -> Option<Session> {
        let mut sessions = self
            .learning
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match sessions.get(name) {
            Some(s) if s.active() => Some(*s),
            Some(_) => {
                sessions.remove(name);
                None
            }
            None => None,
        }
    }

    /// Ends `name`'s session (the function was removed).
    pub(crate) fn forget_learning(&self, name: &str) {
        self.learning
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Whether the next invocation of `name` is learned from.
    pub(crate) fn learning_now(&self, name: &str) -> bool {
        self.session(name).is_some()
    }

    /// Adds what one invocation used to the function's profile.
    pub(crate) fn learn_from(&self, v: &VersionInfo, seen: &WatchResult) {
        let used: Vec<u32> = seen.syscall_counts.iter().map(|(nr, _)| *nr).collect();
        let program = crate::function_spec::runtime_command(&v.config)
            .unwrap_or_else(|| v.config.handler.clone());
        let this = Profile::learned(&program, &used, &seen.events);
        let _merging = self
            .learning
            .merge
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (mut profile, n) = match self.store.learned(&v.function) {
            Ok(Some(known)) => known,
            Ok(None) => (
                Profile {
                    alcove_profile: 1,
                    ..Profile::default()
                },
                0,
            ),
            // Never start over on a read error: that would drop what was learned.
            Err(e) => {
                tracing::warn!(function = %v.function, "cannot read the learned profile: {e}");
                return;
            }
        };
        if seen.events_lost > 0 || seen.dropped_during > 0 {
            // More happened than the watch kept, or the ring overflowed
            // while it ran: what was missed would be refused later.
            profile.incomplete = true;
        }
        profile.merge(&this);
        if let Err(e) = self.store.set_learned(&v.function, &profile, n + 1) {
            tracing::warn!(function = %v.function, "cannot store the learned profile: {e}");
            return;
        }
        let mut sessions = self
            .learning
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get_mut(&v.function) {
            if let Some(n) = s.remaining.as_mut() {
                *n = n.saturating_sub(1);
            }
            if !s.active() {
                sessions.remove(&v.function);
                tracing::info!(function = %v.function, invocations = n + 1, "learning done");
            }
        }
    }

    /// Replaces `"learned"` in a planned version's guard with the profile
    /// learned for `name`, pinned into the version.
    pub(crate) fn resolve_learned(
        &self,
        name: &str,
        guard: &mut crate::guard::Guard,
    ) -> Result<(), EngineError> {
        use crate::guard::PolicySource;
        if guard.policy != Some(PolicySource::Named("learned".into())) {
            return Ok(());
        }
        match self.store.learned(name)? {
            Some((profile, _)) => {
                guard.policy = Some(PolicySource::Profile(Box::new(profile)));
                Ok(())
            }
            None => Err(EngineError::Invalid(format!(
                "policy \"learned\": nothing was learned for {name:?} yet; run `alcove fn learn \
                 {name}` and invoke it first"
            ))),
        }
    }
}
