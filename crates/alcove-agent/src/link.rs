//! The daemon's side of an agent's socket: requests out, replies matched
//! back to their callers by id, and each command's end delivered to whoever
//! watches it. One reader task per sandbox, no thread.

use crate::protocol::{AgentFailure, Entry, PtySize, Reply, Request, MAX_MESSAGE};
use alcove_sys::seqpacket;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, watch};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the sandbox has ended")]
    Gone,
    #[error(transparent)]
    Failed(#[from] AgentFailure),
    #[error("the sandbox's agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("talking to the sandbox's agent")]
    Io(#[source] io::Error),
    #[error("the sandbox's agent sent a reply that does not fit the request")]
    Protocol,
    #[error("the request is too long for the agent ({0} bytes; at most {max})", max = MAX_MESSAGE)]
    TooLarge(usize),
}

/// How long the agent has to answer a request (it answers at once; a
/// sandbox whose agent does not is frozen, wedged or hostile).
const ANSWER: Duration = Duration::from_secs(30);
/// Commands (and copies) one agent may report running at once.
const MAX_TRACKED: usize = 1024;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// A file being written in the sandbox: its bytes go into `bytes`; once
/// they all have and `ready` gives a byte (the file is written and
/// synced), one byte (any) into `verdict` lands it in place of the old.
/// Dropped without it, the upload is let go and the old file stays.
#[derive(Debug)]
pub struct Upload {
    pub bytes: OwnedFd,
    pub ready: OwnedFd,
    pub verdict: OwnedFd,
    pub end: watch::Receiver<Option<ExitStatus>>,
}

/// A file the agent opened, as the sandbox's user.
#[derive(Debug)]
pub struct Opened {
    pub file: OwnedFd,
    pub size: Option<u64>,
}

/// A reply, its descriptors, and for a started command, where its end shows
/// (subscribed by the reader, so an end that comes at once is not missed).
type Answer = (Reply, Vec<OwnedFd>, Option<ExitWatch>);
type ExitWatch = watch::Receiver<Option<ExitStatus>>;

struct Shared {
    sock: AsyncFd<OwnedFd>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    exits: Mutex<HashMap<i32, watch::Sender<Option<ExitStatus>>>>,
    gone: watch::Sender<bool>,
}

/// The line to one sandbox's agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentLink {
    shared: Arc<Shared>,
}

impl AgentLink {
    /// Starts reading `sock` (the daemon's end of the agent's socket) and
    /// waits up to `within` for the agent's `ready`: its pid in the sandbox.
    /// Must be called inside a tokio runtime.
    pub async fn connect(sock: OwnedFd, within: Duration) -> Result<(AgentLink, i32), LinkError> {
        alcove_sys::fd::set_nonblocking(sock.as_fd(), true).map_err(LinkError::Io)?;
        let (gone, _) = watch::channel(false);
        // Readable only: registered for writes too, the daemon would be woken
        // each time the agent takes a request off the socket (its space
        // freed), for nothing. A send waits for space only when it finds none.
        // SAFETY: an OwnedFd is a valid open descriptor whose as_raw_fd never
        // changes, and the AsyncFd owns it until it is dropped.
        let sock = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }
            .map_err(|e| LinkError::Io(e.into()))?;
        let shared = Arc::new(Shared {
            sock,
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            exits: Mutex::default(),
            gone,
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(read_replies(Arc::clone(&shared), ready_tx));
        let link = AgentLink { shared };
        match tokio::time::timeout(within, ready_rx).await {
            Ok(Ok(pid)) => Ok((link, pid)),
            Ok(Err(_)) => Err(LinkError::Gone),
            Err(_) => Err(LinkError::Timeout(within)),
        }
    }

    /// Whether the agent is gone (its socket closed: the sandbox ended).
    pub fn gone(&self) -> watch::Receiver<bool> {
        self.shared.gone.subscribe()
    }

    /// Starts `argv` with `fds` as its descriptors 0, 1, 2 (and 3): its pid,
    /// and where its end will show.
    pub async fn exec(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        fds: Vec<OwnedFd>,
    ) -> Result<(i32, watch::Receiver<Option<ExitStatus>>), LinkError> {
        self.exec_with(argv, env, cwd, fds, false).await
    }

    /// [`exec`](Self::exec), and with `forkable` without the copy filter
    /// on top of the sandbox's (the code interpreter, which forks).
    pub async fn exec_with(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        fds: Vec<OwnedFd>,
        forkable: bool,
    ) -> Result<(i32, watch::Receiver<Option<ExitStatus>>), LinkError> {
        let id = self.next_id();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let pty = None;
        let answer = self
            .ask(
                Request::Exec {
                    id,
                    argv,
                    env,
                    cwd,
                    pty,
                    forkable,
                },
                &borrowed,
            )
            .await;
        drop(fds); // the agent has its copies now (or failed)
        match answer? {
            (Reply::Started { pid, .. }, _, Some(end)) => Ok((pid, end)),
            _ => Err(LinkError::Protocol),
        }
    }

    /// Starts `argv` on a new terminal of `size` in the sandbox: its pid,
    /// where its end will show, and the terminal's master (non-blocking),
    /// through which its input and output go.
    pub async fn exec_pty(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        size: PtySize,
    ) -> Result<(i32, watch::Receiver<Option<ExitStatus>>, OwnedFd), LinkError> {
        let id = self.next_id();
        let pty = Some(size);
        let request = Request::Exec {
            id,
            argv,
            env,
            cwd,
            pty,
            forkable: false,
        };
        match self.ask(request, &[]).await? {
            // The descriptor came from the sandbox: it must be a terminal's master.
            (Reply::Started { pid, .. }, mut fds, Some(end))
                if fds.len() == 1 && is_pty_master(&fds[0]) =>
            {
                let master = fds.remove(0);
                alcove_sys::fd::set_nonblocking(master.as_fd(), true).map_err(LinkError::Io)?;
                Ok((pid, end, master))
            }
            _ => Err(LinkError::Protocol),
        }
    }

    /// A regular file in the sandbox, opened to read by the agent.
    pub async fn open(&self, path: &str) -> Result<Opened, LinkError> {
        let id = self.next_id();
        let path = path.to_owned();
        let write = false;
        match self.ask(Request::Open { id, path, write }, &[]).await? {
            // The descriptor came from the sandbox: it must be what was asked.
            (Reply::Done { size, .. }, mut fds, _)
                if fds.len() == 1 && is_regular_file(&fds[0]) =>
            {
                Ok(Opened {
                    file: fds.remove(0),
                    size,
                })
            }
            _ => Err(LinkError::Protocol),
        }
    }

    /// A regular file in the sandbox, copied by the agent into a pipe whose
    /// read end (non-blocking) is returned, with the file's size and where
    /// the copy's end shows (code 0 once all was copied): [`open`]
    /// (Self::open) for a sandbox that cannot hand descriptors out.
    pub async fn read(
        &self,
        path: &str,
    ) -> Result<(Opened, watch::Receiver<Option<ExitStatus>>), LinkError> {
        let (read, write) = alcove_sys::fd::pipe_cloexec().map_err(LinkError::Io)?;
        let id = self.next_id();
        let path = path.to_owned();
        let answer = self.ask(Request::Read { id, path }, &[write.as_fd()]).await;
        drop(write); // the copy's end is the pipe's end
        match answer? {
            (Reply::Started { size, .. }, _, Some(end)) => {
                alcove_sys::fd::set_nonblocking(read.as_fd(), true).map_err(LinkError::Io)?;
                Ok((Opened { file: read, size }, end))
            }
            _ => Err(LinkError::Protocol),
        }
    }

    /// Starts the agent's copy into a new file that replaces the regular
    /// file `path` whole (see [`Upload`]); the copy's end (code 0, or the
    /// errno that stopped it) shows on the watch.
    pub async fn write(&self, path: &str) -> Result<Upload, LinkError> {
        let pipe = || alcove_sys::fd::pipe_cloexec().map_err(LinkError::Io);
        let ((read, write), (verdict_read, verdict), (ready, ready_write)) =
            (pipe()?, pipe()?, pipe()?);
        let id = self.next_id();
        let path = path.to_owned();
        let answer = self
            .ask(
                Request::Write { id, path },
                &[read.as_fd(), verdict_read.as_fd(), ready_write.as_fd()],
            )
            .await;
        drop((read, verdict_read, ready_write));
        match answer? {
            (Reply::Started { .. }, _, Some(end)) => Ok(Upload {
                bytes: write,
                ready,
                verdict,
                end,
            }),
            _ => Err(LinkError::Protocol),
        }
    }

    /// A directory's entries (sorted by name) and whether the list stopped short.
    pub async fn list(&self, path: &str) -> Result<(Vec<Entry>, bool), LinkError> {
        let id = self.next_id();
        let path = path.to_owned();
        match self.ask(Request::List { id, path }, &[]).await? {
            (
                Reply::Listed {
                    entries, truncated, ..
                },
                _,
                _,
            ) => Ok((entries, truncated)),
            _ => Err(LinkError::Protocol),
        }
    }

    pub async fn remove(&self, path: &str) -> Result<(), LinkError> {
        let id = self.next_id();
        let path = path.to_owned();
        self.expect_done(Request::Remove { id, path }).await
    }

    pub async fn mkdir(&self, path: &str) -> Result<(), LinkError> {
        let id = self.next_id();
        let path = path.to_owned();
        self.expect_done(Request::Mkdir { id, path }).await
    }

    /// An inotify descriptor (non-blocking) watching the directory `path`.
    pub async fn watch(&self, path: &str) -> Result<OwnedFd, LinkError> {
        let id = self.next_id();
        let path = path.to_owned();
        match self.ask(Request::Watch { id, path }, &[]).await? {
            (Reply::Done { .. }, mut fds, _) if fds.len() == 1 && is_inotify(&fds[0]) => {
                let fd = fds.remove(0);
                alcove_sys::fd::set_nonblocking(fd.as_fd(), true).map_err(LinkError::Io)?;
                Ok(fd)
            }
            _ => Err(LinkError::Protocol),
        }
    }

    /// The events of an inotify watch on the directory `path`, copied by
    /// the agent into a pipe whose read end (non-blocking) is returned:
    /// [`watch`](Self::watch) for a sandbox that cannot hand descriptors
    /// out. A read may end mid-event.
    pub async fn watch_copied(&self, path: &str) -> Result<OwnedFd, LinkError> {
        let (read, write) = alcove_sys::fd::pipe_cloexec().map_err(LinkError::Io)?;
        let id = self.next_id();
        let path = path.to_owned();
        let answer = self
            .ask(Request::Watch { id, path }, &[write.as_fd()])
            .await;
        drop(write);
        match answer? {
            (Reply::Started { .. }, _, Some(_)) => {
                alcove_sys::fd::set_nonblocking(read.as_fd(), true).map_err(LinkError::Io)?;
                Ok(read)
            }
            _ => Err(LinkError::Protocol),
        }
    }

    /// Watches `pid`, a child of the agent it did not start (a forked
    /// sandbox's interpreter): where its end will show.
    pub async fn adopt(&self, pid: i32) -> Result<watch::Receiver<Option<ExitStatus>>, LinkError> {
        let id = self.next_id();
        match self.ask(Request::Adopt { id, pid }, &[]).await? {
            (Reply::Started { pid: started, .. }, _, Some(end)) if started == pid => Ok(end),
            _ => Err(LinkError::Protocol),
        }
    }

    /// Sends `signal` to a command the agent started (and its process group).
    /// Adds `env` to (or replaces it in) the environment of every later
    /// command and interpreter.
    pub async fn set_env(&self, env: Vec<(String, String)>) -> Result<(), LinkError> {
        let id = self.next_id();
        self.expect_done(Request::SetEnv { id, env }).await
    }

    pub async fn signal(&self, pid: i32, signal: i32) -> Result<(), LinkError> {
        let id = self.next_id();
        self.expect_done(Request::Signal { id, pid, signal }).await
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Has the agent reap `pidfd`'s process, its child but not a command it
    /// started, as soon as it ends. Nothing is reported or tracked here.
    pub async fn reap_when_ended(&self, pidfd: BorrowedFd<'_>) -> Result<(), LinkError> {
        let id = self.next_id();
        match self.ask(Request::Reap { id }, &[pidfd]).await? {
            (Reply::Done { .. }, _, _) => Ok(()),
            _ => Err(LinkError::Protocol),
        }
    }

    async fn expect_done(&self, request: Request) -> Result<(), LinkError> {
        match self.ask(request, &[]).await? {
            (Reply::Done { .. }, _, _) => Ok(()),
            _ => Err(LinkError::Protocol),
        }
    }

    async fn ask(&self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<Answer, LinkError> {
        let id = request.id();
        let bytes = serde_json::to_vec(&request).map_err(|_| LinkError::Protocol)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(LinkError::TooLarge(bytes.len()));
        }
        let (tx, rx) = oneshot::channel();
        {
            // `gone` is set under this lock too: a request registered here
            // is answered or dropped, never left waiting.
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *self.shared.gone.borrow() {
                return Err(LinkError::Gone);
            }
            pending.insert(id, tx);
        }
        // Unregistered however this ends (a caller that gave up included).
        let _unregister = Unregister(&self.shared, id);
        let room_by = tokio::time::Instant::now() + ANSWER;
        loop {
            match seqpacket::send(self.shared.sock.get_ref().as_fd(), &bytes, fds) {
                Ok(()) => break,
                // The agent is gone: EPIPE, or ECONNRESET once where it left
                // requests unread.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                    return Err(LinkError::Gone)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout_at(room_by, space_on(self.shared.sock.get_ref()))
                        .await
                        .map_err(|_| LinkError::Timeout(ANSWER))?
                        .map_err(LinkError::Io)?;
                }
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
        match tokio::time::timeout(ANSWER, rx).await {
            Err(_) => Err(LinkError::Timeout(ANSWER)),
            Ok(Ok((Reply::Failed { failure, .. }, _, _))) => Err(LinkError::Failed(failure)),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(LinkError::Gone),
        }
    }
}

/// Waits until `sock` has room for a message, through a copy of the
/// descriptor registered for writes for only as long as the wait: the
/// agent's queue is full only while it is frozen, wedged or hostile.
async fn space_on(sock: &OwnedFd) -> io::Result<()> {
    let copy = sock.try_clone()?;
    // SAFETY: `copy` is a descriptor of its own (a dup), valid until the
    // AsyncFd that owns it is dropped, which deregisters it first.
    let copy = unsafe { AsyncFd::register_with_interest(copy, Interest::WRITABLE) }
        .map_err(io::Error::from)?;
    let mut ready = copy.writable().await?;
    ready.clear_ready();
    Ok(())
}

struct Unregister<'a>(&'a Shared, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

async fn read_replies(shared: Arc<Shared>, ready: oneshot::Sender<i32>) {
    let mut ready = Some(ready);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok(mut guard) = shared.sock.readable().await else {
            break;
        };
        let got = guard.try_io(|s| seqpacket::recv_fds(s.get_ref().as_fd(), &mut buf, true));
        let (n, fds) = match got {
            Err(_would_block) => continue,
            Ok(Ok((0, _))) | Ok(Err(_)) => break,
            Ok(Ok(got)) => got,
        };
        let Ok(reply) = serde_json::from_slice::<Reply>(&buf[..n]) else {
            break; // an agent that speaks nonsense is cut off
        };
        match reply {
            Reply::Ready { pid } => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(pid);
                }
            }
            Reply::Exited { pid, code, signal } => {
                let tx = shared
                    .exits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&pid);
                if let Some(tx) = tx {
                    let _ = tx.send(Some(ExitStatus { code, signal }));
                }
            }
            reply => {
                let id = match &reply {
                    Reply::Started { id, .. }
                    | Reply::Done { id, .. }
                    | Reply::Listed { id, .. }
                    | Reply::Failed { id, .. } => *id,
                    Reply::Ready { .. } | Reply::Exited { .. } => continue,
                };
                // Only an answer to a request in flight is taken.
                let Some(tx) = shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
                else {
                    continue;
                };
                let mut end = None;
                if let Reply::Started { pid, .. } = &reply {
                    let mut exits = shared.exits.lock().unwrap_or_else(|e| e.into_inner());
                    if exits.len() >= MAX_TRACKED || exits.contains_key(pid) || *pid <= 1 {
                        break; // more than it may run, or a pid it runs already: lying
                    }
                    let (exit_tx, exit_rx) = watch::channel(None);
                    exits.insert(*pid, exit_tx);
                    end = Some(exit_rx);
                }
                let _ = tx.send((reply, fds, end));
            }
        }
    }
    // Every waiter learns the sandbox is gone: pending replies and commands' ends.
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        shared.gone.send_replace(true);
        pending.clear();
    }
    shared
        .exits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// Whether `fd` is a regular file (what an `open` must hand over).
fn is_regular_file(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|m| m.is_file())
}

/// Whether `fd` is a pty master (what a terminal's `exec` must hand over):
/// the ptmx character device (5:2), answering TIOCGPTN as only a master does.
fn is_pty_master(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let is_ptmx = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(5, 2));
    is_ptmx && alcove_sys::pty::number(fd.as_fd()).is_ok()
}

/// Whether `fd` is an inotify descriptor (what a `watch` must hand over).
fn is_inotify(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
}
