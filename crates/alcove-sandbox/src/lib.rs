//! alcove-sandbox owns the micro-container: it turns a validated
//! [`SandboxSpec`] into a running sandbox (one `clone3` into fresh namespaces and
//! cgroups, a private root built with mounts and `pivot_root`, capabilities
//! dropped, `no_new_privs`, seccomp) and supervises it to an [`Outcome`]
//! (exit status, why it ended, what it used), tearing everything down after.
//!
//! It does not parse command lines or talk HTTP, and it makes raw syscalls only
//! through `alcove-sys` and cgroup changes only through `alcove-cgroup`.

mod adopt;
mod child;
mod error;
mod etc;
mod filter_tree;
mod mounts;
mod observer;
mod outcome;
mod pool;
pub use pool::{prepared as pool_prepared, SLOTS as POOL_SLOTS};
mod run;
mod seccomp;
pub mod spec;
mod stream;
mod supervise;
mod template;
pub mod units;
mod watch;

pub use adopt::{adoption_cgroup, run_adopted, wait_for_teardowns, Adopted, HandOver};
pub use error::SandboxError;
pub use mounts::STAGING_DIR;
pub use observer::{NoObserver, Observer};
pub use outcome::{Outcome, Phases, Status, WarmPhases};
pub use run::{
    gc, gc_orphans, gc_templates, run, run_observed, take_charge_of_cgroups, GcReport, RunOptions,
};
pub use seccomp::{copy_filter_bytes, syscall_name, syscall_number, COPY_UNSHARE_FLAGS};
pub use spec::{
    Bind, Limits, NetMode, PathRule, SandboxSpec, SpecError, Stdio, StreamTarget, User,
};
pub use watch::{UsageSoFar, UsageWatch, Watching};

/// An error and its causes on one line, joined with ": " (as anyhow's `{:#}`
/// prints them): what alcove shows users and keeps in records.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
