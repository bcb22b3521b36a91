//! Property tests of request parsing: whatever arrives, the API answers with
//! a JSON error carrying a stable code, never a panic or a 5xx.

use alcove_api::wire::{parse_deploy, DeployBody};
use alcove_api::{app, AppState};
use alcove_engine::{Engine, EngineConfig};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use tower::ServiceExt;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_parse_or_fail_with_a_message(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_deploy(&body) {
            prop_assert_eq!(e.code, "invalid_request");
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn configuration_changes_parse_or_fail_with_a_message(body in r#"\{("(env|unset_env|secrets|unset_secrets|binds|user|tmpfs_bytes|cpu_time_ms|x)":(1|-1|"[a-z ]{0,4}"|\[\]|\["a"\]|\[\{"source":"/a","target":"/b"\}\]|null|\{\}|\{"a":"b"\}|1e400|true),?){0,6}\}"#) {
        if let Err(e) = alcove_api::wire::parse_json::<alcove_engine::ConfigChange>(body.as_bytes(), "configuration") {
            prop_assert_eq!(e.code, "invalid_request");
            prop_assert!(e.message.contains("configuration body"), "{}", e.message);
        }
    }

    #[test]
    fn json_shaped_text_parses_or_fails_with_a_message(body in r#"\{("(name|handler|code|env|secrets|cpus|net|x)":(1|-1|"[a-z ]{0,4}"|\[\]|\["a"\]|null|\{\}|1e400|true),?){0,6}\}"#) {
        if let Err(e) = parse_deploy(body.as_bytes()) {
            prop_assert_eq!(e.code, "invalid_request");
            prop_assert!(e.message.contains("deploy body") || e.message.contains("code"), "{}", e.message);
        }
    }

    #[test]
    fn well_formed_deploys_keep_every_field(
        name in "[a-z0-9][a-z0-9_-]{0,20}",
        handler in proptest::collection::vec("[ -~]{1,12}", 1..4),
        env in proptest::collection::btree_map("[A-Z_]{1,8}", "[ -~]{0,12}", 0..4),
        secrets in proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,12}", 0..3),
        memory in proptest::option::of(1u64..1 << 40),
        timeout in proptest::option::of(1u64..100_000),
        concurrency in proptest::option::of(1u32..100),
    ) {
        let body = DeployBody {
            name: name.clone(), handler: handler.clone(), env: env.clone(), secrets: secrets.clone(),
            memory_bytes: memory, timeout_ms: timeout, concurrency, ..DeployBody::default()
        };
        let parsed = parse_deploy(&serde_json::to_vec(&body).unwrap()).unwrap();
        prop_assert_eq!(parsed.name, name);
        prop_assert_eq!(parsed.change.handler, Some(handler));
        prop_assert_eq!(parsed.change.env, env);
        let values: BTreeMap<String, Vec<u8>> = secrets.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        prop_assert_eq!(parsed.change.secrets, values);
        prop_assert_eq!(parsed.change.memory_bytes, memory);
        prop_assert_eq!(parsed.change.timeout_ms, timeout);
        prop_assert_eq!(parsed.change.concurrency, concurrency);
        prop_assert!(parsed.inherit);
    }
}

#[test]
fn the_router_answers_arbitrary_requests_with_json_errors() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path().join("data"))).unwrap();
    let router = app(AppState {
        engine,
        token: None,
    });
    let methods = prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("PUT")];
    let paths = prop_oneof![
        Just("/v1/functions".to_owned()),
        "/v1/functions/[a-zA-Z0-9%._-]{0,12}".prop_map(|s| s),
        "/v1/functions/[a-z]{1,6}/(invoke|rollback|logs)(\\?[a-z=&0-9%]{0,16})?".prop_map(|s| s),
        "/v1/invocations/[a-f0-9]{0,32}".prop_map(|s| s),
        "/[a-z/]{0,16}".prop_map(|s| s),
    ];
    let bodies = proptest::collection::vec(any::<u8>(), 0..256);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(400));
    runner
        .run(&(methods, paths, bodies), |(method, path, body)| {
            let request = Request::builder()
                .method(method)
                .uri(&path)
                .body(Body::from(body))
                .unwrap();
            let response = runtime.block_on(router.clone().oneshot(request)).unwrap();
            let status = response.status();
            let bytes = runtime
                .block_on(response.into_body().collect())
                .unwrap()
                .to_bytes();
            prop_assert!(
                !status.is_server_error(),
                "{method} {path}: {status} {bytes:?}"
            );
            if status.is_client_error() {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("{method} {path}: not JSON: {e}")))?;
                let code = v
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                prop_assert!(!code.is_empty(), "{method} {path}: {v}");
            }
            Ok(())
        })
        .unwrap();
}
