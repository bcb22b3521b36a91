//! The mount plan: the exact list of filesystem operations the child performs,
//! computed in the parent so the child only executes it.

use crate::spec::{NetMode, SandboxSpec};
use alcove_sys::mount::{
    MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
};
use std::ffi::{CString, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the child assembles the sandbox's root, in its private mount namespace.
/// The directory exists on the host but nothing is ever mounted on it there.
pub const STAGING_DIR: &str = "/run/alcove/root";

/// One step of building the sandbox's filesystem.
#[derive(Debug)]
pub(crate) enum MountOp {
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// A directory that may already exist or sit on a read-only mount; failing
    /// is fine (a later chdir or mount reports the real problem).
    MkdirBestEffort {
        path: CString,
        mode: libc::mode_t,
    },
    /// Attach the detached mount tree `tree` (from `open_tree`) at `target`.
    MoveMount {
        tree: RawFd,
        target: CString,
    },
    /// An empty regular file, as the mount point for a file bind.
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Mknod {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    WriteFile {
        path: CString,
        contents: Vec<u8>,
        mode: libc::mode_t,
    },
    /// Make `new_root` the root and detach the old one.
    PivotRoot {
        new_root: CString,
    },
}

impl MountOp {
    /// A sentence naming what this step does, for error messages.
    pub(crate) fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            MountOp::Mount {
                source,
                target,
                fstype,
                ..
            } => format!(
                "mounting {} ({}) at {}",
                source.as_ref().map_or("-".into(), s),
                fstype.as_ref().map_or("bind".into(), s),
                s(target)
            ),
            MountOp::Mkdir { path, .. } | MountOp::MkdirBestEffort { path, .. } => {
                format!("creating directory {}", s(path))
            }
            MountOp::MoveMount { target, .. } => format!("attaching a bind mount at {}", s(target)),
            MountOp::Touch { path } => format!("creating mount point {}", s(path)),
            MountOp::Symlink { link, .. } => format!("creating symlink {}", s(link)),
            MountOp::Mknod { path, .. } => format!("creating device {}", s(path)),
            MountOp::WriteFile { path, .. } => format!("writing {}", s(path)),
            MountOp::PivotRoot { new_root } => format!("pivoting the root to {}", s(new_root)),
        }
    }
}

/// Facts about the host that shape the plan, read once.
#[derive(Debug, Clone)]
pub(crate) struct HostView {
    /// Top-level directories to show read-only, as `(name, Some(symlink target))`
    /// when the host has a symlink (merged /usr) and `(name, None)` for a directory.
    pub entries: Vec<(&'static str, Option<PathBuf>)>,
    pub resolv_conf: Option<Vec<u8>>,
}

impl HostView {
    pub(crate) fn read(net: NetMode) -> Self {
        let mut entries = Vec::new();
        for name in ["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
            let path = Path::new("/").join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&path) {
                        entries.push((name, Some(target)));
                    }
                }
                Ok(m) if m.is_dir() => entries.push((name, None)),
                _ => {}
            }
        }
        let resolv_conf = match net {
            NetMode::Host => std::fs::read("/etc/resolv.conf").ok(),
            NetMode::None => None,
        };
        HostView {
            entries,
            resolv_conf,
        }
    }
}

struct Builder {
    ops: Vec<MountOp>,
}

impl Builder {
    fn mount(
        &mut self,
        source: Option<&[u8]>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<String>,
    ) {
        self.ops.push(MountOp::Mount {
            source: source.map(cstr),
            target: cpath(target),
            fstype: fstype.map(|f| cstr(f.as_bytes())),
            flags,
            data: data.map(|d| cstr(d.as_bytes())),
        });
    }

    fn mkdir(&mut self, path: &Path, mode: libc::mode_t) {
        self.ops.push(MountOp::Mkdir {
            path: cpath(path),
            mode,
        });
    }

    fn tmpfs(&mut self, target: &Path, flags: libc::c_ulong, mode: &str, bytes: u64) {
        self.mount(
            Some(b"tmpfs"),
            target,
            Some("tmpfs"),
            flags,
            Some(format!("mode={mode},size={bytes}")),
        );
    }

    /// The usual character devices and /dev's symlinks, plus mount points for
    /// the private devpts and /dev/shm each run mounts.
    fn dev_nodes(&mut self, dev: &Path) {
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            self.ops.push(MountOp::Mknod {
                path: cpath(&dev.join(name)),
                mode: libc::S_IFCHR | 0o666,
                dev: libc::makedev(major, minor),
            });
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            self.ops.push(MountOp::Symlink {
                target: cstr(target.as_bytes()),
                link: cpath(&dev.join(link)),
            });
        }
        self.mkdir(&dev.join("pts"), 0o755);
        self.mkdir(&dev.join("shm"), 0o1777);
    }

    /// Mount points for the binds, and the working directory, under `root`.
    fn mount_points(&mut self, spec: &SandboxSpec, root: &Path) {
        for bind in &spec.binds {
            let target = inside(root, &bind.target);
            self.mkdir_parents(root, &target);
            if bind.source.is_dir() {
                self.mkdir(&target, 0o755);
            } else {
                self.ops.push(MountOp::Touch {
                    path: cpath(&target),
                });
            }
        }
        let workdir = inside(root, &spec.workdir);
        if workdir != root {
            self.mkdir_parents(root, &workdir);
            self.ops.push(MountOp::MkdirBestEffort {
                path: cpath(&workdir),
                mode: 0o755,
            });
        }
    }

    fn mkdir_parents(&mut self, root: &Path, path: &Path) {
        let mut ancestors: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .take_while(|a| *a != root)
            .collect();
        ancestors.reverse();
        for dir in ancestors {
            self.ops.push(MountOp::MkdirBestEffort {
                path: cpath(dir),
                mode: 0o755,
            });
        }
    }

    /// The mounts every run gets fresh under `root`, and the binds.
    fn fresh_mounts(&mut self, spec: &SandboxSpec, root: &Path, bind_trees: &[RawFd]) {
        let tmpfs_bytes = spec.limits.tmpfs_bytes;
        self.tmpfs(&root.join("tmp"), MS_NOSUID | MS_NODEV, "1777", tmpfs_bytes);
        self.tmpfs(
            &root.join("dev/shm"),
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "1777",
            tmpfs_bytes,
        );
        self.mount(
            Some(b"devpts"),
            &root.join("dev/pts"),
            Some("devpts"),
            MS_NOSUID | MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into()),
        );
        self.mount(
            Some(b"proc"),
            &root.join("proc"),
            Some("proc"),
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            None,
        );
        if spec.user.uid == 0 {
            self.mask_proc(&root.join("proc"));
        }
        for (bind, &tree) in spec.binds.iter().zip(bind_trees) {
            self.ops.push(MountOp::MoveMount {
                tree,
                target: cpath(&inside(root, &bind.target)),
            });
        }
    }
}

impl Builder {
    /// /proc's files belong to the host's uid 0, so a sandbox running as uid 0
    /// could write them even without capabilities (sysrq-trigger needs none).
    /// As the default container profiles do, make the system-wide ones
    /// read-only and hide the ones that leak kernel state.
    fn mask_proc(&mut self, proc: &Path) {
        for name in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
            if Path::new("/proc").join(name).exists() {
                let path = proc.join(name);
                self.mount(
                    Some(path.as_os_str().as_bytes()),
                    &path,
                    None,
                    MS_BIND | MS_REC,
                    None,
                );
                self.mount(
                    None,
                    &path,
                    None,
                    MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    None,
                );
            }
        }
        for name in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"] {
            if Path::new("/proc").join(name).exists() {
                self.mount(Some(b"/dev/null"), &proc.join(name), None, MS_BIND, None);
            }
        }
    }
}

/// `path` (absolute, inside the sandbox) as seen from the host side under `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The skeleton of a host-view root, built once per distinct skeleton and kept
/// as a template mount namespace (see `template`): a read-only tmpfs with the
/// host's /usr (and /bin, /lib...) bound read-only, a generated /etc, device
/// nodes, and empty mount points for what each run mounts fresh.
pub(crate) fn template_plan(spec: &SandboxSpec, host: &HostView) -> Vec<MountOp> {
    let mut b = skeleton(spec, host);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(Path::new(STAGING_DIR)),
    });
    b.ops
}

/// A host-view root built entirely by the child, for when no template can be kept.
pub(crate) fn scratch_plan(
    spec: &SandboxSpec,
    host: &HostView,
    bind_trees: &[RawFd],
) -> Vec<MountOp> {
    let root = Path::new(STAGING_DIR);
    let mut b = skeleton(spec, host);
    b.fresh_mounts(spec, root, bind_trees);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(root),
    });
    b.ops
}

fn skeleton(spec: &SandboxSpec, host: &HostView) -> Builder {
    let root = Path::new(STAGING_DIR);
    let mut b = Builder { ops: Vec::new() };
    // Nothing mounted from here on may propagate back to the host.
    b.mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None);
    // No MS_NODEV: /dev's nodes live on this tmpfs, which ends read-only and
    // holds nothing but what alcove writes.
    b.tmpfs(root, MS_NOSUID, "0755", 1 << 20);
    for dir in ["etc", "dev", "proc", "tmp", "run"] {
        b.mkdir(&root.join(dir), 0o755);
    }
    for (name, link) in &host.entries {
        match link {
            Some(target) => b.ops.push(MountOp::Symlink {
                target: cpath(target),
                link: cpath(&root.join(name)),
            }),
            None => {
                let target = root.join(name);
                b.mkdir(&target, 0o755);
                b.mount(
                    Some(Path::new("/").join(name).as_os_str().as_bytes()),
                    &target,
                    None,
                    MS_BIND | MS_REC,
                    None,
                );
                b.mount(
                    None,
                    &target,
                    None,
                    MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
                    None,
                );
            }
        }
    }
    let etc = root.join("etc");
    let files = crate::etc::files(
        &spec.hostname,
        spec.user.uid,
        spec.user.gid,
        host.resolv_conf.as_deref(),
    );
    for (name, contents, mode) in files {
        b.ops.push(MountOp::WriteFile {
            path: cpath(&etc.join(name)),
            contents,
            mode,
        });
    }
    b.dev_nodes(&root.join("dev"));
    b.mount_points(spec, root);
    b.mount(
        None,
        root,
        None,
        MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID,
        None,
    );
    b
}

/// What every run mounts fresh on top of a template's copy: /tmp, /dev/shm,
/// /dev/pts, /proc, and the binds (detached trees the parent cloned, in order).
pub(crate) fn per_run_plan(spec: &SandboxSpec, bind_trees: &[RawFd]) -> Vec<MountOp> {
    let mut b = Builder { ops: Vec::new() };
    b.fresh_mounts(spec, Path::new("/"), bind_trees);
    b.ops
}

/// The template for a `--rootfs` sandbox: a small read-only tmpfs holding the
/// rootfs bound read-only at /lower, alcove's /dev, and empty mount points for
/// the per-run tmpfs (/scratch) and overlay (/merged).
pub(crate) fn rootfs_template_plan(lower: &Path) -> Vec<MountOp> {
    let root = Path::new(STAGING_DIR);
    let mut b = Builder { ops: Vec::new() };
    b.mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None);
    b.tmpfs(root, MS_NOSUID, "0755", 1 << 20);
    for dir in ["lower", "scratch", "merged", "dev"] {
        b.mkdir(&root.join(dir), 0o755);
    }
    let lower_view = root.join("lower");
    b.mount(
        Some(lower.as_os_str().as_bytes()),
        &lower_view,
        None,
        MS_BIND | MS_REC,
        None,
    );
    b.mount(
        None,
        &lower_view,
        None,
        MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
        None,
    );
    b.dev_nodes(&root.join("dev"));
    b.mount(
        None,
        root,
        None,
        MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID,
        None,
    );
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(root),
    });
    b.ops
}

/// What each `--rootfs` run does in its copy of the template: an overlay of
/// /lower under a fresh tmpfs, alcove's /dev in it, the fresh mounts, the
/// binds, and a pivot into the overlay.
pub(crate) fn rootfs_per_run_plan(spec: &SandboxSpec, bind_trees: &[RawFd]) -> Vec<MountOp> {
    let mut b = Builder { ops: Vec::new() };
    let scratch = Path::new("/scratch");
    b.tmpfs(
        scratch,
        MS_NOSUID | MS_NODEV,
        "0755",
        spec.limits.tmpfs_bytes,
    );
    b.mkdir(&scratch.join("upper"), 0o755);
    b.mkdir(&scratch.join("work"), 0o755);
    let root = Path::new("/merged");
    b.mount(
        Some(b"overlay"),
        root,
        Some("overlay"),
        MS_NOSUID | MS_NODEV,
        Some("lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work".into()),
    );
    for dir in ["dev", "proc", "tmp"] {
        b.ops.push(MountOp::MkdirBestEffort {
            path: cpath(&root.join(dir)),
            mode: 0o755,
        });
    }
    // The image's own /dev may hold device nodes: cover it with alcove's.
    b.mount(Some(b"/dev"), &root.join("dev"), None, MS_BIND, None);
    b.mount_points(spec, root);
    b.fresh_mounts(spec, root, bind_trees);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(root),
    });
    b.ops
}

/// The whole filesystem for a `--rootfs` sandbox, built in the child from a
/// copy of the host's mount namespace: an overlay of the rootfs under a tmpfs
/// upper layer, then the same fresh mounts, then the pivot.
pub(crate) fn rootfs_plan(spec: &SandboxSpec, lower: &Path, bind_trees: &[RawFd]) -> Vec<MountOp> {
    let staging = Path::new(STAGING_DIR);
    let mut b = Builder { ops: Vec::new() };
    b.mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None);
    b.tmpfs(
        staging,
        MS_NOSUID | MS_NODEV,
        "0755",
        spec.limits.tmpfs_bytes,
    );
    let (upper, work, root) = (
        staging.join("upper"),
        staging.join("work"),
        staging.join("merged"),
    );
    for dir in [&upper, &work, &root] {
        b.mkdir(dir, 0o755);
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    b.mount(
        Some(b"overlay"),
        &root,
        Some("overlay"),
        MS_NOSUID | MS_NODEV,
        Some(data),
    );
    for dir in ["dev", "proc", "tmp"] {
        b.mkdir(&root.join(dir), 0o755);
    }
    // The image's own /dev may hold device nodes: cover it with one of ours.
    b.tmpfs(&root.join("dev"), MS_NOSUID | MS_NOEXEC, "0755", 1 << 20);
    b.dev_nodes(&root.join("dev"));
    b.mount_points(spec, &root);
    b.fresh_mounts(spec, &root, bind_trees);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(&root),
    });
    b.ops
}

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("validated: no NUL bytes")
}

fn cpath(path: &Path) -> CString {
    cstr(OsStr::as_bytes(path.as_os_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Bind;

    fn host() -> HostView {
        HostView {
            entries: vec![("usr", None), ("bin", Some("usr/bin".into()))],
            resolv_conf: None,
        }
    }

    fn described(ops: &[MountOp]) -> Vec<String> {
        ops.iter().map(MountOp::describe).collect()
    }

    #[test]
    fn template_binds_usr_read_only_and_ends_with_a_pivot() {
        let spec = SandboxSpec::new(vec!["true".into()]);
        let ops = template_plan(&spec, &host());
        let d = described(&ops);
        assert!(d
            .iter()
            .any(|d| d == "mounting /usr (bind) at /run/alcove/root/usr"));
        assert!(d
            .iter()
            .any(|d| d == "creating symlink /run/alcove/root/bin"));
        assert!(d.iter().any(|d| d == "writing /run/alcove/root/etc/passwd"));
        assert!(!d.iter().any(|d| d.contains("shadow")));
        let ro = ops.iter().any(|op| {
            matches!(op, MountOp::Mount { target, flags, .. }
            if target.to_bytes() == b"/run/alcove/root/usr" && flags & MS_RDONLY != 0)
        });
        assert!(ro, "/usr must be remounted read-only");
        assert!(matches!(ops.last(), Some(MountOp::PivotRoot { .. })));
        assert!(matches!(&ops[0], MountOp::Mount { flags, .. } if *flags == MS_REC | MS_PRIVATE));
    }

    #[test]
    fn each_run_mounts_tmp_shm_pts_proc_and_its_binds() {
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        spec.binds.push(Bind::parse("/tmp:/data/in:rw").unwrap());
        let d = described(&per_run_plan(&spec, &[7]));
        assert_eq!(
            d,
            [
                "mounting tmpfs (tmpfs) at /tmp",
                "mounting tmpfs (tmpfs) at /dev/shm",
                "mounting devpts (devpts) at /dev/pts",
                "mounting proc (proc) at /proc",
                "attaching a bind mount at /data/in",
            ]
        );
        let template = described(&template_plan(&spec, &host()));
        assert!(template
            .iter()
            .any(|d| d == "creating directory /run/alcove/root/data"));
        assert!(template
            .iter()
            .any(|d| d == "creating directory /run/alcove/root/data/in"));
    }

    #[test]
    fn rootfs_is_an_overlay_with_a_tmpfs_upper_layer() {
        let spec = SandboxSpec::new(vec!["true".into()]);
        let ops = rootfs_plan(&spec, Path::new("/srv/img"), &[]);
        let overlay = ops.iter().find_map(|op| match op {
            MountOp::Mount {
                fstype: Some(f),
                data: Some(d),
                ..
            } if f.to_bytes() == b"overlay" => Some(d.to_string_lossy().into_owned()),
            _ => None,
        });
        assert_eq!(
            overlay.as_deref(),
            Some("lowerdir=/srv/img,upperdir=/run/alcove/root/upper,workdir=/run/alcove/root/work")
        );
        assert!(described(&ops)
            .iter()
            .any(|d| d == "mounting proc (proc) at /run/alcove/root/merged/proc"));
        assert!(matches!(ops.last(), Some(MountOp::PivotRoot { .. })));
    }
}
