//! The live view of the engine: the event stream (`GET /v1/events`, server-
//! sent events), the monitor's state (`GET /v1/monitor`), and learning a
//! function's policy (`/v1/functions/{name}/learn`).

use crate::errors::ApiError;
use crate::routes::{blocking, body_or_error, query_or_error, AppState, Segment};
use alcove_engine::LearnRequest;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Event streams open at once; more are refused (each holds a connection
/// and a backlog of events).
pub const MAX_EVENT_STREAMS: usize = 64;

static STREAMS: AtomicUsize = AtomicUsize::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
static STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A server starts: its streams may run.
pub(crate) fn allow_streams() {
    STOPPING.store(false, Ordering::SeqCst);
}

/// Ends every event stream (the server is shutting down and would otherwise
/// wait for them).
pub(crate) fn end_streams() {
    STOPPING.store(true, Ordering::SeqCst);
    STOP.notify_waiters();
}

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only this function's events.
    function: Option<String>,
}

/// An open stream's receiver and slot, given back when the stream ends.
struct Slot {
    receiver: Option<tokio::sync::broadcast::Receiver<alcove_engine::EngineEvent>>,
    engine: Arc<alcove_engine::Engine>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.receiver.take()); // before the engine counts receivers
        STREAMS.fetch_sub(1, Ordering::SeqCst);
        self.engine.events_closed();
    }
}

/// `GET /v1/events`: every invocation's events as they happen (exec, exit,
/// denied, budget_kill, oom from the kernel; start and end from the engine),
/// as server-sent events whose data is one JSON object.
pub(crate) async fn events(
    State(s): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let EventsQuery { function } = query_or_error(query)?;
    if let Some(name) = function
        .as_deref()
        .filter(|n| !alcove_engine::valid_name(n))
    {
        return Err(ApiError::bad_request(format!(
            "function {name:?}: a function name is 1 to 63 of a-z, 0-9, '-' and '_'"
        )));
    }
    if STREAMS.fetch_add(1, Ordering::SeqCst) >= MAX_EVENT_STREAMS {
        STREAMS.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{MAX_EVENT_STREAMS} event streams are open already; close one and retry"),
        ));
    }
    let slot = Slot {
        receiver: Some(s.engine.subscribe_events()),
        engine: Arc::clone(&s.engine),
    };
    let function: Option<Arc<str>> = function.map(Arc::from);
    let stream =
        futures_util::stream::unfold((slot, function), |(mut slot, function)| async move {
            let sse = next_event(&mut slot, function.as_deref()).await?;
            Some((Ok::<_, std::convert::Infallible>(sse), (slot, function)))
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The next event of `function` (or any) for an open stream; `None` ends it.
async fn next_event(slot: &mut Slot, function: Option<&str>) -> Option<Event> {
    let receiver = slot.receiver.as_mut()?;
    loop {
        if STOPPING.load(Ordering::SeqCst) {
            return None;
        }
        let next = tokio::select! {
            next = receiver.recv() => next,
            () = STOP.notified() => return None,
        };
        let event = match next {
            Ok(e) => e,
            Err(RecvError::Closed) => return None,
            Err(RecvError::Lagged(missed)) => {
                // Said, not hidden: the reader was too slow.
                let data = format!("{{\"event\":\"lagged\",\"missed\":{missed}}}");
                return Some(Event::default().event("lagged").data(data));
            }
        };
        if function.is_some() && event.function.as_deref() != function {
            continue;
        }
        let kind = serde_json::from_str::<serde_json::Value>(&event.json)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "event".into());
        return Some(Event::default().event(kind).data(&*event.json));
    }
}

/// `GET /v1/monitor`: whether the eBPF monitor is loaded, which costly
/// programs are attached, how many sandboxes it watches.
pub(crate) async fn monitor(State(s): State<AppState>) -> Result<Response, ApiError> {
    let engine = Arc::clone(&s.engine);
    let (status, error) =
        blocking(move || Ok((engine.monitor_status(), engine.monitor_error()))).await?;
    Ok(Json(serde_json::json!({
        "loaded": status.is_some(),
        "error": error,
        "status": status,
    }))
    .into_response())
}

/// `POST /v1/functions/{name}/learn`: learn its policy from its next
/// invocations (a count, a window, or both; 100 invocations by default).
pub(crate) async fn start_learning(
    State(s): State<AppState>,
    Segment(name): Segment,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let req: LearnRequest = if body.is_empty() {
        LearnRequest::default()
    } else {
        crate::wire::parse_json(&body, "learn")?
    };
    let learned = blocking(move || s.engine.learn(&name, req)).await?;
    Ok(Json(learned).into_response())
}

/// `GET /v1/functions/{name}/learn`: the learned profile and the session.
pub(crate) async fn learned(
    State(s): State<AppState>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    let learned = blocking(move || s.engine.learned(&name)).await?;
    Ok(Json(learned).into_response())
}

/// `DELETE /v1/functions/{name}/learn`: stops learning (the profile stays).
pub(crate) async fn stop_learning(
    State(s): State<AppState>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    let learned = blocking(move || s.engine.stop_learning(&name)).await?;
    Ok(Json(learned).into_response())
}
