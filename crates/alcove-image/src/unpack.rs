//! Unpacking one layer into an empty directory, safely: every path is
//! resolved beneath the directory without following links (openat2), `..`
//! and absolute paths are refused, hard links must stay inside the layer,
//! device nodes are skipped unless allowed, and whiteouts become what
//! overlayfs reads (a 0/0 character device; `trusted.overlay.opaque=y`).

use crate::digest::Hashing;
use crate::ImageError;
use alcove_sys::dirfd;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bounds on what one import may unpack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of file content over all layers.
    pub max_bytes: u64,
    /// Entries (files, directories, links) over all layers.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 32 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// What unpacking a layer found.
pub(crate) struct Unpacked {
    /// sha256 hex of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of file content.
    pub bytes: u64,
    pub entries: u64,
    pub skipped_devices: u64,
}

/// How far an import has got against its [`Limits`].
pub(crate) struct Budget {
    pub limits: Limits,
    pub bytes: u64,
    pub entries: u64,
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Unpacks the layer blob read from `blob` into the empty directory `dest`.
pub(crate) fn unpack(
    blob: impl Read,
    dest: &Path,
    layer: &str,
    budget: &mut Budget,
    allow_devices: bool,
) -> Result<Unpacked, ImageError> {
    let refused = |why: String| ImageError::Refused {
        layer: layer.to_owned(),
        why,
    };
    let mut blob = BufReader::with_capacity(256 << 10, blob);
    let head = blob
        .fill_buf()
        .map_err(ImageError::io(format!("reading layer {layer}")))?
        .to_vec();
    let decompressed: Box<dyn Read + '_> = if head.starts_with(GZIP) {
        Box::new(flate2::bufread::MultiGzDecoder::new(blob))
    } else if head.starts_with(ZSTD) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(blob)
                .map_err(ImageError::io("starting zstd"))?,
        )
    } else {
        Box::new(blob)
    };
    let mut tar_stream = Hashing::new(decompressed);
    let root: OwnedFd = File::open(dest)
        .map_err(ImageError::io(format!("opening {}", dest.display())))?
        .into();
    let mut found = Unpacked {
        diff_id: String::new(),
        bytes: 0,
        entries: 0,
        skipped_devices: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut tar_stream);
        let entries = archive
            .entries()
            .map_err(|e| refused(format!("not a tar stream: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| refused(format!("a damaged or truncated entry: {e}")))?;
            budget.entries += 1;
            found.entries += 1;
            if budget.entries > budget.limits.max_entries {
                return Err(ImageError::Limit {
                    layer: layer.to_owned(),
                    why: format!("more than {} entries", budget.limits.max_entries),
                });
            }
            let path = entry.path_bytes().into_owned();
            let parts = components(&path)
                .map_err(|why| refused(format!("{}: {why}", String::from_utf8_lossy(&path))))?;
            let Some((name, parents)) = parts.split_last() else {
                continue;
            };
            let shown = String::from_utf8_lossy(&path).into_owned();
            let parent = open_parents(root.as_fd(), parents, true)
                .map_err(|why| refused(format!("{shown}: {why}")))?;
            let parent = parent.as_ref().map_or(root.as_fd(), AsFd::as_fd);
            let kind = entry.header().entry_type();
            let size = entry.header().size().unwrap_or(0);
            if kind.is_file() || kind.is_contiguous() {
                budget.bytes += size;
                found.bytes += size;
                if budget.bytes > budget.limits.max_bytes {
                    return Err(ImageError::Limit {
                        layer: layer.to_owned(),
                        why: format!("more than {} bytes of files", budget.limits.max_bytes),
                    });
                }
            }
            let io_err = |e: io::Error| refused(format!("{shown}: {e}"));
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                if hidden == b".wh..opq" {
                    let dir = dirfd::open_beneath(parent, c".", libc::O_RDONLY | libc::O_DIRECTORY)
                        .map_err(io_err)?;
                    dirfd::set_xattr(dir.as_fd(), c"trusted.overlay.opaque", b"y")
                        .map_err(io_err)?;
                } else {
                    let target = cstr(hidden);
                    remove_existing(parent, &target, dest, parents, hidden).map_err(io_err)?;
                    dirfd::mknod_at(parent, &target, libc::S_IFCHR, 0).map_err(io_err)?;
                }
                continue;
            }
            let c_name = cstr(name);
            let header = entry.header();
            let (uid, gid) = (
                header.uid().unwrap_or(0) as u32,
                header.gid().unwrap_or(0) as u32,
            );
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let mtime = header.mtime().unwrap_or(0) as i64;
            let existing = dirfd::mode_at(parent, &c_name).map_err(io_err)?;
            let is_dir = |m: libc::mode_t| m & libc::S_IFMT == libc::S_IFDIR;
            if kind.is_dir() {
                if !existing.is_some_and(is_dir) {
                    remove_existing(parent, &c_name, dest, parents, name).map_err(io_err)?;
                    dirfd::mkdir_at(parent, &c_name, 0o700).map_err(io_err)?;
                }
                dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
                dirfd::chmod_at(parent, &c_name, mode).map_err(io_err)?;
                continue;
            }
            remove_existing(parent, &c_name, dest, parents, name).map_err(io_err)?;
            if kind.is_file() || kind.is_contiguous() {
                let fd = dirfd::create_at(parent, &c_name, 0o600).map_err(io_err)?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| refused(format!("{shown}: {e}")))?;
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err)?;
                // After chown, which clears set-id bits.
                let permissions = std::os::unix::fs::PermissionsExt::from_mode(mode);
                file.set_permissions(permissions).map_err(io_err)?;
            } else if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(format!("{shown}: a link without a target")))?;
                dirfd::symlink_at(&cstr(&target), parent, &c_name).map_err(io_err)?;
                dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(format!("{shown}: a link without a target")))?;
                let target_parts = components(&target).map_err(|why| {
                    refused(format!(
                        "{shown}: hard link to {}: {why}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                let Some((target_name, target_parents)) = target_parts.split_last() else {
                    return Err(refused(format!("{shown}: a hard link to the layer's root")));
                };
                let target_dir =
                    open_parents(root.as_fd(), target_parents, false).map_err(|why| {
                        refused(format!(
                            "{shown}: hard link target {}: {why}",
                            String::from_utf8_lossy(&target)
                        ))
                    })?;
                let target_dir = target_dir.as_ref().map_or(root.as_fd(), AsFd::as_fd);
                dirfd::link_at(target_dir, &cstr(target_name), parent, &c_name).map_err(|e| {
                    refused(format!(
                        "{shown}: hard link to {} (not in this layer?): {e}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                continue; // the link shares its target's owner, mode and times
            } else if kind.is_character_special() || kind.is_block_special() {
                if !allow_devices {
                    found.skipped_devices += 1;
                    continue;
                }
                let file_type = if kind.is_character_special() {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                let (major, minor) = (
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                dirfd::mknod_at(
                    parent,
                    &c_name,
                    file_type | (mode & 0o777),
                    libc::makedev(major, minor),
                )
                .map_err(io_err)?;
                dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
            } else if kind.is_fifo() {
                dirfd::mknod_at(parent, &c_name, libc::S_IFIFO | (mode & 0o777), 0)
                    .map_err(io_err)?;
                dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
            } else {
                continue; // PAX and GNU metadata entries, which tar-rs applies itself
            }
            dirfd::set_mtime_at(parent, &c_name, mtime).map_err(io_err)?;
        }
    }
    let (diff_id, _) = tar_stream
        .finish()
        .map_err(|e| refused(format!("the stream ends badly: {e}")))?;
    found.diff_id = diff_id;
    dirfd::syncfs(root.as_fd()).map_err(ImageError::io("syncing the layer"))?;
    Ok(found)
}

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("tar names hold no NUL")
}

/// A tar path's components: `./` and empty ones dropped; `..` and absolute
/// paths refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.starts_with(b"/") {
        return Err("an absolute path".into());
    }
    if path.contains(&0) {
        return Err("a NUL byte in the path".into());
    }
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a '..' component".into()),
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// The directory holding an entry, opened beneath `root` without following
/// links; missing directories are created (0755, root) when `create`.
/// `None` means `root` itself.
fn open_parents(
    root: BorrowedFd<'_>,
    parents: &[&[u8]],
    create: bool,
) -> Result<Option<OwnedFd>, String> {
    if parents.is_empty() {
        return Ok(None);
    }
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let joined = cstr(&parents.join(&b'/'));
    match dirfd::open_beneath(root, &joined, flags) {
        Ok(fd) => return Ok(Some(fd)),
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) =>
        {
            return Err("its path goes through a symbolic link".into())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err("its path goes through something that is not a directory".into())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {}
        Err(e) => return Err(e.to_string()),
    }
    let mut dir: Option<OwnedFd> = None;
    for part in parents {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        let name = cstr(part);
        match dirfd::mkdir_at(at, &name, 0o755) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.to_string()),
        }
        let next = dirfd::open_beneath(at, &name, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                "its path goes through a symbolic link".to_owned()
            }
            Some(libc::ENOTDIR) => {
                "its path goes through something that is not a directory".to_owned()
            }
            _ => e.to_string(),
        })?;
        dir = Some(next);
    }
    Ok(dir)
}

/// Removes what an entry replaces: a later entry for the same path wins.
fn remove_existing(
    parent: BorrowedFd<'_>,
    name: &CString,
    dest: &Path,
    parents: &[&[u8]],
    raw: &[u8],
) -> io::Result<()> {
    match dirfd::mode_at(parent, name)? {
        None => Ok(()),
        Some(m) if m & libc::S_IFMT == libc::S_IFDIR => {
            // Its path has no links (it was opened beneath the layer without
            // following any), and remove_dir_all does not follow links.
            let mut path = dest.to_path_buf();
            for p in parents {
                path.push(std::ffi::OsStr::from_bytes(p));
            }
            path.push(std::ffi::OsStr::from_bytes(raw));
            std::fs::remove_dir_all(path)
        }
        Some(_) => dirfd::unlink_at(parent, name, false),
    }
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn paths_that_climb_out_or_start_at_the_root_are_refused() {
        assert_eq!(
            components(b"./usr//bin/sh").unwrap(),
            vec![&b"usr"[..], b"bin", b"sh"]
        );
        assert!(components(b"../etc/passwd").is_err());
        assert!(components(b"usr/../../etc").is_err());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
