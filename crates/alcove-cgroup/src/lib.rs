//! alcove-cgroup owns alcove's use of cgroups: finding the cgroup hierarchies the
//! host has (v2, v1, or the hybrid of both), creating one cgroup per sandbox
//! beneath the cgroup alcove itself was started in, writing limits, reading usage,
//! and removing it; and the cgroup2 mount option (`favordynmods`) that makes
//! moving a process into a cgroup cheap (`migrations`).
//!
//! It picks v2 for a controller when the unified hierarchy offers it and v1
//! otherwise, at run time. It never creates anything at a hierarchy's root unless
//! alcove itself runs there, and it does not decide policy: limits come from the
//! caller.

pub mod delegation;
mod layout;
pub mod migrations;
mod probe;
mod registry;
mod sandbox;
pub mod v1;
pub mod v2;

pub use delegation::{DelegationCheck, DelegationError, LEAF};
pub use layout::{CgroupLayout, LayoutKind, V1Hierarchy};
pub use migrations::{set_favor_dynmods, FavorDynmodsError, MigrationCost};
pub use probe::{LiveUsage, UsageProbe};
pub use registry::{forget_place, remembered_places, PLACES_FILE};
pub use sandbox::{SandboxCgroup, PARENT_DIR, RUN_LEAF};

use std::io;
use std::path::PathBuf;

/// The resource controllers alcove limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Cpu,
    Memory,
    Pids,
}

impl Controller {
    /// The kernel's name for the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

/// CPU bandwidth: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// The quota that allows `cpus` CPUs' worth of time (0.5 = half of one CPU).
    pub fn from_cpus(cpus: f64) -> Self {
        let period_us = 100_000;
        let quota_us = ((cpus * period_us as f64).round() as u64).max(1_000);
        CpuQuota {
            quota_us,
            period_us,
        }
    }
}

/// Limits for one sandbox's cgroup. `None` leaves the controller unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu: Option<CpuQuota>,
    pub pids_max: Option<u64>,
}

/// What the kernel accounted to one sandbox's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
    pub memory_peak_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    pub oom_kills: u64,
}

/// Errors from cgroup discovery and management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup hierarchy offers the {0} controller; mount it as cgroup v2 or v1")]
    MissingController(&'static str),
    #[error(transparent)]
    Delegation(#[from] DelegationError),
    #[error("unexpected content in {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

pub(crate) fn read_string(path: PathBuf) -> Result<String, CgroupError> {
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

pub(crate) fn write_value(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    std::fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

/// Finds `key value` in a flat-keyed cgroup file such as `memory.events`.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
