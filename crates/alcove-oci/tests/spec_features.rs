//! The parts of config.json a caller relies on, each checked from inside a
//! real container: user namespaces with id mappings, `linux.devices` (a
//! character device and a FIFO), hooks at every stage with the state on
//! stdin, a seccomp profile in the spec's format, additional gids, rlimits,
//! a read-only root, time namespace offsets, and annotations in `state`.

mod common;

use common::*;
use std::process::Command;

#[test]
fn a_user_namespace_maps_the_containers_root() {
    let Some(mut f) = Fixture::new("a_user_namespace_maps_the_containers_root") else {
        return;
    };
    let bundle = f.bundle(&["sh", "-c", "id -u; cat /proc/self/uid_map"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    // The mapped root must be able to read its rootfs.
    run(Command::new("chown")
        .arg("-R")
        .arg("100000:100000")
        .arg(bundle.join("rootfs")))
    .ok("chown rootfs");
    let out = f.run(&bundle).ok("run in a user namespace");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first().map(|l| l.trim()), Some("0"), "{out:?}");
    let map: Vec<&str> = lines.get(1).unwrap_or(&"").split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"], "{out:?}");
}

#[test]
fn linux_devices_are_made_with_their_numbers_and_modes() {
    let Some(mut f) = Fixture::new("linux_devices_are_made_with_their_numbers_and_modes") else {
        return;
    };
    let script = "stat -c '%F %t:%T %a %u:%g' /dev/test-char /dev/test-fifo; echo x > /dev/test-char && echo wrote";
    let bundle = f.bundle(&["sh", "-c", script], |c| {
        c["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/test-char", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 1, "gid": 2},
            {"path": "/dev/test-fifo", "type": "p", "fileMode": 384, "uid": 0, "gid": 0}
        ]);
    });
    let out = f.run(&bundle).ok("run with linux.devices");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("character special file 1:3 666 1:2"),
        "{out:?}"
    );
    assert_eq!(lines.get(1).copied(), Some("fifo 0:0 600 0:0"), "{out:?}");
    assert_eq!(
        lines.get(2).copied(),
        Some("wrote"),
        "the listed device is not usable: {out:?}"
    );
}

#[test]
fn hooks_run_at_every_stage_with_the_state_on_stdin() {
    let Some(mut f) = Fixture::new("hooks_run_at_every_stage_with_the_state_on_stdin") else {
        return;
    };
    // The log's directory is bound into the container at the same path:
    // startContainer hooks run in the container, the others on the host.
    let logs = f.dir.path().join("hook-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("hooks.log");
    let hook = |stage: &str| {
        // One line per call: the stage, then the state's status and id.
        let line = format!(
            "read s; echo \"{stage} $(echo \"$s\" | grep -o '\"status\":\"[a-z]*\"') $(echo \"$s\" | grep -o '\"id\":\"[^\"]*\"')\" >> {}",
            log.display()
        );
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", line], "timeout": 10})
    };
    let bundle = f.bundle(&["true"], |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": logs, "type": "bind", "source": logs, "options": ["rbind", "rw"]
        }));
        c["hooks"] = serde_json::json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "createContainer": [hook("createContainer")],
            "startContainer": [hook("startContainer")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let out = f.run(&bundle).ok("run with hooks");
    let id = f.ids.last().unwrap().clone();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        stages,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "hooks ran in the wrong order or not at all: {text}\n{out:?}"
    );
    for line in text.lines() {
        assert!(
            line.contains(&format!("\"id\":\"{id}\"")),
            "no state on stdin: {line}"
        );
        assert!(
            line.contains("\"status\":"),
            "no status in the state: {line}"
        );
    }
    assert!(text.contains("poststop \"status\":\"stopped\""), "{text}");
}

#[test]
fn a_seccomp_profile_in_the_specs_format_applies() {
    let Some(mut f) = Fixture::new("a_seccomp_profile_in_the_specs_format_applies") else {
        return;
    };
    let bundle = f.bundle(&["sh", "-c", "mkdir /tmp/x; echo rc=$?"], |c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
        });
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
    });
    let out = f.run(&bundle).ok("run under a seccomp profile");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    assert!(out.stdout.contains("rc=1"), "{out:?}");
}

#[test]
fn user_groups_rlimits_and_a_read_only_root_hold() {
    let Some(mut f) = Fixture::new("user_groups_rlimits_and_a_read_only_root_hold") else {
        return;
    };
    let script = "id -u; id -G; ulimit -n; touch /newfile 2>&1; echo rc=$?";
    let bundle = f.bundle(&["sh", "-c", script], |c| {
        c["process"]["user"] =
            serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [7, 8]});
        c["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]);
        c["root"]["readonly"] = serde_json::json!(true);
    });
    let out = f.run(&bundle).ok("run");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("1000"), "{out:?}");
    assert_eq!(lines.get(1).copied(), Some("1001 7 8"), "{out:?}");
    assert_eq!(lines.get(2).copied(), Some("123"), "{out:?}");
    assert!(out.stdout.contains("Read-only file system"), "{out:?}");
    assert!(out.stdout.contains("rc=1"), "{out:?}");
}

#[test]
fn time_offsets_apply_in_a_time_namespace() {
    let Some(mut f) = Fixture::new("time_offsets_apply_in_a_time_namespace") else {
        return;
    };
    let bundle = f.bundle(&["cat", "/proc/uptime"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "time"}));
        c["linux"]["timeOffsets"] = serde_json::json!({"boottime": {"secs": 86400, "nanosecs": 0}});
    });
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = f.run(&bundle).ok("run in a time namespace");
    let inside: f64 = out
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0.0);
    assert!(
        inside - host > 86_000.0,
        "boottime offset not applied: host {host}, container {inside}"
    );
}

#[test]
fn annotations_appear_in_state() {
    let Some(mut f) = Fixture::new("annotations_appear_in_state") else {
        return;
    };
    let bundle = f.bundle(&["sleep", "30"], |c| {
        c["annotations"] = serde_json::json!({"org.example.owner": "tests"});
    });
    let id = f.id();
    run(f
        .command()
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg(&id))
    .ok("create");
    let out = run(f.command().args(["state", &id])).ok("state");
    let state: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        state["annotations"]["org.example.owner"], "tests",
        "{state}"
    );
    assert_eq!(state["status"], "created", "{state}");
    assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{state}");
    run(f.command().args(["delete", "--force", &id])).ok("delete");
}
