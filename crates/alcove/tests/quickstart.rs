//! The README's first steps, run as they are written: the block between
//! `<!-- quickstart -->` and `<!-- /quickstart -->`, line by line in one
//! shell, with this build's alcove first on PATH. It runs in a network and
//! mount namespace of its own (its own loopback, so port 8480 is free, and a
//! fresh /var/lib, so the host's daemon data are neither used nor touched).

mod common;
use common::*;
use std::process::Command;

const README: &str = include_str!("../../../README.md");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The shell lines of the README's quick start block.
fn quick_start() -> String {
    let start = README
        .find("<!-- quickstart -->")
        .expect("README.md has a <!-- quickstart --> block");
    let end = README[start..]
        .find("<!-- /quickstart -->")
        .expect("the quickstart block is closed")
        + start;
    let block = &README[start..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("the quickstart block holds a ```sh fence");
    body.to_owned()
}

#[test]
fn the_readme_quick_start_runs_verbatim() {
    if !root_or_skip("the_readme_quick_start_runs_verbatim") {
        return;
    }
    let _serial = serial();
    let lines = quick_start();
    assert!(lines.contains("alcove serve &"), "{lines}");
    let bin_dir = std::path::Path::new(ALCOVE).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The harness only: a private loopback and /var/lib; then the README's
    // lines, unchanged, with each command echoed (set -x) and the first
    // failure ending the run.
    let script = format!(
        "set -euo pipefail\nip link set lo up\nmount -t tmpfs -o mode=0755 tmpfs /var/lib\nset -x\n{lines}\nwait\n"
    );
    let out = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            &script,
        ])
        .current_dir(REPO)
        .env("PATH", path)
        .env_remove("ALCOVE_TOKEN")
        .env_remove("ALCOVE_SERVER")
        .env_remove("ALCOVE_TOKEN_FILE")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the README says each step shows.
    for want in [
        "hello from alcove",
        "deployed hello version 1",
        "HTTP/1.1 201",
        "x-greeting: hello",
        "\"greeting\": \"hello, Ada\"",
        "\"method\": \"GET\"",
        "exited exit=0",
    ] {
        assert!(
            stdout.contains(want),
            "{want:?} is not in the quick start's output:\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    assert!(
        stderr.contains("alcove: stopped"),
        "the daemon did not stop: {stderr}"
    );
}
