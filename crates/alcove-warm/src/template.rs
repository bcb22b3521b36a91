//! A template: the function's own sandbox, initialised, forking copies on
//! request; and the checked copies it keeps ready (see pool.rs).

use crate::pool::{Budget, Pool, ReadyCopy};
use crate::verify::{self, TemplateFacts};
use crate::{runtime, WarmError};
use alcove_sandbox::{Bind, Observer, Outcome, RunOptions, SandboxSpec, Stdio, UsageWatch};
use alcove_sys::{fd, process, seqpacket, unix};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where each template's copy socket lives on the host (one 0700 directory each).
pub const SOCKET_DIR: &str = "/run/alcove/warm";
/// Where a template and its copies find the copy socket.
const COPY_SOCKET_INSIDE: &str = "/run/alcove/copy.sock";
/// The nice value templates (and copies until checked) run at.
const COPY_MAKING_NICE: i32 = 10;
/// How long a deploy waits for the template's first checked copy.
const FIRST_COPY: Duration = Duration::from_secs(10);

/// What a template is made from.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    /// A short name for messages and logs (the function and its version).
    pub name: String,
    /// The function's cold-run spec. The template runs its argv, mounts,
    /// environment and limits; each copy gets the same limits in a cgroup
    /// of its own.
    pub sandbox: SandboxSpec,
    /// How long initialisation may take before the deploy fails.
    pub init_timeout: Duration,
    /// The most copies kept ready.
    pub max_ready: usize,
    /// After this long without a request, the ready copies are dropped
    /// (the template stays: the next request makes a copy on demand).
    pub idle: Duration,
}

/// A running, initialised template and its pool of checked copies.
pub struct Template {
    pool: Arc<Pool>,
    /// Closing it kills the template's sandbox.
    kill: Mutex<Option<OwnedFd>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    socket_dir: PathBuf,
}

impl Template {
    /// Starts the template, waits for its `ready`, checks it is one thread,
    /// and waits for its first copy to pass alcove's checks: a deploy that
    /// returns Ok has a function that can serve warm.
    pub fn start(spec: TemplateSpec, budget: Arc<Budget>) -> Result<Template, WarmError> {
        let runtime_dir = runtime::install()?;
        let prepare = |what| move |source| WarmError::Prepare { what, source };
        std::fs::create_dir_all(SOCKET_DIR).map_err(prepare("creating /run/alcove/warm"))?;
        let socket_dir =
            Path::new(SOCKET_DIR).join(format!("{}-{}", std::process::id(), process::random_id()));
        std::fs::create_dir(&socket_dir).map_err(prepare("creating the template's socket dir"))?;
        let cleanup = DirGuard(Some(socket_dir.clone()));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(prepare("securing the template's socket dir"))?;
        let socket_path = socket_dir.join("copy.sock");
        let listener =
            seqpacket::listen(&socket_path, 64).map_err(prepare("listening for copies"))?;
        // Copies run as the function's user: they must be able to connect.
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o666))
            .map_err(prepare("opening the copy socket to the function's user"))?;
        fd::set_nonblocking(listener.as_fd(), true)
            .map_err(prepare("setting up the copy socket"))?;
        let (control, control_inside) =
            unix::seqpacket_pair().map_err(prepare("creating the control socket"))?;
        let control_inside = Arc::new(control_inside);
        let (kill_read, kill_write) =
            fd::pipe_cloexec().map_err(prepare("creating the template's kill pipe"))?;

        let mut sandbox = spec.sandbox.clone();
        let shared_rw: Vec<PathBuf> = sandbox
            .binds
            .iter()
            .filter(|b| b.writable && !b.device)
            .map(|b| b.target.clone())
            .collect();
        let runtime_target = PathBuf::from(runtime::RUNTIME_DIR);
        if !sandbox.binds.iter().any(|b| b.target == runtime_target) {
            sandbox.binds.push(Bind {
                source: runtime_dir.to_path_buf(),
                target: runtime_target,
                writable: false,
                device: false,
            });
        }
        sandbox.binds.push(Bind {
            source: socket_path.clone(),
            target: PathBuf::from(COPY_SOCKET_INSIDE),
            writable: false,
            device: false,
        });
        let shared = shared_rw
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let filter = Path::new(runtime::RUNTIME_DIR).join(runtime::COPY_FILTER);
        for (key, value) in [
            ("ALCOVE_WARM", "1".to_owned()),
            ("ALCOVE_CONTROL_FD", control_inside.as_raw_fd().to_string()),
            ("ALCOVE_COPY_SOCKET", COPY_SOCKET_INSIDE.to_owned()),
            ("ALCOVE_COPY_FILTER", filter.to_string_lossy().into_owned()),
            (
                "ALCOVE_UNSHARE_FLAGS",
                alcove_sandbox::COPY_UNSHARE_FLAGS.to_string(),
            ),
            ("ALCOVE_TMPFS_SIZE", sandbox.limits.tmpfs_bytes.to_string()),
            ("ALCOVE_SHARED_RW", shared),
        ] {
            sandbox.env.retain(|(k, _)| k != key);
            sandbox.env.push((key.into(), value.into()));
        }
        sandbox.inherit_fds.push(control_inside);
        sandbox.warm_template = true;
        sandbox.init = false; // the template is pid 1: orphaned copies come back to it
        sandbox.stdio = Stdio::Capture { stdin: Vec::new() };
        sandbox.limits.timeout = None;
        sandbox.limits.cpu_time = None;
        // Copies count against the template's pids until alcove moves them out.
        sandbox.limits.pids = sandbox
            .limits
            .pids
            .map(|p| p.saturating_add(spec.max_ready as u64 + 8));
        let copy_limits = spec.sandbox.limits.clone();

        let watch = Arc::new(UsageWatch::new());
        let options = RunOptions {
            cancel: vec![Arc::new(kill_read)],
            watch: Some(watch.clone()),
            ..RunOptions::default()
        };
        let ended: Arc<Mutex<Option<Result<Outcome, String>>>> = Arc::new(Mutex::new(None));
        let (ended_read, ended_write) =
            fd::pipe_cloexec().map_err(prepare("creating the template's end pipe"))?;
        let supervisor = {
            let ended = ended.clone();
            std::thread::Builder::new()
                .name(format!("template {}", spec.name))
                .spawn(move || {
                    let result = alcove_sandbox::run(&sandbox, &options)
                        .map_err(|e| alcove_sandbox::error_chain(&e));
                    *ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    drop(ended_write); // wakes whoever waits on the end pipe
                })
                .map_err(prepare("starting the template's thread"))?
        };
        let mut template = Template {
            pool: Arc::new(
                Pool::new(
                    spec.name.clone(),
                    control,
                    listener,
                    copy_limits,
                    shared_rw,
                    spec.max_ready,
                    spec.idle,
                    budget,
                    ended_read,
                )
                .map_err(prepare("creating the copy filler's wake-up pipe"))?,
            ),
            kill: Mutex::new(Some(kill_write)),
            threads: Mutex::new(vec![supervisor]),
            socket_dir: cleanup.keep(),
        };
        let stderr_of = |template: &mut Template| {
            template.stop();
            match ended.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(Ok(outcome)) => (
                    describe_end(&outcome),
                    String::from_utf8_lossy(&outcome.stderr).into_owned(),
                ),
                Some(Err(e)) => (e, String::new()),
                None => ("it did not end".into(), String::new()),
            }
        };
        match template.pool.wait_ready(spec.init_timeout) {
            Ok(true) => {}
            Ok(false) => {
                let (_, stderr) = stderr_of(&mut template);
                return Err(WarmError::InitTimeout {
                    seconds: spec.init_timeout.as_secs(),
                    stderr,
                });
            }
            Err(()) => {
                let (how, stderr) = stderr_of(&mut template);
                return Err(WarmError::InitFailed { how, stderr });
            }
        }
        let Some(pid) = watch.pid() else {
            let (how, stderr) = stderr_of(&mut template);
            return Err(WarmError::InitFailed { how, stderr });
        };
        let facts = match verify::thread_count(pid).and_then(|threads| {
            if threads != 1 {
                return Ok(Err(threads));
            }
            TemplateFacts::read(pid).map(Ok)
        }) {
            Ok(Ok(facts)) => facts,
            Ok(Err(count)) => {
                template.stop();
                return Err(WarmError::Threaded { count });
            }
            Err(e) => {
                template.stop();
                return Err(WarmError::Facts(e));
            }
        };
        // Making copies (the template's forks, each copy's setup) yields the CPU
        // to requests being served; alcove gives each checked copy nice 0 back.
        let _ = process::set_nice(pid, COPY_MAKING_NICE);
        let memory = watch.usage().and_then(|u| u.memory_bytes).unwrap_or(0);
        if let Err(e) = template.pool.begin(facts, memory) {
            template.stop();
            return Err(e);
        }
        let filler = {
            let pool = template.pool.clone();
            std::thread::Builder::new()
                .name(format!("copies {}", spec.name))
                .spawn(move || pool.fill())
                .map_err(prepare("starting the copy filler"))?
        };
        template
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(filler);
        if let Err(e) = template.pool.wait_first_copy(FIRST_COPY) {
            // Why a copy failed before it could connect is on the template's stderr.
            let (_, stderr) = stderr_of(&mut template);
            return Err(match e {
                WarmError::NoCopy { seconds, detail } if !stderr.trim().is_empty() => {
                    WarmError::NoCopy {
                        seconds,
                        detail: format!("{detail}; the template's stderr:\n{stderr}"),
                    }
                }
                e => e,
            });
        }
        Ok(template)
    }

    /// Runs one request in a fresh copy: `spec` gives the request's
    /// environment, stdin and stdio, and its limits (the function's).
    pub fn run(
        &self,
        spec: &SandboxSpec,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<Outcome, WarmError> {
        let t_take = process::monotonic_ns();
        let copy: ReadyCopy = self.pool.take()?;
        let in_flight = InFlight(&self.pool);
        let adopted = alcove_sandbox::Adopted {
            pidfd: copy.pidfd,
            cgroup: copy.cgroup,
            connection: copy.connection,
            take_us: (process::monotonic_ns() - t_take) as f64 / 1e3,
            isolate_us: copy.isolate_us,
        };
        let outcome = alcove_sandbox::run_adopted(
            adopted,
            spec,
            options,
            observer,
            &mut |connection, env, stdio| seqpacket::send(connection, env, &stdio),
        );
        drop(in_flight);
        outcome.map_err(WarmError::Run)
    }

    /// Calls `hook` (once, on the filler's thread) if the template goes on
    /// its own: its sandbox ended, or its copies were refused.
    pub fn on_gone(&self, hook: crate::GoneHook) {
        self.pool.set_on_gone(hook);
    }

    /// Why the template is gone, or `None` while it serves.
    pub fn gone(&self) -> Option<String> {
        self.pool.gone()
    }

    /// Counters for metrics and `fn ls`: (copies ready, copies made, copies refused).
    pub fn counts(&self) -> (usize, u64, u64) {
        self.pool.counts()
    }

    /// Kills the template and its ready copies and waits for both threads.
    pub fn stop(&mut self) {
        self.pool.close(crate::pool::STOPPED);
        drop(self.kill.lock().unwrap_or_else(|e| e.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts a request in flight (for sizing the pool) until dropped.
struct InFlight<'a>(&'a Pool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// Removes the socket directory unless kept.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn describe_end(outcome: &Outcome) -> String {
    match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{:?}", outcome.status).to_lowercase(),
    }
}

/// Removes socket directories of alcoves that are gone (after a kill -9).
pub fn gc_sockets() -> usize {
    let Ok(entries) = std::fs::read_dir(SOCKET_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !process::exists(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
            removed += 1;
        }
    }
    removed
}
