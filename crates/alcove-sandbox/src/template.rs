//! Template mount namespaces: a host-view root built once and copied per run.
//!
//! Building a root from scratch in each sandbox (a tmpfs, ~30 files, device
//! nodes, read-only binds, pivot_root and detaching the copied host tree) cost
//! ~0.2 ms of every start, and tearing the copied host tree down again more.
//! Instead, the first run with a given skeleton (hostname, uid/gid, bind targets,
//! working directory, resolv.conf) builds it once in a new mount namespace and
//! bind-mounts that namespace at `/run/alcove/templates/<key>`. Every later run
//! joins the template and `unshare`s a private copy of it: a handful of mounts,
//! on which it mounts its own /tmp, /dev/shm, /dev/pts, /proc and binds. The
//! template is read-only and shared; nothing a sandbox does reaches it. At most
//! [`MAX_TEMPLATES`] exist; past that, runs build their root from scratch.
//! `alcove gc` removes them.

use crate::mounts::{self, HostView};
use crate::spec::SandboxSpec;
use crate::SandboxError;
use alcove_sys::{mount, ns, process};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where templates are mounted.
pub const TEMPLATE_DIR: &str = "/run/alcove/templates";
/// The most templates kept at once.
pub const MAX_TEMPLATES: usize = 64;
const PIN: &str = "pinning the template mount namespace";
/// Marks a mount namespace in which templates cannot be pinned.
const UNPINNABLE: &str = "unpinnable";

/// Opens the template namespace for `spec`, building it first if needed.
/// `Ok(None)` means the template cap is reached: build from scratch.
pub(crate) fn open_or_create(
    spec: &SandboxSpec,
    resolv_conf: Option<&[u8]>,
) -> Result<Option<OwnedFd>, SandboxError> {
    let Some(dir) = own_dir() else {
        return Ok(None);
    };
    let path = dir.join(key(spec, resolv_conf));
    if let Ok(fd) = open_ns(&path) {
        return Ok(Some(fd));
    }
    if dir.join(UNPINNABLE).exists() {
        return Ok(None);
    }
    let prepare = |what| move |source| SandboxError::Prepare { what, source };
    std::fs::create_dir_all(&dir).map_err(prepare("creating /run/alcove/templates"))?;
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_CLOEXEC)
        .open(path.with_extension("lock"))
        .map_err(prepare("creating a template lock"))?;
    // Blocks while another run builds this template.
    alcove_sys::fd::flock(lock.as_fd(), alcove_sys::fd::Lock::Exclusive)
        .map_err(prepare("locking a template"))?;
    if let Ok(fd) = open_ns(&path) {
        return Ok(Some(fd));
    }
    if count(&dir) >= MAX_TEMPLATES {
        return Ok(None);
    }
    let plan = match &spec.rootfs {
        Some(lower) => mounts::rootfs_template_plan(lower, &spec.lower_layers),
        None => mounts::template_plan(spec, &HostView::read(spec)),
    };
    match build(&path, &plan) {
        Ok(()) => open_ns(&path)
            .map(Some)
            .map_err(prepare("opening a new template")),
        // This mount namespace cannot pin templates (here: any but the
        // initial one, where the kernel answers EINVAL); remember that, and
        // build each run's root from scratch.
        Err(SandboxError::Prepare { what: PIN, .. }) => {
            let _ = File::create(dir.join(UNPINNABLE));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Templates are pinned by bind mounts, which exist only in the mount namespace
/// that made them (copies of a namespace leave mount-namespace files out), so
/// each mount namespace alcove runs in keeps its own directory of them.
fn own_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    Some(Path::new(TEMPLATE_DIR).join(format!("mnt-{}", ns.ino())))
}

/// Unmounts and removes every template of this mount namespace; returns how many.
pub(crate) fn remove_all() -> usize {
    let Some(dir) = own_dir() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "lock") || path.ends_with(UNPINNABLE) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        removed += unpin(&path) as usize;
        let _ = std::fs::remove_file(path.with_extension("lock"));
    }
    let _ = std::fs::remove_dir(&dir);
    removed
}

/// Unmounts the namespace pinned at `path` and removes the file; whether a
/// namespace was pinned there.
pub(crate) fn unpin(path: &Path) -> bool {
    let unmounted = CString::new(path.as_os_str().as_bytes())
        .is_ok_and(|c| mount::umount(&c, mount::MNT_DETACH).is_ok());
    let _ = std::fs::remove_file(path);
    unmounted
}

/// The template's name: a hash of everything the skeleton depends on.
fn key(spec: &SandboxSpec, resolv_conf: Option<&[u8]>) -> String {
    if let Some(lower) = &spec.rootfs {
        // The directory's identity too: a rootfs re-created at the same path
        // gets a new template rather than the old one's pinned view.
        use std::os::unix::fs::MetadataExt;
        let mut h = Fnv::default();
        h.add(b"rootfs-v2");
        for layer in std::iter::once(lower).chain(&spec.lower_layers) {
            h.add(layer.as_os_str().as_bytes());
            h.add(b"\0");
            if let Ok(m) = std::fs::metadata(layer) {
                h.add(&m.dev().to_le_bytes());
                h.add(&m.ino().to_le_bytes());
            }
        }
        return format!("rootfs-{:016x}", h.0);
    }
    let mut h = Fnv::default();
    h.add(b"host-view-v4");
    // A piece of the host's /etc replaced by rename (ldconfig's ld.so.cache,
    // a package's new services file) changes its directory: a new template
    // then copies the new file instead of the old one the template holds.
    h.add(&mounts::etc_fingerprint(Path::new("/etc")));
    h.add(spec.hostname.as_bytes());
    h.add(&spec.user.uid.to_le_bytes());
    h.add(&spec.user.gid.to_le_bytes());
    h.add(spec.workdir.as_os_str().as_bytes());
    for bind in &spec.binds {
        h.add(bind.target.as_os_str().as_bytes());
        h.add(&[bind.source.is_dir() as u8]);
    }
    h.add(resolv_conf.unwrap_or(b"-"));
    format!("host-{:016x}", h.0)
}

/// FNV-1a over byte strings, each ended by a 0xff separator: short stable
/// names for what a template or a pool slot was built from.
#[derive(Debug)]
pub(crate) struct Fnv(pub(crate) u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn add(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_none_or(|x| x != "lock"))
            .count()
    })
}

fn open_ns(path: &Path) -> io::Result<OwnedFd> {
    ns::open_pinned(&CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?)
}

/// Builds the template from this (single-threaded) process: enter a new mount
/// namespace, run the plan there, come back, and pin the namespace at `path`.
fn build(path: &Path, plan: &[mounts::MountOp]) -> Result<(), SandboxError> {
    let prepare = |what| move |source| SandboxError::Prepare { what, source };
    let host_ns = File::open("/proc/thread-self/ns/mnt")
        .map_err(prepare("opening alcove's mount namespace"))?;
    let cwd = File::open(".").map_err(prepare("opening the working directory"))?;
    ns::unshare(libc::CLONE_NEWNS).map_err(prepare("creating a template mount namespace"))?;
    let built = File::open("/proc/thread-self/ns/mnt")
        .map_err(prepare("opening the template mount namespace"))
        .and_then(|template| {
            let old_umask = process::set_umask(0);
            let mut applier = mounts::Applier::default();
            let result = plan.iter().try_for_each(|op| {
                applier.apply(op).map_err(|source| SandboxError::Setup {
                    what: format!("building a template: {}", op.describe()),
                    source,
                })
            });
            process::set_umask(old_umask);
            result.map(|()| template)
        });
    ns::setns(host_ns.as_fd(), libc::CLONE_NEWNS).expect("return to alcove's own mount namespace");
    let _ = alcove_sys::fs::fchdir(cwd.as_fd());
    let template = built?;
    // `alcove gc` may have removed the directory meanwhile.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(prepare("creating the template directory"))?;
    }
    File::create(path).map_err(prepare("creating a template mount point"))?;
    let source = CString::new(format!("/proc/self/fd/{}", template.as_raw_fd())).expect("no NUL");
    let target = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    mount::mount(Some(&source), &target, None, mount::MS_BIND, None).map_err(|e| {
        let _ = std::fs::remove_file(path);
        SandboxError::Prepare {
            what: PIN,
            source: e,
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_what_the_skeleton_depends_on() {
        let base = SandboxSpec::new(vec!["true".into()]);
        let k = key(&base, None);
        assert!(k.starts_with("host-") && k.len() == 21);
        assert_eq!(k, key(&base, None));
        let mut other = base.clone();
        other.hostname = "box".into();
        assert_ne!(k, key(&other, None));
        let mut other = base.clone();
        other.user.uid = 1000;
        assert_ne!(k, key(&other, None));
        assert_ne!(k, key(&base, Some(b"nameserver 1.1.1.1\n")));
        let mut other = base.clone();
        other.limits.memory_bytes = Some(1 << 30);
        assert_eq!(k, key(&other, None), "limits do not shape the skeleton");
    }
}
