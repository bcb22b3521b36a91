//! Reading and writing cgroup interface files, walking and removing a
//! cgroup tree, and the value formats shared by v1 and v2.

use super::CgroupsError;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every pid in `dir`'s cgroup.procs and in those of the cgroups below it.
pub(super) fn procs_in(dir: &Path) -> Result<Vec<i32>, CgroupsError> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let text = read(&dir.join("cgroup.procs"))?;
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        let entries = std::fs::read_dir(&dir).map_err(|source| CgroupsError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(pids)
}

/// Removes `dir` and the cgroups below it, deepest first, retrying while the
/// kernel still counts exiting processes in it (EBUSY) for about a second.
pub(super) fn remove_tree(dir: &Path) -> Result<(), CgroupsError> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupsError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

pub(super) fn read(path: &Path) -> Result<String, CgroupsError> {
    std::fs::read_to_string(path).map_err(|source| CgroupsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupsError> {
    std::fs::write(path, value).map_err(|source| CgroupsError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

/// A one-number cgroup file; `max` reads as `u64::MAX`.
pub(super) fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return Some(u64::MAX);
    }
    text.parse().ok()
}

/// A flat-keyed file (`key value` lines, as memory.stat) as a map.
pub(super) fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            let value = value.trim();
            let value = if value == "max" {
                u64::MAX
            } else {
                value.parse().ok()?
            };
            Some((key.to_owned(), value))
        })
        .collect()
}

/// A limit as v1 takes it: `-1` unlimited, else a non-negative number.
pub(super) fn limit_v1(what: &'static str, value: i64) -> Result<String, CgroupsError> {
    match value {
        -1 => Ok("-1".to_owned()),
        v if v >= 0 => Ok(v.to_string()),
        v => Err(CgroupsError::Invalid {
            what,
            reason: format!("{v} is neither -1 (unlimited) nor a size"),
        }),
    }
}

/// A limit as v2 takes it: `max` unlimited, else a non-negative number.
pub(super) fn limit_v2(what: &'static str, value: i64) -> Result<String, CgroupsError> {
    match limit_v1(what, value)?.as_str() {
        "-1" => Ok("max".to_owned()),
        v => Ok(v.to_owned()),
    }
}

/// A hugepage size as the spec and the kernel's file names spell it (`2MB`).
pub(super) fn check_page_size(size: &str) -> Result<(), CgroupsError> {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["KB", "MB", "GB"].contains(&unit)
    {
        return Err(CgroupsError::Invalid {
            what: "hugepage size",
            reason: format!("{size:?} is not a number followed by KB, MB or GB"),
        });
    }
    Ok(())
}

/// The hugepage sizes this kernel supports, named as cgroup files name them.
pub(super) fn hugepage_sizes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut sizes: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(match kb {
                kb if kb % (1 << 20) == 0 => format!("{}GB", kb >> 20),
                kb if kb % (1 << 10) == 0 => format!("{}MB", kb >> 10),
                kb => format!("{kb}KB"),
            })
        })
        .collect();
    sizes.sort();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_minus_one_to_unlimited() {
        assert_eq!(limit_v1("x", -1).unwrap(), "-1");
        assert_eq!(limit_v2("x", -1).unwrap(), "max");
        assert_eq!(limit_v2("x", 4096).unwrap(), "4096");
        assert!(limit_v2("x", -2).is_err());
    }

    #[test]
    fn page_sizes_are_checked() {
        for good in ["2MB", "1GB", "64KB"] {
            check_page_size(good).unwrap();
        }
        for bad in ["", "MB", "2mb", "2MB/../x", "2 MB", "2TB"] {
            assert!(check_page_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keyed_files_parse_max() {
        let map = keyed("oom 0\noom_kill 3\nmax max\n");
        assert_eq!(map["oom_kill"], 3);
        assert_eq!(map["max"], u64::MAX);
    }
}
