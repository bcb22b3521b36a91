//! Control of what runs, against a real `alcove serve`: `fn ps` lists the
//! invocations in flight, a cancel kills a running sandbox within 100 ms and
//! keeps a queued one from ever running, and `fn rm` refuses while a
//! function's invocations run unless `--force`, which ends them first.
//!
//! The handlers sleep for as many seconds as their request body says, so
//! each invocation's process has a command line of its own (`sleep 86301`)
//! that the test finds on the host — and would find, were it ever to run.

mod common;
use common::daemon::{http, setup, Daemon, Reply};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Sleeps for the seconds its body gives, as its whole process (`exec`).
const SLEEPER: &str = "sh -c 'read t; exec sleep $t'";

fn deploy(d: &Daemon, name: &str, extra: &[&str]) {
    let mut args = vec!["deploy", name, "--handler", SLEEPER, "--timeout", "10m"];
    args.extend_from_slice(extra);
    let (code, _, err) = d.cli(&args);
    assert_eq!(code, 0, "alcove fn {args:?}: {err}");
}

fn invoke_async(d: &Daemon, name: &str, body: &str, retries: u32) -> String {
    let path = format!("/v1/functions/{name}/invoke?async=true&retries={retries}");
    let reply = d.http("POST", &path, body.as_bytes());
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// A request from another thread, as `Daemon::http` makes it.
fn http_from(d: &Daemon, method: &str, path: &str, body: &[u8]) -> impl FnOnce() -> Reply {
    let (addr, token) = (d.addr.clone(), d.token.clone().unwrap_or_default());
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_vec());
    move || {
        let bearer = format!("Bearer {token}");
        http(&addr, &method, &path, &[("authorization", &bearer)], &body)
    }
}

/// The host pid of the handler running `sleep SECS`, once it runs.
fn handler_pid(secs: &str) -> i32 {
    let command = format!("sleep {secs}");
    wait_until(
        &format!("`{command}` runs"),
        Duration::from_secs(20),
        || !processes_with(&command).is_empty(),
    );
    processes_with(&command)[0]
}

/// Whether `pid` no longer runs (gone, or dead and not yet reaped).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// The alcove cgroups `pid` is in (its sandbox's, in every hierarchy).
fn sandbox_cgroups(pid: i32) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = cgroups_of(pid)
        .into_iter()
        .filter(|p| p.iter().any(|c| c == "alcove"))
        .collect();
    assert!(!dirs.is_empty(), "the handler {pid} is in no alcove cgroup");
    dirs
}

/// Nothing of the handler's sandbox is left: no process of it in its
/// cgroups, and those gone but for pooled slots (which stay for the next
/// run), and no fresh sandbox cgroup of the daemon's left anywhere.
fn assert_no_leftovers(d: &Daemon, pid: i32, cgroups: &[PathBuf]) {
    for dir in cgroups {
        let pooled = dir.iter().any(|c| c.to_string_lossy().starts_with("slot-"));
        if pooled {
            // Another run may hold the slot by now, but not this handler.
            let inside = processes_in_cgroup(dir);
            assert!(
                !inside.contains(&pid.to_string()),
                "{pid} is still in {}",
                dir.display()
            );
            continue;
        }
        wait_until(
            &format!("{} is removed", dir.display()),
            Duration::from_secs(5),
            || !dir.exists(),
        );
    }
    let fresh = format!("sb-{}-", d.child.id());
    let left: Vec<PathBuf> = alcove_cgroups()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&fresh))
        })
        .collect();
    assert!(left.is_empty(), "sandbox cgroups left behind: {left:?}");
}

fn running(d: &Daemon, function: &str) -> Vec<Value> {
    let v = d.cli_json(&["ps", function]);
    v["invocations"].as_array().cloned().unwrap_or_default()
}

#[test]
fn ps_lists_sync_and_async_invocations_in_flight_and_not_once_they_end() {
    let Some(t) = setup(
        "ps_lists_sync_and_async_invocations_in_flight_and_not_once_they_end",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, "napper", &[]);
    let sync = std::thread::spawn(http_from(
        d,
        "POST",
        "/v1/functions/napper/invoke",
        b"2.301",
    ));
    let async_id = invoke_async(d, "napper", "2.302", 0);
    handler_pid("2.301");
    handler_pid("2.302");

    let listed = d.http("GET", "/v1/invocations?function=napper", b"").json();
    let rows = listed["invocations"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(
        (listed["total"].as_u64(), listed["truncated"].as_bool()),
        (Some(2), Some(false))
    );
    for row in rows {
        assert_eq!(row["function"], "napper", "{row}");
        assert_eq!(row["version"], 1, "{row}");
        assert_eq!(row["status"], "running", "{row}");
        assert_eq!(row["attempts"], 1, "{row}");
        assert!(row["age_ms"].as_f64().unwrap() > 0.0, "{row}");
        let memory = row["memory_bytes"].as_u64();
        assert!(memory.is_some_and(|m| m > 0), "no memory in use: {row}");
        assert!(row["cpu_ms"].as_f64().is_some(), "no CPU time: {row}");
    }
    let row = |is_async: bool| rows.iter().find(|r| r["async"] == is_async).unwrap();
    assert_eq!(row(true)["id"], async_id.as_str());
    let sync_id = row(false)["id"].as_str().unwrap().to_owned();

    // The CLI: every function by default, aligned text with readable units.
    let (code, out, err) = d.cli(&["ps"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("FUNCTION"),
        "{out}"
    );
    for id in [&sync_id, &async_id] {
        let line = lines.iter().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(line.contains("napper") && line.contains("running"), "{out}");
        assert!(
            line.contains("ms") || line.contains('s'),
            "no age in {line}"
        );
    }
    let column = lines[0].find("FUNCTION").unwrap();
    assert!(
        lines[1..].iter().all(|l| l[column..].starts_with("napper")),
        "{out}"
    );

    // Once they end, they are no longer listed.
    let reply = sync.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let done = d.cli_json(&["result", &async_id, "--wait"]);
    assert_eq!(done["status"], "exited", "{done}");
    assert!(running(d, "napper").is_empty());
    let (_, out, _) = d.cli(&["ps"]);
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn cancel_kills_a_running_invocation_within_100ms_records_it_and_does_not_retry_it() {
    let Some(t) = setup(
        "cancel_kills_a_running_invocation_within_100ms_records_it_and_does_not_retry_it",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, "sleeper", &[]);
    // Async, with retries left: a cancel must not be retried.
    let id = invoke_async(d, "sleeper", "86311", 3);
    let pid = handler_pid("86311");
    let cgroups = sandbox_cgroups(pid);

    let sent = Instant::now();
    let delete = std::thread::spawn(http_from(
        d,
        "DELETE",
        &format!("/v1/invocations/{id}"),
        b"",
    ));
    while !ended(pid) {
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the handler outlived its cancel"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = sent.elapsed();
    eprintln!("cancel: the handler's sandbox ended {took:?} after the DELETE was sent");
    // The bound is for a real machine; a guest under QEMU's TCG
    // (scripts/vm-test.sh sets ALCOVE_EMULATED) runs every instruction
    // emulated, some ten times slower, and gets ten times the bound.
    let bound = if std::env::var_os("ALCOVE_EMULATED").is_some() {
        eprintln!("cancel: emulated guest (ALCOVE_EMULATED): bound 1 s instead of 100 ms");
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    assert!(took < bound, "the sandbox ended {took:?} after the DELETE");
    let reply = delete.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let record = reply.json();
    assert_eq!(record["status"], "cancelled", "{record}");
    let why = format!("cancelled by a client (DELETE /v1/invocations/{id})");
    assert_eq!(record["error"], why.as_str(), "{record}");
    assert_no_leftovers(d, pid, &cgroups);

    // No retry follows (the first backoff is 100 ms).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        processes_with("sleep 86311").is_empty(),
        "the cancelled invocation was retried"
    );
    let record = d.http("GET", &format!("/v1/invocations/{id}"), b"").json();
    assert_eq!(
        (record["status"].as_str(), record["attempts"].as_u64()),
        (Some("cancelled"), Some(1))
    );
    assert!(running(d, "sleeper").is_empty());

    // A synchronous one, through the CLI: its caller gets a clear error.
    let caller = {
        let (url, token) = (d.url(), d.token.clone().unwrap_or_default());
        std::thread::spawn(move || {
            std::process::Command::new(ALCOVE)
                .args(["fn", "invoke", "sleeper", "--data", "86312"])
                .env("ALCOVE_SERVER", url)
                .env("ALCOVE_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let pid = handler_pid("86312");
    let cgroups = sandbox_cgroups(pid);
    let rows = running(d, "sleeper");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let sync_id = rows[0]["id"].as_str().unwrap().to_owned();
    let (code, out, err) = d.cli(&["cancel", &sync_id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("cancelled {sync_id}").as_str()),
        "{err}"
    );
    assert!(
        ended(pid),
        "the handler still runs after `fn cancel` answered"
    );
    assert_no_leftovers(d, pid, &cgroups);
    let out = caller.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("function_cancelled"), "{stderr}");
    assert!(stderr.contains("cancelled by a client"), "{stderr}");
}

#[test]
fn a_queued_invocation_cancelled_never_runs() {
    let Some(t) = setup("a_queued_invocation_cancelled_never_runs", &[]) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, "single", &["--concurrency", "1"]);
    let blocker = invoke_async(d, "single", "86321", 0);
    let pid = handler_pid("86321");
    let cgroups = sandbox_cgroups(pid);
    // Both wait for the one slot: an async one, and a synchronous one.
    let queued = invoke_async(d, "single", "86322", 2);
    let sync = std::thread::spawn(http_from(
        d,
        "POST",
        "/v1/functions/single/invoke",
        b"86323",
    ));
    let mut rows = Vec::new();
    wait_until(
        "three invocations are in flight",
        Duration::from_secs(10),
        || {
            rows = running(d, "single");
            rows.len() == 3
        },
    );
    let status = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap()["status"].clone();
    assert_eq!(status(&blocker), "running");
    assert_eq!(status(&queued), "queued");
    let sync_id = rows.iter().find(|r| r["async"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(status(&sync_id), "queued");

    for id in [&queued, &sync_id] {
        let reply = d.http("DELETE", &format!("/v1/invocations/{id}"), b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["status"], "cancelled");
    }
    let reply = sync.join().unwrap();
    assert_eq!(
        (reply.status, reply.code()),
        (503, "function_cancelled".into()),
        "{}",
        reply.text()
    );
    // The slot frees up: neither may take it now.
    let (code, _, err) = d.cli(&["cancel", &blocker]);
    assert_eq!(code, 0, "{err}");
    assert!(ended(pid));
    assert_no_leftovers(d, pid, &cgroups);
    std::thread::sleep(Duration::from_millis(500));
    for marker in ["sleep 86322", "sleep 86323"] {
        assert!(
            processes_with(marker).is_empty(),
            "a cancelled invocation ran: {marker}"
        );
    }
    for id in [&queued, &sync_id] {
        let record = d.http("GET", &format!("/v1/invocations/{id}"), b"").json();
        assert_eq!(record["status"], "cancelled", "{record}");
        assert_eq!(record["attempts"], 0, "{record}");
        assert!(record["started_at"].is_null(), "{record}");
    }
    assert!(running(d, "single").is_empty());
}

#[test]
fn cancelling_an_ended_invocation_is_a_conflict_and_an_unknown_one_not_found() {
    let Some(t) = setup(
        "cancelling_an_ended_invocation_is_a_conflict_and_an_unknown_one_not_found",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, "quick", &[]);
    let reply = d.http("POST", "/v1/functions/quick/invoke", b"0");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.header("x-alcove-invocation").unwrap().to_owned();
    let reply = d.http("DELETE", &format!("/v1/invocations/{id}"), b"");
    assert_eq!(
        (reply.status, reply.code()),
        (409, "invocation_finished".into())
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("already ended") && message.contains("exited"),
        "{message}"
    );
    let (code, _, err) = d.cli(&["cancel", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("already ended"), "{err}");
    let reply = d.http("DELETE", "/v1/invocations/0123456789abcdef", b"");
    assert_eq!(
        (reply.status, reply.code()),
        (404, "invocation_not_found".into())
    );
    let record = d.http("GET", &format!("/v1/invocations/{id}"), b"").json();
    assert_eq!(
        record["status"], "exited",
        "a refused cancel changed the record: {record}"
    );
}

#[test]
fn rm_refuses_while_invocations_run_and_force_ends_them_then_removes() {
    let Some(t) = setup(
        "rm_refuses_while_invocations_run_and_force_ends_them_then_removes",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, "busy", &[]);
    let id = invoke_async(d, "busy", "86331", 0);
    let pid = handler_pid("86331");
    let cgroups = sandbox_cgroups(pid);

    let (code, _, err) = d.cli(&["rm", "busy"]);
    assert_ne!(
        code, 0,
        "fn rm removed a function with an invocation running"
    );
    assert!(
        err.contains("function_busy") && err.contains("1 invocation"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let reply = d.http("DELETE", "/v1/functions/busy", b"");
    assert_eq!((reply.status, reply.code()), (409, "function_busy".into()));
    // Still there, still working, and its invocation untouched.
    assert!(!ended(pid));
    let (code, _, err) = d.cli(&["invoke", "busy", "--data", "0"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = d.cli(&["rm", "busy", "--force"]);
    assert_eq!((code, out.trim()), (0, "removed busy"), "{err}");
    assert!(ended(pid), "the handler outlived its function");
    assert_no_leftovers(d, pid, &cgroups);
    let (code, _, err) = d.cli(&["show", "busy"]);
    assert_ne!(code, 0);
    assert!(err.contains("function_not_found"), "{err}");
    let reply = d.http("GET", &format!("/v1/invocations/{id}"), b"");
    assert_eq!(
        reply.status,
        404,
        "a record outlived its function: {}",
        reply.text()
    );
    let reply = d.http("POST", "/v1/functions/busy/invoke", b"0");
    assert_eq!(
        (reply.status, reply.code()),
        (404, "function_not_found".into())
    );
    assert!(running(d, "busy").is_empty());
    // Forcing a function with nothing in flight is a plain removal.
    deploy(d, "idle", &[]);
    let reply = d.http("DELETE", "/v1/functions/idle?force=true", b"");
    assert_eq!(reply.status, 204, "{}", reply.text());
}

#[test]
fn an_invocation_that_panics_inside_alcove_leaves_no_entry_and_no_busy_function() {
    if !cfg!(debug_assertions) {
        skip_machine(
            "an_invocation_that_panics_inside_alcove_leaves_no_entry_and_no_busy_function",
            "the fault it injects exists in debug builds only",
        );
        return;
    }
    let Some(t) = common::daemon::setup_with_env(
        "an_invocation_that_panics_inside_alcove_leaves_no_entry_and_no_busy_function",
        &[],
        &[("ALCOVE_FAULT_PANIC_IN", "buggy")],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, "buggy", &[]);
    let reply = d.http("POST", "/v1/functions/buggy/invoke", b"0");
    assert_eq!(reply.status, 502, "{}", reply.text());
    let id = invoke_async(d, "buggy", "0", 1);
    let record = d.cli_json(&["result", &id, "--wait"]);
    assert_eq!(record["status"], "error", "{record}");
    assert!(
        d.log.lock().unwrap().contains("panicked"),
        "the fault never fired"
    );
    assert!(
        running(d, "buggy").is_empty(),
        "a panicked invocation stayed listed"
    );
    let (code, _, err) = d.cli(&["rm", "buggy"]);
    assert_eq!(code, 0, "{err}");
}
