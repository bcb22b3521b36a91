//! The agent and its link with a command on a terminal, for real: the agent
//! serves one end of a socket pair on a thread, the link the other, and
//! the command runs on a pty of the host's /dev/ptmx (no privilege needed).
//! Then a fake agent that hands back something else than a pty master,
//! which the link must refuse.

use alcove_agent::protocol::{Reply, Request};
use alcove_agent::{AgentLink, LinkError, PtySize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Everything `master` gives until the kernel says EIO (no slave is open
/// any more), read on a thread of its own; what came so far is sent to
/// `progress` after each read.
fn read_to_eio(
    master: OwnedFd,
    progress: Option<std::sync::mpsc::Sender<String>>,
) -> std::thread::JoinHandle<String> {
    alcove_sys::fd::set_nonblocking(master.as_fd(), false).unwrap();
    let mut master = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if let Some(tx) = &progress {
                        let _ = tx.send(String::from_utf8_lossy(&out).into_owned());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("reading the master: {e}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

// One test: the agent reaps any child of this process, so nothing else here
// may start children while it serves.
#[test]
fn commands_run_on_a_terminal_the_agent_opens() {
    let (daemon_end, agent_end) = alcove_sys::unix::seqpacket_pair().unwrap();
    let agent = std::thread::spawn(move || alcove_agent::serve(agent_end));
    let rt = runtime();
    rt.block_on(async move {
        let (link, _) = AgentLink::connect(daemon_end, Duration::from_secs(5))
            .await
            .unwrap();

        // A terminal is its stdin, stdout and stderr and its controlling
        // terminal, in a session of its own, of the size asked.
        let script = "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; stty size; \
                      echo $TERM; echo to-stderr >&2; ps -o sid= -p $$; echo pid $$; \
                      exec < /dev/tty && echo ctty";
        let size = PtySize::new(91, 17).unwrap();
        let (pid, mut end, master) = link
            .exec_pty(argv(&["sh", "-c", script]), Vec::new(), None, size)
            .await
            .unwrap();
        let out = read_to_eio(master, None).join().unwrap();
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
        assert_eq!(
            &lines[1..4],
            &["all-ttys", "17 91", "xterm-256color"],
            "{out:?}"
        );
        assert_eq!(lines[4], "to-stderr", "{out:?}");
        assert_eq!(lines[5].trim(), pid.to_string(), "its own session: {out:?}");
        assert_eq!(lines[6], format!("pid {pid}"), "{out:?}");
        assert_eq!(lines[7], "ctty", "{out:?}");
        end.wait_for(|e| e.is_some()).await.unwrap();
        let status = end.borrow().unwrap();
        assert_eq!((status.code, status.signal), (Some(0), None));

        // TERM given stays; what is typed reaches it; ^C is SIGINT to its
        // foreground group through the line discipline.
        let env = vec![("TERM".to_owned(), "dumb".to_owned())];
        let script = "echo $TERM; read line; echo got-$line; sleep 100; echo never";
        let (shell, mut end, master) = link
            .exec_pty(argv(&["sh", "-c", script]), env, None, size)
            .await
            .unwrap();
        let mut input = std::fs::File::from(master.try_clone().unwrap());
        let (tx, progress) = std::sync::mpsc::channel();
        let reader = read_to_eio(master, Some(tx));
        input.write_all(b"typed\n").unwrap();
        // The sleep runs once the line was read and answered: then ^C.
        loop {
            let so_far = progress
                .recv_timeout(Duration::from_secs(10))
                .expect("no answer to the typed line");
            if so_far.contains("got-typed\r\n") {
                break;
            }
        }
        // And sleep runs (dash holds a ^C that comes between the two until
        // its child ends): then ^C.
        let sleeping = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid pgrp session ...
                let Some((_, rest)) = stat.split_once(") ") else {
                    return false;
                };
                stat.contains("(sleep)")
                    && rest.split(' ').nth(3) == Some(shell.to_string().as_str())
            })
        };
        let began = std::time::Instant::now();
        while !sleeping() {
            assert!(began.elapsed() < Duration::from_secs(10), "sleep never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        input.write_all(b"\x03").unwrap();
        tokio::time::timeout(Duration::from_secs(10), end.wait_for(|e| e.is_some()))
            .await
            .expect("^C did not end it")
            .unwrap();
        let status = end.borrow().unwrap();
        assert_eq!((status.code, status.signal), (None, Some(libc::SIGINT)));
        drop(input); // the last master: the reader's copy is its own
        let out = reader.join().unwrap();
        // The line discipline echoes what is typed (when it comes) and ^C.
        for said in ["dumb\r\n", "typed\r\n", "got-typed\r\n", "^C"] {
            assert!(out.contains(said), "{said:?} in {out:?}");
        }
        assert!(!out.contains("never"), "{out:?}");

        // Sizes out of bounds are refused by the agent too (a daemon that
        // did not check), and so is a command without a program.
        let huge = PtySize {
            cols: 5000,
            rows: 24,
        };
        let refused = link.exec_pty(argv(&["true"]), Vec::new(), None, huge).await;
        assert!(matches!(refused, Err(LinkError::Failed(_))), "{refused:?}");
        let refused = link.exec_pty(Vec::new(), Vec::new(), None, size).await;
        assert!(matches!(refused, Err(LinkError::Failed(_))), "{refused:?}");
    });
    drop(rt); // the link's socket closes: the agent ends
    assert_eq!(agent.join().unwrap(), 0);
}

#[test]
fn a_master_that_is_not_one_is_refused() {
    let (daemon_end, fake_end) = alcove_sys::unix::seqpacket_pair().unwrap();
    // A fake agent: ready, then a `started` carrying a pipe, not a master.
    let fake = std::thread::spawn(move || {
        let send = |reply: &Reply, fds: &[std::os::fd::BorrowedFd<'_>]| {
            let bytes = serde_json::to_vec(reply).unwrap();
            alcove_sys::seqpacket::send(fake_end.as_fd(), &bytes, fds).unwrap();
        };
        send(&Reply::Ready { pid: 1 }, &[]);
        let mut buf = vec![0u8; 64 << 10];
        let (n, _) = alcove_sys::seqpacket::recv_fds(fake_end.as_fd(), &mut buf, false).unwrap();
        let Request::Exec { id, pty, .. } = serde_json::from_slice(&buf[..n]).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(pty, Some(PtySize { cols: 80, rows: 24 }));
        let (read, _write) = alcove_sys::fd::pipe_cloexec().unwrap();
        let size = None;
        send(
            &Reply::Started {
                id,
                pid: 4242,
                size,
            },
            &[read.as_fd()],
        );
        // Held until the link has judged it.
        let _ = alcove_sys::seqpacket::recv_fds(fake_end.as_fd(), &mut buf, false);
    });
    runtime().block_on(async move {
        let (link, _) = AgentLink::connect(daemon_end, Duration::from_secs(5))
            .await
            .unwrap();
        let got = link
            .exec_pty(
                argv(&["sh"]),
                Vec::new(),
                None,
                PtySize::new(80, 24).unwrap(),
            )
            .await;
        assert!(matches!(got, Err(LinkError::Protocol)), "{got:?}");
    });
    fake.join().unwrap();
}
