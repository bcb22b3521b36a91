//! Errors from starting and supervising a sandbox.

use std::io;

/// Why alcove could not run a sandbox (as opposed to the program failing).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("alcove must run as root: it creates namespaces, cgroups and mounts (the sandboxed program itself runs unprivileged)")]
    NotRoot,
    #[error("cannot set up the sandbox's cgroups")]
    Cgroup(#[source] alcove_cgroup::CgroupError),
    #[error("cannot prepare the sandbox: {what}")]
    Prepare {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the sandbox process (clone3)")]
    Clone(#[source] io::Error),
    #[error("sandbox setup failed while {what}")]
    Setup {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("program not found in the sandbox: {program} (give a full path, or check PATH and the mounts)")]
    ProgramNotFound { program: String },
    #[error("program cannot be executed in the sandbox: {program}")]
    ProgramNotExecutable {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch the sandbox")]
    Observer(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("lost track of the sandbox")]
    Supervise(#[source] io::Error),
}

impl SandboxError {
    /// The exit code `alcove run` uses: 127 for a missing program, 126 for one
    /// that cannot be executed, 125 for alcove's own failures (as docker and crun do).
    pub fn exit_code(&self) -> i32 {
        match self {
            SandboxError::ProgramNotFound { .. } => 127,
            SandboxError::ProgramNotExecutable { .. } => 126,
            _ => 125,
        }
    }
}
