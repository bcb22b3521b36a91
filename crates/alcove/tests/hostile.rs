//! Hostile clients and functions against a real `alcove serve`: a sandbox
//! on the host's network trying the API, slow and greedy clients, numbers
//! out of range, floods of output and of queued work, a bug inside one
//! invocation, SIGTERM with work that would never end, and a data
//! directory that is not alcove's.

mod common;
use common::daemon::{http, setup, setup_with_env, Daemon};
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn deploy(d: &Daemon, args: &[&str]) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let (code, _, err) = d.cli(&all);
    assert_eq!(code, 0, "alcove fn {all:?}: {err}");
}

#[test]
fn every_request_but_healthz_needs_the_token_the_daemon_made_for_itself() {
    let Some(t) = setup(
        "every_request_but_healthz_needs_the_token_the_daemon_made_for_itself",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let file = d.data.join("token");
    let meta = std::fs::metadata(&file).expect("the daemon wrote DATA_DIR/token");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = d.token.clone().unwrap();
    assert!(token.len() >= 32, "{token}");
    assert_eq!(http(&d.addr, "GET", "/healthz", &[], b"").status, 200);
    for path in ["/v1/functions", "/metrics", "/v1/openapi.json"] {
        let reply = http(&d.addr, "GET", path, &[], b"");
        assert_eq!((reply.status, reply.code()), (401, "unauthorized".into()));
        let wrong = http(
            &d.addr,
            "GET",
            path,
            &[("authorization", "Bearer 0123456789abcdef0123456789abcdef")],
            b"",
        );
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        assert_eq!(
            d.http("GET", path, b"").status,
            200,
            "{path} with the token"
        );
    }
    // The CLI finds it through $ALCOVE_TOKEN_FILE with no token given.
    let out = Command::new(ALCOVE)
        .args(["fn", "ls"])
        .env("ALCOVE_SERVER", d.url())
        .env_remove("ALCOVE_TOKEN")
        .env("ALCOVE_TOKEN_FILE", &file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A second start keeps the same token; a token file others can read is refused.
    let data = d.data.clone();
    drop(t.daemon);
    let again = Daemon::start(&data, &[]);
    assert_eq!(again.token.as_deref(), Some(token.as_str()));
    drop(again);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(ALCOVE)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("ALCOVE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{out:?}"
    );
}

#[test]
fn a_function_on_the_host_network_reaches_the_daemon_but_cannot_use_it() {
    let Some(t) = setup(
        "a_function_on_the_host_network_reaches_the_daemon_but_cannot_use_it",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let data = d.data.display().to_string();
    // It asks for /healthz (open to all: proves it reaches the daemon), the
    // function list and the metrics without a token, and looks for the file.
    let script = format!(
        "for p in /healthz /v1/functions /metrics; do \
           curl -s -o /dev/null -w '%{{http_code}} ' http://{addr}$p; done; \
         cat {data}/token /var/lib/alcove/token 2>/dev/null | wc -c",
        addr = d.addr
    );
    deploy(
        d,
        &[
            "spy",
            "--net",
            "host",
            "--handler",
            &format!("sh -c \"{script}\""),
        ],
    );
    let reply = d.http("POST", "/v1/functions/spy/invoke", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text().trim(), "200 401 401 0", "{}", reply.text());

    // The same from `alcove run --net host --deny-net`, which keeps loopback.
    let run = sandbox(&["--net", "host", "--deny-net"], &["sh", "-c", &script]);
    assert_eq!(run.stdout.trim(), "200 401 401 0", "{run:?}");
}

#[test]
fn a_program_squatting_on_the_daemons_port_never_receives_the_token() {
    if !root_or_skip("a_program_squatting_on_the_daemons_port_never_receives_the_token") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let token = "squat-test-0123456789abcdef0123456789";
    std::fs::write(&file, token).unwrap();
    // The squatter answers everything with 200 and keeps what it was sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heard = std::thread::spawn(move || {
        let mut all = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(1) {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                all.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}",
            );
        }
        all
    });
    let out = Command::new(ALCOVE)
        .args(["fn", "ls"])
        .env("ALCOVE_SERVER", format!("http://{addr}"))
        .env_remove("ALCOVE_TOKEN")
        .env("ALCOVE_TOKEN_FILE", &file)
        .output()
        .unwrap();
    let heard = String::from_utf8_lossy(&heard.join().unwrap()).into_owned();
    assert!(
        heard.contains("GET /healthz?proof="),
        "the CLI never asked: {heard}"
    );
    assert!(
        !heard.contains(token),
        "the squatter got the token: {heard}"
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not prove"),
        "{out:?}"
    );
}

fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn slow_and_greedy_clients_are_dropped_while_the_rest_are_served() {
    let Some(t) = setup(
        "slow_and_greedy_clients_are_dropped_while_the_rest_are_served",
        &[
            "--max-connections",
            "16",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
        ],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, &["echo", "--handler", "cat"]);
    // Sixteen clients trickle a header, one byte at a time: they hold every slot.
    let mut slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(&d.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The seventeenth is told so at once.
    let mut over = TcpStream::connect(&d.addr).unwrap();
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Trickling does not keep them alive: each is closed at the header deadline.
    let started = Instant::now();
    for s in &mut slow {
        let _ = s.write_all(b"a");
        let (_, closed) = read_until_closed(s, Duration::from_secs(5));
        assert!(closed, "a slow client was still connected");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body that stops halfway gets 408 at the body deadline.
    let mut half = TcpStream::connect(&d.addr).unwrap();
    let token = d.token.clone().unwrap();
    write!(
        half,
        "POST /v1/functions/echo/invoke HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 1000\r\n\r\nonly-some"
    )
    .unwrap();
    let (answer, _) = read_until_closed(&mut half, Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A file upload that keeps coming, 64 KiB at a time, may take longer
    // than the deadline in all (a large file on a slow link); any other
    // body sent the same way gets 408 at the deadline.
    let created = d.http("POST", "/v1/sandboxes", b"{}");
    assert_eq!(created.status, 201, "{}", created.text());
    let id = serde_json::from_str::<serde_json::Value>(&created.text()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let piece = vec![b's'; 64 << 10];
    let steady = |target: &str| {
        let mut s = TcpStream::connect(&d.addr).unwrap();
        write!(
            s,
            "{target} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            piece.len() * 5
        )
        .unwrap();
        let sending = Instant::now();
        for _ in 0..5 {
            if s.write_all(&piece).is_err() {
                break; // answered and closed already
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        assert!(
            sending.elapsed() > Duration::from_secs(1),
            "it came within the deadline"
        );
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10));
        String::from_utf8_lossy(&answer).into_owned()
    };
    let uploaded = steady(&format!("PUT /v1/sandboxes/{id}/files?path=steady"));
    assert!(uploaded.starts_with("HTTP/1.1 200"), "{uploaded}");
    assert!(
        uploaded.contains(&format!("\"size\":{}", piece.len() * 5)),
        "{uploaded}"
    );
    let invoked = steady("POST /v1/functions/echo/invoke");
    assert!(invoked.starts_with("HTTP/1.1 408"), "{invoked}");
    assert_eq!(
        d.http("DELETE", &format!("/v1/sandboxes/{id}"), b"").status,
        200
    );
    // A kept-alive connection left idle is closed too.
    let mut idle = TcpStream::connect(&d.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        closed,
        "an idle kept-alive connection stayed open past the header timeout"
    );
    // Oversized headers are refused.
    let big = "x".repeat(128 << 10);
    let reply = http(&d.addr, "GET", "/healthz", &[("x-big", &big)], b"");
    assert_eq!(reply.status, 431, "{}", reply.text());
    // And everyone else is served as before.
    let reply = d.http("POST", "/v1/functions/echo/invoke", b"still here");
    assert_eq!((reply.status, reply.text()), (200, "still here".into()));
}

#[test]
fn numbers_out_of_range_are_refused_and_unset_limits_get_the_defaults() {
    let Some(t) = setup(
        "numbers_out_of_range_are_refused_and_unset_limits_get_the_defaults",
        &["--max-timeout", "2m"],
    ) else {
        return;
    };
    let d = &t.daemon;
    for (field, value, range) in [
        ("timeout_ms", "18446744073709551615", "1 to 120000"),
        ("timeout_ms", "0", "1 to 120000"),
        ("output_bytes", "18446744073709551615", "0 to 67108864"),
        ("memory_bytes", "18446744073709551615", "to "),
        ("pids", "1099511627776", "1 to 4096"),
        ("cpus", "1e300", "0.01 to "),
        ("concurrency", "0", "1 to 10000"),
    ] {
        let body = format!(r#"{{"name":"n","handler":["true"],"{field}":{value}}}"#);
        let reply = d.http("POST", "/v1/functions", body.as_bytes());
        assert_eq!(reply.status, 400, "{field}={value}: {}", reply.text());
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(field) && message.contains(range),
            "{field}={value}: {message}"
        );
    }
    deploy(d, &["plain", "--handler", "true"]);
    let shown: Value = d.cli_json(&["show", "plain"]);
    let config = &shown["versions"][0]["config"];
    assert_eq!(config["timeout_ms"], 60_000, "{shown}");
    assert_eq!(config["memory_bytes"], 256u64 << 20, "{shown}");
    assert_eq!(config["pids"], 256, "{shown}");
}

#[test]
fn what_handlers_print_and_what_waits_cannot_grow_the_daemon() {
    let Some(t) = setup(
        "what_handlers_print_and_what_waits_cannot_grow_the_daemon",
        &["--max-queued-bytes", "1M"],
    ) else {
        return;
    };
    let d = &t.daemon;
    let pid = d.child.id();
    deploy(
        d,
        &[
            "flood",
            "--handler",
            "sh -c 'head -c 300000000 /dev/zero; head -c 300000000 /dev/zero >&2'",
            "--timeout",
            "60s",
        ],
    );
    let before = rss_kib(pid);
    let reply = d.http("POST", "/v1/functions/flood/invoke", b"");
    assert_eq!(reply.code(), "response_too_large", "{}", reply.text());
    let record = &reply.json()["error"]["invocation"];
    assert_eq!(record["output_truncated"], true);
    let stderr = record["stderr"].as_str().unwrap();
    assert!(
        stderr.ends_with("KiB]") && stderr.len() < (64 << 10) + 200,
        "{}",
        stderr.len()
    );
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 100 << 10,
        "the daemon grew by {grown} KiB for 600 MB of output"
    );

    // Async bodies wait in a bounded backlog: 3 x 400 KB fit in 1 MiB twice, not three times.
    deploy(d, &["slow", "--handler", "sleep 5", "--concurrency", "1"]);
    let body = vec![b'x'; 400 << 10];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            d.http("POST", "/v1/functions/slow/invoke?async=true", &body)
                .status,
        );
    }
    assert_eq!(statuses, [202, 202, 429]);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_bug_inside_one_invocation_fails_it_and_the_daemon_carries_on() {
    if !cfg!(debug_assertions) {
        println!("SKIPPED a_bug_inside_one_invocation_fails_it...: the fault hook exists in debug builds only");
        return;
    }
    let Some(t) = setup_with_env(
        "a_bug_inside_one_invocation_fails_it_and_the_daemon_carries_on",
        &[],
        &[("ALCOVE_FAULT_PANIC_IN", "buggy")],
    ) else {
        return;
    };
    let d = &t.daemon;
    deploy(d, &["buggy", "--handler", "true"]);
    deploy(d, &["fine", "--handler", "echo ok"]);
    let reply = d.http("POST", "/v1/functions/buggy/invoke", b"");
    assert_eq!(reply.status, 502, "{}", reply.text());
    let error = reply.json()["error"]["invocation"]["error"].to_string();
    assert!(error.contains("ALCOVE_FAULT_PANIC_IN=buggy"), "{error}");
    let queued = d.http("POST", "/v1/functions/buggy/invoke?async=true", b"");
    assert_eq!(queued.status, 202);
    for _ in 0..3 {
        let reply = d.http("POST", "/v1/functions/fine/invoke", b"");
        assert_eq!((reply.status, reply.text()), (200, "ok\n".into()));
    }
    assert!(
        t.daemon.log.lock().unwrap().contains("panicked"),
        "the fault never fired"
    );
}

#[test]
fn sigterm_stops_the_daemon_in_bounded_time_killing_what_runs_and_leaving_nothing() {
    let Some(mut t) = setup(
        "sigterm_stops_the_daemon_in_bounded_time_killing_what_runs_and_leaving_nothing",
        &["--shutdown-grace", "1s", "--max-timeout", "1h"],
    ) else {
        return;
    };
    let d = &mut t.daemon;
    deploy(
        d,
        &["forever", "--handler", "sleep 86399", "--timeout", "1h"],
    );
    let queued = d.http("POST", "/v1/functions/forever/invoke?async=true", b"");
    assert_eq!(queued.status, 202);
    let id = queued.json()["id"].as_str().unwrap().to_owned();
    wait_until("the handler runs", Duration::from_secs(10), || {
        !processes_with("sleep 86399").is_empty()
    });
    // Where the handler runs: its cgroups, in every hierarchy.
    let handler = processes_with("sleep 86399")[0];
    let cgroups: Vec<std::path::PathBuf> = cgroups_of(handler)
        .into_iter()
        .filter(|p| p.iter().any(|c| c == "alcove"))
        .collect();
    assert!(!cgroups.is_empty(), "the handler is in no alcove cgroup");
    let started = Instant::now();
    // SAFETY: kill on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.child.wait().unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(
        processes_with("sleep 86399").is_empty(),
        "the handler outlived the daemon"
    );
    // Its cgroups are gone, but for pooled slots, which stay for the next
    // alcove (another test may be running in one by now).
    assert!(!std::path::Path::new(&format!("/proc/{handler}")).exists());
    for dir in &cgroups {
        let pooled = dir.iter().any(|c| c.to_string_lossy().starts_with("slot-"));
        assert!(pooled || !dir.exists(), "left behind: {}", dir.display());
    }
    let data = d.data.clone();
    let again = Daemon::start(&data, &[]);
    let record = again
        .http("GET", &format!("/v1/invocations/{id}"), b"")
        .json();
    assert_eq!(record["status"], "cancelled", "{record}");
    assert!(
        record["error"].as_str().unwrap().contains("stopped"),
        "{record}"
    );
    let _ = t.dir.path();
}

#[test]
fn a_data_directory_that_is_not_alcoves_is_refused_untouched() {
    if !root_or_skip("a_data_directory_that_is_not_alcoves_is_refused_untouched") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("var");
    std::fs::create_dir_all(system.join("tmp")).unwrap();
    std::fs::write(system.join("tmp/keep"), "a user's file").unwrap();
    std::fs::create_dir(system.join("log")).unwrap();
    std::fs::set_permissions(&system, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(ALCOVE)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&system)
        .env_remove("ALCOVE_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an alcove data directory"),
        "{out:?}"
    );
    let mode = std::fs::metadata(&system).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert!(system.join("tmp/keep").exists());
    assert!(!system.join("alcove.db").exists());
}

#[test]
fn removing_functions_reclaims_code_no_version_shares() {
    let Some(t) = setup("removing_functions_reclaims_code_no_version_shares", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = t.dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(code.join("main.sh"), "echo hi\n").unwrap();
    let other = t.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("main.sh"), "echo other\n").unwrap();
    let code_arg = code.to_str().unwrap();
    deploy(d, &["a", "--handler", "sh main.sh", "--code", code_arg]);
    deploy(d, &["b", "--handler", "sh main.sh", "--code", code_arg]);
    deploy(
        d,
        &[
            "c",
            "--handler",
            "sh main.sh",
            "--code",
            other.to_str().unwrap(),
        ],
    );
    let stored = || std::fs::read_dir(d.data.join("code")).unwrap().count();
    assert_eq!(stored(), 2);
    assert_eq!(d.cli(&["rm", "c"]).0, 0);
    assert_eq!(stored(), 1, "c's code was not reclaimed");
    assert_eq!(d.cli(&["rm", "a"]).0, 0);
    assert_eq!(stored(), 1, "b still runs the code a shared");
    let reply = d.http("POST", "/v1/functions/b/invoke", b"");
    assert_eq!(reply.text(), "hi\n");
    assert_eq!(d.cli(&["rm", "b"]).0, 0);
    assert_eq!(stored(), 0);
}
