//! Files in an agent sandbox. The agent opens them as the sandbox's user and
//! hands the descriptor over; the daemon streams through it. Paths are the
//! sandbox's own (absolute, or relative to its home).

use super::live::{LiveSandbox, HOME};
use super::SandboxesError;
use alcove_agent::{Entry, WatchEvent};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The longest path accepted.
const MAX_PATH: usize = 4096;

/// A path as the sandbox sees it: absolute, or under its home.
pub(crate) fn sandbox_path(path: &str) -> Result<String, SandboxesError> {
    if path.is_empty() || path.len() > MAX_PATH || path.contains('\0') {
        return Err(SandboxesError::Invalid(format!(
            "path: give 1 to {MAX_PATH} bytes without NUL"
        )));
    }
    Ok(if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{HOME}/{path}")
    })
}

impl LiveSandbox {
    /// The file at `path`, opened to read, and its size. In the gVisor
    /// tier, which cannot hand a descriptor out, the agent copies it into a
    /// pipe instead (read without blocking a thread: a stalled copy holds
    /// only its reader).
    pub async fn open_file(&self, path: &str) -> Result<(FileReader, Option<u64>), SandboxesError> {
        let path = sandbox_path(path)?;
        if self.gvisor() {
            let slot = self.copy_slot()?;
            let (opened, end) = self.link.read(&path).await?;
            let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(opened.file)
                .map_err(SandboxesError::io("reading a file"))?;
            let copied = CopiedFile {
                pipe,
                end: Some(end),
                checking: None,
                _slot: slot,
            };
            return Ok((Box::new(copied), opened.size));
        }
        let opened = self.link.open(&path).await?;
        let file = tokio::fs::File::from_std(std::fs::File::from(opened.file));
        Ok((Box::new(file), opened.size))
    }

    /// Starts writing the file at `path` (its parents made), which replaces
    /// whatever file is there once [`FileWriter::finish`] is called: the
    /// sandbox's agent copies what is written to the returned writer, so
    /// its memory and disk limits hold the bytes.
    pub async fn write_file(&self, path: &str) -> Result<FileWriter, SandboxesError> {
        let slot = self.copy_slot()?;
        let upload = self.link.write(&sandbox_path(path)?).await?;
        let pipe = tokio::net::unix::pipe::Sender::from_owned_fd(upload.bytes)
            .map_err(SandboxesError::io("writing a file"))?;
        let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(upload.ready)
            .map_err(SandboxesError::io("writing a file"))?;
        Ok(FileWriter {
            pipe: Some(pipe),
            ready: Some(ready),
            verdict: Some(upload.verdict),
            end: upload.end,
            written: 0,
            _slot: slot,
        })
    }

    pub async fn list_files(&self, path: &str) -> Result<(Vec<Entry>, bool), SandboxesError> {
        Ok(self.link.list(&sandbox_path(path)?).await?)
    }

    pub async fn remove_file(&self, path: &str) -> Result<(), SandboxesError> {
        Ok(self.link.remove(&sandbox_path(path)?).await?)
    }

    pub async fn make_dir(&self, path: &str) -> Result<(), SandboxesError> {
        Ok(self.link.mkdir(&sandbox_path(path)?).await?)
    }

    /// Changes in the directory `path` (not its subdirectories), as they happen.
    pub async fn watch_dir(&self, path: &str) -> Result<WatchStream, SandboxesError> {
        let dir = sandbox_path(path)?;
        let (fd, slot) = match self.gvisor() {
            true => {
                let slot = self.copy_slot()?;
                (self.link.watch_copied(&dir).await?, Some(slot))
            }
            false => (self.link.watch(&dir).await?, None),
        };
        let mut stream = WatchStream::new(fd, dir, self.link.gone())?;
        stream._slot = slot;
        Ok(stream)
    }

    /// One of the copies its agent runs for the daemon (a write; a read or
    /// a watch in the gVisor tier), or why not: each holds one of the
    /// commands the agent's link tracks, so they are bounded apart.
    fn copy_slot(&self) -> Result<CopySlot, SandboxesError> {
        use std::sync::atomic::Ordering;
        let held = self.copies.fetch_add(1, Ordering::Relaxed);
        let slot = CopySlot(std::sync::Arc::clone(&self.copies));
        if held >= MAX_COPIES {
            return Err(SandboxesError::Conflict(format!(
                "{MAX_COPIES} file transfers and watches are open in this sandbox already; \
                 finish or close some"
            )));
        }
        Ok(slot)
    }
}

/// Transfers and watches open at once in one sandbox (its commands are
/// bounded apart: together they stay below what the agent's link tracks).
const MAX_COPIES: usize = 256;

/// A place among [`MAX_COPIES`], given back when dropped.
pub(crate) struct CopySlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CopySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A file copied out of a gVisor sandbox by its agent: the pipe, and the
/// copy's end, so that a copy cut short (killed, or the file unreadable
/// midway) fails the read rather than looking like the file's end.
struct CopiedFile {
    pipe: tokio::net::unix::pipe::Receiver,
    end: Option<tokio::sync::watch::Receiver<Option<alcove_agent::ExitStatus>>>,
    checking:
        Option<std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>>,
    _slot: CopySlot,
}

impl tokio::io::AsyncRead for CopiedFile {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.checking.is_none() {
            let before = buf.filled().len();
            match std::pin::Pin::new(&mut this.pipe).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            let Some(mut end) = this.end.take() else {
                return Poll::Ready(Ok(())); // checked already
            };
            // The pipe's end: the file's only if the copy says it finished.
            this.checking = Some(Box::pin(async move {
                let limit = std::time::Duration::from_secs(10);
                match tokio::time::timeout(limit, end.wait_for(|e| e.is_some())).await {
                    Ok(Ok(status)) if status.is_some_and(|s| s.code == Some(0)) => Ok(()),
                    Ok(Ok(status)) => Err(std::io::Error::other(format!(
                        "the sandbox's copy of the file stopped short ({:?})",
                        *status
                    ))),
                    Ok(Err(_)) => Err(std::io::Error::other("the sandbox ended during the read")),
                    Err(_) => Err(std::io::Error::other(
                        "the sandbox's copy of the file did not say it finished",
                    )),
                }
            }));
        }
        let checked = match this.checking.as_mut().map(|c| c.as_mut().poll(cx)) {
            Some(Poll::Ready(checked)) => checked,
            _ => return Poll::Pending,
        };
        if let Err(e) = &checked {
            tracing::warn!(error = %e, "a file read from a gVisor sandbox was cut short");
        }
        this.checking = None;
        Poll::Ready(checked)
    }
}

/// A file being read from a sandbox.
pub type FileReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// How long a write may wait for the sandbox's copy to take any of it.
const STALLED: std::time::Duration = std::time::Duration::from_secs(60);

/// A file being written in a sandbox. It replaces the file there whole
/// once `finish` says all of it came; dropped before, it is let go and the
/// old file stays.
pub struct FileWriter {
    pipe: Option<tokio::net::unix::pipe::Sender>,
    /// A byte from here: the sandbox's copy wrote and synced all of it.
    ready: Option<tokio::net::unix::pipe::Receiver>,
    /// A byte here, once it is ready, lands it.
    verdict: Option<OwnedFd>,
    end: tokio::sync::watch::Receiver<Option<alcove_agent::ExitStatus>>,
    written: u64,
    _slot: CopySlot,
}

impl FileWriter {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SandboxesError> {
        use tokio::io::AsyncWriteExt;
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(SandboxesError::Conflict("the file is closed".into()));
        };
        // A copy that takes nothing for this long is stopped (the sandbox
        // paused, or its code sent the copy SIGSTOP): the upload fails
        // rather than hold its connection and this slot for ever.
        match tokio::time::timeout(STALLED, pipe.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The copy stopped (its file system is full, say): its end says why.
                self.pipe = None;
                return self.finish_inner().await.map(drop);
            }
            Err(_) => {
                self.pipe = None;
                return Err(SandboxesError::Conflict(format!(
                    "the sandbox took none of the file for {} s (is it paused, or did its \
                     code stop the copy?)",
                    STALLED.as_secs()
                )));
            }
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Closes the file, has it land in place, and waits for the sandbox's
    /// copy to end: the bytes written.
    pub async fn finish(mut self) -> Result<u64, SandboxesError> {
        use tokio::io::AsyncReadExt;
        self.pipe = None;
        if let (Some(mut ready), Some(verdict)) = (self.ready.take(), self.verdict.take()) {
            // Landed only once it is known to be written: a copy that is
            // not ready in time is let go (its verdict closed unsaid), so a
            // failure answered here cannot land later.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(STALLED, ready.read(&mut byte)).await {
                // An empty pipe takes one byte at once. If the copy is
                // gone meanwhile (EPIPE), its end says why.
                Ok(Ok(1)) => {
                    let _ = alcove_sys::fd::write_all(verdict.as_raw_fd(), b"y");
                }
                // It ended without being ready: its end says why.
                Ok(_) => {}
                Err(_) => {
                    return Err(SandboxesError::Conflict(format!(
                        "the sandbox did not finish writing the file within {} s (is it \
                         paused?); the file was left as it was",
                        STALLED.as_secs()
                    )))
                }
            }
        }
        self.finish_inner().await
    }

    async fn finish_inner(&mut self) -> Result<u64, SandboxesError> {
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            self.end.wait_for(|e| e.is_some()),
        )
        .await;
        let status = match ended {
            Ok(Ok(status)) => *status,
            Ok(Err(_)) => return Err(SandboxesError::Agent(alcove_agent::LinkError::Gone)),
            Err(_) => {
                return Err(SandboxesError::Conflict(
                    "the sandbox did not finish writing the file within 60 s (is it paused?)"
                        .into(),
                ))
            }
        };
        match status {
            Some(alcove_agent::ExitStatus { code: Some(0), .. }) => Ok(self.written),
            Some(alcove_agent::ExitStatus {
                code: Some(libc::ENOSPC) | Some(libc::EDQUOT),
                ..
            }) => Err(SandboxesError::DiskFull),
            // What the sandbox's code can bring about (the file or its
            // directory changed, removed, locked or made read-only during
            // the upload, the copy signalled): its doing, not the daemon's.
            Some(alcove_agent::ExitStatus {
                code: Some(errno), ..
            }) => Err(SandboxesError::Conflict(format!(
                "writing the file in the sandbox failed: {} (did its code change the file, \
                 its directory or the copy meanwhile?)",
                std::io::Error::from_raw_os_error(errno)
            ))),
            _ => Err(SandboxesError::Conflict(
                "the sandbox's copy was killed (its memory limit?)".into(),
            )),
        }
    }
}

/// Uploads' moves a watch remembers at once (their landings follow at once).
const LANDINGS_HELD: usize = 64;

/// A watched directory's events.
pub struct WatchStream {
    fd: AsyncFd<OwnedFd>,
    /// The sandbox ended: so does the stream.
    gone: tokio::sync::watch::Receiver<bool>,
    events: Events,
    /// A copied watch's place among the sandbox's copies.
    _slot: Option<CopySlot>,
}

impl WatchStream {
    fn new(
        fd: OwnedFd,
        dir: String,
        gone: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, SandboxesError> {
        // SAFETY: an OwnedFd is a valid open descriptor whose as_raw_fd never
        // changes, and the AsyncFd owns it until it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| SandboxesError::Io {
            what: "watching a directory",
            source: e.into(),
        })?;
        Ok(WatchStream {
            fd,
            gone,
            events: Events::new(dir),
            _slot: None,
        })
    }

    /// The next event; None when the directory itself went away.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(event) = self.events.pending.pop_front() {
                return Some(event);
            }
            if self.events.ended {
                return None;
            }
            let mut ready = tokio::select! {
                ready = self.fd.readable() => ready.ok()?,
                _ = self.gone.wait_for(|g| *g) => return None,
            };
            let n = match ready.try_io(|fd| alcove_sys::fd::read(fd.get_ref().as_fd(), &mut buf)) {
                Err(_would_block) => continue,
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => n,
            };
            if !self.events.feed(&buf[..n]) {
                // What came before the end is still given, then the end.
                self.events.ended = true;
            }
        }
    }
}

/// The events read from a watch so far.
struct Events {
    dir: String,
    pending: std::collections::VecDeque<WatchEvent>,
    /// The start of an event a read ended in the middle of (a copied watch's
    /// pipe splits them; an inotify descriptor never does).
    partial: Vec<u8>,
    /// The watch itself ended: no more reads once `pending` is given out.
    ended: bool,
    /// Cookies of the moves away from an upload's new file (not shown):
    /// the move's other half is its landing, shown as a `create`.
    landing: std::collections::VecDeque<u32>,
}

impl Events {
    fn new(dir: String) -> Self {
        Events {
            dir,
            pending: Default::default(),
            partial: Vec::new(),
            ended: false,
            landing: Default::default(),
        }
    }

    /// Queues the events in `read` (struct inotify_event records, after
    /// what an earlier read left incomplete), keeping an incomplete last
    /// one for the next; false once the watch itself ended.
    fn feed(&mut self, read: &[u8]) -> bool {
        // wd, mask, cookie, len: four 32-bit fields.
        const HEADER: usize = 16;
        // NAME_MAX and its padding: a longer name is not an inotify record.
        const MAX_NAME: usize = 256 + 16;
        let mut all = std::mem::take(&mut self.partial);
        all.extend_from_slice(read);
        let mut bytes = &all[..];
        loop {
            if bytes.len() < HEADER {
                self.partial = bytes.to_vec();
                return true;
            }
            let field =
                |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            let (mask, cookie, len) = (field(4), field(8), field(12) as usize);
            if len > MAX_NAME {
                return false;
            }
            let Some(name) = bytes.get(HEADER..HEADER + len) else {
                self.partial = bytes.to_vec();
                return true;
            };
            bytes = &bytes[HEADER + len..];
            if mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_UNMOUNT) != 0 {
                return false;
            }
            // The kernel's queue was full: events were lost, and the client
            // is told so, to look at the directory again.
            if mask & libc::IN_Q_OVERFLOW != 0 {
                if self.pending.back().is_none_or(|e| e.event != "overflow") {
                    self.pending.push_back(WatchEvent {
                        event: "overflow",
                        path: self.dir.clone(),
                    });
                }
                continue;
            }
            let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(&[]));
            // A directory entry's name: anything else is forged (a copied
            // watch's pipe carries what the sandbox wrote into it).
            if name.contains('/') || name == "." || name == ".." {
                return false;
            }
            // An upload's file until it lands: its landing shows, as the
            // file's creation (it replaces what was there whole).
            if name.starts_with(alcove_agent::UPLOAD_PREFIX) {
                if mask & libc::IN_MOVED_FROM != 0 && cookie != 0 {
                    if self.landing.len() >= LANDINGS_HELD {
                        self.landing.pop_front();
                    }
                    self.landing.push_back(cookie);
                }
                continue;
            }
            let landed = mask & libc::IN_MOVED_TO != 0
                && cookie != 0
                && self.landing.iter().any(|c| *c == cookie);
            if landed {
                self.landing.retain(|c| *c != cookie);
            }
            let event = if mask & libc::IN_CREATE != 0 || landed {
                "create"
            } else if mask & (libc::IN_MODIFY | libc::IN_CLOSE_WRITE) != 0 {
                "modify"
            } else if mask & libc::IN_DELETE != 0 {
                "delete"
            } else if mask & (libc::IN_MOVED_FROM | libc::IN_MOVED_TO) != 0 {
                "move"
            } else {
                continue;
            };
            let path = format!("{}/{name}", self.dir.trim_end_matches('/'));
            // A burst of writes to one file is one event until something else happens.
            if event == "modify"
                && self
                    .pending
                    .back()
                    .is_some_and(|e| e.event == "modify" && e.path == path)
            {
                continue;
            }
            self.pending.push_back(WatchEvent { event, path });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Events;
    use std::os::fd::AsFd;

    fn record(mask: u32, name: &str) -> Vec<u8> {
        moved(mask, 0, name)
    }

    fn moved(mask: u32, cookie: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        padded.resize(name.len().div_ceil(16).max(1) * 16, 0);
        let mut out = Vec::new();
        for field in [1u32, mask, cookie, padded.len() as u32] {
            out.extend_from_slice(&field.to_ne_bytes());
        }
        out.extend_from_slice(&padded);
        out
    }

    /// The events queued: what each is, and its path.
    fn given(events: &Events) -> Vec<(&str, &str)> {
        events
            .pending
            .iter()
            .map(|e| (e.event, e.path.as_str()))
            .collect()
    }

    #[test]
    fn events_split_across_reads_are_put_back_together() {
        let mut stream = record(libc::IN_CREATE, "a.txt");
        stream.extend(record(libc::IN_DELETE, "b.txt"));
        // Every split point, the way a pipe may cut them.
        for cut in 0..=stream.len() {
            let mut events = Events::new("/home/user".into());
            assert!(events.feed(&stream[..cut]));
            assert!(events.feed(&stream[cut..]));
            assert_eq!(
                given(&events),
                [
                    ("create", "/home/user/a.txt"),
                    ("delete", "/home/user/b.txt")
                ],
                "cut at {cut}"
            );
            assert!(events.partial.is_empty());
        }
    }

    /// An upload's new file is not shown; its landing is, as a create of
    /// the file's own name. Other moves show as they were.
    #[test]
    fn an_uploads_landing_shows_as_a_create_of_its_name() {
        let temp = format!("{}7-0", alcove_agent::UPLOAD_PREFIX);
        let mut read = record(libc::IN_CREATE, &temp);
        read.extend(record(libc::IN_MODIFY, &temp));
        read.extend(record(libc::IN_CLOSE_WRITE, &temp));
        read.extend(moved(libc::IN_MOVED_FROM, 41, &temp));
        read.extend(moved(libc::IN_MOVED_TO, 41, "a.txt"));
        read.extend(moved(libc::IN_MOVED_FROM, 42, "b.txt"));
        read.extend(moved(libc::IN_MOVED_TO, 42, "c.txt"));
        // A move onto a name from elsewhere, with a cookie no upload had.
        read.extend(moved(libc::IN_MOVED_TO, 43, "d.txt"));
        let mut events = Events::new("/home/user".into());
        assert!(events.feed(&read));
        assert_eq!(
            given(&events),
            [
                ("create", "/home/user/a.txt"),
                ("move", "/home/user/b.txt"),
                ("move", "/home/user/c.txt"),
                ("move", "/home/user/d.txt"),
            ]
        );
        assert!(events.landing.is_empty(), "a landed cookie is let go");
    }

    #[test]
    fn a_full_kernel_queue_is_told_once() {
        let mut events = Events::new("/home/user".into());
        let mut read = record(libc::IN_CREATE, "a");
        for _ in 0..3 {
            read.extend(record(libc::IN_Q_OVERFLOW, ""));
        }
        assert!(events.feed(&read));
        assert_eq!(
            given(&events),
            [("create", "/home/user/a"), ("overflow", "/home/user")]
        );
    }

    /// The directory's end read together with events before it: those come,
    /// then the stream ends (it had waited for a next read for ever).
    #[tokio::test]
    async fn a_watch_ends_after_the_events_read_with_its_end() {
        use std::io::Write;
        let (read, write) = alcove_sys::fd::pipe_cloexec().unwrap();
        let mut records = record(libc::IN_DELETE, "f");
        records.extend(record(libc::IN_DELETE_SELF, ""));
        records.extend(record(libc::IN_IGNORED, ""));
        let mut write = std::fs::File::from(write);
        write.write_all(&records).unwrap();
        // The writer stays open: only the records can end the stream.
        alcove_sys::fd::set_nonblocking(read.as_fd(), true).unwrap();
        let (_gone_tx, gone) = tokio::sync::watch::channel(false);
        let mut stream = super::WatchStream::new(read, "/home/user/d".into(), gone).unwrap();
        let first = stream.next().await.expect("the delete before the end");
        assert_eq!(
            (first.event, first.path.as_str()),
            ("delete", "/home/user/d/f")
        );
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
        assert!(matches!(end, Ok(None)), "the stream did not end: {end:?}");
        drop(write);
    }

    /// A sandbox whose copy takes nothing (paused, or stopped by its own
    /// code) fails the upload at the stall limit instead of holding it.
    #[tokio::test(start_paused = true)]
    async fn an_upload_the_sandbox_takes_nothing_of_fails() {
        let (read, write) = alcove_sys::fd::pipe_cloexec().unwrap();
        let (_ended, end) = tokio::sync::watch::channel(None);
        let mut writer = super::FileWriter {
            pipe: Some(tokio::net::unix::pipe::Sender::from_owned_fd(write).unwrap()),
            ready: None,
            verdict: None,
            end,
            written: 0,
            _slot: super::CopySlot(Default::default()),
        };
        let started = tokio::time::Instant::now();
        let failed = writer.write(&vec![0u8; 4 << 20]).await;
        let message = match failed {
            Err(super::SandboxesError::Conflict(m)) => m,
            other => panic!("not refused as stalled: {other:?}"),
        };
        assert!(message.contains("took none of the file"), "{message}");
        assert!(started.elapsed() >= super::STALLED);
        drop(read);
    }

    /// A copy that never says it is ready (stopped before its sync ends)
    /// fails the upload at the stall limit, and its verdict closes unsaid:
    /// the copy, when it goes on, lets the file go instead of landing it.
    #[tokio::test(start_paused = true)]
    async fn an_upload_not_ready_in_time_fails_and_is_let_go() {
        use std::io::Read;
        let (data_read, data_write) = alcove_sys::fd::pipe_cloexec().unwrap();
        let (ready_read, _ready_write) = alcove_sys::fd::pipe_cloexec().unwrap();
        let (verdict_read, verdict_write) = alcove_sys::fd::pipe_cloexec().unwrap();
        let (_ended, end) = tokio::sync::watch::channel(None);
        let writer = super::FileWriter {
            pipe: Some(tokio::net::unix::pipe::Sender::from_owned_fd(data_write).unwrap()),
            ready: Some(tokio::net::unix::pipe::Receiver::from_owned_fd(ready_read).unwrap()),
            verdict: Some(verdict_write),
            end,
            written: 0,
            _slot: super::CopySlot(Default::default()),
        };
        let started = tokio::time::Instant::now();
        let message = match writer.finish().await {
            Err(super::SandboxesError::Conflict(m)) => m,
            other => panic!("not refused as unfinished: {other:?}"),
        };
        assert!(message.contains("left as it was"), "{message}");
        assert!(started.elapsed() >= super::STALLED);
        let mut said = Vec::new();
        std::fs::File::from(verdict_read)
            .read_to_end(&mut said)
            .unwrap();
        assert!(said.is_empty(), "the verdict said {said:?}");
        drop(data_read);
    }

    #[test]
    fn a_record_no_watch_could_make_ends_the_stream() {
        let mut bad = record(libc::IN_CREATE, "a");
        bad[12..16].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(!Events::new("/d".into()).feed(&bad));
        let ended = record(libc::IN_IGNORED, "");
        assert!(!Events::new("/d".into()).feed(&ended));
        for forged in ["..", ".", "a/../../etc"] {
            assert!(!Events::new("/d".into()).feed(&record(libc::IN_CREATE, forged)));
        }
    }
}
