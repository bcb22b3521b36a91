//! Running an image: its layers as a sandbox's root and its config as the
//! defaults for the command, environment, working directory and user.
//! Shared by functions and `alcove run --image`.

use crate::EngineError;
use alcove_image::{ImageRecord, Store};
use alcove_sandbox::{SandboxSpec, User};
use alcove_sys::dirfd::{self, Regular, Scope};
use std::ffi::{CStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// Makes `spec` run `record`: its layers as the root, its environment under
/// the caller's, and its command, working directory and user where the
/// caller gave none. Image users that are root run as nobody: alcove has no
/// user namespace, so uid 0 inside would be uid 0 on the host.
pub fn apply_image(
    spec: &mut SandboxSpec,
    store: &Store,
    record: &ImageRecord,
    explicit_user: bool,
    explicit_workdir: bool,
) -> Result<(), EngineError> {
    let invalid = |m: String| EngineError::Invalid(m);
    let mut lowers = store.lower_dirs(record);
    if lowers.is_empty() {
        return Err(invalid(format!("image {} has no layers", record.name)));
    }
    spec.rootfs = Some(lowers.remove(0));
    spec.lower_layers = lowers;
    if spec.argv.is_empty() {
        let config = &record.config;
        spec.argv = config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .map(OsString::from)
            .collect();
        if spec.argv.is_empty() {
            return Err(invalid(format!(
                "image {} has no Entrypoint or Cmd: give a command",
                record.name
            )));
        }
    }
    let mut env: Vec<(OsString, OsString)> = record
        .config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    for (k, v) in spec.env.drain(..) {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    spec.env = env;
    if !explicit_workdir {
        if let Some(dir) = &record.config.working_dir {
            spec.workdir = dir.into();
        }
    }
    if !explicit_user {
        if let Some(user) = &record.config.user {
            let resolved = resolve_user(store, record, user)?;
            if resolved.uid != 0 {
                spec.user = resolved;
            }
        }
    }
    Ok(())
}

/// The key (`<daemon>-<function>`) and the holder's description under which
/// a daemon with data directory `data` pins `function`'s image: daemons
/// sharing an image store keep their pins apart.
pub(crate) fn pin_of(data: &std::path::Path, function: &str) -> (String, String) {
    use sha2::Digest;
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_owned());
    let digest = sha2::Sha256::digest(data.as_os_str().as_encoded_bytes());
    let daemon: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    (
        format!("{daemon}-{function}"),
        format!(
            "function {function} (of alcove serve --data-dir {})",
            data.display()
        ),
    )
}

/// `uid`, `uid:gid`, `name` or `name:group`, names looked up in the image's
/// /etc/passwd and /etc/group (see [`accounts_file`]).
fn resolve_user(store: &Store, record: &ImageRecord, user: &str) -> Result<User, EngineError> {
    let (who, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: AccountsFile, name: &str| -> Result<Option<(u32, u32)>, EngineError> {
        let Some(text) = accounts_file(&store.lower_dirs(record), file, &record.name)? else {
            return Ok(None);
        };
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        }))
    };
    let missing = |what: &str, file: &str| {
        EngineError::Invalid(format!(
            "image {}: {what} is not in its {file}",
            record.name
        ))
    };
    let (uid, mut gid) = match who.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup(AccountsFile::Passwd, who)?
            .ok_or_else(|| missing(&format!("user {who:?}"), "/etc/passwd"))?,
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(AccountsFile::Group, g)?
                .map(|(gid, _)| gid)
                .ok_or_else(|| missing(&format!("group {g:?}"), "/etc/group"))?,
        };
    }
    Ok(User { uid, gid })
}

/// The most bytes of an image's /etc/passwd or /etc/group alcove reads.
const MAX_ACCOUNTS_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum AccountsFile {
    Passwd,
    Group,
}

impl AccountsFile {
    fn path(self) -> &'static CStr {
        match self {
            AccountsFile::Passwd => c"etc/passwd",
            AccountsFile::Group => c"etc/group",
        }
    }

    fn shown(self) -> &'static str {
        match self {
            AccountsFile::Passwd => "/etc/passwd",
            AccountsFile::Group => "/etc/group",
        }
    }
}

/// The image's `file`, from the top layer that has it, or `None` if no
/// layer has it or the top one that names it deletes it (a whiteout).
/// Each layer is read as its own root (`openat2(RESOLVE_IN_ROOT)`): a link,
/// even an absolute one, never leads out of the layer to the host's files,
/// FIFOs or devices; what is not a regular file is refused unopened, and
/// more than [`MAX_ACCOUNTS_BYTES`] is refused. (A link into a lower layer
/// is not followed there: such an image's user must be given as numbers.)
fn accounts_file(
    layers: &[PathBuf],
    file: AccountsFile,
    image: &str,
) -> Result<Option<String>, EngineError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let invalid = |why: String| EngineError::Invalid(format!("image {image}: {why}"));
    for layer in layers {
        let root = File::open(layer).map_err(EngineError::io("opening an image layer"))?;
        let found = match dirfd::open_regular(root.as_fd(), file.path(), Scope::InRoot) {
            Ok(found) => found,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
            Err(source) => {
                return Err(EngineError::Io {
                    what: "opening the image's /etc/passwd or /etc/group",
                    source,
                })
            }
        };
        let mut text = Vec::new();
        match found {
            Regular::File(f) => f
                .take(MAX_ACCOUNTS_BYTES + 1)
                .read_to_end(&mut text)
                .map_err(EngineError::io(
                    "reading the image's /etc/passwd or /etc/group",
                ))?,
            Regular::Not(m) if m.file_type().is_char_device() && m.rdev() == 0 => return Ok(None),
            Regular::Not(_) => {
                return Err(invalid(format!(
                    "its {} is not a regular file",
                    file.shown()
                )))
            }
        };
        if text.len() as u64 > MAX_ACCOUNTS_BYTES {
            return Err(invalid(format!(
                "its {} is larger than {MAX_ACCOUNTS_BYTES} bytes",
                file.shown()
            )));
        }
        return Ok(Some(String::from_utf8_lossy(&text).into_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn layer_with(passwd: impl FnOnce(&Path)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        passwd(&dir.path().join("etc/passwd"));
        dir
    }

    fn read(layers: &[&tempfile::TempDir]) -> Result<Option<String>, EngineError> {
        let paths: Vec<PathBuf> = layers.iter().map(|d| d.path().to_owned()).collect();
        accounts_file(&paths, AccountsFile::Passwd, "test")
    }

    #[test]
    fn accounts_files_are_read_inside_each_layer_only() {
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "app:x:4242:4242::/:/bin/sh\n").unwrap();
        let out = layer_with(|p| std::os::unix::fs::symlink(&host_passwd, p).unwrap());
        assert!(
            read(&[&out]).unwrap().is_none(),
            "followed a link to the host"
        );

        let inside = layer_with(|p| {
            std::fs::write(p.with_extension("real"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
            std::os::unix::fs::symlink("/etc/passwd.real", p).unwrap();
        });
        assert_eq!(
            read(&[&inside]).unwrap().as_deref(),
            Some("app:x:1000:1000::/:/bin/sh\n")
        );
        // The top layer that has the file wins; layers without it are skipped.
        let empty = tempfile::tempdir().unwrap();
        let lower = layer_with(|p| std::fs::write(p, "lower\n").unwrap());
        assert_eq!(read(&[&empty, &lower]).unwrap().as_deref(), Some("lower\n"));
    }

    #[test]
    fn fifos_and_huge_accounts_files_are_refused() {
        let fifo = layer_with(|p| {
            let made = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap();
            assert!(made.success());
        });
        let e = read(&[&fifo]).unwrap_err().to_string();
        assert_eq!(e, "image test: its /etc/passwd is not a regular file");
        let huge = layer_with(|p| std::fs::write(p, vec![b'#'; (1 << 20) + 1]).unwrap());
        let e = read(&[&huge]).unwrap_err().to_string();
        assert_eq!(
            e,
            "image test: its /etc/passwd is larger than 1048576 bytes"
        );
        let fits = layer_with(|p| std::fs::write(p, vec![b'#'; 1 << 20]).unwrap());
        assert_eq!(read(&[&fits]).unwrap().map(|t| t.len()), Some(1 << 20));
    }
}
