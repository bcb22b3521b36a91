//! Streamed stdout ([`Stdio::Stream`](crate::Stdio::Stream)): what the
//! supervisor read from the program and has not yet handed to the reader's
//! pipe. It holds at most one read's worth; while it holds any, the
//! supervisor waits for the reader's pipe to have room instead of reading
//! more, so the program's own pipe fills and its writes block: backpressure
//! all the way from the reader to the program, with nothing buffered beyond.

use alcove_sys::fd;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct StreamOut {
    target: Arc<OwnedFd>,
    pending: Vec<u8>,
    sent: usize,
    /// The reader closed its end (or writing failed): nothing more goes out.
    pub(crate) gone: bool,
}

impl StreamOut {
    pub(crate) fn new(target: Arc<OwnedFd>) -> Self {
        StreamOut {
            target,
            pending: Vec::new(),
            sent: 0,
            gone: false,
        }
    }

    /// Whether bytes wait for room in the reader's pipe.
    pub(crate) fn waiting(&self) -> bool {
        !self.gone && self.sent < self.pending.len()
    }

    /// The descriptor to poll for `POLLOUT` while [`waiting`](Self::waiting).
    pub(crate) fn target_fd(&self) -> RawFd {
        self.target.as_raw_fd()
    }

    /// Takes `bytes` (only when not waiting) and sends what the pipe takes.
    pub(crate) fn offer(&mut self, bytes: &[u8]) {
        debug_assert!(!self.waiting());
        self.pending.clear();
        self.pending.extend_from_slice(bytes);
        self.sent = 0;
        self.flush();
    }

    /// Sends what the pipe has room for; a reader that went away (`EPIPE`)
    /// or any other failure ends the stream.
    pub(crate) fn flush(&mut self) {
        while self.waiting() {
            match fd::write_some(self.target.as_fd(), &self.pending[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Ok(_) | Err(_) => self.abandon(),
            }
        }
    }

    /// Drops what was not sent and sends nothing more.
    pub(crate) fn abandon(&mut self) {
        self.gone = true;
        self.pending = Vec::new();
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::StreamOut;
    use alcove_sys::fd;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    #[test]
    fn a_full_pipe_keeps_the_rest_and_a_closed_reader_ends_the_stream() {
        let (read, write) = fd::pipe_cloexec().unwrap();
        fd::set_nonblocking(write.as_fd(), true).unwrap();
        let mut out = StreamOut::new(Arc::new(write));
        // Far more than a pipe holds (64 KiB by default).
        out.offer(&vec![7u8; 1 << 20]);
        assert!(out.waiting(), "a pipe took 1 MiB at once");
        let mut buf = vec![0u8; 1 << 16];
        let n = fd::read(read.as_fd(), &mut buf).unwrap();
        assert!(n > 0 && buf[..n].iter().all(|&b| b == 7));
        out.flush();
        assert!(out.waiting());
        drop(read);
        out.flush();
        assert!(out.gone && !out.waiting());
    }
}
