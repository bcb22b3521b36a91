//! The eBPF monitor and rules, for real: counts, events, budgets, device,
//! network and path rules, learned profiles, and nothing left loaded.

mod common;
use common::guard::{host_address_or_skip, settled_census};
use common::*;
use std::io::Write;

fn syscall_count(run: &Run, name: &str) -> u64 {
    run.report["trace"]["syscalls"]["top"]
        .as_array()
        .and_then(|top| top.iter().find(|s| s["name"] == name))
        .and_then(|s| s["count"].as_u64())
        .unwrap_or(0)
}

#[test]
fn counts_match_what_a_known_program_does() {
    if !root_or_skip("counts_match_what_a_known_program_does") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--trace", "--bind", &probe_bind()],
        &["/probe", "getpid", "1000"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let getpid = syscall_count(&run, "getpid");
    assert!(
        (1000..1010).contains(&getpid),
        "getpid counted {getpid} times for 1000 calls"
    );
    let trace = &run.report["trace"];
    assert!(trace["syscalls"]["total"].as_u64().unwrap() >= 1000);
    assert!(
        trace["bytes_written"].as_u64().unwrap() >= 20,
        "it printed a line: {trace}"
    );
    assert_eq!(trace["events_dropped"], 0);
    let events: Vec<&str> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["exec", "exit"], "{trace}");
    assert_eq!(trace["events"][0]["filename"], "/probe");
    assert_eq!(trace["events"][0]["args"], "/probe getpid 1000");
    assert_eq!(trace["events"][1]["code"], 0);
}

#[test]
fn processes_outside_sandboxes_are_not_counted() {
    if !root_or_skip("processes_outside_sandboxes_are_not_counted") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    // The sandbox's program starts only once its cgroup is watched, so its
    // first line says the counting is live; it then waits for ours, and
    // makes 1,000 calls of its own, which must be counted.
    let mut child = std::process::Command::new(ALCOVE)
        .args([
            "run",
            "--trace",
            "--report",
            report.to_str().unwrap(),
            "--bind",
            &probe_bind(),
            "--",
            "sh",
            "-c",
            "echo ready; read go; exec /probe getpid 1000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "ready\n", "the sandbox did not start");
    for _ in 0..200_000 {
        // SAFETY: getpid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    let top = report["trace"]["syscalls"]["top"].as_array().unwrap();
    let getpid = top
        .iter()
        .find(|s| s["name"] == "getpid")
        .and_then(|s| s["count"].as_u64())
        .unwrap_or(0);
    assert!(
        (1000..1010).contains(&getpid),
        "the sandbox made 1000 getpid calls and the host 200000 while it was watched: {getpid} counted"
    );
}

#[test]
fn a_syscall_budget_kills_in_the_kernel() {
    if !root_or_skip("a_syscall_budget_kills_in_the_kernel") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--max-syscalls", "500", "--bind", &probe_bind()],
        &["/probe", "getpid", "100000"],
    );
    assert_eq!(run.status(), "killed_by_policy", "{run:?}");
    assert_eq!(run.report["reason"], "syscall budget of 500 exceeded");
    assert_eq!(run.code, 137);
    assert!(!run.stdout.contains("called"), "the loop never finished");
    let kills: Vec<&serde_json::Value> = run.report["trace"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "budget_kill")
        .collect();
    assert_eq!(kills.len(), 1, "{}", run.report);
    assert_eq!(kills[0]["reason"], "syscalls");
}

#[test]
fn a_cpu_spinner_without_syscalls_is_killed_in_the_kernel() {
    if !root_or_skip("a_cpu_spinner_without_syscalls_is_killed_in_the_kernel") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &[
            "--cpu-budget",
            "200ms",
            "--timeout",
            "10s",
            "--bind",
            &probe_bind(),
        ],
        &["/probe", "spin"],
    );
    assert_eq!(run.status(), "killed_by_policy", "{run:?}");
    assert!(
        run.report["reason"]
            .as_str()
            .unwrap()
            .starts_with("CPU budget of 200ms"),
        "{}",
        run.report
    );
    let wall = run.num("wall_ms");
    assert!((190.0..2000.0).contains(&wall), "killed after {wall} ms");
}

/// A budget counts every task's run time, the short-lived ones' too (charged
/// as each exits): a shell starting one `true` after another, none of which
/// runs a whole sampling tick, is killed at its budget all the same.
#[test]
fn short_lived_processes_are_charged_to_the_cpu_budget() {
    if !root_or_skip("short_lived_processes_are_charged_to_the_cpu_budget") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--cpu-budget", "150ms", "--timeout", "20s"],
        &["sh", "-c", "while :; do /bin/true; done"],
    );
    assert_eq!(run.status(), "killed_by_policy", "{run:?}");
    assert!(
        run.report["reason"]
            .as_str()
            .unwrap()
            .starts_with("CPU budget of 150ms"),
        "{}",
        run.report
    );
    // Killed near its budget: charged only what each task's exit left
    // sampled, it had run 445-570 ms of the cgroup's CPU before its kill.
    let cpu = run.num("cpu_user_ms") + run.num("cpu_sys_ms");
    assert!(
        (100.0..375.0).contains(&cpu),
        "killed after {cpu} ms of CPU: {}",
        run.report
    );
}

#[test]
fn denied_devices_get_eperm_inside_and_work_outside() {
    if !root_or_skip("denied_devices_get_eperm_inside_and_work_outside") {
        return;
    }
    let _g = serial();
    let script = "echo x > /dev/null && echo null-ok; echo x > /dev/full";
    let run = sandbox(&["--devices", "null,zero"], &["sh", "-c", script]);
    assert_eq!(run.stdout, "null-ok\n", "{run:?}");
    assert!(
        run.stderr.contains("/dev/full: Operation not permitted"),
        "{run:?}"
    );
    let denials: Vec<&serde_json::Value> = run.report["trace"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "denied")
        .collect();
    assert_eq!(
        (denials[0]["what"].as_str(), denials[0]["detail"].as_str()),
        (Some("device"), Some("1:7"))
    );
    // Outside, and inside without the rule, the device is reachable (a write to /dev/full is ENOSPC).
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap()
        .write_all(b"x")
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let run = sandbox(&[], &["sh", "-c", "echo x > /dev/full"]);
    assert!(!run.stderr.contains("Operation not permitted"), "{run:?}");
}

#[test]
fn denied_connects_get_eperm_inside_and_work_outside() {
    if !root_or_skip("denied_connects_get_eperm_inside_and_work_outside") {
        return;
    }
    let Some(ip) = host_address_or_skip("denied_connects_get_eperm_inside_and_work_outside") else {
        return;
    };
    let _g = serial();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || for _ in listener.incoming().take(4) {});
    let py = format!(
        "import socket\nfor h in ['127.0.0.1', '{ip}']:\n    try:\n        socket.create_connection((h, {port}), timeout=2); print(h, 'ok')\n    except OSError as e: print(h, e.errno)\n"
    );
    let run = sandbox(&["--net", "host", "--deny-net"], &["python3", "-c", &py]);
    assert_eq!(
        run.stdout,
        format!("127.0.0.1 ok\n{ip} {}\n", libc::EPERM),
        "{run:?}"
    );
    let denied = &run.report["trace"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "denied")
        .cloned()
        .unwrap();
    assert_eq!(denied["detail"], format!("{ip}:{port}"));
    // Allowed by CIDR, and from outside the sandbox, the same connect works.
    let run = sandbox(
        &[
            "--net",
            "host",
            "--deny-net",
            "--allow-net",
            &format!("{ip}/32"),
        ],
        &["python3", "-c", &py],
    );
    assert_eq!(run.stdout, format!("127.0.0.1 ok\n{ip} ok\n"), "{run:?}");
    assert!(std::net::TcpStream::connect((ip.as_str(), port)).is_ok());
    accept.join().unwrap();
}

#[test]
fn denied_paths_are_refused_inside_and_work_outside() {
    if !root_or_skip("denied_paths_are_refused_inside_and_work_outside") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pub")).unwrap();
    std::fs::write(dir.path().join("pub/open.txt"), "public\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
    for p in [dir.path(), &dir.path().join("pub")] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    for f in ["pub/open.txt", "secret.txt"] {
        std::fs::set_permissions(
            dir.path().join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    let bind = format!("{}:/data", dir.path().display());
    let run = sandbox(
        &["--bind", &bind, "--allow-path", "/data/pub"],
        &["sh", "-c", "cat /data/pub/open.txt; cat /data/secret.txt"],
    );
    assert_eq!(run.stdout, "public\n", "{run:?}");
    // Landlock refuses with EACCES (the kernel's choice for path rules).
    assert!(
        run.stderr.contains("/data/secret.txt: Permission denied"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.txt")).unwrap(),
        "secret\n"
    );
    let run = sandbox(&["--bind", &bind], &["cat", "/data/secret.txt"]);
    assert_eq!(
        run.stdout, "secret\n",
        "without the allow-list the same read works: {run:?}"
    );
}

#[test]
fn a_learned_profile_runs_its_program_and_blocks_another() {
    if !root_or_skip("a_learned_profile_runs_its_program_and_blocks_another") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    let program = ["sh", "-c", "cat /etc/hostname; echo done > /tmp/out"];
    let learn = sandbox(&["--learn", profile.to_str().unwrap()], &program);
    assert_eq!(learn.stdout, "alcove\n", "{learn:?}");
    let learned: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    let syscalls: Vec<&str> = learned["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        syscalls.contains(&"openat") && syscalls.contains(&"write"),
        "{learned}"
    );
    assert!(
        learned["files"]["read"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "/etc/hostname"),
        "{learned}"
    );
    assert!(
        learned["files"]["write"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "/tmp/out"),
        "{learned}"
    );
    assert!(
        learned["files"]["exec"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "/usr/bin/cat"),
        "{learned}"
    );

    let policy = ["--policy", profile.to_str().unwrap()];
    let same = sandbox(&policy, &program);
    assert_eq!(
        (same.code, same.stdout.as_str()),
        (0, "alcove\n"),
        "{same:?}"
    );

    let other = sandbox(&policy, &["sh", "-c", "uname -a"]);
    assert_ne!(other.code, 0, "{other:?}");
    assert!(
        other.stderr.contains("Operation not permitted"),
        "{other:?}"
    );
    let refused = other.report["policy_refused"]["syscalls"]
        .as_array()
        .unwrap();
    assert!(refused.iter().any(|s| s == "uname"), "{}", other.report);
}

#[test]
fn nothing_stays_loaded_after_alcove_exits() {
    if !root_or_skip("nothing_stays_loaded_after_alcove_exits") {
        return;
    }
    let _g = serial();
    // The kernel frees a dead process's BPF objects after an RCU grace period:
    // wait for earlier tests' objects to go before counting.
    let before = settled_census([0, 0, 0]);
    let run = sandbox(
        &[
            "--trace",
            "--devices",
            "null",
            "--deny-net",
            "--cpu-budget",
            "5s",
            "--max-syscalls",
            "100000",
        ],
        &["true"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        settled_census(before),
        before,
        "BPF programs, maps and links (in that order) before and after"
    );
}

#[test]
fn loading_without_privileges_fails_with_a_clear_message() {
    if !root_or_skip("loading_without_privileges_fails_with_a_clear_message") {
        return;
    }
    let _g = serial();
    let args = ["run", "--trace", "--", "true"];
    let stderr = assert_refused(
        &args,
        &alcove_as_nobody(&args),
        "loading BPF needs root, or CAP_BPF and CAP_PERFMON",
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn doctor_reports_features_and_mechanisms() {
    if !root_or_skip("doctor_reports_features_and_mechanisms") {
        return;
    }
    let _g = serial(); // it loads probe programs, which would disturb the BPF census
    let out = alcove(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bpf = doctor["bpf"].as_array().unwrap();
    let feature = |prefix: &str| {
        bpf.iter()
            .find(|f| f["name"].as_str().unwrap().starts_with(prefix))
            .unwrap()["available"]
            .as_bool()
            .unwrap()
    };
    assert!(feature("BTF"));
    assert!(feature("ring buffer"));
    assert!(feature("BTF raw tracepoints"));
    let path_rules = doctor["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["rule"].as_str().unwrap().starts_with("path rules"))
        .unwrap();
    // What doctor says of BPF LSM must match the kernel's own list of
    // active LSMs (the v2 guest boots with and without bpf in lsm=).
    let active = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    assert_eq!(
        feature("BPF LSM enabled"),
        active.split(',').any(|l| l.trim() == "bpf"),
        "doctor disagrees with /sys/kernel/security/lsm ({active})"
    );
    if feature("BPF LSM programs") && feature("BPF LSM enabled") {
        assert!(
            path_rules["mechanism"]
                .as_str()
                .unwrap()
                .contains("BPF LSM is active here too, and Landlock stays the mechanism"),
            "{path_rules}"
        );
    } else {
        assert!(
            path_rules["mechanism"]
                .as_str()
                .unwrap()
                .contains("so Landlock is the mechanism"),
            "{path_rules}"
        );
    }
}
