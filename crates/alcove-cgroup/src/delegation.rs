//! Taking charge of the cgroup alcove was started in, on the unified hierarchy.
//!
//! cgroup v2 forbids a non-root cgroup to hold processes and also enable
//! controllers for its children (writing `cgroup.subtree_control` fails with
//! EBUSY). alcove is started inside such a cgroup wherever users run it: a
//! systemd service with `Delegate=yes`, a `systemd-run --scope`, a container's
//! cgroup namespace. So, as runc, crun and systemd's `DelegateSubgroup=` do,
//! alcove first moves its own process into a leaf child, [`LEAF`], and then
//! enables the controllers its sandboxes need. A process started in a leaf of
//! that name (systemd's `DelegateSubgroup=supervisor`) is taken to sit in its
//! parent's delegated subtree from the start.
//!
//! Every refusal names its real cause: a controller the parent does not
//! delegate, other processes sharing alcove's cgroup, or a file alcove may not
//! write; each with a fix that works.

use crate::{v2, CgroupError, Controller};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The leaf child of its delegated cgroup that alcove moves its own process into.
pub const LEAF: &str = "supervisor";

/// The fix offered for every delegation problem.
const FIX: &str = "run alcove in a cgroup of its own that is delegated the cpu, memory and \
                   pids controllers: `systemd-run --scope -p Delegate=yes alcove ...`, or the \
                   alcove.service unit (Delegate=yes)";

/// Why alcove cannot enable controllers for its sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum DelegationError {
    #[error(
        "cgroup v2 controller {controller} is not delegated to {path} (its parent does not \
         enable it for this cgroup); {FIX}"
    )]
    NotDelegated { controller: String, path: PathBuf },
    #[error(
        "alcove's cgroup {path} also holds other processes ({others}), and cgroup v2 lets a \
         cgroup with processes give no controllers to its children; {FIX}"
    )]
    SharedCgroup { path: PathBuf, others: String },
    #[error("alcove may not write {path}; run alcove as root, or {FIX}")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable controllers for the children of {path}")]
    Enable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move alcove's own process into {path}")]
    Move {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Serialises the check-and-move, which daemon threads may reach at once.
static TAKING_CHARGE: Mutex<()> = Mutex::new(());

/// Makes `controllers` available to the children of `own`, alcove's delegated
/// cgroup, moving alcove's own process into `own/supervisor` when the kernel
/// refuses while it sits in `own` itself.
pub fn enable_for_children(own: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    let names: Vec<&str> = controllers.iter().map(|c| c.name()).collect();
    enable_named_for_children(own, &names)
}

/// [`enable_for_children`] for controllers by their kernel names (any the
/// unified hierarchy has, `hugetlb` or `io` too).
pub fn enable_named_for_children(own: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let _guard = TAKING_CHARGE.lock().unwrap_or_else(|p| p.into_inner());
    let missing = missing_in_subtree(own, controllers)?;
    if missing.is_empty() {
        return Ok(());
    }
    let offered = v2::available_controllers(own)?;
    if let Some(absent) = missing.iter().find(|c| !offered.iter().any(|o| o == *c)) {
        return Err(DelegationError::NotDelegated {
            controller: absent.to_string(),
            path: own.to_owned(),
        }
        .into());
    }
    match v2::enable_controllers_raw(own, &missing) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => return Err(refusal(own, e)),
    }
    // EBUSY: processes live in `own`. Move alcove's own out of the way and
    // try again; if others remain, put it back and say who they are.
    let leaf = own.join(LEAF);
    move_self(&leaf, true)?;
    let mut result = v2::enable_controllers_raw(own, &missing);
    // Another alcove started beside this one is about to move into the
    // leaf too: give it a moment (up to ~100 ms) before calling it in the way.
    for _ in 0..20 {
        let busy = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY));
        if !busy || !processes_in(own).iter().any(|(_, comm)| comm == "alcove") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        result = v2::enable_controllers_raw(own, &missing);
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let others = processes_in(own);
            let _ = move_self(own, false);
            let _ = std::fs::remove_dir(&leaf);
            if e.raw_os_error() == Some(libc::EBUSY) && !others.is_empty() {
                return Err(DelegationError::SharedCgroup {
                    path: own.to_owned(),
                    others: describe(&others),
                }
                .into());
            }
            Err(refusal(own, e))
        }
    }
}

/// Makes `controllers` available to the children of `dir`, a cgroup of
/// alcove's own that holds no processes.
pub fn enable_below(dir: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    let names: Vec<&str> = controllers.iter().map(|c| c.name()).collect();
    let missing = missing_in_subtree(dir, &names)?;
    if missing.is_empty() {
        return Ok(());
    }
    v2::enable_controllers_raw(dir, &missing).map_err(|e| refusal(dir, e))
}

/// What `alcove doctor` reports about alcove's delegated cgroup, found without
/// changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegationCheck {
    /// alcove's delegated cgroup.
    pub dir: PathBuf,
    /// Whether it is the hierarchy's root, where the no-internal-process rule
    /// does not apply.
    pub is_root: bool,
    /// Controllers the parent makes available here.
    pub available: Vec<String>,
    /// Controllers already enabled for its children.
    pub enabled: Vec<String>,
    /// Processes in it other than this one.
    pub other_processes: Vec<(u32, String)>,
    /// Whether this process already sits in the leaf.
    pub in_leaf: bool,
}

impl DelegationCheck {
    /// Looks at `own` (alcove's delegated cgroup in the unified hierarchy).
    pub fn inspect(own: &Path) -> Self {
        let words = |file: &str| -> Vec<String> {
            std::fs::read_to_string(own.join(file))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let me = std::process::id();
        DelegationCheck {
            dir: own.to_owned(),
            is_root: !own.join("cgroup.type").exists(),
            available: words("cgroup.controllers"),
            enabled: words("cgroup.subtree_control"),
            other_processes: processes_in(own)
                .into_iter()
                .filter(|(pid, _)| *pid != me)
                .collect(),
            in_leaf: processes_in(&own.join(LEAF))
                .iter()
                .any(|(pid, _)| *pid == me),
        }
    }

    /// The controllers of `wanted` that the parent does not make available.
    pub fn undelegated<'a>(&self, wanted: &[&'a str]) -> Vec<&'a str> {
        wanted
            .iter()
            .copied()
            .filter(|c| !self.available.iter().any(|a| a == c))
            .collect()
    }

    /// One sentence: what alcove will do here, or what stops it and the fix.
    pub fn verdict(&self, wanted: &[&str]) -> Result<String, String> {
        let absent = self.undelegated(wanted);
        if !absent.is_empty() {
            return Err(format!(
                "{} not delegated to {}; {FIX}",
                absent.join(", "),
                self.dir.display()
            ));
        }
        let all_enabled = wanted.iter().all(|c| self.enabled.iter().any(|e| e == c));
        if self.is_root || all_enabled {
            return Ok(format!("sandboxes go beneath {}", self.dir.display()));
        }
        if !self.other_processes.is_empty() {
            return Err(format!(
                "{} also holds other processes ({}); {FIX}",
                self.dir.display(),
                describe(&self.other_processes)
            ));
        }
        Ok(format!(
            "alcove moves itself into {}/{LEAF} and enables {} for its sandboxes",
            self.dir.display(),
            wanted.join(", ")
        ))
    }
}

fn missing_in_subtree<'a>(
    dir: &Path,
    controllers: &[&'a str],
) -> Result<Vec<&'a str>, CgroupError> {
    let enabled = v2::enabled_controllers(dir)?;
    Ok(controllers
        .iter()
        .copied()
        .filter(|name| !enabled.iter().any(|e| e == name))
        .collect())
}

/// Moves this whole process (every thread) into `dir`, creating it if asked.
fn move_self(dir: &Path, create: bool) -> Result<(), CgroupError> {
    let failed = |source| DelegationError::Move {
        path: dir.to_owned(),
        source,
    };
    if create {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(failed(e).into()),
            _ => {}
        }
    }
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| failed(e).into())
}

fn refusal(dir: &Path, source: io::Error) -> CgroupError {
    let path = dir.join("cgroup.subtree_control");
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            DelegationError::NotWritable { path, source }.into()
        }
        _ => DelegationError::Enable {
            path: dir.to_owned(),
            source,
        }
        .into(),
    }
}

/// The processes in `dir` (not below it), with their command names.
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(|pid: u32| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_owned())
        })
        .collect()
}

fn describe(processes: &[(u32, String)]) -> String {
    let mut shown: Vec<String> = processes
        .iter()
        .take(4)
        .map(|(pid, comm)| format!("{comm} {pid}"))
        .collect();
    if processes.len() > 4 {
        shown.push(format!("{} more", processes.len() - 4));
    }
    shown.join(", ")
}

pub(crate) fn static_name(name: &str) -> &'static str {
    match name {
        "cpu" => "cpu",
        "memory" => "memory",
        "pids" => "pids",
        _ => "cpuacct",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cgroup(controllers: &str, enabled: &str, procs: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, v: &str| std::fs::write(dir.path().join(f), v).unwrap();
        write("cgroup.controllers", controllers);
        write("cgroup.subtree_control", enabled);
        write("cgroup.procs", procs);
        write("cgroup.type", "domain\n");
        dir
    }

    #[test]
    fn a_controller_the_parent_withholds_is_named_with_a_fix() {
        let dir = fake_cgroup("memory pids\n", "", "");
        let err = enable_for_children(dir.path(), &[Controller::Memory, Controller::Cpu])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpu is not delegated"), "{err}");
        assert!(err.contains("systemd-run --scope -p Delegate=yes"), "{err}");
    }

    #[test]
    fn enabled_controllers_need_no_write() {
        let dir = fake_cgroup("cpu memory pids\n", "memory pids\n", "1\n");
        enable_for_children(dir.path(), &[Controller::Memory, Controller::Pids]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(text, "memory pids\n");
    }

    #[test]
    fn doctor_verdicts_name_the_cause() {
        let me = std::process::id();
        let shared = fake_cgroup("cpu memory pids\n", "", &format!("{me}\n1\n"));
        let check = DelegationCheck::inspect(shared.path());
        assert_eq!(check.other_processes.len(), 1);
        let verdict = check.verdict(&["memory", "pids"]).unwrap_err();
        assert!(verdict.contains("other processes"), "{verdict}");

        let alone = fake_cgroup("cpu memory pids\n", "", &format!("{me}\n"));
        let verdict = DelegationCheck::inspect(alone.path())
            .verdict(&["memory", "pids"])
            .unwrap();
        assert!(verdict.contains("moves itself"), "{verdict}");

        let withheld = fake_cgroup("pids\n", "", "");
        let verdict = DelegationCheck::inspect(withheld.path())
            .verdict(&["memory", "pids"])
            .unwrap_err();
        assert!(verdict.starts_with("memory not delegated"), "{verdict}");
    }
}
