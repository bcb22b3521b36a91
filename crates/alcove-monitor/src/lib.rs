//! alcove-monitor owns what a sandbox is watched and policed by, for `alcove
//! run` and the daemon alike: one thread that owns alcove's loaded eBPF
//! programs ([`MonitorService`]), a [`Watch`] per sandbox run that registers
//! it by cgroup id before its first instruction and unregisters it at its end
//! (budgets, device, network and syscall rules, counters), the events of the
//! watched sandboxes tagged with who they belong to, and learned profiles.
//!
//! It loads programs once per service, never per run. It does not start
//! sandboxes (alcove-sandbox does, calling the watch as its observer) and
//! does not decide policy: the caller says what each run may do.

pub mod devices;
mod error;
pub mod profile;
mod service;
mod watch;

pub use alcove_bpf::{
    Attached, Denial, DeviceId, Event, EventKind, IpNet, KillReason, SandboxPolicy, Stats,
};
pub use error::MonitorError;
pub use profile::Profile;
pub use service::{MonitorEvent, MonitorService, ServiceStatus, Sink, Subject};
pub use watch::{Watch, WatchResult};
