//! Executing a mount plan: each step as one or two syscalls, allocating
//! nothing (it runs in the child between clone3 and execve). Steps inside the
//! sandbox's root act through descriptors opened with
//! `openat2(RESOLVE_IN_ROOT)`, never through a path the image could redirect.

use super::{InRoot, MountOp, Place};
use alcove_sys::{dirfd, fs, mount};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Performs a plan's filesystem steps in order (in the child, or in the
/// parent while it builds a template), holding the root that
/// [`Place::InRoot`] steps resolve in. Allocates nothing.
#[derive(Default)]
pub(crate) struct Applier {
    root: Option<OwnedFd>,
}

impl Applier {
    pub(crate) fn apply(&mut self, op: &MountOp) -> io::Result<()> {
        match op {
            MountOp::Mount {
                source,
                target: Place::Path(target),
                fstype,
                flags,
                data,
            } => {
                let source = match source {
                    None if is_bind(*flags) => Some(target),
                    other => other.as_ref(),
                };
                mount::mount(
                    source.map(|s| s.as_c_str()),
                    target,
                    fstype.as_deref(),
                    *flags,
                    data.as_deref(),
                )
            }
            MountOp::Mount {
                source,
                target: Place::InRoot(target),
                fstype,
                flags,
                data,
            } => self.mount_in_root(source.as_deref(), target, fstype.as_deref(), *flags, data),
            MountOp::Mkdir { path, mode } => self.mkdir(path, *mode),
            MountOp::MkdirBestEffort { path, mode } => {
                let _ = self.mkdir(path, *mode);
                Ok(())
            }
            MountOp::MoveMount { tree, target } => match target {
                Place::Path(target) => mount::move_mount_to(*tree, target),
                Place::InRoot(target) => {
                    let at = self.open(&target.path, libc::O_PATH)?;
                    alcove_sys::mount::move_mount_onto(*tree, at.as_fd())
                }
            },
            MountOp::Touch { path } => match path {
                Place::Path(path) => fs::write_file(path, b"", 0o644),
                Place::InRoot(path) => dirfd::touch_at(self.dir(path)?.as_fd(), &path.name, 0o644),
            },
            MountOp::Symlink { target, link } => match link {
                Place::Path(link) => fs::symlink(target, link),
                Place::InRoot(link) => {
                    dirfd::symlink_at(target, self.dir(link)?.as_fd(), &link.name)
                }
            },
            MountOp::Mknod { path, mode, dev } => match path {
                Place::Path(path) => fs::mknod(path, *mode, *dev),
                Place::InRoot(path) => {
                    dirfd::mknod_at(self.dir(path)?.as_fd(), &path.name, *mode, *dev)
                }
            },
            MountOp::WriteFile {
                path,
                contents,
                mode,
            } => match path {
                Place::Path(path) => fs::write_file(path, contents, *mode),
                Place::InRoot(path) => {
                    let dir = self.dir(path)?;
                    match dirfd::write_file_at(dir.as_fd(), &path.name, contents, *mode) {
                        // An image's link (resolv.conf to a resolver's run
                        // directory, say), FIFO or socket by that name is
                        // replaced by the file, inside the root.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
                            dirfd::unlink_at(dir.as_fd(), &path.name, false)?;
                            dirfd::write_file_at(dir.as_fd(), &path.name, contents, *mode)
                        }
                        written => written,
                    }
                }
            },
            MountOp::EnterRoot { path } => {
                self.root = Some(dirfd::open_dir(path)?);
                Ok(())
            }
            MountOp::PivotRoot { new_root } => {
                fs::chdir(new_root)?;
                mount::pivot_root(c".", c".")?;
                mount::umount(c".", mount::MNT_DETACH)?;
                fs::chdir(c"/")
            }
        }
    }

    /// `path` opened inside the root, a final link followed (inside it).
    fn open(&self, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        dirfd::open_in_root(root.as_fd(), path, flags)
    }

    /// The directory holding `place`, opened inside the root.
    fn dir(&self, place: &InRoot) -> io::Result<OwnedFd> {
        self.open(&place.dir, libc::O_PATH | libc::O_DIRECTORY)
    }

    fn mkdir(&self, path: &Place, mode: libc::mode_t) -> io::Result<()> {
        match path {
            Place::Path(path) => fs::mkdir(path, mode),
            Place::InRoot(path) => match dirfd::mkdir_at(self.dir(path)?.as_fd(), &path.name, mode)
            {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                other => other,
            },
        }
    }

    /// mount(2) at a place inside the root, through a descriptor of it, so
    /// that no path is looked up again outside `openat2`'s confinement.
    fn mount_in_root(
        &self,
        source: Option<&CStr>,
        target: &InRoot,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: &Option<CString>,
    ) -> io::Result<()> {
        let at = self.open(&target.path, libc::O_PATH)?;
        if flags & mount::MS_REMOUNT != 0 {
            return alcove_sys::mount::set_mount_attributes(at.as_fd(), mount_attributes(flags));
        }
        if is_bind(flags) {
            let recursive = flags & mount::MS_REC != 0;
            let tree = match source {
                Some(source) => alcove_sys::mount::clone_tree_at(None, source, recursive)?,
                None => alcove_sys::mount::clone_tree_at(Some(at.as_fd()), c"", recursive)?,
            };
            return alcove_sys::mount::move_mount_onto(tree.as_raw_fd(), at.as_fd());
        }
        // A new filesystem (tmpfs, proc, devpts) goes on a directory: make
        // that the working directory and mount on ".".
        fs::fchdir(at.as_fd())?;
        mount::mount(source, c".", fstype, flags, data.as_deref())
    }
}

/// A bind (not a bind remount).
fn is_bind(flags: libc::c_ulong) -> bool {
    flags & mount::MS_BIND != 0 && flags & mount::MS_REMOUNT == 0
}

/// The `MOUNT_ATTR_*` a bind remount with `flags` sets.
fn mount_attributes(flags: libc::c_ulong) -> u64 {
    [
        (mount::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (mount::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (mount::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (mount::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
    ]
    .iter()
    .filter(|(ms, _)| flags & ms != 0)
    .fold(0, |attrs, (_, attr)| attrs | attr)
}
