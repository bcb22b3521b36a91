//! `alcove-accel serve` (part of the binary): a small supervising process
//! that makes the service's cgroup, starts the worker in it, and removes
//! the cgroup when the worker ends; and the worker, which joins the cgroup,
//! drops its privileges, opens the devices, installs its seccomp filter and
//! then serves. The supervisor stays outside the cgroup so that it can
//! remove it, and holds nothing a client can reach.

use alcove_accel::accel::Accel;
use alcove_accel::budget::MemoryBudget;
use alcove_accel::confine::{self, ServiceCgroup, ServiceLimits};
use alcove_accel::service::{serve_control, Service};
use anyhow::{bail, Context as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;

/// Memory the worker keeps beyond what it holds once started, for thread
/// stacks, message buffers and allocator slack: requests get the rest.
const HEADROOM: u64 = 64 << 20;

pub fn supervise(limits: ServiceLimits) -> anyhow::Result<()> {
    let cgroup = ServiceCgroup::create(limits)?;
    let mut worker = std::process::Command::new(
        std::env::current_exe().context("finding this program to start the worker")?,
    );
    worker
        .arg("worker")
        .arg("--memory-max")
        .arg(limits.memory_bytes.to_string());
    for dir in cgroup.dirs() {
        worker.arg("--cgroup").arg(dir);
    }
    // The worker inherits the control socket as its stdin.
    let spawned = worker.spawn();
    let status = match spawned {
        Ok(mut child) => {
            // Let go of the control socket: once the worker is gone, the
            // daemon's sends must fail at once, not queue up here.
            let null = std::fs::File::open("/dev/null")?;
            alcove_sys::fd::dup_onto(null.as_raw_fd(), 0)?;
            child.wait()
        }
        Err(e) => Err(e),
    };
    let oom_kills = cgroup.oom_kills();
    let removed = cgroup.remove();
    let status = status.context("starting the accelerator worker")?;
    removed?;
    if oom_kills > 0 {
        bail!(
            "the accelerator worker ran out of memory: its cgroup's limit is {} bytes (`alcove-accel serve --memory-max`)",
            limits.memory_bytes
        );
    }
    if !status.success() {
        bail!("the accelerator worker ended: {status}");
    }
    Ok(())
}

pub fn work(cgroups: &[PathBuf], memory_max: u64) -> anyhow::Result<()> {
    confine::join(cgroups)?;
    confine::drop_privileges()?;
    // After the uid change, which clears it; a supervisor gone already
    // means nobody would remove the cgroup: stop now.
    alcove_sys::process::set_parent_death_signal(libc::SIGKILL)?;
    if std::os::unix::process::parent_id() == 1 {
        bail!("the accelerator's supervising process is gone");
    }
    let accel = Accel::start();
    let started = resident_bytes().unwrap_or(0) + HEADROOM;
    let Some(mut budget) = memory_max.checked_sub(started).filter(|b| *b > 0) else {
        bail!(
            "the accelerator's memory limit ({memory_max} bytes) is below what it needs to start ({started}): raise --memory-max"
        );
    };
    // oneDNN keeps one scratch buffer between products: up to a quarter of
    // what requests would get, taken from them.
    if accel.cpu_paths.uses_onednn() {
        let quarter = usize::try_from(budget / 4).unwrap_or(usize::MAX);
        budget -= alcove_accel::cpu::onednn::limit_kept_scratch(quarter) as u64;
    }
    alcove_accel::seccomp::install(accel.has_gpu(), accel.cpu_paths.uses_onednn())?;
    // SAFETY: fd 0 is the control socket our supervisor handed us as stdin;
    // it is taken once, here, and nothing else in this process uses stdin.
    let control = unsafe { OwnedFd::from_raw_fd(0) };
    let service = Service {
        accel,
        memory: MemoryBudget::new(budget),
    };
    serve_control(std::sync::Arc::new(service), control);
    Ok(())
}

/// The resident memory of this process (`VmRSS`), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(
        kb.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?
            << 10,
    )
}

/// The limits from `serve`'s flags, the host's defaults for the rest.
pub fn limits(memory_max: Option<u64>, pids_max: Option<u64>) -> ServiceLimits {
    let defaults = ServiceLimits::default_for_host();
    ServiceLimits {
        memory_bytes: memory_max.unwrap_or(defaults.memory_bytes),
        pids: pids_max.unwrap_or(defaults.pids),
    }
}
