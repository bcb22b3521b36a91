//! Watching a sandbox from outside while it runs (alcove-bpf's monitor plugs
//! in here, through the binary), without this crate knowing about BPF.

use std::os::fd::RawFd;
use std::path::Path;

/// Something that watches a sandbox while it runs and may ask for it to be killed.
pub trait Observer {
    /// The sandbox's process is already running when it is handed over (a
    /// warm copy, adopted after its own setup): there is no exec to wait
    /// for, so watching starts at once. Called before `before_start`.
    fn already_running(&mut self) {}

    /// Whether it counts what the sandbox's processes did as each exits: an
    /// adopted process that reported its end is then given a moment to
    /// actually exit before the run ends.
    fn counts_exits(&self) -> bool {
        false
    }

    /// The sandbox's cgroup2 id and directory are known (where a cgroup2 tree is mounted) and
    /// none of its processes runs yet. An error aborts the run.
    fn before_start(
        &mut self,
        cgroup: Option<(u64, &Path)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// A descriptor to poll alongside the sandbox, if any.
    fn poll_fd(&self) -> Option<RawFd>;

    /// The descriptor is readable. Returns why the sandbox must be killed, if it must.
    fn on_ready(&mut self) -> Option<String>;

    /// Every process of the sandbox is gone.
    fn after_end(&mut self);
}

/// Watches nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn before_start(
        &mut self,
        _: Option<(u64, &Path)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        None
    }

    fn on_ready(&mut self) -> Option<String> {
        None
    }

    fn after_end(&mut self) {}
}
