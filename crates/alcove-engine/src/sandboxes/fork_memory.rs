//! A fork that copies the code interpreter's memory. The parent's session
//! forks itself into the new sandbox's namespaces (alcove_fork.py, as a
//! warm copy does: docs/warm-protocol.md); this side makes everything else
//! the new sandbox has (its home, filled from the parent's, its cgroup,
//! its agent's socket, its supervision) and checks every process of it
//! from /proc before anything is given to it.
//!
//! Only a `net: none` sandbox is forked this way: its new network namespace
//! is a copy's own (loopback only), as the parent's was. Another (outbound,
//! host) is forked with its files and a fresh interpreter, and says so.

use super::code::{Channel, ForkedInterpreter};
use super::copy::{copy_tree, open_dir, Budget};
use super::live::{run_ended, LiveSandbox, Parts, SandboxObserver, HOME};
use super::{persist, CreateSandbox, SandboxesError};
use crate::engine::Engine;
use crate::store::now;
use alcove_agent::{AgentLink, AGENT_FD_ENV, FORK_INIT_ENV};
use alcove_sandbox::{NetMode, RunOptions, SandboxSpec, UsageWatch};
use alcove_sys::seqpacket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the copy's side has, all its steps together.
const STEP: Duration = Duration::from_secs(10);
/// The descriptor the new agent's socket gets.
const AGENT_LINK_FD: i32 = 3;
/// The longest parent agent environment taken over.
const MAX_ENVIRON: u64 = 1 << 20;
/// The namespaces a fork must not share with its parent.
const NAMESPACES: [&str; 6] = ["user", "mnt", "net", "ipc", "uts", "pid"];

/// A new sandbox holding a copy of `parent`'s files and of its
/// interpreter's memory, started and not yet registered. An error says why
/// it could not be made this way (nothing of it is left).
pub(super) async fn start(
    engine: &Arc<Engine>,
    parent: &Arc<LiveSandbox>,
    req: CreateSandbox,
) -> Result<Arc<LiveSandbox>, SandboxesError> {
    let no = |why: &str| Err(SandboxesError::Conflict(why.to_owned()));
    if !parent.request().forkable {
        return no(
            "it was not created forkable: create it with \"forkable\": true (--forkable) to \
             fork it with its interpreter's memory, or fork it without memory",
        );
    }
    if parent.net() != NetMode::None {
        return no(
            "memory: true forks only a net: none sandbox (the copy makes a network namespace \
             of its own, with loopback only); fork this one without memory",
        );
    }
    // Forks with memory in progress at once, daemon-wide: each holds a
    // blocking thread and a session for up to its deadline.
    static IN_PROGRESS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    let Ok(_one_of_few) = IN_PROGRESS.try_acquire() else {
        return Err(SandboxesError::Conflict(
            "4 forks with memory are being made on this daemon: try again in a moment".into(),
        ));
    };
    // Resumed if paused (its session must run to fork), and not idle meanwhile.
    let _in_use = parent.touch().await?;
    parent
        .forking
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let _forking = Forking(parent);
    let Ok(mut slot) = parent.code.try_lock() else {
        return no("a code call is running in it: wait for it or interrupt it, then fork");
    };
    let Some(session) = slot.as_mut().filter(|i| i.alive()) else {
        return no("no code interpreter runs in it (run_code starts one): fork it without memory");
    };
    let t0 = Instant::now();
    let limits = parent.info().limits;
    let owner = parent.owner();
    let disk = limits.disk_bytes;
    let parent_proc = parent
        .proc_dir()
        .map_err(SandboxesError::io("finding the sandbox"))?;
    let agent_env = agent_environment(parent_proc.as_fd())?;
    let agent_argv = super::agent_program::agent_program()
        .map_err(SandboxesError::Start)?
        .argv
        .clone();

    // Its home: mounted now, filled from the parent's (frozen) once the
    // session has forked, while the copy makes its namespaces.
    let id = format!("sb-{}", alcove_sys::process::random_id());
    let dir = persist::sandbox_dir(&engine.sandboxes_dir(), &id)
        .map_err(SandboxesError::io("naming the sandbox's directory"))?;
    persist::create_home(&dir, disk, owner).map_err(SandboxesError::io("mounting the home"))?;
    let unmade = super::live::Unmade::new(dir.clone());
    let home = persist::home_of(&dir);
    let budget = Budget {
        bytes: disk,
        entries: super::templates::MAX_ENTRIES,
    };
    let home_c = std::ffi::CString::new(home.as_os_str().as_encoded_bytes())
        .map_err(|_| SandboxesError::Start("the home's path holds a NUL byte".into()))?;
    let tree = alcove_sys::mount::clone_tree(&home_c)
        .and_then(|tree| {
            alcove_sys::mount::set_attributes(
                tree.as_fd(),
                alcove_sys::mount::MOUNT_ATTR_NOSUID | alcove_sys::mount::MOUNT_ATTR_NODEV,
            )
            .map(|()| tree)
        })
        .map_err(SandboxesError::io("cloning the new home's mount"))?;

    let sandbox_limits = alcove_sandbox::Limits {
        memory_bytes: limits.memory_bytes,
        cpus: limits.cpus,
        pids: limits.pids,
        ..Default::default()
    };

    // Its sockets: the copy's steps, its agent's line, its interpreter's channel.
    let io = SandboxesError::io;
    let (steps, steps_child) =
        alcove_sys::unix::seqpacket_pair().map_err(io("making the fork's socket"))?;
    seqpacket::pass_credentials(steps.as_fd()).map_err(io("making the fork's socket"))?;
    let (daemon_end, agent_end) =
        alcove_sys::unix::seqpacket_pair().map_err(io("making the agent's socket"))?;
    for end in [&daemon_end, &agent_end] {
        seqpacket::force_send_buffer(end.as_fd(), alcove_agent::protocol::SOCKET_BUFFER)
            .map_err(io("sizing the agent's socket"))?;
    }
    let (control, control_child) =
        std::os::unix::net::UnixStream::pair().map_err(io("making the interpreter's socket"))?;
    control
        .set_nonblocking(true)
        .map_err(io("making the interpreter's socket"))?;
    let (out_read, out_write) = alcove_sys::fd::pipe_cloexec().map_err(io("making a pipe"))?;
    let (err_read, err_write) = alcove_sys::fd::pipe_cloexec().map_err(io("making a pipe"))?;

    let mut agent_env = agent_env;
    agent_env.push((FORK_INIT_ENV.to_owned(), "1".to_owned()));
    let request = serde_json::json!({
        "type": "fork",
        "id": id,
        "agent": { "argv": &agent_argv, "env": agent_env, "link_fd": AGENT_LINK_FD },
        "home": HOME,
        "tmpfs_size": disk,
        "unshare_flags": alcove_sandbox::COPY_UNSHARE_FLAGS,
    });
    let control_child: OwnedFd = control_child.into();
    let sent = session
        .send_fork(
            &request,
            &[
                steps_child.as_fd(),
                tree.as_fd(),
                agent_end.as_fd(),
                control_child.as_fd(),
                out_write.as_fd(),
                err_write.as_fd(),
            ],
        )
        .await;
    if let Err(e) = sent {
        // Its stream may hold part of a line: the next call starts a fresh session.
        if let Some(old) = slot.take() {
            let _ = parent.link.signal(old.pid(), libc::SIGKILL).await;
        }
        return Err(e);
    }
    drop((
        steps_child,
        tree,
        agent_end,
        control_child,
        out_write,
        err_write,
    ));

    let t_sent = t0.elapsed();
    let (log_read, log_write) =
        alcove_sys::fd::pipe_cloexec().map_err(io("making the agent's log pipe"))?;
    let copying = Copying {
        steps,
        parent_proc,
        limits: sandbox_limits,
        agent_log: log_write,
        daemon_end,
        channel: Channel {
            control,
            stdout: out_read,
            stderr: err_read,
        },
    };
    // A copy that failed is killed (its cgroup removed) before this returns:
    // the session waits for its child before it answers.
    let made = make_copy(parent, copying, home, owner, budget, t0).await;
    let answer = session.fork_answer().await;
    if let Err(e) = &answer {
        tracing::warn!(sandbox = %parent.id, error = %e, "the interpreter's fork answer");
    }
    if answer.is_err() {
        // It did not answer as it should: the next call starts a fresh one.
        if let Some(old) = slot.take() {
            let _ = parent.link.signal(old.pid(), libc::SIGKILL).await;
        }
    }
    drop(slot);
    let answered = answer.is_ok();
    let made = match (made, answer) {
        (Ok(made), _) => made,
        // The session said why it did not fork (threads, shared memory): the
        // caller can fix that.
        (Err(_), Ok(Some(refusal))) if refusal.before_fork => {
            return Err(SandboxesError::Conflict(refusal.why))
        }
        (Err(e), _) => return Err(e),
    };
    let Made {
        cgroup,
        pidfd,
        proc_dir: made_proc_dir,
        steps,
        link,
        interpreter,
        interpreter_pidfd,
        isolate_us,
        steps_at,
    } = made;
    // The session's child has ended (the session reaps it before its
    // answer), so the parent's agent is now the interpreter's parent: it
    // watches it through this pidfd and reaps it as it ends, which is when
    // the copy's agent can read how it ended. Without this it is reaped at
    // the parent agent's once-a-second look for orphans. Not waited for.
    if answered {
        let parent_link = parent.link.clone();
        tokio::spawn(async move {
            if let Err(e) = parent_link.reap_when_ended(interpreter_pidfd.as_fd()).await {
                tracing::warn!(error = %e, "the parent's agent could not watch a fork's interpreter");
            }
        });
    }

    // Its run: supervised as an adopted process, like a warm copy.
    let mut spec = SandboxSpec::new(agent_argv.iter().map(Into::into).collect());
    spec.stdio = alcove_sandbox::Stdio::Capture { stdin: Vec::new() };
    spec.limits.memory_bytes = limits.memory_bytes;
    spec.limits.pids = limits.pids;
    spec.limits.cpus = limits.cpus;
    spec.limits.output_bytes = Some(64 << 10);
    let mut policy = alcove_monitor::SandboxPolicy::default();
    if let Some(guard) = &req.guard {
        policy = super::live::guard_policy(guard, NetMode::None, &mut spec)?;
    }
    let ruled = !policy.is_empty();
    let watch = if ruled {
        let cell = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (watch, _) = engine
            .guard_sandbox(&id, policy, cell)
            .map_err(SandboxesError::Start)?;
        Some(watch)
    } else {
        engine.watch_sandbox(&id)
    };
    let cgroup_dir = Arc::new(Mutex::new(None));
    let mut observer = SandboxObserver {
        cgroup: Arc::clone(&cgroup_dir),
        watch,
        required: ruled,
    };
    let (kill_read, kill_write) =
        alcove_sys::fd::pipe_cloexec().map_err(io("making the sandbox's kill pipe"))?;
    let usage = Arc::new(UsageWatch::new());
    let options = RunOptions {
        forward_signals: false,
        collect_usage: false,
        cancel: vec![Arc::new(kill_read), Arc::clone(&engine.cancel)],
        watch: Some(Arc::clone(&usage)),
    };
    let (ended_tx, ended) = watch::channel(false);
    let end_reason = Arc::new(Mutex::new(None));
    let end_reason_set = Arc::clone(&end_reason);
    engine.emit_sandbox(
        &id,
        serde_json::json!({ "event": "sandbox_start", "watched": observer.watch.is_some(), "forked_from": parent.id }),
    );
    let events = Arc::downgrade(engine);
    let event_id = id.clone();
    let mut cgroup = cgroup;
    let adopted = alcove_sandbox::Adopted {
        pidfd,
        cgroup: cgroup.take(),
        connection: steps,
        take_us: 0.0,
        isolate_us,
    };
    std::thread::Builder::new()
        .name("alcove-sandbox".into())
        .spawn(move || {
            // The agent has its stdio already (its log pipe).
            let mut hand_over =
                |_: BorrowedFd<'_>, _: &[u8], _: [BorrowedFd<'_>; 3]| Ok::<(), std::io::Error>(());
            let result = alcove_sandbox::run_adopted(
                adopted,
                &spec,
                &options,
                &mut observer,
                &mut hand_over,
            )
            .map_err(|e| alcove_sandbox::error_chain(&e));
            if let Some(why) = run_ended(&events, &event_id, result, &observer, &end_reason_set) {
                tracing::warn!(sandbox = %event_id, %why, "a forked sandbox's run failed");
            }
            ended_tx.send_replace(true);
        })
        .map_err(io("starting the sandbox's thread"))?;

    log_agent(log_read, id.clone());
    let interpreter = interpreter.adopt(&link).await.map_err(|e| match e {
        SandboxesError::ForkFailed(_) => e,
        other => SandboxesError::ForkFailed(format!("the copy's interpreter: {other}")),
    });
    let t_adopted = t0.elapsed();
    let interpreter = match interpreter {
        Ok(interpreter) => interpreter,
        Err(e) => {
            drop(kill_write); // ends the run; its thread removes the cgroup
            return Err(e);
        }
    };
    let proc_dir = Some(made_proc_dir);
    let netns = proc_dir
        .as_ref()
        .and_then(|d| std::fs::File::open(format!("/proc/self/fd/{}/ns/net", d.as_raw_fd())).ok())
        .map(OwnedFd::from);
    let created_at = now();
    let timeout_s = req.timeout_s.unwrap_or(super::DEFAULT_TIMEOUT_S);
    let idle_pause_s = req.idle_pause_s.unwrap_or(0);
    let sandbox = LiveSandbox::assemble(Parts {
        id,
        link,
        netns,
        proc_dir,
        created_at,
        timeout_s,
        expires_at: created_at + timeout_s as f64,
        idle_pause_s,
        request: req,
        owner,
        dir,
        net: NetMode::None,
        limits,
        cgroup: cgroup_dir,
        usage,
        kill: kill_write,
        ended,
        end_reason,
        interpreter: Some(interpreter),
        nested_in: Some(parent.id.clone()),
    });
    sandbox.save_first_record().await?;
    unmade.keep();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    tracing::info!(
        sandbox = %sandbox.id,
        parent = %parent.id,
        sent_ms = ms(t_sent),
        child_ms = ms(steps_at.child),
        moved_ms = ms(steps_at.moved),
        files_ms = ms(steps_at.files),
        left_ms = ms(steps_at.left),
        link_ms = ms(steps_at.link),
        checked_ms = ms(steps_at.checked),
        interpreter_ms = ms(steps_at.interpreter),
        adopted_ms = ms(t_adopted),
        ms = ms(t0.elapsed()),
        "forked with its interpreter's memory"
    );
    Ok(sandbox)
}

/// Marks a sandbox as being forked from while it lives.
struct Forking<'a>(&'a LiveSandbox);

impl Drop for Forking<'_> {
    fn drop(&mut self) {
        self.0
            .forking
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The new sandbox's cgroup until its run takes it: removed (after its
/// processes are killed) if the fork fails before.
struct CgroupGuard(Option<alcove_cgroup::SandboxCgroup>);

impl CgroupGuard {
    fn get(&self) -> &alcove_cgroup::SandboxCgroup {
        self.0.as_ref().expect("held until taken")
    }

    fn take(&mut self) -> alcove_cgroup::SandboxCgroup {
        self.0.take().expect("taken once")
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            cgroup.kill_all();
            if let Err(e) = cgroup.remove() {
                tracing::warn!(error = %e, "a failed fork's cgroup could not be removed (alcove gc removes it)");
            }
        }
    }
}

/// What the copy's side is made with.
struct Copying {
    steps: OwnedFd,
    /// The parent's agent's /proc directory.
    parent_proc: OwnedFd,
    /// Its cgroup's, made while the session forks.
    limits: alcove_sandbox::Limits,
    agent_log: OwnedFd,
    /// The daemon's end of the new agent's socket.
    daemon_end: OwnedFd,
    /// The daemon's ends of the new interpreter's channel.
    channel: Channel,
}

/// The new sandbox, checked: its agent (pid 1) and its interpreter, alone
/// in its cgroup.
struct Made {
    /// Held (killed and removed if the fork fails) until its run takes it.
    cgroup: CgroupGuard,
    /// The agent's.
    pidfd: OwnedFd,
    /// The agent's /proc directory (the new sandbox's root and network namespace).
    proc_dir: OwnedFd,
    /// The fork's socket (closed by the copy: it has left).
    steps: OwnedFd,
    link: AgentLink,
    /// Checked: its pid is the one the kernel gives the second process.
    interpreter: ForkedInterpreter,
    /// The interpreter's, for its new parent (the parent sandbox's agent).
    interpreter_pidfd: OwnedFd,
    isolate_us: f64,
    steps_at: StepTimes,
}

/// When each of the copy's steps was done, from the fork's start (logged).
struct StepTimes {
    child: Duration,
    moved: Duration,
    files: Duration,
    left: Duration,
    link: Duration,
    checked: Duration,
    interpreter: Duration,
}

/// The copy's side of the fork, step by step (alcove_fork.py): its cgroup
/// is made while the session forks; the session's child says `child` and
/// is moved into it; told `moved` (with the agent's log pipe), it spawns
/// the agent while the files are copied; on `go` it mounts the new home,
/// forks the interpreter and says `left`; once the agent is ready, every
/// process in the cgroup is checked. An error says why; the cgroup (with
/// anything in it) is removed before it returns.
async fn make_copy(
    parent: &LiveSandbox,
    copying: Copying,
    home: std::path::PathBuf,
    owner: (u32, u32),
    budget: Budget,
    t0: Instant,
) -> Result<Made, SandboxesError> {
    let Copying {
        steps,
        parent_proc,
        limits,
        agent_log,
        daemon_end,
        channel,
    } = copying;
    let t_start = Instant::now();
    let deadline = t_start + STEP;
    let failed = SandboxesError::ForkFailed;
    let thread = |_| SandboxesError::Start("the fork's thread failed".into());
    let (first, steps, parent_proc) = tokio::task::spawn_blocking(move || {
        let cgroup = match alcove_sandbox::adoption_cgroup(&limits) {
            Ok(cgroup) => CgroupGuard(Some(cgroup)),
            Err(e) => {
                let e = SandboxesError::Start(alcove_sandbox::error_chain(&e));
                return (Err(e), steps, parent_proc);
            }
        };
        let first = first_word(steps.as_fd(), parent_proc.as_fd(), cgroup.get(), deadline)
            .and_then(|moved| {
                // It spawns its agent now, in its cgroup, while the files are copied.
                seqpacket::send(steps.as_fd(), b"moved", &[agent_log.as_fd()])
                    .map_err(|e| format!("telling the copy: {e}"))?;
                Ok(moved)
            })
            .map(|(child, t_child)| (child, t_child, cgroup))
            .map_err(failed);
        (first, steps, parent_proc)
    })
    .await
    .map_err(thread)?;
    let (child, t_child, cgroup) = first?;
    let t_child = t_child.duration_since(t0);
    let t_moved = t0.elapsed();

    // Its files: the parent is frozen (unless nothing but its agent and its
    // interpreter, waiting for its child, run there), the copy is not (it
    // left the parent's cgroup), and mounts its home only after `go`.
    parent
        .with_home_still(2, move |from| {
            let to = open_dir(&home)?;
            copy_tree(from, to.as_fd(), owner, budget)
        })
        .await?;
    let t_files = t0.elapsed();

    let (left, steps, child) = tokio::task::spawn_blocking(move || {
        let left = go_and_wait(steps.as_fd(), &child, deadline);
        (left, steps, child)
    })
    .await
    .map_err(thread)?;
    left.map_err(failed)?;
    let t_left = t0.elapsed();
    // The agent says ready once it has dropped its capability, and is then
    // checked with the rest; the interpreter says ready meanwhile. A failed
    // check removes the cgroup, which ends the interpreter's wait; a silent
    // interpreter is waited for until its deadline.
    let within = deadline.saturating_duration_since(Instant::now());
    let agent_checked = async move {
        let (link, _) = AgentLink::connect(daemon_end, within)
            .await
            .map_err(|e| failed(format!("the copy's agent: {e}")))?;
        let t_link = t0.elapsed();
        let (checked, cgroup) = tokio::task::spawn_blocking(move || {
            let checked = check_copy(cgroup.get(), parent_proc.as_fd(), &child);
            (checked.map(|c| (c, t0.elapsed())), cgroup)
        })
        .await
        .map_err(thread)?;
        let checked = checked.map_err(|why| failed(format!("the copy was refused: {why}")))?;
        Ok::<_, SandboxesError>((link, t_link, checked, cgroup))
    };
    let interpreter_ready = async {
        let ready = ForkedInterpreter::ready(channel).await;
        (ready, t0.elapsed())
    };
    let (agent_checked, (interpreter, t_interpreter)) =
        tokio::join!(agent_checked, interpreter_ready);
    let (link, t_link, (checked, t_checked), cgroup) = agent_checked?;
    let interpreter = interpreter.map_err(|e| match e {
        SandboxesError::ForkFailed(_) => e,
        other => failed(format!("the copy's interpreter: {other}")),
    })?;
    if interpreter.pid != checked.interpreter_pid {
        return Err(failed(format!(
            "the copy's interpreter says it is pid {}, the kernel says {}",
            interpreter.pid, checked.interpreter_pid
        )));
    }
    Ok(Made {
        cgroup,
        pidfd: checked.agent_pidfd,
        proc_dir: checked.agent_proc_dir,
        steps,
        link,
        interpreter,
        interpreter_pidfd: checked.interpreter_pidfd,
        isolate_us: t_start.elapsed().as_secs_f64() * 1e6,
        steps_at: StepTimes {
            child: t_child,
            moved: t_moved,
            files: t_files,
            left: t_left,
            link: t_link,
            checked: t_checked,
            interpreter: t_interpreter,
        },
    })
}

/// The session's child, moved into the new cgroup.
struct Child {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// What its /proc/PID/cgroup says there.
    expected_cgroup: String,
}

/// Waits for the session's child's first word and moves it into `cgroup`
/// (it must come from the parent's), and says when the word came. Killed
/// if refused.
fn first_word(
    steps: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    cgroup: &alcove_cgroup::SandboxCgroup,
    deadline: Instant,
) -> Result<(Child, Instant), String> {
    let parent_cgroup =
        std::fs::read_to_string(format!("/proc/self/fd/{}/cgroup", parent.as_raw_fd()))
            .map_err(|e| format!("reading the sandbox's cgroup: {e}"))?;
    let child = receive(steps, "child", deadline)?;
    let t_child = Instant::now();
    let pidfd = seqpacket::pidfd_open(child).map_err(|e| format!("pidfd_open: {e}"))?;
    let kill = || {
        let _ = alcove_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
    };
    let cgroup_of = || {
        std::fs::read_to_string(format!("/proc/{child}/cgroup"))
            .map_err(|e| format!("reading /proc/{child}/cgroup: {e}"))
    };
    if cgroup_of()? != parent_cgroup {
        kill();
        return Err("the fork's first word came from outside the sandbox".into());
    }
    if let Err(e) = cgroup.adopt(child) {
        kill();
        return Err(format!("moving the copy into its cgroup: {e}"));
    }
    let expected_cgroup = cgroup_of()?;
    let child = Child {
        pid: child,
        pidfd,
        expected_cgroup,
    };
    Ok((child, t_child))
}

/// Says `go` (its files are there) and waits for the copy's word `left`:
/// it has made the new sandbox's interpreter. It is then killed (it was
/// ending anyway): with SIGKILL pending, no thread of it runs its own code
/// again and a fork it is making fails, so what it made is all in the
/// cgroup to be checked.
fn go_and_wait(steps: BorrowedFd<'_>, child: &Child, deadline: Instant) -> Result<(), String> {
    seqpacket::send(steps, b"go", &[]).map_err(|e| format!("telling the copy: {e}"))?;
    receive(steps, "left", deadline)?;
    let _ = alcove_sys::pidfd::send_signal(child.pidfd.as_fd(), libc::SIGKILL);
    Ok(())
}

/// The new sandbox's processes, checked.
struct Checked {
    agent_pidfd: OwnedFd,
    agent_proc_dir: OwnedFd,
    interpreter_pid: libc::pid_t,
    interpreter_pidfd: OwnedFd,
}

/// One process of the copy, read from /proc while its pidfd says it lives.
struct Seen {
    pidfd: OwnedFd,
    proc_dir: OwnedFd,
    /// Its pid in its own pid namespace.
    inner_pid: libc::pid_t,
    /// Its pid namespace's depth ([`pid_depth`]).
    depth: usize,
    namespaces: Vec<std::path::PathBuf>,
}

/// Checks every process in the copy's cgroup from the kernel's word, not
/// theirs: exactly two, pid 1 of a pid namespace one level below the
/// parent's (the agent) and one more process of it (the interpreter), in
/// the same namespaces, none of them the parent's, in the copy's cgroup,
/// holding no capability, with no_new_privs, a seccomp filter and one
/// thread each, and nothing new in the cgroup once they are checked. A
/// process made before its maker dropped a capability would be in the
/// cgroup (listed again at the end; cgroup2 lists whole processes, every
/// thread of them); one made after inherits what was checked. The
/// session's child, killed at its `left`, may still be ending: it is
/// passed over (it runs nothing of its own again).
fn check_copy(
    cgroup: &alcove_cgroup::SandboxCgroup,
    parent: BorrowedFd<'_>,
    child: &Child,
) -> Result<Checked, String> {
    let parent_path = format!("/proc/self/fd/{}", parent.as_raw_fd());
    let parents: Vec<_> = NAMESPACES
        .iter()
        .map(|ns| std::fs::read_link(format!("{parent_path}/ns/{ns}")))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading the sandbox's namespaces: {e}"))?;
    let parent_depth = std::fs::read_to_string(format!("{parent_path}/status"))
        .ok()
        .and_then(|status| pid_depth(&status))
        .ok_or("reading the sandbox's pid namespace depth")?;
    let ending = alcove_sys::pidfd::send_signal(child.pidfd.as_fd(), 0)
        .is_ok()
        .then_some(child.pid);
    let listed = cgroup_members(cgroup)?;
    let others: Vec<_> = listed
        .iter()
        .copied()
        .filter(|&pid| Some(pid) != ending)
        .collect();
    if others.len() != 2 {
        return Err(format!(
            "its cgroup holds {others:?} besides the session's child, not its agent and its \
             interpreter alone"
        ));
    }
    let mut seen = Vec::with_capacity(2);
    for &pid in &others {
        seen.push(check_process(pid, &child.expected_cgroup, &parents)?);
    }
    let (agent, interpreter) = match (seen.pop(), seen.pop()) {
        (Some(a), Some(b)) if a.inner_pid == 1 => (a, b),
        (Some(a), Some(b)) if b.inner_pid == 1 => (b, a),
        _ => return Err("neither of its processes is pid 1 of its own pid namespace".into()),
    };
    if agent.namespaces != interpreter.namespaces {
        return Err("its agent and its interpreter are in different namespaces".into());
    }
    // Its pid namespace a child of the parent's, not a grandchild: whatever
    // made a namespace between them would be outside this cgroup.
    if agent.depth != parent_depth + 1 {
        return Err(format!(
            "its pid namespace is {} levels below its parent's, not one",
            agent.depth.saturating_sub(parent_depth)
        ));
    }
    let mut again = cgroup_members(cgroup)?;
    again.retain(|&pid| Some(pid) != ending);
    if again != others {
        return Err("a process was made in its cgroup while it was checked".into());
    }
    drop(interpreter.proc_dir);
    Ok(Checked {
        agent_pidfd: agent.pidfd,
        agent_proc_dir: agent.proc_dir,
        interpreter_pid: interpreter.inner_pid,
        interpreter_pidfd: interpreter.pidfd,
    })
}

/// How many pid namespaces a process's pid is in (its NSpid line's fields):
/// its namespace's depth, the host's counting 1.
fn pid_depth(status: &str) -> Option<usize> {
    let fields = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .count();
    (fields > 0).then_some(fields)
}

/// One process of the copy, checked.
fn check_process(
    pid: libc::pid_t,
    expected_cgroup: &str,
    parents: &[std::path::PathBuf],
) -> Result<Seen, String> {
    let pidfd = seqpacket::pidfd_open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
    // Read through its /proc directory, opened while the pidfd says it lives
    // (a number reused after its end cannot stand in).
    let proc_dir = std::fs::File::open(format!("/proc/{pid}"))
        .map_err(|e| format!("opening /proc/{pid}: {e}"))?;
    if alcove_sys::pidfd::send_signal(pidfd.as_fd(), 0).is_err() {
        return Err(format!("its process {pid} ended"));
    }
    let dir = format!("/proc/self/fd/{}", proc_dir.as_raw_fd());
    let text = |file: &str| {
        std::fs::read_to_string(format!("{dir}/{file}"))
            .map_err(|e| format!("reading /proc/{pid}/{file}: {e}"))
    };
    if text("cgroup")? != expected_cgroup {
        return Err(format!("its process {pid} is not in its cgroup"));
    }
    let mut namespaces = Vec::with_capacity(NAMESPACES.len());
    for (ns, parents) in NAMESPACES.iter().zip(parents) {
        match std::fs::read_link(format!("{dir}/ns/{ns}")) {
            Ok(theirs) if theirs != *parents => namespaces.push(theirs),
            Ok(_) => return Err(format!("its process {pid} shares the {ns} namespace")),
            Err(_) => {
                return Err(format!(
                    "the {ns} namespace of its process {pid} cannot be read"
                ))
            }
        }
    }
    let status = text("status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("")
    };
    let no_caps = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
        .iter()
        .all(|c| field(c).bytes().all(|b| b == b'0') && !field(c).is_empty());
    let checks = [
        (no_caps, "holds capabilities"),
        (field("NoNewPrivs") == "1", "has no no_new_privs"),
        (field("Seccomp") == "2", "has no seccomp filter"),
        (field("Threads") == "1", "runs more than one thread"),
    ];
    if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(format!("its process {pid} {why}"));
    }
    let inner_pid = field("NSpid")
        .split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("its process {pid} has no pid of its own namespace"))?;
    let depth = pid_depth(&status).unwrap_or(0);
    Ok(Seen {
        pidfd,
        proc_dir: proc_dir.into(),
        inner_pid,
        depth,
        namespaces,
    })
}

/// The pids in `cgroup`'s cgroup2 directory, which lists whole processes
/// (a v1 move of the one thread a pid names would leave its other threads,
/// and what they fork, outside). A fork with memory needs one: its source
/// is frozen through it too.
fn cgroup_members(cgroup: &alcove_cgroup::SandboxCgroup) -> Result<Vec<libc::pid_t>, String> {
    let dir = cgroup
        .unified_dir()
        .ok_or("a fork with memory needs the cgroup2 tree, and this host gives none")?;
    let listed = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| format!("listing its cgroup: {e}"))?;
    let mut pids: Vec<libc::pid_t> = listed
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Waits (until `deadline`: the whole copy has [`STEP`]) for the copy's
/// next word, which starts with `expected`: the pid the kernel says sent
/// it. A failure report or silence is the error.
fn receive(
    steps: BorrowedFd<'_>,
    expected: &str,
    deadline: Instant,
) -> Result<libc::pid_t, String> {
    let mut polled = [libc::pollfd {
        fd: steps.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let left = deadline.saturating_duration_since(Instant::now());
    match alcove_sys::fd::poll(&mut polled, Some(left)) {
        Ok(0) => return Err(format!("the copy did not say {expected} within {STEP:?}")),
        Ok(_) => {}
        Err(e) => return Err(format!("waiting for the copy: {e}")),
    }
    let mut buf = [0u8; 4096];
    let (n, pid) = seqpacket::recv_credentials(steps, &mut buf)
        .map_err(|e| format!("reading the copy's word: {e}"))?;
    let word = String::from_utf8_lossy(&buf[..n]);
    match pid {
        Some(pid) if pid > 0 && word.starts_with(expected) => Ok(pid),
        _ if n == 0 => Err("the copy ended before it was made".into()),
        _ => Err(format!("the copy said: {}", word.trim())),
    }
}

/// The parent's agent's environment (what it was started with), its
/// socket's number made the new agent's: `[[KEY, VALUE], ...]`.
fn agent_environment(parent: BorrowedFd<'_>) -> Result<Vec<(String, String)>, SandboxesError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/self/fd/{}/environ", parent.as_raw_fd()))
        .and_then(|f| f.take(MAX_ENVIRON).read_to_end(&mut bytes))
        .map_err(SandboxesError::io(
            "reading the sandbox agent's environment",
        ))?;
    let mut env: Vec<(String, String)> = bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (k, v) = text.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let Some(fd) = env.iter_mut().find(|(k, _)| k == AGENT_FD_ENV) else {
        return Err(SandboxesError::Start(
            "the sandbox agent's environment has no socket".into(),
        ));
    };
    fd.1 = AGENT_LINK_FD.to_string();
    Ok(env)
}

/// Logs what the forked sandbox's agent writes (its stdout and stderr), up
/// to 64 KiB, when it ends.
fn log_agent(log: OwnedFd, id: String) {
    use std::io::Read;
    let reading = std::thread::Builder::new()
        .name("fork agent log".into())
        .spawn(move || {
            let mut said = Vec::new();
            let _ = std::fs::File::from(log).take(64 << 10).read_to_end(&mut said);
            let said = String::from_utf8_lossy(&said);
            if !said.trim().is_empty() {
                tracing::info!(sandbox = %id, agent_stderr = ?said.trim(), "a forked sandbox's agent said");
            }
        });
    if let Err(e) = reading {
        tracing::warn!(error = %e, "cannot read a forked sandbox's agent log");
    }
}
