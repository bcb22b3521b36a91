//! Supervising a process alcove did not start: a warm template's copy
//! (alcove-warm checked it and moved it into its own cgroup). It gets its
//! request's stdio like any sandbox and is watched to the same [`Outcome`]:
//! limits, cancellation, output caps and streaming, the observer, usage.

use crate::run::{output_pipes, RunOptions};
use crate::supervise::{self, Reap, Supervision};
use crate::{Observer, Outcome, SandboxError, SandboxSpec, Stdio, WarmPhases};
use alcove_cgroup::{Controller, CpuQuota, SandboxCgroup};
use alcove_sys::{fd, process};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};

/// A checked copy, ready for one request.
pub struct Adopted {
    pub pidfd: OwnedFd,
    /// Its own cgroup, holding it, with the function's limits applied.
    pub cgroup: SandboxCgroup,
    /// Its connection: the request goes out on it, its exit report comes back.
    pub connection: OwnedFd,
    /// How long taking it from the pool took, and how long making it took.
    pub take_us: f64,
    pub isolate_us: f64,
}

/// A fresh cgroup, with `limits` applied, for a process alcove will adopt (a
/// warm copy): named like a sandbox's, so `alcove gc` removes it if this
/// alcove dies before it does.
pub fn adoption_cgroup(limits: &crate::Limits) -> Result<SandboxCgroup, SandboxError> {
    let layout = crate::run::cgroup_layout()?;
    let mut controllers = vec![Controller::Memory, Controller::Pids];
    if limits.cpus.is_some() {
        controllers.push(Controller::Cpu);
    }
    let cgroup = SandboxCgroup::create(layout, &crate::run::unique_name(), &controllers)
        .map_err(SandboxError::Cgroup)?;
    let wanted = alcove_cgroup::Limits {
        memory_bytes: limits.memory_bytes,
        cpu: limits.cpus.map(CpuQuota::from_cpus),
        pids_max: limits.pids,
    };
    if let Err(e) = cgroup.apply(&wanted, Some(&alcove_cgroup::Limits::default())) {
        let _ = cgroup.remove();
        return Err(SandboxError::Cgroup(e));
    }
    Ok(cgroup)
}

/// Sends the request to a copy: its whole environment as `KEY=VALUE\0`
/// entries and its stdin, stdout and stderr (docs/warm-protocol.md, message 4).
pub type HandOver<'a> =
    dyn FnMut(BorrowedFd<'_>, &[u8], [BorrowedFd<'_>; 3]) -> io::Result<()> + 'a;

/// Gives `adopted` the request `spec` describes (its environment, stdin and
/// stdio; its argv, mounts and limits are the template's) and supervises it
/// to its end. The copy is used once: whatever is left of it is killed and
/// its cgroup removed before this returns.
pub fn run_adopted(
    adopted: Adopted,
    spec: &SandboxSpec,
    options: &RunOptions,
    observer: &mut dyn Observer,
    hand_over: &mut HandOver<'_>,
) -> Result<Outcome, SandboxError> {
    let t_start = process::monotonic_ns();
    let Adopted {
        pidfd,
        cgroup,
        connection,
        take_us,
        isolate_us,
    } = adopted;
    let finish = tear_down_later;
    if !matches!(spec.stdio, Stdio::Capture { .. } | Stdio::Stream { .. }) {
        let _ = alcove_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
        finish(cgroup);
        return Err(SandboxError::Prepare {
            what: "giving a warm copy its request (it needs captured stdio)",
            source: io::Error::from(io::ErrorKind::Unsupported),
        });
    }
    let prepared = (|| {
        let prepare = |what| move |source| SandboxError::Prepare { what, source };
        let (outputs, child_stdio) = output_pipes(spec)?;
        let (error_read, error_write) =
            fd::pipe_cloexec().map_err(prepare("creating the error pipe"))?;
        let (lifeline_read, lifeline_write) =
            fd::pipe_cloexec().map_err(prepare("creating the lifeline pipe"))?;
        drop((error_write, lifeline_read)); // nothing reports setup: it was done before
        Ok::<_, SandboxError>((outputs, child_stdio, error_read, lifeline_write))
    })();
    let (outputs, child_stdio, error_read, lifeline_write) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = alcove_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
            finish(cgroup);
            return Err(e);
        }
    };
    let by_number = |n: i32| {
        child_stdio
            .iter()
            .find(|(_, t)| *t == n)
            .map(|(fd, _)| fd.as_fd())
            .expect("captured stdio has 0, 1 and 2")
    };
    let env = environment_block(spec);
    observer.already_running();
    if let Err(e) = observer.before_start(cgroup.id().zip(cgroup.unified_dir())) {
        let _ = alcove_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
        finish(cgroup);
        return Err(SandboxError::Observer(e));
    }
    let t_hand = process::monotonic_ns();
    let handed = hand_over(
        connection.as_fd(),
        &env,
        [by_number(0), by_number(1), by_number(2)],
    );
    drop(child_stdio);
    if let Err(source) = handed {
        let _ = alcove_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
        observer.after_end();
        finish(cgroup);
        return Err(SandboxError::Prepare {
            what: "handing the request to a warm copy",
            source,
        });
    }
    let supervision = Supervision {
        pidfd,
        error_pipe: error_read,
        lifeline: lifeline_write,
        outputs,
        signals: None,
        cancel: &options.cancel,
        cgroup: &cgroup,
        limits: &spec.limits,
        collect_usage: options.collect_usage,
        baseline: crate::pool::Baseline {
            memory_exact: true,
            pids_exact: true,
            ..Default::default()
        },
        plan: None,
        reap: Reap::Adopted(connection),
        program: spec.argv[0].to_string_lossy().into_owned(),
        t_start,
        t_clone: t_hand,
        observer: &mut *observer,
    };
    let watching = options
        .watch
        .as_deref()
        .map(|w| w.watch(&cgroup, Default::default()));
    let result = supervise::supervise(supervision, &|| None, &|| None);
    observer.after_end();
    drop(watching);
    let t_exit = process::monotonic_ns();
    let cgroup_id = cgroup.id();
    finish(cgroup);
    let (mut outcome, raw) = result?;
    outcome.cgroup_id = cgroup_id;
    let us = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3;
    // The copy's own word: believed only where it fits the times alcove saw.
    let (user_start, user_end) = raw
        .handler_ns
        .filter(|&(start, end)| t_hand <= start && start <= end && end <= t_exit)
        .unwrap_or((t_hand, t_hand));
    outcome.warm = Some(WarmPhases {
        take_us: take_us + us(t_start, t_hand),
        isolate_us,
        hand_us: us(t_hand, user_start),
        user_us: us(user_start, user_end),
        response_us: us(user_end, t_exit),
        teardown_us: us(t_exit, process::monotonic_ns()),
    });
    Ok(outcome)
}

/// Used copies' cgroups handed to the teardown thread and not yet removed.
static TEARDOWNS_PENDING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Kills what is left in a used copy's cgroup and removes it, on a worker
/// thread: a copy's exit tears down its memory and namespaces, which takes
/// milliseconds the response need not wait for. A daemon that stops waits
/// for these ([`wait_for_teardowns`]); if alcove dies first, the cgroup's
/// name leads `alcove gc` to it.
fn tear_down_later(cgroup: SandboxCgroup) {
    fn tear_down(cgroup: SandboxCgroup) {
        cgroup.kill_all();
        if let Err(e) = cgroup.remove() {
            eprintln!("alcove: warning: {e} (run `alcove gc` to clean up)");
        }
    }
    fn done_one() {
        let (count, changed) = &TEARDOWNS_PENDING;
        let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        changed.notify_all();
    }
    static WORKER: OnceLock<Option<mpsc::Sender<SandboxCgroup>>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (send, receive) = mpsc::channel::<SandboxCgroup>();
        std::thread::Builder::new()
            .name("copy teardown".into())
            .spawn(move || {
                receive.into_iter().for_each(|cgroup| {
                    tear_down(cgroup);
                    done_one();
                })
            })
            .ok()
            .map(|_| send)
    });
    match worker {
        Some(send) => {
            *TEARDOWNS_PENDING
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner()) += 1;
            if let Err(mpsc::SendError(cgroup)) = send.send(cgroup) {
                tear_down(cgroup);
                done_one();
            }
        }
        None => tear_down(cgroup),
    }
}

/// Waits, for up to `limit`, until every used copy's cgroup handed to the
/// teardown thread is removed (a stopping daemon calls it, so that none is
/// left behind); returns how many were still pending.
pub fn wait_for_teardowns(limit: std::time::Duration) -> usize {
    let (count, changed) = &TEARDOWNS_PENDING;
    let count = count.lock().unwrap_or_else(|e| e.into_inner());
    let (count, _) = changed
        .wait_timeout_while(count, limit, |pending| *pending > 0)
        .unwrap_or_else(|e| e.into_inner());
    *count
}

/// The environment the program would get from a cold start of `spec`, as
/// `KEY=VALUE\0` entries.
fn environment_block(spec: &SandboxSpec) -> Vec<u8> {
    let mut block = Vec::new();
    for entry in crate::run::environment(spec) {
        block.extend_from_slice(entry.as_bytes());
        block.push(0);
    }
    block
}
