//! What a sandboxed program can see and do: namespaces, files, privileges.

mod common;
use common::*;

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_namespace_is_new_and_the_program_is_pid_1() {
    if !root_or_skip("every_namespace_is_new_and_the_program_is_pid_1") {
        return;
    }
    let _g = serial();
    let script = "echo $$; for k in pid mnt uts ipc net cgroup; do readlink /proc/self/ns/$k; done; ls /proc | grep -c '^[0-9]'";
    let run = sandbox(&[], &["sh", "-c", script]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "1", "the program is PID 1 of its own namespace");
    for (i, kind) in ["pid", "mnt", "uts", "ipc", "net", "cgroup"]
        .iter()
        .enumerate()
    {
        assert_ne!(
            lines[1 + i],
            host_ns(kind),
            "{kind} namespace is the host's"
        );
    }
    let visible: usize = lines[7].parse().unwrap();
    assert!(
        visible <= 3,
        "sees only its own processes (sh, ls, grep), saw {visible}"
    );
}

#[test]
fn hostname_and_cgroup_views_are_private() {
    if !root_or_skip("hostname_and_cgroup_views_are_private") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--hostname", "box-1"],
        &[
            "sh",
            "-c",
            "hostname; cat /etc/hostname; cat /proc/self/cgroup",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(&lines[..2], ["box-1", "box-1"]);
    assert!(
        lines[2..].iter().all(|l| l.ends_with(":/")),
        "cgroup paths are rooted at the sandbox: {lines:?}"
    );
}

#[test]
fn the_network_is_loopback_only_unless_host_is_asked_for() {
    if !root_or_skip("the_network_is_loopback_only_unless_host_is_asked_for") {
        return;
    }
    let _g = serial();
    let interfaces = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let run = sandbox(&[], &["sh", "-c", interfaces]);
    assert_eq!(run.stdout.trim(), "lo", "{run:?}");
    // Loopback is up: a TCP connection to a listener inside works.
    let py = "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); c=socket.create_connection(s.getsockname()); print('connected')";
    if std::path::Path::new("/usr/bin/python3").exists() {
        let run = sandbox(&[], &["python3", "-c", py]);
        assert_eq!(run.stdout.trim(), "connected", "{run:?}");
    }
    let run = sandbox(
        &["--net", "host"],
        &["sh", "-c", "readlink /proc/self/ns/net"],
    );
    assert_eq!(run.stdout.trim(), host_ns("net"));
}

#[test]
fn ipc_objects_of_the_host_are_invisible() {
    if !root_or_skip("ipc_objects_of_the_host_are_invisible") {
        return;
    }
    let _g = serial();
    // SAFETY: creating (then removing) a private SysV shared-memory segment.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
    assert!(id >= 0);
    let host_view = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let run = sandbox(&[], &["cat", "/proc/sysvipc/shm"]);
    // SAFETY: removing the segment created above.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert!(host_view.lines().count() > 1, "the host sees its segment");
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "the sandbox sees only the header: {run:?}"
    );
}

#[test]
fn host_secrets_are_absent_and_the_host_is_read_only() {
    if !root_or_skip("host_secrets_are_absent_and_the_host_is_read_only") {
        return;
    }
    let _g = serial();
    assert!(
        std::path::Path::new("/etc/shadow").exists(),
        "the host has a shadow file to hide"
    );
    let marker = "/usr/alcove-test-write-escape";
    let run = sandbox(
        &[],
        &["sh", "-c", &format!("cat /etc/shadow; ls /etc; touch {marker}; touch /etc/x; echo w > /tmp/ok && cat /tmp/ok")],
    );
    assert!(run.stderr.contains("/etc/shadow: No such file"), "{run:?}");
    assert!(!run.stdout.contains("shadow"));
    assert!(run.stderr.contains("Read-only file system"), "{run:?}");
    assert!(run.stdout.ends_with("w\n"), "/tmp is writable: {run:?}");
    assert!(
        !std::path::Path::new(marker).exists(),
        "wrote to the host's /usr"
    );
    // Even as uid 0 inside, nothing of the host is writable and no capability is left.
    let run = sandbox(&["--user", "0"], &["sh", "-c", &format!("touch {marker}; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status")]);
    assert!(
        !std::path::Path::new(marker).exists(),
        "uid 0 wrote to the host's /usr"
    );
    for line in run.stdout.lines() {
        match line.split_once(':').unwrap() {
            (k, v) if k.starts_with("Cap") => assert_eq!(v.trim(), "0000000000000000", "{line}"),
            ("NoNewPrivs", v) => assert_eq!(v.trim(), "1"),
            ("Seccomp", v) => assert_eq!(v.trim(), "2", "filter mode"),
            _ => unreachable!(),
        }
    }
    assert_eq!(run.stdout.lines().count(), 7, "{run:?}");
    // /proc's system-wide files belong to the host's uid 0: as uid 0 inside,
    // they are read-only, and per-process ones stay writable.
    let run = sandbox(
        &["--user", "0"],
        &[
            "sh",
            "-c",
            "echo 3 > /proc/sys/vm/drop_caches; echo 100 > /proc/self/oom_score_adj && echo own-ok",
        ],
    );
    assert!(run.stderr.contains("Read-only file system"), "{run:?}");
    assert_eq!(run.stdout, "own-ok\n");
}

#[test]
fn the_default_user_is_nobody() {
    if !root_or_skip("the_default_user_is_nobody") {
        return;
    }
    let _g = serial();
    let run = sandbox(&[], &["id"]);
    assert_eq!(
        run.stdout.trim(),
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    );
    let run = sandbox(&["--user", "1000:1001"], &["id", "-u"]);
    assert_eq!(run.stdout.trim(), "1000");
}

#[test]
fn binds_are_read_only_unless_rw() {
    if !root_or_skip("binds_are_read_only_unless_rw") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host\n").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let src = dir.path().to_str().unwrap();
    let ro = format!("{src}:/data");
    let run = sandbox(
        &["--bind", &ro],
        &["sh", "-c", "cat /data/in.txt; echo x > /data/out.txt"],
    );
    assert_eq!(run.stdout, "from host\n");
    assert!(run.stderr.contains("Read-only file system"), "{run:?}");
    assert!(!dir.path().join("out.txt").exists());
    let rw = format!("{src}:/mnt/deep/data:rw");
    let run = sandbox(
        &["--bind", &rw, "--workdir", "/mnt/deep/data"],
        &["sh", "-c", "pwd; echo x > out.txt"],
    );
    assert_eq!(run.stdout, "/mnt/deep/data\n", "{run:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "x\n"
    );
}

#[test]
fn forbidden_syscalls_fail_with_eperm() {
    if !root_or_skip("forbidden_syscalls_fail_with_eperm") {
        return;
    }
    let _g = serial();
    for user in ["65534", "0"] {
        let run = sandbox(
            &["--user", user, "--bind", &probe_bind()],
            &["/probe", "syscalls"],
        );
        assert_eq!(run.code, 0, "{run:?}");
        let results: std::collections::HashMap<&str, i32> = run
            .stdout
            .lines()
            .map(|l| {
                let (name, errno) = l.split_once(' ').unwrap();
                (name, errno.parse().unwrap())
            })
            .collect();
        assert_eq!(results["getpid"], 0);
        for name in [
            "mount",
            "umount2",
            "unshare_user",
            "unshare_net",
            "bpf",
            "ptrace",
            "keyctl",
            "kexec_load",
            "init_module",
            "perf_event_open",
            "setns",
            "pivot_root",
            "clone_newuser",
            "open_tree",
            "io_uring_setup",
            "userfaultfd",
        ] {
            assert_eq!(results[name], libc::EPERM, "{name} as uid {user}");
        }
        assert_eq!(
            results["clone3"],
            libc::ENOSYS,
            "clone3 looks unimplemented so libc falls back to clone"
        );
    }
    // And a real program that needs a user namespace is refused.
    let run = sandbox(&[], &["unshare", "--user", "true"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("Operation not permitted"), "{run:?}");
}

#[test]
fn rootfs_writes_stay_in_the_sandbox() {
    if !root_or_skip("rootfs_writes_stay_in_the_sandbox") {
        return;
    }
    let busybox = std::path::Path::new("/bin/busybox");
    if !busybox.exists() {
        skip_unprovided(
            "rootfs_writes_stay_in_the_sandbox",
            "needs /bin/busybox (scripts/packages.sh installs busybox-static)",
        );
        return;
    }
    let _g = serial();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "ls", "echo", "rm"] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(tool)).unwrap();
    }
    std::fs::write(root.path().join("greeting"), "hello\n").unwrap();
    let before: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let rootfs = root.path().to_str().unwrap();
    let run = sandbox(
        &["--rootfs", rootfs, "--user", "0"],
        &["/bin/sh", "-c", "cat /greeting; echo new > /written; echo changed > /greeting; rm /bin/ls; cat /written /greeting; [ -e /bin/ls ] || echo gone; ls /dev"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("hello\nnew\nchanged\ngone\n"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("\nnull\n"),
        "/dev has alcove's nodes: {run:?}"
    );
    let after: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "the rootfs gained or lost entries");
    assert_eq!(
        std::fs::read_to_string(root.path().join("greeting")).unwrap(),
        "hello\n"
    );
    assert!(root.path().join("bin/ls").exists());
}

/// Removes a device node the test made, however it ends.
struct RemoveOnDrop(&'static str);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

#[test]
fn exposed_device_nodes_open_and_nothing_else_does() {
    if !root_or_skip("exposed_device_nodes_open_and_nothing_else_does") {
        return;
    }
    let _g = serial();
    // A stand-in for a GPU node: a world-writable character device (1:3, null).
    let node = "/dev/alcove-test-device";
    let _cleanup = RemoveOnDrop(node);
    let c_node = std::ffi::CString::new(node).unwrap();
    // SAFETY: mknod with a valid path, plain mode and device numbers.
    let made = unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(made, 0, "mknod {node}");
    // SAFETY: chmod with a valid path (mknod's mode is masked by the umask).
    assert_eq!(unsafe { libc::chmod(c_node.as_ptr(), 0o666) }, 0);
    let write = format!("echo x > {node} && echo opened");
    let exposed = alcove(&["run", "--expose-device", node, "--", "sh", "-c", &write]);
    assert_eq!(
        String::from_utf8_lossy(&exposed.stdout),
        "opened\n",
        "{exposed:?}"
    );
    // Not exposed: not there at all; bound as a file: there, but mounted nodev.
    let absent = alcove(&[
        "run",
        "--",
        "sh",
        "-c",
        &format!("test -e {node} || echo absent"),
    ]);
    assert_eq!(String::from_utf8_lossy(&absent.stdout), "absent\n");
    let bind = format!("{node}:{node}:rw");
    let bound = alcove(&["run", "--bind", &bind, "--", "sh", "-c", &write]);
    assert_ne!(bound.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&bound.stderr).contains("Permission denied"),
        "{bound:?}"
    );
    // With a device allow-list (eBPF), the exposed node is added to it.
    let listed = alcove(&[
        "run",
        "--devices",
        "zero",
        "--expose-device",
        node,
        "--",
        "sh",
        "-c",
        &write,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "opened\n",
        "{listed:?}"
    );
    let bad = alcove(&["run", "--expose-device", "/etc/passwd", "--", "true"]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a character device under /dev"));
}
