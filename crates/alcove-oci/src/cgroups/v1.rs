//! cgroup v1 files: the spec's resources written in v1's names and units,
//! the freezer, and usage read back in runc's stats shape.

use super::{keyed, limit_v1, read, read_u64, write, CgroupsError};
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNetwork, LinuxThrottleDevice,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Gives every cpuset cgroup from below `base` down to `leaf` the CPUs and
/// memory nodes of its parent where it has none: a v1 cpuset cgroup with
/// empty sets refuses processes.
pub(super) fn inherit_cpuset(base: &Path, leaf: &Path) -> Result<(), CgroupsError> {
    let Ok(relative) = leaf.strip_prefix(base) else {
        return Ok(());
    };
    let mut parent = base.to_path_buf();
    for component in relative.components() {
        let dir = parent.join(component);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read(&dir.join(file))?.trim().is_empty() {
                let value = read(&parent.join(file))?;
                write(&dir.join(file), value.trim())?;
            }
        }
        parent = dir;
    }
    Ok(())
}

pub(super) fn memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupsError> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let swap_file = dir.join("memory.memsw.limit_in_bytes");
    let limit = m.limit().map(|v| limit_v1("memory limit", v)).transpose()?;
    // Without swap accounting there is no memsw file and nothing to limit.
    let swap = match m.swap() {
        Some(v) if swap_file.exists() => Some(limit_v1("memory+swap limit", v)?),
        _ => None,
    };
    if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
        if s != -1 && (l == -1 || s < l) {
            return Err(CgroupsError::Invalid {
                what: "memory.swap",
                reason: format!("memory+swap {s} is below the memory limit {l}"),
            });
        }
    }
    match (limit, swap) {
        (Some(limit), Some(swap)) => {
            // The kernel keeps memsw >= limit at every step: raise memsw
            // first when the new memsw exceeds the current limit.
            let current = read_u64(&limit_file).unwrap_or(u64::MAX);
            let raising = swap == "-1" || swap.parse::<u64>().is_ok_and(|s| current < s);
            if raising {
                write(&swap_file, &swap)?;
                write(&limit_file, &limit)?;
            } else {
                write(&limit_file, &limit)?;
                write(&swap_file, &swap)?;
            }
        }
        (Some(limit), None) => write(&limit_file, &limit)?,
        (None, Some(swap)) => write(&swap_file, &swap)?,
        (None, None) => {}
    }
    if let Some(reservation) = m.reservation() {
        let value = limit_v1("memory reservation", reservation)?;
        write(&dir.join("memory.soft_limit_in_bytes"), &value)?;
    }
    if let Some(swappiness) = m.swappiness() {
        if swappiness > 100 {
            return Err(CgroupsError::Invalid {
                what: "memory.swappiness",
                reason: format!("{swappiness} is above 100"),
            });
        }
        write(&dir.join("memory.swappiness"), &swappiness.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        write(&dir.join("memory.oom_control"), "1")?;
    }
    Ok(())
}

pub(super) fn cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupsError> {
    if let Some(shares) = c.shares() {
        write(&dir.join("cpu.shares"), &shares.to_string())?;
    }
    // A period shorter than the current one can be refused while the old
    // quota stands: then the quota goes first and the period is retried.
    let mut period_pending = None;
    if let Some(period) = c.period() {
        let file = dir.join("cpu.cfs_period_us");
        match write(&file, &period.to_string()) {
            Ok(()) => {}
            Err(_) if c.quota().is_some() => period_pending = Some(period),
            Err(err) => return Err(err),
        }
    }
    if let Some(quota) = c.quota() {
        let value = if quota < 0 { -1 } else { quota };
        write(&dir.join("cpu.cfs_quota_us"), &value.to_string())?;
    }
    if let Some(period) = period_pending {
        write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
    }
    if let Some(burst) = c.burst() {
        write_if_present(dir, "cpu.cfs_burst_us", &burst.to_string(), "cpu.burst")?;
    }
    if let Some(period) = c.realtime_period() {
        write_if_present(
            dir,
            "cpu.rt_period_us",
            &period.to_string(),
            "cpu.realtimePeriod",
        )?;
    }
    if let Some(runtime) = c.realtime_runtime() {
        let value = limit_v1("cpu.realtimeRuntime", runtime)?;
        write_if_present(dir, "cpu.rt_runtime_us", &value, "cpu.realtimeRuntime")?;
    }
    if let Some(idle) = c.idle() {
        write_if_present(dir, "cpu.idle", &idle.to_string(), "cpu.idle")?;
    }
    Ok(())
}

/// Writes a file that only some kernels have; asking for it where it is
/// missing is an error the caller can read.
fn write_if_present(
    dir: &Path,
    file: &str,
    value: &str,
    what: &'static str,
) -> Result<(), CgroupsError> {
    let path = dir.join(file);
    if !path.exists() {
        return Err(CgroupsError::MissingFile { what, path });
    }
    write(&path, value)
}

pub(super) fn blkio_wanted(b: &LinuxBlockIo) -> bool {
    let some = |v: &Option<Vec<LinuxThrottleDevice>>| v.as_ref().is_some_and(|v| !v.is_empty());
    b.weight().is_some()
        || b.leaf_weight().is_some()
        || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
        || some(b.throttle_read_bps_device())
        || some(b.throttle_write_bps_device())
        || some(b.throttle_read_iops_device())
        || some(b.throttle_write_iops_device())
}

pub(super) fn blkio(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupsError> {
    // BFQ's files replace CFQ's on current kernels; use whichever exists.
    let bfq = dir.join("blkio.bfq.weight").exists();
    let (weight_file, weight_device_file) = if bfq {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    } else {
        ("blkio.weight", "blkio.weight_device")
    };
    if let Some(weight) = b.weight() {
        write_if_present(dir, weight_file, &weight.to_string(), "blockIO.weight")?;
    }
    if let Some(weight) = b.leaf_weight() {
        write_if_present(
            dir,
            "blkio.leaf_weight",
            &weight.to_string(),
            "blockIO.leafWeight",
        )?;
    }
    for device in b.weight_device().iter().flatten() {
        let (major, minor) = (device.major(), device.minor());
        if let Some(weight) = device.weight() {
            let line = format!("{major}:{minor} {weight}");
            write_if_present(dir, weight_device_file, &line, "blockIO.weightDevice")?;
        }
        if let Some(weight) = device.leaf_weight() {
            let line = format!("{major}:{minor} {weight}");
            write_if_present(
                dir,
                "blkio.leaf_weight_device",
                &line,
                "blockIO.weightDevice",
            )?;
        }
    }
    for (devices, file) in [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
        ),
    ] {
        for device in devices.iter().flatten() {
            let line = format!("{}:{} {}", device.major(), device.minor(), device.rate());
            write(&dir.join(file), &line)?;
        }
    }
    Ok(())
}

pub(super) fn hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupsError> {
    for limit in limits {
        super::check_page_size(limit.page_size())?;
        let file = format!("hugetlb.{}.limit_in_bytes", limit.page_size());
        let value = limit_v1("hugepage limit", limit.limit())?;
        write_if_present(dir, &file, &value, "hugepageLimits")?;
    }
    Ok(())
}

/// net_cls and net_prio, where mounted; ignored otherwise (see the module doc).
pub(super) fn network(
    net_cls: Option<&PathBuf>,
    net_prio: Option<&PathBuf>,
    n: &LinuxNetwork,
) -> Result<(), CgroupsError> {
    if let (Some(dir), Some(class_id)) = (net_cls, n.class_id()) {
        write(&dir.join("net_cls.classid"), &class_id.to_string())?;
    }
    if let Some(dir) = net_prio {
        for p in n.priorities().iter().flatten() {
            let name = p.name();
            if name.is_empty() || name.len() > 15 || name.contains(char::is_whitespace) {
                return Err(CgroupsError::Invalid {
                    what: "network interface name",
                    reason: format!("{name:?} is not a kernel interface name"),
                });
            }
            let line = format!("{name} {}", p.priority());
            write(&dir.join("net_prio.ifpriomap"), &line)?;
        }
    }
    Ok(())
}

/// Writes freezer.state and waits for it to read back; a freeze that does
/// not settle in about two seconds is undone and reported.
pub(super) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupsError> {
    let file = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut round = 0u32;
    loop {
        // The kernel may leave a freeze in FREEZING while a task cannot
        // stop yet; writing again retries it.
        if round.is_multiple_of(50) {
            write(&file, want)?;
        }
        round += 1;
        if read(&file)?.trim() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = write(&file, "THAWED");
            }
            return Err(CgroupsError::Timeout {
                path: dir.to_path_buf(),
                state: if frozen { "frozen" } else { "thawed" },
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(super) fn is_frozen(dir: &Path) -> bool {
    read(&dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
}

/// USER_HZ ticks (cpuacct.stat) in nanoseconds; USER_HZ is 100 on Linux.
const NS_PER_TICK: u64 = 10_000_000;

pub(super) fn cpu_stats(cpuacct: &Path, cpu: Option<&Path>) -> Value {
    let percpu = |file: &str| -> Vec<u64> {
        read(&cpuacct.join(file))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let stat = keyed(&read(&cpuacct.join("cpuacct.stat")).unwrap_or_default());
    let throttling = cpu
        .map(|d| keyed(&read(&d.join("cpu.stat")).unwrap_or_default()))
        .unwrap_or_default();
    let get = |map: &std::collections::BTreeMap<String, u64>, key: &str| {
        map.get(key).copied().unwrap_or(0)
    };
    json!({
        "usage": {
            "total": read_u64(&cpuacct.join("cpuacct.usage")).unwrap_or(0),
            "percpu": percpu("cpuacct.usage_percpu"),
            "percpu_kernel": percpu("cpuacct.usage_percpu_sys"),
            "percpu_user": percpu("cpuacct.usage_percpu_user"),
            "kernel": get(&stat, "system").saturating_mul(NS_PER_TICK),
            "user": get(&stat, "user").saturating_mul(NS_PER_TICK),
        },
        "throttling": {
            "periods": get(&throttling, "nr_periods"),
            "throttledPeriods": get(&throttling, "nr_throttled"),
            "throttledTime": get(&throttling, "throttled_time"),
        },
    })
}

pub(super) fn memory_stats(dir: &Path) -> Value {
    let entry = |prefix: &str| {
        let file = |name: &str| read_u64(&dir.join(format!("{prefix}.{name}"))).unwrap_or(0);
        json!({
            "usage": file("usage_in_bytes"),
            "max": file("max_usage_in_bytes"),
            "limit": file("limit_in_bytes"),
            "failcnt": file("failcnt"),
        })
    };
    let raw = keyed(&read(&dir.join("memory.stat")).unwrap_or_default());
    json!({
        "cache": raw.get("cache").copied().unwrap_or(0),
        "usage": entry("memory"),
        "swap": entry("memory.memsw"),
        "kernel": entry("memory.kmem"),
        "kernelTCP": entry("memory.kmem.tcp"),
        "raw": raw,
    })
}

pub(super) fn blkio_stats(dir: &Path) -> Value {
    let entries = |file: &str| -> Vec<Value> {
        read(&dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (device, op, value) = (fields.next()?, fields.next()?, fields.next()?);
                let (major, minor) = device.split_once(':')?;
                Some(json!({
                    "major": major.parse::<u64>().ok()?,
                    "minor": minor.parse::<u64>().ok()?,
                    "op": op,
                    "value": value.parse::<u64>().ok()?,
                }))
            })
            .collect()
    };
    json!({
        "ioServiceBytesRecursive": entries("blkio.throttle.io_service_bytes_recursive"),
        "ioServicedRecursive": entries("blkio.throttle.io_serviced_recursive"),
    })
}

pub(super) fn hugetlb_stats(dir: &Path) -> Value {
    let mut out = serde_json::Map::new();
    for size in super::hugepage_sizes() {
        let file = |name: &str| read_u64(&dir.join(format!("hugetlb.{size}.{name}"))).unwrap_or(0);
        out.insert(
            size.clone(),
            json!({
                "usage": file("usage_in_bytes"),
                "max": file("max_usage_in_bytes"),
                "failcnt": file("failcnt"),
            }),
        );
    }
    Value::Object(out)
}
