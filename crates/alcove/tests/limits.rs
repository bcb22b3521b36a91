//! Every limit, hit for real: memory, processes, wall clock, CPU time, output, tmpfs.

mod common;
use common::*;

#[test]
fn a_memory_hog_is_reported_as_oom() {
    if !root_or_skip("a_memory_hog_is_reported_as_oom") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--memory", "32M", "--bind", &probe_bind()],
        &["/probe", "hog", "268435456"],
    );
    assert_eq!(run.status(), "oom", "{run:?}");
    assert_eq!(run.code, 137, "killed by SIGKILL from the OOM killer");
    assert!(run.stderr.contains("out of memory"), "{}", run.stderr);
    assert!(!run.stdout.contains("allocated"), "the hog never finished");
    let peak = run.num("memory_peak_bytes");
    assert!(
        peak <= 33.0 * 1024.0 * 1024.0,
        "peak {peak} within the limit"
    );
    // The same program with room to spare finishes.
    let run = sandbox(
        &["--memory", "128M", "--bind", &probe_bind()],
        &["/probe", "hog", "33554432"],
    );
    assert_eq!(run.status(), "exited", "{run:?}");
    assert!(run.stdout.contains("allocated 32 MiB"));
}

#[test]
fn a_fork_bomb_is_held_by_pids() {
    if !root_or_skip("a_fork_bomb_is_held_by_pids") {
        return;
    }
    let _g = serial();
    // The orphaned sleeps outlive the timeout: a run that waited for them
    // would end as "timeout", so "exited" says it ended with its shell and
    // killed the rest (no wall-clock figure, which slow CI machines vary).
    let bomb =
        "i=0; while [ $i -lt 200 ]; do (sleep 600 &) 2>/dev/null; i=$((i+1)); done; echo survived";
    let run = sandbox(&["--pids", "16", "--timeout", "120s"], &["sh", "-c", bomb]);
    assert_eq!(
        run.status(),
        "exited",
        "it ended with its shell, without waiting for the sleeps: {run:?}"
    );
    assert!(run.stdout.contains("survived"));
    assert_eq!(
        run.report["pids_peak"], 16,
        "held at the limit: {}",
        run.report
    );
}

#[test]
fn sleeping_past_the_timeout_is_killed_on_time() {
    if !root_or_skip("sleeping_past_the_timeout_is_killed_on_time") {
        return;
    }
    let _g = serial();
    let run = sandbox(&["--timeout", "300ms"], &["sleep", "10"]);
    assert_eq!(run.status(), "timeout", "{run:?}");
    assert_eq!(run.code, 137);
    let wall = run.num("wall_ms");
    assert!(
        (300.0..450.0).contains(&wall),
        "killed at {wall} ms for a 300 ms limit"
    );
    assert!(run.stderr.contains("wall-clock limit"), "{}", run.stderr);
}

#[test]
fn a_cpu_spinner_is_stopped_at_its_cpu_time() {
    if !root_or_skip("a_cpu_spinner_is_stopped_at_its_cpu_time") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--cpu-time", "300ms", "--timeout", "20s"],
        &["sh", "-c", "while :; do :; done"],
    );
    assert_eq!(run.status(), "cpu_time", "{run:?}");
    let cpu = run.num("cpu_user_ms") + run.num("cpu_sys_ms");
    assert!(
        (300.0..600.0).contains(&cpu),
        "stopped after {cpu} ms of CPU for a 300 ms limit"
    );
    // The limit is over the whole sandbox: two spinners reach it in half the wall time.
    let run = sandbox(
        &["--cpu-time", "400ms", "--timeout", "20s"],
        &["sh", "-c", "while :; do :; done & while :; do :; done"],
    );
    assert_eq!(run.status(), "cpu_time", "{run:?}");
    let cpu = run.num("cpu_user_ms") + run.num("cpu_sys_ms");
    assert!(cpu >= 400.0, "{cpu}");
}

#[test]
fn cpus_throttle_a_spinner() {
    if !root_or_skip("cpus_throttle_a_spinner") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--cpus", "0.2", "--timeout", "1s"],
        &["sh", "-c", "while :; do :; done"],
    );
    assert_eq!(run.status(), "timeout", "{run:?}");
    let cpu = run.num("cpu_user_ms") + run.num("cpu_sys_ms");
    assert!(cpu < 450.0, "0.2 CPUs for 1 s used {cpu} ms of CPU");
}

#[test]
fn an_output_flood_is_truncated() {
    if !root_or_skip("an_output_flood_is_truncated") {
        return;
    }
    let _g = serial();
    // `yes` runs under sh (PID 1 ignores SIGPIPE, as any pid namespace's init does).
    let run = sandbox(
        &["--output-limit", "1K", "--timeout", "10s"],
        &["sh", "-c", "yes flood; echo status $? >&2"],
    );
    assert_eq!(run.stdout.len(), 1024, "exactly the limit passed through");
    assert!(run.stdout.starts_with("flood\nflood\n"));
    assert_eq!(run.report["output_truncated"], true);
    assert_eq!(
        run.stderr,
        format!("status {}\n", 128 + libc::SIGPIPE),
        "the writer got SIGPIPE once the stream closed: {run:?}"
    );
    assert_eq!(run.status(), "exited");
    let run = sandbox(&["--output-limit", "1K"], &["echo", "small"]);
    assert_eq!(run.stdout, "small\n");
    assert_eq!(run.report["output_truncated"], false);
}

#[test]
fn writes_are_bounded_by_the_tmpfs_size() {
    if !root_or_skip("writes_are_bounded_by_the_tmpfs_size") {
        return;
    }
    let _g = serial();
    let fill = "dd if=/dev/zero of=/tmp/fill bs=64k count=1000 2>&1; stat -c %s /tmp/fill";
    let run = sandbox(&["--tmpfs-size", "1M"], &["sh", "-c", fill]);
    assert!(run.stdout.contains("No space left on device"), "{run:?}");
    let size: u64 = run.stdout.lines().last().unwrap().parse().unwrap();
    assert!(size <= 1 << 20, "wrote {size} bytes into a 1 MiB tmpfs");
    let run = sandbox(
        &["--tmpfs-size", "1M"],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=64k count=1000 2>&1",
        ],
    );
    assert!(
        run.stdout.contains("No space left on device"),
        "/dev/shm is bounded too: {run:?}"
    );
}

#[test]
fn open_files_are_limited() {
    if !root_or_skip("open_files_are_limited") {
        return;
    }
    let _g = serial();
    let run = sandbox(&["--open-files", "64"], &["sh", "-c", "ulimit -n"]);
    assert_eq!(run.stdout.trim(), "64");
}
