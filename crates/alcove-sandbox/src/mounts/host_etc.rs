//! The read-only pieces of the host's /etc a host-view sandbox sees beside
//! the generated files: what ordinary programs read to run (alternatives,
//! the dynamic loader's cache, CA certificates, services and protocols, the
//! time zone, language runtimes' configuration), from an allow-list, so no
//! secret of the host (shadow, gshadow, sudoers, ssh keys, /etc/ssl/private,
//! machine-id, keytabs) is ever among them.

use super::Builder;
use alcove_sys::mount::{MS_NODEV, MS_NOEXEC};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Paths under /etc shown read-only when the host has them. Directories are
/// bound whole (their content stays current: update-ca-certificates or
/// update-alternatives show at once); small files are copied into the
/// template's /etc (each bind is a mount every sandbox start copies, and
/// ~20 of them cost ~25 us a start), larger ones bound; links are recreated
/// as links, which resolve inside the sandbox.
pub(crate) const HOST_ETC: &[&str] = &[
    // Programs and libraries.
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    // TLS: the CA bundle and OpenSSL's configuration, never a private key.
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "pki/ca-trust",
    "pki/tls/certs",
    "pki/tls/cert.pem",
    "pki/tls/openssl.cnf",
    "crypto-policies",
    // Names and numbers (getservbyname, getprotobyname, getaddrinfo).
    "services",
    "protocols",
    "networks",
    "rpc",
    "ethertypes",
    "gai.conf",
    "host.conf",
    // Time, locale, terminals, file types.
    "localtime",
    "timezone",
    "locale.alias",
    "locale.conf",
    "inputrc",
    "terminfo",
    "mime.types",
    "magic",
    "magic.mime",
    // What system this is.
    "os-release",
    "lsb-release",
    "debian_version",
    "redhat-release",
    "alpine-release",
    "shells",
    // Language runtimes' own configuration.
    "perl",
    "python3",
];

/// One piece of the host's /etc, as found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EtcPiece {
    /// Relative to /etc.
    pub path: PathBuf,
    pub kind: EtcKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EtcKind {
    /// A directory too large to copy: bound.
    Dir,
    /// A directory made in the template's /etc; its entries follow it.
    Made,
    /// A file too large to copy.
    File,
    /// A file's contents and permission bits.
    Copy(Vec<u8>, u32),
    Link(PathBuf),
}

/// The largest file copied rather than bound.
pub(crate) const MAX_COPIED_BYTES: u64 = 128 << 10;
/// The most bytes copied in all (the template's tmpfs holds them).
pub(crate) const MAX_COPIED_TOTAL: u64 = 1 << 20;
/// The most entries a directory may hold, all levels together, to be copied
/// rather than bound (ld.so.conf.d, python3.N, perl are a few files; the
/// alternatives and certificates are hundreds).
const MAX_COPIED_ENTRIES: usize = 32;

/// What changes when a piece of `etc` is replaced by rename (ldconfig's
/// ld.so.cache, a package's new services file, `sed -i`): the identity and
/// modification time of the directories that hold the pieces copied.
pub(crate) fn fingerprint(etc: &Path) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for dir in ["", "ssl", "pki/tls"] {
        if let Ok(m) = std::fs::metadata(etc.join(dir)) {
            out.extend(m.ino().to_le_bytes());
            out.extend(m.mtime().to_le_bytes());
            out.extend(m.mtime_nsec().to_le_bytes());
        }
    }
    out
}

/// [`read`], kept while the [`fingerprint`] stays the same: a process that
/// builds many roots from scratch (no template) reads /etc once.
pub(crate) fn cached(etc: &Path) -> std::sync::Arc<Vec<EtcPiece>> {
    use std::sync::{Arc, Mutex};
    // By directory: alcove reads only /etc (tests, their own directories).
    type Cache = Mutex<Vec<(PathBuf, Vec<u8>, Arc<Vec<EtcPiece>>)>>;
    static CACHE: Cache = Mutex::new(Vec::new());
    let print = fingerprint(etc);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p, pieces)) = cache.iter().find(|(path, ..)| path == etc) {
        if *p == print {
            return Arc::clone(pieces);
        }
    }
    let pieces = Arc::new(read(etc));
    cache.retain(|(path, ..)| path != etc);
    cache.push((etc.to_owned(), print, Arc::clone(&pieces)));
    pieces
}

/// The pieces of `etc` (the host's /etc) to show: [`HOST_ETC`] and the
/// versioned `python3.N` directories. A piece under a directory that is a
/// link on the host is skipped, so a path never resolves through a host
/// link to somewhere else; what is neither a file, a directory nor a link is
/// skipped too.
pub(crate) fn read(etc: &Path) -> Vec<EtcPiece> {
    let mut names: Vec<PathBuf> = HOST_ETC.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir(etc) {
        let mut versioned: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| {
                n.as_bytes()
                    .strip_prefix(b"python3.")
                    .is_some_and(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
            })
            .map(PathBuf::from)
            .collect();
        versioned.sort();
        names.extend(versioned);
    }
    let mut copied: u64 = 0;
    let mut out = Vec::new();
    for path in names.into_iter().filter(|n| parents_are_dirs(etc, n)) {
        let Some(kind) = piece(etc, &path, &mut copied) else {
            continue;
        };
        if kind != EtcKind::Dir {
            out.push(EtcPiece { path, kind });
            continue;
        }
        let mut budget = copied;
        let mut tree = Vec::new();
        if copy_tree(etc, &path, &mut tree, &mut budget, 0) {
            copied = budget;
            out.push(EtcPiece {
                path,
                kind: EtcKind::Made,
            });
            out.extend(tree);
        } else if tree_open_to_all(&etc.join(&path), &mut { MAX_BOUND_ENTRIES }, 0) {
            out.push(EtcPiece { path, kind });
        }
    }
    out
}

/// The most entries a bound directory may hold, all levels together, for
/// [`open_to_all`] to look at each; a larger one is not shown.
const MAX_BOUND_ENTRIES: usize = 4096;

/// Whether everyone on the host may read what `meta` describes (and search
/// it, a directory): a file kept from other users (shadow-like, 0600 or
/// 0640) is the host's secret, even under a piece of the allow-list, and a
/// sandbox running as uid 0 would read it as its owner.
fn open_to_all(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        mode & 0o005 == 0o005
    } else {
        mode & 0o004 != 0
    }
}

/// Whether everything in directory `dir` (at most `budget` entries) is
/// [`open_to_all`]: a bound directory shows all it holds.
fn tree_open_to_all(dir: &Path, budget: &mut usize, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Some(left) = budget.checked_sub(1) else {
            return false;
        };
        *budget = left;
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            return false;
        };
        if meta.file_type().is_symlink() {
            continue; // resolves inside the sandbox
        }
        if !open_to_all(&meta) {
            return false;
        }
        if meta.is_dir() && (depth >= 8 || !tree_open_to_all(&entry.path(), budget, depth + 1)) {
            return false;
        }
    }
    true
}

/// What `etc/path` is, reading a small file's contents; `None` for what not
/// everyone on the host may read ([`open_to_all`]).
fn piece(etc: &Path, path: &Path, copied: &mut u64) -> Option<EtcKind> {
    use std::os::unix::fs::PermissionsExt;
    let full = etc.join(path);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if !meta.file_type().is_symlink() && !open_to_all(&meta) {
        return None;
    }
    Some(if meta.file_type().is_symlink() {
        EtcKind::Link(std::fs::read_link(&full).ok()?)
    } else if meta.is_dir() {
        EtcKind::Dir
    } else if meta.is_file() {
        match read_small(&full, MAX_COPIED_TOTAL.saturating_sub(*copied)) {
            Some(bytes) => {
                *copied += bytes.len() as u64;
                EtcKind::Copy(bytes, meta.permissions().mode() & 0o755)
            }
            None => EtcKind::File,
        }
    } else {
        return None;
    })
}

/// Adds the entries under directory `etc/dir` to `tree` as copies, links and
/// made directories; false (the directory is then bound) when it is too
/// large or holds a file too large or something else.
fn copy_tree(
    etc: &Path,
    dir: &Path,
    tree: &mut Vec<EtcPiece>,
    copied: &mut u64,
    depth: usize,
) -> bool {
    let Ok(entries) = std::fs::read_dir(etc.join(dir)) else {
        return false;
    };
    let mut names: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { return false };
        names.push(dir.join(entry.file_name()));
        if names.len() + tree.len() > MAX_COPIED_ENTRIES {
            return false;
        }
    }
    names.sort();
    for path in names {
        match piece(etc, &path, copied) {
            Some(EtcKind::Dir) if depth < 4 => {
                tree.push(EtcPiece {
                    path: path.clone(),
                    kind: EtcKind::Made,
                });
                if !copy_tree(etc, &path, tree, copied, depth + 1) {
                    return false;
                }
            }
            Some(kind @ (EtcKind::Copy(..) | EtcKind::Link(_))) => {
                tree.push(EtcPiece { path, kind })
            }
            // Not everyone may read it: left out of the copy.
            None if std::fs::symlink_metadata(etc.join(&path))
                .is_ok_and(|m| (m.is_file() || m.is_dir()) && !open_to_all(&m)) => {}
            _ => return false,
        }
    }
    true
}

/// The file's contents if it is a regular file of at most
/// [`MAX_COPIED_BYTES`] and `room`, read without following a link.
fn read_small(path: &Path, room: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let limit = MAX_COPIED_BYTES.min(room);
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= limit).then_some(bytes)
}

fn parents_are_dirs(etc: &Path, name: &Path) -> bool {
    name.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| std::fs::symlink_metadata(etc.join(a)).is_ok_and(|m| m.is_dir()))
}

impl Builder {
    /// Shows `pieces` of the host's /etc under `etc` (the new root's /etc, a
    /// tmpfs): read-only, nosuid, nodev and noexec binds, and links.
    pub(super) fn host_etc(&mut self, etc: &Path, pieces: &[EtcPiece]) {
        for piece in pieces {
            let target = etc.join(&piece.path);
            let mut parents: Vec<&Path> = piece
                .path
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .collect();
            parents.reverse();
            for dir in parents {
                // Several pieces share a parent (ssl/, pki/tls/): a second mkdir fails harmlessly.
                self.mkdir_best_effort(&etc.join(dir), 0o755);
            }
            let source = Path::new("/etc").join(&piece.path);
            match &piece.kind {
                EtcKind::Link(to) => self.symlink(to.as_os_str().as_bytes(), &target),
                EtcKind::Dir => {
                    self.mkdir(&target, 0o755);
                    self.bind_read_only(&source, &target, MS_NODEV | MS_NOEXEC);
                }
                EtcKind::Made => self.mkdir_best_effort(&target, 0o755),
                EtcKind::Copy(contents, mode) => {
                    let path = self.place(&target);
                    self.ops.push(super::MountOp::WriteFile {
                        path,
                        contents: contents.clone(),
                        mode: *mode,
                    });
                }
                EtcKind::File => {
                    let path = self.place(&target);
                    self.ops.push(super::MountOp::Touch { path });
                    self.bind_read_only(&source, &target, MS_NODEV | MS_NOEXEC);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_holds_no_secret() {
        for secret in [
            "shadow",
            "gshadow",
            "sudoers",
            "sudoers.d",
            "ssh",
            "ssl",
            "ssl/private",
            "pki",
            "pki/tls",
            "pki/tls/private",
            "krb5.keytab",
            "machine-id",
            "passwd",
            "group",
            "security",
        ] {
            assert!(!HOST_ETC.contains(&secret), "{secret}");
        }
    }

    #[test]
    fn pieces_are_found_as_they_are_and_never_through_a_link() {
        let etc = tempfile::tempdir().unwrap();
        let e = etc.path();
        std::fs::create_dir_all(e.join("alternatives")).unwrap();
        std::fs::write(e.join("services"), "http 80/tcp\n").unwrap();
        std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", e.join("localtime")).unwrap();
        std::fs::create_dir_all(e.join("python3.11")).unwrap();
        std::fs::write(e.join("python3.11/sitecustomize.py"), "# site\n").unwrap();
        for i in 0..=MAX_COPIED_ENTRIES {
            std::fs::write(e.join(format!("alternatives/{i}")), "x").unwrap();
        }
        std::fs::create_dir_all(e.join("python3.x")).unwrap();
        std::fs::write(e.join("shadow"), "root:secret\n").unwrap();
        // ssl is a link on this host: ssl/certs would resolve through it.
        std::fs::create_dir_all(e.join("elsewhere/certs")).unwrap();
        std::os::unix::fs::symlink("elsewhere", e.join("ssl")).unwrap();
        let got = read(e);
        let find = |p: &str| got.iter().find(|x| x.path == Path::new(p)).map(|x| &x.kind);
        assert_eq!(find("alternatives"), Some(&EtcKind::Dir));
        assert_eq!(
            find("services"),
            Some(&EtcKind::Copy(b"http 80/tcp\n".to_vec(), 0o644))
        );
        std::fs::write(
            e.join("mime.types"),
            vec![b'#'; MAX_COPIED_BYTES as usize + 1],
        )
        .unwrap();
        assert_eq!(
            find("localtime"),
            Some(&EtcKind::Link("/usr/share/zoneinfo/UTC".into()))
        );
        assert_eq!(find("python3.11"), Some(&EtcKind::Made), "small: copied");
        assert_eq!(
            find("python3.11/sitecustomize.py"),
            Some(&EtcKind::Copy(b"# site\n".to_vec(), 0o644))
        );
        assert_eq!(find("python3.x"), None);
        assert_eq!(find("shadow"), None);
        assert_eq!(find("ssl/certs"), None);
        assert_eq!(got.len(), 5, "{got:?}");
        let got = read(e);
        let find = |p: &str| got.iter().find(|x| x.path == Path::new(p)).map(|x| &x.kind);
        assert_eq!(find("mime.types"), Some(&EtcKind::File), "too large: bound");
    }

    #[test]
    fn what_not_everyone_on_the_host_may_read_is_never_shown() {
        use std::os::unix::fs::PermissionsExt;
        let etc = tempfile::tempdir().unwrap();
        let e = etc.path();
        let mode = |p: &str, m: u32| {
            std::fs::set_permissions(e.join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::write(e.join("services"), "root only\n").unwrap();
        mode("services", 0o600);
        std::fs::write(e.join("protocols"), "group only\n").unwrap();
        mode("protocols", 0o640);
        std::fs::create_dir_all(e.join("python3")).unwrap();
        std::fs::write(e.join("python3/open.py"), "# open\n").unwrap();
        std::fs::write(e.join("python3/key.py"), "# secret\n").unwrap();
        mode("python3/key.py", 0o600);
        // Bound (too many to copy), holding one root-only file: not shown.
        std::fs::create_dir_all(e.join("alternatives")).unwrap();
        for i in 0..=MAX_COPIED_ENTRIES {
            std::fs::write(e.join(format!("alternatives/{i}")), "x").unwrap();
        }
        mode("alternatives/3", 0o600);
        let got = read(e);
        let paths: Vec<&Path> = got.iter().map(|p| p.path.as_path()).collect();
        assert_eq!(
            paths,
            [Path::new("python3"), Path::new("python3/open.py")],
            "{got:?}"
        );
        mode("alternatives/3", 0o644);
        let got = read(e);
        assert!(got.iter().any(|p| p.path == Path::new("alternatives")));
    }

    #[test]
    fn replacing_a_piece_changes_the_fingerprint_and_refreshes_the_cache() {
        let etc = tempfile::tempdir().unwrap();
        let e = etc.path();
        std::fs::write(e.join("services"), "old\n").unwrap();
        let before = fingerprint(e);
        let pieces = cached(e);
        assert!(std::sync::Arc::ptr_eq(&pieces, &cached(e)), "read once");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(e.join("services.new"), "new\n").unwrap();
        std::fs::rename(e.join("services.new"), e.join("services")).unwrap();
        assert_ne!(before, fingerprint(e));
        let now = cached(e);
        let services = now
            .iter()
            .find(|p| p.path == Path::new("services"))
            .unwrap();
        assert_eq!(services.kind, EtcKind::Copy(b"new\n".to_vec(), 0o644));
    }
}
