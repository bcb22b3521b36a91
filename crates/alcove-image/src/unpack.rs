//! Unpacking one layer into an empty directory, safely: every path is
//! resolved beneath the directory without following links (openat2), `..`
//! and absolute paths are refused, hard links must stay inside the layer,
//! device nodes are skipped unless allowed, and whiteouts become what
//! overlayfs reads (a 0/0 character device; `trusted.overlay.opaque=y`).

use crate::digest::Hashing;
use crate::metered::{Meter, Metered, MAX_METADATA};
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
    let meter = Meter::default();
    let mut tar_stream = Hashing::new(Metered {
        inner: decompressed,
        meter: meter.clone(),
    });
    let root: OwnedFd = File::open(dest)
        .map_err(ImageError::io(format!("opening {}", dest.display())))?
        .into();
    let mut unpacking = Layer {
        name: layer,
        dest,
        root: root.as_fd(),
        allow_devices,
        found: Unpacked {
            diff_id: String::new(),
            bytes: 0,
            entries: 0,
            skipped_devices: 0,
        },
    };
    // Past the cap, tar-rs gets a read error: say which limit it was.
    let failed = |what: &str, e: io::Error| {
        if meter.exhausted() {
            ImageError::Limit {
                layer: layer.to_owned(),
                why: format!(
                    "more than {MAX_METADATA} bytes of metadata before one entry \
                     (long names, PAX records, or data of entries alcove skips)"
                ),
            }
        } else {
            refused(format!("{what}: {e}"))
        }
    };
    {
        let mut archive = tar::Archive::new(&mut tar_stream);
        let mut entries = archive
            .entries()
            .map_err(|e| refused(format!("not a tar stream: {e}")))?;
        loop {
            meter.allow(MAX_METADATA);
            let Some(entry) = entries.next() else { break };
            let entry = entry.map_err(|e| failed("a damaged or truncated entry", e))?;
            meter.allow(u64::MAX); // file data counts against the budget instead
            budget.entries += 1;
            unpacking.found.entries += 1;
            if budget.entries > budget.limits.max_entries {
                return Err(ImageError::Limit {
                    layer: layer.to_owned(),
                    why: format!("more than {} entries", budget.limits.max_entries),
                });
            }
            unpacking.entry(entry, budget)?;
        }
    }
    meter.allow(MAX_METADATA);
    let (diff_id, _) = tar_stream
        .finish()
        .map_err(|e| failed("the stream ends badly", e))?;
    let mut found = unpacking.found;
    found.diff_id = diff_id;
    dirfd::syncfs(root.as_fd()).map_err(ImageError::io("syncing the layer"))?;
    Ok(found)
}

/// One layer being unpacked.
struct Layer<'a> {
    name: &'a str,
    dest: &'a Path,
    root: BorrowedFd<'a>,
    allow_devices: bool,
    found: Unpacked,
}

impl Layer<'_> {
    /// Writes one entry beneath the layer's directory.
    fn entry(
        &mut self,
        mut entry: tar::Entry<'_, impl Read>,
        budget: &mut Budget,
    ) -> Result<(), ImageError> {
        let path = entry.path_bytes().into_owned();
        let layer = self.name;
        let entry_name = shown(&path);
        let refused = |why: String| ImageError::Refused {
            layer: layer.to_owned(),
            why: format!("{entry_name}: {why}"),
        };
        let parts = components(&path).map_err(refused)?;
        let Some((name, parents)) = parts.split_last() else {
            return Ok(());
        };
        let parent = open_parents(self.root, parents, true).map_err(refused)?;
        let parent = parent.as_ref().map_or(self.root, AsFd::as_fd);
        let io_err = |e: io::Error| refused(e.to_string());
        let kind = entry.header().entry_type();
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                let dir = dirfd::open_beneath(parent, c".", libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(io_err)?;
                dirfd::set_xattr(dir.as_fd(), c"trusted.overlay.opaque", b"y").map_err(io_err)?;
            } else {
                let target = cstr(hidden).map_err(refused)?;
                remove_existing(parent, &target, self.dest, parents, hidden).map_err(io_err)?;
                dirfd::mknod_at(parent, &target, libc::S_IFCHR, 0).map_err(io_err)?;
            }
            return Ok(());
        }
        let c_name = cstr(name).map_err(refused)?;
        let owner = owner(entry.header()).map_err(refused)?;
        let (uid, gid, mode) = (owner.uid, owner.gid, owner.mode);
        let existing = dirfd::mode_at(parent, &c_name).map_err(io_err)?;
        let is_dir = |m: libc::mode_t| m & libc::S_IFMT == libc::S_IFDIR;
        if kind.is_dir() {
            if !existing.is_some_and(is_dir) {
                remove_existing(parent, &c_name, self.dest, parents, name).map_err(io_err)?;
                dirfd::mkdir_at(parent, &c_name, 0o700).map_err(io_err)?;
            }
            dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
            dirfd::chmod_at(parent, &c_name, mode).map_err(io_err)?;
            return Ok(());
        }
        remove_existing(parent, &c_name, self.dest, parents, name).map_err(io_err)?;
        if kind.is_file() || kind.is_contiguous() {
            let fd = dirfd::create_at(parent, &c_name, 0o600).map_err(io_err)?;
            let mut file = File::from(fd);
            // Judged on the bytes written, whatever the header or a PAX
            // record says the size is.
            let room = budget.limits.max_bytes.saturating_sub(budget.bytes);
            let mut data = (&mut entry).take(room.saturating_add(1));
            let written = io::copy(&mut data, &mut file).map_err(io_err)?;
            budget.bytes += written;
            self.found.bytes += written;
            if written > room {
                return Err(ImageError::Limit {
                    layer: layer.to_owned(),
                    why: format!("more than {} bytes of files", budget.limits.max_bytes),
                });
            }
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err)?;
            // After chown, which clears set-id bits.
            let permissions = std::os::unix::fs::PermissionsExt::from_mode(mode);
            file.set_permissions(permissions).map_err(io_err)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refused("a link without a target".into()))?;
            let target = CString::new(target.into_owned())
                .map_err(|_| refused("a NUL byte in its link target".into()))?;
            dirfd::symlink_at(&target, parent, &c_name).map_err(io_err)?;
            dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refused("a link without a target".into()))?;
            let to_target =
                |why: String| refused(format!("hard link to {}: {why}", shown(&target)));
            let target_parts = components(&target).map_err(to_target)?;
            let Some((target_name, target_parents)) = target_parts.split_last() else {
                return Err(refused("a hard link to the layer's root".into()));
            };
            let target_dir = open_parents(self.root, target_parents, false).map_err(to_target)?;
            let target_dir = target_dir.as_ref().map_or(self.root, AsFd::as_fd);
            let target_name = cstr(target_name).map_err(to_target)?;
            dirfd::link_at(target_dir, &target_name, parent, &c_name)
                .map_err(|e| to_target(format!("{e} (not in this layer?)")))?;
            return Ok(()); // the link shares its target's owner, mode and times
        } else if kind.is_character_special() || kind.is_block_special() {
            if !self.allow_devices {
                self.found.skipped_devices += 1;
                return Ok(());
            }
            let file_type = if kind.is_character_special() {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            let number = |n: io::Result<Option<u32>>| {
                n.map(Option::unwrap_or_default)
                    .map_err(|e| refused(format!("a damaged device number: {e}")))
            };
            let header = entry.header();
            let dev = libc::makedev(
                number(header.device_major())?,
                number(header.device_minor())?,
            );
            dirfd::mknod_at(parent, &c_name, file_type | (mode & 0o777), dev).map_err(io_err)?;
            dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
        } else if kind.is_fifo() {
            dirfd::mknod_at(parent, &c_name, libc::S_IFIFO | (mode & 0o777), 0).map_err(io_err)?;
            dirfd::chown_at(parent, &c_name, uid, gid).map_err(io_err)?;
        } else {
            return Ok(()); // PAX and GNU metadata entries, which tar-rs applies itself
        }
        dirfd::set_mtime_at(parent, &c_name, owner.mtime).map_err(io_err)
    }
}

/// An entry's owner, permission bits and modification time, each checked:
/// a number that does not fit is refused, never cut (uid 2^32 is not root).
struct Owner {
    uid: u32,
    gid: u32,
    mode: libc::mode_t,
    mtime: i64,
}

fn owner(header: &tar::Header) -> Result<Owner, String> {
    // As Go's archive/tar (docker's, containerd's) reads them, an empty
    // field (NULs or spaces) is 0; anything else that is not a number is refused.
    let number = |what: &str, parsed: io::Result<u64>, raw: &[u8]| match parsed {
        Ok(n) => Ok(n),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(format!("a damaged {what} field: {e}")),
    };
    let old = header.as_old();
    let uid = number("uid", header.uid(), &old.uid)?;
    let gid = number("gid", header.gid(), &old.gid)?;
    // u32::MAX is chown's "leave unchanged".
    let id = |n: u64| u32::try_from(n).ok().filter(|&n| n != u32::MAX);
    let (Some(uid32), Some(gid32)) = (id(uid), id(gid)) else {
        return Err(format!(
            "owner {uid}:{gid} is out of range (ids are 0 to {})",
            u32::MAX - 1
        ));
    };
    let mode = number("mode", header.mode().map(u64::from), &old.mode)? as libc::mode_t & 0o7777;
    let mtime = number("mtime", header.mtime(), &old.mtime)?;
    let mtime = i64::try_from(mtime).map_err(|_| format!("mtime {mtime} is out of range"))?;
    Ok(Owner {
        uid: uid32,
        gid: gid32,
        mode,
        mtime,
    })
}

/// A tar path for messages: lossy UTF-8, cut short (a long name may be a megabyte).
fn shown(path: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&path[..path.len().min(MAX)]).into_owned();
    if path.len() > MAX {
        format!("{text}... ({} bytes)", path.len())
    } else {
        text
    }
}

/// A name as a C string: names reach here checked, but a NUL is refused, never a panic.
fn cstr(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "a NUL byte in a name".to_owned())
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
    let joined = cstr(&parents.join(&b'/'))?;
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
        let name = cstr(part)?;
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
    use super::*;

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        // SAFETY: getuid/getgid have no preconditions.
        h.set_uid(unsafe { libc::getuid() } as u64);
        // SAFETY: as above.
        h.set_gid(unsafe { libc::getgid() } as u64);
        h.set_size(size);
        h.set_cksum();
        h
    }

    /// Unpacks `tar` with a `max_bytes` budget into a fresh directory.
    fn unpack_with(tar: &[u8], max_bytes: u64) -> Result<Unpacked, ImageError> {
        let dest = tempfile::tempdir().unwrap();
        let mut budget = Budget {
            limits: Limits {
                max_bytes,
                max_entries: 100,
            },
            bytes: 0,
            entries: 0,
        };
        unpack(tar, dest.path(), "test", &mut budget, false)
    }

    #[test]
    fn a_pax_size_is_judged_on_the_bytes_written() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"4096"[..])]).unwrap();
        b.append(&header(tar::EntryType::Regular, "f", 0), &[][..])
            .unwrap();
        b.get_mut().extend_from_slice(&[7u8; 4096]);
        let tar = b.into_inner().unwrap();
        let e = unpack_with(&tar, 1000).err().unwrap().to_string();
        assert!(e.contains("more than 1000 bytes of files"), "{e}");
        assert_eq!(unpack_with(&tar, 4096).unwrap().bytes, 4096);
    }

    #[test]
    fn nul_bytes_and_ids_out_of_range_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("linkpath", &b"a\0b"[..])])
            .unwrap();
        b.append(&header(tar::EntryType::Symlink, "l", 0), &[][..])
            .unwrap();
        let e = unpack_with(&b.into_inner().unwrap(), 1 << 20);
        let e = e.err().unwrap().to_string();
        assert!(e.contains("l: a NUL byte in its link target"), "{e}");

        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("uid", &b"4294967296"[..])])
            .unwrap();
        b.append(&header(tar::EntryType::Regular, "f", 1), &b"x"[..])
            .unwrap();
        let e = unpack_with(&b.into_inner().unwrap(), 1 << 20);
        let e = e.err().unwrap().to_string();
        assert!(e.contains("owner 4294967296:"), "{e}");
    }

    #[test]
    fn metadata_past_the_cap_is_refused_before_it_is_held() {
        for kind in [b'L', b'x'] {
            let mut b = tar::Builder::new(Vec::new());
            let big = vec![b'a'; MAX_METADATA as usize + 1];
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::new(kind));
            h.set_path("././@LongLink").unwrap();
            h.set_size(big.len() as u64);
            h.set_cksum();
            b.append(&h, &big[..]).unwrap();
            b.append(&header(tar::EntryType::Regular, "f", 1), &b"x"[..])
                .unwrap();
            let e = unpack_with(&b.into_inner().unwrap(), 1 << 20);
            let e = e.err().unwrap().to_string();
            assert!(e.contains("bytes of metadata before one entry"), "{e}");
        }
        // A long name under the cap is fine.
        let mut b = tar::Builder::new(Vec::new());
        let name = "d/".repeat(100) + "f";
        b.append_data(
            &mut header(tar::EntryType::Regular, "x", 1),
            &name,
            &b"x"[..],
        )
        .unwrap();
        assert_eq!(
            unpack_with(&b.into_inner().unwrap(), 1 << 20)
                .unwrap()
                .bytes,
            1
        );
    }

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
