//! A spawned `alcove-accel serve` driven over its real sockets, for the
//! integration tests.

#![allow(dead_code)] // each test file uses its own part

use alcove_accel::accel::Placement;
use alcove_accel::client::Client;
use alcove_sys::unix::{recv_with_fd, send_with_fd, seqpacket_pair};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_alcove-accel");

pub struct Service {
    pub child: std::process::Child,
    pub control: Option<OwnedFd>,
}

impl Service {
    pub fn start() -> Service {
        Service::start_with(&[])
    }

    /// `alcove-accel serve` with extra arguments.
    pub fn start_with(args: &[&str]) -> Service {
        let (ours, theirs) = seqpacket_pair().unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .stdin(Stdio::from(theirs))
            .spawn()
            .unwrap();
        Service {
            child,
            control: Some(ours),
        }
    }

    /// A new connection granted `grant` (the JSON the engine sends).
    pub fn connect_raw(&self, grant: &serde_json::Value) -> OwnedFd {
        let (client_end, service_end) = seqpacket_pair().unwrap();
        send_with_fd(
            self.control.as_ref().unwrap().as_fd(),
            grant.to_string().as_bytes(),
            Some(service_end.as_fd()),
        )
        .unwrap();
        client_end
    }

    pub fn connect(&self, placement: Placement) -> Client {
        Client::new(self.connect_raw(&serde_json::json!({ "placement": placement })))
    }

    /// The process that does the work: the service's child where it has
    /// one (the confined worker), else the service itself.
    pub fn worker_pid(&self) -> u32 {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(first) = children.split_whitespace().next() {
                return first.parse().unwrap();
            }
            if Instant::now() > deadline {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Closing the control socket lets the service clean up after itself.
        drop(self.control.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `body` (with `fd` attached) and returns the JSON reply.
pub fn ask(sock: &OwnedFd, body: &str, fd: Option<&OwnedFd>) -> serde_json::Value {
    send_with_fd(sock.as_fd(), body.as_bytes(), fd.map(AsFd::as_fd)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = recv_with_fd(sock.as_fd(), &mut buf).unwrap();
    assert!(
        n > 0,
        "the service closed the connection instead of answering"
    );
    serde_json::from_slice(&buf[..n]).unwrap()
}

/// A field of /proc/PID/status, such as `VmHWM` (in kB for sizes).
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// `VmHWM` (peak resident memory) of `pid` in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let kb: u64 = status_field(pid, "VmHWM")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb << 10
}

/// Whether a fresh connection is answered (rather than closed unanswered).
pub fn answers(service: &Service) -> bool {
    let sock = service.connect_raw(&serde_json::json!({ "placement": "cpu" }));
    if send_with_fd(sock.as_fd(), br#"{"op":"info"}"#, None).is_err() {
        return false; // closed already
    }
    let mut buf = vec![0u8; 65536];
    matches!(recv_with_fd(sock.as_fd(), &mut buf), Ok((n, _)) if n > 0)
}

/// Waits until the service answers a fresh connection (a minute at most).
pub fn wait_ready(service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(service) {
        assert!(Instant::now() < deadline, "the service stopped answering");
        std::thread::sleep(Duration::from_millis(20));
    }
}
