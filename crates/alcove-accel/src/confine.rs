//! Confining the service: a cgroup of its own with memory and task limits
//! (made beneath the cgroup it was started in, beside the sandboxes'), and
//! for the worker inside it, no privileges. The seccomp half is in
//! [`crate::seccomp`].

use alcove_cgroup::{CgroupError, CgroupLayout, Controller, Limits, SandboxCgroup, PARENT_DIR};
use std::io;
use std::path::{Path, PathBuf};

/// The uid and gid the worker runs as: no account has them on a standard
/// system (Debian reserves 65000-65533; 65534 is nobody, which sandboxes
/// run as, and a sandbox must not share an identity with the service).
pub const SERVICE_ID: u32 = 65533;

/// The prefix of the service's cgroup name; the supervisor's pid follows.
const CGROUP_PREFIX: &str = "accel-";

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "cannot make the accelerator service's cgroup (run it as root, in a cgroup delegated \
         the memory and pids controllers)"
    )]
    Cgroup(#[source] CgroupError),
    #[error("cannot move the accelerator worker into its cgroup {path}")]
    Join {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot drop the accelerator worker's privileges ({step})")]
    Privileges {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The service's limits, set by whoever starts it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    pub memory_bytes: u64,
    /// Tasks: the worker's threads (one per open connection, one per core
    /// for the CPU executor, a few for the GPU driver).
    pub pids: u64,
}

impl ServiceLimits {
    /// Half of this host's memory (at least 1 GiB), and 1024 tasks.
    pub fn default_for_host() -> Self {
        let total = alcove_sys::process::memory_total_bytes().unwrap_or(8 << 30);
        ServiceLimits {
            memory_bytes: (total / 2).max(1 << 30),
            pids: 1024,
        }
    }
}

/// The service's cgroup, made and removed by the supervising process.
pub struct ServiceCgroup {
    cgroup: SandboxCgroup,
}

impl ServiceCgroup {
    /// Creates `accel-<this pid>` beside the sandboxes' cgroups with
    /// `limits`, after removing any left by a service that was killed.
    pub fn create(limits: ServiceLimits) -> Result<Self, ConfineError> {
        let layout = CgroupLayout::detect().map_err(ConfineError::Cgroup)?;
        remove_stale(&layout);
        let name = format!("{CGROUP_PREFIX}{}", std::process::id());
        let cgroup = SandboxCgroup::create(&layout, &name, &[Controller::Memory, Controller::Pids])
            .map_err(ConfineError::Cgroup)?;
        let applied = cgroup.apply(
            &Limits {
                memory_bytes: Some(limits.memory_bytes),
                cpu: None,
                pids_max: Some(limits.pids),
            },
            None,
        );
        if let Err(e) = applied {
            let _ = cgroup.remove();
            return Err(ConfineError::Cgroup(e));
        }
        Ok(ServiceCgroup { cgroup })
    }

    /// Every directory the worker must join, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.cgroup.dirs()
    }

    /// How many processes the kernel's OOM killer ended in it.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills().unwrap_or(0)
    }

    /// Kills anything left in it and removes it.
    pub fn remove(self) -> Result<(), ConfineError> {
        self.cgroup.kill_all();
        self.cgroup.remove().map_err(ConfineError::Cgroup)
    }
}

/// Removes the cgroups of services whose supervisor is gone (killed before
/// it could clean up), killing what is left in them.
fn remove_stale(layout: &CgroupLayout) {
    let parents = layout
        .unified_own_dir
        .iter()
        .chain(layout.v1.iter().map(|h| &h.own_dir))
        .map(|own| own.join(PARENT_DIR));
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.strip_prefix(CGROUP_PREFIX))
                .and_then(|pid| pid.parse::<i32>().ok());
            match owner {
                Some(pid) if !alcove_sys::process::exists(pid) => {
                    let stale = SandboxCgroup::open_dirs([entry.path()]);
                    stale.kill_all();
                    let _ = stale.remove();
                }
                _ => {}
            }
        }
    }
}

/// Moves the calling process into `dirs` (what [`ServiceCgroup::dirs`]
/// listed). Called first thing by the worker, before it allocates.
pub fn join(dirs: &[PathBuf]) -> Result<(), ConfineError> {
    let pid = std::process::id().to_string();
    for dir in dirs {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &pid).map_err(|source| ConfineError::Join {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Drops every capability for good and, where the GPU's device nodes allow
/// it, root too (to [`SERVICE_ID`], keeping the groups that own those nodes).
/// Must be called while the process has one thread: these calls change the
/// calling thread only. Returns the uid it runs as afterwards.
pub fn drop_privileges() -> Result<u32, ConfineError> {
    let step = |step| move |source| ConfineError::Privileges { step, source };
    if !alcove_sys::process::is_root() {
        return Ok(current_uid());
    }
    let (groups, root_only) = gpu_node_groups(Path::new("/dev"));
    alcove_sys::caps::drop_bounding_and_lock().map_err(step("capability bounding set"))?;
    if !root_only {
        alcove_sys::process::set_gids(SERVICE_ID, &groups).map_err(step("groups"))?;
        alcove_sys::process::set_uid(SERVICE_ID).map_err(step("uid"))?;
    }
    alcove_sys::caps::clear_all().map_err(step("capabilities"))?;
    Ok(current_uid())
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// The groups of `dev`'s NVIDIA nodes that grant what others are not
/// granted, and whether some node is open to its owner alone (root: then
/// the worker keeps uid 0, without capabilities, to reach the GPU).
fn gpu_node_groups(dev: &Path) -> (Vec<u32>, bool) {
    use std::os::unix::fs::MetadataExt;
    let (mut groups, mut root_only) = (Vec::new(), false);
    let Ok(entries) = std::fs::read_dir(dev) else {
        return (groups, root_only);
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("nvidia") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let mode = meta.mode();
        let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
        if rw(0) || meta.is_dir() {
            continue;
        }
        if rw(3) {
            groups.push(meta.gid());
        } else {
            root_only = true;
        }
    }
    groups.sort_unstable();
    groups.dedup();
    (groups, root_only)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn gpu_nodes_decide_the_groups_kept() {
        let dev = tempfile::tempdir().unwrap();
        let node = |name: &str, mode: u32| {
            let path = dev.path().join(name);
            std::fs::write(&path, "").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        node("null", 0o600);
        node("nvidiactl", 0o666);
        assert_eq!(gpu_node_groups(dev.path()), (vec![], false));
        node("nvidia0", 0o660);
        let gid = std::os::unix::fs::MetadataExt::gid(
            &std::fs::metadata(dev.path().join("nvidia0")).unwrap(),
        );
        assert_eq!(gpu_node_groups(dev.path()), (vec![gid], false));
        node("nvidia-uvm", 0o600);
        assert!(gpu_node_groups(dev.path()).1, "a node for root alone");
    }
}
