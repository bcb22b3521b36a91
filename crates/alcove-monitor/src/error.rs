//! Why a sandbox could not be watched.

/// Why the monitor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(
        "cannot load alcove's eBPF monitor, which budgets, rules and learning need; \
         `alcove doctor` says what this kernel allows"
    )]
    Load(#[source] alcove_bpf::BpfError),
    #[error("cannot put the sandbox under its eBPF watch")]
    Watch(#[source] alcove_bpf::BpfError),
    #[error(
        "eBPF monitoring identifies sandboxes by their cgroup2 id, and no cgroup2 tree is \
         mounted (mount one, for example at /sys/fs/cgroup/unified)"
    )]
    NoCgroup2,
    #[error("the monitor thread has stopped")]
    Gone,
    #[error("cannot start the monitor thread")]
    Thread(#[source] std::io::Error),
    #[error("{} is not a character device", .0.display())]
    NotCharDevice(std::path::PathBuf),
}
