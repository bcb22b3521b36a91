//! The functions platform end to end: a real `alcove serve` on a loopback
//! port with a temp data dir, driven over HTTP and through `alcove fn`.

mod common;
use common::daemon::{http, setup, Daemon, Reply};
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// The value of one sample in Prometheus text, if the daemon exports it.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// The value of one sample in Prometheus text; a sample the daemon does not
/// export fails the test (read as 0, a renamed metric would pass every check).
fn metric(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("/metrics has no sample {name}:\n{text}"))
}

/// A counter's value before anything counted: a labelled series appears
/// only once it is first incremented, so absence here means zero.
fn baseline(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or(0.0)
}

#[test]
fn deploy_invoke_versions_and_rollback_through_the_cli_and_http() {
    let Some(t) = setup(
        "deploy_invoke_versions_and_rollback_through_the_cli_and_http",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;

    let python = format!("{EXAMPLES}/hello-python");
    let (code, out, err) = d.cli(&[
        "deploy",
        "hello",
        "--http",
        "--handler",
        "python3 /fn/main.py",
        "--code",
        &python,
        "--memory",
        "128M",
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("deployed hello version 1"), "{out}");
    let (code, out, err) = d.cli(&["invoke", "hello", "--data", r#"{"name":"Ada"}"#]);
    assert_eq!(code, 0, "{err}");
    let answer = serde_json::from_str::<Value>(&out).unwrap();
    assert_eq!(
        (&answer["greeting"], &answer["version"]),
        (&json!("hello, Ada"), &json!("1")),
        "{out}"
    );

    // The example is an HTTP handler: its own status comes through invoke too.
    let reply = d.http("POST", "/v1/functions/hello/invoke", br#"{"name":"curl"}"#);
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["greeting"], "hello, curl");
    assert_eq!(reply.header("x-alcove-status"), Some("exited"));
    let id = reply.header("x-alcove-invocation").unwrap().to_owned();
    let record = d.cli_json(&["result", &id]);
    assert_eq!(
        (record["function"].clone(), record["exit_code"].clone()),
        (json!("hello"), json!(0))
    );
    assert!(
        record["stderr"]
            .as_str()
            .unwrap()
            .contains(&format!("greeting curl (invocation {id})")),
        "{record}"
    );
    assert!(
        record["memory_peak_bytes"].as_u64().unwrap() > 0,
        "{record}"
    );

    // Versions: each deploy is a new one; rollback moves latest.
    let shell = format!("{EXAMPLES}/hello-shell");
    for greeting in ["GREETING=one", "GREETING=two"] {
        let (code, _, err) = d.cli(&[
            "deploy",
            "sh",
            "--handler",
            "sh /fn/handler.sh",
            "--code",
            &shell,
            "--env",
            greeting,
        ]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(d.cli(&["invoke", "sh", "--data", "Ada"]).1, "two, Ada\n");
    assert_eq!(
        d.cli(&["invoke", "sh", "--data", "Ada", "--version", "1"])
            .1,
        "one, Ada\n"
    );
    let (code, out, _) = d.cli(&["rollback", "sh", "1"]);
    assert_eq!((code, out.as_str()), (0, "sh: latest is now version 1\n"));
    assert_eq!(d.cli(&["invoke", "sh", "--data", "Ada"]).1, "one, Ada\n");
    let shown = d.cli_json(&["show", "sh"]);
    assert_eq!(
        (
            shown["latest"].clone(),
            shown["versions"].as_array().unwrap().len()
        ),
        (json!(1), 2)
    );
    assert_eq!(
        shown["versions"][0]["code_digest"], shown["versions"][1]["code_digest"],
        "same code, stored once"
    );
    let listed = d.cli_json(&["ls"]);
    let names: Vec<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "sh"]);

    // A failing handler: exit 1 from the CLI, with its log.
    let (code, _, err) = d.cli(&["invoke", "sh", "--data", ""]);
    assert_eq!(code, 1);
    assert!(
        err.contains("function_failed") && err.contains("no name in the request"),
        "{err}"
    );

    let (code, out, _) = d.cli(&["rm", "sh"]);
    assert_eq!((code, out.as_str()), (0, "removed sh\n"));
    let (code, _, err) = d.cli(&["invoke", "sh", "--data", "x"]);
    assert_eq!(code, 125);
    assert!(err.contains("function_not_found"), "{err}");
}

#[test]
fn async_invocations_are_fetched_later_and_retried() {
    let Some(t) = setup("async_invocations_are_fetched_later_and_retried", &[]) else {
        return;
    };
    let d = &t.daemon;
    assert_eq!(
        d.cli(&["deploy", "ok", "--handler", "sh -c 'echo got; cat'"])
            .0,
        0
    );
    assert_eq!(
        d.cli(&[
            "deploy",
            "bad",
            "--handler",
            "sh -c 'echo attempt >&2; exit 7'"
        ])
        .0,
        0
    );

    let (code, id, _) = d.cli(&["invoke", "ok", "--async", "--data", "payload"]);
    assert_eq!(code, 0);
    let record = d.cli_json(&["result", id.trim(), "--wait"]);
    assert_eq!(
        (record["status"].clone(), record["response"].clone()),
        (json!("exited"), json!("got\npayload"))
    );
    assert_eq!(record["async"], true);

    let queued = d.http("POST", "/v1/functions/bad/invoke?async=true&retries=2", b"");
    assert_eq!(queued.status, 202);
    let id = queued.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        queued.header("location"),
        Some(format!("/v1/invocations/{id}").as_str())
    );
    let (code, out, _) = d.cli(&["result", &id, "--wait", "--json"]);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 1, "a failed invocation's result exits 1");
    assert_eq!(
        (record["exit_code"].clone(), record["attempts"].clone()),
        (json!(7), json!(3)),
        "{record}"
    );
}

#[test]
fn secrets_reach_the_handler_but_never_the_api() {
    let Some(t) = setup("secrets_reach_the_handler_but_never_the_api", &[]) else {
        return;
    };
    let d = &t.daemon;
    let value = "hunter2-7f3a9c";
    let handler = "sh -c 'wc -c < /run/secrets/db_password; echo x > /run/secrets/db_password 2>/dev/null && echo WRITABLE; echo done'";
    let (code, _, err) = d.cli(&[
        "deploy",
        "sec",
        "--handler",
        handler,
        "--secret",
        &format!("db_password={value}"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = d.cli(&["invoke", "sec"]);
    assert_eq!(
        (code, out.as_str()),
        (0, format!("{}\ndone\n", value.len()).as_str()),
        "{err}"
    );

    let shown = d.cli_json(&["show", "sec"]);
    assert_eq!(
        shown["versions"][0]["config"]["secrets"],
        json!(["db_password"]),
        "names are listed"
    );
    for path in [
        "/v1/functions",
        "/v1/functions/sec",
        "/v1/functions/sec/logs",
        "/metrics",
    ] {
        let reply = d.http("GET", path, b"");
        assert_eq!(reply.status, 200);
        assert!(
            !reply.text().contains(value),
            "{path} shows the secret's value"
        );
    }
    assert!(
        !d.log.lock().unwrap().contains(value),
        "the daemon's log shows the secret"
    );
}

#[test]
fn listings_filter_and_page_and_the_last_hour_is_charted() {
    let Some(t) = setup("listings_filter_and_page_and_the_last_hour_is_charted", &[]) else {
        return;
    };
    let d = &t.daemon;
    // Succeeds when sent "ok", fails (exit 1) otherwise.
    let (code, _, err) = d.cli(&[
        "deploy",
        "mixed",
        "--handler",
        "sh -c 'read -r x; echo \"$x\"; [ \"$x\" = ok ]'",
    ]);
    assert_eq!(code, 0, "{err}");
    for body in ["ok", "bad", "ok", "bad", "ok"] {
        let reply = d.http("POST", "/v1/functions/mixed/invoke", body.as_bytes());
        assert_eq!(
            reply.status,
            if body == "ok" { 200 } else { 502 },
            "{}",
            reply.text()
        );
    }
    let list = |query: &str| -> Value {
        let reply = d.http("GET", &format!("/v1/functions/mixed/logs?{query}"), b"");
        assert_eq!(reply.status, 200, "{query}: {}", reply.text());
        reply.json()
    };
    let ids = |v: &Value| -> Vec<String> {
        v["invocations"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|i| i["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    let ok = list("status=ok");
    assert_eq!(ids(&ok).len(), 3, "{ok}");
    assert!(
        ok["invocations"].as_array().unwrap().iter().all(|i| {
            // "ok" in, "ok\n" out.
            i["exit_code"] == 0 && i["request_bytes"] == 2 && i["response_bytes"] == 3
        }),
        "{ok}"
    );
    let failed = list("status=failed");
    assert_eq!(ids(&failed).len(), 2, "{failed}");
    assert!(failed["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["exit_code"] == 1));
    assert_eq!(
        failed["next_after"],
        Value::Null,
        "a short page is the last"
    );

    // Pages of two: 2, 2, 1, every invocation once, newest first.
    let mut seen = Vec::new();
    let mut query = "limit=2".to_owned();
    for want in [2, 2, 1] {
        let page = list(&query);
        assert_eq!(ids(&page).len(), want, "{page}");
        seen.extend(ids(&page));
        match page["next_after"].as_str() {
            Some(id) => query = format!("limit=2&after={id}"),
            None => assert_eq!(want, 1, "only the last page has no next: {page}"),
        }
    }
    let all = ids(&list("limit=10"));
    assert_eq!(seen, all, "the pages are the whole list in order");
    assert_eq!(all.len(), 5);
    // A page that ends exactly at the last row says so: no empty next page.
    let five = list("limit=5");
    assert_eq!(ids(&five).len(), 5);
    assert_eq!(five["next_after"], Value::Null, "{five}");
    // The outcome without the log, for lists that only show outcomes.
    let brief = list("limit=5&stderr=false");
    assert!(brief["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["stderr"] == ""));

    // The same through the CLI: a filter, and pages that say where the next starts.
    let failed_cli = d.cli_json(&["logs", "mixed", "--status", "failed"]);
    assert_eq!(ids(&failed_cli), ids(&failed));
    let (code, _, err) = d.cli(&["logs", "mixed", "-n", "2"]);
    assert_eq!(code, 0, "{err}");
    let next = err
        .split("--after ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no next page named: {err}"));
    let second = d.cli_json(&["logs", "mixed", "-n", "2", "--after", next]);
    assert_eq!(ids(&second), all[2..4].to_vec());
    let (code, _, err) = d.cli(&["logs", "mixed", "--status", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("use ok, failed"), "{err}");

    for (query, says) in [
        ("status=bogus", "use ok, failed"),
        ("before=NaN", "before"),
        ("limit=0", "limit 0"),
        ("after=x&before=1", "not both"),
        ("after=", "after"),
        ("after=a%00b", "after"),
        ("after=..%2Fx", "after"),
    ] {
        let reply = d.http("GET", &format!("/v1/functions/mixed/logs?{query}"), b"");
        assert_eq!(reply.status, 400, "{query}");
        assert!(reply.text().contains(says), "{query}: {}", reply.text());
    }

    let stats = d.http("GET", "/v1/functions/mixed/stats", b"");
    assert_eq!(stats.status, 200, "{}", stats.text());
    let stats = stats.json();
    let buckets = stats["buckets"].as_array().expect("buckets");
    assert_eq!((buckets.len(), stats["bucket_s"].as_u64()), (60, Some(60)));
    let sum = |field: &str| {
        buckets
            .iter()
            .map(|b| b[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum("invocations"), sum("errors")), (5, 2), "{stats}");
    let timed: Vec<&Value> = buckets.iter().filter(|b| b["invocations"] != 0).collect();
    assert!(
        timed.iter().all(|b| {
            let (p50, p99) = (b["p50_ms"].as_f64().unwrap(), b["p99_ms"].as_f64().unwrap());
            p50 > 0.0 && p50 <= p99 && p99 < 60_000.0
        }),
        "{stats}"
    );
    assert_eq!(d.http("GET", "/v1/functions/nope/stats", b"").status, 404);
}

#[test]
fn limits_are_enforced_and_reported() {
    let Some(t) = setup("limits_are_enforced_and_reported", &[]) else {
        return;
    };
    let d = &t.daemon;
    let hog = "python3 -c 'x = b\"x\" * (256 << 20)'";
    assert_eq!(
        d.cli(&["deploy", "hog", "--handler", hog, "--memory", "32M"])
            .0,
        0
    );
    let reply = d.http("POST", "/v1/functions/hog/invoke", b"");
    assert_eq!(
        (reply.status, reply.code()),
        (502, "function_out_of_memory".to_owned()),
        "{}",
        reply.text()
    );
    let record = reply.json()["error"]["invocation"].clone();
    assert_eq!(record["status"], "oom");
    let peak = record["memory_peak_bytes"].as_u64().unwrap();
    assert!(
        peak > 16 << 20 && peak <= 33 << 20,
        "peak {peak} under a 32M limit"
    );

    assert_eq!(
        d.cli(&[
            "deploy",
            "slow",
            "--handler",
            "sleep 10",
            "--timeout",
            "300ms"
        ])
        .0,
        0
    );
    let start = Instant::now();
    let reply = d.http("POST", "/v1/functions/slow/invoke", b"");
    assert_eq!(
        (reply.status, reply.code()),
        (504, "function_timeout".to_owned())
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the timeout ended it"
    );
    assert_eq!(reply.header("x-alcove-status"), Some("timeout"));

    assert_eq!(
        d.cli(&[
            "deploy",
            "forks",
            "--handler",
            "sh -c 'for i in 1 2 3 4 5 6; do sleep 1 & done; wait'",
            "--pids",
            "4"
        ])
        .0,
        0
    );
    let reply = d.http("POST", "/v1/functions/forks/invoke", b"");
    let record = reply.json()["error"]["invocation"].clone();
    assert!(record["pids_peak"].as_u64().unwrap() <= 4, "{record}");
    assert!(
        reply.status == 502,
        "forking past the pids limit fails: {record}"
    );
}

#[test]
fn the_concurrency_cap_queues_then_refuses_with_429() {
    let Some(t) = setup(
        "the_concurrency_cap_queues_then_refuses_with_429",
        &["--max-queued", "2"],
    ) else {
        return;
    };
    let d = &t.daemon;
    assert_eq!(
        d.cli(&[
            "deploy",
            "one",
            "--handler",
            "sleep 1",
            "--concurrency",
            "1"
        ])
        .0,
        0
    );
    let addr = d.addr.clone();
    let bearer = format!("Bearer {}", d.token.clone().unwrap());
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, bearer) = (addr.clone(), bearer.clone());
            std::thread::spawn(move || {
                http(
                    &addr,
                    "POST",
                    "/v1/functions/one/invoke",
                    &[("authorization", &bearer)],
                    b"",
                )
            })
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 8, "{replies:?}");
    assert!(
        (1..=3).contains(&ok),
        "one runs and two wait: {ok} succeeded"
    );
    assert!(!refused.is_empty());
    for r in refused {
        assert_eq!(r.code(), "too_many_requests");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let metrics = d.http("GET", "/metrics", b"").text();
    assert_eq!(
        metric(&metrics, "alcove_invocations_queued"),
        0.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "alcove_sandboxes_alive"), 0.0);
    let logs = d.cli_json(&["logs", "one", "-n", "100"]);
    let statuses: Vec<&str> = logs["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["exited"; ok],
        "refused requests are not invocations"
    );

    // A client that hangs up mid-invocation: the invocation still ends and is recorded.
    let mut gone = TcpStream::connect(&d.addr).unwrap();
    write!(
        gone,
        "POST /v1/functions/one/invoke HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Length: 0\r\n\r\n",
        format_args!("Authorization: {bearer}")
    )
    .unwrap();
    wait_until("the handler runs", Duration::from_secs(10), || {
        !processes_with("sleep 1").is_empty()
    });
    drop(gone);
    wait_until(
        "the abandoned invocation is recorded as ended",
        Duration::from_secs(10),
        || {
            let logs = d.cli_json(&["logs", "one", "-n", "100"]);
            let records = logs["invocations"].as_array().unwrap().clone();
            records.len() == ok + 1 && records.iter().all(|r| r["status"] == "exited")
        },
    );
}

#[test]
fn metrics_move_and_bad_input_is_refused_while_serving() {
    let Some(t) = setup("metrics_move_and_bad_input_is_refused_while_serving", &[]) else {
        return;
    };
    let d = &t.daemon;
    assert_eq!(d.cli(&["deploy", "m", "--handler", "cat"]).0, 0);
    let ok = r#"alcove_invocations_total{function="m",status="exited",outcome="success"}"#;
    let count = r#"alcove_invocation_duration_seconds_count{function="m"}"#;
    let before = d.http("GET", "/metrics", b"").text();
    for _ in 0..3 {
        assert_eq!(d.http("POST", "/v1/functions/m/invoke", b"x").status, 200);
    }
    let after = d.http("GET", "/metrics", b"").text();
    assert_eq!(metric(&after, ok) - baseline(&before, ok), 3.0, "{after}");
    assert_eq!(metric(&after, count) - baseline(&before, count), 3.0);
    let cold = r#"alcove_sandbox_starts_total{kind="cold"}"#;
    assert_eq!(metric(&after, cold) - baseline(&before, cold), 3.0);
    assert!(metric(&after, "alcove_pool_prepared") >= 1.0, "{after}");
    assert_eq!(metric(&after, "alcove_pool_slots"), 16.0);

    // Bad input gets a 4xx/5xx with a stable code, and the daemon keeps serving.
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/v1/functions",
            b"{\"name\": ".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/functions",
            br#"{"name":"UPPER","handler":["true"]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/functions",
            br#"{"name":"x","handler":["true"],"memory_bytes":-5}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/functions",
            br#"{"name":"x","handler":["true"],"cpus":0}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/functions/m/invoke",
            vec![b'x'; 7 << 20],
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/functions/nope/invoke",
            b"".to_vec(),
            404,
            "function_not_found",
        ),
        (
            "GET",
            "/v1/invocations/0000",
            b"".to_vec(),
            404,
            "invocation_not_found",
        ),
        (
            "DELETE",
            "/v1/functions/nope",
            b"".to_vec(),
            404,
            "function_not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = d.http(method, path, &body);
        assert_eq!(
            (reply.status, reply.code()),
            (status, code.to_owned()),
            "{method} {path}: {}",
            reply.text()
        );
    }
    // A handler that never reads its stdin, and one that floods stdout.
    assert_eq!(d.cli(&["deploy", "deaf", "--handler", "echo ok"]).0, 0);
    let reply = d.http("POST", "/v1/functions/deaf/invoke", &vec![b'y'; 5 << 20]);
    assert_eq!((reply.status, reply.text()), (200, "ok\n".to_owned()));
    assert_eq!(
        d.cli(&["deploy", "flood", "--handler", "yes", "--timeout", "30s"])
            .0,
        0
    );
    let reply = d.http("POST", "/v1/functions/flood/invoke", b"");
    assert_eq!(
        (reply.status, reply.code()),
        (502, "response_too_large".to_owned())
    );
    assert_eq!(d.http("GET", "/healthz", b"").status, 200);
    assert_eq!(
        d.http("POST", "/v1/functions/m/invoke", b"still").text(),
        "still"
    );
}

/// A deploy body whose code is `files` empty files: the daemon unpacks and
/// syncs each one into its staging directory, which takes seconds.
fn slow_deploy_body(name: &str, files: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..files {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("f{i}"), &[][..])
            .unwrap();
    }
    let code = base64::engine::general_purpose::STANDARD.encode(tar.into_inner().unwrap());
    serde_json::to_vec(&json!({ "name": name, "handler": ["true"], "code": code })).unwrap()
}

/// Entries of a directory, or 0 when it does not exist.
fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// The staging directories under `data/tmp` and how many files each holds.
fn staged(data: &std::path::Path) -> Vec<(PathBuf, usize)> {
    std::fs::read_dir(data.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.path(), entries(&e.path())))
        .collect()
}

#[test]
fn the_store_survives_kill_9_mid_invoke_and_mid_deploy() {
    if !root_or_skip("the_store_survives_kill_9_mid_invoke_and_mid_deploy") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data, &[]);
    assert_eq!(
        d.cli(&[
            "deploy",
            "keep",
            "--handler",
            "echo kept",
            "--secret",
            "k=v"
        ])
        .0,
        0
    );
    let done = d.http("POST", "/v1/functions/keep/invoke", b"");
    let done_id = done.header("x-alcove-invocation").unwrap().to_owned();
    assert_eq!(
        d.cli(&["deploy", "sleeper", "--handler", "sleep 31.4159"])
            .0,
        0
    );
    let code_before = entries(&data.join("code"));
    let queued = d.http("POST", "/v1/functions/sleeper/invoke?async=true", b"");
    let running_id = queued.json()["id"].as_str().unwrap().to_owned();
    wait_until("the handler runs", Duration::from_secs(10), || {
        !processes_with("sleep 31.4159").is_empty()
    });
    // The cgroups the running handler is in: after the daemon's death none
    // may hold a process, and a fresh (unpooled) one must be gone.
    let handler_cgroups: Vec<PathBuf> = processes_with("sleep 31.4159")
        .into_iter()
        .flat_map(cgroups_of)
        .filter(|c| c.components().any(|p| p.as_os_str() == "alcove"))
        .collect();
    assert!(
        !handler_cgroups.is_empty(),
        "the handler is in no alcove cgroup: {:?}",
        processes_with("sleep 31.4159")
            .into_iter()
            .map(cgroups_of)
            .collect::<Vec<_>>()
    );
    for c in &handler_cgroups {
        let below_alcove = c
            .iter()
            .skip_while(|p| *p != "alcove")
            .nth(1)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            below_alcove.starts_with("slot-") || below_alcove.starts_with("sb-"),
            "{} is not a cgroup name alcove makes",
            c.display()
        );
    }

    // A deploy cut off mid-body: nothing of it is stored yet.
    let mut cut = TcpStream::connect(&d.addr).unwrap();
    let head = format!(
        "POST /v1/functions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: 10000000\r\n\r\n",
        d.addr,
        d.token.clone().unwrap()
    );
    cut.write_all(head.as_bytes()).unwrap();
    cut.write_all(br#"{"name":"half","handler":["true"],"code":""#)
        .unwrap();
    cut.write_all(&vec![b'A'; 1 << 20]).unwrap();
    // A deploy killed while it unpacks its code into the staging directory.
    let body = slow_deploy_body("staged", 20_000);
    let mut staging = TcpStream::connect(&d.addr).unwrap();
    let head = format!(
        "POST /v1/functions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        d.addr,
        d.token.clone().unwrap(),
        body.len()
    );
    staging.write_all(head.as_bytes()).unwrap();
    staging.write_all(&body).unwrap();
    wait_until(
        "the deploy has staged some of its files",
        Duration::from_secs(30),
        || staged(&data).iter().any(|(_, n)| *n >= 100),
    );

    let dead = d.kill9();
    let half_done = staged(&data);
    assert!(
        half_done.iter().any(|(_, n)| (100..20_000).contains(n)),
        "no half-done deploy in {}: {half_done:?}",
        data.join("tmp").display()
    );
    wait_until(
        "the handler dies with the daemon",
        Duration::from_secs(5),
        || processes_with("sleep 31.4159").is_empty(),
    );
    drop(d);

    let d = Daemon::start(&data, &[]);
    let listed = d.cli_json(&["ls"]);
    let names: Vec<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["keep", "sleeper"],
        "both functions intact, no half deploy"
    );
    let finished = d.cli_json(&["result", &done_id]);
    assert_eq!(
        (finished["status"].clone(), finished["exit_code"].clone()),
        (json!("exited"), json!(0))
    );
    let failed = d.cli_json(&["result", &running_id]);
    assert_eq!(failed["status"], "error");
    assert!(
        failed["error"].as_str().unwrap().contains("daemon stopped"),
        "{failed}"
    );
    assert_eq!(
        d.cli(&["invoke", "keep"]).1,
        "kept\n",
        "the store works after recovery"
    );
    for c in &handler_cgroups {
        let fresh = c.iter().any(|p| p.to_string_lossy().starts_with("sb-"));
        assert!(
            !(fresh && c.exists()),
            "the dead daemon's fresh cgroup {} remains",
            c.display()
        );
        let procs = processes_in_cgroup(c);
        assert!(
            procs.is_empty(),
            "the dead daemon's handler cgroup {} holds {procs:?}",
            c.display()
        );
    }
    let prefix = format!("sb-{dead}-");
    let left: Vec<PathBuf> = alcove_cgroups()
        .into_iter()
        .filter(|c| {
            c.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect();
    assert!(
        left.is_empty(),
        "the dead daemon's cgroups remain: {left:?}"
    );
    assert!(host_mounts()
        .iter()
        .all(|m| !m.starts_with(d.data.to_str().unwrap())));
    assert_eq!(staged(&data), [], "half-done deploys are removed");
    assert_eq!(
        entries(&data.join("code")),
        code_before,
        "the interrupted deploy's code is not stored"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A bounded load: 2,048 invocations at concurrency 32 over keep-alive
/// connections, every one answered correctly, and the daemon's memory flat
/// (bench/functions.sh runs the full 20,000 and prints the figures).
#[test]
fn a_bounded_load_completes_without_errors_and_memory_stays_flat() {
    let Some(t) = setup(
        "a_bounded_load_completes_without_errors_and_memory_stays_flat",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    assert_eq!(d.cli(&["deploy", "echo", "--handler", "cat"]).0, 0);
    let load = |total: usize| {
        let per_client = total / 32;
        let clients: Vec<_> = (0..32)
            .map(|c| {
                let (url, token) = (d.url(), d.token.clone());
                std::thread::spawn(move || {
                    let client = alcove_api::Client::new(&url, token);
                    let mut failures = Vec::new();
                    for i in 0..per_client {
                        let body = format!("client {c} request {i}");
                        match client.invoke("echo", None, body.as_bytes()) {
                            Ok(o) if o.status == 200 && o.response == body.as_bytes() => {}
                            other => failures.push(format!("{other:?}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        let failures: Vec<String> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {total} failed, first: {:?}",
            failures.len(),
            failures.first()
        );
    };
    load(320); // warm: pool slots, templates, allocator arenas
    let before = rss_kib(d.child.id());
    load(2048);
    let after = rss_kib(d.child.id());
    eprintln!("daemon RSS before {before} KiB, after {after} KiB");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 2,048 invocations"
    );
    let metrics = d.http("GET", "/metrics", b"").text();
    let ok = metric(
        &metrics,
        r#"alcove_invocations_total{function="echo",status="exited",outcome="success"}"#,
    );
    assert_eq!(ok, 2368.0);
}
