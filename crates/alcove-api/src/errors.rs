//! Errors as the API returns them: a status, a stable code, a message.

use alcove_engine::EngineError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields for the error object (an invocation's record).
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Invalid(_) | EngineError::BadCode(_) => StatusCode::BAD_REQUEST,
            EngineError::NoFunction(_)
            | EngineError::NoVersion(..)
            | EngineError::NoInvocation(_)
            | EngineError::NoSecret(..) => StatusCode::NOT_FOUND,
            EngineError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            EngineError::Stopping | EngineError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EngineError::Conflict(..) => StatusCode::CONFLICT,
            EngineError::Internal(_)
            | EngineError::Store(_)
            | EngineError::SharedStore(_)
            | EngineError::Io { .. }
            | EngineError::Sandbox(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), alcove_engine::error_chain(&e))
    }
}

/// An error response's code, kept in its extensions for layers that tell
/// alcove's errors from a handler's answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code;
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.detail, error.as_object_mut())
        {
            obj.extend(extra);
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
