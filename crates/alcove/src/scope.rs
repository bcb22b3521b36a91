//! A cgroup of alcove's own on systemd hosts.
//!
//! cgroup v2 gives controllers to the children of a cgroup only while that
//! cgroup holds no processes. Started from a login shell, alcove shares the
//! session's scope with the shell, so it cannot give its sandboxes memory,
//! pids or cpu limits beneath it. Where systemd runs, alcove then does what a
//! user would be told to do: it asks systemd for a delegated scope of its own
//! by re-executing itself under `systemd-run --scope -p Delegate=yes` (the
//! process keeps its pid, stdio, signals and exit status; systemd removes the
//! scope when it ends). This costs one round trip to systemd per command and
//! happens only from a shared cgroup: a service with `Delegate=yes`
//! (dist/alcove.service), a delegated scope or a container's cgroup does not
//! need it.

use alcove_cgroup::{CgroupError, DelegationError};
use alcove_sandbox::SandboxError;
use std::os::unix::process::CommandExt;

/// Set in the re-executed alcove, so it never asks twice.
const MARKER: &str = "ALCOVE_SYSTEMD_SCOPE";

/// Makes sure alcove can make cgroups for its sandboxes, moving into a scope
/// of its own where it must. Returns only when it can, or with the reason
/// it cannot.
pub fn ensure_own_cgroup() -> Result<(), SandboxError> {
    // Read once and dropped, so no helper or sandbox inherits it. This runs
    // first thing, before alcove starts any thread.
    let reexecuted = std::env::var_os(MARKER).is_some();
    std::env::remove_var(MARKER);
    if !alcove_sys::process::is_root() {
        return Ok(()); // the run itself says it needs root
    }
    let err = match alcove_sandbox::take_charge_of_cgroups() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let shared = matches!(
        &err,
        SandboxError::Cgroup(CgroupError::Delegation(
            DelegationError::SharedCgroup { .. }
        ))
    );
    if !shared || reexecuted || !systemd_runs() {
        return Err(err);
    }
    eprintln!(
        "alcove: note: this cgroup is shared with other processes; asking systemd for a \
         scope of alcove's own (systemd-run --scope -p Delegate=yes)"
    );
    let Ok(exe) = std::env::current_exe() else {
        return Err(err);
    };
    let unit = format!(
        "alcove-{}-{}",
        std::process::id(),
        alcove_sys::process::random_id()
    );
    let exec_error = std::process::Command::new("systemd-run")
        .args(["--scope", "--quiet", "--collect", "-p", "Delegate=yes"])
        .arg(format!("--unit={unit}"))
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(MARKER, "1")
        .exec();
    eprintln!("alcove: note: could not ask systemd for a scope of alcove's own: {exec_error}");
    Err(err)
}

/// Whether systemd is the service manager here (its own test, sd_booted()).
pub fn systemd_runs() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}
