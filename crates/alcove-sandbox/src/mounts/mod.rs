//! The mount plan: the exact list of filesystem operations the child performs,
//! computed in the parent so the child only executes it.

use crate::spec::{NetMode, SandboxSpec};
use alcove_sys::mount::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT};
use std::ffi::{CString, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod plans;
pub(crate) use plans::*;

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
                self.bind_read_only(&path, &path, MS_NODEV | MS_NOEXEC);
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
