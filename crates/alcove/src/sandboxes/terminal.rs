//! `alcove sandbox exec -t` and `attach -t`: this terminal wired to a
//! command's terminal in a sandbox. This one is in raw mode meanwhile (each
//! key goes there as typed: ^C is the command's SIGINT, not alcove's), and
//! is restored however this ends: the command's end, an error, or a signal
//! (TERM, HUP, INT, QUIT: the command then gets SIGHUP, as from a terminal
//! that closed). A resize here (SIGWINCH) resizes it there.

use alcove_api::Client;
use anyhow::Context;
use ratatui::crossterm::terminal as term;
use std::io::Read;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signal that is ending alcove (0: none), once its thread has taken it.
static ENDED_BY: AtomicI32 = AtomicI32::new(0);

/// The size a terminal gets when there is none here to copy: (cols, rows).
pub const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// This terminal's size as (cols, rows), or [`DEFAULT_SIZE`].
pub fn size() -> (u16, u16) {
    term::size()
        .ok()
        .filter(|(cols, rows)| *cols > 0 && *rows > 0)
        .map(|(cols, rows)| (cols.min(1000), rows.min(1000)))
        .unwrap_or(DEFAULT_SIZE)
}

/// Raw mode on this terminal while it lives.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        term::enable_raw_mode().context("putting this terminal in raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // What the sandbox's program may have switched on in this terminal
        // (alternate screen, mouse and focus reports, bracketed paste, a
        // hidden cursor, the line-drawing set) is switched off again.
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[?1049l\x1b[?1000;1002;1003;1006;1004;2004l\x1b[?25h\x1b(B");
        let _ = out.flush();
        let _ = term::disable_raw_mode();
    }
}

/// Follows command `pid`'s output (`lines`) to its end and returns its exit
/// code. `local_tty`: this process's stdin is a terminal, put in raw mode
/// and followed for resizes. `send_input`: what is read from stdin is
/// written to the command as it comes (its end closes the command's stdin).
pub fn interact(
    client: &Client,
    id: &str,
    pid: i32,
    lines: alcove_api::Lines,
    local_tty: bool,
    send_input: bool,
) -> anyhow::Result<i32> {
    // The handlers first: a signal that comes once raw mode is on restores it.
    let signals = if local_tty {
        Some(Signals::install()?)
    } else {
        None
    };
    let raw = if local_tty {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if let Some(signals) = signals {
        // Its size may differ from this terminal's (an attach): make it the same.
        let (cols, rows) = size();
        let _ = client.resize_pty(id, pid, cols, rows);
        signals.serve(client.clone(), id.to_owned(), pid)?;
    }
    if send_input {
        let client = client.clone();
        let id = id.to_owned();
        // Left blocked in its read when the command ends: the process exits.
        std::thread::Builder::new()
            .name("alcove-stdin".into())
            .spawn(move || forward_stdin(&client, &id, pid))
            .context("starting the stdin thread")?;
    }
    let code = super::follow(lines, raw.is_some());
    drop(raw);
    // The command may end of the hangup before the signal's thread exits.
    match ENDED_BY.load(Ordering::SeqCst) {
        0 => code,
        signal => Ok(128 + signal),
    }
}

/// Sends stdin to the command as it is read, until its end (which closes
/// the command's stdin: ^D on its terminal) or until the command takes no
/// more.
fn forward_stdin(client: &Client, id: &str, pid: i32) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => {
                let _ = client.write_stdin(id, pid, &[], true);
                return;
            }
            Ok(n) => {
                if client.write_stdin(id, pid, &buf[..n], false).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// The signals followed while this terminal is raw, on a thread of their own.
struct Signals {
    runtime: tokio::runtime::Runtime,
    resized: Signal,
    /// TERM, HUP, INT, QUIT: each ends alcove.
    ending: [(i32, Signal); 4],
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the signal watcher")?;
        let (resized, ending) = runtime
            .block_on(async {
                let on = |kind| signal(kind);
                Ok::<_, std::io::Error>((
                    on(SignalKind::window_change())?,
                    [
                        (libc::SIGTERM, on(SignalKind::terminate())?),
                        (libc::SIGHUP, on(SignalKind::hangup())?),
                        (libc::SIGINT, on(SignalKind::interrupt())?),
                        (libc::SIGQUIT, on(SignalKind::quit())?),
                    ],
                ))
            })
            .context("following signals")?;
        Ok(Signals {
            runtime,
            resized,
            ending,
        })
    }

    /// Resizes the command's terminal on SIGWINCH; on an ending signal,
    /// restores this terminal, hangs the command up and exits with 128 +
    /// its number.
    fn serve(self, client: Client, id: String, pid: i32) -> anyhow::Result<()> {
        let Signals {
            runtime,
            mut resized,
            ending: [(n0, mut s0), (n1, mut s1), (n2, mut s2), (n3, mut s3)],
        } = self;
        std::thread::Builder::new()
            .name("alcove-signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let number = tokio::select! {
                            Some(()) = resized.recv() => {
                                let (cols, rows) = size();
                                let _ = client.resize_pty(&id, pid, cols, rows);
                                continue;
                            }
                            _ = s0.recv() => n0,
                            _ = s1.recv() => n1,
                            _ = s2.recv() => n2,
                            _ = s3.recv() => n3,
                        };
                        ENDED_BY.store(number, Ordering::SeqCst);
                        let _ = term::disable_raw_mode();
                        // This end of the terminal went away: as a real one
                        // does, say so to the command (SIGHUP), or an
                        // interactive shell would wait there for its timeout.
                        let _ = client.sandbox_call(
                            "POST",
                            &id,
                            &format!("/processes/{pid}/kill"),
                            Some(&serde_json::json!({ "signal": "HUP" })),
                        );
                        std::process::exit(128 + number);
                    }
                })
            })
            .context("starting the signal watcher")?;
        Ok(())
    }
}
