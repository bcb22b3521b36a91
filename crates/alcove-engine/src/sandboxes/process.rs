//! A command running in an agent sandbox, as the daemon holds it: what it
//! printed (kept up to a bound, so a client can attach late or again), the
//! same live to every attached client, and how it ended.

use alcove_agent::ExitStatus;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, watch};

/// Bytes of output kept per command for clients that attach later.
pub const KEPT_OUTPUT: usize = 1 << 20;
/// Bytes one read takes from a command's pipe.
const CHUNK: usize = 16 << 10;
/// Chunks a slow client may fall behind before it misses some (it is told).
const LIVE_BACKLOG: usize = 256;

/// Which of its streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Some of a command's output, and which stream it came from.
pub type Chunk = (Stream, Arc<[u8]>);

/// What a client attached to a command sees.
#[derive(Debug, Clone)]
pub enum Output {
    Chunk(Stream, Arc<[u8]>),
    /// The client fell behind and missed this many chunks.
    Missed(u64),
}

#[derive(Default)]
struct Kept {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// Bytes dropped from the front to stay within [`KEPT_OUTPUT`].
    dropped: u64,
}

/// One command: its output and its end.
pub struct Process {
    pub pid: i32,
    pub cmd: String,
    kept: Mutex<Kept>,
    live: broadcast::Sender<Chunk>,
    /// Both pipes at end of file.
    drained: watch::Sender<bool>,
    end: watch::Receiver<Option<ExitStatus>>,
    /// Where to write its stdin, until closed.
    pub stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>,
    /// Killed for running past its timeout.
    timed_out: std::sync::atomic::AtomicBool,
}

impl Process {
    /// Starts reading `stdout` and `stderr` (the read ends of its pipes).
    pub fn start(
        pid: i32,
        cmd: String,
        stdout: OwnedFd,
        stderr: OwnedFd,
        stdin: Option<OwnedFd>,
        end: watch::Receiver<Option<ExitStatus>>,
    ) -> std::io::Result<Arc<Process>> {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let (drained, _) = watch::channel(false);
        let stdin = match stdin {
            Some(fd) => Some(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?),
            None => None,
        };
        let process = Arc::new(Process {
            pid,
            cmd,
            kept: Mutex::default(),
            live,
            drained,
            end,
            stdin: tokio::sync::Mutex::new(stdin),
            timed_out: Default::default(),
        });
        let out = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)?;
        let err = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr)?;
        let reader = Arc::clone(&process);
        tokio::spawn(async move {
            tokio::join!(
                reader.pump(out, Stream::Stdout),
                reader.pump(err, Stream::Stderr)
            );
            reader.drained.send_replace(true);
        });
        Ok(process)
    }

    async fn pump(&self, mut pipe: tokio::net::unix::pipe::Receiver, stream: Stream) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
                    let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                    kept.bytes += n;
                    kept.chunks.push_back((stream, Arc::clone(&chunk)));
                    while kept.bytes > KEPT_OUTPUT {
                        let Some((_, old)) = kept.chunks.pop_front() else {
                            break;
                        };
                        kept.bytes -= old.len();
                        kept.dropped += old.len() as u64;
                    }
                    // Sent under the lock: an attach sees each chunk once, kept or live.
                    let _ = self.live.send((stream, chunk));
                }
            }
        }
    }

    /// What it printed so far (and how many earlier bytes were dropped), and
    /// a receiver for what it prints from now on, taken together so that
    /// nothing falls between them.
    pub fn attach(&self) -> (Vec<Chunk>, u64, broadcast::Receiver<Chunk>) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        (
            kept.chunks.iter().cloned().collect(),
            kept.dropped,
            self.live.subscribe(),
        )
    }

    pub fn drained(&self) -> watch::Receiver<bool> {
        self.drained.subscribe()
    }

    /// How it ended, once it has (None while it runs or if the sandbox went first).
    pub fn exit(&self) -> Option<ExitStatus> {
        *self.end.borrow()
    }

    pub fn end(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.end.clone()
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_timed_out(&self) {
        self.timed_out
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Its pipes are still open (it, or what it started, may still print).
    pub fn holds_pipes(&self) -> bool {
        !*self.drained.borrow()
    }

    pub fn running(&self) -> bool {
        self.end.borrow().is_none() && self.end.has_changed().is_ok()
    }
}

/// How long after a command's end its output may still come (from what
/// it started in the background, holding its stdout) before a client's
/// stream ends anyway.
const AFTER_EXIT: std::time::Duration = std::time::Duration::from_millis(500);

/// A client's view of a command's output, to its end.
pub struct Follower {
    live: broadcast::Receiver<Chunk>,
    drained: watch::Receiver<bool>,
    end: watch::Receiver<Option<ExitStatus>>,
    cutoff: Option<tokio::time::Instant>,
}

impl Follower {
    pub fn new(process: &Process, live: broadcast::Receiver<Chunk>) -> Self {
        Follower {
            live,
            drained: process.drained(),
            end: process.end(),
            cutoff: None,
        }
    }

    /// The next output, or None once all of it was seen (both pipes closed),
    /// or the command ended [`AFTER_EXIT`] ago with its pipes still held
    /// open by something it started.
    pub async fn next(&mut self) -> Option<Output> {
        loop {
            if *self.drained.borrow_and_update() {
                // Every chunk was sent before the drain: what is queued is the rest.
                return match self.live.try_recv() {
                    Ok((stream, chunk)) => Some(Output::Chunk(stream, chunk)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Output::Missed(n)),
                    Err(_) => None,
                };
            }
            if self.cutoff.is_none()
                && (self.end.borrow().is_some() || self.end.has_changed().is_err())
            {
                self.cutoff = Some(tokio::time::Instant::now() + AFTER_EXIT);
            }
            let cutoff = self.cutoff;
            let until_cutoff = async move {
                match cutoff {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                got = self.live.recv() => return match got {
                    Ok((stream, chunk)) => Some(Output::Chunk(stream, chunk)),
                    Err(broadcast::error::RecvError::Lagged(n)) => Some(Output::Missed(n)),
                    Err(broadcast::error::RecvError::Closed) => None,
                },
                changed = self.drained.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.end.changed(), if self.cutoff.is_none() => {}
                () = until_cutoff => return None,
            }
        }
    }
}
