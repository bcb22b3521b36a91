//! What keeps an agent sandbox across a daemon restart: its home and its
//! record, both in DATA_DIR/sandboxes/ID/.
//!
//! - `home/` is a tmpfs the daemon mounts on the host (size: the sandbox's
//!   `disk`; owned by the sandbox's user, mode 0700, nosuid, nodev) and binds
//!   into the sandbox as /home/user. A mount on the host outlives the daemon,
//!   a kill -9 included, but not the host: after a reboot the directory is
//!   empty and no longer a mount point, and the sandbox is reclaimed (its
//!   files were lost; keeping its name with an empty home would mislead).
//!   Its propagation is what its parent's is: a mount made private after the
//!   fact would leave the copies a shared parent had already handed to other
//!   namespaces (systemd services' slaves of /) behind at unmount time.
//! - `sandbox.json` is its record: what it was created with, its clock and
//!   its owner, written whole (a temporary file renamed over it) so a killed
//!   daemon leaves the old record or the new one (no fsync: see `save`).
//!
//! Records are read as hostile input: bounded in size, parsed strictly, the
//! id checked before it names a path; a bad one is logged and reclaimed by
//! the daemon, never a panic.

use super::CreateSandbox;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// DATA_DIR's directory of sandboxes.
pub(crate) const SANDBOXES_DIR: &str = "sandboxes";
const RECORD: &str = "sandbox.json";
const HOME: &str = "home";
/// A record is a few KiB (metadata and environment are bounded); more is
/// not one of ours.
const MAX_RECORD_BYTES: u64 = 512 << 10;
/// The record's format.
const VERSION: u32 = 1;
/// statfs's f_type of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// In the directory of a ready sandbox not yet claimed (pool.rs): it has no
/// record, and `alcove gc` must not take it for a create cut short while
/// its daemon runs.
const POOLED: &str = "pooled";

/// Why a sandbox found at start is stopped.
pub(crate) const STOPPED_BY_RESTART: &str =
    "its processes ended with the daemon; its files and metadata were kept";
/// Why a sandbox whose agent ended on its own is stopped.
pub(crate) const STOPPED_BY_END: &str =
    "its agent ended (killed, or out of memory); its files and metadata were kept";

/// What brings a sandbox back: its request, clock and owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub version: u32,
    pub id: String,
    pub created_at: f64,
    pub timeout_s: u64,
    /// Wall-clock: the timeout runs on while the daemon is down.
    pub expires_at: f64,
    pub uid: u32,
    pub gid: u32,
    /// What it was created with, its limits filled in (a daemon restarted
    /// with other defaults gives it the same ones).
    pub request: CreateSandbox,
    /// The sandbox it was forked from (not part of a client's request).
    pub parent: Option<String>,
}

impl Record {
    pub(crate) fn new(
        id: &str,
        request: &CreateSandbox,
        clock: (f64, u64, f64),
        owner: (u32, u32),
    ) -> Self {
        let (created_at, timeout_s, expires_at) = clock;
        Record {
            version: VERSION,
            id: id.to_owned(),
            created_at,
            timeout_s,
            expires_at,
            uid: owner.0,
            gid: owner.1,
            request: request.clone(),
            parent: request.parent.clone(),
        }
    }

    /// The request that starts it again (with its parent).
    pub(crate) fn request(&self) -> CreateSandbox {
        let mut request = self.request.clone();
        request.parent = self.parent.clone();
        request
    }

    /// What a record must hold before anything of it is used.
    fn check(&self, dir_name: &str) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "its format is version {}; this daemon reads {VERSION}",
                self.version
            ));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err("it would run as root".into());
        }
        if self.id != dir_name || !valid_id(&self.id) {
            return Err(format!("it names another sandbox ({:?})", self.id));
        }
        let max = super::MAX_TIMEOUT_S as f64;
        let sane_time = |t: f64| t.is_finite() && t > 0.0 && t < 1e11;
        if !sane_time(self.created_at)
            || !sane_time(self.expires_at)
            || !(1..=super::MAX_TIMEOUT_S).contains(&self.timeout_s)
            || self.expires_at > self.created_at.max(super::super::store::now()) + max + 1.0
        {
            return Err("its clock is out of range".into());
        }
        if let Some(parent) = &self.parent {
            if !valid_id(parent) {
                return Err("its parent's id is not a sandbox id".into());
            }
        }
        super::check_metadata(&self.request.metadata).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = self.request.env.clone().into_iter().collect();
        super::check_env(&env).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Whether `id` is a sandbox id as this daemon makes them (`sb-` and
/// lowercase hex): safe to use as a file name.
pub(crate) fn valid_id(id: &str) -> bool {
    id.strip_prefix("sb-").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A sandbox's directory beneath `root` (DATA_DIR/sandboxes), its id checked.
pub(crate) fn sandbox_dir(root: &Path, id: &str) -> io::Result<PathBuf> {
    if !valid_id(id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{id:?} is not a sandbox id"),
        ));
    }
    Ok(root.join(id))
}

/// Its home, the tmpfs bound into it as /home/user.
pub(crate) fn home_of(dir: &Path) -> PathBuf {
    dir.join(HOME)
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Makes DATA_DIR/sandboxes (root's, 0700: the homes' contents are the
/// sandboxes' own, for no one else on the host).
pub(crate) fn make_root(root: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
}

/// The files a home of `bytes` may hold: one per 4 KiB of its size, at
/// least 4,096. An inode costs kernel memory that `size=` does not count,
/// and a home outlives its sandbox's memory cgroup: the bound is this.
fn inodes_for(bytes: u64) -> u64 {
    (bytes / 4096).max(4096)
}

/// Makes the sandbox's directory and mounts its home: a tmpfs of `bytes`
/// owned by `owner`. On failure nothing of it is left.
pub(crate) fn create_home(dir: &Path, bytes: u64, owner: (u32, u32)) -> io::Result<()> {
    if let Some(root) = dir.parent() {
        make_root(root)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let home = home_of(dir);
    let made = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&home)
        .and_then(|()| cpath(&home))
        .and_then(|target| {
            let options = CString::new(format!(
                "mode=0700,uid={},gid={},size={bytes},nr_inodes={}",
                owner.0,
                owner.1,
                inodes_for(bytes)
            ))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            alcove_sys::mount::mount(
                Some(c"tmpfs"),
                &target,
                Some(c"tmpfs"),
                alcove_sys::mount::MS_NOSUID | alcove_sys::mount::MS_NODEV,
                Some(&options),
            )
        });
    if let Err(e) = made {
        let _ = reclaim(dir);
        return Err(e);
    }
    Ok(())
}

/// Whether the sandbox's home is still its tmpfs (a mount point of its own),
/// rather than the empty directory beneath it a host restart leaves.
pub(crate) fn home_mounted(dir: &Path) -> bool {
    let home = home_of(dir);
    let (Ok(outer), Ok(inner)) = (
        std::fs::symlink_metadata(dir),
        std::fs::symlink_metadata(&home),
    ) else {
        return false;
    };
    inner.is_dir()
        && inner.dev() != outer.dev()
        && cpath(&home)
            .and_then(|c| alcove_sys::fs::filesystem_magic(&c))
            .is_ok_and(|magic| magic == TMPFS_MAGIC)
}

/// Unmounts the sandbox's home and removes its directory: nothing of it
/// is left. A home still in use somewhere (a process with its working
/// directory there) is detached instead; its memory goes with its last user.
pub(crate) fn reclaim(dir: &Path) -> io::Result<()> {
    let home = home_of(dir);
    let target = cpath(&home)?;
    // Emptied first: a detached copy of the mount that something still holds
    // (a forked interpreter's session may keep the one it was handed) would
    // keep every page of it in memory, outside any limit, after the unmount.
    if home_mounted(dir) {
        empty(&home);
    }
    for _ in 0..64 {
        if !home_mounted(dir) {
            break;
        }
        match alcove_sys::mount::umount(&target, libc::UMOUNT_NOFOLLOW) {
            Ok(()) => continue, // several may be stacked
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => alcove_sys::mount::umount(
                &target,
                alcove_sys::mount::MNT_DETACH | libc::UMOUNT_NOFOLLOW,
            )?,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break, // not a mount point
            Err(e) => return Err(e),
        }
    }
    if home_mounted(dir) {
        return Err(io::Error::other("its home is still mounted"));
    }
    // Nothing mounted is left beneath it: what is there is the daemon's own
    // (remove_dir_all follows no link).
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Marks `dir` as a ready sandbox's ([`POOLED`]).
pub(crate) fn mark_pooled(dir: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(POOLED))
        .map(drop)
}

/// A claimed sandbox is no longer a ready one (best effort: its record,
/// saved first, is what counts).
pub(crate) fn unmark_pooled(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(POOLED));
}

pub(crate) fn is_pooled(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(POOLED)).is_ok_and(|m| m.is_file())
}

/// Removes what `dir` holds (best effort; links are removed, not followed).
fn empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

/// Writes the record whole: a temporary file renamed over the old one, so a
/// daemon killed at any point leaves one or the other. Not fsynced: the
/// page cache outlives a killed daemon, and what would need the disk (a
/// host crash) takes the home's tmpfs with it anyway.
pub(crate) fn save(dir: &Path, record: &Record) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let temp = dir.join(format!(".{RECORD}.{}", alcove_sys::process::random_id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(&json)?;
        std::fs::rename(&temp, dir.join(RECORD))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Why a record could not be loaded, and so what may be done with its
/// sandbox: only a missing record (a create cut short) or one of ours that
/// fails its checks is reclaimed; anything else (another version's format,
/// a field this daemon does not know, an I/O error) is left as it is, since
/// reclaiming deletes the user's files.
#[derive(Debug)]
pub(crate) enum LoadError {
    Missing,
    Foreign(String),
    Bad(String),
}

impl LoadError {
    pub(crate) fn reclaimable(&self) -> bool {
        matches!(self, LoadError::Missing | LoadError::Bad(_))
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing => f.write_str("it has no record"),
            LoadError::Foreign(why) | LoadError::Bad(why) => f.write_str(why),
        }
    }
}

/// Reads and checks the record in `dir` (named `dir_name`).
pub(crate) fn load(dir: &Path, dir_name: &str) -> Result<Record, LoadError> {
    use std::io::Read;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join(RECORD))
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(LoadError::Bad("its record is a link".into()))
        }
        Err(e) => {
            return Err(LoadError::Foreign(format!(
                "its record cannot be opened: {e}"
            )))
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| LoadError::Foreign(e.to_string()))?;
    if !meta.is_file() || meta.len() > MAX_RECORD_BYTES {
        return Err(LoadError::Bad(format!(
            "its record is not a file of at most {MAX_RECORD_BYTES} bytes"
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LoadError::Foreign(format!("its record cannot be read: {e}")))?;
    // Another version's record (or a field a newer daemon added) is kept.
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    if version.is_some_and(|v| v != u64::from(VERSION)) {
        return Err(LoadError::Foreign(format!(
            "its record is format version {}; this daemon reads {VERSION}",
            version.unwrap_or_default()
        )));
    }
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| match version {
        Some(_) if e.to_string().contains("unknown field") => LoadError::Foreign(format!(
            "its record has what this daemon does not know: {e}"
        )),
        _ => LoadError::Bad(format!("its record is not valid: {e}")),
    })?;
    record.check(dir_name).map_err(LoadError::Bad)?;
    Ok(record)
}

/// Removes temporary records a crash left in `dir`.
pub(crate) fn clean_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{RECORD}."))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        let now = crate::store::now();
        Record::new(
            id,
            &CreateSandbox::default(),
            (now, 60, now + 60.0),
            (65534, 65534),
        )
    }

    #[test]
    fn ids_are_checked_before_they_name_a_path() {
        assert!(valid_id("sb-0123456789abcdef0123456789abcdef"));
        for bad in [
            "", "sb-", "sb-../x", "../sb-1", "sb-ABC", "sb-1/2", "sb-1 ", "xb-12",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
            assert!(sandbox_dir(Path::new("/x"), bad).is_err());
        }
        assert!(!valid_id(&format!("sb-{}", "a".repeat(65))));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = "sb-00ff";
        let rec = record(id);
        save(dir.path(), &rec).unwrap();
        let back = load(dir.path(), id).unwrap();
        assert_eq!(back.id, id);
        assert_eq!(back.timeout_s, 60);
        // Another directory's name: refused.
        assert!(load(dir.path(), "sb-01").is_err());
        // No temporary file is left by a save.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(RECORD)]);

        let bad: &[&[u8]] = &[
            b"",
            b"{",
            b"null",
            b"[]",
            b"{\"version\": 1}",
            &[0xff, 0xfe, 0x00],
        ];
        for bytes in bad {
            std::fs::write(dir.path().join(RECORD), bytes).unwrap();
            assert!(load(dir.path(), id).is_err());
        }
        // Unknown fields, a bad clock, another version, a hostile parent.
        let mut v = serde_json::to_value(&rec).unwrap();
        v["extra"] = 1.into();
        std::fs::write(dir.path().join(RECORD), v.to_string()).unwrap();
        assert!(load(dir.path(), id).is_err());
        for (field, value) in [
            ("expires_at", serde_json::json!(1e300)),
            ("created_at", serde_json::json!(-1.0)),
            ("timeout_s", serde_json::json!(0)),
            ("version", serde_json::json!(2)),
            ("parent", serde_json::json!("../../etc")),
            ("uid", serde_json::json!(-1)),
        ] {
            let mut v = serde_json::to_value(&rec).unwrap();
            v[field] = value;
            std::fs::write(dir.path().join(RECORD), v.to_string()).unwrap();
            assert!(load(dir.path(), id).is_err(), "{field}");
        }
        // Too large.
        std::fs::write(
            dir.path().join(RECORD),
            vec![b' '; MAX_RECORD_BYTES as usize + 1],
        )
        .unwrap();
        assert!(load(dir.path(), id)
            .unwrap_err()
            .to_string()
            .contains("at most"));
        // A link is not followed.
        std::fs::remove_file(dir.path().join(RECORD)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(RECORD)).unwrap();
        assert!(load(dir.path(), id).is_err());
    }

    #[test]
    fn a_plain_directory_is_not_a_mounted_home() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!home_mounted(dir.path()));
        std::fs::create_dir(home_of(dir.path())).unwrap();
        assert!(!home_mounted(dir.path()));
        reclaim(dir.path()).unwrap();
        assert!(!dir.path().exists());
    }
}
