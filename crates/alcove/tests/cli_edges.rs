//! The day-to-day commands' rough edges, each pinned: what `alcove fn`
//! prints, how it exits, what it accepts, and the hints it gives.

mod common;
use common::daemon::setup;
use common::*;
use std::process::{Command, Stdio};

/// `alcove fn ARGS` with the given server and token file, and no token in
/// the environment.
fn fn_cli(server: &str, token_file: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(ALCOVE);
    cmd.arg("fn")
        .args(["--server", server])
        .args(args)
        .env_remove("ALCOVE_TOKEN")
        .env_remove("ALCOVE_TOKEN_FILE")
        .env_remove("ALCOVE_SERVER")
        .stdin(Stdio::null());
    if let Some(file) = token_file {
        cmd.args(["--token-file", file]);
    }
    let out = cmd.output().expect("run alcove fn");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn a_server_without_a_scheme_and_a_token_file_are_accepted() {
    let Some(t) = setup(
        "a_server_without_a_scheme_and_a_token_file_are_accepted",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let token_file = t.dir.path().join("client-token");
    std::fs::write(&token_file, d.token.as_deref().unwrap()).unwrap();
    let token_file = token_file.to_str().unwrap();
    // HOST:PORT, as people type it.
    let (code, out, err) = fn_cli(&d.addr, Some(token_file), &["ls"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("NAME"), "{out}");
    // Without the token the same server refuses: the file really was read.
    let (code, _, err) = fn_cli(&d.addr, None, &["ls"]);
    assert_ne!(code, 0, "{err}");
    // A scheme alcove does not speak, and a path, are refused with what to type.
    let (code, _, err) = fn_cli(&format!("ftp://{}", d.addr), Some(token_file), &["ls"]);
    assert_eq!(code, 125);
    assert!(err.contains("http://HOST:PORT"), "{err}");
    let (code, _, err) = fn_cli(&format!("{}/v1", d.addr), Some(token_file), &["ls"]);
    assert_eq!(code, 125);
    assert!(err.contains("without a path"), "{err}");
}

#[test]
fn ls_show_and_logs_read_like_the_flags() {
    let Some(t) = setup("ls_show_and_logs_read_like_the_flags", &[]) else {
        return;
    };
    let d = &t.daemon;
    let long = "a-function-with-a-rather-long-name-indeed";
    for (name, handler) in [(long, "cat"), ("b", "sh -c 'echo oops >&2; exit 3'")] {
        let (code, out, err) = d.cli(&[
            "deploy",
            name,
            "--handler",
            handler,
            "--memory",
            "128M",
            "--timeout",
            "5s",
            "--accel",
            "cpu",
            "--env",
            "GREETING=hello",
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // ls: every column starts where its header does.
    let (_, out, _) = d.cli(&["ls"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let at = |line: &str, word: &str| {
        line.find(word)
            .unwrap_or_else(|| panic!("{word} in {line}"))
    };
    let handler_column = at(lines[0], "HANDLER");
    assert_eq!(at(lines[1], "cat"), handler_column, "{out}");
    assert_eq!(at(lines[2], "sh -c"), handler_column, "{out}");
    // show: accel, env and limits in the units the flags take.
    let (code, out, err) = d.cli(&["show", long]);
    assert_eq!(code, 0, "{err}");
    for want in ["128M", "5s", "6M", "GREETING=hello", "cpu", "deployed 20"] {
        assert!(out.contains(want), "{want} missing from fn show:\n{out}");
    }
    assert!(!out.contains("134217728"), "raw bytes in fn show:\n{out}");
    // logs: each invocation with its time, and the handler's stderr.
    let (code, _, _) = d.cli(&["invoke", "b"]);
    assert_eq!(code, 1);
    let (code, out, _) = d.cli(&["logs", "b"]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap_or("");
    let stamp = first.split("  ").next().unwrap();
    assert!(
        stamp.len() == 20
            && stamp.starts_with("20")
            && stamp.ends_with('Z')
            && stamp.as_bytes()[10] == b' ',
        "no UTC time at the start of the log line: {first:?}"
    );
    assert!(first.contains("exit=3"), "{out}");
    assert!(out.contains("    oops"), "{out}");
}

#[test]
fn result_of_a_failed_async_invocation_shows_its_stderr_and_exit_codes_tell_the_state() {
    let Some(t) = setup(
        "result_of_a_failed_async_invocation_shows_its_stderr_and_exit_codes_tell_the_state",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let (code, _, err) = d.cli(&[
        "deploy",
        "fails",
        "--handler",
        "sh -c 'sleep 1; echo broken-thing >&2; exit 4'",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, id, err) = d.cli(&["invoke", "fails", "--async"]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim();
    // Still running: not "success".
    let (code, _, err) = d.cli(&["result", id]);
    assert_eq!(code, 2, "an unfinished invocation must not exit 0: {err}");
    assert!(err.contains("--wait"), "{err}");
    let (code, out, err) = d.cli(&["result", id, "--wait"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("exit=4"), "{out}");
    assert!(
        err.contains("broken-thing"),
        "the failed handler's stderr: {err}"
    );
    // And one that succeeds exits 0 with its response.
    d.cli(&["deploy", "works", "--handler", "echo fine"]);
    let (_, id, _) = d.cli(&["invoke", "works", "--async"]);
    let (code, out, err) = d.cli(&["result", id.trim(), "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("fine"), "{out}");
}

#[test]
fn run_without_the_double_dash_says_how_to_type_it() {
    let out = alcove(&["run", "--memory", "64M", "ls", "-l", "/tmp"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alcove run --memory 64M -- ls -l /tmp"),
        "no hint about --: {err}"
    );
}

#[test]
fn completions_are_scripts_the_shells_accept() {
    for shell in ["bash", "zsh", "fish"] {
        let out = alcove(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("deploy") && script.contains("memory"),
            "{shell}: {script:.200}"
        );
        if Command::new(shell).arg("--version").output().is_err() {
            skip_unprovided(
                "completions_are_scripts_the_shells_accept",
                &format!("{shell} is not installed (scripts/test.sh installs it), so its script's syntax goes unchecked"),
            );
            continue;
        }
        let path =
            std::env::temp_dir().join(format!("alcove-completion-{}.{shell}", std::process::id()));
        std::fs::write(&path, script.as_bytes()).unwrap();
        let check = Command::new(shell).arg("-n").arg(&path).output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            check.status.success(),
            "{shell} -n: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // A closed pipe is not a crash.
    let mut child = Command::new(ALCOVE)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
