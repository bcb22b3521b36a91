//! A command running in an agent sandbox, as the daemon holds it: what it
//! printed (kept up to a bound, so a client can attach late or again), the
//! same live to every attached client, and how it ended. Its input and
//! output are pipes, or the master of a terminal (a pty) opened in the
//! sandbox.

use alcove_agent::ExitStatus;
/// A terminal's size (what `exec` with a pty and a resize take).
pub use alcove_agent::PtySize;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, watch};

use super::budget::{OutputBudget, ReadingSlot, CHUNK_COST};

/// Bytes of output kept per command for clients that attach later.
pub const KEPT_OUTPUT: usize = 1 << 20;
/// Bytes one read takes from a command's pipe.
const CHUNK: usize = 16 << 10;
/// Chunks a slow client may fall behind before it misses some (it is told).
const LIVE_BACKLOG: usize = 256;
/// What a terminal reads as end of file at the start of a line (^D, VEOF's
/// default; a line that is not empty is ended by the first one).
const EOF_CHAR: u8 = 0x04;

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
    /// `bytes` and a [`CHUNK_COST`] a chunk: what its sandbox is charged.
    cost: usize,
    /// Bytes dropped from the front to stay within [`KEPT_OUTPUT`].
    dropped: u64,
}

impl Kept {
    /// Lets its oldest chunk go, refunding `budget` for it.
    fn let_go_oldest(&mut self, budget: &OutputBudget) {
        let Some((_, old)) = self.chunks.pop_front() else {
            return;
        };
        self.bytes -= old.len();
        self.cost -= old.len() + CHUNK_COST;
        self.dropped += old.len() as u64;
        budget.refund(old.len() + CHUNK_COST);
    }
}

/// The master of a command's terminal, opened in the sandbox by its agent
/// (the daemon checked it is one). Reads and writes never block a thread.
pub struct Terminal {
    master: AsyncFd<std::fs::File>,
}

impl Terminal {
    /// `master` must be non-blocking (the agent link hands it over so).
    fn new(master: OwnedFd) -> std::io::Result<Terminal> {
        let master = std::fs::File::from(master);
        // SAFETY: a File owns a valid open descriptor whose number never
        // changes, and the AsyncFd owns the File until it is dropped.
        let master = unsafe { AsyncFd::register(master) }.map_err(std::io::Error::from)?;
        Ok(Terminal { master })
    }

    /// What the command wrote; 0 once nothing holds the slave any more
    /// (the kernel says EIO then).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.master.readable().await?;
            match ready.try_io(|m| m.get_ref().read(buf)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(got) => return got,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bytes` as typed input (the line discipline sees them:
    /// ^C interrupts, ^D ends a line or the input).
    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|m| m.get_ref().write(bytes)) {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets its size; the kernel sends SIGWINCH to its foreground group.
    fn resize(&self, size: PtySize) -> std::io::Result<()> {
        alcove_sys::pty::set_window_size(self.master.get_ref().as_fd(), size.rows, size.cols)
    }
}

/// Where a command's stdin goes, until it is closed.
pub enum Input {
    Pipe(tokio::net::unix::pipe::Sender),
    /// Its terminal, and whether the last byte written ended a line.
    Terminal(Arc<Terminal>, bool),
}

impl Input {
    /// Writes `bytes`; with `close`, then ends the input: a pipe is closed
    /// (by the caller, dropping this), a terminal gets ^D (twice when a
    /// line is pending: once to end it, once for the end of file), as a
    /// user would type it; the terminal stays open for the output.
    pub async fn write(&mut self, bytes: &[u8], close: bool) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            Input::Pipe(pipe) => pipe.write_all(bytes).await,
            Input::Terminal(terminal, at_line_start) => {
                terminal.write_all(bytes).await?;
                if let Some(last) = bytes.last() {
                    *at_line_start = matches!(last, b'\n' | b'\r');
                }
                if close {
                    let eof: &[u8] = if *at_line_start {
                        &[EOF_CHAR]
                    } else {
                        &[EOF_CHAR, EOF_CHAR]
                    };
                    terminal.write_all(eof).await?;
                }
                Ok(())
            }
        }
    }
}

/// One command: its output and its end.
pub struct Process {
    pub pid: i32,
    pub cmd: String,
    kept: Mutex<Kept>,
    live: broadcast::Sender<Chunk>,
    /// Both pipes (or the terminal) at end of file.
    drained: watch::Sender<bool>,
    end: watch::Receiver<Option<ExitStatus>>,
    /// Where to write its stdin, until closed.
    pub stdin: tokio::sync::Mutex<Option<Input>>,
    /// It was started on a terminal.
    has_pty: bool,
    /// Its terminal, for resizes, until its output ends.
    terminal: Mutex<Option<Arc<Terminal>>>,
    /// Killed for running past its timeout.
    timed_out: std::sync::atomic::AtomicBool,
    /// Its place in the order commands were started (pids wrap).
    seq: u64,
    /// Its sandbox's, which its kept output is charged to.
    budget: Arc<OutputBudget>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let kept = self.kept.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.refund(kept.cost);
    }
}

/// The start order of commands, across sandboxes.
static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Process {
    fn new(
        pid: i32,
        cmd: String,
        stdin: Option<Input>,
        terminal: Option<Arc<Terminal>>,
        end: watch::Receiver<Option<ExitStatus>>,
        budget: Arc<OutputBudget>,
    ) -> Arc<Process> {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let (drained, _) = watch::channel(false);
        Arc::new(Process {
            seq: STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pid,
            cmd,
            kept: Mutex::default(),
            live,
            drained,
            end,
            stdin: tokio::sync::Mutex::new(stdin),
            has_pty: terminal.is_some(),
            terminal: Mutex::new(terminal),
            timed_out: Default::default(),
            budget,
        })
    }

    /// Starts reading `stdout` and `stderr` (the read ends of its pipes).
    pub fn start(
        pid: i32,
        cmd: String,
        stdout: OwnedFd,
        stderr: OwnedFd,
        stdin: Option<OwnedFd>,
        end: watch::Receiver<Option<ExitStatus>>,
        slot: ReadingSlot,
    ) -> std::io::Result<Arc<Process>> {
        let stdin = match stdin {
            Some(fd) => Some(Input::Pipe(tokio::net::unix::pipe::Sender::from_owned_fd(
                fd,
            )?)),
            None => None,
        };
        let out = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)?;
        let err = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr)?;
        let budget = slot.budget();
        let process = Process::new(pid, cmd, stdin, None, end, budget);
        let reader = Arc::clone(&process);
        tokio::spawn(async move {
            tokio::join!(
                reader.pump(Source::Pipe(out), Stream::Stdout),
                reader.pump(Source::Pipe(err), Stream::Stderr)
            );
            reader.drained.send_replace(true);
            drop(slot);
        });
        Ok(process)
    }

    /// Starts reading the master of its terminal (non-blocking): what it
    /// writes to stdout and stderr alike comes as stdout, as on a screen.
    pub fn start_pty(
        pid: i32,
        cmd: String,
        master: OwnedFd,
        end: watch::Receiver<Option<ExitStatus>>,
        slot: ReadingSlot,
    ) -> std::io::Result<Arc<Process>> {
        let terminal = Arc::new(Terminal::new(master)?);
        let stdin = Input::Terminal(Arc::clone(&terminal), true);
        let mut ended = end.clone();
        let process = Process::new(
            pid,
            cmd,
            Some(stdin),
            Some(Arc::clone(&terminal)),
            end,
            slot.budget(),
        );
        let reader = Arc::clone(&process);
        tokio::spawn(async move {
            let pumped = reader.pump(Source::Terminal(Arc::clone(&terminal)), Stream::Stdout);
            tokio::select! {
                () = pumped => {}
                // The command ended and its output had a while to come:
                // what still holds the terminal (a job it left behind) is
                // hung up when the master closes below, as sshd does, so it
                // cannot keep the daemon's descriptor and the sandbox's
                // terminal slot for ever.
                () = async {
                    let _ = ended.wait_for(Option::is_some).await;
                    tokio::time::sleep(TERMINAL_AFTER_EXIT).await;
                } => {}
            }
            // Nothing holds the slave: the terminal is of no more use, and
            // its slot in the sandbox's /dev/pts is freed with the master.
            reader
                .terminal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            // A write in flight ends at once now (EIO): its lock is waited
            // for, so the master's last copy cannot stay behind in it (an
            // open master keeps its slot in the sandbox's /dev/pts).
            if let Ok(mut stdin) =
                tokio::time::timeout(Duration::from_secs(5), reader.stdin.lock()).await
            {
                stdin.take();
            }
            drop(terminal);
            reader.drained.send_replace(true);
            drop(slot);
        });
        Ok(process)
    }

    async fn pump(&self, mut source: Source, stream: Stream) {
        let mut buf = vec![0u8; CHUNK];
        // The start of a character split across reads, held for the next
        // (a chunk becomes text on its own: it must not end mid-character).
        let mut held = 0;
        loop {
            let n = match source.read(&mut buf[held..]).await {
                Ok(0) | Err(_) => {
                    if held > 0 {
                        self.keep(stream, &buf[..held]);
                    }
                    return;
                }
                Ok(n) => held + n,
            };
            let whole = complete_utf8(&buf[..n]);
            self.keep(stream, &buf[..whole]);
            buf.copy_within(whole..n, 0);
            held = n - whole;
        }
    }

    fn keep(&self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let chunk: Arc<[u8]> = Arc::from(bytes);
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.bytes += bytes.len();
        kept.cost += bytes.len() + CHUNK_COST;
        self.budget.charge(bytes.len() + CHUNK_COST);
        kept.chunks.push_back((stream, Arc::clone(&chunk)));
        // Its latest chunk is kept whatever the others keep.
        while kept.chunks.len() > 1
            && (kept.bytes > KEPT_OUTPUT || kept.cost > 2 * KEPT_OUTPUT || self.budget.over())
        {
            kept.let_go_oldest(&self.budget);
        }
        // Sent under the lock: an attach sees each chunk once, kept or live.
        let _ = self.live.send((stream, chunk));
    }

    /// Lets its oldest kept output go until it keeps at most `bytes` (its
    /// latest chunk always), refunding its sandbox.
    pub(crate) fn trim_kept(&self, bytes: usize) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        while kept.chunks.len() > 1 && kept.bytes > bytes {
            kept.let_go_oldest(&self.budget);
        }
    }

    /// Whether it was started on a terminal.
    pub fn has_pty(&self) -> bool {
        self.has_pty
    }

    /// Sets its terminal's size (SIGWINCH to its foreground group).
    pub fn resize(&self, size: PtySize) -> Result<(), super::SandboxesError> {
        use super::SandboxesError;
        if !self.has_pty {
            return Err(SandboxesError::Conflict(format!(
                "the command with pid {} has no terminal to resize (start it with pty)",
                self.pid
            )));
        }
        let terminal = self
            .terminal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(terminal) = terminal else {
            return Err(SandboxesError::Conflict(format!(
                "the terminal of the command with pid {} has closed (it ended)",
                self.pid
            )));
        };
        terminal
            .resize(size)
            .map_err(SandboxesError::io("resizing a command's terminal"))
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

    /// Where it came in the order commands were started.
    pub fn started_seq(&self) -> u64 {
        self.seq
    }

    pub fn running(&self) -> bool {
        self.end.borrow().is_none() && self.end.has_changed().is_ok()
    }
}

/// Where a command's output is read from.
enum Source {
    Pipe(tokio::net::unix::pipe::Receiver),
    Terminal(Arc<Terminal>),
}

impl Source {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Pipe(pipe) => pipe.read(buf).await,
            Source::Terminal(terminal) => terminal.read(buf).await,
        }
    }
}

/// How much of `bytes` ends on a whole UTF-8 character: all of it, but
/// for the start of a multi-byte character cut off at the end (at most 3
/// bytes). What is not UTF-8 at all is left whole (it is replaced later).
fn complete_utf8(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=n.min(3) {
        let b = bytes[n - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: its lead is further back
        }
        let length = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if length > back { n - back } else { n };
    }
    n
}

/// How long a terminal stays open after its command's end (for output in
/// flight); then it is closed, hanging up whatever still holds it.
const TERMINAL_AFTER_EXIT: Duration = Duration::from_secs(2);

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

#[cfg(test)]
mod tests {
    use super::{complete_utf8, Process, Stream, KEPT_OUTPUT};
    use crate::sandboxes::budget::{OutputBudget, CHUNK_COST, KEPT_PER_SANDBOX};
    use std::sync::Arc;

    fn process(budget: &Arc<OutputBudget>) -> Arc<Process> {
        let (_, end) = tokio::sync::watch::channel(None);
        Process::new(1, "x".into(), None, None, end, Arc::clone(budget))
    }

    #[test]
    fn a_sandboxs_commands_keep_no_more_than_its_share_in_all() {
        let budget = Arc::new(OutputBudget::default());
        let chunk = vec![b'x'; 16 << 10];
        let many: Vec<_> = (0..48).map(|_| process(&budget)).collect();
        for p in &many {
            for _ in 0..(KEPT_OUTPUT / chunk.len()) {
                p.keep(Stream::Stdout, &chunk);
            }
        }
        // 48 MiB printed: each keeps its latest chunk at least, no more in all
        // than the share and the chunk each one is let keep beyond it.
        let slack = many.len() * (chunk.len() + CHUNK_COST);
        assert!(
            budget.kept() <= KEPT_PER_SANDBOX + slack,
            "{}",
            budget.kept()
        );
        assert!(budget.kept() >= KEPT_PER_SANDBOX - 2 * chunk.len());
        // The last ones printed past the share: they let their oldest go.
        let (kept, dropped, _) = many[many.len() - 1].attach();
        assert!(
            !kept.is_empty() && dropped > 0,
            "{} kept, {dropped} dropped",
            kept.len()
        );
        drop(kept);
        drop(many);
        assert_eq!(
            budget.kept(),
            0,
            "a forgotten command's output is given back"
        );
    }

    #[test]
    fn trimming_lets_the_oldest_output_go_and_refunds_it() {
        let budget = Arc::new(OutputBudget::default());
        let p = process(&budget);
        let chunk = vec![b'x'; 16 << 10];
        for _ in 0..32 {
            p.keep(Stream::Stdout, &chunk);
        }
        let before = budget.kept();
        p.trim_kept(64 << 10);
        let (kept, dropped, _) = p.attach();
        assert_eq!(kept.len(), 4);
        assert_eq!(dropped, 28 * chunk.len() as u64);
        assert_eq!(before - budget.kept(), 28 * (chunk.len() + CHUNK_COST));
    }

    #[test]
    fn a_command_printing_a_byte_at_a_time_is_charged_for_each_chunk() {
        let budget = Arc::new(OutputBudget::default());
        let p = process(&budget);
        for _ in 0..100_000 {
            p.keep(Stream::Stdout, b"x");
        }
        // 100,000 bytes, but what holding them costs is what is bounded.
        assert!(budget.kept() <= 2 * KEPT_OUTPUT, "{}", budget.kept());
        let (kept, dropped, _) = p.attach();
        assert_eq!(kept.len() as u64 + dropped, 100_000);
        assert!(dropped > 0, "none of the 100,000 chunks was let go");
    }

    #[test]
    fn a_character_cut_at_the_end_is_held_back() {
        let text = "a\u{e9}\u{2713}\u{1f600}".as_bytes(); // 1, 2, 3 and 4 bytes
        assert_eq!(complete_utf8(text), text.len());
        assert_eq!(complete_utf8(b""), 0);
        assert_eq!(complete_utf8(b"abc"), 3);
        // Every cut inside a character holds back just that character's start.
        let smile = "x\u{1f600}".as_bytes();
        for cut in 2..smile.len() {
            assert_eq!(complete_utf8(&smile[..cut]), 1, "cut at {cut}");
        }
        let check = "x\u{2713}".as_bytes();
        assert_eq!(complete_utf8(&check[..2]), 1);
        assert_eq!(complete_utf8(&check[..3]), 1);
        // Not UTF-8: left whole, never held forever.
        assert_eq!(complete_utf8(&[0xff, 0xfe]), 2);
        assert_eq!(complete_utf8(&[0x80, 0x80, 0x80, 0x80]), 4);
    }
}
