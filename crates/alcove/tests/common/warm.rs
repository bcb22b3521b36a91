//! Helpers for the warm-start tests (warm_isolation, warm_lifecycle,
//! hostile_warm): Python handlers, invocations, and the template found in /proc.

use super::daemon::{Daemon, Reply};
use std::path::{Path, PathBuf};

/// A code directory `dir/name` holding `main.py` with `source`.
pub fn py(dir: &Path, name: &str, source: &str) -> PathBuf {
    let code = dir.join(name);
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("main.py"), source).unwrap();
    code
}

/// `POST /v1/functions/NAME/invoke`.
pub fn invoke(d: &Daemon, name: &str, body: &[u8]) -> Reply {
    d.http("POST", &format!("/v1/functions/{name}/invoke"), body)
}

/// Whether the reply was served `warm` or `cold` (empty when unsaid).
pub fn start(reply: &Reply) -> &str {
    reply.header("x-alcove-start").unwrap_or("")
}

/// The pid of `function`'s template under the daemon `daemon`: the daemon's
/// child running the Python runtime with ALCOVE_WARM=1 and the function's name.
pub fn template_pid(daemon: i32, function: &str) -> Option<i32> {
    template_pid_running(daemon, function, "alcove_runtime.py")
}

/// [`template_pid`] for a template whose command line holds `program`.
pub fn template_pid_running(daemon: i32, function: &str, program: &str) -> Option<i32> {
    let wanted = format!("ALCOVE_FUNCTION={function}");
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|p| p.trim().parse::<i32>().ok());
            if ppid != Some(daemon) {
                return false;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let environ = String::from_utf8_lossy(&environ);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            environ.split('\0').any(|v| v == "ALCOVE_WARM=1")
                && environ.split('\0').any(|v| v == wanted)
                && String::from_utf8_lossy(&cmdline).contains(program)
        })
        .collect();
    assert!(found.len() <= 1, "{function} has two templates: {found:?}");
    found.first().copied()
}
