//! The router: each handler parses, calls the engine, and maps the result.

use crate::control;
use crate::errors::ApiError;
use crate::wire::{self, FunctionSummary, InvocationView, InvokeQuery, RollbackBody};
use crate::{auth, MAX_DEPLOY_BODY, MAX_INVOKE_BODY, OPENAPI};
use alcove_engine::{Engine, EngineError, InvocationRecord};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// When set, requests must carry `Authorization: Bearer TOKEN`.
    pub token: Option<Arc<str>>,
}

/// The whole API as a router, ready for `axum::serve` (or `oneshot` in tests).
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/functions",
            get(list_functions)
                .post(deploy)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BODY)),
        )
        .route(
            "/functions/{name}",
            get(show_function)
                .delete(control::remove_function)
                .patch(crate::config_routes::configure),
        )
        .route(
            "/functions/{name}/secrets",
            get(crate::config_routes::list_secrets),
        )
        .route(
            "/functions/{name}/secrets/{secret}",
            put(crate::config_routes::set_secret)
                .delete(crate::config_routes::remove_secret)
                .layer(DefaultBodyLimit::max(crate::config_routes::MAX_SECRET_BODY)),
        )
        .route("/functions/{name}/rollback", post(rollback))
        .route(
            "/functions/{name}/invoke",
            post(invoke).layer(DefaultBodyLimit::max(MAX_INVOKE_BODY)),
        )
        .route("/functions/{name}/logs", get(logs))
        .route("/functions/{name}/stats", get(stats))
        .route(
            "/functions/{name}/learn",
            get(crate::monitor_routes::learned)
                .post(crate::monitor_routes::start_learning)
                .delete(crate::monitor_routes::stop_learning),
        )
        .route("/events", get(crate::monitor_routes::events))
        .route("/monitor", get(crate::monitor_routes::monitor))
        .route("/invocations", get(control::list_running))
        .route("/invocations/{id}", get(invocation).delete(control::cancel))
        .route("/openapi.json", get(openapi))
        .merge(crate::sandbox_routes::routes());
    let function = any(crate::endpoint::serve).layer(DefaultBodyLimit::max(MAX_INVOKE_BODY));
    Router::new()
        .route("/fn/{name}", function.clone())
        .route("/fn/{name}/", function.clone())
        .route("/fn/{name}/{*rest}", function)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .merge(crate::console::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "no such route: see /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method: see /v1/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

/// The one path parameter (a function's name or an invocation's id), with
/// bad percent-encoding answered as a JSON error like everything else.
pub(crate) struct Segment(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| Segment(s))
            .map_err(|e| ApiError::bad_request(format!("the path is not valid: {}", e.body_text())))
    }
}

pub(crate) fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!(
                "the request body is too large for this route: invoke bodies may be up to {} MiB, \
                 deploy bodies {} MiB, a sandbox call's JSON body {} MiB and a command's stdin {} MiB \
                 (files upload as streams, bounded by the sandbox's disk)",
                MAX_INVOKE_BODY >> 20, MAX_DEPLOY_BODY >> 20,
                crate::sandbox_routes::MAX_JSON_BODY >> 20, crate::sandbox_routes::MAX_STDIN_BODY >> 20
            ))
        } else if crate::server::timed_out(&e) {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", format!(
                "the request body came too slowly: {}; send it at once", e.body_text()
            ))
        } else {
            ApiError::new(e.status(), "invalid_body", format!("the request body could not be read: {e}"))
        }
    })
}

pub(crate) fn query_or_error<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::bad_request(format!("the query string is not valid: {}", e.body_text()))
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

async fn list_functions(State(s): State<AppState>) -> Result<Response, ApiError> {
    let functions = blocking(move || s.engine.functions()).await?;
    let summaries: Vec<FunctionSummary> = functions.iter().map(Into::into).collect();
    Ok(Json(json!({ "functions": summaries })).into_response())
}

async fn deploy(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = wire::parse_deploy(&body_or_error(body)?)?;
    let deployed = blocking(move || s.engine.deploy(request)).await?;
    Ok(crate::config_routes::deployed_response(deployed))
}

async fn show_function(
    State(s): State<AppState>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    let engine = Arc::clone(&s.engine);
    let (info, warm) = blocking(move || {
        let info = engine.function(&name)?;
        Ok((info, engine.warm_counts(&name)))
    })
    .await?;
    let mut shown = serde_json::to_value(info)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    // A warm function's template on this daemon, as it is now.
    if let (Some((ready, made, refused)), Some(object)) = (warm, shown.as_object_mut()) {
        object.insert(
            "template".into(),
            json!({ "ready_copies": ready, "copies_made": made, "copies_refused": refused }),
        );
    }
    Ok(Json(shown).into_response())
}

async fn rollback(
    State(s): State<AppState>,
    Segment(name): Segment,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let RollbackBody { version } = wire::parse_json(&body_or_error(body)?, "rollback")?;
    Ok(Json(blocking(move || s.engine.rollback(&name, version)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default = "default_log_limit")]
    limit: u32,
    /// `ok`, `failed` or one status (`timeout`, `oom`...).
    status: Option<String>,
    /// Where this page starts: after the invocation `after` (the page
    /// before's `next_after`), or among those created before `before` (unix
    /// seconds).
    after: Option<String>,
    before: Option<f64>,
    /// Whether each record carries its stderr (up to 64 KiB each); a list
    /// that only shows outcomes leaves it out.
    #[serde(default = "default_true")]
    stderr: bool,
}

fn default_log_limit() -> u32 {
    20
}

fn default_true() -> bool {
    true
}

async fn logs(
    State(s): State<AppState>,
    Segment(name): Segment,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let LogsQuery {
        limit,
        status,
        after,
        before,
        stderr,
    } = query_or_error(query)?;
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit}: use 1 to 1000"
        )));
    }
    let status = match status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(alcove_engine::StatusFilter::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status {:?}: use ok, failed, exited, signaled, timeout, cpu_time, oom, \
                 killed_by_policy, error, cancelled, queued or running",
                text.chars().take(64).collect::<String>()
            ))
        })?),
    };
    let before = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give after (next_after of the page before) or before, not both",
            ))
        }
        // An invocation's id: letters, digits, '-' and '_' (nothing a store
        // could choke on, a NUL say).
        (Some(id), None)
            if id.is_empty()
                || id.len() > 128
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            return Err(ApiError::bad_request(
                "after: give an invocation's id (next_after of the page before)",
            ))
        }
        (Some(id), None) => Some(alcove_engine::Cursor::After(id)),
        (None, Some(at)) if !at.is_finite() => {
            return Err(ApiError::bad_request("before: give unix seconds"))
        }
        (None, Some(at)) => Some(alcove_engine::Cursor::CreatedBefore(at)),
        (None, None) => None,
    };
    // One more than asked: whether a next page exists, without a second query.
    let filter = alcove_engine::InvocationFilter {
        limit: limit + 1,
        status,
        before,
    };
    let mut records = blocking(move || s.engine.logs(&name, &filter)).await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next_after = records.last().filter(|_| more).map(|r| r.id.clone());
    let views: Vec<InvocationView> = records
        .into_iter()
        .map(|mut r| {
            r.response = None;
            if !stderr {
                r.stderr = String::new();
            }
            r.into()
        })
        .collect();
    Ok(Json(json!({ "invocations": views, "next_after": next_after })).into_response())
}

/// `GET /v1/functions/{name}/stats`: its last hour on this daemon, minute by
/// minute (invocations, failures, duration percentiles).
async fn stats(State(s): State<AppState>, Segment(name): Segment) -> Result<Response, ApiError> {
    let stats = blocking(move || s.engine.function_stats(&name)).await?;
    Ok(Json(stats).into_response())
}

async fn invocation(State(s): State<AppState>, Segment(id): Segment) -> Result<Response, ApiError> {
    let record = blocking(move || s.engine.invocation(&id)).await?;
    Ok(Json(InvocationView::from(record)).into_response())
}

async fn invoke(
    State(s): State<AppState>,
    Segment(name): Segment,
    query: Result<Query<InvokeQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query_or_error(query)?;
    wire::check_invoke_query(&q)?;
    let body = body_or_error(body)?.to_vec();
    if q.is_async {
        let record = s
            .engine
            .invoke_async(&name, q.version, body, q.retries)
            .await?;
        let location = format!("/v1/invocations/{}", record.id);
        let mut response =
            (StatusCode::ACCEPTED, Json(InvocationView::from(record))).into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return Ok(response);
    }
    let request = crate::endpoint::invoke_request(&name, &headers);
    let (done, http_protocol) = s
        .engine
        .invoke_request(&name, q.version, &request, body)
        .await?;
    let response = crate::endpoint::respond(done, http_protocol, true);
    Ok(crate::endpoint::held_until_taken(&s, response).await)
}

pub(crate) fn invocation_headers(r: &InvocationRecord) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("x-alcove-invocation", r.id.clone());
    put("x-alcove-version", r.version.to_string());
    put("x-alcove-status", r.status.clone());
    if let Some(code) = r.exit_code {
        put("x-alcove-exit-code", code.to_string());
    }
    if let Some(ms) = r.wall_ms {
        put("x-alcove-duration-ms", format!("{ms:.3}"));
    }
    put(
        "x-alcove-start",
        if r.warm.is_some() { "warm" } else { "cold" }.into(),
    );
    if let Some(w) = &r.warm {
        // The W3C Server-Timing header, in milliseconds; `isolate` was done
        // before the request arrived.
        put(
            "server-timing",
            format!(
                "take;dur={:.3}, isolate;dur={:.3};desc=\"before the request\", hand;dur={:.3}, \
                 user;dur={:.3}, response;dur={:.3}, teardown;dur={:.3}",
                w.take_us / 1e3,
                w.isolate_us / 1e3,
                w.hand_us / 1e3,
                w.user_us / 1e3,
                w.response_us / 1e3,
                w.teardown_us / 1e3
            ),
        );
    }
    headers
}

/// The error for an invocation that did not succeed.
pub(crate) fn failure(r: &InvocationRecord) -> ApiError {
    let reason = r.error.as_deref().unwrap_or("");
    let (status, code, message) = match r.status.as_str() {
        "timeout" => (
            StatusCode::GATEWAY_TIMEOUT,
            "function_timeout",
            "the handler ran past its timeout and was killed".to_owned(),
        ),
        _ if r.output_truncated => (
            StatusCode::BAD_GATEWAY,
            "response_too_large",
            "the handler wrote more than its output limit to stdout; its stdout was closed"
                .to_owned(),
        ),
        "exited" => (
            StatusCode::BAD_GATEWAY,
            "function_failed",
            format!(
                "the handler exited with status {}",
                r.exit_code.unwrap_or(-1)
            ),
        ),
        "signaled" => (
            StatusCode::BAD_GATEWAY,
            "function_failed",
            match r.signal {
                Some(signal) => format!("the handler was killed by signal {signal}"),
                // A warm copy that ended without its report, on a kernel that
                // keeps no exit status for processes alcove did not start.
                None => "the handler ended without saying how (a warm copy that sent no exit \
                         report; this kernel keeps no exit status alcove can read)"
                    .to_owned(),
            },
        ),
        "oom" => (
            StatusCode::BAD_GATEWAY,
            "function_out_of_memory",
            "the handler ran out of memory and was killed".to_owned(),
        ),
        "cpu_time" => (
            StatusCode::BAD_GATEWAY,
            "function_cpu_time",
            "the handler used up its CPU time and was killed".to_owned(),
        ),
        "cancelled" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "function_cancelled",
            format!("the invocation was stopped before it ended: {reason}"),
        ),
        "killed_by_policy" => (
            StatusCode::BAD_GATEWAY,
            "function_killed_by_policy",
            format!("the handler was killed by policy: {reason}"),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "function_not_started",
            format!("alcove could not run the handler: {reason}"),
        ),
    };
    ApiError::new(status, code, message)
}

#[derive(Deserialize)]
struct HealthQuery {
    proof: Option<String>,
}

/// Liveness, open to all; with `?proof=NONCE`, also the daemon's proof that
/// it holds its token (see [`auth::token_proof`]).
async fn healthz(
    State(s): State<AppState>,
    query: Result<Query<HealthQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let HealthQuery { proof } = query_or_error(query)?;
    let mut answer = json!({ "status": "ok", "node": s.engine.node() });
    if let (Some(nonce), Some(token)) = (proof, &s.token) {
        if nonce.is_empty() || nonce.len() > auth::MAX_NONCE {
            return Err(ApiError::bad_request(format!(
                "proof: give a nonce of 1 to {} characters",
                auth::MAX_NONCE
            )));
        }
        answer["proof"] = json!(auth::token_proof(token, &nonce));
    }
    Ok(Json(answer).into_response())
}

/// Readiness: 200 while the daemon takes work, 503 with the reason
/// otherwise (stopping, or its shared store does not answer).
async fn readyz(State(s): State<AppState>) -> Response {
    let engine = Arc::clone(&s.engine);
    let ready = tokio::task::spawn_blocking(move || engine.ready())
        .await
        .unwrap_or_else(|e| Err(format!("the readiness check failed: {e}")));
    let node = s.engine.node();
    match ready {
        Ok(()) => Json(json!({ "status": "ready", "node": node })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "node": node, "reason": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    // Reading the monitor's state asks its thread: not on an async worker.
    let engine = Arc::clone(&s.engine);
    let text = tokio::task::spawn_blocking(move || engine.metrics_text())
        .await
        .unwrap_or_default();
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}
