//! Where a container's state lives between calls, and what status it is in.
//!
//! Each container is a directory `<root>/<id>`: `state.json` (written once the
//! init is ready, replaced atomically), `exec.fifo` (present while the
//! container is `created`: `start` opens it to let the init exec). Creating
//! the directory claims the id, so two concurrent `create`s of one id cannot
//! both succeed; every call that changes a container holds an exclusive
//! `flock` on the directory, so concurrent calls on one id are serialised.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cgroups::ContainerCgroup;

/// The root used when `--root` is not given (runc's is /run/runc).
pub const DEFAULT_ROOT: &str = "/run/alcove-oci";
/// The spec version of the state documents we print.
pub const OCI_VERSION: &str = "1.0.2";
/// The longest container id accepted.
const MAX_ID_LEN: usize = 1024;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    #[error("container with id \"{0}\" already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.' (not starting with '.')")]
    BadId(String),
    #[error("cannot use state directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state of container \"{id}\" is unreadable")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The lifecycle states of the runtime spec, plus runc's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The init's pid in the runtime's pid namespace.
    pub pid: i32,
    /// The init's start time (field 22 of /proc/PID/stat): tells a reused
    /// pid from the init.
    pub start_time: u64,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub cgroup: ContainerCgroup,
    /// The config the container was created from (for exec, hooks, delete).
    pub spec: Box<oci_spec::runtime::Spec>,
    #[serde(default)]
    pub owner: String,
}

/// A container's directory, open and (for changes) locked.
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
    dir: OwnedFd,
}

/// Checks `id` is a safe single path component, as runc does.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A real (not O_PATH) descriptor of the directory: flock needs one.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    fs::File::open(path).map(OwnedFd::from)
}

impl ContainerDir {
    /// Claims `id` under `root` (creating the root if needed) and locks it.
    pub fn create(root: &Path, id: &str) -> Result<Self, StateError> {
        check_id(id)?;
        if !root.exists() {
            fs::create_dir_all(root).map_err(io_err(root))?;
            // Only a root we made is narrowed: `--root /tmp` must stay as it is.
            let _ = fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
        let path = root.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        let dir = open_dir(&path).map_err(io_err(&path))?;
        alcove_sys::fd::flock(dir.as_fd(), alcove_sys::fd::Lock::Exclusive)
            .map_err(io_err(&path))?;
        Ok(ContainerDir {
            id: id.to_string(),
            path,
            dir,
        })
    }

    /// Opens the existing container `id`; `lock` takes the exclusive lock
    /// (waiting for a concurrent call on the same id to finish).
    pub fn open(root: &Path, id: &str, lock: bool) -> Result<Self, StateError> {
        check_id(id)?;
        let mut path = root.join(id);
        // Through the default root's link: act on the real directory.
        if let Ok(target) = fs::read_link(&path) {
            if target.is_absolute() {
                path = target;
            }
        }
        let dir = match open_dir(&path) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if lock {
            alcove_sys::fd::flock(dir.as_fd(), alcove_sys::fd::Lock::Exclusive)
                .map_err(io_err(&path))?;
            // Deleted while we waited for the lock.
            if !path.exists() {
                return Err(StateError::NotFound(id.to_string()));
            }
        }
        Ok(ContainerDir {
            id: id.to_string(),
            path,
            dir,
        })
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }

    /// The directory, open (an init keeps it to reach the fifo after
    /// pivot_root).
    pub fn dir_fd(&self) -> &OwnedFd {
        &self.dir
    }

    /// The saved state, or `None` while the container is being created.
    pub fn load(&self) -> Result<Option<Saved>, StateError> {
        let file = self.path.join("state.json");
        match fs::read(&file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Corrupt {
                        id: self.id.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&file)(e)),
        }
    }

    pub fn save(&self, saved: &Saved) -> Result<(), StateError> {
        let tmp = self.path.join(".state.json.tmp");
        let bytes = serde_json::to_vec(saved).expect("state serialises");
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        let file = self.path.join("state.json");
        fs::rename(&tmp, &file).map_err(io_err(&file))
    }

    /// Remembers the container's cgroup before its init exists, so that
    /// `delete --force` of a create that never finished still removes it.
    pub fn save_cgroup(&self, cgroup: &ContainerCgroup) -> Result<(), StateError> {
        let file = self.path.join("cgroup.json");
        let bytes = serde_json::to_vec(cgroup).expect("cgroup serialises");
        fs::write(&file, bytes).map_err(io_err(&file))
    }

    /// The cgroup [`save_cgroup`](Self::save_cgroup) remembered, if any.
    pub fn load_cgroup(&self) -> Option<ContainerCgroup> {
        let bytes = fs::read(self.path.join("cgroup.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The status the spec defines, derived from the kernel's view now.
    pub fn status(&self, saved: Option<&Saved>) -> Status {
        let Some(saved) = saved else {
            return Status::Creating;
        };
        if !init_alive(saved) {
            return Status::Stopped;
        }
        if self.fifo_path().exists() {
            return Status::Created;
        }
        if saved.cgroup.is_frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    /// Removes the directory and everything in it, and its link from the
    /// default root.
    pub fn remove(self) -> Result<(), StateError> {
        let link = Path::new(DEFAULT_ROOT).join(&self.id);
        if fs::read_link(&link).is_ok_and(|target| target == self.path) {
            let _ = fs::remove_file(&link);
        }
        fs::remove_dir_all(&self.path).map_err(io_err(&self.path))
    }

    /// Callers such as podman ask for `state ID` without the `--root` they
    /// created it with: a link under the default root leads there.
    pub fn link_from_default_root(&self) {
        let default = Path::new(DEFAULT_ROOT);
        if self.path.parent() == Some(default) {
            return;
        }
        if fs::create_dir_all(default).is_ok() {
            let _ = std::os::unix::fs::symlink(&self.path, default.join(&self.id));
        }
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks), and whether the
/// process is a zombie (or dead).
pub fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = *fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// Whether the container's init is still the process it was (not a reused
/// pid) and has not exited.
pub fn init_alive(saved: &Saved) -> bool {
    saved.pid > 0
        && matches!(proc_start(saved.pid), Some((start, false)) if start == saved.start_time)
}

/// The state document `state` prints (runc's fields).
pub fn document(saved: Option<&Saved>, id: &str, status: Status) -> serde_json::Value {
    let pid = match status {
        Status::Stopped | Status::Creating => 0,
        _ => saved.map_or(0, |s| s.pid),
    };
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": id,
        "pid": pid,
        "status": status.to_string(),
        "bundle": saved.map(|s| s.bundle.clone()).unwrap_or_default(),
        "rootfs": saved.map(|s| s.rootfs.clone()).unwrap_or_default(),
        "created": saved.map(|s| s.created.clone()).unwrap_or_default(),
        "owner": saved.map(|s| s.owner.clone()).unwrap_or_default(),
        "annotations": saved.map(|s| s.annotations.clone()).unwrap_or_default(),
    })
}

/// The spec's state object (what hooks read on stdin).
pub fn hook_state(saved: &Saved, status: Status) -> Vec<u8> {
    let doc = serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": saved.id,
        "status": status.to_string(),
        "pid": saved.pid,
        "bundle": saved.bundle,
        "annotations": saved.annotations,
    });
    serde_json::to_vec(&doc).expect("state serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_components() {
        for bad in ["", ".", "..", "a/b", ".hidden", "a b", "x\0"] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["abc", "a.b-c_d+1", "0123456789abcdef"] {
            check_id(good).unwrap();
        }
    }

    #[test]
    fn claiming_an_id_twice_fails() {
        let root = tempfile::tempdir().unwrap();
        let first = ContainerDir::create(root.path(), "c1").unwrap();
        assert!(matches!(
            ContainerDir::create(root.path(), "c1"),
            Err(StateError::Exists(_))
        ));
        assert_eq!(first.status(None), Status::Creating);
        first.remove().unwrap();
        assert!(matches!(
            ContainerDir::open(root.path(), "c1", false),
            Err(StateError::NotFound(_))
        ));
    }

    #[test]
    fn own_start_time_is_readable() {
        let (start, zombie) = proc_start(std::process::id() as i32).unwrap();
        assert!(start > 0);
        assert!(!zombie);
    }
}
