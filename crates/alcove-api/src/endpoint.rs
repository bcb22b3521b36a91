//! `ANY /fn/{name}[/{*rest}]`: a function as a web endpoint. The request's
//! method, path, query and headers reach the handler as CGI meta-variables,
//! its body on stdin. A `body` function answers as `invoke` does; an `http`
//! function answers with the CGI response it writes, its body streamed to
//! the client as the handler writes it.

use crate::auth::{self, Caller};
use crate::cgi::{self, CgiError};
use crate::errors::ApiError;
use crate::routes::{body_or_error, failure, invocation_headers, AppState};
use alcove_engine::{EngineError, HttpReply, HttpRequest, HttpStream, Invocation};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame};
use serde_json::json;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Bytes read from the handler's stdout at once.
const CHUNK: usize = 64 << 10;

pub(crate) async fn serve(State(s): State<AppState>, request: Request) -> Response {
    match endpoint(s, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn endpoint(s: AppState, request: Request) -> Result<Response, ApiError> {
    // Functions share the daemon's origin with the console: none may install
    // a service worker there (it would see every page and request of it).
    if request.headers().contains_key("service-worker") {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "a function cannot serve a service worker: functions share the daemon's origin with its console",
        ));
    }
    // The token, when one was checked (a router without one checks nothing).
    let by_token = request
        .extensions()
        .get::<Caller>()
        .is_none_or(|c| c.token_matched);
    let raw_path = request.uri().path().to_owned();
    let after = raw_path.strip_prefix("/fn/").unwrap_or_default();
    let (name, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    let endpoint = match s.engine.endpoint(name).await {
        Ok(endpoint) => endpoint,
        // Whether a function exists is not for callers without the token.
        Err(_) if !by_token => return Ok(auth::unauthorized()),
        Err(e) => return Err(e.into()),
    };
    let config = &endpoint.version.config;
    if !by_token && !config.public {
        return Ok(auth::unauthorized());
    }
    let path_info = percent_decode(if rest.is_empty() { "/" } else { rest });
    if path_info.contains(&0) {
        return Err(ApiError::bad_request(
            "the path holds %00, which a handler's environment cannot carry",
        ));
    }
    let http = HttpRequest {
        method: request.method().as_str().to_owned(),
        path_info,
        script_name: format!("/fn/{name}"),
        query: request.uri().query().unwrap_or_default().to_owned(),
        request_uri: request
            .uri()
            .path_and_query()
            .map_or_else(|| raw_path.clone(), |p| p.as_str().to_owned()),
        protocol: format!("{:?}", request.version()),
        headers: request
            .headers()
            .iter()
            // The token never reaches a handler: not in the Authorization
            // that matched, nor in any header that holds it some other way
            // (`bearer TOKEN` to a public function).
            .filter(|(k, v)| {
                let token = s.token.as_deref();
                let alcoves = (by_token && *k == header::AUTHORIZATION)
                    || token.is_some_and(|t| auth::carries_token(v.as_bytes(), t.as_bytes()));
                !alcoves
            })
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    };
    let http_protocol = config.protocol == "http";
    let body = body_or_error(Bytes::from_request(request, &s).await)?.to_vec();
    match s.engine.invoke_endpoint(endpoint, &http, body).await? {
        HttpReply::Done(done) => {
            Ok(held_until_taken(&s, respond(*done, http_protocol, by_token)).await)
        }
        HttpReply::Stream(stream) => Ok(stream_response(stream, by_token).await),
    }
}

/// What a handler invoked through `POST /v1/functions/NAME/invoke` sees: a
/// POST to `/` with the request's headers (its Authorization is alcove's).
pub(crate) fn invoke_request(name: &str, headers: &axum::http::HeaderMap) -> HttpRequest {
    let mut request = HttpRequest::post(&format!("/v1/functions/{name}/invoke"));
    request.script_name = format!("/v1/functions/{name}/invoke");
    request.headers = headers
        .iter()
        .filter(|(k, _)| *k != header::AUTHORIZATION)
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    request
}

/// The answer to a finished invocation: for `body` functions, stdout with
/// 200 when the handler succeeded; for `http` ones, the CGI response it
/// wrote; a failed invocation as a JSON error either way, with its record
/// (stderr included) only when `show_record`: a public function's caller
/// without the token gets the error and the invocation's id, not its log.
pub(crate) fn respond(done: Invocation, http_protocol: bool, show_record: bool) -> Response {
    let headers = invocation_headers(&done.record);
    let record = done.record;
    let mut response = if !record.succeeded() || record.output_truncated {
        let mut error = failure(&record);
        if show_record {
            error.detail = Some(json!({ "invocation": crate::wire::InvocationView::from(record) }));
        } else if matches!(
            error.code,
            "function_not_started" | "function_cancelled" | "function_killed_by_policy"
        ) {
            // These carry alcove's own reasons (host paths, policy details),
            // which are the owner's to read, by the invocation's id.
            error.message = format!(
                "the function did not run to its end; its owner can see why in invocation {}",
                record.id
            );
        }
        error.into_response()
    } else if http_protocol {
        match cgi::parse_at_end(&done.response) {
            Ok(head) => {
                let body = done.response[head.len..].to_vec();
                let mut response = (head.status, body).into_response();
                response.headers_mut().extend(head.headers);
                response
            }
            Err(e) => bad_response(e).into_response(),
        }
    } else {
        let mut response = (StatusCode::OK, done.response).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        response
    };
    response.headers_mut().extend(headers);
    mark_error(&mut response);
    response
}

/// A buffered response whose bytes count against the backlog's byte limit
/// until its client has taken them (or gone away): clients that stop reading
/// make new invocations wait their turn (503), not the daemon's memory grow.
pub(crate) async fn held_until_taken(s: &AppState, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    // The body is whole already (an invocation's buffered response).
    let rest = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(rest) => rest,
        Err(e) => return ApiError::from(EngineError::Internal(e.to_string())).into_response(),
    };
    let held = match s.engine.hold_response(rest.len()) {
        Ok(held) => held,
        Err(e) => {
            // The invocation ran and is recorded: its id finds it.
            let mut busy = ApiError::from(e).into_response();
            for name in ["x-alcove-invocation", "x-alcove-version", "x-alcove-status"] {
                if let Some(v) = parts.headers.get(name) {
                    busy.headers_mut().insert(name, v.clone());
                }
            }
            mark_error(&mut busy);
            return busy;
        }
    };
    let held = HeldBody { rest, _held: held };
    Response::from_parts(parts, Body::new(held))
}

/// Hands the response on a chunk at a time, so that the server asks for the
/// last one (and the count is released) only once it has sent the rest.
struct HeldBody {
    rest: Bytes,
    _held: alcove_engine::HeldBytes,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let chunk = this.rest.split_to(this.rest.len().min(CHUNK));
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// Tells alcove's own error answers from an `http` handler's own statuses.
fn mark_error(response: &mut Response) {
    let code = response
        .extensions()
        .get::<crate::errors::ErrorCode>()
        .map(|c| c.0);
    if let Some(code) = code {
        response
            .headers_mut()
            .insert("x-alcove-error", HeaderValue::from_static(code));
    }
}

fn bad_response(e: CgiError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_function_response",
        format!(
            "the handler's response is not a CGI response: {e}. A function deployed with \
             protocol \"http\" writes header lines such as 'Status: 200' and \
             'Content-Type: text/plain' (at most {} lines, {} KiB), then an empty line, then the body",
            cgi::MAX_HEAD_LINES,
            cgi::MAX_HEAD_BYTES >> 10
        ),
    )
}

/// Reads the handler's header block, then answers with it and streams the
/// rest of stdout as the body.
async fn stream_response(mut stream: HttpStream, show_record: bool) -> Response {
    let mut head = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; CHUNK];
    let parsed = loop {
        let n = stream.stdout.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return ended_before_head(stream, head, show_record).await;
        }
        head.extend_from_slice(&chunk[..n]);
        // Parsed again only when a line ended: a handler writing a byte at a
        // time costs at most one parse per line (and lines are bounded).
        if !chunk[..n].contains(&b'\n') && head.len() < cgi::MAX_HEAD_BYTES {
            continue;
        }
        match cgi::parse_head(&head) {
            Ok(Some(h)) => break Ok(h),
            Ok(None) => continue,
            Err(e) => break Err(e),
        }
    };
    let ids = [
        ("x-alcove-invocation", stream.id.clone()),
        ("x-alcove-version", stream.version.to_string()),
    ];
    // A bad block: the answer goes now; dropping the stream closes the
    // handler's stdout, and its invocation ends and is recorded as usual.
    let mut response = match parsed {
        Err(e) => bad_response(e).into_response(),
        Ok(h) => {
            let first = Bytes::copy_from_slice(&head[h.len..]);
            let body = StreamBody {
                first: (!first.is_empty()).then_some(first),
                stdout: Some(stream.stdout),
                done: stream.done,
                chunk,
                cut: None,
            };
            let mut response = Response::new(Body::new(body));
            *response.status_mut() = h.status;
            *response.headers_mut() = h.headers;
            response
        }
    };
    for (name, value) in ids {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    mark_error(&mut response);
    response
}

/// stdout ended before a whole header block: the invocation's failure when
/// it failed, else the handler's bad response.
async fn ended_before_head(stream: HttpStream, head: Vec<u8>, show_record: bool) -> Response {
    match stream.done.await {
        Ok(Ok(mut done)) => {
            done.response = head;
            respond(done, true, show_record)
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::from(EngineError::Internal(format!(
            "the invocation's task failed: {e}"
        )))
        .into_response(),
    }
}

/// The rest of the handler's stdout, as it comes; cut (an error, which
/// aborts the chunked body) when the invocation did not succeed.
struct StreamBody {
    first: Option<Bytes>,
    stdout: Option<tokio::net::unix::pipe::Receiver>,
    done: tokio::task::JoinHandle<Result<Invocation, EngineError>>,
    chunk: Vec<u8>,
    /// Why the stream is cut, once known: given back one poll later, so that
    /// what was written before it is flushed to the client first (a body
    /// that answers Pending makes the connection flush).
    cut: Option<String>,
}

/// Why a streamed response was cut short.
#[derive(Debug, thiserror::Error)]
#[error("the handler failed after its response began: {0}")]
struct StreamCut(String);

impl HttpBody for StreamBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(stdout) = &mut this.stdout {
            let mut buf = ReadBuf::new(&mut this.chunk);
            match Pin::new(stdout).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let data = Bytes::copy_from_slice(buf.filled());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(_) => this.stdout = None,
            }
        }
        if let Some(why) = this.cut.take() {
            return Poll::Ready(Some(Err(Box::new(StreamCut(why)))));
        }
        let outcome = match Pin::new(&mut this.done).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        let why = match outcome {
            Ok(Ok(done)) => {
                let r = &done.record;
                if r.succeeded() && !r.output_truncated && r.error.is_none() {
                    return Poll::Ready(None);
                }
                let failure = failure(r);
                format!(
                    "{} ({}, invocation {})",
                    failure.message, failure.code, r.id
                )
            }
            Ok(Err(e)) => alcove_engine::error_chain(&e),
            Err(e) => format!("the invocation's task failed: {e}"),
        };
        this.cut = Some(why);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Percent-decodes a path as CGI's PATH_INFO is (RFC 3875 §4.1.5); a '%'
/// without two hex digits stays as it is.
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn paths_are_percent_decoded_and_stray_percents_kept() {
        assert_eq!(percent_decode("/a%20b/%2F"), b"/a b//");
        assert_eq!(percent_decode("/%zz%4"), b"/%zz%4");
        assert_eq!(percent_decode("/%e2%82%ac%"), "/\u{20ac}%".as_bytes());
        assert_eq!(percent_decode("/%00"), b"/\0");
    }
}
