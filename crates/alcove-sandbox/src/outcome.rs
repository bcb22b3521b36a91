//! How a sandbox ended and what it used: the outcome and its JSON report.

use serde::Serialize;
use std::time::Duration;

/// Why the sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The program exited on its own.
    Exited,
    /// A signal ended the program (not one alcove sent for a limit).
    Signaled,
    /// alcove killed it at the wall-clock limit.
    Timeout,
    /// alcove killed it at the CPU-time limit.
    CpuTime,
    /// The kernel's OOM killer acted inside the sandbox's memory limit.
    Oom,
    /// A policy enforced in the kernel (a syscall, CPU or wall budget) killed it;
    /// `reason` says which.
    KilledByPolicy,
    /// Its caller stopped it before it ended (a daemon shutting down);
    /// `reason` says why.
    Cancelled,
    /// alcove itself could not run the sandbox.
    Error,
}

/// How long each part of a sandbox's life took, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Parent-side preparation: cgroups, pipes, the plan.
    pub prepare_us: f64,
    /// From the clone3 call until the child ran.
    pub clone_us: f64,
    /// Joining cgroups and namespaces, loopback.
    pub namespaces_us: f64,
    /// Building the filesystem and pivoting into it.
    pub mounts_us: f64,
    /// Hostname, rlimits, credentials, capabilities, seccomp.
    pub harden_us: f64,
    /// From just before execve until the kernel committed to the new program.
    pub exec_us: f64,
    /// From exec until the sandbox's last process was reaped.
    pub run_us: f64,
    /// Reading usage and removing the cgroups.
    pub teardown_us: f64,
}

/// Where a warm invocation's time went, in microseconds: the request path
/// (take, hand, user code, response) and what was done off it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WarmPhases {
    /// Taking a checked copy from the pool (waiting for one when it was empty).
    pub take_us: f64,
    /// Off the request path, before it: fork, the copy's fresh namespaces and
    /// mounts, its cgroup and alcove's checks.
    pub isolate_us: f64,
    /// From the request leaving alcove until the handler was entered.
    pub hand_us: f64,
    /// The handler itself, as the copy measured it.
    pub user_us: f64,
    /// From the handler's return until alcove saw the copy gone and its output in.
    pub response_us: f64,
    /// Handing the copy's remains to the teardown thread, which kills what is
    /// left and removes its cgroup off the response path.
    pub teardown_us: f64,
}

/// The result of one sandbox run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    /// Exit code, when the program exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the program, when one did.
    pub signal: Option<i32>,
    pub wall_ms: f64,
    pub cpu_user_ms: f64,
    pub cpu_sys_ms: f64,
    pub memory_peak_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    /// Whether stdout or stderr was cut at the output limit.
    pub output_truncated: bool,
    /// Which of the two captured streams was cut.
    #[serde(skip)]
    pub stdout_truncated: bool,
    #[serde(skip)]
    pub stderr_truncated: bool,
    /// With [`Stdio::Stream`](crate::Stdio::Stream): its reader went away or
    /// stopped reading, so part of stdout never reached it.
    #[serde(skip)]
    pub stdout_undelivered: bool,
    /// The sandbox's cgroup2 id, where a cgroup2 tree is mounted.
    pub cgroup_id: Option<u64>,
    /// Why a policy killed the sandbox, with `killed_by_policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
    /// For a warm invocation (a copy of a template), where its time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmPhases>,
    /// What the program wrote, with [`Stdio::Capture`](crate::Stdio::Capture).
    #[serde(skip)]
    pub stdout: Vec<u8>,
    #[serde(skip)]
    pub stderr: Vec<u8>,
}

impl Outcome {
    /// The exit code a shell would see: the program's own, or 128+N for signal N.
    pub fn shell_exit_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 125,
        }
    }

    pub(crate) fn wall(&mut self, wall: Duration) {
        self.wall_ms = wall.as_secs_f64() * 1e3;
    }
}
