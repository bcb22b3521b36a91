//! A real `alcove serve` for the tests, on a loopback port, and one-shot
//! HTTP requests to it.

use super::ALCOVE;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Given among a daemon's flags: start it as `alcove serve` starts, adding
/// `favordynmods` to the cgroup2 tree (the others start with
/// `--no-favordynmods`). Not passed on to the daemon.
pub const FAVORDYNMODS_AS_SERVED: &str = "(favordynmods as served)";

/// A running daemon; killed (by its pid) when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub log: Arc<Mutex<String>>,
    /// What the daemon wrote to DATA_DIR/token, sent with every request.
    pub token: Option<String>,
}

impl Daemon {
    pub fn start(data: &Path, extra: &[&str]) -> Daemon {
        Self::start_with_env(data, extra, &[])
    }

    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        // No ready sandboxes unless a test asks: the tests count what is
        // left on the host while their daemon runs, and a daemon dropped
        // here is killed (-9), which leaves ready sandboxes' homes mounted
        // until the next daemon on that directory (sandbox_pool.rs tests them).
        let pool: &[&str] = match extra.contains(&"--sandbox-pool") {
            true => &[],
            false => &["--sandbox-pool", "0"],
        };
        // The cgroup2 tree's options are the host's: only the test of that
        // (cgroup_migrations.rs) lets a daemon change them.
        let favor: &[&str] =
            match extra.contains(&FAVORDYNMODS_AS_SERVED) || extra.contains(&"--no-favordynmods") {
                true => &[],
                false => &["--no-favordynmods"],
            };
        let extra: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != FAVORDYNMODS_AS_SERVED)
            .collect();
        let mut child = Command::new(ALCOVE)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(&extra)
            .args(pool)
            .args(favor)
            .envs(env.iter().copied())
            .env_remove("ALCOVE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start alcove serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addr = String::new();
        let log = Arc::new(Mutex::new(String::new()));
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            log.lock().unwrap().push_str(&line);
            if let Some(rest) = line.split("serving http://").nth(1) {
                addr = rest.split(' ').next().unwrap().to_owned();
                break;
            }
        }
        assert!(
            !addr.is_empty(),
            "the daemon did not start: {}",
            log.lock().unwrap()
        );
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        // The daemon's own token, unless the test gave it one.
        let token = std::fs::read_to_string(data.join("token"))
            .ok()
            .map(|t| t.trim().to_owned());
        Daemon {
            child,
            addr,
            data: data.to_owned(),
            log,
            token,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ALCOVE)
            .arg("fn")
            .args(args)
            .env("ALCOVE_SERVER", self.url())
            .env("ALCOVE_TOKEN", self.token.as_deref().unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .expect("run alcove fn");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.cli(&all);
        assert!(
            code == 0 || args[0] == "result",
            "alcove fn {args:?} exited {code}: {err}"
        );
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("alcove fn {args:?} printed no JSON ({e}): {out}"))
    }

    /// Runs `cmd` (a string for `sh -c`, or an argv) in the agent sandbox
    /// `id` to its end: its exit code and stdout.
    pub fn sandbox_exec(&self, id: &str, cmd: Value) -> (Option<i64>, String) {
        let body = serde_json::json!({ "cmd": cmd }).to_string();
        let r = self.http("POST", &format!("/v1/sandboxes/{id}/exec"), body.as_bytes());
        assert_eq!(r.status, 200, "exec: {}", r.text());
        let (mut code, mut out) = (None, String::new());
        for line in r.unchunked().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            match v["type"].as_str() {
                Some("stdout") => out.push_str(v["text"].as_str().unwrap_or("")),
                Some("exit") => code = v["code"].as_i64(),
                _ => {}
            }
        }
        (code, out)
    }

    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        match &self.token {
            Some(token) => {
                let bearer = format!("Bearer {token}");
                http(
                    &self.addr,
                    method,
                    path,
                    &[("authorization", &bearer)],
                    body,
                )
            }
            None => http(&self.addr, method, path, &[], body),
        }
    }

    pub fn kill9(&mut self) -> i32 {
        let pid = self.child.id() as i32;
        // SAFETY: kill on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
        pid
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn code(&self) -> String {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A reply's body, its chunked transfer encoding undone.
    pub fn unchunked(&self) -> String {
        if self.header("transfer-encoding") != Some("chunked") {
            return self.text();
        }
        let mut out = Vec::new();
        let mut rest = &self.body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            if size == 0 {
                break;
            }
            let start = eol + 2;
            out.extend_from_slice(&rest[start..start + size]);
            rest = &rest[start + size + 2..];
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// One HTTP/1.1 request on its own connection, read to the end.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_http(addr, method, path, headers, body, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One HTTP/1.1 request on its own connection, read to the end, that gives
/// up after `timeout` (to connect, and between reads) instead of panicking:
/// for daemons and balancers that may be down or slow.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, String> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let _ = stream.write_all(body); // a server that refuses early may close first
    let mut raw = Vec::new();
    // A server may reset the connection after its answer: what came counts.
    if let Err(e) = stream.read_to_end(&mut raw) {
        if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            return Err(format!(
                "read from {addr}: {e} after {} bytes: {}",
                raw.len(),
                String::from_utf8_lossy(&raw)
            ));
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer from {addr}: {raw:?}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line from {addr}: {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// What a daemon test starts with: root (or a printed skip), the serial
/// lock, and a daemon on a fresh temp data directory. Dropped in field order:
/// the daemon is killed, then its directory removed, then the lock freed.
pub struct Setup {
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

pub fn setup(test: &str, extra: &[&str]) -> Option<Setup> {
    setup_with_env(test, extra, &[])
}

/// [`setup`], with more variables in the daemon's environment.
pub fn setup_with_env(test: &str, extra: &[&str], env: &[(&str, &str)]) -> Option<Setup> {
    if !super::root_or_skip(test) {
        return None;
    }
    let serial = super::serial();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_env(&dir.path().join("data"), extra, env);
    Some(Setup {
        daemon,
        dir,
        _serial: serial,
    })
}

/// `alcove fn ARGS` that must succeed; its stdout.
pub fn ok(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = d.cli(args);
    assert_eq!(code, 0, "alcove fn {args:?} failed: {err}{out}");
    out
}

/// `alcove fn ARGS` that must fail; its stderr.
pub fn refused(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = d.cli(args);
    assert_ne!(code, 0, "alcove fn {args:?} should have failed: {out}");
    err
}

/// A code directory `DIR/NAME` holding `handler.sh`.
pub fn code(dir: &Path, name: &str, script: &str) -> PathBuf {
    let code = dir.join(name);
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("handler.sh"), script).unwrap();
    code
}

/// Deploys `sh /fn/handler.sh` from `code`, with `extra` flags; must succeed.
pub fn deploy(d: &Daemon, name: &str, code: &Path, extra: &[&str]) {
    let code = code.to_str().unwrap();
    let mut args = vec![
        "deploy",
        name,
        "--handler",
        "sh /fn/handler.sh",
        "--code",
        code,
    ];
    args.extend_from_slice(extra);
    let (status, _, err) = d.cli(&args);
    assert_eq!(status, 0, "deploy {name}: {err}");
}
