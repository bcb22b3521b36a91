//! A pooled gVisor sandbox against real runsc: booted ahead, it runs one
//! request's program with that request's environment and input, reports as
//! a cold run does, and leaves nothing once used or dropped.

use alcove_gvisor::{GvisorOptions, PooledSandbox};
use alcove_sandbox::{SandboxSpec, Status, Stdio};
use std::path::Path;

/// Whether this test can run here; says why not (scripts/test.sh installs
/// runsc, and CI is root, so CI always runs it).
fn can_run(test: &str) -> bool {
    let root = alcove_sys::process::is_root();
    let runsc = alcove_gvisor::Runsc::find().is_ok();
    if !root || !runsc {
        let why = if !root {
            "needs root"
        } else {
            "runsc is not installed"
        };
        if std::env::var_os("ALCOVE_CI").is_some() {
            panic!("{test} cannot run in CI: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
    }
    root && runsc
}

fn options(dir: &Path) -> GvisorOptions {
    GvisorOptions {
        state_root: Some(dir.to_path_buf()),
        cancel: Vec::new(),
    }
}

fn request(argv: &[&str], stdin: &[u8]) -> SandboxSpec {
    let mut spec = SandboxSpec::new(argv.iter().map(Into::into).collect());
    spec.limits.memory_bytes = Some(128 << 20);
    spec.limits.timeout = Some(std::time::Duration::from_secs(20));
    spec.stdio = Stdio::Capture {
        stdin: stdin.to_vec(),
    };
    spec
}

fn waiter() -> Vec<String> {
    vec!["/bin/sleep".into(), "infinity".into()]
}

#[test]
fn a_pooled_sandbox_runs_one_request_and_leaves_nothing() {
    if !can_run("a_pooled_sandbox_runs_one_request_and_leaves_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = request(&["true"], b"");
    let pooled = PooledSandbox::boot(&base, waiter(), &[], &options(dir.path())).unwrap();
    assert!(pooled.alive(), "the booted sandbox holds no process");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let mut spec = request(
        &["/bin/sh", "-c", "echo \"$GREETING\"; cat; uname -r; exit 3"],
        b"from stdin\n",
    );
    spec.env.push(("GREETING".into(), "hello".into()));
    assert!(pooled.fits(&spec));
    let outcome = pooled.exec(&spec, &options(dir.path())).unwrap();
    let out = String::from_utf8_lossy(&outcome.stdout);
    assert_eq!(outcome.status, Status::Exited, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(3), "{outcome:?}");
    assert!(out.starts_with("hello\nfrom stdin\n"), "{out}");
    // gVisor's kernel answered, not the host's.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        !out.contains(host.trim()),
        "the host kernel answered: {out}"
    );
    assert!(outcome.memory_peak_bytes.is_some_and(|p| p > 0));
    // Used once, then gone: no directory, no cgroup process.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn limits_hold_in_a_pooled_sandbox_and_dropping_one_kills_it() {
    if !can_run("limits_hold_in_a_pooled_sandbox_and_dropping_one_kills_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut base = request(&["true"], b"");
    base.limits.timeout = Some(std::time::Duration::from_millis(500));
    let pooled = PooledSandbox::boot(&base, waiter(), &[], &options(dir.path())).unwrap();
    let mut slow = request(&["/bin/sleep", "30"], b"");
    slow.limits.timeout = Some(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let outcome = pooled.exec(&slow, &options(dir.path())).unwrap();
    assert_eq!(outcome.status, Status::Timeout, "{outcome:?}");
    assert!(started.elapsed().as_secs() < 10);

    // A request whose limits differ is not served by it.
    let pooled = PooledSandbox::boot(&base, waiter(), &[], &options(dir.path())).unwrap();
    let mut bigger = request(&["true"], b"");
    bigger.limits.memory_bytes = Some(256 << 20);
    assert!(!pooled.fits(&bigger));
    assert!(pooled.exec(&bigger, &options(dir.path())).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // An unused one dropped: its processes and directory go with it.
    let pooled = PooledSandbox::boot(&base, waiter(), &[], &options(dir.path())).unwrap();
    assert!(pooled.alive());
    drop(pooled);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
