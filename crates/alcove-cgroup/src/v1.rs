//! cgroup v1 file formats: limits written and usage read, one function per file.

use crate::{keyed_value, read_string, write_value, CgroupError, CpuQuota};
use std::path::Path;

/// Sets the memory limit (`None`: unlimited), and the memory+swap limit to the
/// same value so the sandbox cannot spill into swap. The kernel insists that
/// memory+swap never be below memory, so the order depends on the direction.
pub fn set_memory_limit(dir: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    let value = bytes.map_or("-1".to_owned(), |b| b.to_string());
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    match write_value(dir.join("memory.limit_in_bytes"), &value) {
        Ok(()) if has_memsw => write_value(memsw, &value),
        Ok(()) => Ok(()),
        Err(_) if has_memsw => {
            write_value(memsw, &value)?;
            write_value(dir.join("memory.limit_in_bytes"), &value)
        }
        Err(e) => Err(e),
    }
}

/// Sets the CFS bandwidth quota (`None`: unlimited).
pub fn set_cpu_quota(dir: &Path, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
    match quota {
        Some(q) => {
            write_value(dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
            write_value(dir.join("cpu.cfs_quota_us"), &q.quota_us.to_string())
        }
        None => write_value(dir.join("cpu.cfs_quota_us"), "-1"),
    }
}

/// Resets the recorded peak memory usage to the current usage.
pub fn reset_memory_peak(dir: &Path) -> Result<(), CgroupError> {
    write_value(dir.join("memory.max_usage_in_bytes"), "0")
}

/// Reclaims what an empty cgroup is still charged for (page cache from
/// earlier runs); refused (EBUSY) while it holds a task.
pub fn force_empty(dir: &Path) -> Result<(), CgroupError> {
    write_value(dir.join("memory.force_empty"), "0")
}

/// Memory charged to the cgroup now, in bytes.
pub fn memory_usage(dir: &Path) -> Result<u64, CgroupError> {
    parse_u64(dir, "memory.usage_in_bytes")
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
        set_memory_limit(dir.path(), Some(64 << 20)).unwrap();
        set_cpu_quota(dir.path(), Some(CpuQuota::from_cpus(0.25))).unwrap();
        crate::v2::set_pids_max(dir.path(), Some(32)).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), "67108864");
        assert_eq!(read("memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids.max"), "32");
        set_memory_limit(dir.path(), None).unwrap();
        set_cpu_quota(dir.path(), None).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), "-1");
        assert_eq!(read("cpu.cfs_quota_us"), "-1");
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
