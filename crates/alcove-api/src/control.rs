//! Control of what runs: the invocations in flight, cancelling one, and
//! removing a function whose invocations may still run.

use crate::errors::ApiError;
use crate::routes::{blocking, query_or_error, AppState, Segment};
use crate::wire::InvocationView;
use alcove_engine::MAX_LISTED;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// The query of `GET /v1/invocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this function's invocations.
    function: Option<String>,
    /// At most this many, oldest first.
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    MAX_LISTED
}

/// `GET /v1/invocations`: the invocations in flight, from the engine's
/// memory (no store read), with their sandboxes' usage so far.
pub(crate) async fn list_running(
    State(s): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let ListQuery { function, limit } = query_or_error(query)?;
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit}: use 1 to {MAX_LISTED}"
        )));
    }
    if let Some(name) = function
        .as_deref()
        .filter(|n| !alcove_engine::valid_name(n))
    {
        return Err(ApiError::bad_request(format!(
            "function {name:?}: a function name is 1 to 63 of a-z, 0-9, '-' and '_'"
        )));
    }
    let list =
        blocking(move || Ok(s.engine.running_invocations(function.as_deref(), limit))).await?;
    Ok(Json(list).into_response())
}

/// `DELETE /v1/invocations/{id}`: cancels an invocation in flight and
/// answers with its record once it has ended (200), or while it is still
/// ending (202).
pub(crate) async fn cancel(
    State(s): State<AppState>,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let record = s.engine.cancel(&id).await?;
    let status = if record.finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(InvocationView::from(record))).into_response())
}

/// The query of `DELETE /v1/functions/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    /// Cancel the function's invocations in flight first.
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/functions/{name}`: refused (409 `function_busy`) while the
/// function has invocations in flight, unless `force=true`.
pub(crate) async fn remove_function(
    State(s): State<AppState>,
    Segment(name): Segment,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let RemoveQuery { force } = query_or_error(query)?;
    s.engine.remove_function(&name, force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
