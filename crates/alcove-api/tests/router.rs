//! Router-level tests: `app()` driven with `oneshot`, no socket. Invocations
//! run real sandboxes (these tests run as root, as CI does).

use alcove_api::{app, AppState, OPENAPI};
use alcove_engine::{Engine, EngineConfig};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::io::Write as _;
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    router: Router,
    _dir: tempfile::TempDir,
}

/// Tests that run sandboxes need root; elsewhere they say so and pass,
/// except in CI (`ALCOVE_CI=1` or `CI=true`), which runs as root: there a
/// skip means a broken setup, and fails.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = "runs sandboxes, which needs root; run the tests as root";
    let ci = std::env::var("ALCOVE_CI").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "{test} cannot run in CI: {why}");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

fn fixture(token: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(EngineConfig::new(dir.path().join("data"))).expect("engine");
    let state = AppState {
        engine,
        token: token.map(Arc::from),
    };
    Fixture {
        router: app(state),
        _dir: dir,
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value, headers)
}

fn code_of(v: &Value) -> &str {
    v.pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("<none>")
}

fn deploy_body(name: &str, script: &str) -> String {
    json!({ "name": name, "handler": ["/bin/sh", "-c", script], "timeout_ms": 5000 }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_unknown_routes() {
    let f = fixture(None);
    let (status, body, _) = call(&f.router, "GET", "/healthz", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok", "{body}");
    let node = body["node"]
        .as_str()
        .expect("healthz names the node")
        .to_owned();
    assert!(!node.is_empty(), "{body}");
    // One daemon on SQLite is ready while it runs.
    let (status, body, _) = call(&f.router, "GET", "/readyz", Body::empty()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "status": "ready", "node": node }))
    );
    let (status, body, headers) = call(&f.router, "GET", "/metrics", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(
        body.as_str().unwrap().contains("alcove_sandboxes_alive"),
        "{body}"
    );
    let (status, body, _) = call(&f.router, "GET", "/v2/nothing", Body::empty()).await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::NOT_FOUND, "route_not_found")
    );
    let (status, body, _) = call(&f.router, "PUT", "/v1/functions", Body::empty()).await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_get_stable_codes_and_leave_nothing() {
    let f = fixture(None);
    let cases: &[(&str, StatusCode, &str)] = &[
        ("", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{not json", StatusCode::BAD_REQUEST, "invalid_request"),
        (
            r#"{"name":"ok","handler":["true"],"surprise":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"Bad Name","handler":["true"]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"ok","handler":[]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"ok","handler":["true"],"memory_bytes":0}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"ok","handler":["true"],"net":"bridge"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"ok","handler":["true"],"code":"!!!"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"ok","handler":["true"],"code":"bm90IGEgdGFy"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_code",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, value, _) = call(&f.router, "POST", "/v1/functions", body.to_string()).await;
        assert_eq!(
            (status, code_of(&value)),
            (*want_status, *want_code),
            "body {body}: {value}"
        );
        assert!(!value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty());
    }
    let (_, list, _) = call(&f.router, "GET", "/v1/functions", Body::empty()).await;
    assert_eq!(list, json!({ "functions": [] }), "nothing was deployed");

    let huge = vec![b'x'; alcove_api::MAX_DEPLOY_BODY + 1];
    let (status, value, _) = call(&f.router, "POST", "/v1/functions", huge).await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_invoke_and_rollback() {
    if !root_or_skip("deploy_invoke_and_rollback") {
        return;
    }
    let f = fixture(None);
    let (status, v1, headers) = call(
        &f.router,
        "POST",
        "/v1/functions",
        deploy_body("echo", "echo one; cat"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(headers["location"], "/v1/functions/echo");
    assert_eq!(v1["version"], 1);
    let (status, v2, _) = call(
        &f.router,
        "POST",
        "/v1/functions",
        deploy_body("echo", "echo two; cat"),
    )
    .await;
    assert_eq!(
        (status, v2["version"].clone()),
        (StatusCode::CREATED, json!(2))
    );

    let (status, body, headers) = call(&f.router, "POST", "/v1/functions/echo/invoke", "hi").await;
    assert_eq!((status, body), (StatusCode::OK, json!("two\nhi")));
    assert_eq!(headers["x-alcove-version"], "2");
    assert_eq!(headers["x-alcove-status"], "exited");
    let (_, body, _) = call(
        &f.router,
        "POST",
        "/v1/functions/echo/invoke?version=1",
        "hi",
    )
    .await;
    assert_eq!(body, json!("one\nhi"));

    let (status, after, _) = call(
        &f.router,
        "POST",
        "/v1/functions/echo/rollback",
        r#"{"version":1}"#,
    )
    .await;
    assert_eq!(
        (status, after["latest"].clone()),
        (StatusCode::OK, json!(1))
    );
    let (_, body, _) = call(&f.router, "POST", "/v1/functions/echo/invoke", "").await;
    assert_eq!(body, json!("one\n"));
    let (status, value, _) = call(
        &f.router,
        "POST",
        "/v1/functions/echo/rollback",
        r#"{"version":9}"#,
    )
    .await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::NOT_FOUND, "version_not_found")
    );

    let (status, value, _) = call(&f.router, "POST", "/v1/functions/nope/invoke", "").await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::NOT_FOUND, "function_not_found")
    );
    let (status, value, _) =
        call(&f.router, "POST", "/v1/functions/echo/invoke?retries=2", "").await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, value, _) =
        call(&f.router, "POST", "/v1/functions/echo/invoke?version=x", "").await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    let (status, _, _) = call(&f.router, "DELETE", "/v1/functions/echo", Body::empty()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, value, _) = call(&f.router, "GET", "/v1/functions/echo", Body::empty()).await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::NOT_FOUND, "function_not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_gateway_errors_with_the_record() {
    if !root_or_skip("failures_map_to_gateway_errors_with_the_record") {
        return;
    }
    let f = fixture(None);
    call(
        &f.router,
        "POST",
        "/v1/functions",
        deploy_body("fails", "echo oops >&2; exit 3"),
    )
    .await;
    let (status, value, headers) = call(&f.router, "POST", "/v1/functions/fails/invoke", "").await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::BAD_GATEWAY, "function_failed"),
        "{value}"
    );
    assert_eq!(
        value.pointer("/error/invocation/exit_code"),
        Some(&json!(3))
    );
    assert_eq!(
        value.pointer("/error/invocation/stderr"),
        Some(&json!("oops\n"))
    );
    assert_eq!(headers["x-alcove-exit-code"], "3");

    let slow =
        json!({ "name": "slow", "handler": ["/bin/sleep", "10"], "timeout_ms": 200 }).to_string();
    call(&f.router, "POST", "/v1/functions", slow).await;
    let (status, value, _) = call(&f.router, "POST", "/v1/functions/slow/invoke", "").await;
    assert_eq!(
        (status, code_of(&value)),
        (StatusCode::GATEWAY_TIMEOUT, "function_timeout"),
        "{value}"
    );
    assert_eq!(
        value.pointer("/error/invocation/status"),
        Some(&json!("timeout"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_everywhere_but_the_probes() {
    let f = fixture(Some("s3cret"));
    // Load balancers and Kubernetes probe without the token.
    for probe in ["/healthz", "/readyz"] {
        let (status, _, _) = call(&f.router, "GET", probe, Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
    }
    for (method, uri) in [
        ("GET", "/v1/functions"),
        ("GET", "/metrics"),
        ("POST", "/v1/functions/x/invoke"),
    ] {
        let (status, value, headers) = call(&f.router, method, uri, Body::empty()).await;
        assert_eq!(
            (status, code_of(&value)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{uri}"
        );
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let request = Request::get("/v1/functions")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let response = f.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request = Request::get("/v1/functions")
        .header("authorization", "Bearer s3cre7")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        f.router.clone().oneshot(request).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Checks `value` against an OpenAPI schema: types, required properties,
/// enums, items and nested properties, following `$ref`s.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc
            .pointer(r.trim_start_matches('#'))
            .ok_or(format!("{at}: dangling $ref {r}"))?;
        return conforms(doc, target, value, at);
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        conforms(doc, part, value, at)?;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            return Err(format!("{at}: {actual} where the document says {types:?}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let (Some(required), Some(obj)) = (
        schema.get("required").and_then(Value::as_array),
        value.as_object(),
    ) {
        for key in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(key) {
                return Err(format!("{at}: missing required {key:?}"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (key, v) in obj {
            if let Some(s) = props.get(key) {
                conforms(doc, s, v, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let escaped = path.replace('~', "~0").replace('/', "~1");
    doc.pointer(&format!(
        "/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema"
    ))
    .unwrap_or_else(|| panic!("the document has no JSON {status} response for {method} {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_matches_the_routes_and_responses() {
    if !root_or_skip("the_served_openapi_document_matches_the_routes_and_responses") {
        return;
    }
    let f = fixture(None);
    let (status, doc, _) = call(&f.router, "GET", "/v1/openapi.json", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, serde_json::from_str::<Value>(OPENAPI).unwrap());

    // Every documented operation is routed (a made-up name gives the API's
    // own 404 codes, never route_not_found or method_not_allowed).
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "nofn")
            .replace("{id}", "noid")
            .replace("{secret}", "nosecret")
            .replace("{pid}", "1")
            .replace("{port}", "8000")
            .replace("{path}", "x");
        for method in ["get", "post", "delete", "put", "patch"] {
            if item.get(method).is_none() {
                continue;
            }
            // A stream does not end: checked by the tests of the event stream.
            if item[method]["responses"]["200"]["content"]
                .get("text/event-stream")
                .is_some()
            {
                operations += 1;
                continue;
            }
            operations += 1;
            let (status, value, _) = call(&f.router, &method.to_uppercase(), &concrete, "{}").await;
            let code = code_of(&value);
            assert!(
                code != "route_not_found" && code != "method_not_allowed",
                "{method} {path} is documented but not routed"
            );
            if status.is_client_error() || status.is_server_error() {
                let documented = item[method]["responses"].get(status.as_str()).is_some();
                assert!(
                    documented,
                    "{method} {path} answered {status}, which the document does not list: {value}"
                );
                conforms(
                    &doc,
                    response_schema(&doc, path, method, status.as_u16()),
                    &value,
                    path,
                )
                .unwrap();
            }
        }
    }
    assert_eq!(operations, 56, "operations in the document");

    // Real responses conform to their schemas.
    let (status, version, _) = call(
        &f.router,
        "POST",
        "/v1/functions",
        deploy_body("doc", "cat"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    conforms(
        &doc,
        response_schema(&doc, "/v1/functions", "post", 201),
        &version,
        "deploy",
    )
    .unwrap();
    let (_, list, _) = call(&f.router, "GET", "/v1/functions", Body::empty()).await;
    conforms(
        &doc,
        response_schema(&doc, "/v1/functions", "get", 200),
        &list,
        "list",
    )
    .unwrap();
    let (_, function, _) = call(&f.router, "GET", "/v1/functions/doc", Body::empty()).await;
    conforms(
        &doc,
        response_schema(&doc, "/v1/functions/{name}", "get", 200),
        &function,
        "show",
    )
    .unwrap();
    let (status, queued, _) = call(
        &f.router,
        "POST",
        "/v1/functions/doc/invoke?async=true",
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    conforms(
        &doc,
        response_schema(&doc, "/v1/functions/{name}/invoke", "post", 202),
        &queued,
        "async",
    )
    .unwrap();
    let id = queued["id"].as_str().unwrap().to_owned();
    let mut record = Value::Null;
    for _ in 0..200 {
        let (_, r, _) = call(
            &f.router,
            "GET",
            &format!("/v1/invocations/{id}"),
            Body::empty(),
        )
        .await;
        record = r;
        if record["status"] != "queued" && record["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        (record["status"].clone(), record["response"].clone()),
        (json!("exited"), json!("x")),
        "{record}"
    );
    conforms(
        &doc,
        response_schema(&doc, "/v1/invocations/{id}", "get", 200),
        &record,
        "invocation",
    )
    .unwrap();
    let (_, logs, _) = call(&f.router, "GET", "/v1/functions/doc/logs", Body::empty()).await;
    conforms(
        &doc,
        response_schema(&doc, "/v1/functions/{name}/logs", "get", 200),
        &logs,
        "logs",
    )
    .unwrap();
    assert_eq!(logs["invocations"].as_array().map(Vec::len), Some(1));
    let (_, stats, _) = call(&f.router, "GET", "/v1/functions/doc/stats", Body::empty()).await;
    conforms(
        &doc,
        response_schema(&doc, "/v1/functions/{name}/stats", "get", 200),
        &stats,
        "stats",
    )
    .unwrap();
    let counted: u64 = stats["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["invocations"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, 1, "the one invocation is charted: {stats}");
}
