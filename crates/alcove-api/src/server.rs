//! Serving the router to clients that may be hostile: a cap on connections
//! (beyond it a 503 and a close), a deadline for each request's headers and
//! one for its whole body, bounded header size and count, and a shutdown
//! that stops accepting at once and waits a bounded time for what is in flight.
//! HTTP/1.1 only: what the CLI, curl, load balancers and every HTTP library speak.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What one daemon allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; one more gets a 503 and is closed.
    pub max_connections: usize,
    /// From connecting (or from the end of the previous response on a
    /// kept-alive connection) to the last header byte.
    pub header_timeout: Duration,
    /// From the headers to the last body byte, or, for a sandbox file
    /// upload, to each next 64 KiB of it.
    pub body_timeout: Duration,
    /// Bytes of request line and headers.
    pub max_header_bytes: usize,
    /// Header fields in one request.
    pub max_headers: usize,
    /// How long requests in flight may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What a refused connection reads before it is closed.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 106\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the daemon has too many open connections; retry\"}}\n";

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and gives requests in flight up to `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    crate::monitor_routes::allow_streams();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Stopping: each connection finishes what it serves and closes (hyper's
    // graceful shutdown, which an upgradeable connection has too).
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors or memory: wait rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };

        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers);
        // With upgrades: a sandbox's port preview carries WebSockets.
        let connection = http
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            )
            .with_upgrades();
        let mut stop = stopping.subscribe();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let stopped = tokio::select! {
                _ = connection.as_mut() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
            drop(permit);
        });
    }
    drop(listener);
    crate::monitor_routes::end_streams();
    stopping.send_replace(true);
    // Every connection's permit back: all of them have ended.
    let all = limits.max_connections.max(1) as u32;
    let _ = tokio::time::timeout(limits.shutdown_grace, open.acquire_many(all)).await;
}

/// Tells a connection over the cap why it is closed, without waiting on it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVERLOADED)).await;
}

/// The request body, failing once `limit` has passed since the headers, or,
/// for a file upload, since its last [`KEEP_COMING`] bytes: a large upload
/// may take as long as it keeps coming, a drip may not.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    /// A rolling deadline's bytes since it was last set.
    since: usize,
    /// Whether each [`KEEP_COMING`] bytes give it another deadline: a
    /// file upload's, streamed on and bounded by the sandbox's disk; every
    /// other body is read whole and has one deadline.
    rolling: bool,
}

/// A sandbox file upload (`PUT /v1/sandboxes/ID/files`).
fn is_upload(parts: &axum::http::request::Parts) -> bool {
    let path = parts.uri.path();
    parts.method == axum::http::Method::PUT
        && path.starts_with("/v1/sandboxes/")
        && path.ends_with("/files")
}

/// What a body must bring within each `body_timeout` to be given another.
const KEEP_COMING: usize = 64 << 10;

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl HttpBody for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if let (true, Some(Ok(data))) = (
                self.rolling,
                frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)),
            ) {
                self.since += data.map_or(0, |d| d.len());
                if self.since >= KEEP_COMING {
                    self.since = 0;
                    let next = tokio::time::Instant::now() + self.limit;
                    self.deadline.as_mut().reset(next);
                }
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn body_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let (parts, inner) = request.into_parts();
    let body = if inner.is_end_stream() {
        inner
    } else {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            since: 0,
            rolling: is_upload(&parts),
        })
    };
    next.run(Request::from_parts(parts, body)).await
}

/// Whether `error` (a body rejection's chain) is a body that came too slowly.
pub(crate) fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}
