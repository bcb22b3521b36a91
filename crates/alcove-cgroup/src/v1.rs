//! cgroup v1 file formats: limits written and usage read, one function per file.

use crate::{keyed_value, read_string, write_value, CgroupError, CpuQuota};
use std::path::Path;

/// Sets the memory limit, and the memory+swap limit to the same value so the
/// sandbox cannot spill into swap.
pub fn set_memory_limit(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    write_value(dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        write_value(memsw, &bytes.to_string())?;
    }
    Ok(())
}

/// Sets the CFS bandwidth quota.
pub fn set_cpu_quota(dir: &Path, quota: CpuQuota) -> Result<(), CgroupError> {
    write_value(dir.join("cpu.cfs_period_us"), &quota.period_us.to_string())?;
    write_value(dir.join("cpu.cfs_quota_us"), &quota.quota_us.to_string())
}

/// Sets the maximum number of tasks.
pub fn set_pids_max(dir: &Path, max: u64) -> Result<(), CgroupError> {
    write_value(dir.join("pids.max"), &max.to_string())
}

/// The peak memory usage in bytes.
pub fn memory_peak(dir: &Path) -> Result<u64, CgroupError> {
    parse_u64(dir, "memory.max_usage_in_bytes")
}

/// How many processes the OOM killer killed in this cgroup (`oom_kill` in
/// memory.oom_control, kernel 4.13 and later).
pub fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    let path = dir.join("memory.oom_control");
    let text = read_string(path)?;
    Ok(keyed_value(&text, "oom_kill").unwrap_or(0))
}

/// CPU time in microseconds, `(user, system)`, from cpuacct.
pub fn cpu_usage_us(dir: &Path) -> Result<(u64, u64), CgroupError> {
    let user = parse_u64(dir, "cpuacct.usage_user")?;
    let system = parse_u64(dir, "cpuacct.usage_sys")?;
    Ok((user / 1_000, system / 1_000))
}

/// The peak number of tasks, where the kernel records it (pids.peak).
pub fn pids_peak(dir: &Path) -> Option<u64> {
    parse_u64(dir, "pids.peak").ok()
}

pub(crate) fn parse_u64(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    let path = dir.join(file);
    let text = read_string(path.clone())?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path,
        detail: format!("expected a number, found {:?}", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_v1_units() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.memsw.limit_in_bytes"), "").unwrap();
        set_memory_limit(dir.path(), 64 << 20).unwrap();
        set_cpu_quota(dir.path(), CpuQuota::from_cpus(0.25)).unwrap();
        set_pids_max(dir.path(), 32).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), "67108864");
        assert_eq!(read("memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids.max"), "32");
    }

    #[test]
    fn usage_is_read_from_v1_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, v: &str| std::fs::write(dir.path().join(f), v).unwrap();
        write("memory.max_usage_in_bytes", "4096\n");
        write(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write("cpuacct.usage_user", "3000000\n");
        write("cpuacct.usage_sys", "1000000\n");
        assert_eq!(memory_peak(dir.path()).unwrap(), 4096);
        assert_eq!(oom_kills(dir.path()).unwrap(), 2);
        assert_eq!(cpu_usage_us(dir.path()).unwrap(), (3000, 1000));
        assert_eq!(pids_peak(dir.path()), None);
    }
}
