//! The two process files the rootfs setup reads: `/proc/self/mountinfo`
//! (which mount holds the rootfs, where the cgroup hierarchies are) and
//! `/proc/self/cgroup` (the init's own cgroup in each hierarchy).

use std::io;
use std::path::{Path, PathBuf};

/// Bound on lines read from either file.
const MAX_LINES: usize = 100_000;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The root of the mount within its filesystem.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Optional fields (`shared:1 master:2`), space-joined.
    pub optional: String,
    pub fstype: String,
    pub super_options: String,
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .take(MAX_LINES)
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let (_id, _parent, _dev) = (l.next()?, l.next()?, l.next()?);
            let root = unescape(l.next()?);
            let mount_point = unescape(l.next()?);
            let _options = l.next()?;
            let optional = l.collect::<Vec<_>>().join(" ");
            let mut r = right.split(' ');
            let fstype = r.next()?.to_owned();
            let _source = r.next()?;
            let super_options = r.next().unwrap_or("").to_owned();
            Some(MountEntry {
                root: PathBuf::from(root),
                mount_point: PathBuf::from(mount_point),
                optional,
                fstype,
                super_options,
            })
        })
        .collect()
}

/// The mount holding `path`: the last-mounted entry whose mount point is
/// `path` or one of its ancestors.
pub fn mount_of<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.components().count())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: the hierarchy's controllers (empty for
/// cgroup v2) and the process's path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    pub controllers: Vec<String>,
    pub path: PathBuf,
}

/// Reads and parses `/proc/self/cgroup`.
pub fn read_cgroups() -> io::Result<Vec<CgroupEntry>> {
    Ok(parse_cgroups(&std::fs::read_to_string(
        "/proc/self/cgroup",
    )?))
}

/// Parses `/proc/self/cgroup` text; malformed lines are skipped.
pub fn parse_cgroups(text: &str) -> Vec<CgroupEntry> {
    text.lines()
        .take(MAX_LINES)
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(CgroupEntry {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// The controllers a v1 hierarchy's super options name (`rw,cpu,cpuacct` →
/// cpu, cpuacct; `rw,name=systemd` → name=systemd).
pub fn v1_controllers(super_options: &str, known: &[CgroupEntry]) -> Vec<String> {
    super_options
        .split(',')
        .filter(|o| {
            o.starts_with("name=") || known.iter().any(|k| k.controllers.iter().any(|c| c == o))
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime master:3 - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
50 27 0:40 /sub /mnt/with\\040space rw - tmpfs tmpfs rw
bad line
";

    #[test]
    fn mountinfo_fields_and_escapes() {
        let e = parse_mountinfo(INFO);
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].optional, "shared:1");
        assert_eq!(e[2].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(e[2].fstype, "cgroup");
        assert_eq!(e[4].mount_point, Path::new("/mnt/with space"));
        assert_eq!(e[4].root, Path::new("/sub"));
        let m = mount_of(&e, Path::new("/sys/fs/cgroup/systemd/x")).unwrap();
        assert_eq!(m.fstype, "cgroup");
        assert_eq!(mount_of(&e, Path::new("/home")).unwrap().fstype, "ext4");
    }

    #[test]
    fn cgroup_file_and_controllers() {
        let c = parse_cgroups("9:name=systemd:/\n4:cpu,cpuacct:/a/b\n0::/x\n");
        assert_eq!(c[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(c[1].path, Path::new("/a/b"));
        assert!(c[2].controllers.is_empty());
        assert_eq!(
            v1_controllers("rw,cpu,cpuacct", &c),
            vec!["cpu".to_owned(), "cpuacct".to_owned()]
        );
        assert_eq!(v1_controllers("rw,name=systemd", &c), vec!["name=systemd"]);
    }
}
