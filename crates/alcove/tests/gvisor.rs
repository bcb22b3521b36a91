//! The gVisor tier (`--isolation gvisor`): the container tier's escape and
//! limit checks again, with the program on gVisor's user-space kernel.

mod common;
use common::gvisor::*;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

fn gvisor(options: &[&str], program: &[&str]) -> Run {
    let mut all = vec!["--isolation", "gvisor"];
    all.extend_from_slice(options);
    sandbox(&all, program)
}

#[test]
fn a_program_runs_on_gvisors_kernel_and_sees_no_host() {
    if !runsc_or_skip("a_program_runs_on_gvisors_kernel_and_sees_no_host") {
        return;
    }
    let _g = serial();
    let script = "echo kernel=$(cat /proc/version); hostname; \
                  n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n; \
                  test -e /root && echo HOST_ROOT_VISIBLE; test -e /home && echo HOST_HOME_VISIBLE; \
                  echo written > /tmp/f && cat /tmp/f; touch /usr/escape 2>/dev/null && echo USR_WRITABLE; \
                  echo to-stderr >&2; exit 7";
    let run = gvisor(&[], &["sh", "-c", script]);
    assert_eq!(run.code, 7, "{run:?}");
    assert_eq!(run.status(), "exited", "{run:?}");
    assert_eq!(run.report["exit_code"], 7);
    assert_eq!(run.report["isolation"], "gvisor", "{}", run.report);
    // The situation the tier claims: the program's kernel is gVisor's
    // Sentry (it reports itself as Linux 4.4.0), not this host's.
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    assert!(!run.stdout.contains(host_version.trim()), "{}", run.stdout);
    assert!(
        run.stdout.contains("kernel=Linux version 4.4.0"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\nalcove\n"),
        "its own hostname: {}",
        run.stdout
    );
    let procs: u32 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .expect("a process count");
    assert!((1..=3).contains(&procs), "only its own processes: {procs}");
    assert!(!run.stdout.contains("HOST_"), "{}", run.stdout);
    assert!(!run.stdout.contains("USR_WRITABLE"), "{}", run.stdout);
    assert!(run.stdout.contains("written"), "{}", run.stdout);
    assert!(run.stderr.contains("to-stderr"), "{}", run.stderr);
    assert!(run.num("memory_peak_bytes") > 0.0, "{}", run.report);
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn memory_timeout_and_task_limits_hold_in_gvisor() {
    if !runsc_or_skip("memory_timeout_and_task_limits_hold_in_gvisor") {
        return;
    }
    let _g = serial();
    let before = runsc_processes();
    // Memory: the hog is killed, and reported as out of memory.
    let run = gvisor(
        &["--memory", "64M", "--bind", &probe_bind()],
        &["/probe", "hog", "536870912"],
    );
    assert_eq!(run.status(), "oom", "{run:?}");
    assert_eq!(run.code, 137);
    assert!(!run.stdout.contains("allocated"), "the hog never finished");
    // The same program with room to spare finishes.
    let run = gvisor(
        &["--memory", "256M", "--bind", &probe_bind()],
        &["/probe", "hog", "33554432"],
    );
    assert_eq!(run.status(), "exited", "{run:?}");
    assert!(run.stdout.contains("allocated 32 MiB"), "{run:?}");
    // Wall clock: killed at the limit, the Sentry and Gofer with it.
    let run = gvisor(&["--timeout", "500ms"], &["sleep", "30"]);
    assert_eq!(run.status(), "timeout", "{run:?}");
    assert_eq!(run.code, 137);
    assert!(run.num("wall_ms") < 10_000.0, "{}", run.report);
    assert!(run.stderr.contains("wall-clock limit"), "{}", run.stderr);
    // CPU time: the cgroup's (the Sentry's and the Gofer's with the
    // program's), the spinner stopped once it is spent; the timeout is far
    // away, so only the CPU-time limit could have ended it.
    let run = gvisor(
        &["--cpu-time", "1s", "--timeout", "120s"],
        &["sh", "-c", "while :; do :; done"],
    );
    assert_eq!(run.status(), "cpu_time", "{run:?}");
    assert_eq!(run.code, 137);
    let cpu = run.num("cpu_user_ms") + run.num("cpu_sys_ms");
    assert!(
        cpu >= 1000.0,
        "stopped after {cpu} ms of CPU: {}",
        run.report
    );
    assert!(run.stderr.contains("CPU-time limit"), "{}", run.stderr);
    // Tasks: a fork bomb cannot grow past the limit (with gVisor's own
    // tasks on top); the sandbox ends, reported, and nothing escapes.
    let bomb =
        "i=0; while [ $i -lt 300 ]; do (sleep 5 &) 2>/dev/null; i=$((i+1)); done; echo survived";
    let run = gvisor(&["--pids", "16", "--timeout", "20s"], &["sh", "-c", bomb]);
    let peak = run.num("pids_peak");
    assert!(peak <= 16.0 + 96.0, "held at the limit: {}", run.report);
    assert!(
        run.status() == "killed_by_policy" || run.stdout.contains("survived"),
        "{run:?}"
    );
    if run.status() == "killed_by_policy" {
        assert!(run.stderr.contains("task limit"), "{}", run.stderr);
    }
    assert!(run.num("wall_ms") < 20_000.0, "{}", run.report);
    // Nothing is left: no runsc process that was not there before, no bundle.
    let after: Vec<i32> = runsc_processes()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(after.is_empty(), "runsc processes left: {after:?}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn the_gvisor_tier_refuses_what_it_cannot_do_and_names_the_package() {
    if !root_or_skip("the_gvisor_tier_refuses_what_it_cannot_do_and_names_the_package") {
        return;
    }
    let _g = serial();
    // runsc missing: the error says which package to install.
    let out = Command::new(ALCOVE)
        .args(["run", "--isolation", "gvisor", "--", "true"])
        .env("ALCOVE_RUNSC", "/nonexistent/runsc")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("Debian package `runsc`"), "{err}");
    // Flags that watch the host kernel's view are refused by name.
    let out = alcove(&["run", "--isolation", "gvisor", "--trace-live", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--trace-live") && err.contains("--isolation container"),
        "{err}"
    );
    // What the tier lacks yet is refused, not silently dropped.
    let out = alcove(&[
        "run",
        "--isolation",
        "gvisor",
        "--expose-device",
        "/dev/null",
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("--expose-device"), "{err}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn doctor_reports_the_gvisor_tier_and_its_platforms() {
    if !runsc_or_skip("doctor_reports_the_gvisor_tier_and_its_platforms") {
        return;
    }
    let _g = serial();
    let out = alcove(&["doctor", "--json"]);
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gvisor = &doctor["gvisor"];
    assert_eq!(gvisor["installed"], true, "{gvisor}");
    let platforms = gvisor["platforms"].as_array().expect("platforms");
    let ptrace = platforms
        .iter()
        .find(|p| p["platform"] == "ptrace")
        .expect("ptrace probed");
    // The other tests here ran on ptrace: doctor must agree that it works.
    assert_eq!(ptrace["works"], true, "{gvisor}");
    for p in platforms {
        assert!(
            p["works"] == true || !p["why_not"].as_str().unwrap_or("").is_empty(),
            "a platform that does not work says why: {p}"
        );
    }
    assert!(
        !Path::new("/tmp").read_dir().unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("alcove-runsc-probe-")),
        "the probes' directories are removed"
    );
}

#[test]
fn the_network_modes_hold_in_gvisor() {
    if !runsc_or_skip("the_network_modes_hold_in_gvisor") {
        return;
    }
    let _g = serial();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    \
         print('REACHED')\nexcept OSError as e:\n    print('refused', e)"
    );
    // --net none (the default): the host's loopback is not the sandbox's.
    let run = gvisor(&["--timeout", "20s"], &["python3", "-c", &probe]);
    assert_eq!(run.status(), "exited", "{run:?}");
    assert!(run.stdout.contains("refused"), "{run:?}");
    // --net host: the same probe reaches the listener, so the one above
    // could have (the check can fail).
    let run = gvisor(
        &["--net", "host", "--timeout", "20s"],
        &["python3", "-c", &probe],
    );
    assert!(run.stdout.contains("REACHED"), "{run:?}");
}

#[test]
fn a_killed_alcove_leaves_nothing_after_gc() {
    if !runsc_or_skip("a_killed_alcove_leaves_nothing_after_gc") {
        return;
    }
    let _g = serial();
    let before = runsc_processes();
    let mut child = Command::new(ALCOVE)
        .args(["run", "--isolation", "gvisor", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mine = format!("alcove-{}-", child.id());
    let started = || {
        leftovers().iter().any(|d| d.starts_with(&mine))
            && runsc_processes().iter().any(|p| !before.contains(p))
    };
    wait_until(
        "the gVisor sandbox runs",
        std::time::Duration::from_secs(60),
        started,
    );
    // The situation under test: alcove dies with the Sentry running.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(started(), "the sandbox outlived alcove until gc");
    let out = alcove(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 gVisor run director"), "{text}");
    wait_until(
        "gVisor's processes are gone",
        std::time::Duration::from_secs(10),
        || runsc_processes().iter().all(|p| before.contains(p)),
    );
    assert!(
        !leftovers().iter().any(|d| d.starts_with(&mine)),
        "{:?}",
        leftovers()
    );
}

#[test]
fn the_output_limit_holds_in_gvisor() {
    if !runsc_or_skip("the_output_limit_holds_in_gvisor") {
        return;
    }
    let _g = serial();
    // 100,000 bytes asked for, 1,000 passed; the writer then meets a closed
    // stream, and stderr (uncapped) still comes through.
    let script = "head -c 100000 /dev/zero | tr '\\0' x; echo done >&2";
    let run = gvisor(
        &["--output-limit", "1000", "--timeout", "20s"],
        &["sh", "-c", script],
    );
    assert_eq!(run.stdout.len(), 1000, "{}", run.report);
    assert!(run.stdout.chars().all(|c| c == 'x'), "{}", run.stdout);
    assert_eq!(run.report["output_truncated"], true, "{}", run.report);
    assert!(run.stderr.contains("done"), "{}", run.stderr);
    // Under the limit nothing is cut: the cap above was the limit's doing.
    let small = "head -c 500 /dev/zero | tr '\\0' x";
    let run = gvisor(&["--output-limit", "1000"], &["sh", "-c", small]);
    assert_eq!(run.stdout.len(), 500, "{}", run.report);
    assert_eq!(run.report["output_truncated"], false, "{}", run.report);
}

#[test]
fn a_rootfs_is_writable_inside_and_never_changed_on_the_host() {
    if !runsc_or_skip("a_rootfs_is_writable_inside_and_never_changed_on_the_host") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/f"), "as on the host").unwrap();
    // Writable by the program's user (nobody), as an image's files are to theirs.
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (root.clone(), 0o777),
        (root.join("etc"), 0o777),
        (root.join("etc/f"), 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let run = gvisor(
        &["--rootfs", root.to_str().unwrap()],
        &[
            "/bin/sh",
            "-c",
            "echo changed > /etc/f && /bin/busybox cat /etc/f && echo new > /made && /bin/busybox cat /made",
        ],
    );
    // The program could write (the situation this test needs)...
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "changed\nnew\n", "{run:?}");
    // ...and nothing it wrote reached the directory on the host.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/f")).unwrap(),
        "as on the host"
    );
    assert!(!root.join("made").exists());
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn path_rules_leave_only_what_they_allow_in_the_gvisor_view() {
    if !runsc_or_skip("path_rules_leave_only_what_they_allow_in_the_gvisor_view") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for sub in ["pub", "out", "secret"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    std::fs::write(data.join("pub/open.txt"), "public\n").unwrap();
    std::fs::write(data.join("secret/key.txt"), "secret\n").unwrap();
    std::fs::write(data.join("top.txt"), "top\n").unwrap();
    std::os::unix::fs::symlink("secret", data.join("link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (dir.path().to_owned(), 0o755),
        (data.clone(), 0o755),
        // Writable by anyone on the host: only the view can make it read-only.
        (data.join("pub"), 0o777),
        (data.join("out"), 0o777),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let bind = format!("{}:/data:rw", data.display());
    let script = "cat /data/pub/open.txt; \
                  test -e /data/secret/key.txt && echo SECRET_VISIBLE; \
                  test -e /data/top.txt && echo TOP_VISIBLE; \
                  echo new > /data/out/made && echo OUT_WRITTEN; \
                  echo new > /data/pub/made 2>/dev/null || echo PUB_READ_ONLY; \
                  /usr/bin/env true && echo BASE_RUNS";
    let run = gvisor(
        &[
            "--bind",
            &bind,
            "--allow-path",
            "/data/pub",
            "--allow-path",
            "/data/out:rw",
        ],
        &["sh", "-c", script],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout, "public\nOUT_WRITTEN\nPUB_READ_ONLY\nBASE_RUNS\n",
        "{run:?}"
    );
    // What the program wrote reached the allowed directory, and only it.
    assert_eq!(
        std::fs::read_to_string(data.join("out/made")).unwrap(),
        "new\n"
    );
    assert!(!data.join("pub/made").exists());
    // The same bind without rules shows everything (the check above could fail).
    let run = gvisor(&["--bind", &bind], &["cat", "/data/secret/key.txt"]);
    assert_eq!(run.stdout, "secret\n", "{run:?}");
    // A rule whose way passes through a link is refused by name: the
    // Gofer would follow it on the host. /data/pub is pinned first, so the
    // refusal also unmounts what was already bound. The report says so too.
    let report_dir = tempfile::tempdir().unwrap();
    let report = report_dir.path().join("report.json");
    let out = alcove(&[
        "run",
        "--isolation",
        "gvisor",
        "--bind",
        &bind,
        "--allow-path",
        "/data/pub",
        "--allow-path",
        "/data/link",
        "--report",
        report.to_str().unwrap(),
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    let said: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(said["status"], "error", "{said}");
    assert!(
        said["error"].as_str().unwrap().contains("symbolic link"),
        "{said}"
    );
    // The allowed parts were bound into the run's directory: gone with it.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(STATE_ROOT), "{mounts}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn trace_counts_the_programs_own_syscalls_in_gvisor() {
    if !runsc_or_skip("trace_counts_the_programs_own_syscalls_in_gvisor") {
        return;
    }
    let _g = serial();
    let program = [
        "python3",
        "-c",
        "import os\nfor _ in range(500): os.getppid()\nprint('done')",
    ];
    let getppid = |report: &serde_json::Value| {
        report["trace"]["syscalls"]["top"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "getppid")
            .and_then(|e| e["count"].as_u64())
    };
    let run = gvisor(&["--trace"], &program);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "done\n", "{run:?}");
    let trace = &run.report["trace"];
    assert_eq!(trace["source"], "gvisor-strace", "{}", run.report);
    // The program's 500 calls, as its kernel (the Sentry) saw them: not the
    // Sentry's own host syscalls, which eBPF would have counted.
    let counted = getppid(&run.report).expect("getppid among the top calls");
    assert!((500..=510).contains(&counted), "{}", run.report);
    assert!(
        trace["syscalls"]["total"].as_u64().unwrap() > counted,
        "{}",
        run.report
    );
    let entry = trace["syscalls"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "getppid")
        .unwrap();
    assert_eq!(entry["nr"], libc::SYS_getppid, "{}", run.report);
    // The container tier counts the same calls in the host's kernel.
    let container = sandbox(&["--trace"], &program);
    let there = getppid(&container.report).expect("getppid in the container tier");
    assert!((500..=510).contains(&there), "{}", container.report);
    // A program that names itself like a call, with a newline for good
    // measure, adds no call: its lines read two ways, so its own calls
    // count as unparsed, under no name.
    let forger = [
        "python3",
        "-c",
        "import ctypes, os\n\
         ctypes.CDLL(None).prctl(15, b'\\nx E execve(', 0, 0, 0)\n\
         for _ in range(300): os.getppid()\n\
         print(open('/proc/self/comm').read().strip() == 'x E execve(')",
    ];
    let run = gvisor(&["--trace"], &forger);
    assert_eq!(run.stdout, "True\n", "the name was set: {run:?}");
    assert!(getppid(&run.report).unwrap_or(0) < 10, "{}", run.report);
    let unparsed = run.report["trace"]["unparsed_lines"].as_u64().unwrap();
    assert!(
        unparsed >= 300,
        "the renamed thread's calls: {}",
        run.report
    );
    let execs = run.report["trace"]["syscalls"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "execve")
        .map_or(0, |e| e["count"].as_u64().unwrap());
    assert!(
        execs < 5,
        "the name's calls counted as execve: {}",
        run.report
    );
    // A program killed at its wall-clock limit while the Sentry logs its
    // calls: the count ends with it. The limit counts the Sentry's boot too,
    // which takes seconds in a slow guest (CI's cgroup v2 VM), so it leaves
    // room for the loop to run, and the program says that it did.
    let killed = gvisor(
        &["--trace", "--timeout", "6s"],
        &["sh", "-c", "echo looping; while :; do cat /dev/null; done"],
    );
    assert_eq!(killed.status(), "timeout", "{killed:?}");
    assert_eq!(
        killed.stdout, "looping\n",
        "the loop never started: {killed:?}"
    );
    assert!(
        killed.report["trace"]["syscalls"]["total"]
            .as_u64()
            .unwrap()
            > 0,
        "{}",
        killed.report
    );
    // Without --trace nothing is counted.
    let plain = gvisor(&[], &program);
    assert!(plain.report.get("trace").is_none(), "{}", plain.report);
    // A report that cannot be written is said before anything runs.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bind = format!("{}:/out:rw", dir.path().display());
    let out = alcove(&[
        "run",
        "--isolation",
        "gvisor",
        "--trace",
        "--report",
        "/nonexistent/dir/report.json",
        "--bind",
        &bind,
        "--",
        "touch",
        "/out/ran",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot write the report"), "{err}");
    assert!(!dir.path().join("ran").exists(), "the program ran: {err}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn output_to_a_file_lands_after_what_was_written_there() {
    if !runsc_or_skip("output_to_a_file_lands_after_what_was_written_there") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    // A script's `{ echo before; alcove run ...; } > out`: the descriptor
    // is past what was written through it, not in append mode. gVisor on
    // its own would write at its own offset, from 0, over "before".
    let written = |path: &Path| {
        let mut f = std::fs::File::create(path).unwrap();
        std::io::Write::write_all(&mut f, b"before\n").unwrap();
        f
    };
    let status = Command::new(ALCOVE)
        .args([
            "run",
            "--isolation",
            "gvisor",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ])
        .stdin(Stdio::null())
        .stdout(written(&out))
        .stderr(written(&err))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "before\nout\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "before\nerr\n");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}
