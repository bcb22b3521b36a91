//! Where alcove has made its parent cgroups, so that `alcove gc` started from
//! any cgroup finds what an alcove started from another one left behind.
//!
//! One line per parent directory (`…/alcove`), appended when a run creates
//! one; read and rewritten by `gc` under an exclusive lock. The file is
//! root's, but every line is checked again before use: only an absolute,
//! plain path to a directory named `alcove` on a cgroup filesystem counts.

use alcove_sys::fd::{flock, Lock};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The list of parent cgroups alcove has made.
pub const PLACES_FILE: &str = "/run/alcove/cgroup-places";

/// How much of the file is read: far more than any host has places.
const MAX_BYTES: u64 = 256 * 1024;

/// Records that alcove made the parent cgroup `dir`. Best effort: a host
/// without a writable /run loses only what `gc` from elsewhere would find.
pub(crate) fn remember(dir: &Path) {
    let _ = append(Path::new(PLACES_FILE), dir);
}

/// The parent cgroups alcove has made that still exist.
pub fn remembered_places() -> Vec<PathBuf> {
    read(Path::new(PLACES_FILE))
}

/// Drops `dir` from the list (after `gc` removed it).
pub fn forget_place(dir: &Path) {
    let _ = rewrite_without(Path::new(PLACES_FILE), dir);
}

fn open(file: &Path) -> std::io::Result<File> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(file)
}

fn append(file: &Path, dir: &Path) -> std::io::Result<()> {
    let f = open(file)?;
    flock(f.as_fd(), Lock::Exclusive)?;
    let mut places = parse(&read_locked(&f)?);
    if places.iter().any(|d| d == dir) {
        return Ok(());
    }
    // Drop the places that are gone (a per-command systemd scope is removed
    // when the command ends), so the list stays as long as what exists.
    places.retain(|d| d.exists());
    places.push(dir.to_owned());
    write_all(&f, &places)
}

/// Replaces the file's content with `places`, one per line.
fn write_all(f: &File, places: &[PathBuf]) -> std::io::Result<()> {
    let mut text = Vec::new();
    for place in places {
        text.extend_from_slice(place.as_os_str().as_bytes());
        text.push(b'\n');
    }
    f.set_len(0)?;
    let mut writer = f;
    writer.write_all(&text)
}

fn read(file: &Path) -> Vec<PathBuf> {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(file)
    else {
        return Vec::new();
    };
    let _ = flock(f.as_fd(), Lock::Shared);
    let mut places = read_locked(&f).map(|t| parse(&t)).unwrap_or_default();
    // Gone ones stay listed, for `gc` to forget; a directory that is not a
    // cgroup is never one of ours.
    places.retain(|d| !d.exists() || crate::layout::is_cgroup_fs(d));
    places
}

fn rewrite_without(file: &Path, dir: &Path) -> std::io::Result<()> {
    let f = open(file)?;
    flock(f.as_fd(), Lock::Exclusive)?;
    let mut places = parse(&read_locked(&f)?);
    places.retain(|d| d != dir);
    write_all(&f, &places)
}

fn read_locked(f: &File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.take(MAX_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The well-formed lines, without repeats.
fn parse(bytes: &[u8]) -> Vec<PathBuf> {
    let mut places: Vec<PathBuf> = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let dir = PathBuf::from(std::ffi::OsStr::from_bytes(line));
        let plain = dir.is_absolute()
            && dir
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if plain
            && dir.file_name().is_some_and(|n| n == crate::PARENT_DIR)
            && !places.contains(&dir)
        {
            places.push(dir);
        }
    }
    places
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_kept_once_gone_ones_dropped_and_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("run/places");
        let place = |name: &str| {
            let dir = tmp.path().join(name).join(crate::PARENT_DIR);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let (a, b, c) = (place("a"), place("b"), place("c"));
        append(&file, &a).unwrap();
        append(&file, &a).unwrap();
        append(&file, &b).unwrap();
        assert_eq!(
            parse(&std::fs::read(&file).unwrap()),
            vec![a.clone(), b.clone()]
        );
        std::fs::remove_dir(&a).unwrap();
        // gc sees the gone one (to forget it), never a directory that is not
        // a cgroup (b, on the temp dir's filesystem).
        assert_eq!(read(&file), vec![a.clone()]);
        append(&file, &c).unwrap();
        assert_eq!(
            parse(&std::fs::read(&file).unwrap()),
            vec![b.clone(), c.clone()]
        );
        rewrite_without(&file, &b).unwrap();
        assert_eq!(parse(&std::fs::read(&file).unwrap()), vec![c]);
    }

    #[test]
    fn hostile_lines_are_ignored() {
        let text = b"relative/alcove\n/sys/fs/cgroup/../../etc/alcove\n/sys/fs/cgroup/x/other\n\n/sys/fs/cgroup/ok/alcove\n";
        assert_eq!(parse(text), vec![PathBuf::from("/sys/fs/cgroup/ok/alcove")]);
    }
}
