//! What can go wrong with an agent sandbox, in the API's terms.

use alcove_agent::{FailureKind, LinkError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxesError {
    #[error("no sandbox {0:?} (it was removed, or passed its timeout)")]
    NotFound(String),
    #[error("no sandbox template {0:?} (make one with a snapshot)")]
    NoTemplate(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{0} sandboxes exist, the most this daemon holds (--max-sandboxes); remove some first"
    )]
    TooMany(usize),
    #[error("no command with pid {0} in this sandbox")]
    NoProcess(i32),
    #[error(
        "nothing listens on port {0} in the sandbox (start a server on 127.0.0.1 or 0.0.0.0 there)"
    )]
    NoListener(u16),
    #[error("{0}")]
    Conflict(String),
    #[error("the sandbox's disk is full (give it more with `disk` at create)")]
    DiskFull,
    /// The daemon is at a bound of its own, across sandboxes.
    #[error("{0}")]
    Busy(String),
    #[error("the sandbox could not be started: {0}")]
    Start(String),
    /// A fork with memory the sandbox's own side did not complete (its
    /// session refused, stalled, or its copy failed a check).
    #[error("the fork with memory failed: {0}")]
    ForkFailed(String),
    #[error(transparent)]
    Agent(#[from] LinkError),
    #[error("{what} failed")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxesError {
    pub(crate) fn io(what: &'static str) -> impl Fn(std::io::Error) -> SandboxesError {
        move |source| SandboxesError::Io { what, source }
    }

    /// A stable, machine-readable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            SandboxesError::NotFound(_) => "sandbox_not_found",
            SandboxesError::NoTemplate(_) => "template_not_found",
            SandboxesError::Invalid(_) => "invalid_request",
            SandboxesError::TooMany(_) => "too_many_sandboxes",
            SandboxesError::NoProcess(_) => "process_not_found",
            SandboxesError::NoListener(_) => "port_not_listening",
            SandboxesError::Conflict(_) => "conflict",
            SandboxesError::DiskFull => "sandbox_disk_full",
            SandboxesError::Busy(_) => "daemon_busy",
            SandboxesError::ForkFailed(_) => "fork_failed",
            SandboxesError::Start(_) | SandboxesError::Io { .. } => "internal",
            SandboxesError::Agent(LinkError::Gone) => "sandbox_gone",
            SandboxesError::Agent(LinkError::Failed(f)) => match f.kind {
                FailureKind::NotFound => "file_not_found",
                FailureKind::PermissionDenied => "permission_denied",
                FailureKind::AlreadyExists => "already_exists",
                FailureKind::NotADirectory => "not_a_directory",
                FailureKind::IsADirectory => "is_a_directory",
                FailureKind::NotEmpty => "directory_not_empty",
                FailureKind::Invalid => "invalid_request",
                FailureKind::Other => "failed",
            },
            SandboxesError::Agent(LinkError::TooLarge(_)) => "invalid_request",
            SandboxesError::Agent(_) => "agent_failed",
        }
    }

    /// The HTTP status for the API.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            "sandbox_not_found" | "process_not_found" | "file_not_found" | "template_not_found" => {
                404
            }
            "invalid_request" | "not_a_directory" | "is_a_directory" => 400,
            "too_many_sandboxes" => 429,
            "permission_denied" => 403,
            "conflict" | "already_exists" | "directory_not_empty" => 409,
            "sandbox_gone" => 410,
            "sandbox_disk_full" => 507,
            "daemon_busy" => 503,
            "failed" | "fork_failed" => 422,
            "port_not_listening" => 502,
            _ => 500,
        }
    }
}
