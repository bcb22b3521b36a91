//! HTTP functions: a request's CGI/1.1 meta-variables (RFC 3875 §4.1) in
//! the handler's environment, and invocations whose stdout streams to the
//! caller as the handler writes it (for `protocol = "http"`).

use crate::admission::Ticket;
use crate::engine::{Engine, Invocation};
use crate::model::{FunctionConfig, VersionInfo};
use crate::EngineError;
use alcove_sandbox::StreamTarget;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Bytes of request headers passed to a handler, and how many; the server
/// refuses more before a request gets here, this only makes sure.
const MAX_HEADER_BYTES: usize = 64 << 10;
const MAX_HEADERS: usize = 100;

/// Checks a deploy's `protocol`.
pub(crate) fn check_config(c: &FunctionConfig) -> Result<(), String> {
    if c.protocol != "body" && c.protocol != "http" {
        return Err(format!(
            "protocol {:?}: use \"body\" (stdout is the response) or \"http\" \
             (a CGI response: headers, a blank line, the body)",
            c.protocol
        ));
    }
    Ok(())
}

/// An HTTP request as its handler sees it; the body goes to stdin.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// The path after `/fn/NAME`, percent-decoded as CGI does ("/" when none).
    pub path_info: Vec<u8>,
    /// The path the function is reached at (`/fn/NAME`), SCRIPT_NAME.
    pub script_name: String,
    /// The query as sent, without its '?'.
    pub query: String,
    /// The path and query as sent.
    pub request_uri: String,
    /// Such as `HTTP/1.1`.
    pub protocol: String,
    /// Header fields in the order received; the caller leaves out those that
    /// are alcove's own (an `Authorization` carrying its token).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl HttpRequest {
    /// A POST with no headers, to `uri`: what an invocation that came
    /// without an HTTP request (an async one) sees.
    pub fn post(uri: &str) -> Self {
        HttpRequest {
            method: "POST".into(),
            path_info: b"/".to_vec(),
            script_name: String::new(),
            query: String::new(),
            request_uri: uri.into(),
            protocol: "HTTP/1.1".into(),
            headers: Vec::new(),
        }
    }

    /// The meta-variables for this request with a body of `body_len` bytes.
    /// Each header becomes `HTTP_NAME` (upper-case, '-' as '_'; repeats
    /// joined with ", "), except Content-Type and Content-Length (their own
    /// variables), `Proxy` (HTTP_PROXY would be taken for a proxy setting:
    /// "httpoxy") and names with characters beyond letters, digits and '-'
    /// ("X-A_B" would pass for "X-A-B").
    pub(crate) fn cgi_env(&self, body_len: usize) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
            ("REQUEST_METHOD".into(), self.method.clone().into()),
            (
                "PATH_INFO".into(),
                OsString::from_vec(self.path_info.clone()),
            ),
            ("SCRIPT_NAME".into(), self.script_name.clone().into()),
            ("QUERY_STRING".into(), self.query.clone().into()),
            ("REQUEST_URI".into(), self.request_uri.clone().into()),
            ("SERVER_PROTOCOL".into(), self.protocol.clone().into()),
        ];
        if body_len > 0 {
            env.push(("CONTENT_LENGTH".into(), body_len.to_string().into()));
        }
        let mut http: Vec<(String, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for (name, value) in self.headers.iter().take(MAX_HEADERS) {
            bytes += name.len() + value.len();
            if bytes > MAX_HEADER_BYTES {
                break;
            }
            if name.eq_ignore_ascii_case("content-type") {
                env.push(("CONTENT_TYPE".into(), OsString::from_vec(value.clone())));
                continue;
            }
            let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !plain
                || name.is_empty()
                || name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("proxy")
                || value.contains(&0)
            {
                continue;
            }
            let key = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
            match http.iter_mut().find(|(k, _)| *k == key) {
                Some((_, joined)) => {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(value);
                }
                None => http.push((key, value.clone())),
            }
        }
        env.extend(
            http.into_iter()
                .map(|(k, v)| (k.into(), OsString::from_vec(v))),
        );
        env.retain(|(_, v)| !v.as_encoded_bytes().contains(&0));
        env
    }
}

/// What one attempt is given besides its version.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) body: Vec<u8>,
    /// Added to the handler's environment.
    pub(crate) cgi: Vec<(OsString, OsString)>,
    /// Where stdout streams to, instead of being kept.
    pub(crate) stdout: Option<StreamTarget>,
}

impl Input {
    fn new(request: &HttpRequest, body: Vec<u8>) -> Self {
        Input {
            cgi: request.cgi_env(body.len()),
            body,
            stdout: None,
        }
    }
}

impl From<Vec<u8>> for Input {
    fn from(body: Vec<u8>) -> Self {
        Input::new(&HttpRequest::post("/"), body)
    }
}

/// A function's `latest` version, looked up for one request (the caller
/// checks its `public` and `protocol` before running it).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub version: VersionInfo,
    cap: u32,
}

/// How an HTTP request's invocation answers.
#[derive(Debug)]
pub enum HttpReply {
    /// It ran to its end; its stdout is in the response (`body` protocol).
    Done(Box<Invocation>),
    /// It runs; its stdout arrives on the stream (`http` protocol).
    Stream(HttpStream),
}

/// An invocation whose stdout streams as the handler writes it.
#[derive(Debug)]
pub struct HttpStream {
    /// The invocation's id.
    pub id: String,
    pub version: u32,
    /// The handler's stdout: end of file once the handler's stdout closed
    /// (or was closed at the output limit) and the run ended.
    pub stdout: tokio::net::unix::pipe::Receiver,
    /// The finished invocation (its `response` is empty). Dropping this
    /// does not stop the invocation: it still ends and is recorded.
    pub done: JoinHandle<Result<Invocation, EngineError>>,
}

impl Engine {
    /// Counts a finished invocation's response of `bytes` against the
    /// backlog's byte limit until the guard is dropped (once its client took
    /// it, or went away).
    /// `Busy` when that would pass the limit: the response is then dropped.
    pub fn hold_response(&self, bytes: usize) -> Result<crate::HeldBytes, EngineError> {
        self.admission.hold(bytes)
    }

    /// The `latest` version of `name`, for a request to `/fn/NAME`.
    pub async fn endpoint(self: &Arc<Self>, name: &str) -> Result<Endpoint, EngineError> {
        let (version, cap) = self.resolve(name, None).await?;
        Ok(Endpoint { version, cap })
    }

    /// Runs `name` (its `latest` unless `version`) once for `request`,
    /// `body` on stdin, and returns the record and stdout when it has ended,
    /// and whether that version speaks the `http` protocol.
    pub async fn invoke_request(
        self: &Arc<Self>,
        name: &str,
        version: Option<u32>,
        request: &HttpRequest,
        body: Vec<u8>,
    ) -> Result<(Invocation, bool), EngineError> {
        let ticket = self.admission.enter(body.len())?;
        let (version, cap) = self.resolve(name, version).await?;
        let http = version.config.protocol == "http";
        let input = Input::new(request, body);
        let done = self.start(Endpoint { version, cap }, input, ticket)?;
        Ok((done.await.map_err(joined)??, http))
    }

    /// Runs an endpoint once for `request`: to its end for the `body`
    /// protocol, streaming stdout for `http`.
    pub async fn invoke_endpoint(
        self: &Arc<Self>,
        endpoint: Endpoint,
        request: &HttpRequest,
        body: Vec<u8>,
    ) -> Result<HttpReply, EngineError> {
        let ticket = self.admission.enter(body.len())?;
        let mut input = Input::new(request, body);
        if endpoint.version.config.protocol != "http" {
            let done = self
                .start(endpoint, input, ticket)?
                .await
                .map_err(joined)??;
            return Ok(HttpReply::Done(Box::new(done)));
        }
        let (read, write) = alcove_sys::fd::pipe_cloexec()
            .map_err(EngineError::io("creating the response stream's pipe"))?;
        alcove_sys::fd::set_nonblocking(write.as_fd(), true)
            .map_err(EngineError::io("creating the response stream's pipe"))?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(read)
            .map_err(EngineError::io("creating the response stream's pipe"))?;
        input.stdout = Some(StreamTarget(Arc::new(write)));
        let version = endpoint.version.version;
        let record = self.new_record(&endpoint.version, false);
        let id = record.id.clone();
        let done = self.start_with(endpoint, input, record, ticket)?;
        Ok(HttpReply::Stream(HttpStream {
            id,
            version,
            stdout,
            done,
        }))
    }

    fn start(
        self: &Arc<Self>,
        endpoint: Endpoint,
        input: Input,
        ticket: Ticket,
    ) -> Result<JoinHandle<Result<Invocation, EngineError>>, EngineError> {
        let record = self.new_record(&endpoint.version, false);
        self.start_with(endpoint, input, record, ticket)
    }

    /// Runs an admitted synchronous invocation in its own task, registered
    /// (listed, cancellable) from now: a caller that goes away drops its
    /// handle, but the invocation still ends and is recorded.
    fn start_with(
        self: &Arc<Self>,
        Endpoint { version, cap }: Endpoint,
        input: Input,
        record: crate::InvocationRecord,
        ticket: Ticket,
    ) -> Result<JoinHandle<Result<Invocation, EngineError>>, EngineError> {
        let entry = self.running.register(&record)?;
        let engine = Arc::clone(self);
        let alive = self.in_flight();
        Ok(tokio::spawn(async move {
            let _alive = alive;
            let slots = engine
                .slots_unless_cancelled(&entry, &version.function, cap)
                .await;
            drop(ticket);
            let Some(slots) = slots? else {
                let record = engine.record_cancelled(record, &entry).await?;
                return Ok(Invocation {
                    record,
                    response: Vec::new(),
                });
            };
            let (record, response) = engine
                .run(version, record, input, slots, true, false)
                .await?;
            Ok(Invocation { record, response })
        }))
    }
}

fn joined(e: tokio::task::JoinError) -> EngineError {
    EngineError::Internal(format!("the invocation's task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::HttpRequest;
    use std::ffi::OsString;

    fn get(env: &[(OsString, OsString)], key: &str) -> Option<String> {
        env.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    #[test]
    fn headers_become_http_variables_and_hostile_names_are_left_out() {
        let mut r = HttpRequest::post("/fn/f/a%20b?x=1");
        r.method = "PUT".into();
        r.path_info = b"/a b".to_vec();
        r.query = "x=1".into();
        for (k, v) in [
            ("X-Trace", "a"),
            ("x-trace", "b"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "999"),
            ("Proxy", "http://evil"),
            ("X-A_B", "spoof"),
            ("X-A.B", "odd"),
        ] {
            r.headers.push((k.into(), v.as_bytes().to_vec()));
        }
        let env = r.cgi_env(3);
        assert_eq!(get(&env, "REQUEST_METHOD").as_deref(), Some("PUT"));
        assert_eq!(get(&env, "PATH_INFO").as_deref(), Some("/a b"));
        assert_eq!(get(&env, "QUERY_STRING").as_deref(), Some("x=1"));
        assert_eq!(get(&env, "REQUEST_URI").as_deref(), Some("/fn/f/a%20b?x=1"));
        assert_eq!(get(&env, "HTTP_X_TRACE").as_deref(), Some("a, b"));
        assert_eq!(get(&env, "CONTENT_TYPE").as_deref(), Some("text/plain"));
        assert_eq!(get(&env, "CONTENT_LENGTH").as_deref(), Some("3"));
        assert_eq!(get(&env, "HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get(&env, "HTTP_PROXY"), None);
        assert_eq!(get(&env, "HTTP_X_A_B"), None);
        assert!(env.iter().all(|(k, _)| !k.to_string_lossy().contains('.')));
    }

    #[test]
    fn no_body_no_content_length_and_headers_are_bounded() {
        let mut r = HttpRequest::post("/");
        for i in 0..1000 {
            r.headers.push((format!("x-h{i}"), vec![b'v'; 1000]));
        }
        let env = r.cgi_env(0);
        assert_eq!(get(&env, "CONTENT_LENGTH"), None);
        let http = env
            .iter()
            .filter(|(k, _)| k.to_string_lossy().starts_with("HTTP_"))
            .count();
        assert!(http > 0 && http <= 65, "{http} header variables");
    }
}
