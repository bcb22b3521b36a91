//! Functions as web endpoints (`/fn/NAME`), end to end against a real
//! `alcove serve`: the CGI request variables, CGI responses, streaming with
//! backpressure, public functions, and clients that go away.

mod common;
use common::daemon::{code, deploy, http, setup, Daemon, Reply};
use common::wait_until;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn bearer(d: &Daemon) -> String {
    format!("Bearer {}", d.token.as_deref().expect("the daemon's token"))
}

/// The body of a chunked reply read to its end (the test helper does not
/// decode chunks); panics on a body that was cut.
fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut reader = BufReader::new(body);
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut reader).expect("a complete chunked body") {
        out.extend_from_slice(&chunk);
    }
    out
}

/// One chunk; `Ok(None)` at the last (empty) chunk, `Err` when the body was
/// cut before it.
fn next_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("the connection ended before the last chunk".into());
    }
    let size =
        usize::from_str_radix(line.trim(), 16).map_err(|_| format!("chunk size {line:?}"))?;
    let mut chunk = vec![0; size + 2];
    r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

/// A request left open: its status line and headers read, its body read
/// chunk by chunk when the test wants.
struct Open {
    reader: BufReader<TcpStream>,
    head: String,
}

impl Open {
    fn get(d: &Daemon, path: &str) -> Open {
        let stream = TcpStream::connect(&d.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer(d)
        );
        (&stream).write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "no reply: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        Open { reader, head }
    }

    fn header(&self, name: &str) -> String {
        self.head
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_owned())
            .unwrap_or_else(|| panic!("no {name} in {}", self.head))
    }
}

fn record(d: &Daemon, id: &str) -> Value {
    let reply = d.http("GET", &format!("/v1/invocations/{id}"), b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn finished(d: &Daemon, id: &str) -> Value {
    let mut last = Value::Null;
    wait_until(
        "the invocation is recorded as ended",
        Duration::from_secs(30),
        || {
            last = record(d, id);
            last["status"] != "running" && last["status"] != "queued"
        },
    );
    last
}

#[test]
fn an_http_function_sees_the_request_and_sets_status_headers_and_type() {
    let Some(t) = setup(
        "an_http_function_sees_the_request_and_sets_status_headers_and_type",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let script = r#"
printf 'Status: 201 Created\r\nContent-Type: text/x-test\r\nX-Echo: %s\r\nConnection: keep-alive\r\n\r\n' "$HTTP_X_TRACE"
printf 'method=%s\npath=%s\nquery=%s\ntrace=%s\nbody=%s\n' "$REQUEST_METHOD" "$PATH_INFO" "$QUERY_STRING" "$HTTP_X_TRACE" "$(cat)"
env
"#;
    deploy(d, "echo", &code(t.dir.path(), "echo", script), &["--http"]);
    let auth = bearer(d);
    let reply = http(
        &d.addr,
        "PUT",
        "/fn/echo/a%20b/c?x=1&y=two",
        &[("authorization", &auth), ("x-trace", "t-42")],
        b"payload",
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/x-test"));
    assert_eq!(reply.header("x-echo"), Some("t-42"));
    // hyper says `close` (the request asked for it); the handler's `keep-alive` is gone.
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(reply.header("x-alcove-invocation").is_some());
    let body = String::from_utf8(dechunk(&reply.body)).unwrap();
    for line in [
        "method=PUT",
        "path=/a b/c",
        "query=x=1&y=two",
        "trace=t-42",
        "body=payload",
        "CONTENT_LENGTH=7",
        "SCRIPT_NAME=/fn/echo",
        "REQUEST_URI=/fn/echo/a%20b/c?x=1&y=two",
        "SERVER_PROTOCOL=HTTP/1.1",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
    }
    let token = d.token.as_deref().unwrap();
    assert!(
        !body.contains(token),
        "the handler saw alcove's token:\n{body}"
    );
    assert!(!body.contains("HTTP_AUTHORIZATION"), "{body}");

    // With and without a trailing slash, the function's root is "/".
    for path in ["/fn/echo", "/fn/echo/", "/fn/echo/?q=1"] {
        let reply = http(&d.addr, "GET", path, &[("authorization", &auth)], b"");
        assert_eq!(reply.status, 201, "{path}: {}", reply.text());
        let body = String::from_utf8(dechunk(&reply.body)).unwrap();
        assert!(body.lines().any(|l| l == "path=/"), "{path}:\n{body}");
    }

    // The same function through /v1/.../invoke: a POST, its response parsed alike.
    let reply = d.http("POST", "/v1/functions/echo/invoke", b"via-v1");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("x-echo"), Some(""));
    assert!(
        reply.text().contains("method=POST\npath=/\n"),
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("body=via-v1"), "{}", reply.text());
    assert!(!reply.text().contains(token));
    assert_eq!(reply.header("x-alcove-error"), None);
    // The CLI takes the handler's own 201 for its answer, not for an error.
    let (status, out, err) = d.cli(&["invoke", "echo", "--data", "via-cli"]);
    assert_eq!(status, 0, "{err}");
    assert!(out.contains("body=via-cli"), "{out}");
}

#[test]
fn body_functions_answer_through_fn_as_through_invoke_and_the_example_speaks_http() {
    let Some(t) = setup(
        "body_functions_answer_through_fn_as_through_invoke_and_the_example_speaks_http",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let shell = format!("{EXAMPLES}/hello-shell");
    let (status, _, err) = d.cli(&[
        "deploy",
        "hello-sh",
        "--handler",
        "sh /fn/handler.sh",
        "--code",
        &shell,
        "--env",
        "GREETING=hi",
    ]);
    assert_eq!(status, 0, "{err}");
    let reply = d.http("POST", "/fn/hello-sh", b"Ada");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hi, Ada\n");
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.header("x-alcove-status"), Some("exited"));
    // A failing body function: the JSON error invoke gives.
    let reply = d.http("GET", "/fn/hello-sh/any/path", b"");
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (502, "function_failed")
    );

    let python = format!("{EXAMPLES}/hello-python");
    let (status, _, err) = d.cli(&[
        "deploy",
        "hello",
        "--http",
        "--handler",
        "python3 /fn/main.py",
        "--code",
        &python,
    ]);
    assert_eq!(status, 0, "{err}");
    let (status, out, err) = d.cli(&["invoke", "hello", "--data", r#"{"name":"Ada"}"#]);
    assert_eq!(status, 0, "{err}");
    let greeting: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(greeting["greeting"], "hello, Ada", "{out}");
    assert_eq!(greeting["method"], "POST", "{out}");
    let reply = d.http("GET", "/fn/hello/greet?name=Bob", b"");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-greeting"), Some("hello"));
    let greeting: Value = serde_json::from_slice(&dechunk(&reply.body)).unwrap();
    assert_eq!(
        (
            &greeting["greeting"],
            &greeting["method"],
            &greeting["path"],
            &greeting["query"]
        ),
        (
            &Value::from("hello, Bob"),
            &Value::from("GET"),
            &Value::from("/greet"),
            &Value::from("name=Bob")
        )
    );

    // The streaming example, deployed public as its comment says.
    let countdown = format!("{EXAMPLES}/countdown-shell");
    let (status, _, err) = d.cli(&[
        "deploy",
        "countdown",
        "--http",
        "--public",
        "--handler",
        "sh /fn/handler.sh",
        "--code",
        &countdown,
    ]);
    assert_eq!(status, 0, "{err}");
    let reply = http(&d.addr, "GET", "/fn/countdown?2", &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(dechunk(&reply.body), b"2...\n1...\nliftoff\n");
}

#[test]
fn public_functions_answer_without_the_token_and_others_do_not() {
    let Some(t) = setup(
        "public_functions_answer_without_the_token_and_others_do_not",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let script =
        "printf 'Content-Type: text/plain\\n\\nauth=%s\\n' \"${HTTP_AUTHORIZATION:-none}\"\n";
    let dir = code(t.dir.path(), "who", script);
    deploy(d, "open", &dir, &["--http", "--public"]);
    deploy(d, "closed", &dir, &["--http"]);
    let shown = d.http("GET", "/v1/functions/open", b"").json();
    assert_eq!(shown["versions"][0]["config"]["public"], true);
    assert_eq!(shown["versions"][0]["config"]["protocol"], "http");

    let anon = |path: &str, headers: &[(&str, &str)]| -> Reply {
        http(&d.addr, "GET", path, headers, b"")
    };
    let reply = anon("/fn/open/x", &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(dechunk(&reply.body), b"auth=none\n");
    // Its own scheme's Authorization reaches a public function; alcove's never does.
    let reply = anon("/fn/open", &[("authorization", "Bearer someone-else")]);
    assert_eq!(dechunk(&reply.body), b"auth=Bearer someone-else\n");
    let reply = d.http("GET", "/fn/open", b"");
    assert_eq!(dechunk(&reply.body), b"auth=none\n");

    for path in [
        "/fn/closed",
        "/fn/closed/x",
        "/fn/missing",
        "/v1/functions/open",
        "/v1/functions",
    ] {
        let reply = anon(path, &[]);
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "unauthorized"),
            "{path}"
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let reply = anon("/fn/closed", &[("authorization", "Bearer wrong")]);
    assert_eq!(reply.status, 401);
    assert_eq!(d.http("GET", "/fn/closed", b"").status, 200);
    assert_eq!(
        d.http("GET", "/fn/missing", b"").code(),
        "function_not_found"
    );

    // Both settings are inherited by the next version; --public=false ends it.
    let (status, _, err) = d.cli(&["config", "open", "--env", "A=1"]);
    assert_eq!(status, 0, "{err}");
    assert_eq!(anon("/fn/open", &[]).status, 200);
    let (status, _, err) = d.cli(&["config", "open", "--public=false"]);
    assert_eq!(status, 0, "{err}");
    assert_eq!(anon("/fn/open", &[]).status, 401);
    assert_eq!(
        dechunk(&d.http("GET", "/fn/open", b"").body),
        b"auth=none\n"
    );
}

#[test]
fn a_public_function_cannot_become_a_service_worker_over_the_console() {
    let Some(t) = setup(
        "a_public_function_cannot_become_a_service_worker_over_the_console",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    // What a hostile page would serve to take over every path of the origin,
    // the console's included.
    let script = "printf 'Content-Type: text/javascript\\nService-Worker-Allowed: /\\n\\nself.onfetch = e => 0;\\n'\n";
    let dir = code(t.dir.path(), "sw", script);
    deploy(d, "sw", &dir, &["--http", "--public"]);
    let reply = http(&d.addr, "GET", "/fn/sw/sw.js", &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/javascript"));
    assert_eq!(
        reply.header("service-worker-allowed"),
        None,
        "the header that widens a worker's scope reached the client"
    );
    // A browser fetching it as a worker script says so: refused, not run.
    let before = d.http("GET", "/v1/functions/sw/logs", b"").json()["invocations"]
        .as_array()
        .map_or(0, Vec::len);
    let reply = http(
        &d.addr,
        "GET",
        "/fn/sw/sw.js",
        &[("service-worker", "script")],
        b"",
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("service worker"), "{}", reply.text());
    let after = d.http("GET", "/v1/functions/sw/logs", b"").json()["invocations"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after, "the refused request ran the function");
    // The console's own files say no page of another context gets a handle on them.
    let console = http(&d.addr, "GET", "/ui/", &[], b"");
    assert_eq!(console.status, 200);
    assert_eq!(
        console.header("cross-origin-opener-policy"),
        Some("same-origin")
    );
}

#[test]
fn a_streamed_response_reaches_the_client_while_the_handler_runs() {
    let Some(t) = setup(
        "a_streamed_response_reaches_the_client_while_the_handler_runs",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let script = "printf 'Status: 200\\r\\nContent-Type: text/plain\\r\\n\\r\\nfirst\\n'\nsleep 4\necho second\n";
    deploy(
        d,
        "slow",
        &code(t.dir.path(), "slow", script),
        &["--http", "--timeout", "30s"],
    );
    let mut open = Open::get(d, "/fn/slow");
    assert!(open.head.starts_with("HTTP/1.1 200"), "{}", open.head);
    let id = open.header("x-alcove-invocation");
    let first = next_chunk(&mut open.reader).unwrap().unwrap();
    assert_eq!(first, b"first\n");
    // The first line came while the handler still ran: it was not buffered to the end.
    assert_eq!(record(d, &id)["status"], "running");
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut open.reader).unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second\n");
    let r = finished(d, &id);
    assert_eq!(
        (r["status"].as_str(), r["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );
}

#[test]
fn a_slow_reader_slows_the_handler_and_the_output_limit_cuts_the_stream() {
    let Some(t) = setup(
        "a_slow_reader_slows_the_handler_and_the_output_limit_cuts_the_stream",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    // Far more than the kernel's pipe and loopback socket buffers hold.
    let size = 48 << 20;
    let script = format!("printf '\\n'\nhead -c {size} /dev/zero\n");
    let dir = code(t.dir.path(), "big", &script);
    deploy(
        d,
        "big",
        &dir,
        &["--http", "--output-limit", "64M", "--timeout", "60s"],
    );
    let mut open = Open::get(d, "/fn/big");
    let id = open.header("x-alcove-invocation");
    // Not reading: the handler cannot finish while the daemon holds no more
    // than a pipe's and a socket's worth.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        record(d, &id)["status"],
        "running",
        "the daemon buffered the whole response"
    );
    let mut total = 0usize;
    while let Some(chunk) = next_chunk(&mut open.reader).unwrap() {
        assert!(chunk.iter().all(|&b| b == 0));
        total += chunk.len();
    }
    assert_eq!(total, size);
    assert_eq!(finished(d, &id)["exit_code"], 0);

    // Past its output limit the stream is cut and the record says so.
    deploy(d, "big", &dir, &["--http", "--output-limit", "1M"]);
    let mut open = Open::get(d, "/fn/big");
    let id = open.header("x-alcove-invocation");
    let mut total = 0usize;
    let cut = loop {
        match next_chunk(&mut open.reader) {
            Ok(Some(chunk)) => total += chunk.len(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(cut, "a body past the output limit ended as if complete");
    assert!(total < 1 << 20, "{total} bytes past a 1 MiB limit");
    assert_eq!(finished(d, &id)["output_truncated"], true);
}

#[test]
fn bad_header_blocks_are_502_and_a_failure_after_the_headers_cuts_the_stream() {
    let Some(t) = setup(
        "bad_header_blocks_are_502_and_a_failure_after_the_headers_cuts_the_stream",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let cases = [
        ("plain", "echo hello world\n", "line 1"),
        (
            "unended",
            "printf 'Status: 200\\n'\n",
            "ended before the empty line",
        ),
        ("status", "printf 'Status: 999\\n\\n'\n", "Status"),
        (
            "many",
            "i=0; while [ $i -lt 150 ]; do echo \"X-N$i: v\"; i=$((i+1)); done; echo\n",
            "over 100 lines",
        ),
    ];
    for (name, script, says) in cases {
        deploy(d, name, &code(t.dir.path(), name, script), &["--http"]);
        let reply = d.http("GET", &format!("/fn/{name}"), b"");
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (502, "bad_function_response"),
            "{name}: {}",
            reply.text()
        );
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(says) && message.contains("empty line"),
            "{name}: {message}"
        );
        assert!(reply.header("x-alcove-invocation").is_some(), "{name}");
        assert_eq!(
            reply.header("x-alcove-error"),
            Some("bad_function_response")
        );
    }
    let (status, _, err) = d.cli(&["invoke", "plain"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("bad_function_response"), "{err}");
    // A handler that fails before any header: the invocation's own error.
    deploy(
        d,
        "dies",
        &code(t.dir.path(), "dies", "exit 7\n"),
        &["--http"],
    );
    let reply = d.http("GET", "/fn/dies", b"");
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (502, "function_failed")
    );

    deploy(
        d,
        "half",
        &code(
            t.dir.path(),
            "half",
            "printf 'Status: 200\\n\\npartial'\nexit 3\n",
        ),
        &["--http"],
    );
    let mut open = Open::get(d, "/fn/half");
    let id = open.header("x-alcove-invocation");
    let mut body = Vec::new();
    let outcome = loop {
        match next_chunk(&mut open.reader) {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert_eq!(body, b"partial");
    assert!(
        outcome.is_err(),
        "a stream whose handler failed ended as complete"
    );
    assert_eq!(finished(d, &id)["exit_code"], 3);
}

#[test]
fn a_client_that_goes_away_mid_stream_leaves_the_daemon_serving() {
    let Some(t) = setup(
        "a_client_that_goes_away_mid_stream_leaves_the_daemon_serving",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let script = "printf '\\n'\nwhile :; do echo tick || exit 9; sleep 0.05; done\n";
    deploy(
        d,
        "ticker",
        &code(t.dir.path(), "ticker", script),
        &["--http", "--timeout", "60s"],
    );
    let mut open = Open::get(d, "/fn/ticker");
    let id = open.header("x-alcove-invocation");
    assert_eq!(next_chunk(&mut open.reader).unwrap().unwrap(), b"tick\n");
    drop(open);
    // It ends well before its timeout, and its record says why.
    let r = finished(d, &id);
    assert!(r["wall_ms"].as_f64().unwrap() < 30_000.0, "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped reading"), "{r}");
    assert_eq!(d.http("GET", "/healthz", b"").status, 200);
    let mut again = Open::get(d, "/fn/ticker");
    assert_eq!(next_chunk(&mut again.reader).unwrap().unwrap(), b"tick\n");
}
