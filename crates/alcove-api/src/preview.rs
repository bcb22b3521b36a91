//! Port previews: `/v1/sandboxes/{id}/ports/{port}/...` proxies HTTP, and
//! WebSocket (any `Upgrade`), to a server listening on the sandbox's own
//! loopback. The daemon connects from inside the sandbox's network
//! namespace, so nothing of the sandbox is exposed on the host's network;
//! the caller needs the API's token like any other route, and the token is
//! not passed on.

use crate::errors::ApiError;
use crate::routes::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

/// WebSocket (upgraded) connections open at once through the daemon, and
/// through one sandbox: an upgraded connection leaves the server's
/// connection count, so these bound what clients and sandboxes can hold.
pub(crate) const MAX_TUNNELS: usize = 512;
pub(crate) const MAX_TUNNELS_PER_SANDBOX: usize = 64;
/// HTTP requests through previews at once (until their response's body
/// ends), through the daemon and to one sandbox: each holds one of the
/// server's connections, and a sandbox's server decides how long, so
/// without these one sandbox could hold every connection the API has.
pub(crate) const MAX_REQUESTS: usize = 256;
pub(crate) const MAX_REQUESTS_PER_SANDBOX: usize = 64;
/// How long a sandbox's server may take to answer a request's headers.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// What a preview holds while it lasts: a WebSocket, or an HTTP request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    WebSocket,
    Http,
}

static TUNNELS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_TUNNELS);
static REQUESTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_REQUESTS);
type Counts = std::collections::HashMap<(Kind, String), usize>;
static PER_SANDBOX: std::sync::Mutex<Option<Counts>> = std::sync::Mutex::new(None);

/// One preview in use, counted daemon-wide and for its sandbox until dropped.
struct Pass {
    kind: Kind,
    sandbox: String,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Pass {
    fn open(kind: Kind, sandbox: &str) -> Result<Pass, ApiError> {
        let busy =
            |what: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", what);
        let (all, most, per_sandbox, what) = match kind {
            Kind::WebSocket => (
                &TUNNELS,
                MAX_TUNNELS,
                MAX_TUNNELS_PER_SANDBOX,
                "WebSocket connections are open",
            ),
            Kind::Http => (
                &REQUESTS,
                MAX_REQUESTS,
                MAX_REQUESTS_PER_SANDBOX,
                "preview requests are in flight",
            ),
        };
        let permit = all
            .try_acquire()
            .map_err(|_| busy(format!("{most} {what} through this daemon: close some")))?;
        let mut counts = PER_SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts
            .get_or_insert_with(Default::default)
            .entry((kind, sandbox.to_owned()))
            .or_insert(0);
        if *count >= per_sandbox {
            return Err(busy(format!(
                "{per_sandbox} {what} to sandbox {sandbox}: close some"
            )));
        }
        *count += 1;
        Ok(Pass {
            kind,
            sandbox: sandbox.to_owned(),
            _permit: permit,
        })
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut counts = PER_SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = counts.as_mut() {
            let key = (self.kind, std::mem::take(&mut self.sandbox));
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// Headers a hop must not forward (RFC 9110 7.6.1), besides `Connection`'s list.
const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "authorization",
];

pub(crate) async fn proxy_root(
    state: State<AppState>,
    Path((id, port)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    proxy(state, id, port, String::new(), request).await
}

pub(crate) async fn proxy_path(
    state: State<AppState>,
    Path((id, port, rest)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    proxy(state, id, port, rest, request).await
}

async fn proxy(
    State(s): State<AppState>,
    id: String,
    port: String,
    rest: String,
    mut request: Request,
) -> Result<Response, ApiError> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("port {port:?}: give 1 to 65535")))?;
    let upgrade = request.headers().contains_key(header::UPGRADE);
    // Counted before anything is opened: over the cap costs nothing upstream.
    let pass = Pass::open(
        match upgrade {
            true => Kind::WebSocket,
            false => Kind::Http,
        },
        &id,
    )?;
    let sandbox = s.engine.sandbox(&id).await?;
    let stream = sandbox.connect_port(port).await?;
    let bad_gateway = |e: hyper::Error| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("the server on port {port} in the sandbox: {e}"),
        )
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bad_gateway)?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });

    // What the client asked, as the sandbox's server should see it: the
    // raw path after the prefix (its percent-escapes kept as sent).
    let prefix = format!("/v1/sandboxes/{id}/ports/{port}");
    let raw = request.uri().path();
    let rest = match raw.find(&format!("/ports/{port}")) {
        Some(at) => raw[at + format!("/ports/{port}").len()..]
            .trim_start_matches('/')
            .to_owned(),
        None => rest,
    };
    let path_and_query = match request.uri().query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    parts.uri = path_and_query
        .parse()
        .map_err(|_| ApiError::bad_request("the path is not a valid URI"))?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&format!("127.0.0.1:{port}")).expect("a valid host header"),
    );
    if let Ok(prefix) = HeaderValue::from_str(&prefix) {
        parts.headers.insert("x-forwarded-prefix", prefix);
    }
    // The server's time to answer counts from the end of the request's
    // body: an upload through a preview may take as long as it keeps coming.
    let (sent, mut body_sent) =
        tokio::sync::watch::channel(axum::body::HttpBody::is_end_stream(&body));
    let forwarded = Request::from_parts(parts, Body::new(Watched { inner: body, sent }));
    let answered = async {
        let _ = body_sent.wait_for(|sent| *sent).await;
        tokio::time::sleep(ANSWER_WITHIN).await;
    };
    let mut response = tokio::select! {
        response = sender.send_request(forwarded) => response.map_err(bad_gateway)?,
        () = answered => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                format!(
                    "the server on port {port} in the sandbox sent no answer within {} s of the request",
                    ANSWER_WITHIN.as_secs()
                ),
            ))
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the sandbox's server switched protocols unasked",
            ));
        };
        let server_upgrade = hyper::upgrade::on(&mut response);
        // Both sides' bytes, copied until either closes; the guard keeps the
        // sandbox from an idle pause while the connection lives.
        tokio::spawn(async move {
            let _using = sandbox;
            let _counted = pass;
            let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
                return;
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // The daemon's own headers are the daemon's to set.
    let own: Vec<_> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-alcove-"))
        .cloned()
        .collect();
    for name in own {
        parts.headers.remove(name);
    }
    // Counted until its body ends or the client goes; the sandbox is in
    // use (no idle pause) as long (a long event stream, say).
    use http_body_util::BodyExt;
    let body = body.map_frame(move |frame| {
        let _counted = (&pass, &sandbox);
        frame
    });
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}

/// A request body that says when it has all been taken (its end, or an error).
struct Watched {
    inner: Body,
    sent: tokio::sync::watch::Sender<bool>,
}

impl axum::body::HttpBody for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.sent.send_replace(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        if ended {
            self.sent.send_replace(true);
        }
        ended
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap, keep_upgrade: bool) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !(keep_upgrade && name == "upgrade"))
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}
