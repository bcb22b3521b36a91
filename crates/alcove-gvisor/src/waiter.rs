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
///
/// The handler's process is forked at boot, before the request: it waits
/// for the request's header on a pipe and then only execs, so a request
/// pays no fork inside gVisor (on its ptrace platform a new address space
/// costs a host process).
pub fn serve() -> i32 {
    // SAFETY: fd 0 is open for the whole process (the socket runsc handed
    // over); ManuallyDrop keeps it from being closed here. Unbuffered, so
    // nothing past the request's input is read.
    let mut socket = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let answer = match prepare().and_then(|child| run_one(&mut socket, child)) {
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

/// The forked handler-to-be: its pid, where its header goes, where its input goes.
struct Prepared {
    pid: libc::pid_t,
    header: std::fs::File,
    input: std::fs::File,
}

fn prepare() -> Result<Prepared, String> {
    let pipe = || alcove_sys::fd::pipe_cloexec().map_err(|e| format!("a pipe: {e}"));
    let (header_r, header_w) = pipe()?;
    let (input_r, input_w) = pipe()?;
    let once = alcove_sys::process::SingleThreaded::check().map_err(|e| e.to_string())?;
    match once.fork().map_err(|e| format!("fork: {e}"))? {
        None => {
            drop((header_w, input_w));
            let e = become_handler(std::fs::File::from(header_r), input_r);
            eprintln!("alcove: {e}");
            std::process::exit(127);
        }
        Some(pid) => Ok(Prepared {
            pid,
            header: std::fs::File::from(header_w),
            input: std::fs::File::from(input_w),
        }),
    }
}

/// In the forked child: waits for the header, then execs the handler with
/// `input` as its stdin. Returns only on failure.
fn become_handler(mut header: std::fs::File, input: std::os::fd::OwnedFd) -> String {
    let mut text = Vec::new();
    if let Err(e) = (&mut header).take(MAX_HEADER as u64).read_to_end(&mut text) {
        return format!("reading the request: {e}");
    }
    if text.is_empty() {
        std::process::exit(0); // no request came: the sandbox is going
    }
    let header: Value = match serde_json::from_slice(&text) {
        Ok(h) => h,
        Err(e) => return format!("the request is not JSON: {e}"),
    };
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
        return "the request has no program".into();
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..]).env_clear().stdin(input);
    for kv in strings("env") {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some(cwd) = header["cwd"].as_str() {
        cmd.current_dir(cwd);
    }
    let e = std::os::unix::process::CommandExt::exec(&mut cmd);
    format!("cannot run {program}: {e}")
}

fn run_one(socket: &mut std::fs::File, child: Prepared) -> Result<Value, String> {
    let Prepared {
        pid,
        mut header,
        mut input,
    } = child;
    let mut len = [0u8; 4];
    socket
        .read_exact(&mut len)
        .map_err(|e| format!("reading the request: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(format!("a request of {len} bytes is too long"));
    }
    let mut text = vec![0u8; len];
    socket
        .read_exact(&mut text)
        .map_err(|e| format!("reading the request: {e}"))?;
    let length: Value =
        serde_json::from_slice(&text).map_err(|e| format!("the request is not JSON: {e}"))?;
    let stdin = length["stdin"].as_u64().unwrap_or(0);
    header
        .write_all(&text)
        .map_err(|e| format!("handing the request over: {e}"))?;
    drop(header); // end of the header: the child execs
    let mut from_daemon = socket.try_clone().map_err(|e| e.to_string())?;
    // Fed while the handler runs; a handler that stops reading ends this
    // with EPIPE when it exits.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut (&mut from_daemon).take(stdin), &mut input);
    });
    let status = alcove_sys::process::wait_child(pid).map_err(|e| format!("waiting: {e}"))?;
    Ok(if libc::WIFEXITED(status) {
        json!({"code": libc::WEXITSTATUS(status)})
    } else if libc::WIFSIGNALED(status) {
        json!({"signal": libc::WTERMSIG(status)})
    } else {
        json!({"code": 127})
    })
}
