//! Changing a deployed function without new code: `PATCH
//! /v1/functions/{name}` (settings) and `/v1/functions/{name}/secrets`
//! (names, and one secret set or removed), each change a new version; and
//! the answer every deploy-like request shares.

use crate::errors::ApiError;
use crate::routes::{blocking, AppState, Segment};
use alcove_engine::{ConfigChange, Deployed, MAX_SECRET_BYTES};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Largest `PUT .../secrets/{secret}` body: one secret value.
pub const MAX_SECRET_BODY: usize = MAX_SECRET_BYTES;

/// 201 and `Location` for a new version; 200 with `"unchanged": true` when
/// the request changed nothing (`latest` is returned).
pub(crate) fn deployed_response(deployed: Deployed) -> Response {
    let status = if deployed.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!("/v1/functions/{}", deployed.version.function);
    let mut response = (status, Json(deployed)).into_response();
    if status == StatusCode::CREATED {
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    response
}

/// `PATCH /v1/functions/{name}`: the settings to change (a [`ConfigChange`]).
pub(crate) async fn configure(
    State(s): State<AppState>,
    Segment(name): Segment,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let change: ConfigChange =
        crate::wire::parse_json(&crate::routes::body_or_error(body)?, "configuration")?;
    let deployed = blocking(move || s.engine.configure(&name, change)).await?;
    Ok(deployed_response(deployed))
}

pub(crate) async fn list_secrets(
    State(s): State<AppState>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    let names = blocking(move || s.engine.secret_names(&name)).await?;
    Ok(Json(json!({ "secrets": names })).into_response())
}

/// A function's name and a secret's, from the path.
pub(crate) struct SecretPath {
    function: String,
    secret: String,
}

impl<S: Send + Sync> FromRequestParts<S> for SecretPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((function, secret))| SecretPath { function, secret })
            .map_err(|e| ApiError::bad_request(format!("the path is not valid: {}", e.body_text())))
    }
}

/// `PUT /v1/functions/{name}/secrets/{secret}`: the body is the value, as is.
pub(crate) async fn set_secret(
    State(s): State<AppState>,
    path: SecretPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a secret may have at most {} MiB", MAX_SECRET_BYTES >> 20),
            )
        } else {
            ApiError::new(
                e.status(),
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
        }
    })?;
    let change = ConfigChange {
        secrets: [(path.secret, value.to_vec())].into(),
        ..ConfigChange::default()
    };
    let deployed = blocking(move || s.engine.configure(&path.function, change)).await?;
    Ok(deployed_response(deployed))
}

/// `DELETE /v1/functions/{name}/secrets/{secret}`.
pub(crate) async fn remove_secret(
    State(s): State<AppState>,
    path: SecretPath,
) -> Result<Response, ApiError> {
    let deployed = blocking(move || s.engine.remove_secret(&path.function, &path.secret)).await?;
    Ok(deployed_response(deployed))
}
