//! Reading a running sandbox's usage from another thread: the directories
//! to read are copied out of its [`SandboxCgroup`](crate::SandboxCgroup), so
//! a reader holds no reference to the cgroup the run owns.

use crate::{v1, v2};
use std::path::PathBuf;

/// Where one sandbox's memory and CPU counters are, on either hierarchy.
#[derive(Debug, Clone, Default)]
pub struct UsageProbe {
    /// The directory memory is accounted in, and whether it is cgroup v2.
    pub(crate) memory: Option<(PathBuf, bool)>,
    /// The directory CPU time is accounted in, and whether it is cgroup v2.
    pub(crate) cpu: Option<(PathBuf, bool)>,
}

/// The cgroup's counters now (not net of what an earlier run in a reused
/// cgroup left); `None` where the kernel does not keep one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveUsage {
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// (user, system) microseconds.
    pub cpu_us: Option<(u64, u64)>,
}

impl UsageProbe {
    /// Reads the counters; one that cannot be read (the run just ended and
    /// its cgroup is gone) is `None`.
    pub fn read(&self) -> LiveUsage {
        let mut usage = LiveUsage::default();
        if let Some((dir, is_v2)) = &self.memory {
            if *is_v2 {
                usage.memory_bytes = v1::parse_u64(dir, "memory.current").ok();
                usage.memory_peak_bytes = v2::memory_peak(dir);
            } else {
                usage.memory_bytes = v1::memory_usage(dir).ok();
                usage.memory_peak_bytes = v1::memory_peak(dir).ok();
            }
        }
        if let Some((dir, is_v2)) = &self.cpu {
            usage.cpu_us = if *is_v2 {
                v2::cpu_usage_us(dir).ok()
            } else {
                v1::cpu_usage_us(dir).ok()
            };
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_and_v1_counters_and_leaves_out_what_is_missing() {
        let v2_dir = tempfile::tempdir().unwrap();
        std::fs::write(v2_dir.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(v2_dir.path().join("memory.peak"), "8192\n").unwrap();
        std::fs::write(
            v2_dir.path().join("cpu.stat"),
            "usage_usec 30\nuser_usec 20\nsystem_usec 10\n",
        )
        .unwrap();
        let probe = UsageProbe {
            memory: Some((v2_dir.path().to_owned(), true)),
            cpu: Some((v2_dir.path().to_owned(), true)),
        };
        assert_eq!(
            probe.read(),
            LiveUsage {
                memory_bytes: Some(4096),
                memory_peak_bytes: Some(8192),
                cpu_us: Some((20, 10)),
            }
        );
        let v1_dir = tempfile::tempdir().unwrap();
        std::fs::write(v1_dir.path().join("memory.usage_in_bytes"), "100\n").unwrap();
        let probe = UsageProbe {
            memory: Some((v1_dir.path().to_owned(), false)),
            cpu: Some((v1_dir.path().to_owned(), false)),
        };
        let usage = probe.read();
        assert_eq!(usage.memory_bytes, Some(100));
        assert_eq!(usage.memory_peak_bytes, None);
        assert_eq!(usage.cpu_us, None);
    }
}
