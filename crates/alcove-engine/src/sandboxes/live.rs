//! One agent sandbox while it lives: the run that holds it (on a thread of
//! its own, like any sandbox run), the line to its agent, its clock, its
//! freezer, and the commands started in it.

use super::agent_program::agent_program;
use super::network::{AllowOut, Outbound};
use super::process::Process;
use super::{check_env, check_metadata, CreateSandbox, SandboxesError, AGENT_READY};
use crate::engine::Engine;
use crate::store::now;
use alcove_agent::{AgentLink, AGENT_FD_ENV};
use alcove_sandbox::{NetMode, RunOptions, SandboxSpec, UsageWatch};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Finished commands kept per sandbox (for `processes` and reattaching):
/// the last 64 at least, 128 at most.
const FINISHED_KEPT: usize = 64;
/// Commands running at once in one sandbox.
const MAX_RUNNING: usize = 256;
/// The working directory commands start in.
pub const HOME: &str = "/home/user";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Running,
    Paused,
    /// Its processes ended (with a daemon, or its agent's end); its files
    /// and metadata were kept. A call that needs it starts it again.
    Stopped,
    /// Only in the reply to a removal.
    Removed,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub state: SandboxState,
    /// Why it is stopped (only when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: f64,
    pub expires_at: f64,
    pub timeout_s: u64,
    pub idle_pause_s: u64,
    pub image: Option<String>,
    pub template: Option<String>,
    pub parent: Option<String>,
    pub net: String,
    /// `container` or `gvisor`.
    pub isolation: String,
    /// Where a `net: outbound` sandbox may connect (empty: anywhere but
    /// the host and other sandboxes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_out: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub limits: LimitsView,
    pub usage: UsageView,
    /// In a fork's answer only: `copied` when the code interpreter's memory
    /// came along, else why its interpreter starts fresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageView {
    pub memory_bytes: Option<u64>,
    pub cpu_ms: Option<f64>,
}

impl LimitsView {
    /// The limits a record's request holds (filled in at create).
    pub(super) fn of_request(req: &CreateSandbox) -> Self {
        let size = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| alcove_sandbox::units::parse_size(t).ok())
        };
        LimitsView {
            memory_bytes: size(&req.memory),
            cpus: req.cpus,
            pids: req.pids,
            disk_bytes: size(&req.disk).unwrap_or(0),
        }
    }
}

/// A stopped sandbox started again: what its record says it is.
pub(super) struct Restore {
    pub id: String,
    pub created_at: f64,
    pub timeout_s: u64,
    pub expires_at: f64,
    /// Its user and group: its home's files are theirs.
    pub owner: (u32, u32),
}

/// A timeout within bounds, or why not.
pub(super) fn check_timeout(seconds: u64) -> Result<(), SandboxesError> {
    if !(1..=super::MAX_TIMEOUT_S).contains(&seconds) {
        return Err(SandboxesError::Invalid(format!(
            "timeout_s {seconds}: give 1 to {} (7 days)",
            super::MAX_TIMEOUT_S
        )));
    }
    Ok(())
}

/// A command to start in a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// Given: written to its stdin, which is then closed. None: its stdin
    /// stays open for later writes (a background command) or is empty.
    pub stdin: Option<Vec<u8>>,
    pub keep_stdin_open: bool,
    pub timeout: Option<Duration>,
    /// Run it on a terminal of this size (its stdout and stderr become one
    /// stream; its stdin stays open unless `stdin` is given to a command
    /// whose stdin is not kept open, after which ^D ends it).
    pub pty: Option<super::process::PtySize>,
}

struct Clock {
    state: SandboxState,
    expires_at: f64,
    timeout_s: u64,
    idle_pause_s: u64,
    last_used: f64,
}

pub struct LiveSandbox {
    pub id: String,
    pub(super) link: AgentLink,
    /// Its own network namespace (none for `net: host`).
    netns: Option<OwnedFd>,
    /// Its first process's /proc directory (its root, for copies of its home).
    proc_dir: Option<OwnedFd>,
    clock: Mutex<Clock>,
    created_at: f64,
    /// What it was created with (a fork is made with the same).
    request: CreateSandbox,
    /// Its user and group (what its files belong to).
    owner: (u32, u32),
    /// DATA_DIR/sandboxes/ID: its home (mounted there) and its record.
    dir: PathBuf,
    /// Record writes one at a time (the last one holds the latest clock).
    record_lock: Mutex<()>,
    metadata: BTreeMap<String, String>,
    image: Option<String>,
    net: NetMode,
    limits: LimitsView,
    /// Its cgroup2 directory (the freezer), once the run has made it.
    cgroup: Arc<Mutex<Option<PathBuf>>>,
    usage: Arc<UsageWatch>,
    /// Closing it ends the run (and so the sandbox).
    kill: Mutex<Option<OwnedFd>>,
    ended: watch::Receiver<bool>,
    processes: Mutex<HashMap<i32, Arc<Process>>>,
    /// Pause and resume (and copies of its files) one at a time.
    pub(super) freezer: tokio::sync::Mutex<()>,
    pub(super) code: tokio::sync::Mutex<Option<super::code::Interpreter>>,
    /// The code call in flight, for interrupts (code.rs).
    pub(super) code_call: Mutex<super::code::CallInFlight>,
    /// Held while an interrupt's signal is sent and while a call's request
    /// is written: a signal meant for one call never lands in the next.
    pub(super) code_signal: Arc<tokio::sync::Mutex<()>>,
    /// Calls and streams in flight ([`InUse`] guards).
    in_use: std::sync::atomic::AtomicUsize,
    /// A failed idle pause is not tried again before this time.
    no_idle_pause_until: Mutex<f64>,
    /// Why the kernel ended it, when a policy (a budget) or the OOM killer did.
    end_reason: Arc<Mutex<Option<String>>>,
    /// The sandbox whose process tree it lives in (a fork with memory).
    nested_in: Option<String>,
    /// A fork with memory is being made from it.
    pub(super) forking: std::sync::atomic::AtomicBool,
    /// File transfers and watches open (files.rs).
    pub(super) copies: Arc<std::sync::atomic::AtomicUsize>,
    /// What its commands' kept output takes of the daemon's memory.
    output: Arc<super::budget::OutputBudget>,
}

/// A call or stream using a sandbox: while one lives the sandbox is not
/// idle; when it ends, the idle clock starts again.
pub struct InUse(Arc<LiveSandbox>);

impl InUse {
    fn new(sandbox: Arc<LiveSandbox>) -> Self {
        sandbox
            .in_use
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sandbox
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_used = now();
        InUse(sandbox)
    }
}

impl std::ops::Deref for InUse {
    type Target = Arc<LiveSandbox>;

    fn deref(&self) -> &Arc<LiveSandbox> {
        &self.0
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_used = now();
        self.0
            .in_use
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What watches a sandbox's run: the daemon's eBPF monitor when it is
/// loaded (its events tagged with the sandbox's id), and the cgroup2
/// directory recorded for the freezer.
pub(super) struct SandboxObserver {
    pub(super) cgroup: Arc<Mutex<Option<PathBuf>>>,
    pub(super) watch: Option<alcove_monitor::Watch>,
    /// Its rules need the watch (net: outbound): no watch, no sandbox.
    pub(super) required: bool,
}

impl alcove_sandbox::Observer for SandboxObserver {
    fn before_start(
        &mut self,
        cgroup: Option<(u64, &Path)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        *self.cgroup.lock().unwrap_or_else(|e| e.into_inner()) =
            cgroup.map(|(_, dir)| dir.to_path_buf());
        if let Some(w) = self.watch.as_mut() {
            if let Err(e) = w.before_start(cgroup) {
                if self.required {
                    return Err(e);
                }
                self.watch = None; // counting alone never fails a sandbox
            }
        }
        Ok(())
    }

    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        self.watch.as_ref().and_then(|w| w.poll_fd())
    }

    fn on_ready(&mut self) -> Option<String> {
        self.watch.as_mut().and_then(|w| w.on_ready())
    }

    fn after_end(&mut self) {
        if let Some(w) = self.watch.as_mut() {
            w.after_end();
        }
        // A sandbox removed while paused: its cgroup (a pooled slot) thawed
        // before the next sandbox is started in it.
        if let Some(dir) = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        }
    }
}

pub(super) fn parse_size(what: &str, text: &Option<String>) -> Result<Option<u64>, SandboxesError> {
    text.as_deref()
        .map(|t| {
            alcove_sandbox::units::parse_size(t)
                .map_err(|e| SandboxesError::Invalid(format!("{what} {t:?}: {e}")))
        })
        .transpose()
}

/// The kernel policy a sandbox's `guard` asks for: budgets over its life,
/// and network rules for a sandbox on the host's network. What only a
/// function's single run can have (path, device and learned-policy rules)
/// is refused, with why.
pub(super) fn guard_policy(
    guard: &crate::guard::Guard,
    net: NetMode,
    spec: &mut SandboxSpec,
) -> Result<alcove_monitor::SandboxPolicy, SandboxesError> {
    let bad = |why: String| SandboxesError::Invalid(format!("guard: {why}"));
    guard.check(false).map_err(bad)?;
    if !guard.allow_paths.is_empty() || guard.devices.is_some() || guard.policy.is_some() {
        return Err(bad(
            "allow_paths, devices and policy are for functions (a sandbox's agent and \
             commands need the whole view); give syscall_budget, cpu_budget_ms or deny_net"
                .into(),
        ));
    }
    if guard.deny_net && net != NetMode::Host {
        return Err(bad(
            "deny_net is for net: host (net: none has no network; net: outbound takes allow_out)"
                .into(),
        ));
    }
    guard.apply(spec, false).map_err(bad)
}

/// The agent's command, its binds and the runtime's, and the image's root
/// (leased while the sandbox lives).
fn base_spec(
    engine: &Engine,
    image: Option<&str>,
) -> Result<(SandboxSpec, Option<alcove_image::Lease>), SandboxesError> {
    let program = agent_program().map_err(SandboxesError::Start)?;
    let mut spec = SandboxSpec::new(program.argv.iter().map(Into::into).collect());
    spec.binds.extend(program.binds.iter().cloned());
    let runtime = alcove_warm::runtime::install()
        .map_err(|e| SandboxesError::Start(alcove_sandbox::error_chain(&e)))?;
    spec.binds.push(alcove_sandbox::Bind {
        source: runtime.to_path_buf(),
        target: alcove_warm::runtime::RUNTIME_DIR.into(),
        writable: false,
        device: false,
    });
    let Some(name) = image else {
        return Ok((spec, None));
    };
    let store = engine
        .image_store()
        .map_err(|e| SandboxesError::Invalid(e.to_string()))?;
    let (record, held) = store.lease(name).map_err(|e| {
        SandboxesError::Invalid(format!(
            "image {name:?}: {} (import it with `alcove image import`)",
            alcove_sandbox::error_chain(&e)
        ))
    })?;
    let argv = std::mem::take(&mut spec.argv);
    spec.argv = vec!["-".into()]; // keeps apply_image from using the image's command
    crate::image::apply_image(&mut spec, store, &record, false, true)
        .map_err(|e| SandboxesError::Invalid(e.to_string()))?;
    spec.argv = argv;
    Ok((spec, Some(held)))
}

/// What a gVisor sandbox cannot have, refused by name, and runsc's presence.
fn check_gvisor(req: &CreateSandbox) -> Result<(), SandboxesError> {
    let refused = [
        (
            req.forkable,
            "forkable (a fork with memory copies the interpreter's processes, which live in \
             gVisor's Sentry here)",
        ),
        (
            req.guard.is_some(),
            "guard (eBPF would watch gVisor's own syscalls, not the sandbox's)",
        ),
    ];
    if let Some((_, what)) = refused.iter().find(|(asked, _)| *asked) {
        return Err(SandboxesError::Invalid(format!(
            "isolation gvisor does not offer {what}: leave it out, or use isolation container"
        )));
    }
    alcove_gvisor::Runsc::find()
        .map(drop)
        .map_err(|e| SandboxesError::Invalid(e.to_string()))
}

/// Starts the sandbox's run on a thread and waits for its agent.
/// With `restore`, a stopped sandbox is started again: its id, clock and
/// owner are its record's, its home (still mounted) is kept as it is, and a
/// template is not copied again.
pub(super) async fn start(
    engine: &Arc<Engine>,
    req: CreateSandbox,
    restore: Option<Restore>,
) -> Result<Arc<LiveSandbox>, SandboxesError> {
    let first = restore.is_none();
    launch(engine, req, restore, false)
        .await?
        .finish(first)
        .await
}

/// A timeout and an idle pause within bounds (the request's, or the
/// defaults), or why not.
pub(super) fn check_clock(req: &CreateSandbox) -> Result<(u64, u64), SandboxesError> {
    let timeout_s = req.timeout_s.unwrap_or(super::DEFAULT_TIMEOUT_S);
    check_timeout(timeout_s)?;
    let idle_pause_s = req.idle_pause_s.unwrap_or(0);
    if idle_pause_s > super::MAX_TIMEOUT_S {
        return Err(SandboxesError::Invalid(format!(
            "idle_pause_s {idle_pause_s}: give 0 (never) to {}",
            super::MAX_TIMEOUT_S
        )));
    }
    Ok((timeout_s, idle_pause_s))
}

/// A sandbox whose agent is ready, not yet handed out (by a create, a
/// restart, or the pool of ready sandboxes: pool.rs): its parts, and its
/// home until its record is saved.
pub(super) struct Launched {
    parts: Parts,
    unmade: Unmade,
    /// Started for the pool: its directory is marked so (persist::mark_pooled).
    pooled: bool,
    /// The eBPF monitor watches it (said in its start event).
    watched: bool,
}

impl Launched {
    /// Hands it out: registered by the caller; a new one's record is saved
    /// first (a sandbox whose record cannot be saved is ended).
    pub(super) async fn finish(self, first: bool) -> Result<Arc<LiveSandbox>, SandboxesError> {
        let Launched {
            parts,
            unmade,
            pooled,
            ..
        } = self;
        let sandbox = LiveSandbox::assemble(parts);
        if first {
            sandbox.save_first_record().await?;
        }
        if pooled {
            super::persist::unmark_pooled(sandbox.dir());
        }
        unmade.keep();
        Ok(sandbox)
    }

    /// A pooled sandbox given what `req` asked (already checked: metadata,
    /// timeout, idle pause, environment), its clock starting now: everything
    /// else of `req` is what the pool's sandboxes were made with
    /// (pool::poolable). Its agent learns the environment in [`Self::with_env`].
    pub(super) fn claimed_as(mut self, req: CreateSandbox, clock: (u64, u64)) -> Self {
        let (timeout_s, idle_pause_s) = clock;
        let at = now();
        let p = &mut self.parts;
        p.created_at = at;
        p.timeout_s = timeout_s;
        p.expires_at = at + timeout_s as f64;
        p.idle_pause_s = idle_pause_s;
        p.request.timeout_s = Some(timeout_s);
        p.request.idle_pause_s = Some(idle_pause_s);
        p.request.metadata = req.metadata;
        p.request.env = req.env;
        self
    }

    /// Its agent told the environment the claim asked for (its request's),
    /// if any. A failure ends it (its agent is gone).
    pub(super) async fn with_env(self) -> Result<Self, SandboxesError> {
        let env: Vec<(String, String)> = self.parts.request.env.clone().into_iter().collect();
        if env.is_empty() {
            return Ok(self);
        }
        match self.parts.link.set_env(env).await {
            Ok(()) => Ok(self),
            Err(e) => {
                self.discard().await;
                Err(SandboxesError::Start(format!(
                    "a ready sandbox's agent did not take its environment: {e}"
                )))
            }
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.parts.id
    }

    pub(super) fn watched(&self) -> bool {
        self.watched
    }

    /// Said when its run ends.
    pub(super) fn ended(&self) -> watch::Receiver<bool> {
        self.parts.ended.clone()
    }

    /// Said when its agent hangs up.
    pub(super) fn gone(&self) -> watch::Receiver<bool> {
        self.parts.link.gone()
    }

    /// Its agent still answers and its run has not ended.
    pub(super) fn alive(&self) -> bool {
        !*self.parts.ended.borrow() && !*self.parts.link.gone().borrow()
    }

    /// Ends it and removes its files (it was never handed out).
    pub(super) async fn discard(self) {
        let Launched { parts, unmade, .. } = self;
        unmade.keep(); // removed below, off the async threads
        LiveSandbox::assemble(parts).remove().await;
    }
}

/// Starts a sandbox as `req` asks; `pooled`: for the pool (said in its
/// start event; its clock starts when it is claimed).
pub(super) async fn launch(
    engine: &Arc<Engine>,
    req: CreateSandbox,
    restore: Option<Restore>,
    pooled: bool,
) -> Result<Launched, SandboxesError> {
    let mut req = req;
    let template = match (&req.template, &restore) {
        (Some(name), None) => Some(engine.sandbox_template(name)?),
        _ => None,
    };
    if let Some((info, _)) = &template {
        // Its image, unless one is given.
        if req.image.is_none() {
            req.image = info.image.clone();
        }
    }
    check_metadata(&req.metadata)?;
    let env: Vec<(String, String)> = req.env.clone().into_iter().collect();
    check_env(&env)?;
    let (timeout_s, idle_pause_s) = check_clock(&req)?;
    let gvisor = match req.isolation.as_deref() {
        None | Some("container") => false,
        Some("gvisor") => true,
        Some(other) => {
            return Err(SandboxesError::Invalid(format!(
                "isolation {other:?}: give container (the default) or gvisor"
            )))
        }
    };
    if gvisor {
        check_gvisor(&req)?;
    }
    let net = match req.net.as_deref() {
        None | Some("none") => NetMode::None,
        Some("host") => NetMode::Host,
        Some("outbound") => NetMode::Joined,
        Some(other) => {
            return Err(SandboxesError::Invalid(format!(
                "net {other:?}: give none, outbound or host"
            )))
        }
    };
    let allow_out = match net {
        NetMode::Joined => Some(Arc::new(AllowOut::parse(&req.allow_out)?)),
        _ if !req.allow_out.is_empty() => return Err(SandboxesError::Invalid(
            "allow_out is for net: outbound; add \"net\": \"outbound\" (--net outbound on the CLI)"
                .into(),
        )),
        _ => None,
    };
    let fl = &engine.config().limits;
    let memory = parse_size("memory", &req.memory)?.unwrap_or(fl.default_memory_bytes);
    if memory > fl.max_memory_bytes || memory < (4 << 20) {
        return Err(SandboxesError::Invalid(format!(
            "memory {memory} bytes: give 4M to {} (--max-memory)",
            alcove_sandbox::units::format_size(fl.max_memory_bytes)
        )));
    }
    let pids = req.pids.unwrap_or(fl.default_pids.max(64));
    if pids == 0 || pids > fl.max_pids {
        return Err(SandboxesError::Invalid(format!(
            "pids {pids}: give 1 to {} (--max-pids)",
            fl.max_pids
        )));
    }
    if let Some(cpus) = req.cpus {
        if !(cpus >= 0.01 && cpus <= fl.max_cpus) {
            return Err(SandboxesError::Invalid(format!(
                "cpus {cpus}: give 0.01 to {} (--max-cpus)",
                fl.max_cpus
            )));
        }
    }
    // Files live in memory (tmpfs) and count against the sandbox's memory:
    // a disk as large as the memory would have the sandbox killed for its
    // memory before its disk said it was full. Half the memory by default
    // (256 MiB at most); one made before that rule keeps its size.
    let default_disk = match restore {
        Some(_) => 256 << 20,
        None => (memory / 2).min(256 << 20),
    };
    let disk = parse_size("disk", &req.disk)?.unwrap_or(default_disk);
    if !((1 << 20)..=fl.max_memory_bytes).contains(&disk) {
        return Err(SandboxesError::Invalid(format!(
            "disk {disk} bytes: give 1M to {} (--max-memory: files live in memory)",
            alcove_sandbox::units::format_size(fl.max_memory_bytes)
        )));
    }
    // A fork keeps its parent's disk (it holds the parent's files), even
    // one made before this rule.
    if restore.is_none() && req.parent.is_none() && disk >= memory {
        return Err(SandboxesError::Invalid(format!(
            "disk {} is not less than memory {}: files in the home are kept in memory and \
             count against it, so the sandbox would be killed for its memory before its disk \
             filled; give a smaller disk or more memory",
            alcove_sandbox::units::format_size(disk),
            alcove_sandbox::units::format_size(memory)
        )));
    }

    // Files and locks (the agent's program, the runtime, the image store):
    // off the async threads.
    let for_spec = Arc::clone(engine);
    let image = req.image.clone();
    let (mut spec, lease) =
        tokio::task::spawn_blocking(move || base_spec(&for_spec, image.as_deref()))
            .await
            .map_err(|_| SandboxesError::Start("preparing the sandbox failed".into()))??;
    let (daemon_end, agent_end) = alcove_sys::unix::seqpacket_pair()
        .map_err(SandboxesError::io("making the agent's socket"))?;
    for end in [&daemon_end, &agent_end] {
        alcove_sys::seqpacket::force_send_buffer(
            end.as_fd(),
            alcove_agent::protocol::SOCKET_BUFFER,
        )
        .map_err(SandboxesError::io("sizing the agent's socket"))?;
    }
    let agent_end = Arc::new(agent_end);
    spec.workdir = HOME.into();
    spec.hostname = "sandbox".into();
    // Its home's pages outlive the run (the tmpfs is the host's): charged
    // to a pooled slot they would shrink the next run's memory limit.
    spec.fresh_cgroup = true;
    // A joined namespace is set with the namespace itself, below.
    spec.net = if net == NetMode::Joined {
        NetMode::None
    } else {
        net
    };
    if req.forkable {
        if net != NetMode::None {
            return Err(SandboxesError::Invalid(
                "forkable is for net: none sandboxes (a fork with memory makes a network \
                 namespace of its own, loopback only)"
                    .into(),
            ));
        }
        // Its filter lets the code interpreter fork itself into a new sandbox
        // (`unshare` of a copy's namespaces, `mount`, which only that new user
        // namespace makes work); the agent stacks the copy filter, which
        // refuses them, on every other command.
        spec.warm_template = true;
        spec.env.push((
            alcove_agent::COPY_FILTER_ENV.into(),
            std::path::Path::new(alcove_warm::runtime::RUNTIME_DIR)
                .join(alcove_warm::runtime::COPY_FILTER)
                .into(),
        ));
    }
    spec.env.push(("HOME".into(), HOME.into()));
    for (k, v) in &env {
        spec.env.push((k.into(), v.into()));
    }
    // The gVisor tier hands the socket in as the agent's stdin (runsc
    // passes on only stdio).
    match gvisor {
        true => spec.env.push((AGENT_FD_ENV.into(), "0".into())),
        false => {
            spec.env.push((
                AGENT_FD_ENV.into(),
                agent_end.as_raw_fd().to_string().into(),
            ));
            spec.inherit_fds.push(Arc::clone(&agent_end));
        }
    }
    spec.limits.memory_bytes = Some(memory);
    spec.limits.pids = Some(pids);
    spec.limits.cpus = req.cpus;
    spec.limits.tmpfs_bytes = disk;
    spec.limits.timeout = None; // the daemon's clock ends it (the timeout can be extended)
    if let Some(r) = &restore {
        // Its files are its first user's (an image's user may have changed since).
        spec.user.uid = r.owner.0;
        spec.user.gid = r.owner.1;
    }
    let spec_user = spec.user;
    // Its home: a tmpfs the daemon mounts on the host (it outlives the
    // daemon, so a restart keeps the files), bound in as /home/user.
    let id = match &restore {
        Some(r) => r.id.clone(),
        None => format!("sb-{}", alcove_sys::process::random_id()),
    };
    let dir = super::persist::sandbox_dir(&engine.sandboxes_dir(), &id)
        .map_err(SandboxesError::io("naming the sandbox's directory"))?;
    let unmade = match &restore {
        None => {
            super::persist::create_home(&dir, disk, (spec_user.uid, spec_user.gid))
                .map_err(SandboxesError::io("mounting the sandbox's home"))?;
            let unmade = Unmade(Some(dir.clone()));
            if pooled {
                super::persist::mark_pooled(&dir)
                    .map_err(SandboxesError::io("marking a ready sandbox's directory"))?;
            }
            unmade
        }
        Some(_) if !super::persist::home_mounted(&dir) => {
            return Err(SandboxesError::Conflict(
                "the sandbox's home is no longer mounted (the host restarted?): its files were lost; remove it".into(),
            ))
        }
        Some(_) => Unmade(None), // its files stay whatever happens here
    };
    spec.binds.push(alcove_sandbox::Bind {
        source: super::persist::home_of(&dir),
        target: HOME.into(),
        writable: true,
        device: false,
    });
    // The agent's own stdio: nothing of the daemon's, and what it says is logged.
    spec.stdio = alcove_sandbox::Stdio::Capture { stdin: Vec::new() };
    spec.limits.output_bytes = Some(64 << 10);
    spec.validate()
        .map_err(|e| SandboxesError::Invalid(e.to_string()))?;

    let (kill_read, kill_write) = alcove_sys::fd::pipe_cloexec()
        .map_err(SandboxesError::io("making the sandbox's kill pipe"))?;
    let usage = Arc::new(UsageWatch::new());
    let cgroup = Arc::new(Mutex::new(None));
    let options = RunOptions {
        forward_signals: false,
        collect_usage: false,
        cancel: vec![Arc::new(kill_read), Arc::clone(&engine.cancel)],
        watch: Some(Arc::clone(&usage)),
    };
    let (ended_tx, ended) = watch::channel(false);
    // Its rules (an outbound link's, its guard's) are the kernel's: such a
    // sandbox runs watched or not at all.
    let mut policy = match &req.guard {
        Some(guard) => guard_policy(guard, net, &mut spec)?,
        None => alcove_monitor::SandboxPolicy::default(),
    };
    if let Some(allow) = &allow_out {
        let link = Outbound::policy(allow)?;
        policy.net_allow = link.net_allow;
        policy.net_deny = link.net_deny;
    }
    // An empty guard (`{}`) asks nothing of the kernel: counted only.
    let ruled = !policy.is_empty();
    let (watch, outbound) = match &allow_out {
        None if !ruled => (engine.watch_sandbox(&id), None),
        None => {
            let cell = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (watch, _) = engine
                .guard_sandbox(&id, policy, cell)
                .map_err(SandboxesError::Start)?;
            (Some(watch), None)
        }
        Some(allow) => {
            let cell = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (watch, service) = engine
                .guard_sandbox(&id, policy, Arc::clone(&cell))
                .map_err(SandboxesError::Start)?;
            let upstream = engine
                .config()
                .sandbox_dns
                .or_else(super::resolver::host_resolver);
            let link = Outbound::create(Arc::clone(allow), upstream, service, cell).await?;
            spec.net = NetMode::Joined;
            spec.netns = Some(Arc::clone(&link.netns));
            spec.resolv_conf = Some(Outbound::resolv_conf());
            (Some(watch), Some(link))
        }
    };
    let mut observer = SandboxObserver {
        cgroup: Arc::clone(&cgroup),
        required: ruled,
        watch,
    };
    let end_reason = Arc::new(Mutex::new(None));
    let end_reason_set = Arc::clone(&end_reason);
    let gvisor_agent = match gvisor {
        true => Some(
            agent_end
                .try_clone()
                .map_err(SandboxesError::io("handing the agent its socket"))?,
        ),
        false => None,
    };
    // Said before its first process runs: its events come after this one.
    // A ready one's start is said when it is claimed (pool.rs); here, that
    // it was made ready.
    let watched = observer.watch.is_some();
    let event = match pooled {
        false => "sandbox_start",
        true => "sandbox_ready",
    };
    engine.emit_sandbox(
        &id,
        serde_json::json!({ "event": event, "watched": watched }),
    );
    let events = Arc::downgrade(engine);
    let event_id = id.clone();
    let (failed_tx, failed) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("alcove-sandbox".into())
        .spawn(move || {
            let result = match gvisor_agent {
                Some(agent) => {
                    let gvisor = alcove_gvisor::GvisorOptions {
                        state_root: None,
                        cancel: options.cancel.clone(),
                    };
                    let usage = options.watch.as_deref();
                    alcove_gvisor::serve(&spec, agent, &gvisor, &mut observer, usage)
                        .map_err(|e| alcove_sandbox::error_chain(&e))
                }
                None => alcove_sandbox::run_observed(&spec, &options, &mut observer)
                    .map_err(|e| alcove_sandbox::error_chain(&e)),
            };
            drop(spec); // closes the agent's end here too: the link sees the end
            drop(lease);
            drop(outbound); // its link and resolver go with the run
            if let Some(why) = run_ended(&events, &event_id, result, &observer, &end_reason_set) {
                let _ = failed_tx.send(why);
            }
            ended_tx.send_replace(true);
        })
        .map_err(SandboxesError::io("starting the sandbox's thread"))?;
    drop(agent_end);
    let connected = AgentLink::connect(daemon_end, AGENT_READY).await;
    let (link, proc_dir, netns) = match connected {
        Ok((link, _pid)) => {
            // The run's thread records the pid just after the clone; an agent
            // that starts fast can say ready before that thread has run again.
            for _ in 0..2000 {
                if usage.pid().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Its first process's /proc directory, held open (a pid reused
            // after its end cannot stand in), and through it its network
            // namespace (ports are reached through it).
            let proc_dir = usage
                .pid()
                .and_then(|pid| std::fs::File::open(format!("/proc/{pid}")).ok())
                .map(OwnedFd::from);
            let netns = proc_dir
                .as_ref()
                .and_then(|d| {
                    std::fs::File::open(format!("/proc/self/fd/{}/ns/net", d.as_raw_fd())).ok()
                })
                .map(OwnedFd::from);
            // The gVisor tier's first process on the host is runsc, in the
            // host's root: never a way into the sandbox's files.
            let proc_dir = proc_dir.filter(|_| !gvisor);
            (link, proc_dir, netns)
        }
        Err(e) => {
            drop(kill_write);
            let why = match failed.await {
                Ok(why) => why,
                // It ran and ended before its agent answered: say why when
                // the kernel did it (a guard's budget spent at start, say).
                Err(_) => end_reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| e.to_string()),
            };
            return Err(SandboxesError::Start(why));
        }
    };
    let owner = (spec_user.uid, spec_user.gid);
    if let Some((_, files)) = template {
        // Its files before anything runs in it but its agent.
        let into = match gvisor {
            true => HomeAt::Host(super::persist::home_of(&dir)),
            false => HomeAt::Proc(
                proc_dir
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("the sandbox has ended"))
                    .and_then(|d| d.try_clone()),
            ),
        };
        let budget = super::copy::Budget {
            bytes: disk,
            entries: 200_000,
        };
        let seeded = tokio::task::spawn_blocking(move || {
            let (from, to) = (super::copy::open_dir(&files)?, into.open()?);
            super::copy::copy_tree(from.as_fd(), to.as_fd(), owner, budget)
        })
        .await;
        if !matches!(seeded, Ok(Ok(_))) {
            drop(kill_write);
            let why = match seeded {
                Ok(Err(e)) => e.to_string(),
                _ => "the copy's thread failed".into(),
            };
            return Err(SandboxesError::Start(format!(
                "copying the template's files: {why}"
            )));
        }
    }
    let (created_at, timeout_s, expires_at) = match &restore {
        Some(r) => (r.created_at, r.timeout_s, r.expires_at),
        None => {
            let at = now();
            (at, timeout_s, at + timeout_s as f64)
        }
    };
    // Its record keeps the limits it got (a daemon restarted with other
    // defaults gives it the same).
    req.memory = Some(memory.to_string());
    req.pids = Some(pids);
    req.disk = Some(disk.to_string());
    req.timeout_s = Some(timeout_s);
    req.idle_pause_s = Some(idle_pause_s);
    let cpus = req.cpus;
    let parts = Parts {
        id,
        link,
        netns,
        proc_dir,
        created_at,
        timeout_s,
        expires_at,
        idle_pause_s,
        request: req,
        owner,
        dir,
        net,
        limits: LimitsView {
            memory_bytes: Some(memory),
            cpus,
            pids: Some(pids),
            disk_bytes: disk,
        },
        cgroup,
        usage,
        kill: kill_write,
        ended,
        end_reason,
        interpreter: None,
        nested_in: None,
    };
    Ok(Launched {
        parts,
        unmade,
        pooled,
        watched,
    })
}

/// Where a sandbox's home is opened from: [`LiveSandbox::home`].
pub(super) enum HomeAt {
    Proc(std::io::Result<OwnedFd>),
    Host(PathBuf),
}

impl HomeAt {
    pub(super) fn open(self) -> std::io::Result<OwnedFd> {
        match self {
            HomeAt::Proc(proc_dir) => super::copy::open_sandbox_home(proc_dir?.as_fd()),
            HomeAt::Host(home) => super::copy::open_dir(&home),
        }
    }
}

/// What a started sandbox is made of (by a create, a restart or a fork).
pub(super) struct Parts {
    pub id: String,
    pub link: AgentLink,
    pub netns: Option<OwnedFd>,
    pub proc_dir: Option<OwnedFd>,
    pub created_at: f64,
    pub timeout_s: u64,
    pub expires_at: f64,
    pub idle_pause_s: u64,
    /// As it was made, its limits filled in.
    pub request: CreateSandbox,
    pub owner: (u32, u32),
    pub dir: PathBuf,
    pub net: NetMode,
    pub limits: LimitsView,
    pub cgroup: Arc<Mutex<Option<PathBuf>>>,
    pub usage: Arc<UsageWatch>,
    pub kill: OwnedFd,
    pub ended: watch::Receiver<bool>,
    pub end_reason: Arc<Mutex<Option<String>>>,
    pub interpreter: Option<super::code::Interpreter>,
    /// A fork with the interpreter's memory: the sandbox whose process tree
    /// it lives in (it ends when that one does).
    pub nested_in: Option<String>,
}

impl LiveSandbox {
    pub(super) fn assemble(p: Parts) -> Arc<LiveSandbox> {
        Arc::new(LiveSandbox {
            id: p.id,
            link: p.link,
            netns: p.netns,
            proc_dir: p.proc_dir,
            clock: Mutex::new(Clock {
                state: SandboxState::Running,
                expires_at: p.expires_at,
                timeout_s: p.timeout_s,
                idle_pause_s: p.idle_pause_s,
                last_used: now(),
            }),
            created_at: p.created_at,
            metadata: p.request.metadata.clone(),
            image: p.request.image.clone(),
            owner: p.owner,
            dir: p.dir,
            record_lock: Mutex::new(()),
            net: p.net,
            limits: p.limits,
            cgroup: p.cgroup,
            usage: p.usage,
            kill: Mutex::new(Some(p.kill)),
            ended: p.ended,
            processes: Mutex::default(),
            freezer: tokio::sync::Mutex::new(()),
            code: tokio::sync::Mutex::new(p.interpreter),
            code_call: Mutex::default(),
            code_signal: Arc::new(tokio::sync::Mutex::new(())),
            request: p.request,
            in_use: Default::default(),
            no_idle_pause_until: Mutex::new(0.0),
            end_reason: p.end_reason,
            nested_in: p.nested_in,
            forking: Default::default(),
            copies: Default::default(),
            output: Default::default(),
        })
    }
}

/// Reports the end of a sandbox's run (its event, and why the kernel ended
/// it); returns why it failed, when it did not run at all.
pub(super) fn run_ended(
    events: &std::sync::Weak<Engine>,
    id: &str,
    result: Result<alcove_sandbox::Outcome, String>,
    observer: &SandboxObserver,
    end_reason: &Mutex<Option<String>>,
) -> Option<String> {
    match result {
        Err(why) => {
            if let Some(engine) = events.upgrade() {
                engine.emit_sandbox(
                    id,
                    serde_json::json!({ "event": "sandbox_end", "status": "failed", "error": why }),
                );
            }
            Some(why)
        }
        Ok(outcome) => {
            let why = match outcome.status {
                // The gVisor tier's task limit ends the whole sandbox: said as it is.
                alcove_sandbox::Status::KilledByPolicy
                    if outcome
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("(--pids)")) =>
                {
                    outcome.reason.clone()
                }
                alcove_sandbox::Status::KilledByPolicy => Some(format!(
                    "killed by its guard: {}",
                    outcome.reason.as_deref().unwrap_or("a budget")
                )),
                alcove_sandbox::Status::Oom => {
                    Some("its memory limit was reached (OOM)".to_owned())
                }
                _ => None,
            };
            *end_reason.lock().unwrap_or_else(|e| e.into_inner()) = why;
            let said = String::from_utf8_lossy(&outcome.stderr);
            tracing::info!(sandbox = %id, status = ?outcome.status, agent_stderr = ?said.trim(), "agent sandbox ended");
            let seen = observer.watch.as_ref().and_then(|w| {
                // Its processes' last events (the agent's exit) go out
                // before its end, not after it.
                w.flush();
                w.result().map(|r| r.stats.clone())
            });
            if let Some(engine) = events.upgrade() {
                engine.emit_sandbox(
                    id,
                    serde_json::json!({
                        "event": "sandbox_end",
                        "status": format!("{:?}", outcome.status).to_lowercase(),
                        "execs": seen.as_ref().map(|s| s.execs),
                        "page_faults": seen.as_ref().map(|s| s.page_faults),
                        "context_switches": seen.as_ref().map(|s| s.ctx_switches),
                    }),
                );
            }
            None
        }
    }
}

/// A new sandbox's directory and home until its create succeeds: a create
/// that fails leaves nothing of them.
pub(super) struct Unmade(Option<PathBuf>);

impl Unmade {
    pub(super) fn new(dir: PathBuf) -> Self {
        Unmade(Some(dir))
    }

    pub(super) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Unmade {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = super::persist::reclaim(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "a failed create's home could not be removed");
            }
        }
    }
}

impl LiveSandbox {
    pub fn info(&self) -> SandboxInfo {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let usage = self.usage.usage().unwrap_or_default();
        SandboxInfo {
            id: self.id.clone(),
            state: clock.state,
            reason: None,
            created_at: self.created_at,
            expires_at: clock.expires_at,
            timeout_s: clock.timeout_s,
            idle_pause_s: clock.idle_pause_s,
            image: self.image.clone(),
            template: self.request.template.clone(),
            parent: self.request.parent.clone(),
            net: match self.net {
                NetMode::None => "none",
                NetMode::Host => "host",
                NetMode::Joined => "outbound",
            }
            .into(),
            isolation: match self.gvisor() {
                true => "gvisor",
                false => "container",
            }
            .into(),
            allow_out: self.request.allow_out.clone(),
            metadata: self.metadata.clone(),
            limits: self.limits.clone(),
            usage: UsageView {
                memory_bytes: usage.memory_bytes,
                cpu_ms: usage.cpu_ms,
            },
            interpreter: None,
        }
    }

    pub(super) fn request(&self) -> &CreateSandbox {
        &self.request
    }

    /// Whether it runs in the gVisor tier.
    pub(super) fn gvisor(&self) -> bool {
        self.request.isolation.as_deref() == Some("gvisor")
    }

    /// Where its home is opened from (on a blocking thread): inside its
    /// root through its first process, or, in the gVisor tier (whose first
    /// process on the host is runsc, in the host's root), the host's mount
    /// of it that alcove made.
    pub(super) fn home(&self) -> HomeAt {
        match self.gvisor() {
            true => HomeAt::Host(super::persist::home_of(&self.dir)),
            false => HomeAt::Proc(self.proc_dir()),
        }
    }

    pub(super) fn nested_in(&self) -> Option<&str> {
        self.nested_in.as_deref()
    }

    /// Writes a new sandbox's record, off the async threads; a sandbox
    /// whose record cannot be written is ended (a restart would lose it).
    pub(super) async fn save_first_record(self: &Arc<Self>) -> Result<(), SandboxesError> {
        let s = Arc::clone(self);
        let saved = tokio::task::spawn_blocking(move || s.save_record()).await;
        if matches!(saved, Ok(Ok(()))) {
            return Ok(());
        }
        self.begin_kill();
        Err(match saved {
            Ok(Err(e)) => e,
            _ => SandboxesError::Start("saving the sandbox's record failed".into()),
        })
    }

    pub(super) fn net(&self) -> NetMode {
        self.net
    }

    pub(super) fn owner(&self) -> (u32, u32) {
        self.owner
    }

    /// Its first process's /proc directory (a lookup through it fails once
    /// that process is gone, whoever has its pid by then).
    pub(super) fn proc_dir(&self) -> std::io::Result<OwnedFd> {
        self.proc_dir
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the sandbox's process could not be found"))?
            .try_clone()
    }

    pub(super) fn ended(&self) -> watch::Receiver<bool> {
        self.ended.clone()
    }

    /// Whether it ended, or does within a second: what a call that found
    /// its cgroup or home gone asks (a removal tears them down first).
    pub(super) async fn ending(&self) -> bool {
        let mut ended = self.ended();
        // Its sender dropped: it is gone with everything it had.
        let waited = tokio::time::timeout(Duration::from_secs(1), ended.wait_for(|e| *e)).await;
        waited.is_ok()
    }

    pub(super) fn expired(&self, now: f64) -> bool {
        now >= self
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expires_at
    }

    pub(super) fn idle_for_pause(&self, now: f64) -> bool {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.state == SandboxState::Running
            && clock.idle_pause_s > 0
            && self.in_use.load(std::sync::atomic::Ordering::Relaxed) == 0
            && now - clock.last_used >= clock.idle_pause_s as f64
    }

    /// A call arrived: it counts as use until the guard is dropped (no idle
    /// pause meanwhile), and a paused sandbox resumes first.
    pub(super) async fn touch(self: &Arc<Self>) -> Result<InUse, SandboxesError> {
        let _one_at_a_time = self.freezer.lock().await;
        let guard = InUse::new(Arc::clone(self));
        let paused =
            self.clock.lock().unwrap_or_else(|e| e.into_inner()).state == SandboxState::Paused;
        if paused {
            self.set_frozen(false).await?;
        }
        Ok(guard)
    }

    /// Sets the timeout to `seconds` from now.
    /// (The caller saves the record: see `Engine::set_sandbox_timeout`.)
    pub fn set_timeout(&self, seconds: u64) -> Result<SandboxInfo, SandboxesError> {
        check_timeout(seconds)?;
        {
            let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            clock.timeout_s = seconds;
            clock.expires_at = now() + seconds as f64;
        }
        Ok(self.info())
    }

    /// How many processes run in it (its cgroup2 directory's), if it has one.
    pub(super) fn process_count(&self) -> Option<usize> {
        let dir = self
            .cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        Some(pids.lines().count())
    }

    /// Freezes (`true`) or thaws the whole sandbox through its cgroup: its
    /// processes stop where they are, memory and files kept. Calls in flight
    /// wait for a resume (their agent answers within 30 s or they fail).
    pub async fn pause(&self, frozen: bool) -> Result<SandboxInfo, SandboxesError> {
        if frozen && self.forking.load(std::sync::atomic::Ordering::Relaxed) {
            // Its session must run to finish the fork (a frozen one would hold it
            // until the fork's deadline).
            return Err(SandboxesError::Conflict(
                "a fork with memory is being made from it: pause it when that is done".into(),
            ));
        }
        let _one_at_a_time = self.freezer.lock().await;
        self.set_frozen(frozen).await?;
        Ok(self.info())
    }

    /// The reaper's pause: only when no call has been in flight for
    /// `idle_pause_s`, re-checked under the freezer's lock; after a freeze
    /// that failed, not again for a minute.
    pub(super) async fn pause_if_idle(&self) {
        let _one_at_a_time = self.freezer.lock().await;
        let now = now();
        if !self.idle_for_pause(now)
            || now
                < *self
                    .no_idle_pause_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
        {
            return;
        }
        if let Err(e) = self.set_frozen(true).await {
            tracing::warn!(sandbox = %self.id, error = %e, "idle pause failed; not tried again for a minute");
            *self
                .no_idle_pause_until
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = now + 60.0;
        }
    }

    /// Call with the freezer's lock held.
    pub(super) async fn set_frozen(&self, frozen: bool) -> Result<(), SandboxesError> {
        let want = if frozen {
            SandboxState::Paused
        } else {
            SandboxState::Running
        };
        if self.clock.lock().unwrap_or_else(|e| e.into_inner()).state == want {
            return Ok(());
        }
        let dir = self
            .cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                SandboxesError::Conflict(
                    "this host has no cgroup2 tree for the sandbox, so it cannot be paused".into(),
                )
            })?;
        let frozen_now = tokio::task::spawn_blocking(move || freeze(&dir, frozen))
            .await
            .map_err(|_| SandboxesError::Start("the freezer's thread failed".into()))?;
        match frozen_now {
            Ok(()) => {}
            // Its cgroup went with it (removed meanwhile, or being removed:
            // its files then answer ENODEV): gone, not failed.
            Err(SandboxesError::Io { source, what })
                if source.kind() == std::io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ENODEV) =>
            {
                return Err(match self.ending().await {
                    true => SandboxesError::Agent(alcove_agent::LinkError::Gone),
                    false => SandboxesError::Io { what, source },
                });
            }
            Err(e) => return Err(e),
        }
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.state = want;
        clock.last_used = now();
        Ok(())
    }

    /// Ends the sandbox and waits (up to 10 s) until its run has torn it down.
    pub(super) async fn kill(&self) {
        self.begin_kill();
        self.wait_ended().await;
    }

    /// Ends the sandbox without waiting: its run kills and tears it down.
    pub(super) fn begin_kill(&self) {
        drop(self.kill.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Waits (up to 10 s) until its run has torn it down.
    pub(super) async fn wait_ended(&self) {
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|e| *e)).await;
    }

    /// Starts a command; its output and end are read from the result.
    pub async fn exec(&self, req: ExecRequest) -> Result<Arc<Process>, SandboxesError> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(SandboxesError::Invalid("cmd: give a command to run".into()));
        }
        if req.argv.len() > 4096 || req.argv.iter().map(|a| a.len()).sum::<usize>() > (1 << 20) {
            return Err(SandboxesError::Invalid(
                "cmd: at most 4096 arguments and 1 MiB".into(),
            ));
        }
        if req.argv.iter().any(|a| a.contains('\0')) {
            return Err(SandboxesError::Invalid(
                "cmd: an argument holds a NUL byte".into(),
            ));
        }
        check_env(&req.env)?;
        {
            // Counted only when there could be that many: a look at each
            // command's state is a cache miss or two, per command, per exec.
            let processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
            if processes.len() >= MAX_RUNNING
                && processes
                    .values()
                    .filter(|p| p.running() || p.holds_pipes())
                    .count()
                    >= MAX_RUNNING
            {
                return Err(SandboxesError::Conflict(format!(
                    "{MAX_RUNNING} commands run in this sandbox already; wait for or kill some"
                )));
            }
        }
        let cmd = req.argv.join(" ");
        let (argv, env, cwd) = (req.argv, req.env, req.cwd);
        // A terminal is the command's stdin: typed into later unless text
        // was given for it.
        let keep_open = req.keep_stdin_open || (req.pty.is_some() && req.stdin.is_none());
        if req.pty.is_some() && self.gvisor() {
            return Err(SandboxesError::Invalid(
                "pty: a terminal is not offered in a gVisor sandbox yet (gVisor cannot hand a \
                 terminal's master out to the daemon): run the command without one, or create \
                 the sandbox with isolation container"
                    .into(),
            ));
        }
        let (pid, process) = match req.pty {
            Some(size) => self.exec_pty(argv, env, cwd, cmd, size).await?,
            None => {
                let slot = super::budget::ReadingSlot::take(&self.output)?;
                let pipe =
                    || alcove_sys::fd::pipe_cloexec().map_err(SandboxesError::io("making a pipe"));
                let (in_read, in_write) = pipe()?;
                let (out_read, out_write) = pipe()?;
                let (err_read, err_write) = pipe()?;
                // In a task of its own: a caller that goes away mid-start cannot
                // leave a command running that nothing tracks.
                let link = self.link.clone();
                let started = tokio::spawn(async move {
                    link.exec(argv, env, cwd, vec![in_read, out_write, err_write])
                        .await
                });
                let (pid, end) = started
                    .await
                    .map_err(|_| SandboxesError::Start("starting the command failed".into()))??;
                let stdin = match (&req.stdin, keep_open) {
                    (None, false) => None, // closed: the command reads end of file
                    _ => Some(in_write),
                };
                let process = Process::start(pid, cmd, out_read, err_read, stdin, end, slot)
                    .map_err(SandboxesError::io("reading a command's output"))?;
                (pid, process)
            }
        };
        if let Some(bytes) = req.stdin {
            let p = Arc::clone(&process);
            tokio::spawn(async move {
                let _ = p.write_stdin(&bytes, !keep_open).await;
            });
        }
        if let Some(limit) = req.timeout {
            let link = self.link.clone();
            let mut end = process.end();
            let p = Arc::clone(&process);
            tokio::spawn(async move {
                if tokio::time::timeout(limit, end.wait_for(|e| e.is_some()))
                    .await
                    .is_err()
                {
                    p.set_timed_out();
                    let _ = link.signal(pid, libc::SIGKILL).await;
                }
            });
        }
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        // Pruned in batches, oldest first, once twice as many are held as are
        // kept, so that an exec does not look at every command it keeps.
        if processes.len() >= 2 * FINISHED_KEPT {
            let mut finished: Vec<(u64, i32)> = processes
                .values()
                .filter(|p| !p.running() && !p.holds_pipes())
                .map(|p| (p.started_seq(), p.pid))
                .collect();
            if finished.len() > FINISHED_KEPT {
                finished.sort_unstable();
                for (_, pid) in &finished[..finished.len() - FINISHED_KEPT] {
                    processes.remove(pid);
                }
            }
        }
        // Its finished commands' output gives way to its running ones': past
        // half its share, the oldest finished keep only their last 64 KiB.
        if self.output.kept() > super::budget::KEPT_PER_SANDBOX / 2 {
            let mut finished: Vec<&Arc<Process>> = processes
                .values()
                .filter(|p| !p.running() && !p.holds_pipes())
                .collect();
            finished.sort_unstable_by_key(|p| p.started_seq());
            for p in finished {
                if self.output.kept() <= super::budget::KEPT_PER_SANDBOX / 2 {
                    break;
                }
                p.trim_kept(64 << 10);
            }
        }
        processes.insert(pid, Arc::clone(&process));
        Ok(process)
    }

    /// Starts a command on a new terminal in the sandbox (opened there by
    /// its agent, which hands the master over).
    async fn exec_pty(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        cmd: String,
        size: super::process::PtySize,
    ) -> Result<(i32, Arc<Process>), SandboxesError> {
        if !(1..=super::process::PtySize::MAX).contains(&size.cols)
            || !(1..=super::process::PtySize::MAX).contains(&size.rows)
        {
            return Err(SandboxesError::Invalid(format!(
                "pty: give cols and rows of 1 to {}",
                super::process::PtySize::MAX
            )));
        }
        let slot = super::budget::ReadingSlot::take(&self.output)?;
        // In a task of its own, as for pipes: nothing started goes untracked.
        let link = self.link.clone();
        let started = tokio::spawn(async move { link.exec_pty(argv, env, cwd, size).await });
        let (pid, end, master) = started
            .await
            .map_err(|_| SandboxesError::Start("starting the command failed".into()))??;
        let process = Process::start_pty(pid, cmd, master, end, slot)
            .map_err(SandboxesError::io("reading a command's terminal"))?;
        Ok((pid, process))
    }

    /// A TCP connection to `port` on the sandbox's own loopback, made from
    /// inside its network namespace (nothing is exposed on the host's).
    pub async fn connect_port(&self, port: u16) -> Result<tokio::net::TcpStream, SandboxesError> {
        if port == 0 {
            return Err(SandboxesError::Invalid("port: give 1 to 65535".into()));
        }
        let netns = match (&self.netns, self.net) {
            (Some(ns), NetMode::None | NetMode::Joined) => ns
                .try_clone()
                .map_err(SandboxesError::io("reaching the sandbox's network"))?,
            _ => {
                return Err(SandboxesError::Conflict(
                    "this sandbox shares the host's network (net: host): its ports are the host's, reach them there"
                        .into(),
                ))
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own enters the namespace (setns is per thread) and ends.
        std::thread::Builder::new()
            .name("alcove-port".into())
            .spawn(move || {
                let connected =
                    alcove_sys::ns::setns(netns.as_fd(), libc::CLONE_NEWNET).and_then(|()| {
                        std::net::TcpStream::connect_timeout(
                            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                            Duration::from_secs(5),
                        )
                    });
                let _ = tx.send(connected);
            })
            .map_err(SandboxesError::io("reaching the sandbox's network"))?;
        let stream = rx
            .await
            .map_err(|_| SandboxesError::Start("reaching the sandbox's network failed".into()))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => SandboxesError::NoListener(port),
                _ => SandboxesError::Io {
                    what: "connecting to the sandbox's port",
                    source: e,
                },
            })?;
        // Its run has ended (its pooled namespace may be another sandbox's by now).
        if self.usage.pid().is_none() {
            return Err(SandboxesError::Agent(alcove_agent::LinkError::Gone));
        }
        stream
            .set_nonblocking(true)
            .map_err(SandboxesError::io("connecting to the sandbox's port"))?;
        let _ = stream.set_nodelay(true);
        tokio::net::TcpStream::from_std(stream)
            .map_err(SandboxesError::io("connecting to the sandbox's port"))
    }

    pub fn process(&self, pid: i32) -> Result<Arc<Process>, SandboxesError> {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned()
            .ok_or(SandboxesError::NoProcess(pid))
    }

    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<_> = self
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|p| p.pid);
        all
    }

    /// Sends `signal` to a command it started (and to what that started).
    pub async fn signal(&self, pid: i32, signal: i32) -> Result<(), SandboxesError> {
        let process = self.process(pid)?;
        if !process.running() {
            return Err(SandboxesError::Conflict(format!(
                "the command with pid {pid} has ended"
            )));
        }
        self.link.signal(pid, signal).await?;
        Ok(())
    }

    /// Resizes the terminal of a command started with one.
    pub fn resize(&self, pid: i32, size: super::process::PtySize) -> Result<(), SandboxesError> {
        self.process(pid)?.resize(size)
    }
}

impl Process {
    /// Writes `bytes` to its stdin, closing it after when `close`.
    pub async fn write_stdin(&self, bytes: &[u8], close: bool) -> Result<(), SandboxesError> {
        let mut stdin = self.stdin.lock().await;
        let Some(input) = stdin.as_mut() else {
            return Err(SandboxesError::Conflict(
                "this command's stdin is closed".into(),
            ));
        };
        let written = input.write(bytes, close).await;
        if close || written.is_err() {
            *stdin = None;
        }
        written.map_err(|e| match e.raw_os_error() {
            // Nothing reads it any more (the command and what it started ended).
            Some(libc::EPIPE) | Some(libc::EIO) => SandboxesError::Conflict(
                "this command's stdin is closed (nothing reads it any more)".into(),
            ),
            _ => SandboxesError::Io {
                what: "writing to a command's stdin",
                source: e,
            },
        })
    }
}

/// Writes the cgroup's freezer and waits for the kernel to say it is done.
fn freeze(dir: &Path, frozen: bool) -> Result<(), SandboxesError> {
    std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
        .map_err(SandboxesError::io("writing cgroup.freeze"))?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    for _ in 0..2000 {
        let events = std::fs::read_to_string(dir.join("cgroup.events"))
            .map_err(SandboxesError::io("reading cgroup.events"))?;
        if events.lines().any(|l| l == want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    if frozen {
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    }
    Err(SandboxesError::Conflict(
        "the sandbox did not settle in its new state within 1 s".into(),
    ))
}

/// What keeps it across a daemon restart, and what its removal takes away.
impl LiveSandbox {
    /// Its directory: DATA_DIR/sandboxes/ID.
    /// Why the kernel ended it, if a policy or the OOM killer did.
    pub(super) fn end_reason(&self) -> Option<String> {
        self.end_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its record as things are now.
    pub(super) fn record(&self) -> super::persist::Record {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        super::persist::Record::new(
            &self.id,
            &self.request,
            (self.created_at, clock.timeout_s, clock.expires_at),
            self.owner,
        )
    }

    /// Writes its record (blocking: call it off the async threads).
    pub(super) fn save_record(&self) -> Result<(), SandboxesError> {
        let _one_at_a_time = self.record_lock.lock().unwrap_or_else(|e| e.into_inner());
        super::persist::save(&self.dir, &self.record())
            .map_err(SandboxesError::io("saving the sandbox's record"))
    }

    /// Removes it: its processes end (waited for, up to 10 s), then its
    /// home is unmounted and its directory and record removed.
    /// (Taken out of the registry first: its end then leaves no `stopped`.)
    pub(super) async fn remove(&self) {
        self.kill().await;
        super::reclaim_files(self.dir.clone()).await;
    }
}
