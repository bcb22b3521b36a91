//! The pool of ready agent sandboxes (`--sandbox-pool`), through a real
//! `alcove serve`: it fills only after a create that it could serve, a
//! create asking for no more is handed a ready one (its metadata, timeout
//! and clock its own, set at the claim), anything else is made afresh, the
//! pool refills, ready ones are neither listed nor recorded, and nothing of
//! them is left after a graceful stop or after a kill -9 and the next
//! daemon's start.

mod common;
use common::daemon::Daemon;
use common::sandbox_home::*;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// `alcove_agent_sandbox_pool_ready` from the daemon's /metrics.
fn ready(d: &Daemon) -> i64 {
    let text = d.http("GET", "/metrics", b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("alcove_agent_sandbox_pool_ready "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no alcove_agent_sandbox_pool_ready in /metrics:\n{text}"))
}

fn wait_ready(d: &Daemon, n: i64) {
    wait_until(
        &format!("{n} ready sandboxes"),
        Duration::from_secs(30),
        || ready(d) == n,
    );
}

/// Directories in sandboxes/ without a record: the ready ones.
fn unrecorded(f: &Fixture) -> BTreeSet<String> {
    entries(&f.sandboxes())
        .into_iter()
        .filter(|id| !f.sandboxes().join(id).join("sandbox.json").exists())
        .collect()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_create_is_handed_a_ready_sandbox_with_its_own_clock() {
    let Some(f) = Fixture::new("a_create_is_handed_a_ready_sandbox_with_its_own_clock") else {
        return;
    };
    let mut d = f.daemon_with(&["--sandbox-pool", "2"]);
    let mut events = std::process::Command::new(ALCOVE)
        .args(["events"])
        .env("ALCOVE_SERVER", d.url())
        .env("ALCOVE_TOKEN", d.token.as_deref().unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start alcove events");
    // Nothing is started before sandboxes are used.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ready(&d), 0);
    assert!(
        entries(&f.sandboxes()).is_empty(),
        "{:?}",
        entries(&f.sandboxes())
    );

    let first = create(&d, json!({}));
    wait_ready(&d, 2);
    let pooled = unrecorded(&f);
    assert_eq!(pooled.len(), 2, "two ready sandboxes' homes: {pooled:?}");
    assert!(!pooled.contains(&first));
    for id in &pooled {
        let home = f.sandboxes().join(id).join("home");
        assert_eq!(mounts_under(&home), [home.to_string_lossy()]);
        // Not a sandbox of anyone's yet.
        assert_eq!(
            d.http("GET", &format!("/v1/sandboxes/{id}"), b"").status,
            404
        );
    }
    let listed = d.http("GET", "/v1/sandboxes", b"").json();
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 1, "{listed}");
    // `alcove gc` leaves a running daemon's ready sandboxes alone, however
    // old (they have no record, like a create cut short).
    for id in &pooled {
        age(&f.sandboxes().join(id));
        assert!(f.sandboxes().join(id).join("pooled").exists());
    }
    let out = gc(&f);
    assert!(out.contains("0 orphaned sandbox home"), "{out}");
    assert_eq!(unrecorded(&f), pooled);

    // A claim: the oldest ready one, with this create's metadata and clock.
    std::thread::sleep(Duration::from_millis(1100));
    let asked_at = now();
    let claimed = create(
        &d,
        json!({ "metadata": { "who": "claimed" }, "timeout_s": 120, "idle_pause_s": 30 }),
    );
    assert!(
        pooled.contains(&claimed),
        "{claimed} is not one of the ready {pooled:?}"
    );
    let got = info(&d, &claimed);
    let created_at = got["created_at"].as_f64().unwrap();
    assert!(
        created_at >= asked_at - 0.05 && created_at <= now(),
        "its clock starts at the claim ({asked_at}), not when it was made: {got}"
    );
    assert_eq!(got["expires_at"].as_f64().unwrap(), created_at + 120.0);
    assert_eq!(got["timeout_s"], 120);
    assert_eq!(got["idle_pause_s"], 30);
    assert_eq!(got["metadata"], json!({ "who": "claimed" }));
    assert_eq!(got["state"], "running");
    assert_eq!(got["limits"], info(&d, &first)["limits"]);
    assert!(
        f.sandboxes().join(&claimed).join("sandbox.json").exists()
            && !f.sandboxes().join(&claimed).join("pooled").exists(),
        "a claimed sandbox has its record, and is no longer marked ready"
    );
    let (code, out) = d.sandbox_exec(&claimed, json!("id -u; pwd; echo $HOME"));
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            format!("{SANDBOX_UID}\n/home/user\n/home/user\n").as_str()
        )
    );
    write_file(&d, &claimed, "notes.txt", "mine\n");
    let (_, out) = d.sandbox_exec(&claimed, json!(["cat", "notes.txt"]));
    assert_eq!(out, "mine\n");
    let listed = d
        .http("GET", "/v1/sandboxes?metadata.who=claimed", b"")
        .json();
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 1, "{listed}");

    // Bad input is refused before a ready one is taken.
    wait_ready(&d, 2);
    let full = unrecorded(&f);
    for bad in [
        &br#"{"timeout_s": 0}"#[..],
        br#"{"idle_pause_s": 99999999}"#,
        br#"{"metadata": {"a b": "x"}}"#,
        br#"{"env": {"A=B": "x"}}"#,
    ] {
        let r = d.http("POST", "/v1/sandboxes", bad);
        assert_eq!(r.status, 400, "{}", r.text());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        (ready(&d), unrecorded(&f)),
        (2, full.clone()),
        "a refused create took a ready one"
    );

    // An environment is given to a ready one at the claim: its commands and
    // its interpreter start with it; the record keeps it.
    let with_env = create(&d, json!({ "env": { "X": "given", "HOME": "/tmp" } }));
    assert!(
        full.contains(&with_env),
        "{with_env} is not one of {full:?}"
    );
    let (_, out) = d.sandbox_exec(&with_env, json!("echo $X $HOME"));
    assert_eq!(out, "given /tmp\n");
    let code = d.http(
        "POST",
        &format!("/v1/sandboxes/{with_env}/code"),
        br#"{"code": "import os; os.environ['X']"}"#,
    );
    assert!(
        code.text().contains(r#""text":"'given'""#),
        "{}",
        code.text()
    );
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.sandboxes().join(&with_env).join("sandbox.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["request"]["env"],
        json!({ "X": "given", "HOME": "/tmp" }),
        "{record}"
    );

    // Anything more than metadata, a clock and an environment is made afresh.
    let own = create(&d, json!({ "pids": 256, "env": { "X": "fresh" } }));
    assert!(!pooled.contains(&own) && !full.contains(&own));
    let (_, out) = d.sandbox_exec(&own, json!("echo $X"));
    assert_eq!(out, "fresh\n");

    // The pool refills to two, the claimed one no longer among them.
    wait_ready(&d, 2);
    let now_ready = unrecorded(&f);
    assert_eq!(now_ready.len(), 2, "{now_ready:?}");
    assert!(!now_ready.contains(&claimed));

    for id in [&first, &claimed, &with_env, &own] {
        remove_and_check(&d, &f, id);
    }
    assert_eq!(unrecorded(&f), now_ready, "only the ready ones are left");

    // A graceful stop removes the ready ones whole.
    let agents_before = agents();
    assert!(
        agents_before.len() >= 2,
        "the ready sandboxes' agents run: {agents_before:?}"
    );
    // SAFETY: kill on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.child.wait().unwrap();
    assert!(status.success(), "the daemon's exit: {status:?}");
    assert_nothing_left(&f);
    let outlived: Vec<_> = agents().intersection(&agents_before).cloned().collect();
    assert!(
        outlived.is_empty(),
        "agents outlived the daemon: {outlived:?}"
    );

    // Events: a ready one's is `sandbox_ready`; its `sandbox_start` comes
    // at the claim (saying so); a fresh one's start is as before.
    let mut text = String::new();
    let mut out = events.stdout.take().unwrap();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    let _ = events.wait();
    let of = |id: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["sandbox"] == id)
            .collect()
    };
    let kinds = |id: &str| -> Vec<String> {
        of(id)
            .iter()
            .filter_map(|e| e["event"].as_str().map(str::to_owned))
            .collect()
    };
    let claimed_events = of(&claimed);
    let k = kinds(&claimed);
    assert_eq!(
        k.first().map(String::as_str),
        Some("sandbox_ready"),
        "{k:?}\n{text}"
    );
    let start = k
        .iter()
        .position(|e| e == "sandbox_start")
        .unwrap_or_else(|| panic!("no start: {k:?}"));
    assert_eq!(
        claimed_events[start]["pooled"], true,
        "{}",
        claimed_events[start]
    );
    assert_eq!(k.last().map(String::as_str), Some("sandbox_end"), "{k:?}");
    let k = kinds(&own);
    assert_eq!(
        k.first().map(String::as_str),
        Some("sandbox_start"),
        "{k:?}"
    );
    assert!(of(&own)[0].get("pooled").is_none(), "{}", of(&own)[0]);
}

#[test]
fn a_stop_while_the_pool_starts_one_leaves_nothing_of_it() {
    let Some(f) = Fixture::new("a_stop_while_the_pool_starts_one_leaves_nothing_of_it") else {
        return;
    };
    for pause_ms in [0, 30] {
        let mut d = f.daemon_with(&["--sandbox-pool", "4"]);
        let kept = create(&d, json!({}));
        // A start is in flight now (or, after a pause, a later one of the four).
        std::thread::sleep(Duration::from_millis(pause_ms));
        // SAFETY: kill on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
        let status = d.child.wait().unwrap();
        assert!(status.success(), "the daemon's exit: {status:?}");
        // The situation arose: the pool had begun (a sandbox other than
        // the created one ended with the daemon). Checked after the pause
        // only: at once, the start may not yet have made its process.
        wait_until(
            "the daemon's last log lines",
            Duration::from_secs(5),
            || d.log.lock().unwrap().contains("alcove: stopped"),
        );
        let log = d.log.lock().unwrap().clone();
        assert!(
            pause_ms == 0
                || log
                    .lines()
                    .any(|l| l.contains("agent sandbox ended") && !l.contains(&kept)),
            "no ready sandbox was being started or ready at the stop ({pause_ms} ms):\n{log}"
        );
        // Only the created one is left (stopped, its files kept).
        assert_eq!(entries(&f.sandboxes()), std::slice::from_ref(&kept));
        assert_eq!(
            mounts_under(&f.sandboxes()).len(),
            1,
            "{:?}",
            mounts_under(&f.data())
        );
        let d = f.daemon();
        remove_and_check(&d, &f, &kept);
        assert_nothing_left(&f);
    }
}

/// Sandbox agents running on the host: (pid, start time).
fn agents() -> BTreeSet<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_agent = String::from_utf8_lossy(&cmdline).ends_with("sandbox-agent\0");
        let uid = entry.metadata().map(|m| m.uid()).ok();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let start = stat.rsplit(") ").next().and_then(|f| f.split(' ').nth(19));
        if let (true, Some(SANDBOX_UID), Some(start)) = (is_agent, uid, start) {
            found.insert((pid, start.to_owned()));
        }
    }
    found
}

#[test]
fn ready_sandboxes_of_a_killed_daemon_are_reclaimed_by_the_next() {
    let Some(f) = Fixture::new("ready_sandboxes_of_a_killed_daemon_are_reclaimed_by_the_next")
    else {
        return;
    };
    let mut d = f.daemon_with(&["--sandbox-pool", "3"]);
    let kept = create(&d, json!({ "metadata": { "who": "kept" } }));
    wait_ready(&d, 3);
    let pooled = unrecorded(&f);
    assert_eq!(pooled.len(), 3, "{pooled:?}");
    d.kill9();
    // Their homes outlive a kill -9 (as every sandbox's do) ...
    assert_eq!(unrecorded(&f), pooled);
    // ... `alcove gc` reclaims an old one now that no daemon runs ...
    let first = pooled.iter().next().unwrap().clone();
    age(&f.sandboxes().join(&first));
    let out = gc(&f);
    assert!(out.contains("1 orphaned sandbox home"), "{out}");
    assert!(!f.sandboxes().join(&first).exists());

    // ... and the next daemon the rest (no record), keeping the real one.
    let d = f.daemon();
    assert_eq!(entries(&f.sandboxes()), std::slice::from_ref(&kept));
    assert_eq!(
        mounts_under(&f.sandboxes()).len(),
        1,
        "{:?}",
        mounts_under(&f.data())
    );
    assert_eq!(info(&d, &kept)["state"], "stopped");
    remove_and_check(&d, &f, &kept);
    assert_nothing_left(&f);
}

/// A ready sandbox whose agent dies before a claim is taken out and
/// removed at once (never handed out), and replaced after 5 s.
#[test]
fn a_ready_sandbox_that_dies_is_replaced_not_handed_out() {
    let Some(f) = Fixture::new("a_ready_sandbox_that_dies_is_replaced_not_handed_out") else {
        return;
    };
    let d = f.daemon_with(&["--sandbox-pool", "2"]);
    let created = create(&d, json!({}));
    wait_ready(&d, 2);
    let pooled = unrecorded(&f);
    // Agents are pid 1 of their sandbox's pid namespace: the created one's
    // is the namespace its commands see.
    let (code, own_ns) = d.sandbox_exec(&created, json!(["readlink", "/proc/self/ns/pid"]));
    assert_eq!(code, Some(0), "{own_ns}");
    let ns_of = |pid: i32| {
        std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let ready_agents: Vec<i32> = agents()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| ns_of(*pid) != own_ns.trim())
        .collect();
    assert_eq!(
        ready_agents.len(),
        2,
        "the ready sandboxes' agents: {ready_agents:?}"
    );
    // SAFETY: kill on a process this test's daemon started (a ready sandbox's agent).
    unsafe { libc::kill(ready_agents[0], libc::SIGKILL) };
    wait_until("the dead one taken out", Duration::from_secs(5), || {
        ready(&d) == 1 && unrecorded(&f).len() == 1
    });
    let left = unrecorded(&f);
    assert!(left.is_subset(&pooled), "{left:?} of {pooled:?}");
    // A create now gets the live one, never the dead one.
    let claimed = create(&d, json!({}));
    assert!(
        left.contains(&claimed),
        "{claimed} is not the live ready one {left:?}"
    );
    let (code, out) = d.sandbox_exec(&claimed, json!(["echo", "alive"]));
    assert_eq!((code, out.as_str()), (Some(0), "alive\n"));
    // Replaced once the pool's retry time has passed.
    wait_ready(&d, 2);
    assert!(
        d.log
            .lock()
            .unwrap()
            .contains("ended before it was claimed"),
        "the removal is logged"
    );
    for id in [&created, &claimed] {
        remove_and_check(&d, &f, id);
    }
}
