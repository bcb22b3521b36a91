//! The stateful code interpreter of an agent sandbox: one python3 process
//! running runtimes/python/alcove_repl.py, started by the agent on the
//! first call and kept, so each call sees what the earlier ones defined.
//! Its stdout and stderr are pipes read here; its frames (result, error,
//! done) come over a socket of its own, as JSON lines.

use super::live::LiveSandbox;
use super::SandboxesError;
use alcove_agent::ExitStatus;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

/// The longest source one call may send.
pub const MAX_CODE: usize = 1 << 20;
/// How long a call whose interpreter died waits for the report of how it
/// ended (a fork's interpreter is reaped by its source's agent, which the
/// fork's agent waits up to 1.5 s for, from a later moment than this wait's start).
const END_REPORT_WAIT: Duration = Duration::from_secs(3);
/// How long a call still reads the interpreter's frames after it ended
/// (what it forked may keep its channel open: the call does not wait for that).
const AFTER_END: Duration = Duration::from_millis(500);

/// What a call whose interpreter died says of its end.
fn interpreter_end(end: Option<ExitStatus>) -> String {
    match end {
        Some(ExitStatus {
            signal: Some(libc::SIGKILL),
            ..
        }) => "the interpreter was killed (SIGKILL: out of memory, or the sandbox's limits)".into(),
        Some(ExitStatus {
            signal: Some(signal),
            ..
        }) => format!("the interpreter was killed by signal {signal}"),
        Some(ExitStatus {
            code: Some(code), ..
        }) => format!("the interpreter exited with code {code}"),
        // A fork's interpreter on a kernel before Linux 6.15 (which keeps no
        // exit status for a process's other watchers), or code that closed
        // the interpreter's channel and lives on (it is restarted).
        _ => "the interpreter ended, or closed its channel (no exit status was reported)".into(),
    }
}

/// The longest frame the interpreter may send (its result is cut at 1 MiB).
const MAX_FRAME: usize = 2 << 20;
/// How long an interpreter has to start.
const START: Duration = Duration::from_secs(20);
/// After an interrupt, how long a call has to finish before the
/// interpreter is killed (and the next call starts a fresh one).
const AFTER_INTERRUPT: Duration = Duration::from_secs(3);
/// How long the interpreter has to take a call's code in (it reads as soon
/// as it waits for a request), and an interrupt to wait while it does.
const SEND_LIMIT: Duration = Duration::from_secs(10);
/// The bytes of waiting frames dropped before a call (a missed
/// interrupt's frame is ~40); the rest, if any, is read by the call.
const WAITING_FRAMES_BUDGET: usize = 64 << 10;
/// How many times one call's interrupt is sent again because the
/// interpreter said it came before the call's code ran.
const INTERRUPT_RETRIES: u32 = 20;

/// The code call in flight (pid 0: none), for interrupts. An interrupt is a
/// SIGINT, which the interpreter cannot tie to a call; one that arrives
/// while it waits for its next request says so (`interrupt_missed`, naming
/// the last call it finished), and the call it was meant for, if that call
/// has not run yet, gets it again.
#[derive(Debug, Default)]
pub(crate) struct CallInFlight {
    pid: i32,
    interrupted: bool,
}

/// What a call streams, in order; `Frame` is one of the interpreter's own
/// JSON lines (`result`, `error`, `done`), checked to be JSON and passed on
/// as its text, never parsed into a tree (a hostile interpreter's frame
/// costs its own size, no more).
#[derive(Debug, Clone)]
pub enum CodeEvent {
    Stdout(String),
    Stderr(String),
    Frame(String),
}

/// The one field of a frame the daemon reads; the rest is checked, not kept.
#[derive(serde::Deserialize)]
struct FrameHead {
    #[serde(rename = "type")]
    kind: String,
}

/// One frame: its type and its text.
struct Frame {
    kind: String,
    text: String,
}

fn frame_of(value: serde_json::Value) -> CodeEvent {
    CodeEvent::Frame(value.to_string())
}

pub(crate) struct Interpreter {
    pid: i32,
    end: watch::Receiver<Option<ExitStatus>>,
    frames: BufReader<tokio::net::unix::OwnedReadHalf>,
    /// A frame read in part (reading one is not cancel-safe; this keeps it).
    partial: Vec<u8>,
    requests: tokio::net::unix::OwnedWriteHalf,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
    calls: u64,
}

impl LiveSandbox {
    /// Runs `code` in the sandbox's interpreter (started on first use),
    /// sending what it prints and its frames to `events`; the last is `done`.
    pub async fn run_code(
        &self,
        code: &str,
        timeout: Duration,
        events: mpsc::Sender<CodeEvent>,
    ) -> Result<(), SandboxesError> {
        if code.len() > MAX_CODE {
            return Err(SandboxesError::Invalid(format!(
                "code is {} bytes; at most {MAX_CODE}",
                code.len()
            )));
        }
        // One call at a time; a second is refused, not queued.
        let Ok(mut slot) = self.code.try_lock() else {
            return Err(SandboxesError::Conflict(
                "a code call is running in this sandbox: wait for it, or interrupt it".into(),
            ));
        };
        if slot
            .as_ref()
            .is_none_or(|i| i.end.borrow().is_some() || i.end.has_changed().is_err())
        {
            *slot = Some(self.start_interpreter().await?);
        }
        let Some(interpreter) = slot.as_mut() else {
            return Err(SandboxesError::Start(
                "the interpreter did not start".into(),
            ));
        };
        let healthy = interpreter.call(code, timeout, &events, self).await;
        if !matches!(healthy, Ok(true)) {
            // Killed, stuck or lost: the next call starts a fresh interpreter.
            if let Some(old) = slot.take() {
                let _ = self.link.signal(old.pid, libc::SIGKILL).await;
            }
        }
        healthy.map(drop)
    }

    /// Interrupts the call running now (KeyboardInterrupt in the code; the
    /// session and its variables stay).
    pub async fn interrupt_code(&self) -> Result<(), SandboxesError> {
        let gate = tokio::time::timeout(SEND_LIMIT, self.code_signal.clone().lock_owned())
            .await
            .map_err(|_| {
                SandboxesError::Conflict(
                    "the call is still being sent to the interpreter: interrupt again in a moment"
                        .into(),
                )
            })?;
        let pid = {
            let mut call = self.code_call.lock().unwrap_or_else(|e| e.into_inner());
            if call.pid <= 0 {
                return Err(SandboxesError::Conflict("no code is running".into()));
            }
            call.interrupted = true;
            call.pid
        };
        // Sent by a task of its own that holds the gate to the end, even if this
        // call is dropped (its client gone): the signal never lands in a later call.
        let link = self.link.clone();
        tokio::spawn(async move {
            let _gate = gate;
            link.signal(pid, libc::SIGINT).await
        })
        .await
        .map_err(|_| SandboxesError::Start("the interrupt was not sent".into()))??;
        Ok(())
    }

    async fn start_interpreter(&self) -> Result<Interpreter, SandboxesError> {
        let script = std::path::Path::new(alcove_warm::runtime::RUNTIME_DIR)
            .join(alcove_warm::runtime::PYTHON_REPL);
        let pipe = || alcove_sys::fd::pipe_cloexec().map_err(SandboxesError::io("making a pipe"));
        let (in_read, in_write) = pipe()?;
        drop(in_write); // its stdin reads end of file
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(SandboxesError::io("making the interpreter's socket"))?;
        ours.set_nonblocking(true)
            .map_err(SandboxesError::io("making the interpreter's socket"))?;
        // Forkable: it may fork itself into a new sandbox (alcove_fork.py).
        let forkable = self.request().forkable;
        let mut repl_env = vec![("ALCOVE_REPL_FD".to_owned(), "3".to_owned())];
        if forkable {
            repl_env.push(("ALCOVE_REPL_FORKABLE".into(), "1".into()));
        }
        let (pid, end) = self
            .link
            .exec_with(
                vec![
                    "python3".into(),
                    "-u".into(),
                    script.to_string_lossy().into_owned(),
                ],
                repl_env,
                None,
                vec![in_read, out_write, err_write, theirs.into()],
                forkable,
            )
            .await?;
        let io = SandboxesError::io("reading the interpreter");
        let (read, write) = tokio::net::UnixStream::from_std(ours)
            .map_err(&io)?
            .into_split();
        let mut interpreter = Interpreter {
            pid,
            end,
            frames: BufReader::new(read),
            requests: write,
            stdout: tokio::net::unix::pipe::Receiver::from_owned_fd(out_read).map_err(&io)?,
            stderr: tokio::net::unix::pipe::Receiver::from_owned_fd(err_read).map_err(&io)?,
            calls: 0,
            partial: Vec::new(),
        };
        let ready = tokio::time::timeout(START, interpreter.frame()).await;
        if !matches!(&ready, Ok(Ok(Some(f))) if f.kind == "ready") {
            let _ = self.link.signal(pid, libc::SIGKILL).await;
        }
        match ready {
            Ok(Ok(Some(frame))) if frame.kind == "ready" => Ok(interpreter),
            Ok(Ok(Some(other))) => Err(SandboxesError::Start(format!(
                "the interpreter said {:?} instead of ready",
                other.kind
            ))),
            Ok(Ok(None)) | Ok(Err(_)) => {
                let mut why = String::new();
                let mut buf = vec![0u8; 4096];
                if let Ok(Ok(n)) = tokio::time::timeout(
                    Duration::from_millis(200),
                    interpreter.stderr.read(&mut buf),
                )
                .await
                {
                    why = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                }
                Err(SandboxesError::Start(format!(
                    "the Python interpreter did not start (is python3 in the sandbox?){}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(": {why}")
                    }
                )))
            }
            Err(_) => Err(SandboxesError::Start(format!(
                "the Python interpreter did not start within {START:?}"
            ))),
        }
    }
}

/// The next JSON frame; None at end of stream. Cancel-safe: a frame read
/// in part stays in `partial` for the next call.
async fn next_frame(
    frames: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    partial: &mut Vec<u8>,
) -> Result<Option<Frame>, SandboxesError> {
    let room = (MAX_FRAME + 1).saturating_sub(partial.len()) as u64;
    let n = (&mut *frames)
        .take(room)
        .read_until(b'\n', partial)
        .await
        .map_err(SandboxesError::io("reading the interpreter"))?;
    if n == 0 && partial.is_empty() {
        return Ok(None);
    }
    if partial.last() != Some(&b'\n') {
        if partial.len() > MAX_FRAME || n == 0 {
            return Err(SandboxesError::Start(
                "the interpreter sent a frame too long, or cut short".into(),
            ));
        }
        // Not a whole line yet (the read stopped at `room`): never here for a
        // well-formed frame; treat as too long.
        return Err(SandboxesError::Start(
            "the interpreter sent a frame too long".into(),
        ));
    }
    let line = std::mem::take(partial);
    let head: FrameHead = serde_json::from_slice(&line).map_err(|_| {
        SandboxesError::Start("the interpreter sent a frame that is not JSON".into())
    })?;
    let mut text = String::from_utf8(line).map_err(|_| {
        SandboxesError::Start("the interpreter sent a frame that is not UTF-8".into())
    })?;
    text.truncate(text.trim_end().len());
    Ok(Some(Frame {
        kind: head.kind,
        text,
    }))
}

/// The daemon's ends of a new interpreter's channel: its control socket
/// (nonblocking) and its stdout and stderr pipes.
pub(super) struct Channel {
    pub control: std::os::unix::net::UnixStream,
    pub stdout: std::os::fd::OwnedFd,
    pub stderr: std::os::fd::OwnedFd,
}

/// Why a session did not fork: `before_fork` when it refused (threads,
/// shared memory: the caller can fix that), else its copy failed.
#[derive(Debug)]
pub(super) struct ForkRefusal {
    pub before_fork: bool,
    pub why: String,
}

/// How long a forked interpreter has to say it is ready.
const FORK_READY: Duration = Duration::from_secs(10);

/// A forked interpreter that said it is ready, not yet watched by its
/// sandbox's agent ([`ForkedInterpreter::adopt`]).
pub(super) struct ForkedInterpreter {
    /// The pid its ready frame names.
    pub pid: i32,
    frames: BufReader<tokio::net::unix::OwnedReadHalf>,
    partial: Vec<u8>,
    requests: tokio::net::unix::OwnedWriteHalf,
    channel_out: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
}

impl ForkedInterpreter {
    /// Waits for the ready frame of the interpreter a fork made
    /// (alcove_fork.py, step D): it names its pid.
    pub(super) async fn ready(channel: Channel) -> Result<ForkedInterpreter, SandboxesError> {
        let io = SandboxesError::io("reading the forked interpreter");
        let (read, write) = tokio::net::UnixStream::from_std(channel.control)
            .map_err(&io)?
            .into_split();
        let mut frames = BufReader::new(read);
        let mut partial = Vec::new();
        let ready = tokio::time::timeout(FORK_READY, next_frame(&mut frames, &mut partial))
            .await
            .map_err(|_| SandboxesError::Start("the forked interpreter did not say ready".into()))??
            .filter(|f| f.kind == "ready")
            .ok_or_else(|| {
                SandboxesError::Start("the forked interpreter did not say ready".into())
            })?;
        #[derive(serde::Deserialize)]
        struct Ready {
            pid: i32,
        }
        let pid = serde_json::from_str::<Ready>(&ready.text)
            .map_err(|_| {
                SandboxesError::ForkFailed("the forked interpreter's ready has no pid".into())
            })?
            .pid;
        Ok(ForkedInterpreter {
            pid,
            frames,
            partial,
            requests: write,
            channel_out: (channel.stdout, channel.stderr),
        })
    }

    /// The interpreter, watched by the new sandbox's agent from now on.
    pub(super) async fn adopt(
        self,
        link: &alcove_agent::AgentLink,
    ) -> Result<Interpreter, SandboxesError> {
        let io = SandboxesError::io("reading the forked interpreter");
        let end = link.adopt(self.pid).await?;
        let (stdout, stderr) = self.channel_out;
        Ok(Interpreter {
            pid: self.pid,
            end,
            frames: self.frames,
            partial: self.partial,
            requests: self.requests,
            stdout: tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).map_err(&io)?,
            stderr: tokio::net::unix::pipe::Receiver::from_owned_fd(stderr).map_err(&io)?,
            calls: 0,
        })
    }
}

impl Interpreter {
    /// Its pid in its sandbox.
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it still runs (a call may be sent to it).
    pub(super) fn alive(&self) -> bool {
        self.end.borrow().is_none() && self.end.has_changed().is_ok()
    }

    /// Asks the session to fork itself (alcove_fork.py): `request` is the
    /// fork's JSON line, `fds` its six descriptors (sent with its first
    /// byte). Returns once it is all sent; an error leaves the session's
    /// stream cut, so the caller ends the session.
    pub(super) async fn send_fork(
        &mut self,
        request: &serde_json::Value,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), SandboxesError> {
        use std::os::fd::AsFd;
        drain(&mut self.stdout);
        drain(&mut self.stderr);
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        // The session reads nothing else now (the caller holds the slot): its
        // socket buffer is empty, so the first byte goes at once.
        let socket: &tokio::net::UnixStream = self.requests.as_ref();
        alcove_sys::seqpacket::send(socket.as_fd(), &line[..1], fds)
            .map_err(SandboxesError::io("asking the interpreter to fork"))?;
        tokio::time::timeout(FORK_READY, self.requests.write_all(&line[1..]))
            .await
            .map_err(|_| {
                SandboxesError::ForkFailed("the interpreter did not read the fork request".into())
            })?
            .map_err(SandboxesError::io("asking the interpreter to fork"))
    }

    /// The session's answer to a fork (its `done`), within one deadline:
    /// Ok(None) when the copy was made, Ok(Some(refusal)) when the session
    /// said it could not; an error when it did not answer as the protocol
    /// says (the caller then ends the session).
    pub(super) async fn fork_answer(&mut self) -> Result<Option<ForkRefusal>, SandboxesError> {
        let deadline = tokio::time::Instant::now() + FORK_READY;
        let mut why = None;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frame())
                .await
                .map_err(|_| {
                    SandboxesError::ForkFailed("the interpreter did not answer the fork".into())
                })??
                .ok_or_else(|| {
                    SandboxesError::ForkFailed("the interpreter ended during the fork".into())
                })?;
            #[derive(serde::Deserialize)]
            struct Answer {
                #[serde(default)]
                name: Option<String>,
                #[serde(default)]
                value: Option<String>,
                #[serde(default)]
                ok: Option<bool>,
            }
            let answer: Answer = serde_json::from_str(&frame.text).unwrap_or(Answer {
                name: None,
                value: None,
                ok: None,
            });
            match frame.kind.as_str() {
                "error" if why.is_none() => {
                    why = Some(ForkRefusal {
                        before_fork: answer.name.as_deref() == Some("ForkRefused"),
                        why: answer.value.unwrap_or_default(),
                    })
                }
                "done" if answer.ok == Some(true) => return Ok(None),
                "done" => {
                    return Ok(Some(why.unwrap_or(ForkRefusal {
                        before_fork: false,
                        why: "the fork failed".into(),
                    })))
                }
                other => {
                    return Err(SandboxesError::ForkFailed(format!(
                        "the interpreter answered the fork with {:?}",
                        other.chars().take(32).collect::<String>()
                    )))
                }
            }
        }
    }

    /// Drops the frames already waiting: between calls only missed interrupts
    /// are sent, and those are about calls that have ended, not the next one.
    fn drop_waiting_frames(&mut self) {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        // Each read polled once: what is there now, nothing more (not a zero
        // timeout, whose timer waits for the next millisecond tick). Reading a
        // frame is cancel-safe, so one cut short stays for the call's loop.
        // Bounded: this runs without yielding, and an interpreter that kept
        // writing would otherwise hold the daemon's thread here.
        let mut cx = Context::from_waker(Waker::noop());
        let mut budget = WAITING_FRAMES_BUDGET;
        while budget > 0 {
            let read = std::pin::pin!(next_frame(&mut self.frames, &mut self.partial));
            match read.poll(&mut cx) {
                Poll::Ready(Ok(Some(frame))) if frame.kind == "interrupt_missed" => {
                    budget = budget.saturating_sub(frame.text.len().max(1));
                }
                _ => return,
            }
        }
    }

    /// The next frame, past any missed interrupt's (meant for a call that ended).
    async fn frame(&mut self) -> Result<Option<Frame>, SandboxesError> {
        loop {
            match next_frame(&mut self.frames, &mut self.partial).await? {
                Some(frame) if frame.kind == "interrupt_missed" => continue,
                other => return Ok(other),
            }
        }
    }

    async fn call(
        &mut self,
        code: &str,
        timeout: Duration,
        events: &mpsc::Sender<CodeEvent>,
        sandbox: &LiveSandbox,
    ) -> Result<bool, SandboxesError> {
        // What the session's background work printed since the last call is not this call's.
        drain(&mut self.stdout);
        drain(&mut self.stderr);
        self.calls += 1;
        let id = self.calls.to_string();
        let mut request = serde_json::to_vec(&serde_json::json!({ "id": id, "code": code }))
            .map_err(|_| SandboxesError::Invalid("code could not be encoded".into()))?;
        request.push(b'\n');
        {
            // After any interrupt's signal in flight: it was meant for an earlier call.
            let _gate = sandbox.code_signal.lock().await;
            self.drop_waiting_frames();
            tokio::time::timeout(SEND_LIMIT, self.requests.write_all(&request))
                .await
                .map_err(|_| {
                    SandboxesError::Start(format!(
                        "the interpreter did not take the code in within {SEND_LIMIT:?}; it \
                         was restarted (its variables are gone)"
                    ))
                })?
                .map_err(SandboxesError::io("sending code to the interpreter"))?;
            *lock_call(sandbox) = CallInFlight {
                pid: self.pid,
                interrupted: false,
            };
        }
        let _running = EndCall(&sandbox.code_call);
        let mut interrupts_resent = 0;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut interrupted_at = None;
        let (mut out, mut err) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
        let Interpreter {
            pid,
            end,
            frames,
            partial,
            stdout,
            stderr,
            ..
        } = self;
        let pid = *pid;
        // A stream at its end (the code closed its fd 1, say) is not polled again.
        let (mut out_open, mut err_open) = (true, true);
        // Set once the interpreter itself has ended: what it forked may hold
        // its channel open, so its end is not waited for past this.
        let mut ended_grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if ended_grace.is_none() && end.borrow().is_some() {
                ended_grace = Some(Box::pin(tokio::time::sleep(AFTER_END)));
            }
            tokio::select! {
                () = async {
                    match ended_grace.as_mut() {
                        Some(grace) => grace.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let why = interpreter_end(*end.borrow());
                    died(why, events).await;
                    return Ok(false);
                }
                changed = end.changed(), if ended_grace.is_none() => {
                    // Its sender gone (the sandbox went): ended too.
                    if changed.is_err() {
                        ended_grace = Some(Box::pin(tokio::time::sleep(AFTER_END)));
                    }
                }
                n = stdout.read(&mut out), if out_open => match n {
                    Ok(n @ 1..) => {
                        let _ = events.send(CodeEvent::Stdout(String::from_utf8_lossy(&out[..n]).into_owned())).await;
                    }
                    _ => out_open = false,
                },
                n = stderr.read(&mut err), if err_open => match n {
                    Ok(n @ 1..) => {
                        let _ = events.send(CodeEvent::Stderr(String::from_utf8_lossy(&err[..n]).into_owned())).await;
                    }
                    _ => err_open = false,
                },
                frame = next_frame(frames, partial) => {
                    let Some(frame) = frame? else {
                        // Its end is reported just after its output closes (a
                        // fork's, once the source's agent has reaped it).
                        let _ = tokio::time::timeout(END_REPORT_WAIT, end.wait_for(Option::is_some)).await;
                        let why = interpreter_end(*end.borrow());
                    died(why, events).await;
                        return Ok(false);
                    };
                    if frame.kind == "interrupt_missed" {
                        // Sent again only where the interrupt was this call's and
                        // came before its code ran (the interpreter's last finished
                        // call is not this one).
                        let before_this = missed_after(&frame.text).as_deref() != Some(id.as_str());
                        if before_this && interrupts_resent < INTERRUPT_RETRIES && lock_call(sandbox).interrupted {
                            interrupts_resent += 1;
                            let _ = sandbox.link.signal(pid, libc::SIGINT).await;
                        }
                        continue;
                    }
                    let done = frame.kind == "done";
                    if done {
                        // It flushed before saying done: its output is in the pipes.
                        for (pipe, is_err) in [(&mut *stdout, false), (&mut *stderr, true)] {
                            let text = read_now(pipe);
                            if !text.is_empty() {
                                let event = if is_err { CodeEvent::Stderr(text) } else { CodeEvent::Stdout(text) };
                                let _ = events.send(event).await;
                            }
                        }
                    }
                    let _ = events.send(CodeEvent::Frame(frame.text)).await;
                    if done {
                        return Ok(true);
                    }
                }
                () = &mut deadline => {
                    match interrupted_at {
                        None => {
                            lock_call(sandbox).interrupted = true;
                            let _ = sandbox.link.signal(pid, libc::SIGINT).await;
                            interrupted_at = Some(());
                            deadline.as_mut().reset(tokio::time::Instant::now() + AFTER_INTERRUPT);
                        }
                        Some(()) => {
                            let _ = events.send(frame_of(serde_json::json!({
                                "type": "error", "name": "TimeoutError",
                                "value": format!("the code ran past {timeout:?} and did not stop when interrupted; the interpreter was restarted (its variables are gone)"),
                                "traceback": [],
                            }))).await;
                            let _ = events.send(done_failed()).await;
                            return Ok(false);
                        }
                    }
                }
            }
        }
    }
}

/// Ends a call whose interpreter ended: why, then a failed done.
async fn died(why: String, events: &mpsc::Sender<CodeEvent>) {
    let _ = events
        .send(frame_of(serde_json::json!({
            "type": "error", "name": "InterpreterDied", "value": why, "traceback": [],
        })))
        .await;
    let _ = events.send(done_failed()).await;
}

fn done_failed() -> CodeEvent {
    frame_of(serde_json::json!({ "type": "done", "ok": false }))
}

fn lock_call(sandbox: &LiveSandbox) -> std::sync::MutexGuard<'_, CallInFlight> {
    sandbox.code_call.lock().unwrap_or_else(|e| e.into_inner())
}

/// The call a missed interrupt's frame says the interpreter finished last
/// (None: none, or a frame that does not say).
fn missed_after(frame: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Missed {
        after: Option<String>,
    }
    serde_json::from_str::<Missed>(frame).ok()?.after
}

struct EndCall<'a>(&'a std::sync::Mutex<CallInFlight>);

impl Drop for EndCall<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = CallInFlight::default();
    }
}

/// Discards what is waiting in `pipe`.
fn drain(pipe: &mut tokio::net::unix::pipe::Receiver) {
    let mut buf = [0u8; 16 << 10];
    while let Ok(1..) = pipe.try_read(&mut buf) {}
}

/// What is waiting in `pipe` now (up to 1 MiB), as text.
fn read_now(pipe: &mut tokio::net::unix::pipe::Receiver) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while all.len() < (1 << 20) {
        match pipe.try_read(&mut buf) {
            Ok(n @ 1..) => all.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}
