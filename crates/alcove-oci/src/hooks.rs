//! OCI lifecycle hooks (`prestart`, `createRuntime`, `createContainer`,
//! `startContainer`, `poststart`, `poststop`): running one stage's hooks in
//! order, each with the container's state JSON on stdin, its own argv and
//! environment, and its timeout. Which stage runs when, and in which
//! namespace, is the caller's ([`crate::container`], [`crate::init`]).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use alcove_sys::fd;
use oci_spec::runtime::Hook;

/// How much of a failed hook's stdout and stderr an error keeps, each.
const OUTPUT_KEPT: usize = 4096;

/// How often a running hook is checked for having exited while its output
/// pipes stay open (a hook may leave a daemon holding them).
const EXIT_CHECK: Duration = Duration::from_millis(10);

/// A hook that did not run to a zero exit.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    /// The spec requires an absolute path.
    #[error("the {stage} hook path {path} is not absolute")]
    NotAbsolute { stage: String, path: PathBuf },
    /// The spec requires a timeout greater than zero.
    #[error("the {stage} hook {path} has a timeout of {timeout} seconds, which is not positive")]
    BadTimeout {
        stage: String,
        path: PathBuf,
        timeout: i64,
    },
    /// The hook's stdin could not be made, or its output not read.
    #[error("could not set up the {stage} hook {path}")]
    Plumbing {
        stage: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// fork or execve failed.
    #[error("could not start the {stage} hook {path}")]
    Spawn {
        stage: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The hook ran past its timeout and was killed.
    #[error("the {stage} hook {path} ran past its timeout of {timeout} seconds and was killed")]
    Timeout {
        stage: String,
        path: PathBuf,
        timeout: i64,
    },
    /// The hook exited non-zero or was killed by a signal.
    #[error("the {stage} hook {path} {status}; stdout: {stdout:?}, stderr: {stderr:?}")]
    Failed {
        stage: String,
        path: PathBuf,
        status: HookStatus,
        stdout: String,
        stderr: String,
    },
}

/// How a hook ended, when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStatus {
    /// It exited with this non-zero code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookStatus::Exited(code) => write!(f, "exited with code {code}"),
            HookStatus::Signaled(signal) => write!(f, "was killed by signal {signal}"),
        }
    }
}

/// Runs `hooks` in order, stopping at the first that fails. `stage` names
/// them in errors (`"createRuntime"`); `state_json` is the container's state
/// (runtime spec's `state`), given to each hook as its stdin.
///
/// Each hook runs `path` with `args` as its whole argv (`args[0]` is argv[0];
/// without args, argv is just the path). With `env` it gets exactly that
/// environment; without `env` (absent, not empty) it inherits the runtime's,
/// as runc's hooks do (Go's `exec.Cmd` with a nil `Env`). stdin is a memfd
/// holding the state, so a hook that never reads it cannot block the runtime.
pub fn run_hooks(hooks: &[Hook], stage: &str, state_json: &[u8]) -> Result<(), HooksError> {
    hooks
        .iter()
        .try_for_each(|hook| run_hook(hook, stage, state_json))
}

fn run_hook(hook: &Hook, stage: &str, state_json: &[u8]) -> Result<(), HooksError> {
    let path = hook.path();
    let stage_owned = || stage.to_owned();
    if !path.is_absolute() {
        return Err(HooksError::NotAbsolute {
            stage: stage_owned(),
            path: path.clone(),
        });
    }
    let timeout = match hook.timeout() {
        Some(t) if t <= 0 => {
            return Err(HooksError::BadTimeout {
                stage: stage_owned(),
                path: path.clone(),
                timeout: t,
            })
        }
        Some(t) => Some(t),
        None => None,
    };
    let plumbing = |source| HooksError::Plumbing {
        stage: stage_owned(),
        path: path.clone(),
        source,
    };

    let mut command = Command::new(path);
    if let Some((argv0, rest)) = hook.args().as_deref().and_then(<[String]>::split_first) {
        command.arg0(argv0).args(rest);
    }
    if let Some(env) = hook.env() {
        command.env_clear();
        // An entry without '=' (or with an empty name) cannot be expressed
        // through `Command`, and no program can look it up; it is skipped.
        for entry in env {
            if let Some((name, value)) = entry.split_once('=').filter(|(n, _)| !n.is_empty()) {
                command.env(name, value);
            }
        }
    }
    let stdin = fd::memfd_with(state_json).map_err(plumbing)?;
    command
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout ends what the hook started too.
    command.process_group(0);
    let mut child = command.spawn().map_err(|source| HooksError::Spawn {
        stage: stage_owned(),
        path: path.clone(),
        source,
    })?;

    let deadline = timeout.map(|t| {
        // Far-future deadlines are as good as none; never overflow.
        Instant::now().checked_add(Duration::from_secs(t.unsigned_abs()))
    });
    let outcome = wait_collecting(&mut child, deadline.flatten());
    let Finished {
        status,
        stdout,
        stderr,
    } = match outcome {
        Ok(Some(done)) => done,
        Ok(None) => {
            // Not reaped yet, so the pid (and group id) is still the hook's:
            // the kill cannot reach a process that reused it.
            let _ = alcove_sys::process::kill(-(child.id() as i32), libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(HooksError::Timeout {
                stage: stage_owned(),
                path: path.clone(),
                timeout: timeout.unwrap_or_default(),
            });
        }
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(plumbing(source));
        }
    };
    if status.success() {
        return Ok(());
    }
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => HookStatus::Exited(code),
        (None, Some(signal)) => HookStatus::Signaled(signal),
        (None, None) => HookStatus::Exited(-1),
    };
    Err(HooksError::Failed {
        stage: stage_owned(),
        path: path.clone(),
        status,
        stdout: lossy(&stdout),
        stderr: lossy(&stderr),
    })
}

/// A pipe from the hook and the first [`OUTPUT_KEPT`] bytes read from it.
struct Output {
    pipe: Option<OwnedFd>,
    kept: Vec<u8>,
}

impl Output {
    fn new(pipe: Option<impl Into<OwnedFd>>) -> std::io::Result<Output> {
        let pipe = pipe.map(Into::into);
        if let Some(pipe) = &pipe {
            fd::set_nonblocking(pipe.as_fd(), true)?;
        }
        Ok(Output {
            pipe,
            kept: Vec::new(),
        })
    }

    /// Reads whatever is there now; past the kept prefix, bytes are read
    /// and dropped so that the hook never blocks on a full pipe.
    fn drain(&mut self) -> std::io::Result<()> {
        let Some(pipe) = &self.pipe else {
            return Ok(());
        };
        let mut buf = [0u8; 4096];
        loop {
            match fd::read(pipe.as_fd(), &mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    return Ok(());
                }
                Ok(n) => {
                    let room = OUTPUT_KEPT.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A hook that exited, with the start of what it wrote.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Waits for `child` to exit, reading its stdout and stderr meanwhile.
/// `Ok(None)`: `deadline` passed first (the child still runs).
fn wait_collecting(
    child: &mut Child,
    deadline: Option<Instant>,
) -> std::io::Result<Option<Finished>> {
    let mut outputs = [
        Output::new(child.stdout.take())?,
        Output::new(child.stderr.take())?,
    ];
    loop {
        if let Some(status) = child.try_wait()? {
            for output in &mut outputs {
                output.drain()?;
            }
            let [stdout, stderr] = outputs;
            return Ok(Some(Finished {
                status,
                stdout: stdout.kept,
                stderr: stderr.kept,
            }));
        }
        let now = Instant::now();
        let mut wait = EXIT_CHECK;
        if let Some(deadline) = deadline {
            if now >= deadline {
                return Ok(None);
            }
            wait = wait.min(deadline - now);
        }
        let mut pollfds: Vec<libc::pollfd> = outputs
            .iter()
            .filter_map(|o| o.pipe.as_ref())
            .map(|pipe| libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if pollfds.is_empty() {
            std::thread::sleep(wait);
        } else {
            fd::poll(&mut pollfds, Some(wait))?;
        }
        for output in &mut outputs {
            output.drain()?;
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if bytes.len() >= OUTPUT_KEPT {
        text.push('…');
    }
    text
}

/// The stage names the runtime spec defines, in lifecycle order.
pub const STAGES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn hook(
        path: &std::path::Path,
        args: &[&str],
        env: Option<&[&str]>,
        timeout: Option<i64>,
    ) -> Hook {
        let mut b = HookBuilder::default().path(path);
        if !args.is_empty() {
            b = b.args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if let Some(env) = env {
            b = b.env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn a_hook_gets_the_state_on_stdin_its_argv_and_only_its_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // A script's argv[0] is replaced by the kernel with the script's
        // path; a shell started directly keeps the one we give it.
        let body = format!(
            "/bin/cat > {o}.state; /usr/bin/tr '\\0' '|' < /proc/$$/cmdline > {o}.argv; \
             /usr/bin/env > {o}.env",
            o = out.display()
        );
        let state =
            br#"{"ociVersion":"1.1.0","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#;
        let h = hook(
            std::path::Path::new("/bin/sh"),
            &["my-hook", "-c", &body, "first", "second"],
            Some(&["FOO=bar=baz", "NOEQUALS"]),
            Some(5),
        );
        run_hooks(&[h], "createRuntime", state).unwrap();
        let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", out.display())).unwrap();
        assert_eq!(read("state").as_bytes(), state);
        let argv = read("argv");
        assert!(argv.starts_with("my-hook|-c|"), "{argv}");
        assert!(argv.ends_with("|first|second|"), "{argv}");
        let env = read("env");
        assert!(env.lines().any(|l| l == "FOO=bar=baz"), "{env}");
        // Nothing of the test's own environment leaks in (sh adds a few
        // variables of its own).
        let own = [
            "PWD", "OLDPWD", "SHLVL", "_", "PATH", "IFS", "PS1", "PS2", "PS4", "OPTIND",
        ];
        let ours: Vec<String> = std::env::vars()
            .map(|(name, _)| name)
            .filter(|name| !own.contains(&name.as_str()))
            .collect();
        assert!(!ours.is_empty());
        for line in env.lines() {
            let name = line.split('=').next().unwrap_or_default();
            assert!(!ours.iter().any(|o| o == name), "{name} leaked into {env}");
        }
        assert!(!env.contains("NOEQUALS"), "{env}");
    }

    #[test]
    fn a_hook_without_env_inherits_the_runtimes_and_without_args_gets_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let path = script(
            dir.path(),
            "inherit",
            &format!("echo \"$0\" > {o}.argv; env > {o}.env", o = out.display()),
        );
        run_hooks(&[hook(&path, &[], None, None)], "poststart", b"{}").unwrap();
        let argv = std::fs::read_to_string(format!("{}.argv", out.display())).unwrap();
        assert_eq!(argv.trim_end(), path.to_str().unwrap());
        let env = std::fs::read_to_string(format!("{}.env", out.display())).unwrap();
        assert!(env.contains("PATH="), "{env}");
    }

    #[test]
    fn hooks_run_in_order_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let ok = script(dir.path(), "ok", &format!("echo ok >> {}", log.display()));
        let bad = script(
            dir.path(),
            "bad",
            &format!(
                "echo bad >> {}; echo 'no network today' >&2; echo partial; exit 3",
                log.display()
            ),
        );
        let never = script(
            dir.path(),
            "never",
            &format!("echo never >> {}", log.display()),
        );
        let hooks = [
            hook(&ok, &[], None, None),
            hook(&bad, &[], None, None),
            hook(&never, &[], None, None),
        ];
        let err = run_hooks(&hooks, "createContainer", b"{}").unwrap_err();
        match &err {
            HooksError::Failed {
                stage,
                path,
                status,
                stdout,
                stderr,
            } => {
                assert_eq!(stage, "createContainer");
                assert_eq!(path, &bad);
                assert_eq!(*status, HookStatus::Exited(3));
                assert_eq!(stdout, "partial\n");
                assert_eq!(stderr, "no network today\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("exited with code 3") && text.contains("no network today"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ok\nbad\n");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let slow = script(
            dir.path(),
            "slow",
            &format!("echo $$ > {}; exec sleep 30", pidfile.display()),
        );
        let started = Instant::now();
        let err =
            run_hooks(&[hook(&slow, &[], None, Some(1))], "startContainer", b"{}").unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, HooksError::Timeout { timeout: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("timeout of 1 seconds"), "{err}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(10),
            "{took:?}"
        );
        // The hook (now `sleep`, same pid) is gone, not left running.
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_hook_that_leaves_a_daemon_holding_its_output_still_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = script(dir.path(), "daemon", "sleep 5 & echo started");
        let started = Instant::now();
        run_hooks(&[hook(&daemon, &[], None, Some(3))], "poststart", b"{}").unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_hook_that_ignores_a_large_state_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let quick = script(dir.path(), "quick", "exit 0");
        let state = vec![b'x'; 1 << 20];
        run_hooks(&[hook(&quick, &[], None, Some(5))], "poststop", &state).unwrap();
    }

    #[test]
    fn bad_hooks_are_refused_before_running() {
        let rel = hook(std::path::Path::new("bin/true"), &[], None, None);
        assert!(matches!(
            run_hooks(&[rel], "prestart", b"{}"),
            Err(HooksError::NotAbsolute { .. })
        ));
        let zero = hook(std::path::Path::new("/bin/true"), &[], None, Some(0));
        assert!(matches!(
            run_hooks(&[zero], "prestart", b"{}"),
            Err(HooksError::BadTimeout { .. })
        ));
        let missing = hook(std::path::Path::new("/nonexistent/hook"), &[], None, None);
        let err = run_hooks(&[missing], "prestart", b"{}").unwrap_err();
        assert!(
            matches!(err, HooksError::Spawn { .. })
                && err.to_string().contains("/nonexistent/hook"),
            "{err}"
        );
    }
}
