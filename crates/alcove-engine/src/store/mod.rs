//! The store: where functions, versions, secrets, invocation records and
//! learned profiles live. SQLite in the data directory for one machine
//! ([`sqlite`]); PostgreSQL shared by any number of daemons ([`postgres`]),
//! which also holds the code, the async queue and the cluster-wide
//! concurrency slots ([`SharedStore`]).
//!
//! Every method blocks: the engine calls them off its async threads.

#[cfg(test)]
mod filter_tests;
mod postgres;
mod secret_box;
mod sqlite;

pub(crate) use postgres::PgStore;
pub(crate) use secret_box::SecretBox;
pub(crate) use sqlite::SqliteStore;

use crate::model::{FunctionConfig, FunctionInfo, InvocationRecord, VersionInfo};
use crate::EngineError;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Which of a function's invocations a listing wants, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationFilter {
    /// At most this many (1 to 1000: the API checks).
    pub limit: u32,
    pub status: Option<StatusFilter>,
    /// Where the page starts.
    pub before: Option<Cursor>,
}

/// Where a page of a listing starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    /// After this invocation in the listing's order (newest first, those of
    /// one instant by id): the last row of the page before. An id, not a
    /// time, so a client whose float parsing is off by a bit still pages
    /// without skipping or repeating a row.
    After(String),
    /// Created before this time (unix seconds).
    CreatedBefore(f64),
}

/// An invocation's outcome, as a listing filters on it.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusFilter {
    /// Exited 0.
    Succeeded,
    /// Ended any other way.
    Failed,
    /// This status exactly (`timeout`, `oom`, `queued`...).
    Is(String),
}

impl StatusFilter {
    /// `ok`, `failed`, or a status of the report's vocabulary.
    pub fn parse(text: &str) -> Option<StatusFilter> {
        const STATUSES: [&str; 10] = [
            "exited",
            "signaled",
            "timeout",
            "cpu_time",
            "oom",
            "killed_by_policy",
            "error",
            "cancelled",
            "queued",
            "running",
        ];
        match text {
            "ok" => Some(StatusFilter::Succeeded),
            "failed" => Some(StatusFilter::Failed),
            s if STATUSES.contains(&s) => Some(StatusFilter::Is(s.to_owned())),
            _ => None,
        }
    }

    /// The word the listing's SQL compares with (see [`FILTERED_INVOCATIONS`]).
    fn word(&self) -> &str {
        match self {
            StatusFilter::Succeeded => "ok",
            StatusFilter::Failed => "failed",
            StatusFilter::Is(s) => s,
        }
    }
}

impl InvocationFilter {
    /// The parameters of [`FILTERED_INVOCATIONS`] after the function: the
    /// status word ('' for any), a time bound (past every row when none) and
    /// the id to start after ('' for none).
    pub(crate) fn params(&self) -> (String, f64, String) {
        let (at, id) = match &self.before {
            Some(Cursor::After(id)) => (f64::MAX, id.clone()),
            Some(Cursor::CreatedBefore(at)) if at.is_finite() => (*at, String::new()),
            _ => (f64::MAX, String::new()),
        };
        (
            self.status
                .as_ref()
                .map_or(String::new(), |s| s.word().to_owned()),
            at,
            id,
        )
    }
}

/// The WHERE clause and order of a filtered listing, the same for SQLite and
/// PostgreSQL (each numbers its parameters its own way: `{N}` here, and
/// names its table: `{T}`): function, status word, time bound, the id to
/// start after. One statement whatever the filter, so it is prepared once.
pub(crate) const FILTERED_INVOCATIONS: &str = "function = {1} \
    AND created_at < {3} \
    AND ({4} = '' OR EXISTS (SELECT 1 FROM {T} c WHERE c.id = {4} \
        AND ({T}.created_at < c.created_at \
             OR ({T}.created_at = c.created_at AND {T}.id < c.id)))) \
    AND ( \
    {2} = '' \
    OR ({2} = 'ok' AND status = 'exited' AND exit_code = 0) \
    OR ({2} = 'failed' AND status NOT IN ('queued', 'running') \
        AND NOT (status = 'exited' AND COALESCE(exit_code, -1) = 0)) \
    OR status = {2}) \
    ORDER BY created_at DESC, id DESC";

/// [`FILTERED_INVOCATIONS`] on `table`, with parameters spelled `{prefix}N`.
pub(crate) fn filtered_invocations(table: &str, prefix: &str) -> String {
    FILTERED_INVOCATIONS
        .replace("{T}", table)
        .replace("{1}", &format!("{prefix}1"))
        .replace("{2}", &format!("{prefix}2"))
        .replace("{3}", &format!("{prefix}3"))
        .replace("{4}", &format!("{prefix}4"))
}

/// What every store keeps.
pub(crate) trait StoreBackend: Send + Sync {
    /// Marks what this daemon (this node, on a shared store) left in flight
    /// when it died as failed; returns how many. Queued async invocations of
    /// a shared store are not touched: their leases expire and another
    /// daemon takes them.
    fn recover(&self) -> Result<usize, EngineError>;
    /// Adds version N+1 of `name` and points `latest` at it, in one transaction.
    fn add_version(
        &self,
        name: &str,
        config: &FunctionConfig,
        code_digest: Option<&str>,
        secrets: &BTreeMap<String, Vec<u8>>,
    ) -> Result<VersionInfo, EngineError>;
    fn function_names(&self) -> Result<Vec<String>, EngineError>;
    fn function(&self, name: &str) -> Result<FunctionInfo, EngineError>;
    /// The function's `latest` version, or None when there is no such function.
    fn latest(&self, name: &str) -> Result<Option<u32>, EngineError>;
    fn set_latest(&self, name: &str, version: u32) -> Result<(), EngineError>;
    /// Takes back a version just added: `latest` returns to `previous`, or
    /// the function goes with its only version.
    fn remove_version(
        &self,
        name: &str,
        version: u32,
        previous: Option<u32>,
    ) -> Result<(), EngineError>;
    /// Removes a function, its versions, secrets, records (and queued jobs).
    fn delete_function(&self, name: &str) -> Result<(), EngineError>;
    /// The code digests some version still runs.
    fn code_digests(&self) -> Result<HashSet<String>, EngineError>;
    /// Deletes finished invocation records created before `before`.
    fn purge_invocations(&self, before: f64) -> Result<usize, EngineError>;
    /// Records a new invocation; NoFunction when its version is gone.
    fn insert_invocation(&self, r: &InvocationRecord) -> Result<(), EngineError>;
    fn update_invocation(&self, r: &InvocationRecord) -> Result<(), EngineError>;
    fn invocation(&self, id: &str) -> Result<InvocationRecord, EngineError>;
    /// `function`'s invocations that `filter` picks, newest first.
    fn recent_invocations(
        &self,
        function: &str,
        filter: &InvocationFilter,
    ) -> Result<Vec<InvocationRecord>, EngineError>;
    fn learned(
        &self,
        function: &str,
    ) -> Result<Option<(alcove_monitor::Profile, u64)>, EngineError>;
    fn set_learned(
        &self,
        function: &str,
        profile: &alcove_monitor::Profile,
        invocations: u64,
    ) -> Result<(), EngineError>;
    fn forget_learned(&self, function: &str) -> Result<(), EngineError>;
    /// The secret values of one version (decrypted).
    fn secrets(
        &self,
        function: &str,
        version: u32,
    ) -> Result<BTreeMap<String, Vec<u8>>, EngineError>;
    /// The store several daemons share, when this is one.
    fn shared(&self) -> Option<&dyn SharedStore> {
        None
    }
}

/// An async invocation taken from the shared queue under a lease.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedJob {
    pub id: String,
    pub function: String,
    pub version: u32,
    pub body: Vec<u8>,
    /// Further attempts allowed after the first.
    pub retries: u32,
    /// Claims so far, this one included (attempts count only once begun:
    /// the record says how many).
    pub attempt: u32,
}

/// The leases a renewal extended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Renewed {
    pub jobs: Vec<String>,
    pub slots: Vec<String>,
}

/// An invocation running somewhere in the cluster (for `fn ps`).
#[derive(Debug, Clone)]
pub(crate) struct ClusterRunning {
    pub id: String,
    pub function: String,
    pub version: u32,
    pub node: String,
    pub started_at: f64,
    pub is_async: bool,
}

/// What only a store shared by several daemons does: code blobs, the async
/// queue with leases, cluster-wide concurrency slots, and the nodes.
pub(crate) trait SharedStore: Send + Sync {
    /// Keeps a function's code archive under its digest (idempotent).
    fn put_code(&self, digest: &str, tar: &[u8]) -> Result<(), EngineError>;
    /// The code archive stored under `digest`, if any.
    fn code(&self, digest: &str) -> Result<Option<Vec<u8>>, EngineError>;
    /// Records a queued async invocation and its job (body, retries) in one
    /// transaction; NoFunction when its version is gone.
    fn enqueue(&self, r: &InvocationRecord, body: &[u8], retries: u32) -> Result<(), EngineError>;
    /// Takes up to `max` jobs that are due and not leased (or whose lease
    /// expired), leases them to this node for `lease`, and counts the
    /// attempt; oldest first, skipping rows other daemons hold.
    fn claim(&self, max: usize, lease: Duration) -> Result<Vec<ClaimedJob>, EngineError>;
    /// Extends the leases of the jobs and slots this process holds (by id);
    /// returns those it still held: the others lapsed and may be another's.
    fn renew(
        &self,
        lease: Duration,
        jobs: &[String],
        slots: &[String],
    ) -> Result<Renewed, EngineError>;
    /// The job is over (succeeded, failed for good, or cancelled): it leaves
    /// the queue, where this node holds it.
    fn finish_job(&self, id: &str) -> Result<(), EngineError>;
    /// The attempt failed and another is allowed: the job is released, due after `delay`.
    fn retry_job(&self, id: &str, delay: Duration) -> Result<(), EngineError>;
    /// Gives a claimed job back without counting its attempt (it could not
    /// get a cluster-wide slot of its function): unleased, due after
    /// `delay`, `attempts` one less; only where this node holds it.
    fn release_job(&self, id: &str, delay: Duration) -> Result<(), EngineError>;
    /// Cancels a queued job no live lease holds (waiting, or its holder's
    /// lease expired): out of the queue, its record `cancelled` with
    /// `reason`, in one transaction; false when a daemon holds it.
    fn cancel_queued(&self, id: &str, reason: &str) -> Result<bool, EngineError>;
    /// Jobs queued (due or not, leased or not).
    fn queue_depth(&self) -> Result<u64, EngineError>;
    /// Takes one of `function`'s `cap` cluster-wide slots for `invocation`,
    /// leased for `lease`; false when all are held (by live leases).
    fn take_slot(
        &self,
        function: &str,
        cap: u32,
        invocation: &str,
        lease: Duration,
    ) -> Result<bool, EngineError>;
    fn release_slot(&self, invocation: &str) -> Result<(), EngineError>;
    /// Invocations whose status is `running`, on every node, oldest first.
    fn running(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ClusterRunning>, EngineError>;
}

/// The engine's store, whichever it is.
pub(crate) struct Store(Box<dyn StoreBackend>);

impl Store {
    pub(crate) fn new(backend: impl StoreBackend + 'static) -> Self {
        Store(Box::new(backend))
    }
}

impl std::ops::Deref for Store {
    type Target = dyn StoreBackend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
