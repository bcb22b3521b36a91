//! cgroup v2 files: controllers enabled down the tree, the spec's resources
//! converted to v2's names and units as runc converts them, the `unified`
//! map, `cgroup.freeze`, and usage read back in runc's stats shape.
//!
//! v1-only settings have no v2 file: `memory.swappiness`,
//! `memory.disableOOMKiller` and `blockIO.leafWeight` are ignored here;
//! real-time CPU limits are refused.

use super::{keyed, limit_v2, read, read_u64, write, CgroupsError};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Enables each of `wanted` for `dir`'s children unless it already is. A
/// controller the kernel refuses stays off: the leaf's `cgroup.controllers`
/// then shows it missing, and a limit that needs it fails with a clear error.
pub(super) fn enable_controllers(dir: &Path, wanted: &[&str]) {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read(&file).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    for controller in wanted.iter().filter(|c| !enabled.contains(c)) {
        let _ = std::fs::write(&file, format!("+{controller}"));
    }
}

pub(super) fn memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupsError> {
    if let Some(swap) = swap_max(m.swap(), m.limit())? {
        // Without swap accounting there is no swap.max and nothing to limit.
        let file = dir.join("memory.swap.max");
        if file.exists() {
            write(&file, &swap)?;
        }
    }
    if let Some(limit) = m.limit() {
        write(&dir.join("memory.max"), &limit_v2("memory limit", limit)?)?;
    }
    if let Some(reservation) = m.reservation() {
        let value = limit_v2("memory reservation", reservation)?;
        write(&dir.join("memory.low"), &value)?;
    }
    Ok(())
}

/// memory.swap.max from the spec's memory+swap total, as runc converts it:
/// v2 limits swap alone. `None`: leave it.
fn swap_max(swap: Option<i64>, memory: Option<i64>) -> Result<Option<String>, CgroupsError> {
    let invalid = |reason: String| CgroupsError::Invalid {
        what: "memory.swap",
        reason,
    };
    match (swap, memory) {
        // Unlimited memory with swap unset means both unlimited, as on v1.
        (None | Some(0), Some(-1)) | (Some(-1), _) => Ok(Some("max".to_owned())),
        (None | Some(0), _) => Ok(None),
        (Some(s), Some(m)) if m > 0 && s >= m => Ok(Some((s - m).to_string())),
        (Some(s), Some(m)) if m > 0 => Err(invalid(format!(
            "memory+swap {s} is below the memory limit {m}"
        ))),
        (Some(s), _) if s < -1 => Err(invalid(format!("{s} is not a size"))),
        (Some(_), _) => Err(invalid("a swap limit needs a memory limit".to_owned())),
    }
}

pub(super) fn cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupsError> {
    if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
        return Err(CgroupsError::Invalid {
            what: "cpu limits",
            reason: "real-time CPU limits exist only in cgroup v1".to_owned(),
        });
    }
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        write(&dir.join("cpu.weight"), &cpu_weight(shares).to_string())?;
    }
    if c.quota().is_some() || c.period().is_some() {
        let mut value = match c.quota() {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_owned(),
        };
        if let Some(period) = c.period().filter(|p| *p != 0) {
            value.push_str(&format!(" {period}"));
        }
        write(&dir.join("cpu.max"), &value)?;
    }
    if let Some(burst) = c.burst() {
        write(&dir.join("cpu.max.burst"), &burst.to_string())?;
    }
    if let Some(idle) = c.idle() {
        write(&dir.join("cpu.idle"), &idle.to_string())?;
    }
    Ok(())
}

/// cpu.shares (2..=262144, default 1024) as cpu.weight (1..=10000, default
/// 100), by runc's linear map.
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// blkio.weight (10..=1000) as io.weight (1..=10000), by runc's linear map.
fn io_weight(weight: u16) -> Result<u64, CgroupsError> {
    if !(10..=1000).contains(&weight) {
        return Err(CgroupsError::Invalid {
            what: "blockIO weight",
            reason: format!("{weight} is outside 10..=1000"),
        });
    }
    Ok(1 + (u64::from(weight) - 10) * 9999 / 990)
}

pub(super) fn io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupsError> {
    // BFQ takes blkio's own scale; the generic io.weight its own.
    let bfq = dir.join("io.bfq.weight").exists();
    let weight_value = |w: u16| -> Result<String, CgroupsError> {
        if bfq {
            Ok(w.to_string())
        } else {
            io_weight(w).map(|w| w.to_string())
        }
    };
    let weight_file = dir.join(if bfq { "io.bfq.weight" } else { "io.weight" });
    if let Some(weight) = b.weight() {
        write(&weight_file, &weight_value(weight)?)?;
    }
    for device in b.weight_device().iter().flatten() {
        if let Some(weight) = device.weight() {
            let line = format!(
                "{}:{} {}",
                device.major(),
                device.minor(),
                weight_value(weight)?
            );
            write(&weight_file, &line)?;
        }
    }
    for (devices, key) in [
        (b.throttle_read_bps_device(), "rbps"),
        (b.throttle_write_bps_device(), "wbps"),
        (b.throttle_read_iops_device(), "riops"),
        (b.throttle_write_iops_device(), "wiops"),
    ] {
        for device in devices.iter().flatten() {
            // v1's 0 removes a throttle; v2 spells that "max".
            let rate = match device.rate() {
                0 => "max".to_owned(),
                r => r.to_string(),
            };
            let line = format!("{}:{} {key}={rate}", device.major(), device.minor());
            write(&dir.join("io.max"), &line)?;
        }
    }
    Ok(())
}

pub(super) fn hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupsError> {
    for limit in limits {
        super::check_page_size(limit.page_size())?;
        let path = dir.join(format!("hugetlb.{}.max", limit.page_size()));
        if !path.exists() {
            return Err(CgroupsError::MissingFile {
                what: "hugepageLimits",
                path,
            });
        }
        write(&path, &limit_v2("hugepage limit", limit.limit())?)?;
    }
    Ok(())
}

/// Interface files of the cgroup core the `unified` map may set; the rest of
/// `cgroup.*` moves processes or changes the tree, which is the runtime's.
const CORE_FILES: &[&str] = &["cgroup.max.depth", "cgroup.max.descendants"];

/// The spec's `unified` map: each key a file of a controller enabled here.
pub(super) fn unified(
    dir: &Path,
    controllers: &[String],
    map: &HashMap<String, String>,
) -> Result<(), CgroupsError> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let controller = key.split('.').next().unwrap_or("");
        let allowed = CORE_FILES.contains(&key.as_str())
            || (key.contains('.') && controllers.iter().any(|c| c == controller));
        if key.contains('/') || key.starts_with('.') || !allowed {
            return Err(CgroupsError::Invalid {
                what: "linux.resources.unified key",
                reason: format!("{key:?} is not a file of a controller enabled here"),
            });
        }
        let path = dir.join(key);
        if !path.exists() {
            return Err(CgroupsError::MissingFile {
                what: "linux.resources.unified",
                path,
            });
        }
        write(&path, &map[key])?;
    }
    Ok(())
}

/// Writes cgroup.freeze and waits for cgroup.events to agree; a freeze that
/// does not settle in about two seconds is undone and reported.
pub(super) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupsError> {
    write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if is_frozen(dir) == frozen {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = write(&dir.join("cgroup.freeze"), "0");
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
    let events = keyed(&read(&dir.join("cgroup.events")).unwrap_or_default());
    events.get("frozen") == Some(&1)
}

pub(super) fn cpu_stats(dir: &Path) -> Value {
    let stat = keyed(&read(&dir.join("cpu.stat")).unwrap_or_default());
    let ns = |key: &str| stat.get(key).copied().unwrap_or(0).saturating_mul(1000);
    let get = |key: &str| stat.get(key).copied().unwrap_or(0);
    json!({
        "usage": {
            "total": ns("usage_usec"),
            "kernel": ns("system_usec"),
            "user": ns("user_usec"),
        },
        "throttling": {
            "periods": get("nr_periods"),
            "throttledPeriods": get("nr_throttled"),
            "throttledTime": ns("throttled_usec"),
        },
    })
}

pub(super) fn memory_stats(dir: &Path) -> Value {
    let file = |name: &str| read_u64(&dir.join(name)).unwrap_or(0);
    let events = |name: &str| {
        keyed(&read(&dir.join(name)).unwrap_or_default())
            .get("max")
            .copied()
            .unwrap_or(0)
    };
    let usage = file("memory.current");
    let limit = file("memory.max");
    let raw = keyed(&read(&dir.join("memory.stat")).unwrap_or_default());
    // runc reports v2 swap as memory+swap, the v1 meaning.
    let swap_limit = match file("memory.swap.max") {
        u64::MAX => u64::MAX,
        s => s.saturating_add(limit),
    };
    json!({
        "cache": raw.get("file").copied().unwrap_or(0),
        "usage": {
            "usage": usage,
            "max": file("memory.peak"),
            "limit": limit,
            "failcnt": events("memory.events"),
        },
        "swap": {
            "usage": file("memory.swap.current").saturating_add(usage),
            "max": file("memory.swap.peak"),
            "limit": swap_limit,
            "failcnt": events("memory.swap.events"),
        },
        "raw": raw,
    })
}

pub(super) fn io_stats(dir: &Path) -> Value {
    let mut bytes = Vec::new();
    let mut ios = Vec::new();
    for line in read(&dir.join("io.stat")).unwrap_or_default().lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else {
            continue;
        };
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let (list, op) = match key {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                _ => continue,
            };
            list.push(json!({"major": major, "minor": minor, "op": op, "value": value}));
        }
    }
    json!({
        "ioServiceBytesRecursive": bytes,
        "ioServicedRecursive": ios,
    })
}

pub(super) fn hugetlb_stats(dir: &Path) -> Value {
    let mut out = serde_json::Map::new();
    for size in super::hugepage_sizes() {
        let events = keyed(&read(&dir.join(format!("hugetlb.{size}.events"))).unwrap_or_default());
        out.insert(
            size.clone(),
            json!({
                "usage": read_u64(&dir.join(format!("hugetlb.{size}.current"))).unwrap_or(0),
                "failcnt": events.get("max").copied().unwrap_or(0),
            }),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_weights_convert_as_runc_does() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(io_weight(10).unwrap(), 1);
        assert_eq!(io_weight(1000).unwrap(), 10_000);
        assert!(io_weight(5).is_err());
    }

    #[test]
    fn swap_is_converted_to_swap_alone() {
        let gib = 1 << 30;
        assert_eq!(
            swap_max(Some(2 * gib), Some(gib)).unwrap().as_deref(),
            Some("1073741824")
        );
        assert_eq!(
            swap_max(Some(-1), Some(gib)).unwrap().as_deref(),
            Some("max")
        );
        assert_eq!(swap_max(None, Some(-1)).unwrap().as_deref(), Some("max"));
        assert_eq!(swap_max(None, Some(gib)).unwrap(), None);
        assert!(swap_max(Some(gib), Some(2 * gib)).is_err());
        assert!(swap_max(Some(gib), None).is_err());
    }
}
