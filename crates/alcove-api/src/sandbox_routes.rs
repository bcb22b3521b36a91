//! `/v1/sandboxes`: agent sandboxes over HTTP (docs/sandboxes-api.md).
//! Streams are NDJSON, one object per line, written as things happen.

use crate::errors::ApiError;
use crate::routes::{query_or_error, AppState};
use alcove_engine::sandboxes::process::{Follower, Output, PtySize, Stream};
use alcove_engine::sandboxes::{
    CodeEvent, CreateSandbox, ExecRequest, SandboxState, SandboxesError,
};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Largest create, exec or code body.
pub(crate) const MAX_JSON_BODY: usize = 2 << 20;
/// Largest stdin write to a running command.
pub(crate) const MAX_STDIN_BODY: usize = 1 << 20;
/// The longest a command or a code call may be given.
const MAX_CALL_TIMEOUT_S: u64 = 24 * 3600;

impl From<SandboxesError> for ApiError {
    fn from(e: SandboxesError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %alcove_engine::error_chain(&e), "sandbox request failed");
        }
        ApiError::new(status, e.code(), alcove_engine::error_chain(&e))
    }
}

pub(crate) fn routes() -> Router<AppState> {
    let json_body = DefaultBodyLimit::max(MAX_JSON_BODY);
    Router::new()
        .route("/sandboxes", get(list).post(create).layer(json_body))
        .route("/sandboxes/{id}", get(show).delete(remove))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/start", post(start))
        .route("/sandboxes/{id}/exec", post(exec).layer(json_body))
        .route("/sandboxes/{id}/processes", get(processes))
        .route("/sandboxes/{id}/processes/{pid}/output", get(output))
        .route(
            "/sandboxes/{id}/processes/{pid}/stdin",
            post(stdin).layer(DefaultBodyLimit::max(MAX_STDIN_BODY)),
        )
        .route("/sandboxes/{id}/processes/{pid}/kill", post(kill))
        .route("/sandboxes/{id}/processes/{pid}/resize", post(resize))
        .route(
            "/sandboxes/{id}/files",
            get(download)
                .put(upload)
                .delete(remove_file)
                // Bounded by the sandbox's own disk, not by the API.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/sandboxes/{id}/files/list", get(list_files))
        .route("/sandboxes/{id}/files/mkdir", post(make_dir))
        .route("/sandboxes/{id}/files/watch", get(watch))
        .route("/sandboxes/{id}/code", post(code).layer(json_body))
        .route("/sandboxes/{id}/code/interrupt", post(interrupt))
        .route("/sandboxes/{id}/fork", post(fork).layer(json_body))
        .route("/sandboxes/{id}/snapshot", post(snapshot).layer(json_body))
        .route("/sandbox-templates", get(templates))
        .route(
            "/sandbox-templates/{name}",
            axum::routing::delete(remove_template),
        )
        .route(
            "/sandboxes/{id}/ports/{port}",
            any(crate::preview::proxy_root).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/sandboxes/{id}/ports/{port}/",
            any(crate::preview::proxy_root).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/sandboxes/{id}/ports/{port}/{*rest}",
            any(crate::preview::proxy_path).layer(DefaultBodyLimit::disable()),
        )
}

/// A JSON body, whatever its Content-Type says (curl's default included).
fn json_or_error<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = crate::routes::body_or_error(body)?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON for this call: {e}"))
    })
}

fn path_id(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("the path is not valid: {}", e.body_text())))
}

type PidPath = Result<Path<(String, i32)>, axum::extract::rejection::PathRejection>;

fn path_pid(path: PidPath) -> Result<(String, i32), ApiError> {
    path.map(|Path(p)| p).map_err(|e| {
        ApiError::bad_request(format!(
            "the path is not valid (a pid is a number): {}",
            e.body_text()
        ))
    })
}

fn ndjson(lines: impl futures_util::Stream<Item = serde_json::Value> + Send + 'static) -> Response {
    let body = lines.map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn create(
    State(s): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateSandbox = json_or_error(body)?;
    let info = s.engine.create_sandbox(req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(s): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut filter = BTreeMap::new();
    let mut state = None;
    for (k, v) in form_pairs(query.as_deref().unwrap_or(""))? {
        if let Some(key) = k.strip_prefix("metadata.") {
            filter.insert(key.to_owned(), v);
        } else if k == "state" {
            state = Some(match v.as_str() {
                "running" => SandboxState::Running,
                "paused" => SandboxState::Paused,
                "stopped" => SandboxState::Stopped,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "state {other:?}: give running, paused or stopped"
                    )))
                }
            });
        } else {
            return Err(ApiError::bad_request(format!(
                "query parameter {k:?}: give metadata.KEY=VALUE or state=running|paused|stopped"
            )));
        }
    }
    alcove_engine::sandboxes::check_filter(&filter)?;
    let sandboxes = s.engine.list_sandboxes(&filter, state);
    Ok(Json(json!({ "sandboxes": sandboxes })).into_response())
}

/// `a=b&c=d`, percent-decoded, at most 64 pairs.
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == 64 {
            return Err(ApiError::bad_request("at most 64 query parameters"));
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let decode = |t: &str| {
            percent_decode(t).ok_or_else(|| {
                ApiError::bad_request("the query string is not valid percent-encoded UTF-8")
            })
        };
        pairs.push((decode(k)?, decode(v)?));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn show(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(s.engine.sandbox_info(&path_id(id)?)?).into_response())
}

async fn remove(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(s.engine.remove_sandbox(&path_id(id)?).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutBody {
    timeout_s: u64,
}

async fn set_timeout(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let body: TimeoutBody = json_or_error(body)?;
    Ok(Json(s.engine.set_sandbox_timeout(&id, body.timeout_s).await?).into_response())
}

async fn pause(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let sandbox = s.engine.sandbox_unresumed(&path_id(id)?).await?;
    Ok(Json(sandbox.pause(true).await?).into_response())
}

async fn resume(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let sandbox = s.engine.sandbox(&path_id(id)?).await?;
    Ok(Json(sandbox.info()).into_response())
}

/// Starts a stopped sandbox again (a new agent, its files, metadata, limits
/// and expiry kept); one that runs or is paused is left as it is.
async fn start(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    Ok(Json(s.engine.start_sandbox(&path_id(id)?).await?).into_response())
}

/// A command line (run by `/bin/sh -c`) or its argv. Told apart by the
/// JSON type at once: serde's untagged enums try each variant and build an
/// error message for each miss, a measurable share of an exec's time.
enum Cmd {
    Shell(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for Cmd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CmdVisitor;
        impl<'de> serde::de::Visitor<'de> for CmdVisitor {
            type Value = Cmd;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a command line (a string) or its argv (an array of strings)")
            }
            fn visit_str<E: serde::de::Error>(self, line: &str) -> Result<Cmd, E> {
                Ok(Cmd::Shell(line.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, line: String) -> Result<Cmd, E> {
                Ok(Cmd::Shell(line))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Cmd, A::Error> {
                let mut argv = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(Cmd::Argv(argv))
            }
        }
        d.deserialize_any(CmdVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    cmd: Cmd,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    stdin: Option<String>,
    timeout_s: Option<u64>,
    #[serde(default)]
    background: bool,
    pty: Option<PtyBody>,
}

/// A terminal's size: `{"cols": 80, "rows": 24}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PtyBody {
    cols: u64,
    rows: u64,
}

impl PtyBody {
    fn size(&self) -> Result<PtySize, ApiError> {
        PtySize::new(self.cols, self.rows).map_err(ApiError::bad_request)
    }
}

fn call_timeout(timeout_s: Option<u64>, default: u64) -> Result<Duration, ApiError> {
    let t = timeout_s.unwrap_or(default);
    if !(1..=MAX_CALL_TIMEOUT_S).contains(&t) {
        return Err(ApiError::bad_request(format!(
            "timeout_s {t}: give 1 to {MAX_CALL_TIMEOUT_S}"
        )));
    }
    Ok(Duration::from_secs(t))
}

async fn exec(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let body: ExecBody = json_or_error(body)?;
    let argv = match body.cmd {
        Cmd::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line],
        Cmd::Argv(argv) => argv,
    };
    // A background command has no timeout unless given one; a foreground one 60 s.
    let timeout = match (body.background, body.timeout_s) {
        (true, None) => None,
        (_, t) => Some(call_timeout(t, 60)?),
    };
    let pty = body.pty.as_ref().map(PtyBody::size).transpose()?;
    let sandbox = s.engine.sandbox(&id).await?;
    let process = sandbox
        .exec(ExecRequest {
            argv,
            env: body.env.into_iter().collect(),
            cwd: body.cwd,
            stdin: body.stdin.map(String::into_bytes),
            keep_stdin_open: body.background,
            timeout,
            pty,
        })
        .await?;
    let started = json!({ "type": "started", "pid": process.pid });
    if body.background {
        return Ok(ndjson(futures_util::stream::iter([started])));
    }
    // What it printed before this attach is kept: nothing is missed.
    let (kept, _, live) = process.attach();
    let replay: Vec<serde_json::Value> =
        kept.into_iter().map(|(st, c)| chunk_line(st, &c)).collect();
    let stream = futures_util::stream::iter(std::iter::once(started).chain(replay))
        .chain(follow_lines(sandbox, process, live));
    Ok(ndjson(stream))
}

fn chunk_line(stream: Stream, chunk: &[u8]) -> serde_json::Value {
    let kind = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    json!({ "type": kind, "text": String::from_utf8_lossy(chunk) })
}

/// A command's output lines as they come, then its exit line. `using`
/// keeps the sandbox from an idle pause while the stream lasts.
fn follow_lines(
    using: alcove_engine::sandboxes::InUse,
    process: Arc<alcove_engine::sandboxes::process::Process>,
    live: tokio::sync::broadcast::Receiver<alcove_engine::sandboxes::process::Chunk>,
) -> impl futures_util::Stream<Item = serde_json::Value> + Send + 'static {
    let follower = Follower::new(&process, live);
    futures_util::stream::unfold(Some((using, process, follower)), |state| async move {
        let (using, process, mut follower) = state?;
        match follower.next().await {
            Some(Output::Chunk(stream, chunk)) => {
                Some((chunk_line(stream, &chunk), Some((using, process, follower))))
            }
            Some(Output::Missed(n)) => Some((
                json!({ "type": "missed", "chunks": n }),
                Some((using, process, follower)),
            )),
            None => {
                let mut end = process.end();
                let _ = end.wait_for(|e| e.is_some()).await;
                let exit = process.exit();
                let line = json!({
                    "type": "exit",
                    "code": exit.and_then(|e| e.code),
                    "signal": exit.and_then(|e| e.signal).map(signal_name),
                    "timed_out": process.timed_out(),
                    "sandbox_gone": exit.is_none(),
                });
                drop(using);
                Some((line, None))
            }
        }
    })
}

fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == signal)
        .map_or_else(|| signal.to_string(), |(name, _)| (*name).to_owned())
}

const SIGNALS: [(&str, i32); 11] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("ABRT", libc::SIGABRT),
];

async fn processes(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let sandbox = s.engine.sandbox(&path_id(id)?).await?;
    let list: Vec<serde_json::Value> = sandbox
        .processes()
        .iter()
        .map(|p| {
            let exit = p.exit();
            json!({
                "pid": p.pid,
                "cmd": p.cmd,
                "running": p.running(),
                "pty": p.has_pty(),
                "exit_code": exit.and_then(|e| e.code),
                "signal": exit.and_then(|e| e.signal).map(signal_name),
            })
        })
        .collect();
    Ok(Json(json!({ "processes": list })).into_response())
}

async fn output(State(s): State<AppState>, path: PidPath) -> Result<Response, ApiError> {
    let (id, pid) = path_pid(path)?;
    let sandbox = s.engine.sandbox(&id).await?;
    let process = sandbox.process(pid)?;
    let (kept, dropped, live) = process.attach();
    let mut first = vec![json!({ "type": "attached", "pid": pid, "dropped_bytes": dropped })];
    first.extend(kept.into_iter().map(|(st, c)| chunk_line(st, &c)));
    let stream = futures_util::stream::iter(first).chain(follow_lines(sandbox, process, live));
    Ok(ndjson(stream))
}

async fn stdin(
    State(s): State<AppState>,
    path: PidPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (id, pid) = path_pid(path)?;
    let close = form_pairs(query.as_deref().unwrap_or(""))?
        .iter()
        .any(|(k, v)| k == "close" && (v == "true" || v == "1"));
    let sandbox = s.engine.sandbox(&id).await?;
    sandbox.process(pid)?.write_stdin(&body, close).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KillBody {
    signal: Option<serde_json::Value>,
}

async fn kill(
    State(s): State<AppState>,
    path: PidPath,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (id, pid) = path_pid(path)?;
    let body: KillBody = json_or_error(body)?;
    let signal = match body.signal {
        None => libc::SIGKILL,
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .filter(|n| (1..=64).contains(n))
            .map(|n| n as i32)
            .ok_or_else(|| ApiError::bad_request("signal: give 1 to 64 or a name such as TERM"))?,
        Some(serde_json::Value::String(name)) => {
            let name = name.trim_start_matches("SIG").to_ascii_uppercase();
            SIGNALS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "signal {name:?}: give a name such as TERM, INT, KILL or a number"
                    ))
                })?
        }
        Some(_) => return Err(ApiError::bad_request("signal: give a name or a number")),
    };
    let sandbox = s.engine.sandbox(&id).await?;
    sandbox.signal(pid, signal).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{"cols": C, "rows": R}` for the terminal of a command started with
/// `pty`: the kernel sends SIGWINCH to its foreground group.
async fn resize(
    State(s): State<AppState>,
    path: PidPath,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (id, pid) = path_pid(path)?;
    let body: PtyBody = json_or_error(body)?;
    let size = body.size()?;
    let sandbox = s.engine.sandbox(&id).await?;
    sandbox.resize(pid, size)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathQuery {
    path: String,
}

/// A file route's sandbox (the path's id) and file (`?path=`).
struct FileTarget {
    id: String,
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for FileTarget {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let id = path_id(Path::<String>::from_request_parts(parts, state).await)?;
        let PathQuery { path } =
            query_or_error(Query::<PathQuery>::from_request_parts(parts, state).await)?;
        Ok(FileTarget { id, path })
    }
}

async fn download(
    State(s): State<AppState>,
    FileTarget { id, path }: FileTarget,
) -> Result<Response, ApiError> {
    let sandbox = s.engine.sandbox(&id).await?;
    let (file, size) = sandbox.open_file(&path).await?;
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(size) = size {
        headers.insert("x-alcove-file-size", size.into());
    }
    Ok(response)
}

async fn upload(
    State(s): State<AppState>,
    FileTarget { id, path }: FileTarget,
    body: Body,
) -> Result<Response, ApiError> {
    let sandbox = s.engine.sandbox(&id).await?;
    let mut file = sandbox.write_file(&path).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        file.write(&chunk).await?;
    }
    let size = file.finish().await?;
    Ok(Json(json!({ "path": path, "size": size })).into_response())
}

async fn remove_file(
    State(s): State<AppState>,
    FileTarget { id, path }: FileTarget,
) -> Result<Response, ApiError> {
    s.engine.sandbox(&id).await?.remove_file(&path).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn make_dir(
    State(s): State<AppState>,
    FileTarget { id, path }: FileTarget,
) -> Result<Response, ApiError> {
    s.engine.sandbox(&id).await?.make_dir(&path).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_files(
    State(s): State<AppState>,
    FileTarget { id, path }: FileTarget,
) -> Result<Response, ApiError> {
    let (entries, truncated) = s.engine.sandbox(&id).await?.list_files(&path).await?;
    Ok(Json(json!({ "entries": entries, "truncated": truncated })).into_response())
}

async fn watch(
    State(s): State<AppState>,
    FileTarget { id, path }: FileTarget,
) -> Result<Response, ApiError> {
    let watch = s.engine.sandbox(&id).await?.watch_dir(&path).await?;
    let events = futures_util::stream::unfold(watch, |mut watch| async move {
        let event = watch.next().await?;
        Some((json!(event), watch))
    });
    Ok(ndjson(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
    timeout_s: Option<u64>,
    language: Option<String>,
}

async fn code(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let body: CodeBody = json_or_error(body)?;
    if body.language.as_deref().is_some_and(|l| l != "python") {
        return Err(ApiError::bad_request("language: only python is served"));
    }
    let timeout = call_timeout(body.timeout_s, 300)?;
    let sandbox = s.engine.sandbox(&id).await?;
    // Few events queued for a slow reader: each may be a 2 MiB frame.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    // Runs to its end even if the client goes: the session stays consistent.
    tokio::spawn(async move {
        let errors = tx.clone();
        if let Err(e) = sandbox.run_code(&body.code, timeout, tx).await {
            let error = json!({
                "type": "error", "name": "SandboxError",
                "value": alcove_engine::error_chain(&e), "code": e.code(), "traceback": [],
            });
            let _ = errors.send(CodeEvent::Frame(error.to_string())).await;
            let done = json!({ "type": "done", "ok": false });
            let _ = errors.send(CodeEvent::Frame(done.to_string())).await;
        }
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let mut line = match rx.recv().await? {
            CodeEvent::Stdout(text) => json!({ "type": "stdout", "text": text }).to_string(),
            CodeEvent::Stderr(text) => json!({ "type": "stderr", "text": text }).to_string(),
            CodeEvent::Frame(text) => text,
        };
        line.push('\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn interrupt(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let sandbox = s.engine.sandbox(&path_id(id)?).await?;
    sandbox.interrupt_code().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForkBody {
    metadata: Option<BTreeMap<String, String>>,
    /// Copy the code interpreter's memory too (the fork then lives nested
    /// in its parent: docs/sandboxes-api.md).
    #[serde(default)]
    memory: bool,
}

async fn fork(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let body: ForkBody = json_or_error(body)?;
    if let Some(m) = &body.metadata {
        alcove_engine::sandboxes::check_filter(m)?;
    }
    // Its own task: a client that goes away cannot leave the source frozen
    // or the fork half made.
    let engine = Arc::clone(&s.engine);
    let info =
        tokio::spawn(async move { engine.fork_sandbox(&id, body.metadata, body.memory).await })
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    name: String,
}

async fn snapshot(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let body: SnapshotBody = json_or_error(body)?;
    let engine = Arc::clone(&s.engine);
    let info = tokio::spawn(async move { engine.snapshot_sandbox(&id, &body.name).await })
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn templates(State(s): State<AppState>) -> Result<Response, ApiError> {
    let engine = Arc::clone(&s.engine);
    let list = tokio::task::spawn_blocking(move || engine.sandbox_templates())
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(json!({ "templates": list })).into_response())
}

async fn remove_template(
    State(s): State<AppState>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let name = path_id(name)?;
    let engine = Arc::clone(&s.engine);
    tokio::task::spawn_blocking(move || engine.remove_sandbox_template(&name))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(StatusCode::NO_CONTENT.into_response())
}
