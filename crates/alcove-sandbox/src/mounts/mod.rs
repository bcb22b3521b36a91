//! The mount plan: the exact list of filesystem operations the child performs,
//! computed in the parent so the child only executes it.

use crate::spec::{NetMode, SandboxSpec};
use alcove_sys::mount::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT};
use std::ffi::{CString, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod apply;
mod host_etc;
mod plans;
pub(crate) use apply::Applier;
pub(crate) use host_etc::fingerprint as etc_fingerprint;
pub(crate) use plans::*;

/// Where the child assembles the sandbox's root, in its private mount namespace.
/// The directory exists on the host but nothing is ever mounted on it there.
pub const STAGING_DIR: &str = "/run/alcove/root";
/// Terminals one sandbox's devpts instance holds at once. The kernel's own
/// limit (/proc/sys/kernel/pty/max) is shared by every instance on the host,
/// so without this one sandbox could take them all.
pub const MAX_PTYS: u32 = 16;

/// Where a step acts.
#[derive(Debug)]
pub(crate) enum Place {
    /// A path alcove made and controls (its staging directory before the
    /// root is entered, a template's own tmpfs, the host's /dev): used as is.
    Path(CString),
    /// A path inside the sandbox's root, whose links an image or a --rootfs
    /// chose: resolved from the root [`MountOp::EnterRoot`] opened, with
    /// `openat2(RESOLVE_IN_ROOT)`, so that no link leads out of it (an
    /// absolute one resolves inside, as it will for the program).
    InRoot(InRoot),
}

#[derive(Debug)]
pub(crate) struct InRoot {
    /// The whole path, as the plan names it (for messages).
    pub shown: CString,
    /// The path relative to the root.
    pub path: CString,
    /// The directory holding it, relative to the root ("." for the root).
    pub dir: CString,
    /// Its last component, created in `dir` without following a link.
    pub name: CString,
}

impl Place {
    /// The path as the plan names it.
    pub(crate) fn shown(&self) -> &CString {
        match self {
            Place::Path(p) => p,
            Place::InRoot(r) => &r.shown,
        }
    }
}

/// One step of building the sandbox's filesystem.
#[derive(Debug)]
pub(crate) enum MountOp {
    /// mount(2); a bind (`MS_BIND` without `MS_REMOUNT`) with no source binds
    /// the target onto itself.
    Mount {
        source: Option<CString>,
        target: Place,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: Place,
        mode: libc::mode_t,
    },
    /// A directory that may already exist or sit on a read-only mount; failing
    /// is fine (a later chdir or mount reports the real problem).
    MkdirBestEffort {
        path: Place,
        mode: libc::mode_t,
    },
    /// Attach the detached mount tree `tree` (from `open_tree`) at `target`.
    MoveMount {
        tree: RawFd,
        target: Place,
    },
    /// An empty regular file, as the mount point for a file bind, unless
    /// something is there already.
    Touch {
        path: Place,
    },
    Symlink {
        target: CString,
        link: Place,
    },
    Mknod {
        path: Place,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    WriteFile {
        path: Place,
        contents: Vec<u8>,
        mode: libc::mode_t,
    },
    /// From here on, [`Place::InRoot`] paths resolve inside the directory
    /// `path` (opened once, after whatever is mounted on it).
    EnterRoot {
        path: CString,
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
        let p = |p: &Place| s(p.shown());
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
                p(target)
            ),
            MountOp::Mkdir { path, .. } | MountOp::MkdirBestEffort { path, .. } => {
                format!("creating directory {}", p(path))
            }
            MountOp::MoveMount { target, .. } => format!("attaching a bind mount at {}", p(target)),
            MountOp::Touch { path } => format!("creating mount point {}", p(path)),
            MountOp::Symlink { link, .. } => format!("creating symlink {}", p(link)),
            MountOp::Mknod { path, .. } => format!("creating device {}", p(path)),
            MountOp::WriteFile { path, .. } => format!("writing {}", p(path)),
            MountOp::EnterRoot { path } => format!("opening the root {}", s(path)),
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
    /// The pieces of the host's /etc shown beside the generated files.
    pub etc: std::sync::Arc<Vec<host_etc::EtcPiece>>,
}

impl HostView {
    pub(crate) fn read(spec: &SandboxSpec) -> Self {
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
        let resolv_conf = resolv_conf(spec);
        HostView {
            entries,
            resolv_conf,
            etc: host_etc::cached(Path::new("/etc")),
        }
    }
}

/// The /etc/resolv.conf a host-view sandbox sees: the host's with its
/// network, the caller's with a joined one, none without a network.
pub(crate) fn resolv_conf(spec: &SandboxSpec) -> Option<Vec<u8>> {
    match spec.net {
        NetMode::Host => std::fs::read("/etc/resolv.conf").ok(),
        NetMode::Joined => spec.resolv_conf.clone(),
        NetMode::None => None,
    }
}

#[derive(Default)]
struct Builder {
    ops: Vec<MountOp>,
    /// The root entered: paths below it are [`Place::InRoot`].
    root: Option<PathBuf>,
}

impl Builder {
    /// An image's /etc/resolv.conf, when the caller's network namespace
    /// comes with a resolver of its own (in the writable upper layer).
    fn image_resolv_conf(&mut self, spec: &SandboxSpec, root: &Path) {
        if let (NetMode::Joined, Some(conf)) = (spec.net, &spec.resolv_conf) {
            self.mkdir_best_effort(&root.join("etc"), 0o755);
            let path = self.place(&root.join("etc/resolv.conf"));
            self.ops.push(MountOp::WriteFile {
                path,
                contents: conf.clone(),
                mode: 0o644,
            });
        }
    }

    /// Makes later steps under `root` resolve inside it; call it once
    /// whatever the root is made of is mounted there.
    fn enter_root(&mut self, root: &Path) {
        self.ops.push(MountOp::EnterRoot { path: cpath(root) });
        self.root = Some(root.to_owned());
    }

    /// `path` as a step's place: inside the root once it is entered.
    fn place(&self, path: &Path) -> Place {
        let rel = self.root.as_deref().and_then(|r| path.strip_prefix(r).ok());
        let Some((rel, name)) = rel.and_then(|rel| Some((rel, rel.file_name()?))) else {
            return Place::Path(cpath(path));
        };
        let dir = rel
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Place::InRoot(InRoot {
            shown: cpath(path),
            path: cpath(rel),
            dir: cpath(dir),
            name: cpath(Path::new(name)),
        })
    }

    fn mount(
        &mut self,
        source: Option<&[u8]>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<String>,
    ) {
        let target = self.place(target);
        self.ops.push(MountOp::Mount {
            source: source.map(cstr),
            target,
            fstype: fstype.map(|f| cstr(f.as_bytes())),
            flags,
            data: data.map(|d| cstr(d.as_bytes())),
        });
    }

    /// Binds `source` (recursively) at `target`, then makes the bind
    /// read-only and nosuid plus `extra` flags (a bind's flags only take
    /// effect on a remount).
    fn bind_read_only(&mut self, source: &Path, target: &Path, extra: libc::c_ulong) {
        self.mount(
            Some(source.as_os_str().as_bytes()),
            target,
            None,
            MS_BIND | MS_REC,
            None,
        );
        self.remount_read_only(target, extra);
    }

    /// Remounts the mount at `target` read-only and nosuid, plus `extra`.
    fn remount_read_only(&mut self, target: &Path, extra: libc::c_ulong) {
        self.mount(
            None,
            target,
            None,
            MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | extra,
            None,
        );
    }

    /// Binds `target` onto itself (recursively), then makes that bind
    /// read-only and nosuid plus `extra` flags.
    fn bind_self_read_only(&mut self, target: &Path, extra: libc::c_ulong) {
        self.mount(None, target, None, MS_BIND | MS_REC, None);
        self.remount_read_only(target, extra);
    }

    fn mkdir(&mut self, path: &Path, mode: libc::mode_t) {
        let path = self.place(path);
        self.ops.push(MountOp::Mkdir { path, mode });
    }

    fn mkdir_best_effort(&mut self, path: &Path, mode: libc::mode_t) {
        let path = self.place(path);
        self.ops.push(MountOp::MkdirBestEffort { path, mode });
    }

    fn symlink(&mut self, target: &[u8], link: &Path) {
        let link = self.place(link);
        self.ops.push(MountOp::Symlink {
            target: cstr(target),
            link,
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
            let path = self.place(&dev.join(name));
            self.ops.push(MountOp::Mknod {
                path,
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
            self.symlink(target.as_bytes(), &dev.join(link));
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
                let path = self.place(&target);
                self.ops.push(MountOp::Touch { path });
            }
        }
        let workdir = inside(root, &spec.workdir);
        if workdir != root {
            self.mkdir_parents(root, &workdir);
            self.mkdir_best_effort(&workdir, 0o755);
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
            self.mkdir_best_effort(dir, 0o755);
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
            Some(format!(
                "newinstance,ptmxmode=0666,mode=0620,gid=5,max={MAX_PTYS}"
            )),
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
        if spec.writable_workdir {
            let workdir = inside(root, &spec.workdir);
            self.mount(
                Some(b"tmpfs"),
                &workdir,
                Some("tmpfs"),
                MS_NOSUID | MS_NODEV,
                Some(format!(
                    "mode=0755,size={tmpfs_bytes},uid={},gid={}",
                    spec.user.uid, spec.user.gid
                )),
            );
        }
        for (bind, &tree) in spec.binds.iter().zip(bind_trees) {
            let target = self.place(&inside(root, &bind.target));
            self.ops.push(MountOp::MoveMount { tree, target });
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
                self.bind_self_read_only(&proc.join(name), MS_NODEV | MS_NOEXEC);
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

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("validated: no NUL bytes")
}

fn cpath(path: &Path) -> CString {
    cstr(OsStr::as_bytes(path.as_os_str()))
}
