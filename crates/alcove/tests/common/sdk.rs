//! Runs a TestCase of the Python SDK's end-to-end tests (clients/python/tests)
//! against a test's daemon.

use super::daemon::Daemon;
use super::PYTHON;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Python SDK (on PYTHONPATH); its tests are in `tests/` below it.
pub const SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/python");

/// `python3 -m unittest -v TARGET` from the SDK's tests, with the daemon's
/// address and token and `env` besides; `tick` runs every 50 ms while it
/// runs (a watcher's sampling), and past `limit` it is killed. Whether it
/// passed, and what it printed (stdout and stderr together).
pub fn run_unittest(
    daemon: &Daemon,
    target: &str,
    env: &[(&str, String)],
    limit: Duration,
    tick: impl FnMut(),
) -> (bool, String) {
    let mut all = vec![("PYTHONPATH", SDK.to_owned())];
    all.extend(env.iter().cloned());
    run_python_tests(
        &Path::new(SDK).join("tests"),
        daemon,
        target,
        &all,
        limit,
        tick,
    )
}

/// `python3 -m unittest -v TARGET` in `dir`, with the daemon's address and
/// token (`ALCOVE_SERVER`, `ALCOVE_TOKEN`), no proxy (everything a test
/// talks to is on loopback or in its own namespaces) and `env` besides, in
/// a process group of its own: past `limit` the group is killed, with what
/// the Python started (a browser and its driver, say). `tick` runs every
/// 50 ms meanwhile. Whether it passed, and what it printed.
pub fn run_python_tests(
    dir: &Path,
    daemon: &Daemon,
    target: &str,
    env: &[(&str, String)],
    limit: Duration,
    mut tick: impl FnMut(),
) -> (bool, String) {
    let out = tempfile::tempfile().expect("a temp file for the output");
    let mut child = Command::new(PYTHON)
        .args(["-m", "unittest", "-v", target])
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("ALCOVE_SERVER", daemon.url())
        .env(
            "ALCOVE_TOKEN",
            daemon.token.as_deref().expect("the daemon's token"),
        )
        .env_remove("ALCOVE_TOKEN_FILE")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out.try_clone().unwrap())
        .spawn()
        .expect("start python3");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        tick();
        if started.elapsed() > limit {
            // SAFETY: kill on the process group of a child this test started
            // and has not reaped, so the group's id is still its own.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    let mut out = out;
    out.rewind().unwrap();
    out.read_to_string(&mut text).unwrap();
    if status.is_none() {
        text.push_str(&format!("\n[killed: still running after {limit:?}]\n"));
    }
    (status.is_some_and(|s| s.success()), text)
}

/// Whether `tool` is on PATH.
pub fn have_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}
