//! A gVisor sandbox booted ahead of its request: its Sentry and Gofer run,
//! its mounts are made and its first process, the waiter (`alcove
//! gvisor-wait`, in waiter.rs), waits on a socket to the daemon. The request
//! is sent to the waiter, which starts the handler inside with the
//! sandbox's stdout and stderr (pipes the daemon reads) and answers with how
//! it ended: no boot and no `runsc exec` on the request's path. Each one
//! serves one request and is then killed whole: nothing one request leaves
//! (files, processes) reaches the next.

use crate::bundle::Bundle;
use crate::run::{
    finish, io_for, network, outcome, relay, sandbox_cgroup, start_in, wait_for, Ended, Sink,
    Waited,
};
use crate::runsc::Runsc;
use crate::{GvisorError, GvisorOptions};
use alcove_cgroup::SandboxCgroup;
use alcove_sandbox::{Outcome, SandboxSpec, Stdio};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest `runsc create` and `runsc start` may take together before
/// the boot is given up (a KVM platform that hangs, a stuck Gofer).
const BOOT_LIMIT: Duration = Duration::from_secs(20);

/// One booted sandbox, waiting for the request it will serve.
pub struct PooledSandbox {
    runsc: Runsc,
    bundle: Bundle,
    cgroup: Option<SandboxCgroup>,
    /// Its mounts, user and limits: what every request to it must match.
    spec: SandboxSpec,
    /// The daemon's end of the waiter's stdin, and the read ends of the
    /// sandbox's stdout and stderr.
    socket: UnixStream,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl PooledSandbox {
    /// Boots a sandbox for `spec` (its mounts, namespaces and limits; not
    /// its program) with `waiter` as its first process: a program that
    /// waits until killed, in its root or in `waiter_binds` (which only
    /// the waiter needs).
    pub fn boot(
        spec: &SandboxSpec,
        waiter: Vec<String>,
        waiter_binds: &[alcove_sandbox::Bind],
        options: &GvisorOptions,
    ) -> Result<PooledSandbox, GvisorError> {
        let runsc = Runsc::find()?;
        // The waiter's binds would be outside every rule (allowed.rs).
        if !spec.allow_paths.is_empty() {
            return Err(GvisorError::Unsupported(
                "path rules (--allow-path) in a pooled sandbox",
            ));
        }
        let mut first = spec.clone();
        first.argv = waiter.into_iter().map(Into::into).collect();
        first.binds.extend_from_slice(waiter_binds);
        first.stdio = Stdio::Inherit;
        first.limits.timeout = None;
        let bundle = Bundle::create(&options.root(), &first)?;
        let cgroup = sandbox_cgroup(spec)?;
        let failed = |what| move |source| GvisorError::Prepare { what, source };
        let (socket, waiter_end) = UnixStream::pair().map_err(failed("the waiter's socket"))?;
        let (stdout, stdout_w) = alcove_sys::fd::pipe_cloexec().map_err(failed("a pipe"))?;
        let (stderr, stderr_w) = alcove_sys::fd::pipe_cloexec().map_err(failed("a pipe"))?;
        let mut pooled = PooledSandbox {
            runsc,
            bundle,
            cgroup: Some(cgroup),
            spec: spec.clone(),
            socket,
            stdout,
            stderr,
        };
        // Dropped on failure: killed whole.
        pooled.start([waiter_end.into(), stdout_w, stderr_w])?;
        Ok(pooled)
    }

    /// `runsc create` (the waiter gets `stdio` as its stdin, stdout and
    /// stderr), then `runsc start`.
    fn start(&mut self, stdio: [OwnedFd; 3]) -> Result<(), GvisorError> {
        let mut stdio = Some(stdio);
        let cgroup = self.cgroup.as_ref().expect("held until dropped");
        let log = self.bundle.dir.join("boot.err");
        for step in ["create", "start"] {
            let errors = std::fs::File::create(&log).map_err(|source| GvisorError::Bundle {
                path: log.clone(),
                source,
            })?;
            let mut cmd = self
                .runsc
                .command(&self.bundle.state(), network(&self.spec));
            cmd.arg(step);
            if step == "create" {
                cmd.arg("--bundle").arg(self.bundle.bundle());
            }
            cmd.arg(&self.bundle.id);
            match stdio.take().filter(|_| step == "create") {
                Some([i, o, e]) => {
                    // runsc's own complaints, if any, go to the sandbox's stderr.
                    drop(errors);
                    cmd.stdin(i).stdout(o).stderr(e);
                }
                None => {
                    cmd.stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(errors);
                }
            }
            start_in(&mut cmd, cgroup);
            let mut child = cmd.spawn().map_err(|source| GvisorError::Start {
                path: self.runsc.path.clone(),
                source,
            })?;
            let ended = alcove_sys::seqpacket::pidfd_open(child.id() as i32)
                .map(|fd| wait_for(fd.as_fd(), Some(BOOT_LIMIT), &[]) == Waited::Ended)
                .unwrap_or(false);
            if !ended {
                cgroup.kill_all();
            }
            let status = child.wait().map_err(|source| GvisorError::Prepare {
                what: "waiting for runsc",
                source,
            })?;
            if !ended || !status.success() {
                let mut said = std::fs::read_to_string(&log).unwrap_or_default();
                if step == "create" {
                    // What runsc create said is on the sandbox's stderr.
                    cgroup.kill_all();
                    let _ = alcove_sys::fd::set_nonblocking(self.stderr.as_fd(), true);
                    let mut text = Vec::new();
                    let _ = std::fs::File::from(self.stderr.try_clone().map_err(|source| {
                        GvisorError::Prepare {
                            what: "a pipe",
                            source,
                        }
                    })?)
                    .take(64 << 10)
                    .read_to_end(&mut text);
                    said = String::from_utf8_lossy(&text).into_owned();
                }
                let said = said.lines().last().unwrap_or("").trim();
                return Err(GvisorError::Invalid(if ended {
                    format!("booting a gVisor sandbox: runsc {step} failed ({status}): {said}")
                } else {
                    format!("booting a gVisor sandbox: runsc {step} took over {BOOT_LIMIT:?}")
                }));
            }
        }
        Ok(())
    }

    /// Whether a request with `spec` can run here: the same mounts, root,
    /// user, network and limits it was booted with (only the program, its
    /// environment, its input and its wall-clock limit may differ).
    pub fn fits(&self, spec: &SandboxSpec) -> bool {
        // A pinned source (a descriptor of this process) is compared by
        // what it names: each request pins its own.
        let binds = |s: &SandboxSpec| -> Vec<_> {
            s.binds
                .iter()
                .map(|b| {
                    let source = std::fs::read_link(&b.source)
                        .ok()
                        .filter(|_| b.source.starts_with("/proc/self/fd/"))
                        .unwrap_or_else(|| b.source.clone());
                    (source, b.target.clone(), b.writable, b.device)
                })
                .collect()
        };
        let key = |s: &SandboxSpec| {
            (
                binds(s),
                s.allow_paths
                    .iter()
                    .map(|r| (r.path.clone(), r.writable))
                    .collect::<Vec<_>>(),
                s.rootfs.clone(),
                s.user,
                s.net,
                s.hostname.clone(),
                s.writable_workdir,
                s.limits.memory_bytes,
                s.limits.pids,
                s.limits.cpus.map(f64::to_bits),
                s.limits.tmpfs_bytes,
            )
        };
        key(spec) == key(&self.spec)
    }

    /// Whether the sandbox still runs (its cgroup holds its processes).
    pub fn alive(&self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(SandboxCgroup::is_populated)
    }

    /// Runs `spec`'s program in this sandbox to completion (the waiter
    /// starts it), then kills the sandbox whole. The report is as `run`'s,
    /// its CPU time counted from this request's start; its memory peak is
    /// the sandbox's since boot.
    pub fn exec(
        mut self,
        spec: &SandboxSpec,
        options: &GvisorOptions,
    ) -> Result<Outcome, GvisorError> {
        if !self.fits(spec) {
            return Err(GvisorError::Invalid(
                "this request's mounts or limits differ from the pooled sandbox's".into(),
            ));
        }
        let config = crate::bundle::config(spec)?;
        let io = io_for(spec)?;
        let input = io.stdin.unwrap_or_default();
        let (out_sink, err_sink) = io.sinks.unwrap_or_else(|| {
            (
                Sink::Through(Box::new(std::io::stdout()), usize::MAX),
                Sink::Through(Box::new(std::io::stderr()), usize::MAX),
            )
        });
        let failed = |what| move |source| GvisorError::Prepare { what, source };
        let out = std::fs::File::from(self.stdout.try_clone().map_err(failed("a pipe"))?);
        let err = std::fs::File::from(self.stderr.try_clone().map_err(failed("a pipe"))?);
        let mut writer = self
            .socket
            .try_clone()
            .map_err(failed("the waiter's socket"))?;
        // Nothing fallible from here on: the cgroup goes back before `self`
        // is dropped, so the sandbox is always torn down whole.
        let cgroup = self.cgroup.take().expect("held until dropped");
        let before = cgroup.usage().unwrap_or_default();
        let started = Instant::now();
        let relays = (Some(relay(out, out_sink)), Some(relay(err, err_sink)));
        let frame = crate::waiter::request(&config["process"], input.len());
        // Not joined: it ends when the waiter has read it all, or dies.
        std::thread::spawn(move || {
            let _ = writer
                .write_all(&frame)
                .and_then(|()| writer.write_all(&input));
        });
        let cpu = crate::run::CpuLimit::of(spec, &cgroup, &before);
        let waited = crate::run::wait_within(
            self.socket.as_fd(),
            spec.limits.timeout,
            cpu.as_ref(),
            &options.cancel,
        );
        let ended = if waited == Waited::Ended {
            read_answer(&self.socket)
        } else {
            Ended::Unknown
        };
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let report = outcome(&cgroup, spec, &before, waited, ended, wall_ms, Some(relays));
        let cgroup_id = cgroup.id();
        // The rest of the teardown (waiting for the last processes, the
        // cgroup, the run directory) is off the response's path.
        TEARDOWNS.fetch_add(1, Ordering::SeqCst);
        self.cgroup = Some(cgroup);
        let spawned = std::thread::Builder::new()
            .name("gvisor teardown".into())
            .spawn(move || {
                drop(self);
                TEARDOWNS.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            TEARDOWNS.fetch_sub(1, Ordering::SeqCst); // dropped here, on this thread
        }
        Ok(Outcome {
            cgroup_id,
            ..report
        })
    }
}

/// Used pooled sandboxes whose teardown is under way.
static TEARDOWNS: AtomicUsize = AtomicUsize::new(0);

/// Waits up to `limit` for the teardowns of used pooled sandboxes (a
/// daemon's shutdown); returns how many were still under way.
pub fn wait_for_teardowns(limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let left = TEARDOWNS.load(Ordering::SeqCst);
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The waiter's answer: how the handler ended (unknown when the sandbox
/// died before it could say: the OOM killer took the Sentry...).
fn read_answer(socket: &UnixStream) -> Ended {
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(socket).take(4096);
    if reader.read_line(&mut line).is_err() {
        return Ended::Unknown;
    }
    let answer: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    let number = |k: &str| answer[k].as_i64().and_then(|n| i32::try_from(n).ok());
    match (number("code"), number("signal")) {
        (Some(c), _) => Ended::Code(c),
        (None, Some(s)) => Ended::Signal(s),
        _ => Ended::Unknown,
    }
}

impl Drop for PooledSandbox {
    /// Kills the sandbox whole and removes its cgroup, then (a field
    /// dropped next) its run directory.
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            finish(cgroup);
        }
        // The bundle's directory goes after it (a field dropped next).
    }
}
