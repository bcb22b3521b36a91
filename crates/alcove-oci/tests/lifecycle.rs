//! The runtime's command line driven directly, as runc's integration tests
//! drive runc: `spec`, the create/start/kill/delete lifecycle on a busybox
//! bundle, the errors callers parse, races on one id, and leaks after many
//! cycles. ALCOVE_OCI_RUNTIME=/usr/sbin/runc runs the same tests on runc.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One test's runtime: its own state root and bundle directory; deletes its
/// containers and unmounts what is left even when the test fails.
struct Fixture {
    dir: tempfile::TempDir,
    bin: PathBuf,
    root: Option<PathBuf>,
    ids: std::sync::Mutex<Vec<String>>,
}

impl Fixture {
    /// None (with the skip said) when the test cannot run here.
    fn new(test: &str) -> Option<Self> {
        if !ready_or_skip(test, &[]) || !busybox_or_skip(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("state");
        Some(Fixture {
            dir,
            bin: runtime(),
            root: Some(root),
            ids: Default::default(),
        })
    }

    /// The same, but with the runtime's default state root.
    fn with_default_root(test: &str) -> Option<Self> {
        let mut f = Self::new(test)?;
        f.root = None;
        Some(f)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A bundle whose process runs `args`, in a directory of its own.
    fn bundle(&self, args: &[&str]) -> PathBuf {
        let dir = self.path().join(unique("bundle"));
        std::fs::create_dir_all(&dir).unwrap();
        bundle(&dir, args);
        dir
    }

    /// A fresh container id, remembered for clean-up.
    fn id(&self) -> String {
        let id = unique("aot");
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env(CGROUPS_ENV.0, CGROUPS_ENV.1);
        if let Some(root) = &self.root {
            cmd.arg("--root").arg(root);
        }
        cmd
    }

    fn rt(&self, args: &[&str]) -> Out {
        run(self.command().args(args))
    }

    fn create(&self, bundle: &Path, id: &str) -> Out {
        let pid_file = bundle.join(format!("{id}.pid"));
        run(self
            .command()
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id))
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let out = self.rt(&["state", id]).ok("state");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("state of {id} is not JSON ({e}): {}", out.stdout))
    }

    fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap_or("").to_owned()
    }

    fn wait_stopped(&self, id: &str) {
        wait_until(&format!("{id} is stopped"), Duration::from_secs(20), || {
            self.status(id) == "stopped"
        });
    }

    /// Nothing of `id` is left, and the state root holds no container.
    fn assert_clean(&self, id: &str) {
        assert_no_leaks(id, self.path());
        if let Some(root) = &self.root {
            let left = entries(root);
            assert!(left.is_empty(), "state root not empty: {left:?}");
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.ids.lock().unwrap().iter() {
            let _ = self.rt(&["delete", "--force", id]);
            kill_leftovers(id);
        }
        unmount_under(self.dir.path());
    }
}

#[test]
fn spec_writes_a_config_the_runtime_reads() {
    let Some(f) = Fixture::new("spec_writes_a_config_the_runtime_reads") else {
        return;
    };
    let dir = f.path().join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    run(Command::new(&f.bin).arg("spec").current_dir(&dir)).ok("spec");
    let text = std::fs::read_to_string(dir.join("config.json")).expect("spec wrote no config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    assert!(
        config["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{config}"
    );
    assert!(
        config["process"]["args"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{config}"
    );
    assert_eq!(config["root"]["path"], "rootfs", "{config}");
    // A second `spec` refuses to overwrite, as runc's does.
    let again = run(Command::new(&f.bin).arg("spec").current_dir(&dir));
    assert_ne!(again.code, 0, "spec overwrote config.json: {again:?}");
}

#[test]
fn create_start_kill_delete() {
    let Some(f) = Fixture::new("create_start_kill_delete") else {
        return;
    };
    let bundle = f.bundle(&["sleep", "100"]);
    let id = f.id();
    f.create(&bundle, &id).ok("create");
    let state = f.state(&id);
    assert_eq!(state["status"], "created", "{state}");
    assert_eq!(state["id"], id.as_str(), "{state}");
    let pid = state["pid"].as_i64().expect("state has a pid");
    assert!(pid > 0, "{state}");
    let pid_file = std::fs::read_to_string(bundle.join(format!("{id}.pid"))).unwrap();
    assert_eq!(
        pid_file.trim(),
        pid.to_string(),
        "--pid-file and state disagree"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the init of a created container is not alive"
    );
    f.rt(&["start", &id]).ok("start");
    assert_eq!(f.status(&id), "running");
    wait_until("the container runs sleep", Duration::from_secs(10), || {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
    });
    f.rt(&["kill", &id, "KILL"]).ok("kill");
    f.wait_stopped(&id);
    f.rt(&["delete", &id]).ok("delete");
    let gone = f.rt(&["state", &id]);
    assert_ne!(gone.code, 0, "state after delete: {gone:?}");
    f.assert_clean(&id);
}

#[test]
fn state_of_a_missing_container_fails() {
    let Some(f) = Fixture::new("state_of_a_missing_container_fails") else {
        return;
    };
    let out = f.rt(&["state", "no-such-container"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
}

#[test]
fn start_twice_fails() {
    let Some(f) = Fixture::new("start_twice_fails") else {
        return;
    };
    let bundle = f.bundle(&["sleep", "100"]);
    let id = f.id();
    f.create(&bundle, &id).ok("create");
    f.rt(&["start", &id]).ok("start");
    let again = f.rt(&["start", &id]);
    assert_ne!(again.code, 0, "second start succeeded: {again:?}");
    assert!(
        again.stderr.contains("created state") || again.stderr.contains("running"),
        "second start's error does not say why: {again:?}"
    );
    assert_eq!(f.status(&id), "running");
    f.rt(&["delete", "--force", &id]).ok("delete --force");
    f.assert_clean(&id);
}

#[test]
fn delete_of_a_running_container_needs_force() {
    let Some(f) = Fixture::new("delete_of_a_running_container_needs_force") else {
        return;
    };
    let bundle = f.bundle(&["sleep", "100"]);
    let id = f.id();
    f.create(&bundle, &id).ok("create");
    f.rt(&["start", &id]).ok("start");
    let refused = f.rt(&["delete", &id]);
    assert_ne!(
        refused.code, 0,
        "delete of a running container succeeded: {refused:?}"
    );
    assert_eq!(
        f.status(&id),
        "running",
        "a refused delete changed the container"
    );
    f.rt(&["delete", "--force", &id]).ok("delete --force");
    f.assert_clean(&id);
}

#[test]
fn exec_runs_in_the_container_and_reports_a_missing_binary() {
    let Some(f) = Fixture::new("exec_runs_in_the_container_and_reports_a_missing_binary") else {
        return;
    };
    let bundle = f.bundle(&["sleep", "100"]);
    let id = f.id();
    f.create(&bundle, &id).ok("create");
    f.rt(&["start", &id]).ok("start");
    let out = f.rt(&["exec", &id, "sh", "-c", "echo in-$(hostname); exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout.trim(), "in-alcove-test", "{out:?}");
    let missing = f.rt(&["exec", &id, "no-such-binary"]);
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("executable file not found in $PATH"),
        "exec of a missing binary: {missing:?}"
    );
    assert_eq!(f.status(&id), "running", "a failed exec hurt the container");
    f.rt(&["delete", "--force", &id]).ok("delete --force");
    f.assert_clean(&id);
}

#[test]
fn concurrent_creates_of_one_id_let_exactly_one_win() {
    let Some(f) = Fixture::new("concurrent_creates_of_one_id_let_exactly_one_win") else {
        return;
    };
    let bundle = f.bundle(&["sleep", "100"]);
    let id = f.id();
    let outs: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| f.create(&bundle, &id))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // runc 1.1 fails this: a losing create's clean-up removes the winner's
    // state or cgroups (and can leave a `runc init` behind).
    let won = outs.iter().filter(|o| o.code == 0).count();
    assert_eq!(
        won, 1,
        "{won} of 8 concurrent creates of one id succeeded: {outs:?}"
    );
    assert_eq!(f.status(&id), "created");
    f.rt(&["delete", "--force", &id]).ok("delete --force");
    f.assert_clean(&id);
}

/// The host cgroup2 tree's superblock options.
fn host_cgroup2_options() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().find_map(|line| {
        let (_, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = right.split(' ').collect();
        (fields.first() == Some(&"cgroup2")).then(|| fields.get(2).unwrap_or(&"").to_string())
    })
}

#[test]
fn a_cgroup2_mount_without_a_cgroup_namespace_keeps_the_hosts_tree_flags() {
    let test = "a_cgroup2_mount_without_a_cgroup_namespace_keeps_the_hosts_tree_flags";
    let Some(f) = Fixture::new(test) else {
        return;
    };
    // The kernel sets the whole tree's flags from each new cgroup2 mount made
    // in the host's cgroup namespace: a bare one would clear systemd's
    // nsdelegate and memory_recursiveprot (and favordynmods) for the host.
    let v2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "));
    let Some(before) = host_cgroup2_options().filter(|_| v2) else {
        skip_machine(test, "the host is not cgroup v2 only: a container's /sys/fs/cgroup holds its v1 hierarchies, no new cgroup2 mount");
        return;
    };
    let flags = [
        "nsdelegate",
        "memory_recursiveprot",
        "favordynmods",
        "memory_localevents",
    ];
    if !before.split(',').any(|o| flags.contains(&o)) {
        skip_machine(
            test,
            &format!("the host's cgroup2 tree has no flag of its own to lose ({before})"),
        );
        return;
    }
    let bundle = f.bundle(&["sleep", "100"]);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
        }));
    write_config(&bundle, &config);
    let id = f.id();
    f.create(&bundle, &id).ok("create");
    let pid = f.state(&id)["pid"].as_i64().expect("state has a pid");
    let inside = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        inside
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 ")),
        "the container has no cgroup2 mount of its own at /sys/fs/cgroup: {inside}"
    );
    let after = host_cgroup2_options().unwrap();
    f.rt(&["delete", "--force", &id]).ok("delete");
    assert_eq!(
        after, before,
        "the container's cgroup2 mount changed the host tree's flags"
    );
}

#[test]
fn twenty_cycles_leak_nothing() {
    let Some(f) = Fixture::new("twenty_cycles_leak_nothing") else {
        return;
    };
    let bundle = f.bundle(&["true"]);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = f.id();
        f.create(&bundle, &id).ok("create");
        f.rt(&["start", &id]).ok("start");
        f.wait_stopped(&id);
        f.rt(&["delete", &id]).ok("delete");
        ids.push(id);
    }
    for id in &ids {
        f.assert_clean(id);
    }
}

#[test]
fn json_log_records_the_error() {
    let Some(f) = Fixture::new("json_log_records_the_error") else {
        return;
    };
    let log = f.path().join("log.json");
    let out = run(f.command().arg("--log").arg(&log).args([
        "--log-format",
        "json",
        "state",
        "no-such-container",
    ]));
    assert_ne!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(&log).expect("no log file written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?} is not JSON: {e}"))
        })
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "error"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("does not exist"))),
        "no error line saying the container does not exist in {text:?}"
    );
}

#[test]
fn state_without_root_finds_a_container_created_with_the_default_root() {
    let test = "state_without_root_finds_a_container_created_with_the_default_root";
    let Some(f) = Fixture::with_default_root(test) else {
        return;
    };
    let bundle = f.bundle(&["sleep", "100"]);
    let id = f.id();
    f.create(&bundle, &id).ok("create");
    let out = run(Command::new(&f.bin).args(["state", &id])).ok("state without --root");
    let state: serde_json::Value = serde_json::from_str(&out.stdout).expect("state is JSON");
    assert_eq!(state["status"], "created", "{state}");
    f.rt(&["delete", "--force", &id]).ok("delete --force");
    assert_no_leaks(&id, f.path());
}
