//! Function code and secrets on disk: code is stored once per content digest
//! (`data/code/<sha256>`) and mounted read-only at /fn; secrets are files a
//! version's sandboxes see at /run/secrets.

use crate::EngineError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The most a function's code may unpack to.
pub const MAX_CODE_BYTES: u64 = 512 << 20;
/// The most files (and directories) a function's code may hold.
pub const MAX_CODE_ENTRIES: usize = 100_000;

/// Unpacks `tar` under `data/code`, named by its content digest, unless that
/// code is stored already; returns the digest. Absolute paths, `..`, hard
/// links, symbolic links that leave the code directory (see
/// [`crate::link_leaves`]) and anything but files, directories and links are
/// refused; a failed unpack leaves nothing (it happens in a temporary
/// directory renamed into place). Links are created as links and never
/// followed here: an entry under a link already unpacked is refused, and
/// files are created with `O_EXCL | O_NOFOLLOW`.
pub(crate) fn store_code(data: &Path, tar: &[u8]) -> Result<String, EngineError> {
    let bad = |why: String| EngineError::BadCode(why);
    let tmp = data.join("tmp").join(alcove_sys::process::random_id());
    std::fs::create_dir_all(&tmp).map_err(EngineError::io("creating a code staging directory"))?;
    let cleanup = |e: EngineError| {
        let _ = std::fs::remove_dir_all(&tmp);
        e
    };
    let mut listing: Vec<String> = Vec::new();
    let mut links: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let mut total: u64 = 0;
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| cleanup(bad(format!("not a tar archive: {e}"))))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| cleanup(bad(format!("a damaged tar entry: {e}"))))?;
        let path = entry
            .path()
            .map_err(|e| cleanup(bad(format!("a tar entry's path: {e}"))))?
            .into_owned();
        let relative = safe_relative(&path).ok_or_else(|| {
            cleanup(bad(format!(
                "{} escapes the code directory",
                path.display()
            )))
        })?;
        if relative.as_os_str().is_empty() {
            continue; // "./"
        }
        if listing.len() >= MAX_CODE_ENTRIES {
            return Err(cleanup(bad(format!(
                "more than {MAX_CODE_ENTRIES} entries"
            ))));
        }
        if let Some(link) = relative.ancestors().find(|a| links.contains(*a)) {
            return Err(cleanup(bad(format!(
                "{} lies under the link {}: an archive may not write through a link",
                relative.display(),
                link.display()
            ))));
        }
        let target = tmp.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let to = entry
                .link_name()
                .ok()
                .flatten()
                .ok_or_else(|| {
                    cleanup(bad(format!(
                        "{}: a link without a target",
                        relative.display()
                    )))
                })?
                .into_owned();
            if let Some(why) = crate::link_leaves(&relative, &to) {
                return Err(cleanup(bad(format!(
                    "{} -> {} leaves the code directory: {why}",
                    relative.display(),
                    to.display()
                ))));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| cleanup(unpacking(&relative, e)))?;
            }
            std::os::unix::fs::symlink(&to, &target)
                .map_err(|e| cleanup(unpacking(&relative, e)))?;
            listing.push(format!("l {} {}", hex_of(&relative), hex_of(&to)));
            links.insert(relative);
            continue;
        }
        if kind.is_hard_link() {
            return Err(cleanup(bad(format!(
                "{} is a hard link: pack the file itself (`alcove fn deploy --code` does)",
                relative.display()
            ))));
        }
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| cleanup(unpacking(&relative, e)))?;
            listing.push(format!("d {}", hex_of(&relative)));
            continue;
        }
        if !kind.is_file() {
            return Err(cleanup(bad(format!(
                "{} is a {:?}: only files, directories and links are allowed",
                relative.display(),
                kind
            ))));
        }
        total += entry.size();
        if total > MAX_CODE_BYTES {
            return Err(cleanup(bad(format!(
                "more than {MAX_CODE_BYTES} bytes unpacked"
            ))));
        }
        let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cleanup(unpacking(&relative, e)))?;
        }
        // The size is the header's claim: never reserve more than the archive holds.
        let mut content = Vec::with_capacity(entry.size().min(tar.len() as u64) as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| cleanup(bad(format!("reading {}: {e}", relative.display()))))?;
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&target)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &content).and_then(|()| f.sync_all())
            })
            .map_err(|e| cleanup(unpacking(&relative, e)))?;
        listing.push(format!(
            "f {mode:o} {} {}",
            hex_of(&relative),
            hex(&Sha256::digest(&content))
        ));
    }
    listing.sort();
    let digest = hex(&Sha256::digest(listing.join("\n").as_bytes()));
    let fin = data.join("code").join(&digest);
    if fin.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(digest);
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| cleanup(EngineError::io("unpacking code")(e)))?;
    std::fs::create_dir_all(data.join("code"))
        .map_err(|e| cleanup(EngineError::io("creating the code store")(e)))?;
    match std::fs::rename(&tmp, &fin) {
        Ok(()) => Ok(digest),
        Err(_) if fin.exists() => {
            let _ = std::fs::remove_dir_all(&tmp); // stored meanwhile by a concurrent deploy
            Ok(digest)
        }
        Err(e) => Err(cleanup(EngineError::io("storing code")(e))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path in the digest's listing: its bytes in hex, so that no two trees
/// list alike (names with spaces or newlines, names that are not UTF-8).
fn hex_of(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    hex(path.as_os_str().as_bytes())
}

/// An error creating an entry: the archive's fault (`invalid_code`, naming
/// the entry) when the entry clashes with another, its name or link target
/// is too long or holds a NUL; the host's otherwise.
fn unpacking(relative: &Path, e: std::io::Error) -> EngineError {
    let archive = e.kind() == std::io::ErrorKind::InvalidInput
        || matches!(
            e.raw_os_error(),
            Some(libc::EEXIST | libc::ENOTDIR | libc::EISDIR | libc::ENAMETOOLONG | libc::ELOOP)
        );
    if archive {
        EngineError::BadCode(format!("{}: {e}", relative.display()))
    } else {
        EngineError::io("unpacking code")(e)
    }
}

/// The path's components if it stays inside the directory it is unpacked in.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The directory of one version's secrets, written on first use: owned by
/// the sandbox's user with mode 0500, each secret a 0400 file; every
/// directory above it is root's own (0700), so no other host user reads them.
pub(crate) fn secrets_dir(
    data: &Path,
    function: &str,
    version: u32,
    secrets: &BTreeMap<String, Vec<u8>>,
    uid: u32,
) -> Result<PathBuf, EngineError> {
    let dir = data
        .join("secrets")
        .join(function)
        .join(version.to_string());
    if dir.is_dir() {
        return Ok(dir);
    }
    let io = EngineError::io("writing secrets");
    let parent = dir.parent().expect("has a parent");
    std::fs::create_dir_all(parent).map_err(&io)?;
    for p in [data.join("secrets"), parent.to_owned()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).map_err(&io)?;
    }
    let tmp = parent.join(format!(".{}", alcove_sys::process::random_id()));
    std::fs::create_dir(&tmp).map_err(&io)?;
    let written = (|| {
        for (name, value) in secrets {
            let path = tmp.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(&io)?;
            std::io::Write::write_all(&mut f, value).map_err(&io)?;
            chown(&path, uid)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o500)).map_err(&io)?;
        chown(&tmp, uid)
    })();
    if let Err(e) = written {
        // A disk full halfway leaves no copy of the values behind.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(e))
        }
        Ok(()) => Ok(dir),
    }
}

fn chown(path: &Path, uid: u32) -> Result<(), EngineError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .map_err(EngineError::io("handing secrets to the sandbox user"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn code_is_stored_once_by_content() {
        let data = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            ("main.py", b"print(1)\n", 0o644),
            ("bin/run", b"#!/bin/sh\n", 0o755),
        ]);
        let a = store_code(data.path(), &tar).unwrap();
        let b = store_code(data.path(), &tar).unwrap();
        assert_eq!(a, b);
        let dir = data.path().join("code").join(&a);
        assert_eq!(std::fs::read(dir.join("main.py")).unwrap(), b"print(1)\n");
        let mode = std::fs::metadata(dir.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let other = store_code(data.path(), &tar_of(&[("main.py", b"print(2)\n", 0o644)])).unwrap();
        assert_ne!(a, other);
        assert_eq!(
            std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
            0,
            "no staging left"
        );
    }

    #[test]
    fn escaping_and_linking_archives_are_refused_and_leave_nothing() {
        let data = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "evil", "/etc/shadow").unwrap();
        let err = store_code(data.path(), &b.into_inner().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("evil -> /etc/shadow leaves the code directory"),
            "{err}"
        );
        assert!(safe_relative(Path::new("../x")).is_none());
        assert!(safe_relative(Path::new("/etc/x")).is_none());
        assert_eq!(safe_relative(Path::new("./a/b")).unwrap(), Path::new("a/b"));
        assert!(store_code(data.path(), b"not a tar at all, clearly").is_err());
        assert_eq!(
            std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
            0
        );
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, to: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_cksum();
        b.append_link(&mut h, path, to).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn links_inside_are_stored_as_links_and_counted_in_the_digest() {
        let data = tempfile::tempdir().unwrap();
        let tree = |to: &str| {
            let mut b = tar::Builder::new(Vec::new());
            file(&mut b, "vendor/pkg/__init__.py", b"X = 1\n");
            link(&mut b, tar::EntryType::Symlink, "lib/pkg", to);
            b.into_inner().unwrap()
        };
        let a = store_code(data.path(), &tree("../vendor/pkg")).unwrap();
        let dir = data.path().join("code").join(&a);
        let meta = std::fs::symlink_metadata(dir.join("lib/pkg")).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(dir.join("lib/pkg")).unwrap(),
            Path::new("../vendor/pkg")
        );
        let b = store_code(data.path(), &tree("../vendor")).unwrap();
        assert_ne!(a, b, "the digest covers where links point");
    }

    #[test]
    fn names_alike_when_shown_are_different_code_and_clashes_are_the_archives_fault() {
        use std::os::unix::ffi::OsStrExt;
        let data = tempfile::tempdir().unwrap();
        let named = |name: &[u8]| {
            let mut b = tar::Builder::new(Vec::new());
            file(
                &mut b,
                std::ffi::OsStr::from_bytes(name).to_str().unwrap_or("x"),
                b"1",
            );
            b.into_inner().unwrap()
        };
        let one = {
            let mut b = tar::Builder::new(Vec::new());
            link(&mut b, tar::EntryType::Symlink, "a b", "c");
            b.into_inner().unwrap()
        };
        let two = {
            let mut b = tar::Builder::new(Vec::new());
            link(&mut b, tar::EntryType::Symlink, "a", "b c");
            b.into_inner().unwrap()
        };
        let a = store_code(data.path(), &one).unwrap();
        assert_ne!(a, store_code(data.path(), &two).unwrap());
        let nl = store_code(data.path(), &named(b"x\nd y")).unwrap();
        assert_ne!(nl, store_code(data.path(), &named(b"x")).unwrap());
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "a", b"1");
        file(&mut b, "a", b"2");
        let err = store_code(data.path(), &b.into_inner().unwrap()).unwrap_err();
        assert!(
            matches!(&err, EngineError::BadCode(why) if why.starts_with("a: ")),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn hostile_link_archives_are_refused_and_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let refused = |build: &dyn Fn(&mut tar::Builder<Vec<u8>>), expect: &str| {
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            let err = store_code(data.path(), &b.into_inner().unwrap()).unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
            assert_eq!(
                std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
                0
            );
        };
        let out = outside.path().to_str().unwrap().to_owned();
        refused(
            &|b| {
                link(
                    b,
                    tar::EntryType::Symlink,
                    "venv/bin/python3",
                    "/usr/bin/python3",
                )
            },
            "venv/bin/python3 -> /usr/bin/python3 leaves the code directory",
        );
        refused(
            &|b| link(b, tar::EntryType::Symlink, "a/up", "../../x"),
            "a/up -> ../../x leaves the code directory",
        );
        // A link inside, then an entry written through it.
        refused(
            &|b| {
                link(b, tar::EntryType::Symlink, "d", ".");
                file(b, "d/x", b"through");
            },
            "d/x lies under the link d",
        );
        refused(
            &|b| {
                link(b, tar::EntryType::Symlink, "d", "e");
                link(b, tar::EntryType::Symlink, "d", "f");
            },
            "d lies under the link d",
        );
        refused(
            &|b| {
                file(b, "a", b"1");
                link(b, tar::EntryType::Link, "b", "a");
            },
            "b is a hard link",
        );
        refused(
            &|b| link(b, tar::EntryType::Link, "h", &out),
            "h is a hard link",
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
