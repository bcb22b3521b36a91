//! Copying a sandbox's home (what a fork and a snapshot take): a walk that
//! never follows a link (a link is copied as a link), reads only regular
//! files, directories and links, and stops at a byte and an entry budget,
//! so a sandbox's own files cannot lead it anywhere else on the host or make
//! it copy without end.

use alcove_sys::dirfd;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

/// Directories deeper than this are not copied.
const MAX_DEPTH: usize = 64;

/// What a copy may take, and took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub bytes: u64,
    pub entries: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Copied {
    pub bytes: u64,
    pub entries: u64,
}

/// Opens a directory to copy from or into, as alcove names it (a path
/// alcove built: a sandbox's home through /proc, or a template's directory).
pub(crate) fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    Ok(file.into())
}

/// Opens the home (/home/user) of the sandbox whose first process's
/// /proc directory is `proc_dir` (held open since the sandbox started, so a
/// pid reused after its end cannot stand in: the lookup then fails),
/// resolved inside the sandbox's own root: a link on the way (an image's
/// `/home` may be one) leads somewhere in the sandbox, never on the host.
pub(crate) fn open_sandbox_home(proc_dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let root = std::fs::File::open(format!("/proc/self/fd/{}/root", proc_dir.as_raw_fd()))?;
    let home = CString::new(super::live::HOME.trim_start_matches('/'))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    dirfd::open_in_root(root.as_fd(), &home, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// Copies the entries of `from` into `to` (which exists), owned by
/// `uid:gid`, modes and modification times kept.
pub(crate) fn copy_tree(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    owner: (u32, u32),
    budget: Budget,
) -> io::Result<Copied> {
    let mut copied = Copied::default();
    copy_dir(from, to, owner, budget, &mut copied, 0)?;
    Ok(copied)
}

fn proc_path(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> std::path::PathBuf {
    std::path::Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn over(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!("the files are over the {what} a copy may take"),
    )
}

fn copy_dir(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    owner: (u32, u32),
    budget: Budget,
    copied: &mut Copied,
    depth: usize,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("directories nested more than {MAX_DEPTH} deep"),
        ));
    }
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", from.as_raw_fd()))?;
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name();
        copied.entries += 1;
        if copied.entries > budget.entries {
            return Err(over("entries"));
        }
        let cname = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // lstat: the last component is never followed.
        let meta = std::fs::symlink_metadata(proc_path(from, &name))?;
        let kind = meta.file_type();
        // Owner, mode and time are set through the copy's own descriptor,
        // never by name: the target tree may be a running sandbox's home,
        // where a name can be swapped for a link to a host file meanwhile.
        let keep = |copy: &std::fs::File| -> io::Result<()> {
            std::os::unix::fs::fchown(copy, Some(owner.0), Some(owner.1))?;
            copy.set_permissions(std::fs::Permissions::from_mode(
                meta.permissions().mode() & 0o1777,
            ))?;
            if let Ok(mtime) = meta.modified() {
                let _ = copy.set_modified(mtime);
            }
            Ok(())
        };
        if kind.is_dir() {
            dirfd::mkdir_at(to, &cname, 0o700)?;
            let sub_from = dirfd::open_beneath(from, &cname, libc::O_RDONLY | libc::O_DIRECTORY)?;
            let sub_to = dirfd::open_beneath(to, &cname, libc::O_RDONLY | libc::O_DIRECTORY)?;
            copy_dir(
                sub_from.as_fd(),
                sub_to.as_fd(),
                owner,
                budget,
                copied,
                depth + 1,
            )?;
            keep(&std::fs::File::from(sub_to))?;
        } else if kind.is_file() {
            copied.bytes += meta.len();
            if copied.bytes > budget.bytes {
                return Err(over("bytes"));
            }
            let source = dirfd::open_beneath(from, &cname, libc::O_RDONLY | libc::O_NONBLOCK)?;
            let mut source = std::fs::File::from(source);
            // Still a regular file once open (not swapped for a FIFO since the lstat).
            if !source.metadata()?.is_file() {
                continue;
            }
            let mut target = std::fs::File::from(dirfd::create_at(to, &cname, 0o600)?);
            let mut limited =
                io::Read::take(&mut source, budget.bytes - (copied.bytes - meta.len()));
            io::copy(&mut limited, &mut target)?;
            keep(&target)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(proc_path(from, &name))?;
            let target = CString::new(target.as_os_str().as_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            dirfd::symlink_at(&target, to, &cname)?;
            // lchown: the link itself (AT_SYMLINK_NOFOLLOW), whatever it points at.
            dirfd::chown_at(to, &cname, owner.0, owner.1)?;
        }
        // Sockets, FIFOs, devices: not a sandbox's files to carry.
    }
    Ok(())
}
