//! containerd 1.6's runc shim with the runtime under test as its runc
//! binary (`ctr run --runc-binary`): several containers at once, exit codes
//! and output, and a detached container's exec, kill and delete. Every test
//! runs a containerd of its own (root, state and socket in a temp dir).
//! ALCOVE_OCI_RUNTIME=/usr/sbin/runc runs the same tests on runc.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const IMAGE: &str = "localhost/alcove-test:latest";

const TOOLS: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("umoci", "umoci"),
    ("tar", "tar"),
    ("busybox", "busybox-static"),
];

/// One test's containerd, with the busybox image imported into a namespace
/// of its own; kills it (by the pid it started), its shims and every
/// container, and removes their cgroups and mounts when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    namespace: String,
    runtime: PathBuf,
}

impl Containerd {
    /// None (with the skip said) when the test cannot run here.
    fn new(test: &str) -> Option<Containerd> {
        if !ready_or_skip(test, TOOLS) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        // No CRI plugin: it wants CNI and a kubelet; ctr needs neither.
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .env(CGROUPS_ENV.0, CGROUPS_ENV.1)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir,
            daemon,
            namespace: unique("alcove-test"),
            runtime: runtime(),
        };
        let socket = c.socket();
        wait_until("containerd listens", Duration::from_secs(30), || {
            socket.exists()
        });
        let archive = c.path().join("image.tar");
        oci_archive(c.path(), &archive);
        let archive = archive.to_str().unwrap().to_owned();
        c.ctr(&[
            "images",
            "import",
            "--base-name",
            "localhost/alcove-test",
            &archive,
        ])
        .ok("ctr images import");
        Some(c)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn socket(&self) -> PathBuf {
        self.path().join("containerd.sock")
    }

    /// The runtime's state root, which the shim passes it as `--root`.
    fn runc_root(&self) -> PathBuf {
        self.path().join("runc-root")
    }

    fn ctr(&self, args: &[&str]) -> Out {
        run(Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(&self.namespace)
            .args(args))
    }

    /// `ctr run FLAGS --runc-binary RUNTIME IMAGE ID PROGRAM...`.
    fn run(&self, flags: &[&str], id: &str, program: &[&str]) -> Out {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(&self.namespace)
            .arg("run");
        cmd.args(flags);
        cmd.arg("--runc-binary").arg(&self.runtime);
        cmd.arg("--runc-root").arg(self.runc_root());
        cmd.arg(IMAGE).arg(id).args(program);
        run(&mut cmd)
    }

    fn task_status(&self, id: &str) -> String {
        let out = self.ctr(&["task", "ls"]).ok("ctr task ls");
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_owned()
    }

    /// Nothing of `id` is left: no process, cgroup or mount, and nothing in
    /// the runtime's state root names it.
    fn assert_gone(&self, id: &str) {
        assert_no_leaks(id, &self.path().join("state"));
        assert_no_leaks(id, &self.path().join("root"));
        let mut left = Vec::new();
        find_named(&self.runc_root(), id, &mut left);
        assert!(
            left.is_empty(),
            "the runtime's state of {id} is left: {left:?}"
        );
    }
}

/// Paths beneath `dir` whose name contains `needle`.
fn find_named(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().contains(needle) {
            found.push(entry.path());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&entry.path(), needle, found);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.ctr(&["task", "ls", "-q"]).stdout;
        for id in tasks.split_whitespace() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        let containers = self.ctr(&["containers", "ls", "-q"]).stdout;
        for id in containers.split_whitespace() {
            let _ = self.ctr(&["containers", "rm", id]);
            kill_leftovers(id);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // The shims (started by our containerd) name our socket and namespace.
        kill_leftovers(&self.socket().to_string_lossy());
        kill_leftovers(&self.namespace);
        unmount_under(self.path());
    }
}

#[test]
fn three_containers_at_once() {
    let Some(c) = Containerd::new("three_containers_at_once") else {
        return;
    };
    let ids: Vec<String> = (0..3).map(|_| unique("ctr")).collect();
    let outs: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let c = &c;
                s.spawn(move || {
                    let script = format!("echo out-{n} from $(hostname); exit {}", n + 3);
                    c.run(&["--rm"], id, &["sh", "-c", &script])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, out) in outs.iter().enumerate() {
        assert_eq!(out.code, n as i32 + 3, "container {n}: {out:?}");
        assert!(
            out.stdout.starts_with(&format!("out-{n} from ")),
            "container {n}: {out:?}"
        );
    }
    let left = c
        .ctr(&["containers", "ls", "-q"])
        .ok("ctr containers ls")
        .stdout;
    assert!(left.trim().is_empty(), "run --rm left containers: {left}");
    for id in &ids {
        c.assert_gone(id);
    }
}

#[test]
fn detached_exec_kill_delete() {
    let Some(c) = Containerd::new("detached_exec_kill_delete") else {
        return;
    };
    let id = unique("ctr");
    c.run(&["-d"], &id, &["sleep", "1000"]).ok("ctr run -d");
    assert_eq!(c.task_status(&id), "RUNNING");
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "probe",
        &id,
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ]);
    assert_eq!(out.code, 4, "{out:?}");
    assert_eq!(out.stdout.trim(), "in-exec", "{out:?}");
    c.ctr(&["task", "kill", "-s", "SIGKILL", &id])
        .ok("ctr task kill");
    wait_until("the task stops", Duration::from_secs(20), || {
        c.task_status(&id) == "STOPPED"
    });
    c.ctr(&["task", "delete", &id]).ok("ctr task delete");
    c.ctr(&["containers", "rm", &id]).ok("ctr containers rm");
    c.assert_gone(&id);
}
