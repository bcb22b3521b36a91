//! Hostile `--policy` profiles: paths with NUL bytes or too long, ports
//! out of range, lists and files too big, a FIFO in place of a
//! file. Each must be refused before the sandbox starts, with a message
//! naming what was wrong, never abort alcove or hang it.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `alcove run --policy PROFILE -- true`: exit code and stderr, or `Err` if
/// it was still running after a minute (and was killed).
fn run_with(profile: &Path) -> Result<(i32, String), String> {
    let mut child = Command::new(ALCOVE)
        .arg("run")
        .arg("--policy")
        .arg(profile)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("--policy {} hung", profile.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn hostile_profiles_are_refused_with_the_reason() {
    if !root_or_skip("hostile_profiles_are_refused_with_the_reason") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let base = json!({
        "alcove_profile": 1, "program": ["true"],
        "syscalls": ["exit_group"],
        "files": { "read": [], "write": [], "exec": [] },
        "network": [],
    });
    let with = |path: &[&str], value: serde_json::Value| {
        let mut p = base.clone();
        let mut at = &mut p;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        p.to_string()
    };
    let many: Vec<String> = (0..5000).map(|i| format!("/tmp/f{i}")).collect();
    let mut huge = with(&["program"], json!(["true"]));
    huge.push_str(&" ".repeat(17 << 20));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nul-path",
            with(&["files", "read"], json!(["/etc/a\u{0}b"])),
            "files.read: \"/etc/a\\0b\" holds a NUL byte",
        ),
        (
            "nul-write-path",
            with(&["files", "write"], json!(["/tmp/x\u{0}/y"])),
            "files.write: \"/tmp/x\\0/y\" holds a NUL byte",
        ),
        (
            "long-path",
            with(
                &["files", "exec"],
                json!([format!("/{}", "a".repeat(5000))]),
            ),
            "is longer than PATH_MAX",
        ),
        (
            "port",
            with(&["network"], json!(["192.0.2.7:99999"])),
            "network: \"192.0.2.7:99999\": the port must be 0 to 65535",
        ),
        (
            "too-many",
            with(&["files", "read"], json!(many)),
            "files.read lists 5000 paths; at most 4096",
        ),
        ("too-big", huge, "larger than 16777216 bytes"),
    ];
    let mut paths = Vec::new();
    for (case, text, expect) in cases {
        let path = dir.path().join(format!("{case}.json"));
        std::fs::write(&path, text).unwrap();
        paths.push((case, path, expect));
    }
    let fifo = dir.path().join("fifo.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    paths.push(("fifo", fifo, "is not a regular file"));
    // Every case is tried, and every failure reported.
    let mut failures = Vec::new();
    for (case, path, expect) in paths {
        match run_with(&path) {
            Ok((125, err)) if err.contains(expect) => {}
            Ok((code, err)) => failures.push(format!(
                "{case}: exit {code}, expected 125 and {expect:?}: {}",
                err.chars().take(300).collect::<String>()
            )),
            Err(hung) => failures.push(format!("{case}: {hung}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
