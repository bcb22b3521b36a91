//! Agent sandboxes in the gVisor tier (`isolation: gvisor`) end to end: the
//! SDK's classes of clients/python/tests run again with
//! `SANDBOX_ISOLATION=gvisor` (every sandbox they make is then a gVisor one,
//! which each checks in its answer) against a real daemon. While they run,
//! the runsc processes that appear are recorded, so the after-checks first
//! show there was something to find; after: none of them is left, no run
//! directory in /run/alcove/gvisor, no cgroup, no mount. And across a kill
//! -9 of the daemon: no runsc left, the files kept, the sandbox started
//! again in gVisor by the next call.

mod common;
use common::daemon::{setup, Daemon};
use common::gvisor::*;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The longest one class may take (it is meant to take seconds).
const PYTHON_LIMIT: Duration = Duration::from_secs(300);
/// How long teardown may take (a removed sandbox is killed in the background).
const TEARDOWN_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn commands() {
    e2e("gvisor_commands", "e2e_sandboxes.Commands");
}

#[test]
fn files() {
    e2e("gvisor_files", "e2e_sandboxes.Files");
}

#[test]
fn code_interpreter() {
    e2e("gvisor_code_interpreter", "e2e_sandboxes.Code");
}

#[test]
fn lifecycle() {
    e2e("gvisor_lifecycle", "e2e_sandboxes.Lifecycle");
}

#[test]
fn paused_removal() {
    e2e("gvisor_paused_removal", "e2e_sandboxes.PausedRemoval");
}

#[test]
fn limits_and_isolation() {
    e2e("gvisor_limits_and_isolation", "e2e_sandboxes.Limits");
}

#[test]
fn file_copies() {
    e2e("gvisor_file_copies", "e2e_sandboxes.GvisorCopies");
}

#[test]
fn port_previews() {
    e2e("gvisor_port_previews", "e2e_preview.Preview");
}

#[test]
fn fork_and_snapshot() {
    e2e("gvisor_fork_and_snapshot", "e2e_preview.ForkSnapshot");
}

fn new_runsc(before: &[i32]) -> Vec<i32> {
    runsc_processes()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect()
}

fn e2e(test: &str, class: &str) {
    if !runsc_or_skip(test) || !python_or_skip(test) {
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    let runsc_before = runsc_processes();
    let mounts_before: BTreeSet<String> = host_mounts().into_iter().collect();
    let cgroups_before: BTreeSet<_> = alcove_cgroups().into_iter().collect();
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    let env = [("SANDBOX_ISOLATION", "gvisor".to_owned())];
    let started = Instant::now();
    let (ok, output) = common::sdk::run_unittest(&s.daemon, class, &env, PYTHON_LIMIT, || {
        seen.extend(new_runsc(&runsc_before));
    });
    eprintln!(
        "--- {class} in gVisor ({:.1} s) ---\n{output}",
        started.elapsed().as_secs_f64()
    );
    let log = || s.daemon.log.lock().unwrap().clone();
    assert!(
        ok,
        "{class} failed:\n{output}\n--- daemon log ---\n{}",
        log()
    );
    assert!(
        output.lines().any(|l| l == "OK") && !output.contains("skipped"),
        "{class}: every case must run and pass, none skipped:\n{output}"
    );
    assert!(
        !log().contains("panicked"),
        "the daemon panicked:\n{}",
        log()
    );
    // The sandboxes ran in gVisor: its processes were there to be left.
    assert!(
        !seen.is_empty(),
        "no runsc process was seen while {class} ran"
    );

    let deadline = Instant::now() + TEARDOWN_LIMIT;
    loop {
        let runsc = new_runsc(&runsc_before);
        let dirs = leftovers();
        let cgroups: Vec<_> = alcove_cgroups()
            .into_iter()
            .filter(|c| !cgroups_before.contains(c))
            .filter(|c| {
                !c.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("slot-")
            })
            .collect();
        if runsc.is_empty() && dirs.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {class}, {TEARDOWN_LIMIT:?} on: runsc processes {runsc:?}, run directories \
             {dirs:?}, cgroups {cgroups:?}\n--- daemon log ---\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ours = s.daemon.data.to_string_lossy().into_owned();
    let new: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !mounts_before.contains(m))
        .filter(|m| m.starts_with(&ours) || !m.contains("/sandboxes/sb-"))
        .filter(|m| !m.starts_with("/run/alcove/pool") && !m.starts_with("/run/alcove/templates"))
        .collect();
    assert!(
        new.is_empty(),
        "mounts the host has now and had not: {new:?}"
    );
}

fn create(d: &Daemon, body: Value) -> Value {
    let r = d.http("POST", "/v1/sandboxes", body.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// What the tier cannot give is refused by name, before anything runs.
#[test]
fn what_the_tier_lacks_is_refused_by_name() {
    let test = "gvisor_sandboxes_refusals";
    if !runsc_or_skip(test) {
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    let runsc_before = runsc_processes();
    for (body, named) in [
        (
            json!({ "isolation": "gvisor", "forkable": true }),
            "forkable",
        ),
        (
            json!({ "isolation": "gvisor", "guard": { "cpu_budget_ms": 1000 } }),
            "guard",
        ),
        (json!({ "isolation": "vm" }), "isolation \\\"vm\\\""),
    ] {
        let r = s
            .daemon
            .http("POST", "/v1/sandboxes", body.to_string().as_bytes());
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 400, "{body}: {text}");
        assert!(text.contains(named), "{body}: {text}");
    }
    assert!(new_runsc(&runsc_before).is_empty());
    // A terminal: refused at the exec, the sandbox serving on.
    let id = create(&s.daemon, json!({ "isolation": "gvisor", "timeout_s": 60 }))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({ "cmd": "true", "pty": { "cols": 80, "rows": 24 } }).to_string();
    let r = s
        .daemon
        .http("POST", &format!("/v1/sandboxes/{id}/exec"), body.as_bytes());
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 400, "{text}");
    assert!(text.contains("pty") && text.contains("gVisor"), "{text}");
    let (code, out) = s.daemon.sandbox_exec(&id, json!("uname -r"));
    // gVisor's kernel answers, not the host's.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.trim().is_empty() && out.trim() != host.trim(), "{out}");
    let r = s.daemon.http("DELETE", &format!("/v1/sandboxes/{id}"), b"");
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
}

/// kill -9 of the daemon: no runsc is left; the next daemon lists the
/// sandbox stopped, and a call starts it again, in gVisor, its files kept.
#[test]
fn a_kill_9_of_the_daemon_leaves_no_runsc_and_keeps_the_files() {
    let test = "gvisor_sandboxes_kill_9";
    if !runsc_or_skip(test) {
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    let runsc_before = runsc_processes();
    let mut d = s.daemon;
    let id = create(&d, json!({ "isolation": "gvisor", "timeout_s": 120 }))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, out) = d.sandbox_exec(&id, json!("echo kept > kept.txt; cat kept.txt"));
    assert_eq!(out, "kept\n");
    assert!(
        !new_runsc(&runsc_before).is_empty(),
        "no runsc runs the sandbox"
    );
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    let deadline = Instant::now() + TEARDOWN_LIMIT;
    while !new_runsc(&runsc_before).is_empty() {
        assert!(
            Instant::now() < deadline,
            "runsc outlived its daemon: {:?}",
            new_runsc(&runsc_before)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = Daemon::start(&d.data, &[]);
    let r = again.http("GET", &format!("/v1/sandboxes/{id}"), b"");
    let info = r.json();
    assert_eq!(info["state"], "stopped", "{info}");
    assert_eq!(info["isolation"], "gvisor", "{info}");
    // Its old run's directory went with the start of the next daemon.
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    let (_, out) = again.sandbox_exec(&id, json!("cat kept.txt"));
    assert_eq!(out, "kept\n");
    assert!(
        !new_runsc(&runsc_before).is_empty(),
        "it did not start in gVisor"
    );
    let r = again.http("DELETE", &format!("/v1/sandboxes/{id}"), b"");
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + TEARDOWN_LIMIT;
    while !new_runsc(&runsc_before).is_empty() || !leftovers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after removal: {:?} {:?}",
            new_runsc(&runsc_before),
            leftovers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A sandbox whose root is an imported image runs on gVisor's kernel in
/// it, with its home, and leaves no layer mounted after.
#[test]
fn a_gvisor_sandbox_runs_in_an_imported_image() {
    let test = "gvisor_sandboxes_image";
    if !runsc_or_skip(test) {
        return;
    }
    let _g = serial();
    let runsc_before = runsc_processes();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import_busybox_image(
        dir.path(),
        &store,
        "gvsb:1",
        json!({ "Env": ["PATH=/bin"] }),
    );
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--image-store", store.to_str().unwrap()],
    );
    let mounts_before: BTreeSet<String> = host_mounts().into_iter().collect();
    let info = create(
        &d,
        json!({ "isolation": "gvisor", "image": "gvsb:1", "timeout_s": 60 }),
    );
    let id = info["id"].as_str().unwrap().to_owned();
    assert_eq!(info["image"], "gvsb:1", "{info}");
    let (code, out) = d.sandbox_exec(
        &id,
        json!("cat /etc/greeting; echo; uname -r; echo hi > note; cat note"),
    );
    assert_eq!(code, Some(0), "{out}");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "from the image");
    assert!(lines[1] != host.trim() && !lines[1].is_empty(), "{out}");
    assert_eq!(lines[2], "hi");
    // The image's layers were mounted for it (and go with it).
    let held: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !mounts_before.contains(m) && m.starts_with(STATE_ROOT))
        .collect();
    assert!(
        !held.is_empty(),
        "no layer overlay was seen under {STATE_ROOT}"
    );
    let r = d.http("DELETE", &format!("/v1/sandboxes/{id}"), b"");
    assert!(r.status < 300, "{}", r.text());
    let deadline = Instant::now() + TEARDOWN_LIMIT;
    loop {
        let left: Vec<String> = host_mounts()
            .into_iter()
            .filter(|m| held.contains(m))
            .collect();
        if left.is_empty() && leftovers().is_empty() && new_runsc(&runsc_before).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left: mounts {left:?}, run directories {:?}",
            leftovers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
