//! What a hostile container or config must not get: the runtime's binary,
//! its descriptors, root through an out-of-range uid, the host's sysctls;
//! and what every program is owed: default signal dispositions, signals
//! forwarded by a foreground `run`, a start as a user without capabilities.
//! Each was a finding of a review of the runtime; each test fails on the
//! code before its fix.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_waiting_init_runs_a_binary_nobody_can_write() {
    let Some(mut f) = Fixture::new("the_waiting_init_runs_a_binary_nobody_can_write") else {
        return;
    };
    let bundle = f.bundle(&["true"], |_| {});
    let id = f.id();
    let pid_file = f.dir.path().join("init.pid");
    run(f
        .command()
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&id))
    .ok("create");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let exe = format!("/proc/{}/exe", pid.trim());
    // Through the init's exe link even root on the host (who may follow
    // it) finds a file that cannot be written: a read-only bind or a sealed
    // memfd. The link must not lead to the writable binary we started.
    let write = std::fs::OpenOptions::new().append(true).open(&exe);
    assert!(
        write.is_err(),
        "the waiting init's binary ({:?}) opened for writing",
        std::fs::read_link(&exe)
    );
    run(f.command().args(["delete", "--force", &id])).ok("delete");
}

#[test]
fn no_descriptor_of_the_caller_reaches_the_program() {
    let Some(mut f) = Fixture::new("no_descriptor_of_the_caller_reaches_the_program") else {
        return;
    };
    let bundle = f.bundle(&["ls", "/proc/self/fd"], |_| {});
    let id = f.id();
    // The caller (a shell here) leaves fd 8, the host's root, open.
    let script = format!(
        "exec 8</; exec {} --root {} run --bundle {} {id}",
        runtime().display(),
        f.root().display(),
        bundle.display()
    );
    let out = run(Command::new("sh")
        .env(CGROUPS_ENV.0, CGROUPS_ENV.1)
        .arg("-c")
        .arg(script))
    .ok("run");
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert!(fds.contains(&"0") && fds.contains(&"2"), "{out:?}");
    assert!(
        !fds.contains(&"8"),
        "the caller's fd 8 reached the container: {fds:?}"
    );
    // 0-2, and the one ls opened to list the directory.
    assert!(
        fds.len() <= 4,
        "descriptors leaked into the container: {fds:?}"
    );
}

#[test]
fn a_uid_above_i32_max_is_refused() {
    let Some(mut f) = Fixture::new("a_uid_above_i32_max_is_refused") else {
        return;
    };
    let bundle = f.bundle(&["id", "-u"], |c| {
        c["process"]["user"] = serde_json::json!({"uid": 4294967295u32, "gid": 4294967295u32});
    });
    let id = f.id();
    let out = f.run_as(&bundle, &id);
    assert_ne!(out.code, 0, "uid 4294967295 ran: {out:?}");
    assert!(out.stderr.contains("out of range"), "{out:?}");
    assert!(entries(&f.root()).is_empty(), "state left behind");
}

#[test]
fn a_user_without_capabilities_starts() {
    let Some(mut f) = Fixture::new("a_user_without_capabilities_starts") else {
        return;
    };
    let bundle = f.bundle(&["id", "-u"], |c| {
        c["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
        c["process"]["capabilities"] = serde_json::json!({});
    });
    let id = f.id();
    let out = f.run_as(&bundle, &id).ok("run as uid 1000");
    assert_eq!(out.stdout.trim(), "1000", "{out:?}");
}

#[test]
fn sysctls_outside_the_containers_namespaces_are_refused() {
    let Some(mut f) = Fixture::new("sysctls_outside_the_containers_namespaces_are_refused") else {
        return;
    };
    let before = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    let other = if before.trim() == "37" { "38" } else { "37" };
    let bundle = f.bundle(&["true"], |c| {
        c["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": other});
    });
    let id = f.id();
    let out = f.run_as(&bundle, &id);
    assert_ne!(out.code, 0, "a host sysctl was accepted: {out:?}");
    assert!(
        out.stderr.contains("not in a separate kernel namespace"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        before,
        "the host's vm.swappiness changed"
    );
    // One in the container's own network namespace is applied there.
    let bundle = f.bundle(&["cat", "/proc/sys/net/ipv4/ping_group_range"], |c| {
        c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ping_group_range": "0 7"});
    });
    let id = f.id();
    let out = f.run_as(&bundle, &id).ok("run with a net sysctl");
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0", "7"],
        "{out:?}"
    );
}

#[test]
fn the_program_starts_with_default_signal_dispositions() {
    let Some(mut f) = Fixture::new("the_program_starts_with_default_signal_dispositions") else {
        return;
    };
    let bundle = f.bundle(
        &["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"],
        |_| {},
    );
    let id = f.id();
    let out = f.run_as(&bundle, &id).ok("run");
    for line in out.stdout.lines() {
        let mask = line.split_whitespace().nth(1).unwrap_or("?");
        assert_eq!(
            mask, "0000000000000000",
            "the program inherited ignored or blocked signals: {line}"
        );
    }
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
}

#[test]
fn a_foreground_run_forwards_sigterm() {
    let Some(mut f) = Fixture::new("a_foreground_run_forwards_sigterm") else {
        return;
    };
    let marker = "/tmp/trap-ready";
    let script = format!("trap 'exit 42' TERM; touch {marker}; while :; do sleep 0.05; done");
    let bundle = f.bundle(&["sh", "-c", &script], |_| {});
    let id = f.id();
    let mut child = f
        .command()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .spawn()
        .expect("spawn run");
    let ready = bundle.join("rootfs").join(marker.trim_start_matches('/'));
    wait_until(
        "the container's trap is set",
        Duration::from_secs(20),
        || ready.exists(),
    );
    alcove_sys::process::kill(child.id() as i32, libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(42),
        "SIGTERM to the runtime did not reach the container's trap"
    );
}

#[test]
fn a_cwd_through_a_leaked_descriptor_cannot_leave_the_root() {
    let Some(mut f) = Fixture::new("a_cwd_through_a_leaked_descriptor_cannot_leave_the_root")
    else {
        return;
    };
    // The runtime holds host directories open while it sets up (the state
    // directory, the cgroup); a cwd of /proc/self/fd/N must not reach one.
    for n in 3..=12 {
        let cwd = format!("/proc/self/fd/{n}");
        let bundle = f.bundle(&["sh", "-c", "pwd; ls ../../../.."], |c| {
            c["process"]["cwd"] = serde_json::json!(cwd);
        });
        let id = f.id();
        let out = f.run_as(&bundle, &id);
        assert!(
            out.code != 0 || out.stdout.starts_with('/'),
            "cwd {cwd} escaped the root: {out:?}"
        );
        assert!(
            !out.stdout.contains("(unreachable)") && !out.stdout.contains("container_info"),
            "cwd {cwd} reached the host: {out:?}"
        );
    }
}

#[test]
fn a_bad_seccomp_profile_fails_create_not_start() {
    let Some(mut f) = Fixture::new("a_bad_seccomp_profile_fails_create_not_start") else {
        return;
    };
    let bundle = f.bundle(&["true"], |c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        });
    });
    let id = f.id();
    let out = run(f
        .command()
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg(&id));
    assert_ne!(out.code, 0, "create accepted a rule on argument 9: {out:?}");
    assert!(out.stderr.contains("seccomp"), "{out:?}");
    assert!(entries(&f.root()).is_empty(), "state left behind");
}
