//! alcove-bpf owns alcove's eBPF programs (C, CO-RE against a vendored
//! vmlinux.h, in src/bpf with the shared layouts in intf.h) and loading them
//! with libbpf-rs: per-sandbox accounting and syscall counts, an event stream,
//! budgets enforced in the kernel, and the kernel-feature report for
//! `alcove doctor`. Sandboxes are identified by their cgroup2 id.
//!
//! It does not decide policy (what is counted, allowed or killed comes from
//! the caller) and does not start sandboxes.

mod error;
mod events;
mod fast;
pub mod features;
mod intf;
mod monitor;

pub use error::BpfError;
pub use events::{Denial, Event, EventKind, KillReason};
pub use fast::FastPath;
pub use monitor::{Attached, DeviceId, IpNet, Monitor, SandboxPolicy, Stats, TICK};

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    unused_imports
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/monitor.skel.rs"));
}

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    unused_imports
)]
mod probes_skel {
    include!(concat!(env!("OUT_DIR"), "/probes.skel.rs"));
}
