//! alcove-gvisor owns alcove's gVisor isolation tier (`--isolation gvisor`):
//! it turns a [`SandboxSpec`] into an OCI bundle (the one place that maps
//! alcove's spec onto the OCI runtime spec; `alcove-oci` reads that spec the
//! other way), drives `runsc` (gVisor's runtime) to run it, and holds the run
//! in a cgroup of alcove's own, so that the limits and the report are those
//! of the container tier. It also boots sandboxes ahead of their requests
//! (`PooledSandbox`), whose first process, the waiter (waiter.rs), starts
//! one request's handler inside, and runs agent sandboxes (serve.rs).
//!
//! The program then talks to gVisor's user-space kernel (the Sentry), not to
//! the host's: a kernel bug reachable through a syscall the container tier
//! allows is not reachable from here. The price is start-up (runsc boots a
//! Sentry and a Gofer per sandbox: ~100-300 ms on this kind of host) and
//! syscall speed (the ptrace platform intercepts every one). What gVisor
//! cannot give, and what the report says instead, is in the README's
//! "Isolation tiers" section.

mod allowed;
mod bundle;
mod pool;
mod run;
mod runsc;
mod serve;
mod strace;
pub mod waiter;

pub use bundle::{Bundle, Network};
pub use pool::{wait_for_teardowns, PooledSandbox};
pub use run::{run, run_counting_syscalls, GvisorOptions};
pub use runsc::{platforms, Runsc, PACKAGE, STATE_ROOT};
pub use serve::serve;
pub use strace::GuestSyscalls;

/// Checks that this tier can run `spec` (and that runsc is installed),
/// without running anything: a deploy's check.
pub fn check(spec: &SandboxSpec) -> Result<(), GvisorError> {
    Runsc::find()?;
    bundle::config(spec).map(drop)
}

/// Removes what dead alcoves left of their gVisor runs (after
/// `alcove_sandbox::gc` killed their cgroups).
pub fn gc() -> usize {
    bundle::gc(std::path::Path::new(STATE_ROOT))
}

use std::io;
use std::path::PathBuf;

/// What can go wrong running a sandbox in the gVisor tier.
#[derive(Debug, thiserror::Error)]
pub enum GvisorError {
    #[error(
        "the gVisor tier needs runsc, which is not installed: install the Debian package \
         `{PACKAGE}` (apt-get install {PACKAGE}) or put runsc on PATH, or use --isolation container"
    )]
    Missing,
    #[error("the gVisor tier does not offer {0} yet: leave it out or use --isolation container")]
    Unsupported(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("preparing the gVisor sandbox: {what}")]
    Prepare {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing the OCI bundle in {path}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting runsc ({path})")]
    Start {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the sandbox's cgroup")]
    Cgroup(#[source] alcove_sandbox::SandboxError),
}

pub use alcove_sandbox::SandboxSpec;
