//! The operator console: three static files built into the binary, served
//! at `/ui/` without the token (they hold no data), which then reach the API
//! with the token the operator types in. Everything they show comes from
//! `/v1` under the same credential and rules as any client.
//!
//! Why a browser cannot be turned against it:
//! - the token travels in an `Authorization` header set by the page's own
//!   script, never in a cookie, so another site cannot make the browser send
//!   it (no CSRF), and no CORS header lets another origin read an answer;
//! - the token is held in the page's memory only: public functions share
//!   this origin, and a page of theirs in the same tab could read its
//!   storage; they cannot become a service worker over it either (the
//!   endpoint refuses worker scripts and drops `Service-Worker-Allowed`),
//!   and opening the console gives them no handle on it (COOP);
//! - a strict Content-Security-Policy: scripts and styles only from these
//!   files, no inline code, no other origin, no framing;
//! - the script builds every element with `textContent`, so what a function
//!   printed is shown as text, never run.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::routes::AppState;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// What the console's pages may load and do: only their own files and the API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the console's files (served without the token).
pub(crate) fn is_console_file(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/app.css")
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(to_console))
        .route("/ui", get(to_console))
        .route(
            "/ui/",
            get(|| async { file(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { file(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { file(STYLE, "text/css; charset=utf-8") }),
        )
}

async fn to_console() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/ui/")]).into_response()
}

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A page that opens the console (a public function's, on this same
    // origin) gets no handle on it.
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new daemon's files are fetched again, never an old build's.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_hold_no_inline_code_and_build_no_markup() {
        // The policy forbids inline code; a file that had some would break
        // in the browser, so it is caught here first.
        for attribute in [" onclick=", " onload=", " onerror=", " style=", "<style"] {
            assert!(!INDEX.contains(attribute), "index.html has {attribute}");
        }
        assert!(
            !INDEX.contains("<script>") && INDEX.contains("src=\"/ui/app.js\""),
            "index.html loads only app.js"
        );
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn only_the_console_files_skip_the_token() {
        assert!(is_console_file("/ui/app.js"));
        for path in [
            "/v1/functions",
            "/ui/../v1/functions",
            "/ui/x",
            "/metrics",
            "/uix",
        ] {
            assert!(!is_console_file(path), "{path}");
        }
    }
}
