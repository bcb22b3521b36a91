//! Hostile clients and handlers against `/fn/NAME`, end to end against a
//! real `alcove serve`: the daemon's token must never reach a handler, and
//! path tricks on a public function must never reach another function.

mod common;
use common::daemon::{code, deploy, http, setup, Reply};

/// The body of a reply, chunked or not (a `body` function's is not).
fn body(reply: &Reply) -> String {
    if reply.header("transfer-encoding") != Some("chunked") {
        return reply.text();
    }
    let mut out = Vec::new();
    let mut rest = &reply.body[..];
    while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
        rest = &rest[nl + 2 + size + 2..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_daemons_token_never_reaches_a_public_handler_whatever_header_carries_it() {
    let Some(s) = setup(
        "the_daemons_token_never_reaches_a_public_handler_whatever_header_carries_it",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    let token = d.token.clone().expect("the daemon's token");
    let env = "printf 'Content-Type: text/plain\\n\\n'; env\n";
    deploy(
        d,
        "pub",
        &code(s.dir.path(), "pub", env),
        &["--http", "--public"],
    );
    deploy(
        d,
        "pubbody",
        &code(s.dir.path(), "pubbody", "env\n"),
        &["--public"],
    );

    let lower = format!("bearer {token}");
    let spaced = format!("Bearer  {token}");
    let scheme = format!("Token {token}");
    for function in ["pub", "pubbody"] {
        for (header, value) in [
            ("authorization", lower.as_str()),
            ("authorization", spaced.as_str()),
            ("authorization", scheme.as_str()),
            ("x-api-key", token.as_str()),
        ] {
            let reply = http(
                &d.addr,
                "GET",
                &format!("/fn/{function}/x"),
                &[(header, value), ("x-seen", "yes")],
                b"",
            );
            // These do not authenticate; the public function still runs.
            assert_eq!(reply.status, 200, "{function} {header}: {}", reply.text());
            let env = body(&reply);
            assert!(env.contains("HTTP_X_SEEN=yes"), "{function}: {env}");
            assert!(
                !env.contains(&token),
                "{function}: the daemon's token reached the handler in {header}: {env}"
            );
        }
        // A public function's own credentials still reach it.
        let reply = http(
            &d.addr,
            "GET",
            &format!("/fn/{function}/x"),
            &[("authorization", "Bearer the-functions-own")],
            b"",
        );
        assert!(
            body(&reply).contains("HTTP_AUTHORIZATION=Bearer the-functions-own"),
            "{}",
            reply.text()
        );
    }
}

#[test]
fn path_tricks_on_a_public_function_reach_only_that_function() {
    let Some(s) = setup(
        "path_tricks_on_a_public_function_reach_only_that_function",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    let pub_code = code(
        s.dir.path(),
        "pub",
        "printf 'Content-Type: text/plain\\n\\nPUBLIC %s\\n' \"$PATH_INFO\"\n",
    );
    deploy(d, "pub", &pub_code, &["--http", "--public"]);
    let private = code(s.dir.path(), "priv", "printf '\\nPRIVATE\\n'\n");
    deploy(d, "priv", &private, &["--http"]);

    for path in [
        "/fn/pub/../priv",
        "/fn/pub/%2e%2e/priv",
        "/fn/pub/..%2fpriv",
        "/fn/pub/../../v1/functions",
        "/fn/pub//../priv",
    ] {
        let reply = http(&d.addr, "GET", path, &[], b"");
        let text = body(&reply);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert!(text.starts_with("PUBLIC /"), "{path}: {text}");
        assert!(!text.contains("PRIVATE"), "{path}: {text}");
    }
    for path in [
        "/fn/pub%2f..%2fpriv",
        "/fn/%70riv",
        "/fn/PRIV",
        "//fn/priv",
        "/fn//priv",
        "/fn/priv%00",
        "/fn/../fn/priv",
    ] {
        let reply = http(&d.addr, "GET", path, &[], b"");
        assert_eq!(reply.status, 401, "{path}: {}", reply.text());
        assert!(!reply.text().contains("PRIVATE"), "{path}");
    }
}

#[test]
fn an_anonymous_caller_never_reads_alcoves_own_reasons_for_a_failure() {
    // alcove's reasons name host paths: here a bind source gone since the deploy.
    let allowed = tempfile::tempdir().unwrap();
    let source = allowed.path().join("host-only-name-4711");
    std::fs::create_dir(&source).unwrap();
    let allow = allowed.path().to_str().unwrap().to_owned();
    let Some(s) = setup(
        "an_anonymous_caller_never_reads_alcoves_own_reasons_for_a_failure",
        &["--allow-bind", &allow],
    ) else {
        return;
    };
    let d = &s.daemon;
    let bind = format!("{}:/data", source.display());
    let script = "ls /data\n";
    deploy(
        d,
        "gone",
        &code(s.dir.path(), "gone", script),
        &["--public", "--bind", &bind],
    );
    std::fs::remove_dir(&source).unwrap();
    let anon = http(&d.addr, "GET", "/fn/gone/", &[], b"");
    assert_eq!(anon.status, 502, "{}", anon.text());
    assert_eq!(anon.code(), "function_not_started", "{}", anon.text());
    assert!(
        !anon.text().contains("host-only-name-4711"),
        "a host path reached an anonymous caller: {}",
        anon.text()
    );
    // The owner, with the token, reads the reason.
    let owner = d.http("GET", "/fn/gone/", b"");
    assert_eq!(owner.code(), "function_not_started", "{}", owner.text());
    assert!(
        owner.text().contains("host-only-name-4711"),
        "{}",
        owner.text()
    );
}

#[test]
fn an_anonymous_caller_of_a_failing_public_function_gets_the_error_not_its_log() {
    let Some(s) = setup(
        "an_anonymous_caller_of_a_failing_public_function_gets_the_error_not_its_log",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    let script = "echo 'db password is hunter2' >&2; exit 3\n";
    deploy(
        d,
        "fails",
        &code(s.dir.path(), "fails", script),
        &["--public"],
    );
    let http_code = code(s.dir.path(), "failsh", script);
    deploy(d, "failsh", &http_code, &["--http", "--public"]);
    for function in ["fails", "failsh"] {
        let path = format!("/fn/{function}/x");
        let anon = http(&d.addr, "GET", &path, &[], b"");
        assert_eq!(
            (anon.status, anon.code().as_str()),
            (502, "function_failed"),
            "{function}: {}",
            anon.text()
        );
        assert!(
            !anon.text().contains("hunter2"),
            "{function}: {}",
            anon.text()
        );
        // The owner finds the log by the invocation's id, with the token.
        let id = anon
            .header("x-alcove-invocation")
            .expect("the invocation's id");
        let record = d.http("GET", &format!("/v1/invocations/{id}"), b"").json();
        assert!(
            record["stderr"].as_str().unwrap().contains("hunter2"),
            "{record}"
        );
        // A caller with the token sees the record in the error, as with invoke.
        let owner = d.http("GET", &path, b"");
        assert_eq!(owner.status, 502);
        assert!(
            owner.text().contains("hunter2"),
            "{function}: {}",
            owner.text()
        );
    }
}

#[test]
fn a_streamed_handlers_stderr_is_its_log_not_lost() {
    let Some(s) = setup("a_streamed_handlers_stderr_is_its_log_not_lost", &[]) else {
        return;
    };
    let d = &s.daemon;
    let script = "echo 'handled one' >&2; printf 'Status: 201\\n\\nbody\\n'\n";
    deploy(d, "logs", &code(s.dir.path(), "logs", script), &["--http"]);
    let reply = d.http("GET", "/fn/logs/x", b"");
    assert_eq!((reply.status, body(&reply).as_str()), (201, "body\n"));
    let id = reply.header("x-alcove-invocation").unwrap();
    let record = d.http("GET", &format!("/v1/invocations/{id}"), b"").json();
    assert_eq!(record["stderr"], "handled one\n", "{record}");
}

#[test]
fn a_response_with_two_content_types_or_locations_is_refused_not_passed_on() {
    let Some(s) = setup(
        "a_response_with_two_content_types_or_locations_is_refused_not_passed_on",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    for (name, block) in [
        (
            "twotypes",
            "Content-Type: text/plain\\nContent-Type: text/html\\n",
        ),
        (
            "twolocations",
            "Location: /a\\nLocation: http://elsewhere/\\n",
        ),
    ] {
        let script = format!("printf '{block}\\n<script>x</script>\\n'\n");
        deploy(d, name, &code(s.dir.path(), name, &script), &["--http"]);
        let reply = d.http("GET", &format!("/fn/{name}/x"), b"");
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (502, "bad_function_response"),
            "{name}: {:?} {}",
            reply.headers,
            reply.text()
        );
        assert!(reply.text().contains("line 2"), "{}", reply.text());
        assert!(!reply.text().contains("<script>"));
    }
}

#[test]
fn clients_that_stop_reading_cannot_make_the_daemon_hold_responses_past_its_byte_limit() {
    use std::io::Write;
    let Some(s) = setup(
        "clients_that_stop_reading_cannot_make_the_daemon_hold_responses_past_its_byte_limit",
        &["--max-queued-bytes", "16M"],
    ) else {
        return;
    };
    let d = &s.daemon;
    let big = code(s.dir.path(), "big", "head -c 6000000 /dev/zero\n");
    deploy(d, "big", &big, &["--public"]);
    // Clients that ask and never read: each finished response waits for them.
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let stream = std::net::TcpStream::connect(&d.addr).unwrap();
        let size: libc::c_int = 4096;
        // SAFETY: a live socket, and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        (&stream)
            .write_all(b"GET /fn/big/x HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stalled.push(stream);
    }
    common::wait_until(
        "the stalled invocations end",
        std::time::Duration::from_secs(30),
        || {
            let logs = d
                .http("GET", "/v1/functions/big/logs?limit=100", b"")
                .json();
            logs["invocations"].as_array().map_or(0, Vec::len) >= 6
        },
    );
    // Two 6 MB responses fit in 16M; the rest were refused, and so is the
    // next. An invocation is recorded a moment before its response is held,
    // so the next request may still slip in while the last holds are taken:
    // it is read whole (and so releases at once), and the next one is asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reply = loop {
        let reply = http(&d.addr, "GET", "/fn/big/x", &[], b"");
        if reply.status == 429 || std::time::Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(reply.status, 429, "{:?}", reply.headers);
    assert!(reply.text().contains("not yet taken"), "{}", reply.text());
    assert!(reply.header("x-alcove-invocation").is_some());
    // Once those clients go, whole responses go out again.
    drop(stalled);
    common::wait_until(
        "the held bytes are given back",
        std::time::Duration::from_secs(10),
        || http(&d.addr, "GET", "/fn/big/x", &[], b"").status == 200,
    );
    let reply = http(&d.addr, "GET", "/fn/big/x", &[], b"");
    assert_eq!((reply.status, reply.body.len()), (200, 6_000_000));
}
