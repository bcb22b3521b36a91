//! Helpers for alcove-oci's integration tests: the runtime under test, skips
//! that are never silent, a busybox rootfs and bundle, commands with a time
//! limit, and the leak checks (processes, mounts, cgroups) every test ends on.
//! They run real clients (podman, containerd) and the real kernel, as root.

#![allow(dead_code)]

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The binary this crate builds; the runtime under test unless
/// `ALCOVE_OCI_RUNTIME` names another (e.g. /usr/sbin/runc, to check that a
/// failure is the runtime's and not the test's).
pub const ALCOVE_OCI: &str = env!("CARGO_BIN_EXE_alcove-oci");

/// The environment every runtime call of the tests gets: containers'
/// cgroups go beneath the test's own cgroup, even for callers (podman,
/// containerd) that give absolute paths, so the tests never create cgroups
/// at a hierarchy's root (this project's rule for its test machines). The
/// default, from the root as the spec says, rests on `hierarchy_root`, which
/// the cgroups module's unit tests check.
pub const CGROUPS_ENV: (&str, &str) = ("ALCOVE_OCI_CGROUPS", "nested");

/// The runtime under test: `ALCOVE_OCI_RUNTIME`, or [`ALCOVE_OCI`].
pub fn runtime() -> PathBuf {
    match std::env::var_os("ALCOVE_OCI_RUNTIME") {
        Some(r) if !r.is_empty() => PathBuf::from(r),
        _ => PathBuf::from(ALCOVE_OCI),
    }
}

/// How long one client or runtime command may take before the test fails
/// (a hung `create` must fail the test, not hang the suite).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// Whether this run is CI's (`ALCOVE_CI=1` or `CI=true`): there the machine
/// is set up by scripts/test.sh, so a skip for something it provides fails.
pub fn in_ci() -> bool {
    std::env::var("ALCOVE_CI").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips `test` for something the setup provides (root, a package that
/// scripts/packages.sh or scripts/test.sh installs): says why on the real
/// stderr, and in CI fails the test instead.
pub fn skip_unprovided(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test} cannot run: {why}; CI's setup must provide this (skips for it fail under ALCOVE_CI=1 or CI=true)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Skips `test` for a fact of this machine that no setup changes (a cgroup
/// controller the kernel lacks): says why, in CI too.
pub fn skip_machine(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether we are root; if not, says why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_unprovided(test, "needs root (namespaces, cgroups, mounts)");
    false
}

/// Where `tool` is on the usual PATH directories, if anywhere.
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).exists().then(|| PathBuf::from(tool));
    }
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(tool))
    .find(|p| p.exists())
}

/// Whether root, the runtime under test and every one of `tools` (name,
/// Debian package) are here; if not, says which is missing.
pub fn ready_or_skip(test: &str, tools: &[(&str, &str)]) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let rt = runtime();
    if !rt.exists() {
        skip_unprovided(
            test,
            &format!("the runtime under test {rt:?} does not exist"),
        );
        return false;
    }
    for (tool, package) in tools {
        if which(tool).is_none() {
            skip_unprovided(
                test,
                &format!("needs {tool} (Debian package {package}; scripts/test.sh installs it)"),
            );
            return false;
        }
    }
    true
}

/// Polls `done` until it holds; fails the test, naming `what`, after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name no other test (in this process or another) uses at the same time.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Ends in a letter: leak checks and clean-up match names by substring,
    // and "…-1" would otherwise match "…-10", a test running beside.
    format!(
        "{prefix}-{}-{}x",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What one command did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Fails the test, showing `what` and the output, unless the exit code is 0.
    pub fn ok(self, what: &str) -> Self {
        assert_eq!(self.code, 0, "{what} failed: {self:?}");
        self
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout and stderr into files,
/// not pipes: a container that inherits them (a detached `create`) must not
/// keep the test waiting for an end of file. Fails the test after
/// [`COMMAND_LIMIT`], killing the command.
pub fn run(cmd: &mut Command) -> Out {
    let mut out = tempfile::tempfile().expect("temp file");
    let mut err = tempfile::tempfile().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > COMMAND_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran past {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.rewind().expect("rewind");
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).expect("read output");
        s.push_str(&String::from_utf8_lossy(&bytes));
        s
    };
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// Makes a busybox rootfs at `root`: the static busybox with a link for
/// every applet in /bin, /etc/passwd and /etc/group, and empty mount points.
pub fn busybox_rootfs(root: &Path) {
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "run"] {
        std::fs::create_dir_all(root.join(dir)).expect("rootfs dir");
    }
    let busybox = which("busybox").expect("busybox (Debian package busybox-static)");
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    let list = run(Command::new(&busybox).arg("--list")).ok("busybox --list");
    for applet in list.stdout.split_whitespace().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    )
    .expect("group");
}

/// Whether the static busybox the rootfs is made of is here.
pub fn busybox_or_skip(test: &str) -> bool {
    if which("busybox").is_some() {
        return true;
    }
    skip_unprovided(test, "needs busybox (Debian package busybox-static)");
    false
}

/// Writes an OCI bundle at `dir` (rootfs beneath it) whose process runs
/// `args`, shaped like `runc spec`'s default without a terminal; returns
/// the config, which the caller may change and write again with
/// [`write_config`].
pub fn bundle(dir: &Path, args: &[&str]) -> serde_json::Value {
    busybox_rootfs(&dir.join("rootfs"));
    let caps = [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_CHOWN",
        "CAP_SETUID",
        "CAP_SETGID",
    ];
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "alcove-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}], "pids": {"limit": 100}},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    write_config(dir, &config);
    config
}

/// Writes `config` as the bundle's config.json.
pub fn write_config(dir: &Path, config: &serde_json::Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .expect("write config.json");
}

/// Tars the busybox rootfs into `tar` (for `podman import`).
pub fn rootfs_tar(work: &Path, tar: &Path) {
    let root = work.join("image-rootfs");
    busybox_rootfs(&root);
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(tar)
        .arg("."))
    .ok("tar rootfs");
    let _ = std::fs::remove_dir_all(&root);
}

/// Builds an OCI image archive of the busybox rootfs at `archive` with
/// umoci (ref name `latest`, `sh` as its command).
pub fn oci_archive(work: &Path, archive: &Path) {
    let layout = work.join("layout");
    let unpacked = work.join("unpacked");
    let image = format!("{}:latest", layout.display());
    let umoci = |args: &[&str]| run(Command::new("umoci").args(args)).ok("umoci");
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    umoci(&["unpack", "--image", &image, unpacked.to_str().unwrap()]);
    busybox_rootfs(&unpacked.join("rootfs"));
    umoci(&["repack", "--image", &image, unpacked.to_str().unwrap()]);
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]);
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(archive)
        .arg("."))
    .ok("tar layout");
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_dir_all(&layout);
}

/// Every process (other than this one) whose command line or cgroup
/// mentions `needle` (a container id): what a container leaves behind.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cmdline.contains(needle) || cgroup.contains(needle) {
            found.push(format!("{name}: {}", cmdline.trim_end()));
        }
    }
    found
}

/// Mount points at or beneath `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p == dir || p.starts_with(&format!("{dir}/")))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found
}

/// Detaches every mount beneath `dir` (cleanup after a failed test).
pub fn unmount_under(dir: &Path) {
    for point in mounts_under(dir) {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}

/// Mount points of every cgroup hierarchy (v1 and v2) on this host.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?;
            (*fstype == "cgroup" || *fstype == "cgroup2").then(|| PathBuf::from(fields[4]))
        })
        .collect()
}

/// Cgroup directories, in any hierarchy, whose name contains `needle`.
pub fn cgroup_dirs_named(needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &str, depth: u32, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_string_lossy().contains(needle) {
                found.push(entry.path());
            }
            if depth < 6 {
                walk(&entry.path(), needle, depth + 1, found);
            }
        }
    }
    let mut found = Vec::new();
    for mount in cgroup_mounts() {
        walk(&mount, needle, 0, &mut found);
    }
    found.sort();
    found.dedup();
    found
}

/// The directories of every cgroup `pid` is in, one per hierarchy.
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
        let Some((root, point)) = mount else { continue };
        let inner = path.strip_prefix(root.as_str()).unwrap_or(path);
        dirs.push(PathBuf::from(point).join(inner.trim_start_matches('/')));
    }
    dirs
}

/// The first of `pid`'s cgroup directories holding `file` (e.g.
/// memory.limit_in_bytes on v1, memory.max on v2), with the file's content.
pub fn cgroup_file_of(pid: i32, files: &[&str]) -> Option<(PathBuf, String)> {
    cgroups_of(pid).into_iter().find_map(|dir| {
        files.iter().find_map(|f| {
            let path = dir.join(f);
            std::fs::read_to_string(&path)
                .ok()
                .map(|v| (path, v.trim().to_owned()))
        })
    })
}

/// Processes in the cgroup `dir` or any cgroup beneath it.
pub fn processes_in_cgroup(dir: &Path) -> Vec<String> {
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

/// Whether this kernel has the cgroup controller `name` mounted or enabled
/// anywhere (a machine fact: a test of its limit is skipped without it).
pub fn has_controller(name: &str) -> bool {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&name) && f.get(3) == Some(&"1")
        })
}

/// Asserts that nothing of the container `id` is left: no process, no
/// cgroup named after it, no mount under `dir`. Waits a little for
/// processes, which a client's clean-up may still be ending.
pub fn assert_no_leaks(id: &str, dir: &Path) {
    let start = Instant::now();
    let mut left = processes_mentioning(id);
    while !left.is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        left = processes_mentioning(id);
    }
    assert!(left.is_empty(), "processes of {id} left: {left:?}");
    let cgroups = cgroup_dirs_named(id);
    assert!(cgroups.is_empty(), "cgroups of {id} left: {cgroups:?}");
    let mounts = mounts_under(dir);
    assert!(mounts.is_empty(), "mounts left under {dir:?}: {mounts:?}");
}

/// Files and directories in `dir` (a runtime's state root): empty once
/// every container is deleted.
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Clean-up after a failed test: SIGKILLs every process whose command line
/// or cgroup names `id` (a container this test made; ids are unique to the
/// test), then removes the cgroups named after it, deepest first.
pub fn kill_leftovers(id: &str) {
    for line in processes_mentioning(id) {
        if let Some(pid) = line.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill has no memory preconditions; the pid is one whose
            // command line or cgroup names this test's container id.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let mut dirs = Vec::new();
    wait_until_quiet(|| {
        dirs = cgroup_dirs_named(id);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        dirs.retain(|d| std::fs::remove_dir(d).is_err());
        dirs.is_empty()
    });
}

/// Retries `done` for up to two seconds (a killed process leaves its
/// cgroup only once it is reaped); never fails the test.
fn wait_until_quiet(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test's containers, driven through the runtime directly: its own
/// state root and bundles in a temp dir; every container it named is
/// deleted (and whatever is left of it killed and unmounted) on drop, even
/// when the test fails.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ids: Vec<String>,
}

impl Fixture {
    /// `None` (with the skip said) when the test cannot run here.
    pub fn new(test: &str) -> Option<Self> {
        if !ready_or_skip(test, &[]) || !busybox_or_skip(test) {
            return None;
        }
        Some(Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
            ids: Vec::new(),
        })
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The runtime with this fixture's root and the tests' cgroup placement.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(runtime());
        cmd.env(CGROUPS_ENV.0, CGROUPS_ENV.1)
            .arg("--root")
            .arg(self.root());
        cmd
    }

    /// A busybox bundle running `args`, its config changed by `edit`.
    pub fn bundle(&self, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let dir = self.dir.path().join(unique("bundle"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = bundle(&dir, args);
        edit(&mut config);
        write_config(&dir, &config);
        dir
    }

    /// A fresh container id, remembered for clean-up.
    pub fn id(&mut self) -> String {
        let id = unique("oci");
        self.ids.push(id.clone());
        id
    }

    /// `run` of `bundle` as container `id`, to the end.
    pub fn run_as(&self, bundle: &Path, id: &str) -> Out {
        run(self.command().args(["run", "--bundle"]).arg(bundle).arg(id))
    }

    /// `run` of `bundle` under a fresh id, to the end.
    pub fn run(&mut self, bundle: &Path) -> Out {
        let id = self.id();
        self.run_as(bundle, &id)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = run(self.command().args(["delete", "--force", id]));
            kill_leftovers(id);
        }
        unmount_under(self.dir.path());
    }
}
