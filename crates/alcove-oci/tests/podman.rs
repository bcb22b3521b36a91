//! podman 4 (through conmon) with the runtime under test as its
//! `--runtime`: exit codes, output, a terminal, exec, stop, kill, memory and
//! pids limits, `ps` and `rm -f`, and nothing left behind. Every test has a
//! podman store of its own in a temp dir; the host's is never touched.
//! ALCOVE_OCI_RUNTIME=/usr/sbin/runc runs the same tests on runc.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/alcove-test:latest";

/// Podman's tools, each with the Debian package that brings it.
const TOOLS: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("conmon", "conmon"),
    ("tar", "tar"),
    ("busybox", "busybox-static"),
];

/// One test's podman: store, run root, temp dir, network config and the
/// runtime's state root, all under one temp dir; removes every container and
/// unmounts what is left when dropped, even after a failed test.
struct Podman {
    dir: tempfile::TempDir,
    driver: &'static str,
    runtime: PathBuf,
}

impl Podman {
    /// None (with the skip said) when the test cannot run here.
    fn new(test: &str) -> Option<Podman> {
        if !ready_or_skip(test, TOOLS) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let tar = dir.path().join("rootfs.tar");
        rootfs_tar(dir.path(), &tar);
        for sub in ["tmp", "net", "cids"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // An empty containers.conf: the host's must not change what we test.
        std::fs::write(dir.path().join("containers.conf"), "").unwrap();
        let mut podman = Podman {
            dir,
            driver: "overlay",
            runtime: runtime(),
        };
        let first = podman.run(&["import", tar.to_str().unwrap(), IMAGE]);
        if first.code != 0 {
            // overlay is not usable on every file system; vfs always is.
            unmount_under(podman.path());
            for sub in ["root", "runroot"] {
                let _ = std::fs::remove_dir_all(podman.path().join(sub));
            }
            podman.driver = "vfs";
            podman
                .run(&["import", tar.to_str().unwrap(), IMAGE])
                .ok("podman import (vfs)");
        }
        Some(podman)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The ids of every container this test made (each `run` writes one
    /// with `--cidfile`).
    fn ids(&self) -> Vec<String> {
        entries(&self.path().join("cids"))
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.path().join("cids").join(f)).ok())
            .map(|id| id.trim().to_owned())
            .collect()
    }

    fn command(&self) -> Command {
        let p = |sub: &str| self.path().join(sub);
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", p("containers.conf"))
            .env(CGROUPS_ENV.0, CGROUPS_ENV.1)
            .arg("--root")
            .arg(p("root"))
            .arg("--runroot")
            .arg(p("runroot"))
            .arg("--tmpdir")
            .arg(p("tmp"))
            .arg("--network-config-dir")
            .arg(p("net"))
            .args(["--storage-driver", self.driver])
            // No systemd as PID 1 here, and no journald.
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(&self.runtime);
        // Not `--runtime-flag root=DIR`: podman 4.3 leaves it off the exit
        // command (`podman container cleanup`), which would then look for
        // the container in the runtime's default root and leak it.
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        run(self.command().args(args))
    }

    /// `podman run` with the flags every container here needs: no network,
    /// and rlimits root can set without CAP_SYS_RESOURCE (podman's defaults
    /// exceed the hard limits here).
    fn container(&self, flags: &[&str], program: &[&str]) -> Out {
        let cidfile = self.path().join("cids").join(unique("cid"));
        let cidfile = cidfile.to_str().unwrap();
        let mut args = vec![
            "run",
            "--cidfile",
            cidfile,
            "--network",
            "none",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=1000:1000",
        ];
        args.extend_from_slice(flags);
        args.push(IMAGE);
        args.extend_from_slice(program);
        self.run(&args)
    }

    /// Starts `program` detached; returns the container's full id.
    fn detached(&self, flags: &[&str], program: &[&str]) -> String {
        let mut all = vec!["-d"];
        all.extend_from_slice(flags);
        let out = self.container(&all, program).ok("podman run -d");
        out.stdout.trim().to_owned()
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        self.run(&["inspect", "--format", format, id])
            .ok("podman inspect")
            .stdout
            .trim()
            .to_owned()
    }

    fn pid(&self, id: &str) -> i32 {
        let pid = self.inspect(id, "{{.State.Pid}}");
        pid.parse()
            .unwrap_or_else(|_| panic!("no pid for {id}: {pid:?}"))
    }

    /// Removes every container, then asserts that nothing of any container
    /// this test made is left: no process, no cgroup, no mount under the
    /// test's dir, no state in the runtime (its `state` says it does not
    /// exist).
    /// This podman, run by PTY_DRIVER on a pty of its own, as a person at a
    /// terminal runs it (add podman's arguments).
    fn under_a_pty(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-c").arg(PTY_DRIVER);
        let podman = self.command();
        cmd.arg(podman.get_program());
        cmd.args(podman.get_args());
        for (k, v) in podman.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd
    }

    fn finish(&self) {
        self.run(&["rm", "-af", "-t", "0"]).ok("podman rm -af");
        let ids = self.ids();
        for id in &ids {
            assert_no_leaks(id, &self.path().join("cids"));
            let state = run(Command::new(&self.runtime).args(["state", id]));
            assert_ne!(state.code, 0, "the runtime still has {id}: {state:?}");
        }
        let mounts: Vec<String> = mounts_under(self.path())
            .into_iter()
            .filter(|m| !m.ends_with("/root/overlay"))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        for id in self.ids() {
            let _ = run(Command::new(&self.runtime).args(["delete", "--force", &id]));
            kill_leftovers(&id);
        }
        unmount_under(self.path());
        // podman (cgroupfs manager) puts conmon in /libpod_parent/conmon of
        // every hierarchy: removed once no test's conmon is left in it
        // (rmdir refuses a cgroup in use).
        for mount in cgroup_mounts() {
            let _ = std::fs::remove_dir(mount.join("libpod_parent/conmon"));
            let _ = std::fs::remove_dir(mount.join("libpod_parent"));
        }
    }
}

#[test]
fn run_passes_exit_code_and_output() {
    let Some(p) = Podman::new("run_passes_exit_code_and_output") else {
        return;
    };
    let out = p.container(
        &["--rm"],
        &["sh", "-c", "echo hello from $(hostname -s); exit 7"],
    );
    assert_eq!(out.code, 7, "{out:?}");
    assert!(out.stdout.starts_with("hello from "), "{out:?}");
    let ok = p.container(&["--rm", "--name", "named"], &["cat", "/etc/passwd"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("nobody:x:65534"), "{ok:?}");
    p.finish();
}

/// A small python3 driver: runs argv on a new pty as its controlling
/// terminal, answers the container's READY with a line, and prints all it saw.
const PTY_DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out, sent, deadline = b"", False, time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if fd in r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
        if not sent and b"READY" in out:
            os.write(fd, b"typed-line\n")
            sent = True
else:
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn run_with_a_terminal() {
    let test = "run_with_a_terminal";
    let Some(p) = Podman::new(test) else { return };
    if which("/usr/bin/python3").is_none() {
        skip_unprovided(
            test,
            "needs /usr/bin/python3 (Debian package python3) to make a pty",
        );
        return;
    }
    let mut cmd = p.under_a_pty();
    let cidfile = p.path().join("cids").join(unique("cid"));
    cmd.args(["run", "--rm", "-it", "--network", "none", "--cidfile"])
        .arg(cidfile);
    cmd.args([
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=1000:1000",
        IMAGE,
    ]);
    cmd.args([
        "sh",
        "-c",
        "tty; echo READY; read line; echo got:$line; exit 5",
    ]);
    let out = run(&mut cmd);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stdout.contains("/dev/pts/"),
        "tty did not print a pty: {out:?}"
    );
    assert!(
        out.stdout.contains("got:typed-line"),
        "stdin did not reach the container: {out:?}"
    );
    p.finish();
}

#[test]
fn exec_with_a_terminal() {
    let test = "exec_with_a_terminal";
    let Some(p) = Podman::new(test) else { return };
    if which("/usr/bin/python3").is_none() {
        skip_unprovided(
            test,
            "needs /usr/bin/python3 (Debian package python3) to make a pty",
        );
        return;
    }
    let id = p.detached(&[], &["sleep", "1000"]);
    let mut cmd = p.under_a_pty();
    // conmon passes --tty and a console socket to the runtime's exec.
    cmd.args(["exec", "-it", &id]);
    cmd.args([
        "sh",
        "-c",
        "tty; echo READY; read line; echo got:$line; exit 6",
    ]);
    let out = run(&mut cmd);
    assert_eq!(out.code, 6, "{out:?}");
    assert!(
        out.stdout.contains("/dev/pts/"),
        "tty did not print a pty: {out:?}"
    );
    assert!(
        out.stdout.contains("got:typed-line"),
        "stdin did not reach the exec'd process: {out:?}"
    );
    p.finish();
}

#[test]
fn exec_into_a_detached_container() {
    let Some(p) = Podman::new("exec_into_a_detached_container") else {
        return;
    };
    let id = p.detached(&[], &["sleep", "1000"]);
    assert_eq!(p.inspect(&id, "{{.State.Status}}"), "running");
    let out = p.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo in-exec; cat /proc/1/cmdline; exit 4",
    ]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stdout.starts_with("in-exec\nsleep"), "{out:?}");
    p.run(&[
        "exec",
        "-d",
        &id,
        "sh",
        "-c",
        "echo detached > /tmp/mark; sleep 1000",
    ])
    .ok("podman exec -d");
    wait_until(
        "the detached exec wrote its mark",
        Duration::from_secs(20),
        || p.run(&["exec", &id, "cat", "/tmp/mark"]).stdout.trim() == "detached",
    );
    let missing = p.run(&["exec", &id, "no-such-binary"]);
    assert_ne!(missing.code, 0, "{missing:?}");
    p.run(&["rm", "-f", &id]).ok("podman rm -f");
    let gone = p.run(&["inspect", &id]);
    assert_ne!(gone.code, 0, "the container is still there: {gone:?}");
    p.finish();
}

#[test]
fn stop_sends_sigterm_then_sigkill() {
    let Some(p) = Podman::new("stop_sends_sigterm_then_sigkill") else {
        return;
    };
    let polite = p.detached(
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo up; while :; do sleep 0.1; done",
        ],
    );
    wait_until("the trap is set", Duration::from_secs(20), || {
        p.run(&["logs", &polite]).stdout.contains("up")
    });
    let start = Instant::now();
    p.run(&["stop", "-t", "20", &polite]).ok("podman stop");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "SIGTERM did not end it"
    );
    assert_eq!(p.inspect(&polite, "{{.State.ExitCode}}"), "42");
    assert!(p.run(&["logs", &polite]).stdout.contains("got-term"));
    // As PID 1 with no handler, sleep ignores SIGTERM: only SIGKILL ends it.
    let stubborn = p.detached(&[], &["sleep", "1000"]);
    let start = Instant::now();
    p.run(&["stop", "-t", "1", &stubborn])
        .ok("podman stop -t 1");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        start.elapsed()
    );
    assert_eq!(p.inspect(&stubborn, "{{.State.Status}}"), "exited");
    assert_eq!(p.inspect(&stubborn, "{{.State.ExitCode}}"), "137");
    p.finish();
}

#[test]
fn kill_ps_and_rm_force() {
    let Some(p) = Podman::new("kill_ps_and_rm_force") else {
        return;
    };
    let a = p.detached(&["--name", "first"], &["sleep", "1000"]);
    let b = p.detached(&["--name", "second"], &["sleep", "1000"]);
    let ps = p.run(&["ps", "-a", "--format", "json"]).ok("podman ps");
    let list: serde_json::Value = serde_json::from_str(&ps.stdout).expect("ps json");
    let state_of = |list: &serde_json::Value, id: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|c| c["Id"] == id))
            .map(|c| c["State"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(state_of(&list, &a).as_deref(), Some("running"), "{list}");
    assert_eq!(state_of(&list, &b).as_deref(), Some("running"), "{list}");
    p.run(&["kill", "-s", "KILL", &a]).ok("podman kill");
    wait_until(
        "the killed container exits",
        Duration::from_secs(20),
        || p.inspect(&a, "{{.State.Status}}") == "exited",
    );
    assert_eq!(p.inspect(&a, "{{.State.ExitCode}}"), "137");
    let ps = p.run(&["ps", "-a", "--format", "json"]).ok("podman ps");
    let list: serde_json::Value = serde_json::from_str(&ps.stdout).expect("ps json");
    assert_eq!(state_of(&list, &a).as_deref(), Some("exited"), "{list}");
    let pid = p.pid(&b);
    p.run(&["rm", "-f", &b])
        .ok("podman rm -f of a running container");
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || processes_mentioning(&b).is_empty());
    let only = p
        .run(&["ps", "-aq", "--no-trunc"])
        .ok("podman ps -aq")
        .stdout;
    assert_eq!(only.trim(), a, "rm -f left {only}");
    p.finish();
}

#[test]
fn memory_limit_is_applied_and_a_hog_is_oom_killed() {
    let test = "memory_limit_is_applied_and_a_hog_is_oom_killed";
    if !has_controller("memory") {
        skip_machine(test, "this kernel has no memory cgroup controller");
        return;
    }
    let Some(p) = Podman::new(test) else { return };
    let limits = ["--memory", "64m", "--memory-swap", "64m"];
    let id = p.detached(&limits, &["sleep", "1000"]);
    let pid = p.pid(&id);
    let (file, value) = cgroup_file_of(pid, &["memory.limit_in_bytes", "memory.max"])
        .expect("the container is in no memory cgroup");
    assert_eq!(value, "67108864", "{file:?}");
    p.run(&["rm", "-f", &id]).ok("podman rm -f");
    // dd's 128 MiB buffer, filled from /dev/zero, does not fit in 64 MiB.
    let mut flags = vec!["--rm"];
    flags.extend_from_slice(&limits);
    let hog = p.container(
        &flags,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
    );
    assert_eq!(hog.code, 137, "the hog was not OOM-killed: {hog:?}");
    p.finish();
}

#[test]
fn pids_limit_holds_a_fork_bomb() {
    let test = "pids_limit_holds_a_fork_bomb";
    if !has_controller("pids") {
        skip_machine(test, "this kernel has no pids cgroup controller");
        return;
    }
    let Some(p) = Podman::new(test) else { return };
    let id = p.detached(&["--pids-limit", "20"], &["sleep", "1000"]);
    let pid = p.pid(&id);
    let (file, value) =
        cgroup_file_of(pid, &["pids.max"]).expect("the container is in no pids cgroup");
    assert_eq!(value, "20", "{file:?}");
    // A bounded bomb: 60 sleepers wanted, 20 tasks allowed (busybox sh
    // gives up at its first failed fork). Were the limit not applied, 60
    // sleeping processes would do the host no harm.
    let bomb = "i=0; while [ $i -lt 60 ]; do sleep 1000 & i=$((i+1)); done";
    p.run(&["exec", "-d", &id, "sh", "-c", bomb])
        .ok("podman exec -d of the bomb");
    // pids.events (v1 and v2) counts forks refused at the limit.
    let events = file.with_file_name("pids.events");
    wait_until(
        "a fork is refused at the limit",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&events)
                .is_ok_and(|e| e.lines().any(|l| l.starts_with("max ") && l != "max 0"))
        },
    );
    let tasks = processes_in_cgroup(file.parent().unwrap());
    assert!(
        (15..=20).contains(&tasks.len()),
        "{} tasks in a cgroup limited to 20: {tasks:?}",
        tasks.len()
    );
    p.run(&["rm", "-f", &id]).ok("podman rm -f");
    p.finish();
}
