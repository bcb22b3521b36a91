//! Agent sandboxes across a daemon restart: a real `alcove serve` is killed
//! (kill -9, or stopped gracefully) and another started on the same data
//! directory. What must hold: the sandboxes' processes end with the daemon
//! (none is left on the host), their files and metadata stay (the next
//! daemon lists them as `stopped`, and the next call starts them again),
//! their timeouts count on while no daemon runs (one past it is reclaimed
//! at start with nothing left), and a removal leaves no mount and no
//! directory. A corrupt record never stops a daemon from starting.

mod common;
use common::sandbox_home::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The whole story: files, metadata and a stopped state across kill -9;
/// the next call starts the sandbox again.
#[test]
fn files_and_metadata_survive_a_kill_9() {
    let Some(f) = Fixture::new("files_and_metadata_survive_a_kill_9") else {
        return;
    };
    let mut d = f.daemon();
    let id = create(
        &d,
        json!({ "metadata": { "suite": "restart", "who": "alice" }, "timeout_s": 600,
                "env": { "GREETING": "hello" }, "memory": "256M" }),
    );
    let before = info(&d, &id);
    write_file(&d, &id, "notes.txt", "kept across restarts\n");
    let r = d.http(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        json!({ "cmd": ["sleep", "4242"], "background": true })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("the background sleep runs", Duration::from_secs(5), || {
        !sandbox_processes("sleep 4242").is_empty()
    });
    let home = f.sandboxes().join(&id).join("home");
    assert_eq!(
        mounts_under(&home),
        [home.to_string_lossy()],
        "the home is a mount of its own on the host"
    );

    let pid = d.kill9();
    // Its processes cannot outlive it: none is left on the host.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sandbox_processes("sleep 4242").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sandbox's sleep outlived daemon {pid}: {:?}",
            sandbox_processes("sleep 4242")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its files did outlive it.
    assert_eq!(
        std::fs::read_to_string(home.join("notes.txt")).unwrap(),
        "kept across restarts\n"
    );

    let d = f.daemon();
    let listed = d
        .http("GET", "/v1/sandboxes?metadata.who=alice", b"")
        .json();
    let listed = listed["sandboxes"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let s = &listed[0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["state"], "stopped");
    assert!(
        s["reason"].as_str().is_some_and(|r| r.contains("kept")),
        "{s}"
    );
    assert_eq!(s["metadata"], before["metadata"]);
    assert_eq!(s["limits"], before["limits"]);
    assert_eq!(s["created_at"], before["created_at"]);
    assert_eq!(s["expires_at"], before["expires_at"]);
    let stopped = d.http("GET", "/v1/sandboxes?state=stopped", b"").json();
    assert_eq!(stopped["sandboxes"].as_array().unwrap().len(), 1);

    // A call that needs it starts it again: same files, same environment.
    let (code, out) = d.sandbox_exec(&id, json!(["cat", "notes.txt"]));
    assert_eq!((code, out.as_str()), (Some(0), "kept across restarts\n"));
    let (code, out) = d.sandbox_exec(&id, json!("echo $GREETING; id -u"));
    assert_eq!(
        (code, out.as_str()),
        (Some(0), format!("hello\n{SANDBOX_UID}\n").as_str())
    );
    let now = info(&d, &id);
    assert_eq!(now["state"], "running");
    assert!(now.get("reason").is_none(), "{now}");
    assert_eq!(now["expires_at"], before["expires_at"]);
    // Still writable, as its user.
    let (code, _) = d.sandbox_exec(&id, json!("echo more >> notes.txt"));
    assert_eq!(code, Some(0));
    // A fork copies the kept home (through the restarted sandbox's root).
    let r = d.http(
        "POST",
        &format!("/v1/sandboxes/{id}/fork"),
        br#"{"metadata": {"who": "fork"}}"#,
    );
    assert_eq!(r.status, 201, "fork: {}", r.text());
    let fork = r.json()["id"].as_str().unwrap().to_owned();
    let (code, out) = d.sandbox_exec(&fork, json!(["cat", "notes.txt"]));
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "kept across restarts\nmore\n")
    );

    remove_and_check(&d, &f, &fork);
    remove_and_check(&d, &f, &id);
    assert_nothing_left(&f);
}

/// A graceful stop keeps files too; `start` brings it back explicitly, and
/// a timeout extended while stopped is kept.
#[test]
fn a_graceful_stop_keeps_files_and_start_restarts() {
    let Some(f) = Fixture::new("a_graceful_stop_keeps_files_and_start_restarts") else {
        return;
    };
    let mut d = f.daemon();
    let id = create(&d, json!({ "metadata": { "suite": "graceful" } }));
    write_file(&d, &id, "dir/kept.txt", "graceful\n");
    // SIGTERM: the daemon stops as it does for an operator.
    // SAFETY: kill on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.child.wait().unwrap();
    assert!(status.success(), "the daemon's exit: {status:?}");
    drop(d);

    let d = f.daemon();
    assert_eq!(info(&d, &id)["state"], "stopped");
    let r = d.http(
        "POST",
        &format!("/v1/sandboxes/{id}/timeout"),
        br#"{"timeout_s": 900}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "stopped", "a timeout does not start it");
    assert_eq!(r.json()["timeout_s"], 900);
    let r = d.http("POST", &format!("/v1/sandboxes/{id}/start"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["timeout_s"], 900);
    let r = d.http(
        "GET",
        &format!("/v1/sandboxes/{id}/files?path=dir/kept.txt"),
        b"",
    );
    assert_eq!((r.status, r.unchunked().as_str()), (200, "graceful\n"));
    // Starting a running one changes nothing.
    let r = d.http("POST", &format!("/v1/sandboxes/{id}/start"), b"");
    assert_eq!(r.json()["state"], "running");
    // The CLI says the same.
    let out = std::process::Command::new(ALCOVE)
        .args(["sandbox", "start", &id])
        .env("ALCOVE_SERVER", d.url())
        .env("ALCOVE_TOKEN", d.token.as_deref().unwrap_or_default())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id} running")
    );
    let r = d.http("POST", "/v1/sandboxes/sb-00/start", b"");
    assert_eq!(r.status, 404);

    // Its record was rewritten with the new timeout: a restart keeps it.
    drop(d);
    let d = f.daemon();
    assert_eq!(info(&d, &id)["timeout_s"], 900);
    remove_and_check(&d, &f, &id);
    assert_nothing_left(&f);
}

/// A sandbox whose timeout passes while no daemon runs is reclaimed at the
/// next start, home and directory; a removed stopped one leaves nothing.
#[test]
fn timeouts_count_while_down_and_stopped_ones_are_removed_whole() {
    let Some(f) = Fixture::new("timeouts_count_while_down_and_stopped_ones_are_removed_whole")
    else {
        return;
    };
    let mut d = f.daemon();
    let short = create(&d, json!({ "timeout_s": 2 }));
    let long = create(&d, json!({ "timeout_s": 600 }));
    write_file(&d, &short, "a", "x");
    write_file(&d, &long, "b", "y");
    let started = Instant::now();
    d.kill9();
    assert_eq!(mounts_under(&f.sandboxes()).len(), 2, "both homes are kept");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));

    let d = f.daemon();
    // Reclaimed before the daemon served anything.
    assert!(
        !f.sandboxes().join(&short).exists(),
        "{short} past its timeout is left: {:?}",
        entries(&f.sandboxes().join(&short))
    );
    assert_eq!(
        mounts_under(&f.sandboxes()).len(),
        1,
        "{:?}",
        mounts_under(&f.data())
    );
    assert_eq!(
        d.http("GET", &format!("/v1/sandboxes/{short}"), b"").status,
        404
    );
    assert!(
        d.log.lock().unwrap().contains("timeout"),
        "the reclaim is logged"
    );
    assert_eq!(info(&d, &long)["state"], "stopped");
    // Removed while stopped: nothing is left.
    remove_and_check(&d, &f, &long);
    assert_nothing_left(&f);
}

/// A corrupt, hostile or missing record is logged and reclaimed; the daemon
/// starts, and the other sandboxes come back. `alcove gc` removes a home
/// no record holds.
#[test]
fn bad_records_do_not_stop_the_daemon_and_gc_reclaims_orphans() {
    let Some(f) = Fixture::new("bad_records_do_not_stop_the_daemon_and_gc_reclaims_orphans") else {
        return;
    };
    let mut d = f.daemon();
    let good = create(&d, json!({ "metadata": { "k": "good" } }));
    let corrupt = create(&d, json!({}));
    let hostile = create(&d, json!({}));
    let orphan = create(&d, json!({}));
    let newer = create(&d, json!({}));
    write_file(&d, &good, "g", "good\n");
    d.kill9();
    let root = f.sandboxes();
    std::fs::write(
        root.join(&corrupt).join("sandbox.json"),
        b"{\"version\": 1, \"id\": ",
    )
    .unwrap();
    // A record naming another sandbox's directory and a huge clock.
    let record = root.join(&hostile).join("sandbox.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    v["id"] = "../../etc".into();
    std::fs::write(&record, v.to_string()).unwrap();
    // A newer daemon's record (a field this one does not know): its files
    // are not this daemon's to delete.
    let record = root.join(&newer).join("sandbox.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    v["request"]["gpu"] = true.into();
    std::fs::write(&record, v.to_string()).unwrap();
    // Not ours: left alone.
    std::fs::create_dir(root.join("not-a-sandbox")).unwrap();
    // The orphan's record goes: only gc reclaims it once the daemon runs,
    // so it is made old enough for gc after the next daemon starts (which
    // reclaims it itself: checked below).
    std::fs::remove_file(root.join(&orphan).join("sandbox.json")).unwrap();

    let d = f.daemon();
    let log = d.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
    for gone in [&corrupt, &hostile, &orphan] {
        assert!(!root.join(gone).exists(), "{gone} is left");
        assert_eq!(
            d.http("GET", &format!("/v1/sandboxes/{gone}"), b"").status,
            404
        );
    }
    assert!(root.join("not-a-sandbox").exists());
    assert!(log.contains(&corrupt), "the reclaim is logged: {log}");
    assert!(
        root.join(&newer).join("home").exists() && log.contains("left as it is"),
        "a newer daemon's sandbox is kept: {log}"
    );
    assert_eq!(
        d.http("GET", &format!("/v1/sandboxes/{newer}"), b"").status,
        404
    );
    let home = root.join(&newer).join("home");
    let out = std::process::Command::new("umount")
        .arg(&home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(root.join(&newer)).unwrap();
    assert_eq!(info(&d, &good)["state"], "stopped");
    let (code, out) = d.sandbox_exec(&good, json!(["cat", "g"]));
    assert_eq!((code, out.as_str()), (Some(0), "good\n"));
    assert_eq!(
        mounts_under(&root).len(),
        1,
        "{:?}",
        mounts_under(&f.data())
    );

    // gc: a home without a record (a create cut short on a daemon killed
    // then), old enough, goes; a fresh one and a recorded one stay.
    let orphan2 = create(&d, json!({}));
    std::fs::remove_file(root.join(&orphan2).join("sandbox.json")).unwrap();
    let out = gc(&f);
    assert!(
        out.contains("0 orphaned sandbox home"),
        "a young one is spared: {out}"
    );
    assert!(root.join(&orphan2).exists());
    age(&root.join(&orphan2));
    let out = gc(&f);
    assert!(out.contains("1 orphaned sandbox home"), "{out}");
    assert!(!root.join(&orphan2).exists());
    assert!(mounts_under(&root.join(&orphan2)).is_empty());
    // The one with a record was not touched.
    assert_eq!(info(&d, &good)["state"], "running");

    let _ = d.http("DELETE", &format!("/v1/sandboxes/{orphan2}"), b""); // its agent ends
    remove_and_check(&d, &f, &good);
    std::fs::remove_dir(root.join("not-a-sandbox")).unwrap();
    assert_nothing_left(&f);
}
