//! alcove-agent owns what runs inside an agent sandbox and the daemon's line
//! to it: the agent (pid 1 of a long-lived sandbox, holding no privilege the
//! sandbox lacks) starts commands, opens, lists and watches files, and says
//! when its commands end; [`AgentLink`] is the daemon's side of that socket.
//!
//! Bytes never pass through the agent: a command's stdin, stdout and stderr
//! are pipes the daemon made and sent along (or a terminal the agent opened
//! in the sandbox's own devpts, whose master it sends back), and a file the
//! daemon reads or writes is a descriptor the agent opened as the sandbox's
//! user and sent back. So every access is checked by the kernel against the
//! sandbox's own user, mounts, Landlock rules and seccomp filter, never the
//! daemon's.
//!
//! It does not create sandboxes (alcove-sandbox does) or decide their
//! lifetimes (the engine does).

mod agent;
mod link;
pub mod protocol;
mod start;

pub use agent::{serve, serve_inherited};
pub use link::{AgentLink, ExitStatus, LinkError, Opened, Upload};
pub use protocol::{
    AgentFailure, Entry, EntryKind, FailureKind, PtySize, WatchEvent, UPLOAD_PREFIX,
};

/// The environment variable naming the agent's socket descriptor.
pub const AGENT_FD_ENV: &str = "ALCOVE_AGENT_FD";
/// The environment variable naming the seccomp program (raw `struct
/// sock_filter`s) the agent stacks on every command but the interpreter.
pub const COPY_FILTER_ENV: &str = "ALCOVE_COPY_FILTER";
/// Set (to `1`) when the agent is pid 1 of a fork with memory: it mounts its
/// pid namespace's /proc with the one capability it was given for that
/// (CAP_SYS_ADMIN, ambient) and drops it before anything else.
pub const FORK_INIT_ENV: &str = "ALCOVE_AGENT_FORK_INIT";
