//! Where a container's cgroup goes: the spec's `cgroupsPath` (plain, or
//! systemd's `slice:prefix:name`) turned into a path relative to the base,
//! the cgroup v2 base itself, and the v1 hierarchies alcove-cgroup's layout
//! does not list.

use super::CgroupsError;
use std::path::{Path, PathBuf};

/// The container's cgroup relative to the base in every hierarchy.
///
/// A leading `/` is dropped: absolute paths are still placed beneath the
/// runtime's own cgroup. Components that are empty, `.`, `..`, or hold a NUL
/// are refused, so the result cannot leave the base.
pub(super) fn relative(
    cgroups_path: Option<&str>,
    id: &str,
    systemd: bool,
) -> Result<PathBuf, CgroupsError> {
    let invalid = |reason: &'static str| CgroupsError::InvalidPath {
        path: cgroups_path.unwrap_or(id).to_owned(),
        reason,
    };
    check_component(id).map_err(|_| invalid("the container id is not a valid cgroup name"))?;
    let Some(raw) = cgroups_path.filter(|p| !p.is_empty()) else {
        return Ok(Path::new(super::DEFAULT_PARENT).join(id));
    };
    if systemd {
        let mut parts = raw.splitn(3, ':');
        let (Some(slice), Some(prefix), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                "a systemd cgroup path has the form slice:prefix:name",
            ));
        };
        let mut path = expand_slice(slice).map_err(invalid)?;
        let name = if name.is_empty() { id } else { name };
        let leaf = if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        check_component(&leaf).map_err(invalid)?;
        path.push(leaf);
        return Ok(path);
    }
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    let mut path = PathBuf::new();
    for component in trimmed.split('/') {
        check_component(component).map_err(invalid)?;
        path.push(component);
    }
    if path.as_os_str().is_empty() {
        return Err(invalid("the path names no cgroup beneath the base"));
    }
    Ok(path)
}

/// One path component: a directory name the kernel will take and that stays
/// where it is put.
fn check_component(component: &str) -> Result<(), &'static str> {
    match component {
        "" => Err("the path has an empty component"),
        "." | ".." => Err("the path may not contain . or .. components"),
        c if c.contains('/') || c.contains('\0') || c.contains('\n') => {
            Err("a component holds a slash, a NUL or a newline")
        }
        c if c.len() > 255 => Err("a component is longer than 255 bytes"),
        _ => Ok(()),
    }
}

/// A systemd slice unit name as the directory path systemd gives it:
/// `a-b.slice` lives at `a.slice/a-b.slice`; `-.slice` and the empty name
/// are the root slice, no directory at all.
fn expand_slice(slice: &str) -> Result<PathBuf, &'static str> {
    if slice.is_empty() || slice == "-.slice" {
        return Ok(PathBuf::new());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err("a systemd slice name ends in .slice");
    };
    if stem.is_empty()
        || stem.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return Err("a systemd slice name has no empty dash-separated part and no slash");
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        let unit = format!("{prefix}.slice");
        check_component(&unit)?;
        path.push(unit);
    }
    Ok(path)
}

/// The base for the container's cgroup in the unified hierarchy: the nearest
/// cgroup from `own` upwards that holds no process, or the hierarchy's root.
/// cgroup v2 enables controllers for children only in a cgroup without
/// processes of its own (the root excepted), and our caller sits in `own`.
pub(super) fn v2_base(own: &Path) -> PathBuf {
    let mut dir = own.to_path_buf();
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            return dir;
        }
        match dir.parent() {
            Some(parent) if is_cgroup2(parent) => dir = parent.to_path_buf(),
            _ => return dir,
        }
    }
}

fn is_cgroup2(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    std::ffi::CString::new(dir.as_os_str().as_bytes())
        .ok()
        .and_then(|c| alcove_sys::fs::filesystem_magic(&c).ok())
        == Some(CGROUP2_SUPER_MAGIC)
}

/// v1 controllers the OCI spec can limit that `alcove_cgroup::CgroupLayout`
/// does not look for.
pub(super) const EXTRA_V1: &[&str] = &["hugetlb", "net_cls", "net_prio", "rdma"];

/// The root of the cgroup hierarchy `dir` is in: the topmost directory on
/// the same filesystem (a hierarchy's root is a mount point).
pub(super) fn hierarchy_root(dir: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let mut root = dir.to_path_buf();
    let Ok(dev) = std::fs::metadata(dir).map(|m| m.dev()) else {
        return root;
    };
    while let Some(parent) = root.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => root = parent.to_path_buf(),
            _ => break,
        }
    }
    root
}

/// The mounted v1 hierarchies binding one of [`EXTRA_V1`], with the runtime's
/// own cgroup in each: (controllers of the hierarchy, own directory).
pub(super) fn extra_v1_hierarchies() -> Vec<(Vec<String>, PathBuf)> {
    let (Ok(mountinfo), Ok(cgroups)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/self/cgroup"),
    ) else {
        return Vec::new();
    };
    parse_extra_v1(&mountinfo, &cgroups)
}

fn parse_extra_v1(mountinfo: &str, proc_cgroup: &str) -> Vec<(Vec<String>, PathBuf)> {
    let mut found: Vec<(Vec<String>, PathBuf)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        if right.next() != Some("cgroup") {
            continue;
        }
        let super_options = right.nth(1).unwrap_or("");
        let controllers: Vec<&str> = super_options
            .split(',')
            .filter(|o| EXTRA_V1.contains(o))
            .collect();
        if controllers.is_empty() {
            continue;
        }
        let mut left = left.split(' ');
        let (Some(root), Some(mount_point)) = (left.nth(3), left.next()) else {
            continue;
        };
        // Escaped characters in these paths (\040) are rare enough for cgroup
        // mounts that a mount point holding one is skipped, not decoded.
        if root.contains('\\') || mount_point.contains('\\') {
            continue;
        }
        let own = proc_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            let list: Vec<&str> = list.split(',').collect();
            controllers.iter().all(|c| list.contains(c)).then_some(path)
        });
        let Some(own) = own else { continue };
        let relative = Path::new(own)
            .strip_prefix(root)
            .unwrap_or_else(|_| Path::new(own).strip_prefix("/").unwrap_or(Path::new(own)));
        let names: Vec<String> = controllers.iter().map(|c| (*c).to_owned()).collect();
        if !found.iter().any(|(c, _)| *c == names) {
            found.push((names, Path::new(mount_point).join(relative)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchy_root_is_the_mount_point() {
        let layout = alcove_cgroup::CgroupLayout::detect().expect("cgroup layout");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(" - cgroup"))
            .filter_map(|l| l.split_whitespace().nth(4))
            .collect();
        let mut checked = 0;
        for own in layout
            .v1
            .iter()
            .map(|h| h.own_dir.clone())
            .chain(layout.unified_own_dir.clone())
        {
            let root = hierarchy_root(&own);
            assert!(
                mounts.iter().any(|m| Path::new(m) == root),
                "{} -> {} is not a cgroup mount point ({mounts:?})",
                own.display(),
                root.display()
            );
            assert!(own.starts_with(&root));
            checked += 1;
        }
        assert!(checked > 0, "no cgroup hierarchy found");
    }

    #[test]
    fn unset_path_goes_under_alcove_oci() {
        assert_eq!(
            relative(None, "c1", false).unwrap(),
            Path::new("alcove-oci/c1")
        );
        assert_eq!(
            relative(Some(""), "c1", true).unwrap(),
            Path::new("alcove-oci/c1")
        );
    }

    #[test]
    fn absolute_and_relative_paths_are_kept_beneath_the_base() {
        assert_eq!(
            relative(Some("/libpod_parent/libpod-x"), "x", false).unwrap(),
            Path::new("libpod_parent/libpod-x")
        );
        assert_eq!(relative(Some("a/b"), "x", false).unwrap(), Path::new("a/b"));
    }

    #[test]
    fn escapes_and_empty_components_are_refused() {
        for bad in [
            "../x",
            "a/../../b",
            "a//b",
            "/",
            "a/./b",
            "a/",
            "..",
            "a\0b",
        ] {
            assert!(relative(Some(bad), "x", false).is_err(), "{bad:?} accepted");
        }
        assert!(relative(None, "../x", false).is_err());
        assert!(relative(None, "", false).is_err());
    }

    #[test]
    fn systemd_paths_expand_slices_and_name_a_scope() {
        assert_eq!(
            relative(Some("machine.slice:libpod:abc"), "abc", true).unwrap(),
            Path::new("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            relative(Some("a-b-c.slice:cri:x"), "x", true).unwrap(),
            Path::new("a.slice/a-b.slice/a-b-c.slice/cri-x.scope")
        );
        assert_eq!(
            relative(Some("-.slice:p:n"), "n", true).unwrap(),
            Path::new("p-n.scope")
        );
        assert_eq!(
            relative(Some(":p:n"), "n", true).unwrap(),
            Path::new("p-n.scope")
        );
        assert_eq!(
            relative(Some("kubepods.slice:cri:kubepods-pod1.slice"), "n", true).unwrap(),
            Path::new("kubepods.slice/kubepods-pod1.slice")
        );
    }

    #[test]
    fn bad_systemd_paths_are_refused() {
        for bad in [
            "machine.slice:libpod",
            "machine:libpod:x",
            "a--b.slice:p:n",
            "-a.slice:p:n",
            "../x.slice:p:n",
            "m.slice:p:a/../../b",
        ] {
            assert!(relative(Some(bad), "x", true).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn extra_v1_hierarchies_are_found_from_mountinfo() {
        let mountinfo = "\
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
42 31 0:39 / /sys/fs/cgroup/hugetlb rw - cgroup cgroup rw,hugetlb
43 31 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let cgroup = "5:net_cls,net_prio:/a\n4:hugetlb:/\n3:memory:/m\n";
        let found = parse_extra_v1(mountinfo, cgroup);
        assert_eq!(
            found,
            vec![
                (
                    vec!["net_cls".to_owned(), "net_prio".to_owned()],
                    PathBuf::from("/sys/fs/cgroup/net_cls,net_prio/a")
                ),
                (
                    vec!["hugetlb".to_owned()],
                    PathBuf::from("/sys/fs/cgroup/hugetlb")
                ),
            ]
        );
    }
}
