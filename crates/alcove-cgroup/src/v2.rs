//! cgroup v2 file formats: limits written and usage read, one function per file.

use crate::{keyed_value, read_string, write_value, CgroupError, CpuQuota};
use std::path::Path;

/// Sets memory.max (`None`: unlimited) and forbids swap (memory.swap.max = 0)
/// where swap accounting exists.
pub fn set_memory_limit(dir: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    write_value(
        dir.join("memory.max"),
        &bytes.map_or("max".to_owned(), |b| b.to_string()),
    )?;
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write_value(swap, "0")?;
    }
    Ok(())
}

/// Sets cpu.max to `quota period` (`None`: unlimited).
pub fn set_cpu_quota(dir: &Path, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
    let value = quota.map_or("max".to_owned(), |q| {
        format!("{} {}", q.quota_us, q.period_us)
    });
    write_value(dir.join("cpu.max"), &value)
}

/// Sets pids.max (`None`: unlimited); v1 uses the same file and syntax.
pub fn set_pids_max(dir: &Path, max: Option<u64>) -> Result<(), CgroupError> {
    write_value(
        dir.join("pids.max"),
        &max.map_or("max".to_owned(), |m| m.to_string()),
    )
}

/// Enables `controllers` for the children of `dir`.
pub fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    enable_controllers_raw(dir, controllers).map_err(|source| CgroupError::Write {
        path: dir.join("cgroup.subtree_control"),
        value: controllers.join(" "),
        source,
    })
}

/// Enables `controllers` for the children of `dir`, returning the kernel's own
/// error: EBUSY (processes in `dir`) and ENOENT (not offered) mean different
/// things to the caller.
pub fn enable_controllers_raw(dir: &Path, controllers: &[&str]) -> std::io::Result<()> {
    let value: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    std::fs::write(dir.join("cgroup.subtree_control"), value.join(" "))
}

/// Controllers the parent makes available to `dir` (cgroup.controllers).
pub fn available_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let text = read_string(dir.join("cgroup.controllers"))?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// Controllers enabled for the children of `dir`.
pub fn enabled_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let text = read_string(dir.join("cgroup.subtree_control"))?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// CPU time in microseconds, `(user, system)`, from cpu.stat. This file exists
/// in every v2 cgroup, with or without the cpu controller.
pub fn cpu_usage_us(dir: &Path) -> Result<(u64, u64), CgroupError> {
    let path = dir.join("cpu.stat");
    let text = read_string(path.clone())?;
    let field = |key| {
        keyed_value(&text, key).ok_or_else(|| CgroupError::Parse {
            path: path.clone(),
            detail: format!("no {key} line"),
        })
    };
    Ok((field("user_usec")?, field("system_usec")?))
}

/// Peak memory usage (memory.peak, kernel 5.19 and later).
pub fn memory_peak(dir: &Path) -> Option<u64> {
    crate::v1::parse_u64(dir, "memory.peak").ok()
}

/// Opens memory.peak and resets it for this descriptor (kernel 6.12+), so a
/// reused cgroup reports the new run's peak; `None` where the kernel cannot.
pub fn reset_peak_fd(dir: &Path) -> Option<std::fs::File> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("memory.peak"))
        .ok()?;
    file.write_all(b"reset\n").ok()?;
    Some(file)
}

/// Reads a peak through the descriptor [`reset_peak_fd`] returned.
pub fn read_peak_fd(file: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// How many processes the OOM killer killed here (memory.events `oom_kill`).
/// Asks the kernel to reclaim `bytes` charged to the cgroup (page cache
/// from earlier runs), as far as it can (memory.reclaim, kernel 5.19+).
pub fn reclaim(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    write_value(dir.join("memory.reclaim"), &bytes.to_string())
}

pub fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    let text = read_string(dir.join("memory.events"))?;
    Ok(keyed_value(&text, "oom_kill").unwrap_or(0))
}

/// The peak number of tasks (pids.peak), where the kernel records it.
pub fn pids_peak(dir: &Path) -> Option<u64> {
    crate::v1::parse_u64(dir, "pids.peak").ok()
}

/// Whether any live process remains in `dir` or below (cgroup.events `populated`).
pub fn is_populated(dir: &Path) -> Result<bool, CgroupError> {
    let text = read_string(dir.join("cgroup.events"))?;
    Ok(keyed_value(&text, "populated").unwrap_or(0) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_v2_syntax() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.swap.max"), "max").unwrap();
        set_memory_limit(dir.path(), Some(1 << 30)).unwrap();
        set_cpu_quota(dir.path(), Some(CpuQuota::from_cpus(1.5))).unwrap();
        set_pids_max(dir.path(), Some(100)).unwrap();
        enable_controllers(dir.path(), &["memory", "pids"]).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "100");
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        set_cpu_quota(dir.path(), None).unwrap();
        set_pids_max(dir.path(), None).unwrap();
        assert_eq!(read("cpu.max"), "max");
        assert_eq!(read("pids.max"), "max");
    }

    #[test]
    fn usage_is_read_from_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, v: &str| std::fs::write(dir.path().join(f), v).unwrap();
        write(
            "cpu.stat",
            "usage_usec 50\nuser_usec 30\nsystem_usec 20\nnice_usec 0\n",
        );
        write(
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        write("memory.peak", "123456\n");
        write("cgroup.events", "populated 1\nfrozen 0\n");
        assert_eq!(cpu_usage_us(dir.path()).unwrap(), (30, 20));
        assert_eq!(oom_kills(dir.path()).unwrap(), 1);
        assert_eq!(memory_peak(dir.path()), Some(123456));
        assert!(is_populated(dir.path()).unwrap());
    }
}
