//! The guest's own syscall counts (`alcove run --isolation gvisor --trace`).
//! eBPF on the host sees the Sentry's syscalls, not the program's; the
//! Sentry can log each of the program's calls itself (`runsc --strace`). Its
//! log goes into a FIFO that alcove reads and counts as it comes, so a
//! program making millions of calls costs no disk and no memory here, only
//! the time of logging them (a Sentry whose reader falls behind waits).

use crate::GvisorError;
use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The longest log line kept whole; longer ones (a call's arguments) are
/// only counted from their start.
const MAX_LINE: usize = 4096;

/// What the program called, by name, most called first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestSyscalls {
    pub counts: Vec<(String, u64)>,
    /// Log lines that looked like a call but named none alcove knows.
    pub unparsed: u64,
}

/// A reader counting one run's strace log from its FIFO.
pub(crate) struct Counter {
    fifo: PathBuf,
    done: Arc<AtomicBool>,
    thread: JoinHandle<GuestSyscalls>,
}

impl Counter {
    /// Makes the FIFO in `dir` (a run's directory) and starts reading it.
    pub(crate) fn start(dir: &Path) -> Result<Counter, GvisorError> {
        let failed = |source| GvisorError::Prepare {
            what: "the FIFO for gVisor's syscall log (--trace)",
            source,
        };
        let fifo = dir.join("strace.fifo");
        let path = CString::new(fifo.as_os_str().as_bytes())
            .map_err(|_| failed(io::ErrorKind::InvalidInput.into()))?;
        alcove_sys::fs::mkfifo(&path, 0o600).map_err(failed)?;
        // Open before runsc does: its blocking open for writing then finds a
        // reader, and a run that never starts leaves nothing waiting here.
        let fifo_file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .map_err(failed)?;
        let done = Arc::new(AtomicBool::new(false));
        let seen = done.clone();
        let thread = std::thread::Builder::new()
            .name("alcove-strace".into())
            .spawn(move || read_all(fifo_file, &seen))
            .map_err(failed)?;
        Ok(Counter { fifo, done, thread })
    }

    /// runsc's flags that send the Sentry's syscall log to the FIFO.
    pub(crate) fn flags(&self) -> Vec<OsString> {
        let mut log = OsString::from("--debug-log=");
        log.push(&self.fifo);
        vec![
            "--strace".into(),
            // Arguments are logged as addresses and a few bytes: the names
            // are what is counted.
            "--strace-log-size=16".into(),
            log,
            "--debug-command=boot".into(),
        ]
    }

    /// The counts, once runsc has ended (its writers are gone, or never came).
    pub(crate) fn finish(self) -> GuestSyscalls {
        self.done.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

fn read_all(mut fifo: std::fs::File, done: &AtomicBool) -> GuestSyscalls {
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut unparsed = 0;
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfd = [libc::pollfd {
            fd: fifo.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ended = done.load(Ordering::Acquire);
        // Linux reports POLLHUP on a FIFO only once a writer came and went:
        // until runsc opens it, this waits (and looks at `done` each 100 ms).
        match alcove_sys::fd::poll(&mut pfd, Some(std::time::Duration::from_millis(100))) {
            Ok(0) if ended => break,
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let n = match io::Read::read(&mut fifo, &mut buf) {
            Ok(0) => break, // every writer closed it
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        for &byte in &buf[..n] {
            if byte == b'\n' {
                count_line(&line, &mut counts, &mut unparsed);
                line.clear();
            } else if line.len() < MAX_LINE {
                line.push(byte);
            }
        }
    }
    let mut counts: Vec<(String, u64)> = counts
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n))
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    GuestSyscalls { counts, unparsed }
}

/// Counts one line of the Sentry's log if it is a call's entry:
/// `I1203 16:12:57.690204 30822 strace.go:561] [   1:   1] sh E brk(0x0)`.
fn count_line(line: &[u8], counts: &mut HashMap<&'static str, u64>, unparsed: &mut u64) {
    let Some(at) = find(line, b"strace.go:") else {
        return; // the Sentry's other log lines
    };
    let rest = &line[at..];
    let Some(task) = find(rest, b"] [").and_then(|i| {
        let after = &rest[i + 3..];
        find(after, b"] ").map(|j| &after[j + 2..])
    }) else {
        return;
    };
    // `comm E name(`: the task's name is at most 15 bytes and the program
    // chooses it, so the entry marker is the last " E " within reach of
    // it (a name holding " E " comes before the real one).
    let Some(marker) = (0..=15.min(task.len().saturating_sub(3)))
        .rev()
        .find(|&i| task[i..].starts_with(b" E "))
    else {
        return; // an exit line (" X ") or another
    };
    let call = &task[marker + 3..];
    let name = &call[..call.iter().position(|&b| b == b'(').unwrap_or(call.len())];
    let known = std::str::from_utf8(name)
        .ok()
        .and_then(alcove_sandbox::syscall_number)
        .and_then(alcove_sandbox::syscall_name);
    match known {
        Some(name) => *counts.entry(name).or_default() += 1,
        None => *unparsed += 1,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(lines: &[&str]) -> (HashMap<&'static str, u64>, u64) {
        let (mut counts, mut unparsed) = (HashMap::new(), 0);
        for l in lines {
            count_line(l.as_bytes(), &mut counts, &mut unparsed);
        }
        (counts, unparsed)
    }

    #[test]
    fn entries_are_counted_by_name_and_the_rest_is_not() {
        let (counts, unparsed) = counted(&[
            "I1203 16:12:57.690204   30822 strace.go:561] [   1:   1] sh E brk(0x0)",
            "I1203 16:12:57.690288   30822 strace.go:599] [   1:   1] sh X brk(0x0) = 94160140644352 (0x55a35dbc3000) (10.506µs)",
            "I1203 16:12:57.692221   30822 strace.go:564] [   1:   1] sh E access(0x7f904489e2a0 /etc/ld.so.preload, 0o4)",
            "I1203 16:12:57.692404   30822 strace.go:570] [   2:   2] cat E brk(0x0)",
            "I1203 16:13:37.009599    5008 main.go:216] ***************************",
            "I1203 16:12:57.692404   30822 strace.go:570] [   2:   2] cat E no_such_call(0x0)",
        ]);
        assert_eq!(counts.get("brk"), Some(&2));
        assert_eq!(counts.get("access"), Some(&1));
        assert_eq!(counts.len(), 2);
        assert_eq!(unparsed, 1);
    }

    #[test]
    fn a_task_name_cannot_stand_in_for_the_call() {
        // The program named its thread "a E read(" (15 bytes at most).
        let (counts, _) = counted(&[
            "I1203 16:12:57.690204 1 strace.go:561] [   3:   3] a E read( E getpid()",
            "I1203 16:12:57.690204 1 strace.go:561] [   3:   3] E E E E  E write(0x1 E x)",
        ]);
        assert_eq!(counts.get("getpid"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("write"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("read"), None, "{counts:?}");
    }

    #[test]
    fn short_and_broken_lines_do_not_panic() {
        let (counts, _) = counted(&[
            "strace.go:",
            "strace.go:] [",
            "strace.go:] [ 1: 1] ",
            "strace.go:] [ 1: 1]  E ",
            "strace.go:] [ 1: 1]  E (",
            "",
        ]);
        assert!(counts.is_empty());
    }
}
