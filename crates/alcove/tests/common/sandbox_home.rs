//! What the agent-sandbox tests that stop and start daemons share: a data
//! directory of their own (serialized: they count the host's mounts and
//! processes), its mounts and entries, and a few API calls.

use super::daemon::Daemon;
use super::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The user agent sandboxes run as.
pub const SANDBOX_UID: u32 = 65534;

pub struct Fixture {
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    pub fn new(test: &str) -> Option<Fixture> {
        if !root_or_skip(test) {
            return None;
        }
        let serial = serial();
        Some(Fixture {
            dir: tempfile::tempdir().unwrap(),
            _serial: serial,
        })
    }

    pub fn data(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap().join("data")
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.data().join("sandboxes")
    }

    pub fn daemon(&self) -> Daemon {
        Daemon::start(&self.data(), &[])
    }

    pub fn daemon_with(&self, extra: &[&str]) -> Daemon {
        Daemon::start(&self.data(), extra)
    }
}

impl Drop for Fixture {
    /// Whatever a failed test left: homes unmounted, so the temp directory
    /// can go.
    fn drop(&mut self) {
        for m in mounts_under(&self.data()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&m)
                .status();
        }
    }
}

/// Mount points at or beneath `dir`, from this process's mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect()
}

pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn create(d: &Daemon, body: Value) -> String {
    let r = d.http("POST", "/v1/sandboxes", body.to_string().as_bytes());
    assert_eq!(r.status, 201, "create: {}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

pub fn info(d: &Daemon, id: &str) -> Value {
    let r = d.http("GET", &format!("/v1/sandboxes/{id}"), b"");
    assert_eq!(r.status, 200, "show {id}: {}", r.text());
    r.json()
}

pub fn write_file(d: &Daemon, id: &str, path: &str, text: &str) {
    let r = d.http(
        "PUT",
        &format!("/v1/sandboxes/{id}/files?path={path}"),
        text.as_bytes(),
    );
    assert_eq!(r.status, 200, "upload: {}", r.text());
}

/// Host pids of processes running as the sandbox user whose command line is `cmd`.
pub fn sandbox_processes(cmd: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    processes_with(cmd)
        .into_iter()
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == SANDBOX_UID)
        })
        .collect()
}

/// Removes `id` and checks nothing of it is left: no mount, no directory.
pub fn remove_and_check(d: &Daemon, f: &Fixture, id: &str) {
    let r = d.http("DELETE", &format!("/v1/sandboxes/{id}"), b"");
    assert_eq!(r.status, 200, "rm {id}: {}", r.text());
    assert_eq!(r.json()["state"], "removed");
    assert!(
        mounts_under(&f.sandboxes().join(id)).is_empty(),
        "{id}'s home is still mounted: {:?}",
        mounts_under(&f.data())
    );
    assert!(
        !f.sandboxes().join(id).exists(),
        "{id}'s directory is left: {:?}",
        entries(&f.sandboxes().join(id))
    );
    let r = d.http("GET", &format!("/v1/sandboxes/{id}"), b"");
    assert_eq!(r.status, 404);
}

pub fn assert_nothing_left(f: &Fixture) {
    assert!(
        mounts_under(&f.data()).is_empty(),
        "mounts left under the data directory: {:?}",
        mounts_under(&f.data())
    );
    assert!(
        entries(&f.sandboxes()).is_empty(),
        "left in sandboxes/: {:?}",
        entries(&f.sandboxes())
    );
}

/// Makes `dir` an hour old (older than `alcove gc` spares).
pub fn age(dir: &std::path::Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::open(dir).unwrap().set_modified(old).unwrap();
}

/// `alcove gc --data-dir DATA`: what it printed.
pub fn gc(f: &Fixture) -> String {
    let out = std::process::Command::new(ALCOVE)
        .args(["gc", "--data-dir"])
        .arg(f.data())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
