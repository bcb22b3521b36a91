//! Helpers for the guard tests (tests/guard.rs): the daemon's event stream
//! read over raw TCP, Prometheus samples, invocation records, and a census
//! of the kernel's BPF objects.

use super::daemon::{Daemon, Reply};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How many BPF objects of a kind the kernel holds (BPF_*_GET_NEXT_ID).
fn bpf_objects(cmd: libc::c_long) -> usize {
    let mut count = 0;
    let mut id: u32 = 0;
    loop {
        let mut attr = [0u32; 4]; // start_id, next_id, open_flags
        attr[0] = id;
        // SAFETY: the bpf syscall reads and writes `attr`, valid for its size.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if ret != 0 {
            return count;
        }
        id = attr[1];
        count += 1;
    }
}

/// BPF programs, maps and links on the host, in that order.
pub fn bpf_census() -> [usize; 3] {
    const PROG_GET_NEXT_ID: libc::c_long = 11;
    const MAP_GET_NEXT_ID: libc::c_long = 12;
    const LINK_GET_NEXT_ID: libc::c_long = 31;
    [
        bpf_objects(PROG_GET_NEXT_ID),
        bpf_objects(MAP_GET_NEXT_ID),
        bpf_objects(LINK_GET_NEXT_ID),
    ]
}

/// The census once every count is at most `limit`, or after 5 s: the kernel
/// frees a dead process's BPF objects after an RCU grace period.
pub fn settled_census(limit: [usize; 3]) -> [usize; 3] {
    let start = Instant::now();
    loop {
        let now = bpf_census();
        if now.iter().zip(limit).all(|(n, l)| *n <= l) || start.elapsed() > Duration::from_secs(5) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One sample in Prometheus text (`name` with its labels, as printed), if exported.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// One sample that must be exported.
pub fn metric(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("/metrics has no sample {name}:\n{text}"))
}

/// `/metrics` now.
pub fn metrics(d: &Daemon) -> String {
    let reply = d.http("GET", "/metrics", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

/// A per-function counter's value: a labelled series appears only once it
/// is first incremented, so absence means zero.
pub fn counter(text: &str, family: &str, function: &str) -> f64 {
    sample(text, &format!("{family}_total{{function=\"{function}\"}}")).unwrap_or(0.0)
}

/// Whether the monitor program `program` is attached, per /metrics.
pub fn attached(text: &str, program: &str) -> f64 {
    metric(
        text,
        &format!("alcove_monitor_program_attached{{program=\"{program}\"}}"),
    )
}

/// The invocation id a reply names.
pub fn invocation_id(reply: &Reply) -> String {
    reply
        .header("x-alcove-invocation")
        .unwrap_or_else(|| panic!("no x-alcove-invocation: {reply:?}"))
        .to_owned()
}

/// `GET /v1/invocations/ID`: the record.
pub fn record(d: &Daemon, id: &str) -> Value {
    let reply = d.http("GET", &format!("/v1/invocations/{id}"), b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// `alcove fn deploy ARGS`, which must succeed.
pub fn deploy(d: &Daemon, args: &[&str]) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let (code, out, err) = d.cli(&all);
    assert_eq!(code, 0, "alcove fn {all:?}: {err}{out}");
}

/// A GET on its own connection, with the daemon's token, answered with its
/// status line and headers only (the body, a stream, is left to read).
pub fn open_get(d: &Daemon, path: &str) -> (u16, Vec<(String, String)>, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(&d.addr).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", d.addr);
    if let Some(token) = &d.token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(": ") {
            headers.push((k.to_ascii_lowercase(), v.to_owned()));
        }
    }
    (status, headers, reader)
}

/// Reads the rest of a chunked (or close-delimited) body.
pub fn read_body(headers: &[(String, String)], reader: &mut BufReader<TcpStream>) -> String {
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).unwrap();
    } else if chunked {
        while let Some(chunk) = next_chunk(reader) {
            body.extend(chunk);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// One chunk of a chunked body; `None` at its end or when the connection ends.
fn next_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    if reader.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// An open `GET /v1/events` stream: its events, parsed, as they arrive.
pub struct EventStream {
    events: mpsc::Receiver<Value>,
    /// Everything received so far, for failure messages.
    pub seen: Vec<Value>,
    socket: TcpStream,
}

impl EventStream {
    /// Opens the stream (`query`: such as `?function=NAME`, or empty) and
    /// returns once the daemon answered 200: from then on it is subscribed.
    pub fn open(d: &Daemon, query: &str) -> EventStream {
        let (status, headers, mut reader) = open_get(d, &format!("/v1/events{query}"));
        assert_eq!(
            status,
            200,
            "GET /v1/events{query}: {}",
            read_body(&headers, &mut reader)
        );
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")),
            "{headers:?}"
        );
        let socket = reader.get_ref().try_clone().unwrap();
        socket.set_read_timeout(None).unwrap();
        let (send, events) = mpsc::channel();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        std::thread::spawn(move || {
            let mut pending = Vec::<u8>::new();
            loop {
                let more = if chunked {
                    match next_chunk(&mut reader) {
                        Some(c) => c,
                        None => return,
                    }
                } else {
                    let mut buf = [0u8; 4096];
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf[..n].to_vec(),
                    }
                };
                pending.extend(more);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    if let Some(data) = line.trim_end().strip_prefix("data:") {
                        let value = serde_json::from_str(data.trim())
                            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
                        if send.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        EventStream {
            events,
            seen: Vec::new(),
            socket,
        }
    }

    /// Events until one matches `last` (included), or fails after `limit`.
    pub fn until(&mut self, limit: Duration, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    let done = last(&e);
                    got.push(e);
                    if done {
                        return got;
                    }
                }
                Err(_) => panic!(
                    "the event stream did not deliver the awaited event within {limit:?}; it \
                     delivered {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// A non-loopback IPv4 address of this host, or `None` after saying why
/// `test` is skipped.
pub fn host_address_or_skip(test: &str) -> Option<String> {
    let out = match std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
    {
        Ok(out) if out.status.success() => out,
        other => {
            super::skip_unprovided(
                test,
                &format!(
                    "`ip -4 -o addr` failed ({other:?}); scripts/packages.sh installs iproute2"
                ),
            );
            return None;
        }
    };
    let found = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|a| a.split('/').next().unwrap_or("").to_owned())
        .find(|a| !a.starts_with("127."));
    if found.is_none() {
        super::skip_machine(test, "this host has no non-loopback IPv4 address");
    }
    found
}
