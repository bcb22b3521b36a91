//! Resolving a container path inside the rootfs, one component at a time
//! from a descriptor of the root, the way runc's SecureJoin does: a symbolic
//! link in the image is followed as if the rootfs were `/` (so `/../../etc`
//! lands in the image's `/etc`, never the host's), `..` never climbs above
//! the root, and every step is an `openat` that follows no link, so nothing
//! swapped in meanwhile redirects it. Missing components can be created on
//! the way (a mount point), which `openat2(RESOLVE_IN_ROOT)` alone cannot do
//! through a dangling link.

use alcove_sys::dirfd::{self, Scope};
use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Links followed in one resolution before giving up, as the kernel's ELOOP.
const MAX_LINKS: usize = 40;
/// Components pending in one resolution (links add theirs).
const MAX_COMPONENTS: usize = 4096;

/// What to create when a component is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing component is `ENOENT`.
    Nothing,
    /// Directories all the way down.
    Dir,
    /// Directories, and an empty regular file for the last component.
    File,
}

/// A path resolved inside the root.
#[derive(Debug)]
pub struct Resolved {
    /// An `O_PATH` descriptor of what the path names.
    pub fd: OwnedFd,
    /// Where that is as the container will see it (`/proc/sys`), links resolved.
    pub path: String,
}

impl Resolved {
    /// `/proc/self/fd/N`: a path for mount(2) that names exactly this
    /// descriptor's file, with no further lookup in the rootfs.
    pub fn proc_path(&self) -> CString {
        proc_fd_path(self.fd.as_fd())
    }
}

/// `/proc/self/fd/N` for `fd`.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("a formatted number holds no NUL")
}

/// Resolves `path` (absolute or relative: both start at the root) beneath
/// `root`, creating what is missing as `create` says.
pub fn resolve(root: BorrowedFd<'_>, path: &Path, create: Create) -> io::Result<Resolved> {
    let mut queue: VecDeque<OsString> = components(path);
    let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            stack.pop();
            continue;
        }
        let dir = stack.last().map_or(root, |(fd, _)| fd.as_fd());
        let cname = CString::new(name.as_bytes()).map_err(|_| invalid("a NUL in the path"))?;
        let last = queue.is_empty();
        match dirfd::mode_at(dir, &cname)? {
            None => {
                match create {
                    Create::Nothing => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
                    Create::File if last => dirfd::touch_at(dir, &cname, 0o644)?,
                    _ => match dirfd::mkdir_at(dir, &cname, 0o755) {
                        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                        _ => {}
                    },
                }
                let fd = dirfd::open_at(dir, &cname, libc::O_PATH, Scope::NoLinks)?;
                stack.push((fd, name));
            }
            Some(mode) if mode & libc::S_IFMT == libc::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                // The directory descriptor is ours; only the last component,
                // the link itself, is read (not followed).
                let at = Path::new("/proc/self/fd")
                    .join(dir.as_raw_fd().to_string())
                    .join(&name);
                let target = std::fs::read_link(at)?;
                if target.as_os_str().is_empty() {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                if target.is_absolute() {
                    stack.clear();
                }
                for part in components(&target).into_iter().rev() {
                    queue.push_front(part);
                }
                if queue.len() > MAX_COMPONENTS {
                    return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
                }
            }
            Some(mode) => {
                if !last && mode & libc::S_IFMT != libc::S_IFDIR {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                let fd = dirfd::open_at(dir, &cname, libc::O_PATH, Scope::NoLinks)?;
                stack.push((fd, name));
            }
        }
    }
    let mut shown = String::new();
    for (_, name) in &stack {
        shown.push('/');
        shown.push_str(&name.to_string_lossy());
    }
    if shown.is_empty() {
        shown.push('/');
    }
    let fd = match stack.pop() {
        Some((fd, _)) => fd,
        None => root.try_clone_to_owned()?,
    };
    Ok(Resolved { fd, path: shown })
}

/// The normal components of `path` and its `..`s, in order (`.`, `/` dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsStr::new("..").to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_of(dir: &Path) -> OwnedFd {
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        dirfd::open_dir(&c).unwrap()
    }

    fn real(r: &Resolved) -> std::path::PathBuf {
        std::fs::read_link(r.proc_path().to_str().unwrap()).unwrap()
    }

    #[test]
    fn absolute_and_dotdot_links_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/../../etc", root.join("escape")).unwrap();
        symlink("../../../../etc", root.join("etc/up")).unwrap();
        let fd = root_of(&root);
        for link in ["escape", "/escape", "etc/up", "../../escape/../etc"] {
            let r = resolve(fd.as_fd(), Path::new(link), Create::Nothing).unwrap();
            assert_eq!(real(&r), root.join("etc"), "{link}");
            assert_eq!(r.path, "/etc");
        }
    }

    #[test]
    fn dangling_links_are_created_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/run/resolve/stub.conf", root.join("etc/resolv.conf")).unwrap();
        let fd = root_of(&root);
        let r = resolve(fd.as_fd(), Path::new("/etc/resolv.conf"), Create::File).unwrap();
        assert_eq!(real(&r), root.join("run/resolve/stub.conf"));
        assert!(root.join("run/resolve/stub.conf").is_file());
        assert_eq!(r.path, "/run/resolve/stub.conf");
        let missing = resolve(fd.as_fd(), Path::new("/nope/x"), Create::Nothing);
        assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn link_loops_end_in_eloop() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let fd = root_of(&root);
        let err = resolve(fd.as_fd(), Path::new("/a/x"), Create::Dir).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn a_file_in_the_middle_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::write(root.join("f"), b"").unwrap();
        let fd = root_of(&root);
        let err = resolve(fd.as_fd(), Path::new("/f/x"), Create::Dir).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
        let r = resolve(fd.as_fd(), Path::new("/"), Create::Nothing).unwrap();
        assert_eq!(r.path, "/");
    }
}
