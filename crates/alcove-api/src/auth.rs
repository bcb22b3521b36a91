//! Bearer tokens: every request but /healthz, /readyz and the console's
//! files (/ui/) must carry `Authorization: Bearer TOKEN` (`alcove serve`
//! always has a token; a router built without one, in tests, checks
//! nothing), compared in constant time.
//! Requests to `/fn/...` pass on with a [`Caller`] saying whether the token
//! matched: a function deployed `public` answers without it.

use crate::errors::ApiError;
use crate::routes::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The daemon's proof that it holds `token`, for a client's `nonce`: a client
/// that found a token on disk checks it before sending the token, so a
/// program squatting on the daemon's port (a sandbox on the host's network,
/// while the daemon is down) never receives it.
pub fn token_proof(token: &str, nonce: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"alcove-token-proof\0");
    h.update(token.as_bytes());
    h.update(b"\0");
    h.update(nonce.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest nonce the daemon answers a proof for.
pub(crate) const MAX_NONCE: usize = 128;

/// Whether `presented` (an Authorization header's value) carries `token`.
/// The comparison takes the same time wherever the bytes differ; only the
/// token's length can be learnt from timing.
pub(crate) fn bearer_matches(presented: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(value) = presented else { return false };
    let Some(given) = value.strip_prefix(b"Bearer ") else {
        return false;
    };
    bool::from(given.ct_eq(token))
}

/// Whether a header's `value` holds `token` as one of its words (split at
/// whitespace and commas), whatever the scheme or header: `bearer TOKEN`,
/// `Bearer  TOKEN` or a bare `TOKEN` do not authenticate, but must not reach
/// a public function's handler either. Each word is compared in constant time.
pub(crate) fn carries_token(value: &[u8], token: &[u8]) -> bool {
    let mut found = subtle::Choice::from(0);
    for word in value.split(|b| b.is_ascii_whitespace() || *b == b',') {
        found |= word.ct_eq(token);
    }
    bool::from(found)
}

/// For `/fn/...` requests: whether they carried the daemon's token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub token_matched: bool,
}

pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    // Probes of load balancers and Kubernetes carry no token, and the
    // console's files hold no data (they ask for the token themselves).
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz") || crate::console::is_console_file(path) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let token_matched = bearer_matches(presented, token.as_bytes());
    let mut request = request;
    if request.uri().path().starts_with("/fn/") {
        request.extensions_mut().insert(Caller { token_matched });
        return next.run(request).await;
    }
    if token_matched {
        return next.run(request).await;
    }
    unauthorized()
}

/// The answer to a request without the token.
pub(crate) fn unauthorized() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this daemon needs its token: send the header 'Authorization: Bearer TOKEN'; the daemon keeps it in DATA_DIR/token (root's), which `alcove fn` reads for a daemon on loopback, or give $ALCOVE_TOKEN, $ALCOVE_TOKEN_FILE or --token-file",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::bearer_matches;

    #[test]
    fn proofs_differ_by_token_and_by_nonce() {
        use super::token_proof;
        let p = token_proof("0123456789abcdef", "n1");
        assert_eq!(p.len(), 64);
        assert_ne!(p, token_proof("0123456789abcdeF", "n1"));
        assert_ne!(p, token_proof("0123456789abcdef", "n2"));
        assert_eq!(p, token_proof("0123456789abcdef", "n1"));
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cretX"), b"s3cret"));
        assert!(!bearer_matches(Some(b"bearer s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"s3cret"), b"s3cret"));
        assert!(!bearer_matches(None, b"s3cret"));
    }

    #[test]
    fn the_token_is_found_whatever_its_scheme_but_not_inside_other_words() {
        use super::carries_token;
        for v in [
            "bearer s3cret",
            "Bearer  s3cret",
            "s3cret",
            "Token s3cret, x",
            "a,s3cret",
        ] {
            assert!(carries_token(v.as_bytes(), b"s3cret"), "{v}");
        }
        for v in ["Bearer s3cretX", "Bearer s3cre", "Basic czNjcmV0", ""] {
            assert!(!carries_token(v.as_bytes(), b"s3cret"), "{v}");
        }
    }
}
