//! alcove-engine owns functions: their versions and code, every invocation
//! (run in its own sandbox through alcove-sandbox, recorded in the store),
//! admission (per-function and global caps with a bounded queue), async
//! invocations with retries, what the kernel polices each invocation with
//! (through alcove-monitor) and the events and metrics operators watch.
//!
//! It knows nothing of HTTP (alcove-api) or command lines (alcove).

mod accel;
mod admission;
mod attempt;
mod cluster;
mod code;
mod code_links;
mod config_change;
mod control;
mod engine;
mod function_spec;
mod guard;
mod gvisor_pool;
mod http;
mod image;
mod learning;
mod limits;
mod metrics;
mod model;
mod monitoring;
mod running;
pub mod sandboxes;
mod stats;
mod store;
mod warm;

pub use admission::HeldBytes;
pub use alcove_sandbox::error_chain;
pub use cluster::{SharedStoreConfig, MAX_LEASE_SECS, MAX_QUEUE_BATCH, MIN_LEASE_SECS};
pub use code_links::link_leaves;
pub use config_change::{ConfigChange, MAX_SECRETS, MAX_SECRET_BYTES};
pub use engine::{Engine, EngineConfig, Invocation};
pub use function_spec::{runtime_command, AllowedBind};
pub use guard::{Guard, PolicySource, MAX_RULES, MAX_SYSCALL_BUDGET};
pub use http::{Endpoint, HttpReply, HttpRequest, HttpStream};
pub use image::apply_image;
pub use learning::{LearnRequest, Learned, MAX_LEARN_INVOCATIONS, MAX_LEARN_SECONDS};
pub use limits::{Effective, FunctionLimits, MIN_MEMORY_BYTES};
pub use metrics::Metrics;
pub use model::{
    DeployRequest, Deployed, FunctionBind, FunctionConfig, FunctionInfo, InvocationRecord,
    VersionInfo,
};
pub use monitoring::{DenialRecord, EngineEvent, KernelRecord, MonitorMode, EVENT_BACKLOG};
pub use running::{RunningInvocation, RunningList, MAX_LISTED};
pub use stats::{FunctionStats, StatsBucket};
pub use store::{Cursor, InvocationFilter, StatusFilter};
pub use warm::WarmConfig;

use std::io;

/// How much of a handler's stderr an invocation record keeps.
pub const STDERR_KEPT: usize = 64 << 10;

/// What went wrong, with a stable code the API maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error("no function named {0:?}")]
    NoFunction(String),
    #[error("function {0:?} has no version {1}")]
    NoVersion(String, u32),
    #[error("function {0:?} has no secret {1:?}")]
    NoSecret(String, String),
    #[error("no invocation {0:?}")]
    NoInvocation(String),
    #[error("too many invocations waiting: {0}")]
    Busy(String),
    #[error("the daemon is stopping: it takes no new work")]
    Stopping,
    #[error("alcove failed internally (a bug: please report it): {0}")]
    Internal(String),
    #[error("the code archive is refused: {0}")]
    BadCode(String),
    #[error("the store failed")]
    Store(#[source] rusqlite::Error),
    /// The shared store (PostgreSQL) answered with an error.
    #[error("the shared store (PostgreSQL) failed")]
    SharedStore(#[source] tokio_postgres::Error),
    /// The shared store cannot be reached now; the daemon keeps trying.
    #[error("the shared store (PostgreSQL) cannot be reached now ({0}); the daemon reconnects by itself, retry shortly")]
    StoreUnavailable(String),
    #[error("{what} failed")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the sandbox could not be started")]
    Sandbox(#[source] alcove_sandbox::SandboxError),
    /// The request conflicts with the state it found (a code for the API, and why).
    #[error("{1}")]
    Conflict(&'static str, String),
}

impl EngineError {
    pub(crate) fn io(what: &'static str) -> impl Fn(io::Error) -> EngineError {
        move |source| EngineError::Io { what, source }
    }

    /// A stable, machine-readable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Invalid(_) => "invalid_request",
            EngineError::NoFunction(_) => "function_not_found",
            EngineError::NoVersion(..) => "version_not_found",
            EngineError::NoInvocation(_) => "invocation_not_found",
            EngineError::NoSecret(..) => "secret_not_found",
            EngineError::Busy(_) => "too_many_requests",
            EngineError::Stopping => "stopping",
            EngineError::Internal(_) => "internal",
            EngineError::BadCode(_) => "invalid_code",
            EngineError::Conflict(code, _) => code,
            EngineError::Store(_) | EngineError::SharedStore(_) | EngineError::Io { .. } => {
                "internal"
            }
            EngineError::StoreUnavailable(_) => "store_unavailable",
            EngineError::Sandbox(_) => "sandbox_failed",
        }
    }
}

/// Node names: 1 to 63 of letters, digits, '-', '_' and '.' (a host name fits).
pub fn valid_node(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the node name {name:?} must be 1 to 63 letters, digits, '-', '_' or '.' (give one with --node)"
        ))
    }
}

/// Function names: 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}
