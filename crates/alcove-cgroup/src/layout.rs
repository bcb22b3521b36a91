//! Which cgroup hierarchies this host has and where alcove sits in each.

use crate::{CgroupError, Controller};
use std::path::{Path, PathBuf};

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// Only the unified (v2) hierarchy.
    V2,
    /// v1 controller hierarchies alongside a cgroup2 tree.
    Hybrid,
    /// Only v1 hierarchies.
    V1,
}

/// A mounted cgroup v1 hierarchy and alcove's own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Controllers bound to this hierarchy (for example `["cpu", "cpuacct"]`).
    pub controllers: Vec<String>,
    /// The directory of alcove's own cgroup in this hierarchy.
    pub own_dir: PathBuf,
}

/// The cgroup hierarchies of this host, found at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The directory of alcove's own cgroup in the unified hierarchy, if mounted.
    pub unified_own_dir: Option<PathBuf>,
    /// Controllers the unified hierarchy offers at alcove's own cgroup.
    pub unified_controllers: Vec<String>,
    /// The v1 hierarchies that bind a controller alcove uses.
    pub v1: Vec<V1Hierarchy>,
}

impl CgroupLayout {
    /// Finds the layout from `/proc/self/cgroup` and the filesystems mounted
    /// under /sys/fs/cgroup, identified by their statfs magic (as youki does).
    /// Where the host does not follow that convention, it reads
    /// `/proc/self/mountinfo` instead, which is exact but costs ~50 µs more.
    pub fn detect() -> Result<Self, CgroupError> {
        let cgroups = crate::read_string("/proc/self/cgroup".into())?;
        let mut layout = match Self::conventional(&cgroups) {
            Some(layout) => layout,
            None => {
                let mountinfo = crate::read_string("/proc/self/mountinfo".into())?;
                Self::parse(&mountinfo, &cgroups)?
            }
        };
        // A process in the leaf (moved there by an earlier step of this
        // alcove, or started there by systemd's DelegateSubgroup=) belongs
        // to the leaf's parent, the cgroup delegated to it.
        if let Some(dir) = &layout.unified_own_dir {
            if dir.file_name().is_some_and(|n| n == crate::LEAF) {
                layout.unified_own_dir = dir.parent().map(Path::to_owned);
            }
        }
        let v1_covers_all = ["cpu", "memory", "pids"].iter().all(|c| {
            layout
                .v1
                .iter()
                .any(|h| h.controllers.iter().any(|x| x == c))
        });
        if let (Some(dir), false) = (&layout.unified_own_dir, v1_covers_all) {
            let text = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            layout.unified_controllers = text.split_whitespace().map(str::to_owned).collect();
        }
        Ok(layout)
    }

    /// The layout at the conventional mount points, if every directory alcove
    /// would use is there and is the filesystem it should be.
    fn conventional(proc_cgroup: &str) -> Option<Self> {
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
        let base = Path::new("/sys/fs/cgroup");
        let mut layout = CgroupLayout {
            unified_own_dir: None,
            unified_controllers: Vec::new(),
            v1: Vec::new(),
        };
        let v2_only = fs_magic(base) == Some(CGROUP2_SUPER_MAGIC);
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let relative = path.strip_prefix('/').unwrap_or(path);
            if controllers.is_empty() {
                let root = if v2_only {
                    base.to_path_buf()
                } else {
                    base.join("unified")
                };
                let dir = root.join(relative);
                if fs_magic(&dir) == Some(CGROUP2_SUPER_MAGIC) {
                    layout.unified_own_dir = Some(dir);
                } else if v2_only {
                    return None;
                }
                continue;
            }
            let known: Vec<String> = controllers
                .split(',')
                .filter(|c| KNOWN_V1.contains(c))
                .map(str::to_owned)
                .collect();
            if known.is_empty() || v2_only {
                continue;
            }
            let dir = base.join(controllers).join(relative);
            if fs_magic(&dir) != Some(CGROUP_SUPER_MAGIC) {
                return None;
            }
            layout.v1.push(V1Hierarchy {
                controllers: known,
                own_dir: dir,
            });
        }
        (layout.unified_own_dir.is_some() || !layout.v1.is_empty()).then_some(layout)
    }

    /// Builds a layout from the text of mountinfo and /proc/self/cgroup.
    /// Controllers offered by the unified hierarchy are left empty.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Result<Self, CgroupError> {
        let mut layout = CgroupLayout {
            unified_own_dir: None,
            unified_controllers: Vec::new(),
            v1: Vec::new(),
        };
        let memberships: Vec<(Vec<&str>, &str)> = proc_cgroup
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                Some((
                    controllers.split(',').filter(|c| !c.is_empty()).collect(),
                    path,
                ))
            })
            .collect();
        for line in mountinfo.lines() {
            let Some(mount) = MountLine::parse(line) else {
                continue;
            };
            match mount.fstype {
                "cgroup2" => {
                    let Some((_, own)) = memberships.iter().find(|(c, _)| c.is_empty()) else {
                        continue;
                    };
                    if layout.unified_own_dir.is_none() {
                        layout.unified_own_dir = Some(join_own(&mount, own));
                    }
                }
                "cgroup" => {
                    let controllers: Vec<String> = mount
                        .super_options
                        .split(',')
                        .filter(|o| KNOWN_V1.contains(o))
                        .map(str::to_owned)
                        .collect();
                    if controllers.is_empty() {
                        continue; // name=systemd and other named hierarchies
                    }
                    let own = memberships.iter().find(|(c, _)| {
                        c.len() == controllers.len()
                            && c.iter().all(|x| controllers.iter().any(|y| y == x))
                    });
                    let Some((_, own)) = own else { continue };
                    if layout.v1.iter().any(|h| h.controllers == controllers) {
                        continue; // the same hierarchy mounted twice
                    }
                    layout.v1.push(V1Hierarchy {
                        controllers,
                        own_dir: join_own(&mount, own),
                    });
                }
                _ => {}
            }
        }
        if layout.unified_own_dir.is_none() && layout.v1.is_empty() {
            return Err(CgroupError::Parse {
                path: "/proc/self/mountinfo".into(),
                detail: "no cgroup or cgroup2 filesystem is mounted".into(),
            });
        }
        Ok(layout)
    }

    /// Whether the host is v2-only, hybrid, or v1-only.
    pub fn kind(&self) -> LayoutKind {
        match (&self.unified_own_dir, self.v1.is_empty()) {
            (Some(_), true) => LayoutKind::V2,
            (Some(_), false) => LayoutKind::Hybrid,
            (None, _) => LayoutKind::V1,
        }
    }

    /// The v1 hierarchy binding `controller`, if v1 serves it. v2 wins when
    /// the unified hierarchy offers the controller.
    pub fn v1_for(&self, controller: &str) -> Option<&V1Hierarchy> {
        if self.unified_controllers.iter().any(|c| c == controller) {
            return None;
        }
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }

    /// Whether some hierarchy can enforce `controller`.
    pub fn supports(&self, controller: Controller) -> bool {
        let name = controller.name();
        self.unified_controllers.iter().any(|c| c == name) || self.v1_for(name).is_some()
    }
}

/// Whether `path` is on a cgroup filesystem (v1 or v2).
pub(crate) fn is_cgroup_fs(path: &Path) -> bool {
    matches!(fs_magic(path), Some(0x6367_7270 | 0x0027_e0eb))
}

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    alcove_sys::fs::filesystem_magic(&c).ok()
}

const KNOWN_V1: &[&str] = &[
    "cpu", "cpuacct", "memory", "pids", "cpuset", "devices", "freezer", "blkio",
];

pub(crate) struct MountLine<'a> {
    pub(crate) root: String,
    pub(crate) mount_point: String,
    pub(crate) fstype: &'a str,
    pub(crate) super_options: &'a str,
}

impl<'a> MountLine<'a> {
    /// Parses one mountinfo line: `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.
    pub(crate) fn parse(line: &'a str) -> Option<Self> {
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split(' ');
        let root = unescape(left.nth(3)?);
        let mount_point = unescape(left.next()?);
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let _source = right.next()?;
        let super_options = right.next().unwrap_or("");
        Some(MountLine {
            root,
            mount_point,
            fstype,
            super_options,
        })
    }
}

/// The directory of cgroup `own` (a path from /proc/self/cgroup) under `mount`,
/// whose own root may itself be a sub-cgroup (as inside containers).
fn join_own(mount: &MountLine<'_>, own: &str) -> PathBuf {
    let relative = Path::new(own)
        .strip_prefix(&mount.root)
        .unwrap_or_else(|_| Path::new(own).strip_prefix("/").unwrap_or(Path::new(own)));
    Path::new(&mount.mount_point).join(relative)
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn hybrid_layout_finds_v1_controllers_and_the_unified_tree() {
        let layout = CgroupLayout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
        assert_eq!(layout.kind(), LayoutKind::Hybrid);
        assert_eq!(
            layout.unified_own_dir.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        let memory = layout.v1_for("memory").unwrap();
        assert_eq!(
            memory.own_dir,
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            layout.v1_for("cpu").unwrap().own_dir,
            Path::new("/sys/fs/cgroup/cpu")
        );
        assert!(layout
            .v1
            .iter()
            .all(|h| !h.controllers.iter().any(|c| c.starts_with("name="))));
    }

    #[test]
    fn v2_only_layout_with_a_container_root() {
        let mountinfo =
            "29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let cgroup = "0::/kubepods/pod1/ctr\n";
        let mut layout = CgroupLayout::parse(mountinfo, cgroup).unwrap();
        layout.unified_controllers = vec!["cpu".into(), "memory".into(), "pids".into()];
        assert_eq!(layout.kind(), LayoutKind::V2);
        assert_eq!(
            layout.unified_own_dir.as_deref(),
            Some(Path::new("/sys/fs/cgroup/ctr"))
        );
        assert!(layout.v1_for("memory").is_none());
        assert!(layout.supports(Controller::Pids));
    }

    #[test]
    fn comounted_v1_controllers_match_their_membership_line() {
        let mountinfo =
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let cgroup = "3:cpu,cpuacct:/user.slice\n";
        let layout = CgroupLayout::parse(mountinfo, cgroup).unwrap();
        assert_eq!(layout.kind(), LayoutKind::V1);
        let cpu = layout.v1_for("cpuacct").unwrap();
        assert_eq!(
            cpu.own_dir,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/user.slice")
        );
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        let err = CgroupLayout::parse("1 0 0:1 / / rw - ext4 /dev/vda rw\n", "0::/\n").unwrap_err();
        assert!(err.to_string().contains("no cgroup"));
    }
}
