//! The link when the agent's socket is full: requests sent while the agent
//! reads nothing wait for room and are all delivered and answered once it
//! reads again. The link registers the socket for reads only, so this wait
//! is the one place it asks the kernel for writability.

use alcove_agent::protocol::{Reply, Request};
use alcove_agent::AgentLink;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// Requests sent at once, each with a path of `PATH_BYTES`: together more
/// than the socket's send buffer holds.
const REQUESTS: u64 = 24;
const PATH_BYTES: usize = 60 << 10;
/// How long the fake agent reads nothing.
const DEAF_FOR: Duration = Duration::from_millis(300);

/// The send buffer the test gives the daemon's end (the kernel doubles it),
/// so that what it sends exceeds it whatever the host's default.
const SEND_BUFFER: i32 = 128 << 10;

#[test]
fn requests_sent_to_an_agent_that_reads_nothing_wait_for_room_and_arrive() {
    let (daemon_end, fake_end) = alcove_sys::unix::seqpacket_pair().unwrap();
    // The situation under test: what is sent exceeds what the socket holds,
    // so sends must find it full while the fake agent is deaf.
    alcove_sys::seqpacket::set_send_buffer(daemon_end.as_fd(), SEND_BUFFER).unwrap();
    let room = alcove_sys::seqpacket::send_buffer(daemon_end.as_fd()).unwrap();
    let sent = REQUESTS as usize * PATH_BYTES;
    assert!(
        sent > 2 * room,
        "{sent} bytes of requests fit the send buffer of {room}: nothing would wait"
    );

    let fake = std::thread::spawn(move || {
        let send = |reply: &Reply| {
            let bytes = serde_json::to_vec(reply).unwrap();
            alcove_sys::seqpacket::send(fake_end.as_fd(), &bytes, &[]).unwrap();
        };
        send(&Reply::Ready { pid: 1 });
        std::thread::sleep(DEAF_FOR);
        let mut buf = vec![0u8; alcove_agent::protocol::MAX_MESSAGE];
        let mut seen = BTreeSet::new();
        while seen.len() < REQUESTS as usize {
            let (n, _) =
                alcove_sys::seqpacket::recv_fds(fake_end.as_fd(), &mut buf, false).unwrap();
            assert!(n > 0, "the link closed its end");
            let Request::Remove { id, path } = serde_json::from_slice(&buf[..n]).unwrap() else {
                panic!("not a remove");
            };
            assert_eq!(path.len(), PATH_BYTES, "request {id} arrived cut");
            assert!(seen.insert(id), "request {id} arrived twice");
            send(&Reply::Done { id, size: None });
        }
        seen
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let began = Instant::now();
    runtime.block_on(async move {
        let (link, _) = AgentLink::connect(daemon_end, Duration::from_secs(5))
            .await
            .unwrap();
        let mut asked = tokio::task::JoinSet::new();
        for n in 0..REQUESTS {
            let link = link.clone();
            let path = format!("/{n:0>width$}", width = PATH_BYTES - 1);
            asked.spawn(async move { link.remove(&path).await });
        }
        let mut answered = 0;
        while let Some(done) = tokio::time::timeout(Duration::from_secs(20), asked.join_next())
            .await
            .expect("the requests were not all answered within 20 s")
        {
            done.unwrap().unwrap();
            answered += 1;
        }
        assert_eq!(answered, REQUESTS);
    });
    let seen = fake.join().unwrap();
    assert_eq!(seen.len(), REQUESTS as usize);
    // Answered only after the fake agent started reading again.
    assert!(began.elapsed() >= DEAF_FOR, "{:?}", began.elapsed());
}

/// The events the process's epoll instances watch on the socket of inode
/// `ino` (from /proc/self/fdinfo: one `tfd:` line per watched descriptor).
fn watched_events(ino: u64) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]");
        if !is_epoll {
            continue;
        }
        let info = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(info) else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("tfd:")) {
            // tfd:        3 events: 80000019 data: 3  pos:0 ino:30f671 sdev:9
            let mut words = line.split_whitespace();
            let events = words.by_ref().skip_while(|w| *w != "events:").nth(1);
            let watched_ino = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ino:"))
                .and_then(|v| u64::from_str_radix(v, 16).ok());
            if watched_ino == Some(ino) {
                found.push(u32::from_str_radix(events.unwrap(), 16).unwrap());
            }
        }
    }
    found
}

#[test]
fn the_link_watches_the_socket_for_replies_only() {
    use std::os::unix::fs::MetadataExt;
    let (daemon_end, fake_end) = alcove_sys::unix::seqpacket_pair().unwrap();
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", daemon_end.as_raw_fd()))
        .unwrap()
        .ino();
    let bytes = serde_json::to_vec(&Reply::Ready { pid: 1 }).unwrap();
    alcove_sys::seqpacket::send(fake_end.as_fd(), &bytes, &[]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (_link, _) = AgentLink::connect(daemon_end, Duration::from_secs(5))
            .await
            .unwrap();
        let events = watched_events(ino);
        // Watched for writes too, the daemon would wake each time the agent
        // takes a request off the socket.
        // (The runtime's epoll may be listed under two descriptors: mio
        // keeps a copy of it for registrations.)
        assert!(!events.is_empty(), "the socket is not watched by any epoll");
        for watched in events {
            assert_ne!(watched & libc::EPOLLIN as u32, 0, "{watched:x}");
            assert_eq!(watched & libc::EPOLLOUT as u32, 0, "{watched:x}");
        }
    });
    drop(fake_end);
}
