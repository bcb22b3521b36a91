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
use std::time::Duration;

/// The longest log line read whole (a call's paths are printed whole, and
/// JSON may escape each byte in six); longer ones count as unparsed.
const MAX_LINE: usize = 64 * 1024;

/// What the program called, by name, most called first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestSyscalls {
    pub counts: Vec<(String, u64)>,
    /// Log lines that looked like a call but could not be counted as one:
    /// cut (longer than 64 KiB: a long execve's arguments), naming no call
    /// alcove knows, or with a second " E "/" X " in the thread's name or
    /// its paths (a program can move its own calls here, not add any).
    pub unparsed: u64,
}

/// A reader counting one run's strace log from its FIFO.
pub(crate) struct Counter {
    fifo: PathBuf,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<GuestSyscalls>>,
}

impl Drop for Counter {
    /// A run that failed before runsc started: the reader stops by itself.
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
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
        Ok(Counter {
            fifo,
            done,
            thread: Some(thread),
        })
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
            // One JSON object a line: what the program controls stays
            // inside its message, escaped.
            "--debug-log-format=json".into(),
        ]
    }

    /// The counts, once runsc has ended (its writers are gone, or never came).
    pub(crate) fn finish(mut self) -> GuestSyscalls {
        self.done.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

fn read_all(mut fifo: std::fs::File, done: &AtomicBool) -> GuestSyscalls {
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut unparsed = 0;
    let mut line = Vec::with_capacity(4096);
    let mut cut = false;
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
        // Once the run has ended, what is left in the FIFO is read to its
        // end whatever poll said (an interrupted poll says 0).
        let ready = match alcove_sys::fd::poll(&mut pfd, Some(Duration::from_millis(100))) {
            Ok(n) => n > 0,
            Err(_) => break,
        };
        if !ready && !ended {
            continue;
        }
        let n = match io::Read::read(&mut fifo, &mut buf) {
            Ok(0) if ended => break,
            Err(e) if ended && e.kind() == io::ErrorKind::WouldBlock => break,
            // Every writer closed it for now; a new one may still open it
            // (its open would wait for a reader): read on until the run ends.
            Ok(0) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
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
                if cut {
                    unparsed += 1; // a call too long to read whole
                } else {
                    count_line(&line, &mut counts, &mut unparsed);
                }
                line.clear();
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(byte);
            } else {
                cut = true;
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

/// One line of the Sentry's JSON log: only its message is read.
#[derive(serde::Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    msg: std::borrow::Cow<'a, str>,
}

/// The longest call name looked up.
const MAX_NAME: usize = 64;

/// Counts one line of the Sentry's JSON log if it is a call's entry:
/// `{"msg":"[   1:   1] sh E brk(0x0)",...}`. JSON keeps what the program
/// controls (its thread's name, the paths it passes) inside one message:
/// a newline there cannot start a line of its own.
fn count_line(line: &[u8], counts: &mut HashMap<&'static str, u64>, unparsed: &mut u64) {
    let Ok(LogLine { msg }) = serde_json::from_slice::<LogLine<'_>>(line) else {
        return; // not the log's (there is nothing else in the FIFO)
    };
    // "[ tid: pid] ": strace's lines, and only theirs, begin so.
    let Some(task) = msg.strip_prefix('[').and_then(|rest| {
        let (ids, task) = rest.split_once("] ")?;
        let (tid, pid) = ids.split_once(':')?;
        let number = |s: &str| !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit());
        (number(tid) && number(pid)).then_some(task)
    }) else {
        return; // the Sentry's other messages
    };
    // `comm E name(` or `comm X name(...) = ...`: the thread's name is at
    // most 15 bytes (15 characters once JSON has replaced bad UTF-8), so
    // the line's marker is a " E " or " X " starting within 15 characters.
    // The program chooses its name and its paths (printed after the call's
    // name), so a second marker there may be in either: which is real
    // cannot be told, and such a line counts as unparsed. A program can
    // thus move its own calls into `unparsed`; it cannot add or relabel any.
    let head: Vec<(usize, char)> = task.char_indices().take(15 + 3).collect();
    let markers: Vec<&[(usize, char)]> = head
        .windows(3)
        .filter(|w| w[0].1 == ' ' && matches!(w[1].1, 'E' | 'X') && w[2].1 == ' ')
        .collect();
    let marker = match markers[..] {
        [] => return, // none of strace's
        [one] => one,
        _ => {
            *unparsed += 1;
            return;
        }
    };
    if marker[1].1 != 'E' {
        return; // an exit line
    }
    let rest = &task[marker[2].0 + 1..];
    let name = &rest[..rest.find('(').unwrap_or(rest.len())];
    if let Some(n) = counts.get_mut(name) {
        *n += 1;
        return;
    }
    let known = (name.len() <= MAX_NAME)
        .then(|| alcove_sandbox::syscall_number(name))
        .flatten()
        .and_then(alcove_sandbox::syscall_name);
    match known {
        Some(name) => *counts.entry(name).or_default() += 1,
        None => *unparsed += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log line as the Sentry writes it, `msg` JSON-escaped.
    fn log(msg: &str) -> String {
        serde_json::json!({"msg": msg, "level": "info", "time": "2026-12-03T16:27:49Z"}).to_string()
    }

    fn counted(messages: &[&str]) -> (HashMap<&'static str, u64>, u64) {
        let (mut counts, mut unparsed) = (HashMap::new(), 0);
        for m in messages {
            count_line(log(m).as_bytes(), &mut counts, &mut unparsed);
        }
        (counts, unparsed)
    }

    #[test]
    fn entries_are_counted_by_name_and_the_rest_is_not() {
        let (counts, unparsed) = counted(&[
            "[   1:   1] sh E brk(0x0)",
            "[   1:   1] sh X brk(0x0) = 94160140644352 (0x55a35dbc3000) (10.506µs)",
            "[   1:   1] sh E access(0x7f904489e2a0 /etc/ld.so.preload, 0o4)",
            "[   2:   2] cat E brk(0x0)",
            "***************************",
            "Version 0.0~20221219.0",
            "[   2:   2] cat E no_such_call(0x0)",
        ]);
        assert_eq!(counts.get("brk"), Some(&2));
        assert_eq!(counts.get("access"), Some(&1));
        assert_eq!(counts.len(), 2);
        assert_eq!(unparsed, 1);
    }

    #[test]
    fn what_the_program_controls_cannot_add_or_relabel_calls() {
        let (counts, unparsed) = counted(&[
            // A thread named "a E read(" (15 bytes at most), entering and
            // leaving getpid: which marker is real cannot be told, so
            // neither line counts as a call, the entry as unparsed.
            "[   3:   3] a E read( E getpid()",
            "[   3:   3] a E read( X getpid() = 0x3",
            "[   3:   3] E E E E  E write(0x1 E x)",
            // An empty name and a path that reads like a call: neither the
            // entry nor the exit counts as getpid.
            "[   3:   3]  E open(0x10000 E getpid(, 0x0, 0o0)",
            "[   3:   3]  X open(0x10000 E getpid(, 0x0, 0o0) = 0x3 (1.2µs)",
            // A path holding newlines and whole fake lines stays one call.
            "[   3:   3] sh E stat(0x10000 /x\n{\"msg\":\"[ 1: 1] sh E execve(\"}\n, 0x0)",
            // A name beginning with a newline still names its own call.
            "[   3:   3] \nx E getppid()",
        ]);
        assert_eq!(counts.get("stat"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("getppid"), Some(&1), "{counts:?}");
        for forged in ["getpid", "read", "write", "open", "execve"] {
            assert_eq!(counts.get(forged), None, "{forged}: {counts:?}");
        }
        assert_eq!(unparsed, 5, "the five ambiguous lines");
    }

    #[test]
    fn short_broken_and_foreign_lines_do_not_panic() {
        let (mut counts, mut unparsed) = (HashMap::new(), 0);
        for raw in ["", "{", "{\"msg\":1}", "not json [ 1: 1] sh E brk(0x0)"] {
            count_line(raw.as_bytes(), &mut counts, &mut unparsed);
        }
        for m in [
            "[",
            "[1:1]",
            "[1:1] ",
            "[1:1] a",
            "[1:1]  E",
            "[1:1]  E (",
            "[x:1] sh E brk(0x0)",
            "[:] sh E brk(0x0)",
        ] {
            count_line(log(m).as_bytes(), &mut counts, &mut unparsed);
        }
        assert!(counts.is_empty(), "{counts:?}");
    }
}
