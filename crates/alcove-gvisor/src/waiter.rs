//! The first process of a pooled gVisor sandbox (`alcove gvisor-wait`): it
//! waits on its stdin, a socket to the daemon, for one request (the
//! handler's argv, environment, working directory and input), starts the
//! handler with the sandbox's stdout and stderr, feeds it its input, waits
//! for it, and answers with how it ended. Starting the handler from inside
//! the booted sandbox costs a fork there, not a `runsc exec` (a Go program's
//! start and an RPC: ~50 ms here).
//!
//! On the wire: the request is a 4-byte little-endian length, that much
//! JSON (`{"argv": [...], "env": ["K=V", ...], "cwd": "...", "stdin": N}`)
//! and N bytes of input; the answer one JSON line (`{"code": N}` or
//! `{"signal": N}`). The handler never holds the socket.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;

/// The most bytes a request's header may have (argv and environment are
/// bounded far below this by the deploy's checks).
pub(crate) const MAX_HEADER: usize = 4 << 20;

/// Frames `process` (an OCI process object: args, env, cwd) and `stdin`'s
/// length as a request.
pub(crate) fn request(process: &Value, stdin_len: usize) -> Vec<u8> {
    let header = json!({
        "argv": process["args"],
        "env": process["env"],
        "cwd": process["cwd"],
        "stdin": stdin_len,
    });
    let text = serde_json::to_vec(&header).expect("a header serialises");
    let mut framed = (text.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&text);
    framed
}

/// Serves one request on stdin; returns the exit code (the process ends
/// with the sandbox, which is killed after one request).
pub fn serve() -> i32 {
    // SAFETY: fd 0 is open for the whole process (the socket runsc handed
    // over); ManuallyDrop keeps it from being closed here. Unbuffered, so
    // nothing past the request's input is read.
    let mut socket = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let answer = match run_one(&mut socket) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("alcove: {e}");
            json!({"code": 127})
        }
    };
    let mut line = answer.to_string();
    line.push('\n');
    match socket.write_all(line.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn run_one(socket: &mut std::fs::File) -> Result<Value, String> {
    let mut len = [0u8; 4];
    socket
        .read_exact(&mut len)
        .map_err(|e| format!("reading the request: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(format!("a request of {len} bytes is too long"));
    }
    let mut header = vec![0u8; len];
    socket
        .read_exact(&mut header)
        .map_err(|e| format!("reading the request: {e}"))?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| format!("the request is not JSON: {e}"))?;
    let strings = |key: &str| -> Vec<String> {
        header[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let argv = strings("argv");
    let Some(program) = argv.first() else {
        return Err("the request has no program".into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .stdin(std::process::Stdio::piped());
    for kv in strings("env") {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some(cwd) = header["cwd"].as_str() {
        cmd.current_dir(cwd);
    }
    let input = header["stdin"].as_u64().unwrap_or(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut to_child = child.stdin.take().expect("piped");
    let mut from_daemon = socket.try_clone().map_err(|e| e.to_string())?;
    // Fed while the handler runs; a handler that stops reading ends this
    // with EPIPE when it exits.
    let feeder = std::thread::spawn(move || {
        let _ = std::io::copy(&mut (&mut from_daemon).take(input), &mut to_child);
    });
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    drop(feeder); // not joined: it may block on a full pipe nobody reads
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => json!({"code": code}),
        (None, Some(signal)) => json!({"signal": signal}),
        (None, None) => json!({"code": 127}),
    })
}
