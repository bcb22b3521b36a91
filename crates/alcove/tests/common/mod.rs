//! Helpers for alcove's integration tests: they run the real binary, as root,
//! against the real kernel.

#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod guard;
pub mod gvisor;
pub mod oci;
pub mod sandbox_home;
pub mod sdk;
pub mod warm;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Debian's python, which the sandbox finds first on its PATH too (a
/// python3 earlier on the host's PATH may be one the sandbox cannot see).
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether [`PYTHON`] is here; says why `test` is skipped when it is not.
pub fn python_or_skip(test: &str) -> bool {
    if std::path::Path::new(PYTHON).exists() {
        return true;
    }
    skip_unprovided(
        test,
        "needs /usr/bin/python3 (scripts/packages.sh installs it)",
    );
    false
}

pub const ALCOVE: &str = env!("CARGO_BIN_EXE_alcove");
pub const PROBE: &str = env!("CARGO_BIN_EXE_alcove-probe");

/// Sandbox tests take this lock so that limits, timings and leak counts are
/// not disturbed by other tests' sandboxes in the same binary.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `done` until it holds; fails the test, naming `what`, after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether this run is CI's (`ALCOVE_CI=1`, which .ci/run sets, or the
/// `CI=true` most CI services set): there, the machine is set up by
/// scripts/test.sh, so a skip for something it provides is a failure.
pub fn in_ci() -> bool {
    std::env::var("ALCOVE_CI").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips `test` for something the setup provides (root, a tool that
/// scripts/packages.sh or scripts/test.sh installs): says why on the real
/// stderr (not the captured one), and in CI fails the test instead.
pub fn skip_unprovided(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test} cannot run: {why}; CI's setup must provide this (skips for it fail under ALCOVE_CI=1 or CI=true)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Skips `test` for a fact of this machine that no setup changes (no GPU,
/// no BPF LSM, no second network address): says why, in CI too.
pub fn skip_machine(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether the test can run; if not, says why, so a skip is never silent
/// (and never happens in CI, which runs as root).
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_unprovided(
        test,
        "needs root (namespaces, cgroups, mounts); run the tests as root",
    );
    false
}

/// What one `alcove` invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: serde_json::Value,
}

impl Run {
    pub fn status(&self) -> &str {
        self.report["status"].as_str().unwrap_or("")
    }

    pub fn num(&self, key: &str) -> f64 {
        self.report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("report has no number {key}: {}", self.report))
    }
}

/// Runs `alcove` with `args` as given.
pub fn alcove(args: &[&str]) -> Output {
    Command::new(ALCOVE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start alcove")
}

/// Runs `alcove` with `args` as uid/gid 65534 with no groups (setpriv, from util-linux).
pub fn alcove_as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", ALCOVE])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)")
}

/// Asserts that `out` is alcove refusing with 125 and a stderr containing
/// `needle`; returns that stderr.
pub fn assert_refused(args: &[&str], out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    stderr
}

/// Runs `alcove run --report FILE OPTIONS -- PROGRAM...` and reads the report.
pub fn sandbox(options: &[&str], program: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let mut args = vec!["run", "--report", report.to_str().unwrap()];
    args.extend_from_slice(options);
    args.push("--");
    args.extend_from_slice(program);
    let out = alcove(&args);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    }
}

/// `--bind` arguments that put alcove-probe at /probe inside the sandbox.
pub fn probe_bind() -> String {
    format!("{PROBE}:/probe")
}

/// Every process on the host whose whole command line is `command`.
pub fn processes_with(command: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .trim_end()
            == command
        {
            found.push(pid);
        }
    }
    found
}

/// Mount points outside alcove's bounded pool (/run/alcove/pool, /run/alcove/templates).
pub fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(4).unwrap_or("").to_owned())
        .collect()
}

/// The sandbox cgroups (`alcove/*`) beneath this test's own cgroup in every
/// hierarchy: where the alcoves it starts make theirs. Other cgroups of the
/// host (other sessions, other services) are not this test's to judge. A
/// test running in a delegated cgroup's `supervisor` leaf belongs to its
/// parent, as the alcoves it starts do.
pub fn alcove_cgroups() -> Vec<PathBuf> {
    let leaf = format!("/{}", alcove_cgroup::LEAF);
    let own: Vec<String> = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .map(|p| p.strip_suffix(leaf.as_str()).unwrap_or(p))
        .map(|p| p.trim_start_matches('/').to_owned())
        .collect();
    let mut mounts = vec![PathBuf::from("/sys/fs/cgroup")];
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        mounts.push(entry.path());
    }
    let mut dirs = Vec::new();
    for mount in &mounts {
        for path in &own {
            let Ok(entries) = std::fs::read_dir(mount.join(path).join("alcove")) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Namespace inodes held by processes running as `uid` (sandboxes run as
/// nobody by default, which nothing else on a test machine does).
pub fn live_namespaces(uid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        if entry.metadata().map_or(true, |m| m.uid() != uid) {
            continue;
        }
        for kind in ["mnt", "net", "pid", "ipc", "uts", "cgroup"] {
            if let Ok(link) = std::fs::read_link(entry.path().join("ns").join(kind)) {
                seen.push(link.to_string_lossy().into_owned());
            }
        }
    }
    seen.sort();
    seen.dedup();
    seen
}

/// The directories of every cgroup `pid` is in, one per hierarchy, found
/// through /proc/PID/cgroup and the cgroup mounts in /proc/self/mountinfo.
pub fn cgroups_of(pid: i32) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        let mount = mounts.lines().find_map(|m| {
            let fields: Vec<&str> = m.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (root, point) = (fields[3], fields[4]);
            let (fstype, options) = (fields[dash + 1], fields[dash + 3]);
            let matches = match id {
                "0" => fstype == "cgroup2",
                _ => {
                    fstype == "cgroup" && wanted.iter().all(|c| options.split(',').any(|o| o == *c))
                }
            };
            matches.then(|| (root.to_owned(), point.to_owned()))
        });
        let Some((root, point)) = mount else {
            continue;
        };
        let inner = path.strip_prefix(root.as_str()).unwrap_or(path);
        dirs.push(PathBuf::from(point).join(inner.trim_start_matches('/')));
    }
    dirs
}

/// Processes in the cgroup `dir` or any cgroup beneath it.
pub fn processes_in_cgroup(dir: &std::path::Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(processes_in_cgroup(&entry.path()));
        }
    }
    found
}

/// `alcove image --store STORE ARGS`: exit code, stdout and stderr.
pub fn image(store: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ALCOVE)
        .arg("image")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run alcove image");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Whether this kernel keeps a reaped process's exit status on its pidfd
/// (PIDFD_GET_INFO with PIDFD_INFO_EXIT: Linux 6.15 and later).
#[allow(dead_code)] // not every test binary has warm copies
pub fn kernel_keeps_exit_on_pidfds() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 15)
}
