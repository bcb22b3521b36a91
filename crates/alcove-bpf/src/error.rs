//! Errors from loading and driving the BPF programs.

use std::io;

/// Why alcove's BPF side could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot load alcove's BPF programs while {what}{}", hint(source))]
    Load {
        what: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error(
        "cannot attach the {what} program (see `alcove doctor` for what this kernel supports)"
    )]
    Attach {
        what: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("cannot update the BPF map {0}")]
    Map(&'static str, #[source] libbpf_rs::Error),
    #[error("cannot open the sandbox's cgroup2 directory to attach its rules")]
    Cgroup(#[source] io::Error),
    #[error("cannot open a cpu-clock perf event for the CPU budgets")]
    Perf(#[source] io::Error),
}

/// Says what to do for the errors a user can act on.
fn hint(source: &libbpf_rs::Error) -> &'static str {
    let root = alcove_sys::process::is_root();
    match (source.kind(), root) {
        (libbpf_rs::ErrorKind::PermissionDenied, false) => {
            " (loading BPF needs root, or CAP_BPF and CAP_PERFMON; see `alcove doctor`)"
        }
        (libbpf_rs::ErrorKind::PermissionDenied, true) => {
            " (the kernel's verifier refused a program; ALCOVE_BPF_DEBUG=1 shows its log)"
        }
        _ => "",
    }
}

impl BpfError {
    pub(crate) fn load(what: &'static str, source: libbpf_rs::Error) -> Self {
        BpfError::Load { what, source }
    }

    pub(crate) fn attach(what: &'static str, source: libbpf_rs::Error) -> Self {
        BpfError::Attach { what, source }
    }

    pub(crate) fn map(what: &'static str, source: libbpf_rs::Error) -> Self {
        BpfError::Map(what, source)
    }
}
