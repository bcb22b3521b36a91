//! `alcove run`: exit codes, signals, stdio and the report; bad input.

mod common;
use common::*;

#[test]
fn exit_code_passes_through() {
    if !root_or_skip("exit_code_passes_through") {
        return;
    }
    let _g = serial();
    let run = sandbox(&[], &["sh", "-c", "echo out; echo err >&2; exit 42"]);
    assert_eq!(run.code, 42, "{run:?}");
    assert_eq!(run.stdout, "out\n");
    assert_eq!(run.stderr, "err\n");
    assert_eq!(run.status(), "exited");
    assert_eq!(run.report["exit_code"], 42);
    assert!(run.report["signal"].is_null());
}

#[test]
fn death_by_signal_is_128_plus_n() {
    if !root_or_skip("death_by_signal_is_128_plus_n") {
        return;
    }
    let _g = serial();
    let run = sandbox(&["--bind", &probe_bind()], &["/probe", "segv"]);
    assert_eq!(run.code, 128 + libc::SIGSEGV, "{run:?}");
    assert_eq!(run.status(), "signaled");
    assert_eq!(run.report["signal"], libc::SIGSEGV);
    assert!(run.report["exit_code"].is_null());
}

#[test]
fn stdin_is_passed_through() {
    if !root_or_skip("stdin_is_passed_through") {
        return;
    }
    let _g = serial();
    use std::io::Write;
    let mut child = std::process::Command::new(ALCOVE)
        .args(["run", "--", "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello sandbox\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO SANDBOX\n");
    assert!(out.status.success());
}

#[test]
fn the_report_has_every_documented_field() {
    if !root_or_skip("the_report_has_every_documented_field") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--memory", "64M", "--pids", "32"],
        &["sh", "-c", "sleep 0.01 & wait"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    for key in [
        "status",
        "exit_code",
        "signal",
        "wall_ms",
        "cpu_user_ms",
        "cpu_sys_ms",
        "memory_peak_bytes",
        "pids_peak",
        "output_truncated",
        "cgroup_id",
    ] {
        assert!(
            run.report.get(key).is_some(),
            "report lacks {key}: {}",
            run.report
        );
    }
    assert!(run.num("wall_ms") >= 10.0, "slept 10 ms: {}", run.report);
    assert!(run.num("memory_peak_bytes") > 0.0);
    assert_eq!(run.report["pids_peak"], 2, "sh and sleep: {}", run.report);
    assert!(run.num("cgroup_id") > 0.0);
}

#[test]
fn a_missing_program_is_127_with_a_clear_message() {
    if !root_or_skip("a_missing_program_is_127_with_a_clear_message") {
        return;
    }
    let _g = serial();
    let run = sandbox(&[], &["definitely-not-a-program"]);
    assert_eq!(run.code, 127, "{run:?}");
    assert!(
        run.stderr
            .contains("program not found in the sandbox: definitely-not-a-program"),
        "{}",
        run.stderr
    );
    assert_eq!(run.status(), "error");
    let run = sandbox(&[], &["/etc/passwd"]);
    assert_eq!(run.code, 126, "{run:?}");
    assert!(run.stderr.contains("cannot be executed"), "{}", run.stderr);
}

#[test]
fn bad_flags_are_125_with_a_clear_message_and_run_nothing() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--memory", "12Q", "--", "true"], "is not a size"),
        (
            &["run", "--timeout", "soon", "--", "true"],
            "is not a duration",
        ),
        (&["run", "--bind", "/nope", "--", "true"], "SRC:DST"),
        (&["run", "--user", "root", "--", "true"], "numeric UID"),
        (
            &["run", "--net", "wifi", "--", "true"],
            "invalid value 'wifi'",
        ),
        (&["run"], "PROGRAM"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        assert_refused(args, &alcove(args), needle);
    }
}

#[test]
fn invalid_specs_fail_before_anything_runs_and_leave_nothing() {
    if !root_or_skip("invalid_specs_fail_before_anything_runs_and_leave_nothing") {
        return;
    }
    let _g = serial();
    let before = alcove_cgroups();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--rootfs", "/definitely/not/here", "--", "true"],
            "--rootfs /definitely/not/here: not a directory",
        ),
        (
            &["run", "--bind", "/definitely/not/here:/x", "--", "true"],
            "source does not exist",
        ),
        (&["run", "--memory", "1K", "--", "true"], "below the 4M"),
        (&["run", "--workdir", "relative", "--", "true"], "--workdir"),
        (
            &[
                "run",
                "--report",
                "/definitely/not/here/r.json",
                "--",
                "true",
            ],
            "cannot write the report",
        ),
        (
            &["run", "--hostname", "bad name", "--", "true"],
            "--hostname",
        ),
    ];
    for (args, needle) in cases {
        let stderr = assert_refused(args, &alcove(args), needle);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    assert_eq!(alcove_cgroups(), before, "a failed start left a cgroup");
}

#[test]
fn running_unprivileged_is_refused_clearly() {
    if !root_or_skip("running_unprivileged_is_refused_clearly") {
        return;
    }
    let args = ["run", "--", "true"];
    assert_refused(&args, &alcove_as_nobody(&args), "alcove must run as root");
}

#[test]
fn with_init_the_program_gets_ordinary_signal_behaviour() {
    if !root_or_skip("with_init_the_program_gets_ordinary_signal_behaviour") {
        return;
    }
    let _g = serial();
    // Without --init the program is PID 1, which ignores a signal it sends itself.
    let run = sandbox(&[], &["sh", "-c", "kill -TERM $$; echo ignored"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "ignored\n"), "{run:?}");
    // With it, the program is PID 2 under a minimal init, and the signal kills it.
    let run = sandbox(
        &["--init"],
        &["sh", "-c", "echo $$; kill -TERM $$; echo not reached"],
    );
    assert_eq!(run.stdout, "2\n", "{run:?}");
    assert_eq!(run.code, 128 + libc::SIGTERM);
    assert_eq!(run.status(), "signaled");
    assert_eq!(run.report["signal"], libc::SIGTERM);
    // SIGPIPE at the output limit, exit codes, and a missing program behave as usual.
    let run = sandbox(
        &["--init", "--output-limit", "1K", "--timeout", "10s"],
        &["yes", "flood"],
    );
    assert_eq!(
        (run.stdout.len(), run.report["signal"].as_i64()),
        (1024, Some(libc::SIGPIPE as i64)),
        "{run:?}"
    );
    assert_eq!(sandbox(&["--init"], &["sh", "-c", "exit 7"]).code, 7);
    assert_eq!(
        sandbox(&["--init"], &["definitely-not-a-program"]).code,
        127
    );
    let run = sandbox(&["--init", "--timeout", "200ms"], &["sleep", "5"]);
    assert_eq!(run.status(), "timeout", "{run:?}");
}
