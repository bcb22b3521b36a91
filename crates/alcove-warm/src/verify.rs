//! Checking a copy from outside before it is given a request.
//!
//! When a copy connects, alcove takes its pid from the kernel (`SO_PEERCRED`)
//! and reads `/proc/PID` to decide whether the copy may have a request
//! (docs/warm-protocol.md, "What alcove checks before a copy gets a request").
//! [`TemplateFacts`] is what alcove reads about a template once it says
//! `ready`; [`came_from`] checks, before alcove moves a copy into a cgroup of
//! its own, that it was in the template's cgroup; [`check_copy`] makes every
//! other check. Nothing a copy says about itself is believed.
//!
//! Three checks go further than the protocol's list says in words, because a
//! copy can write through what they allow: a file or directory the copy holds
//! on a writable mount of the template is refused even when opened read-only
//! (`openat` in a directory, or reopening `/proc/self/fd/N` for writing,
//! reach the template's file system); a memfd is refused even when read-only
//! (the same reopening); and the copy's working directory and root are
//! checked like directories it holds. Every writable mount counts, one
//! covered by another mount included: make the template's mounts read-only
//! before mounting over them.
//!
//! Every `/proc` file is read with a bound ([`MAX_PROC_FILE`],
//! [`MAX_MOUNTINFO`]) and at most [`MAX_DESCRIPTORS`] descriptors are
//! inspected, so a copy cannot make a check run long. The text is parsed by
//! small pure functions, tested on sample text below.
//!
//! The checks read a running process. A copy that runs while it is checked can
//! change what it holds between two reads (move a descriptor behind the scan
//! of `/proc/PID/fd`, start a thread after `Threads:` was read), so the caller
//! should freeze the copy's cgroup for the duration of [`check_copy`].

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most bytes read from a small `/proc` file (status, cgroup, fdinfo, stat).
pub const MAX_PROC_FILE: usize = 64 * 1024;
/// The most bytes read from `/proc/PID/mountinfo`.
pub const MAX_MOUNTINFO: usize = 1024 * 1024;
/// The most bytes read from `/proc/PID/task/PID/children`: a copy must have
/// none, so a few pids are enough to say which.
const MAX_CHILDREN_SHOWN: usize = 256;
/// The most open descriptors a copy may have; a copy with more is refused, not scanned.
pub const MAX_DESCRIPTORS: usize = 4096;

/// The namespaces a copy must not share with its template, as `/proc/PID/ns` names them.
const NAMESPACES: [&str; 6] = ["user", "pid", "mnt", "net", "ipc", "uts"];
/// The capability sets of `/proc/PID/status`, in the order [`Status::caps`] holds them.
const CAP_SETS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Reading what alcove checks from `/proc` failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("could not read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is longer than the {limit} bytes alcove reads of it", path.display())]
    TooLong { path: PathBuf, limit: usize },
    #[error("{} is not in the form alcove expects: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
}

/// Why a copy may not have a request. Every check of the protocol that fails
/// has its own variant; a copy refused for any of them is killed.
#[derive(Debug, thiserror::Error)]
pub enum CopyRefused {
    #[error("the copy (pid {pid}) exited before alcove finished checking it")]
    Gone { pid: libc::pid_t },
    #[error("alcove could not read the copy's /proc entries")]
    Unreadable(#[from] VerifyError),
    #[error(
        "process {pid} did not come from this template: its cgroups differ from the \
         template's ({difference})"
    )]
    NotFromTemplate {
        pid: libc::pid_t,
        difference: String,
    },
    #[error(
        "the copy is still in the template's {kind} namespace ({kind}:[{inode}]): a copy \
         must unshare exactly ALCOVE_UNSHARE_FLAGS, and fork once more for the pid \
         namespace, before it connects"
    )]
    SharedNamespace { kind: &'static str, inode: u64 },
    #[error(
        "the copy has {count} threads: a copy must be one thread until it has its request \
         (start no thread between the fork and the request)"
    )]
    Threads { count: u32 },
    #[error("the copy has child processes ({pids}): a copy must start none before its request")]
    Children { pids: String },
    #[error(
        "this kernel has no /proc/PID/task/PID/children (it needs CONFIG_PROC_CHILDREN), so \
         alcove cannot check that a copy has no child processes"
    )]
    ChildrenUnknown,
    #[error(
        "the copy still holds capabilities ({set} is {value:#x}): drop the bounding set with \
         PR_CAPBSET_DROP, and every other set with capset, before connecting"
    )]
    Capabilities { set: &'static str, value: u64 },
    #[error(
        "no_new_privs is not set in the copy (NoNewPrivs: {value}); it cannot be cleared, so \
         its template was not started with it"
    )]
    NoNewPrivs { value: u32 },
    #[error(
        "the copy is not under a seccomp filter (Seccomp: {mode}, 2 wanted): install the \
         filter at ALCOVE_COPY_FILTER before connecting"
    )]
    SeccompMode { mode: u32 },
    #[error(
        "the copy has {copy} seccomp filters, no more than the template's {template}: it did \
         not install the filter at ALCOVE_COPY_FILTER"
    )]
    SeccompFilters { copy: u32, template: u32 },
    #[error(
        "{} is writable in the copy and is on a filesystem ({device}) the template can write \
         to, so every copy could write to it: make it read-only before connecting \
         (MS_REMOUNT|MS_BIND|MS_RDONLY before anything is mounted over it, or every mount at \
         once with mount_setattr, AT_RECURSIVE and MOUNT_ATTR_RDONLY)",
        mount_point.display()
    )]
    SharedWritableMount {
        mount_point: PathBuf,
        device: String,
    },
    #[error(
        "the copy has more than {limit} open descriptors, more than alcove inspects: close \
         them before the runtime says ready"
    )]
    TooManyDescriptors { limit: usize },
    #[error(
        "descriptor {fd} ({link}) is open in the copy; made during initialisation, it would \
         be shared by every copy: close it before the runtime says ready"
    )]
    Pipe { fd: u32, link: String },
    #[error(
        "descriptor {fd} ({link}) is open in the copy; an eventfd, epoll, timer, signal, \
         inotify or process descriptor made during initialisation would be shared by every \
         copy: close it before the runtime says ready"
    )]
    EventDescriptor { fd: u32, link: String },
    #[error(
        "descriptor {fd} ({link}) is a second socket in the copy; its only socket must be its \
         connection to alcove, and one made during initialisation would be shared by every \
         copy: close it before the runtime says ready"
    )]
    SecondSocket { fd: u32, link: String },
    #[error("the copy holds no socket, so not its connection to alcove")]
    NoSocket,
    #[error(
        "descriptor {fd} ({link}) is a memfd in the copy; every copy would share its memory \
         (even one opened read-only can be reopened for writing through /proc/self/fd): \
         close it before the runtime says ready"
    )]
    Memfd { fd: u32, link: String },
    #[error(
        "descriptor {fd} ({link}) is open for writing in the copy, on a filesystem the \
         template can write to; every copy would write to the same file: close it before \
         the runtime says ready"
    )]
    WritableFile { fd: u32, link: String },
    #[error(
        "descriptor {fd} ({link}) is open in the copy through a writable mount of the \
         template; read-only as it is, a copy could write through it (openat in a directory, \
         or reopening /proc/self/fd/{fd}): close it before the runtime says ready"
    )]
    FileOnWritableMount { fd: u32, link: String },
    #[error(
        "descriptor {fd} ({link}) is on mount {mnt_id}, which is neither the copy's nor the \
         template's, so alcove cannot tell whether a copy could write through it: close it \
         before the runtime says ready"
    )]
    UnknownMount { fd: u32, link: String, mnt_id: u32 },
    #[error(
        "the copy's {what} ({path}) is on a writable mount of the template, so a copy could \
         write where the template does through it: change to a directory of the copy's own \
         mounts before connecting"
    )]
    PlaceOnWritableMount { what: &'static str, path: String },
    #[error(
        "the copy's {what} ({path}) is on mount {mnt_id}, which is neither the copy's nor the \
         template's, so alcove cannot tell whether a copy could write through it: change to \
         a directory of the copy's own mounts before connecting"
    )]
    PlaceOnUnknownMount {
        what: &'static str,
        path: String,
        mnt_id: u32,
    },
    #[error(
        "descriptor {fd} ({link}) is a terminal in the copy; every copy would share it: close \
         it before the runtime says ready"
    )]
    Terminal { fd: u32, link: String },
    #[error(
        "descriptor {fd} ({link}) is open in the copy and is not of a kind a copy may hold \
         (read-only files and directories, character devices, its one connection to alcove): \
         close it before the runtime says ready"
    )]
    UnknownDescriptor { fd: u32, link: String },
    #[error(
        "the copy has a shared mapping ({what}, at {range}) made during initialisation: every \
         copy would share its memory; map it privately (MAP_PRIVATE; in Python, mmap's \
         flags=mmap.MAP_PRIVATE) or make it in the handler"
    )]
    SharedMapping { range: String, what: String },
}

/// What alcove reads about a template once it says `ready`, to compare its copies with.
#[derive(Debug, Clone)]
pub struct TemplateFacts {
    pid: libc::pid_t,
    /// Namespace inodes, in the order of [`NAMESPACES`].
    namespaces: [u64; 6],
    /// Superblocks of the template's mounts whose per-mount options say `rw`.
    writable: Vec<Dev>,
    /// Superblocks of the template's devpts mounts (its terminals).
    devpts: Vec<Dev>,
    /// The template's mount table: a descriptor a copy inherited points into it
    /// (its `mnt_id` is the template's mount, not one of the copy's).
    mounts: Vec<Mount>,
    seccomp_filters: u32,
    /// The text of `/proc/PID/cgroup`.
    cgroup: String,
}

impl TemplateFacts {
    /// Reads the facts of the template `pid` from `/proc/PID`.
    pub fn read(pid: libc::pid_t) -> Result<Self, VerifyError> {
        let proc = Proc::new(pid);
        let status = proc.status()?;
        let seccomp_filters = proc.require(status.seccomp_filters, "status", "Seccomp_filters")?;
        let mut namespaces = [0; 6];
        for (inode, kind) in namespaces.iter_mut().zip(NAMESPACES) {
            *inode = proc.namespace(kind)?;
        }
        let mounts = proc.mountinfo()?;
        let mut writable = Vec::new();
        let mut devpts = Vec::new();
        for mount in &mounts {
            if mount.writable && !writable.contains(&mount.dev) {
                writable.push(mount.dev);
            }
            if mount.devpts && !devpts.contains(&mount.dev) {
                devpts.push(mount.dev);
            }
        }
        let cgroup = proc.read("cgroup", MAX_PROC_FILE)?;
        Ok(TemplateFacts {
            pid,
            namespaces,
            writable,
            devpts,
            mounts,
            seccomp_filters,
            cgroup,
        })
    }

    /// The template's pid, as alcove sees it.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }
}

/// Threads of `pid` (the `Threads:` line of /proc/PID/status).
pub fn thread_count(pid: libc::pid_t) -> Result<u32, VerifyError> {
    let proc = Proc::new(pid);
    let status = proc.status()?;
    proc.require(status.threads, "status", "Threads")
}

/// Before alcove moves the copy: it came from this template (its
/// /proc/PID/cgroup equals the template's).
pub fn came_from(pid: libc::pid_t, template: &TemplateFacts) -> Result<(), CopyRefused> {
    let refused = match Proc::new(pid).read("cgroup", MAX_PROC_FILE) {
        Ok(text) if text == template.cgroup => return Ok(()),
        Ok(text) => CopyRefused::NotFromTemplate {
            pid,
            difference: first_difference(&template.cgroup, &text),
        },
        Err(e) => CopyRefused::Unreadable(e),
    };
    Err(if is_gone(pid) {
        CopyRefused::Gone { pid }
    } else {
        refused
    })
}

/// After the move: every other check of the protocol's list.
/// `shared_rw`: mount points the owner shared writable on purpose (exempt from the mount check).
///
/// In order: namespaces, status (threads, capabilities, no_new_privs,
/// seccomp), children, mounts, working directory and root, descriptors; the
/// first that fails is the answer. A copy that has exited (or is a zombie)
/// by the time a check fails is [`CopyRefused::Gone`], whichever check
/// noticed. Freeze the copy while this runs (see the module's documentation).
pub fn check_copy(
    pid: libc::pid_t,
    template: &TemplateFacts,
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    check_copy_now(pid, template, shared_rw).map_err(|refused| {
        if is_gone(pid) {
            CopyRefused::Gone { pid }
        } else {
            refused
        }
    })
}

fn check_copy_now(
    pid: libc::pid_t,
    template: &TemplateFacts,
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    let proc = Proc::new(pid);

    for (kind, template_inode) in NAMESPACES.into_iter().zip(template.namespaces) {
        let inode = proc.namespace(kind)?;
        if inode == template_inode {
            return Err(CopyRefused::SharedNamespace { kind, inode });
        }
    }

    let status = proc.status()?;
    if matches!(status.state, Some('Z' | 'X')) {
        return Err(CopyRefused::Gone { pid });
    }
    let count = proc.require(status.threads, "status", "Threads")?;
    if count != 1 {
        return Err(CopyRefused::Threads { count });
    }
    for (set, value) in CAP_SETS.into_iter().zip(status.caps) {
        let value = proc.require(value, "status", set)?;
        if value != 0 {
            return Err(CopyRefused::Capabilities { set, value });
        }
    }
    let value = proc.require(status.no_new_privs, "status", "NoNewPrivs")?;
    if value != 1 {
        return Err(CopyRefused::NoNewPrivs { value });
    }
    let mode = proc.require(status.seccomp, "status", "Seccomp")?;
    if mode != 2 {
        return Err(CopyRefused::SeccompMode { mode });
    }
    let filters = proc.require(status.seccomp_filters, "status", "Seccomp_filters")?;
    if filters <= template.seccomp_filters {
        return Err(CopyRefused::SeccompFilters {
            copy: filters,
            template: template.seccomp_filters,
        });
    }

    check_children(&proc, pid)?;

    let mounts = proc.mountinfo()?;
    for mount in &mounts {
        if mount.writable && shared_writable(mount, template, shared_rw) {
            return Err(CopyRefused::SharedWritableMount {
                mount_point: mount.mount_point.clone(),
                device: mount.dev.to_string(),
            });
        }
    }

    check_places(&proc, template, &mounts, shared_rw)?;
    check_mappings(&proc, template, &mounts, shared_rw)?;
    check_descriptors(&proc, pid, template, &mounts, shared_rw)
}

/// Shared mappings survive `fork` shared: one made at init (Python's
/// `mmap.mmap(-1, n)` is `MAP_SHARED`) would be memory every copy writes.
/// A shared mapping may stay only if it maps a file on a mount alcove knows
/// whose superblock the template cannot write to (a library's read-only
/// cache); anonymous shared memory, SysV segments and memfds live on the
/// kernel's internal shmem mount and are refused, whatever their permissions
/// now (`mprotect` could make them writable again).
fn check_mappings(
    proc: &Proc,
    template: &TemplateFacts,
    mounts: &[Mount],
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    let text = proc.read("maps", MAX_MAPS)?;
    for line in text.lines() {
        let Some(mapping) = parse_maps_line(line) else {
            return Err(VerifyError::Malformed {
                path: proc.path("maps"),
                detail: format!("a line alcove cannot read: {line:?}"),
            }
            .into());
        };
        if !mapping.shared {
            continue;
        }
        let on = |m: &&Mount| m.dev == mapping.dev;
        let known = mounts.iter().chain(&template.mounts).find(on);
        let allowed = match known {
            Some(mount) => {
                !template.writable.contains(&mapping.dev)
                    || exempt(&mount.mount_point, shared_rw)
                    || mounts
                        .iter()
                        .filter(on)
                        .any(|m| exempt(&m.mount_point, shared_rw))
            }
            None => false,
        };
        if !allowed {
            return Err(CopyRefused::SharedMapping {
                range: mapping.range.to_owned(),
                what: if mapping.path.is_empty() {
                    "anonymous".to_owned()
                } else {
                    mapping.path.to_owned()
                },
            });
        }
    }
    Ok(())
}

/// The most of /proc/PID/maps read (a Python copy's is about 30 KiB).
pub const MAX_MAPS: usize = 4 << 20;

/// One line of /proc/PID/maps, the fields the mapping check uses.
struct Mapping<'a> {
    range: &'a str,
    shared: bool,
    dev: Dev,
    path: &'a str,
}

/// `start-end perms offset major:minor inode [path]`, the device in hex.
fn parse_maps_line(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(Mapping {
        range,
        shared: perms.as_bytes().get(3) == Some(&b's'),
        dev: Dev {
            major: u32::from_str_radix(major, 16).ok()?,
            minor: u32::from_str_radix(minor, 16).ok()?,
        },
        path,
    })
}

/// The copy's working directory and root. A copy could write through either
/// (relative paths) were it on a writable mount of the template, as after
/// `fchdir` to a directory it inherited. A place on a file system alcove
/// knows and the template cannot write to is allowed at once (`stat`);
/// otherwise its mount is found the way a descriptor's is: opened here
/// (`O_PATH`), our own fdinfo names it.
fn check_places(
    proc: &Proc,
    template: &TemplateFacts,
    mounts: &[Mount],
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    for (rel, what) in [("cwd", "working directory"), ("root", "root directory")] {
        let path = proc.path(rel);
        let meta = fs::metadata(&path).map_err(|source| VerifyError::Read {
            path: path.clone(),
            source,
        })?;
        let dev = Dev::from_st_dev(meta.dev());
        let known = mounts.iter().chain(&template.mounts).any(|m| m.dev == dev);
        if known && !template.writable.contains(&dev) {
            continue;
        }
        let place = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&path)
            .map_err(|source| VerifyError::Read {
                path: path.clone(),
                source,
            })?;
        let info_path = PathBuf::from(format!("/proc/self/fdinfo/{}", place.as_raw_fd()));
        let text = read_bounded(&info_path, MAX_PROC_FILE)?;
        drop(place);
        let info = parse_fdinfo(&text).map_err(|detail| VerifyError::Malformed {
            path: info_path,
            detail,
        })?;
        let shown = || match fs::read_link(&path) {
            Ok(target) => String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned(),
            Err(e) => format!("its link could not be read: {e}"),
        };
        match find_mount(info.mnt_id, mounts, template) {
            None => {
                return Err(CopyRefused::PlaceOnUnknownMount {
                    what,
                    path: shown(),
                    mnt_id: info.mnt_id,
                })
            }
            Some(mount) if mount.writable && shared_writable(mount, template, shared_rw) => {
                return Err(CopyRefused::PlaceOnWritableMount {
                    what,
                    path: shown(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The mount `mnt_id` names: one of the copy's (what it opened after its
/// unshare) or one of the template's (what it inherited). Anything else is
/// on a kernel-internal mount (a memfd, a pidfd, a namespace) or on a mount
/// since detached.
fn find_mount<'a>(
    mnt_id: u32,
    mounts: &'a [Mount],
    template: &'a TemplateFacts,
) -> Option<&'a Mount> {
    mounts
        .iter()
        .chain(&template.mounts)
        .find(|m| m.id == mnt_id)
}

/// Whether `mount` is on a superblock the template can write to, other than
/// the owner's shared mounts.
fn shared_writable(mount: &Mount, template: &TemplateFacts, shared_rw: &[PathBuf]) -> bool {
    template.writable.contains(&mount.dev) && !exempt(&mount.mount_point, shared_rw)
}

fn check_children(proc: &Proc, pid: libc::pid_t) -> Result<(), CopyRefused> {
    let rel = format!("task/{pid}/children");
    let path = proc.path(&rel);
    let text = match read_prefix(&path, MAX_CHILDREN_SHOWN) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The copy's own task directory is there but not the file: the
            // kernel lacks it. (Neither is there: the copy is gone.)
            return Err(if proc.path(format!("task/{pid}")).is_dir() {
                CopyRefused::ChildrenUnknown
            } else {
                CopyRefused::Gone { pid }
            });
        }
        Err(source) => return Err(VerifyError::Read { path, source }.into()),
    };
    let pids = parse_children(&text);
    if pids.is_empty() {
        Ok(())
    } else {
        Err(CopyRefused::Children { pids })
    }
}

fn check_descriptors(
    proc: &Proc,
    pid: libc::pid_t,
    template: &TemplateFacts,
    mounts: &[Mount],
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    let dir = proc.path("fd");
    let read_error = |path: &Path, source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let entries = fs::read_dir(&dir).map_err(|e| read_error(&dir, e))?;
    let mut socket = false;
    let mut inspected = 0;
    // A descriptor that disappears between the listing and its inspection
    // was closed, or the copy died: told apart at the end.
    let mut vanished = false;
    for entry in entries {
        let entry = entry.map_err(|e| read_error(&dir, e))?;
        inspected += 1;
        if inspected > MAX_DESCRIPTORS {
            return Err(CopyRefused::TooManyDescriptors {
                limit: MAX_DESCRIPTORS,
            });
        }
        let name = entry.file_name();
        let fd: u32 =
            name.to_str()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| VerifyError::Malformed {
                    path: dir.clone(),
                    detail: format!("an entry named {name:?}"),
                })?;
        let descriptor = Descriptor {
            proc,
            fd,
            path: entry.path(),
        };
        match descriptor.check(template, mounts, shared_rw, &mut socket) {
            Ok(true) => {}
            Ok(false) => vanished = true,
            Err(refused) => return Err(refused),
        }
    }
    if vanished && is_gone(pid) {
        return Err(CopyRefused::Gone { pid });
    }
    if !socket {
        return Err(CopyRefused::NoSocket);
    }
    Ok(())
}

/// One entry of /proc/PID/fd.
struct Descriptor<'a> {
    proc: &'a Proc,
    fd: u32,
    /// /proc/PID/fd/N
    path: PathBuf,
}

impl Descriptor<'_> {
    /// Ok(true): allowed; Ok(false): it was closed while it was inspected.
    ///
    /// It is told first by `stat` through the magic link (the open file
    /// itself); the link's text is read only for the one socket and for a
    /// refusal's message, which saves a read per descriptor of the usual kinds.
    fn check(
        &self,
        template: &TemplateFacts,
        mounts: &[Mount],
        shared_rw: &[PathBuf],
        socket: &mut bool,
    ) -> Result<bool, CopyRefused> {
        let fd = self.fd;
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                let path = self.path.clone();
                return Err(VerifyError::Read { path, source }.into());
            }
        };
        let kind = meta.file_type();
        if kind.is_socket() {
            // Not a path to a socket file (an O_PATH descriptor to it).
            let link = self.link();
            if classify_link(link.as_bytes()) != LinkKind::Socket {
                return Err(CopyRefused::UnknownDescriptor { fd, link });
            }
            if *socket {
                return Err(CopyRefused::SecondSocket { fd, link });
            }
            *socket = true;
            return Ok(true);
        }
        if kind.is_char_device() {
            let on_template_devpts = template.devpts.contains(&Dev::from_st_dev(meta.dev()));
            if on_template_devpts || is_terminal_major(libc::major(meta.rdev())) {
                let link = self.link();
                return Err(CopyRefused::Terminal { fd, link });
            }
            return Ok(true);
        }
        if kind.is_file() || kind.is_dir() {
            return self.check_file(template, mounts, shared_rw);
        }
        // A pipe, an eventfd, an epoll, a block device...
        let link = self.link();
        Err(match classify_link(link.as_bytes()) {
            LinkKind::Pipe => CopyRefused::Pipe { fd, link },
            _ if kind.is_fifo() => CopyRefused::Pipe { fd, link },
            LinkKind::AnonInode => CopyRefused::EventDescriptor { fd, link },
            _ => CopyRefused::UnknownDescriptor { fd, link },
        })
    }

    /// A regular file or directory: allowed unless a copy could write to
    /// something the template can write to through it.
    fn check_file(
        &self,
        template: &TemplateFacts,
        mounts: &[Mount],
        shared_rw: &[PathBuf],
    ) -> Result<bool, CopyRefused> {
        let fd = self.fd;
        let rel = format!("fdinfo/{fd}");
        let text = match self.proc.read(&rel, MAX_PROC_FILE) {
            Ok(text) => text,
            Err(VerifyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(false)
            }
            Err(e) => return Err(e.into()),
        };
        let info = parse_fdinfo(&text).map_err(|detail| VerifyError::Malformed {
            path: self.proc.path(&rel),
            detail,
        })?;
        let Some(mount) = find_mount(info.mnt_id, mounts, template) else {
            let link = self.link();
            return Err(match classify_link(link.as_bytes()) {
                LinkKind::Memfd => CopyRefused::Memfd { fd, link },
                LinkKind::AnonInode => CopyRefused::EventDescriptor { fd, link },
                _ => CopyRefused::UnknownMount {
                    fd,
                    link,
                    mnt_id: info.mnt_id,
                },
            });
        };
        if !shared_writable(mount, template, shared_rw) {
            return Ok(true);
        }
        if info.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            let link = self.link();
            return Err(CopyRefused::WritableFile { fd, link });
        }
        if mount.writable {
            let link = self.link();
            return Err(CopyRefused::FileOnWritableMount { fd, link });
        }
        Ok(true)
    }

    /// The descriptor's link, for the socket check and for messages; what
    /// could not be read says so.
    fn link(&self) -> String {
        match fs::read_link(&self.path) {
            Ok(target) => String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned(),
            Err(e) => format!("its link could not be read: {e}"),
        }
    }
}

/// Majors of terminals: BSD ptys (2, 3), virtual consoles and serial lines
/// (4), /dev/tty, /dev/console, /dev/ptmx (5), Unix98 pty masters and slaves
/// (128-143).
fn is_terminal_major(major: u32) -> bool {
    matches!(major, 2..=5 | 128..=143)
}

/// Whether `mount_point` is one of `shared_rw` or below one. A mount point
/// that was not valid UTF-8 in mountinfo (read lossily) is never exempt.
fn exempt(mount_point: &Path, shared_rw: &[PathBuf]) -> bool {
    let lossy = mount_point
        .as_os_str()
        .as_bytes()
        .windows(3)
        .any(|w| w == "\u{FFFD}".as_bytes());
    !lossy
        && shared_rw
            .iter()
            .any(|shared| mount_point.starts_with(shared))
}

/// Whether `pid` has exited: no /proc entry, or a zombie.
fn is_gone(pid: libc::pid_t) -> bool {
    match Proc::new(pid).read("stat", MAX_PROC_FILE) {
        Ok(text) => matches!(stat_state(&text), Some('Z' | 'X')),
        Err(VerifyError::Read { source, .. }) => {
            matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
        }
        Err(_) => false,
    }
}

/// `/proc/PID`, and reading its files with bounds.
struct Proc {
    dir: PathBuf,
}

impl Proc {
    fn new(pid: libc::pid_t) -> Self {
        Proc {
            dir: PathBuf::from(format!("/proc/{pid}")),
        }
    }

    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    fn read(&self, rel: &str, limit: usize) -> Result<String, VerifyError> {
        read_bounded(&self.path(rel), limit)
    }

    fn status(&self) -> Result<Status, VerifyError> {
        parse_status(&self.read("status", MAX_PROC_FILE)?).map_err(|detail| {
            VerifyError::Malformed {
                path: self.path("status"),
                detail,
            }
        })
    }

    fn mountinfo(&self) -> Result<Vec<Mount>, VerifyError> {
        parse_mountinfo(&self.read("mountinfo", MAX_MOUNTINFO)?).map_err(|detail| {
            VerifyError::Malformed {
                path: self.path("mountinfo"),
                detail,
            }
        })
    }

    /// The inode of the namespace `kind` (`user`, `net`, ...).
    fn namespace(&self, kind: &str) -> Result<u64, VerifyError> {
        let path = self.path(format!("ns/{kind}"));
        let target = fs::read_link(&path).map_err(|source| VerifyError::Read {
            path: path.clone(),
            source,
        })?;
        let text = target.to_string_lossy();
        parse_ns_link(&text, kind).ok_or_else(|| VerifyError::Malformed {
            path,
            detail: format!("the link reads {text:?}"),
        })
    }

    /// A field a file must have, or that file is malformed.
    fn require<T>(&self, value: Option<T>, file: &str, field: &str) -> Result<T, VerifyError> {
        value.ok_or_else(|| VerifyError::Malformed {
            path: self.path(file),
            detail: format!("it has no {field} line"),
        })
    }
}

/// Reads at most `limit` bytes of `path`; a longer file is an error, not cut short.
fn read_bounded(path: &Path, limit: usize) -> Result<String, VerifyError> {
    let bytes = read_up_to(path, limit + 1).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() > limit {
        return Err(VerifyError::TooLong {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(into_string(bytes))
}

/// Reads the first `limit` bytes of `path` (or all of a shorter file).
fn read_prefix(path: &Path, limit: usize) -> io::Result<String> {
    read_up_to(path, limit).map(into_string)
}

fn read_up_to(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(limit.min(4096));
    File::open(path)?
        .take(limit as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A superblock, as mountinfo's `major:minor` and `stat`'s `st_dev` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dev {
    major: u32,
    minor: u32,
}

impl Dev {
    fn from_st_dev(dev: u64) -> Self {
        Dev {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of /proc/PID/mountinfo, the fields alcove uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// Field 1: the mount's id (what fdinfo's `mnt_id:` names).
    id: u32,
    /// Field 3: the superblock.
    dev: Dev,
    /// Field 5, unescaped.
    mount_point: PathBuf,
    /// Field 6, the per-mount options, include `rw`.
    writable: bool,
    /// The file system type (the first field after the ` - ` separator) is devpts.
    devpts: bool,
}

/// Parses /proc/PID/mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNT_POINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`, one mount a line.
fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            parse_mountinfo_line(line).ok_or_else(|| format!("line {} reads {line:?}", n + 1))
        })
        .collect()
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let _parent: u32 = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = Dev {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    };
    let _root = fields.next()?;
    let mount_point = fields.next()?;
    let mount_point = if mount_point.contains('\\') {
        PathBuf::from(std::ffi::OsString::from_vec(unescape(mount_point)))
    } else {
        PathBuf::from(mount_point)
    };
    let options = fields.next()?;
    // Optional fields (`shared:N`, `master:N`, ...), then the separator.
    while fields.next()? != "-" {}
    let devpts = fields.next()? == "devpts";
    Some(Mount {
        id,
        dev,
        mount_point,
        writable: options.split(',').any(|o| o == "rw"),
        devpts,
    })
}

/// Undoes mountinfo's escapes: a backslash and three octal digits is one
/// byte (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d[0] <= b'3' && d.iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The lines of /proc/PID/status alcove reads; `None` where the line is absent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Status {
    state: Option<char>,
    threads: Option<u32>,
    /// In the order of [`CAP_SETS`].
    caps: [Option<u64>; 5],
    no_new_privs: Option<u32>,
    seccomp: Option<u32>,
    seccomp_filters: Option<u32>,
}

/// Parses /proc/PID/status. A line alcove reads whose value is not a number
/// is an error; a missing line is `None`.
fn parse_status(text: &str) -> Result<Status, String> {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let number = || {
            value
                .parse()
                .map_err(|_| format!("{key} is {value:?}, not a number"))
        };
        match key {
            "State" => status.state = value.chars().next(),
            "Threads" => status.threads = Some(number()?),
            "NoNewPrivs" => status.no_new_privs = Some(number()?),
            "Seccomp" => status.seccomp = Some(number()?),
            "Seccomp_filters" => status.seccomp_filters = Some(number()?),
            _ => {
                if let Some(i) = CAP_SETS.iter().position(|set| *set == key) {
                    let caps = u64::from_str_radix(value, 16)
                        .map_err(|_| format!("{key} is {value:?}, not a hexadecimal mask"))?;
                    status.caps[i] = Some(caps);
                }
            }
        }
    }
    Ok(status)
}

/// The state letter of /proc/PID/stat (the field after the command's `)`).
fn stat_state(text: &str) -> Option<char> {
    text.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The pids listed in /proc/PID/task/TID/children, space-separated; empty when none.
fn parse_children(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The inode in a namespace link: `net:[4026531840]` for kind `net`.
fn parse_ns_link(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The lines of /proc/PID/fdinfo/N alcove reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FdInfo {
    /// `flags:`, octal: the open flags (O_ACCMODE is the access mode).
    flags: u32,
    /// `mnt_id:`: the mount the file was opened through.
    mnt_id: u32,
}

/// Parses /proc/PID/fdinfo/N; both `flags:` and `mnt_id:` must be there.
fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let (mut flags, mut mnt_id) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "flags" => {
                let parsed = u32::from_str_radix(value, 8)
                    .map_err(|_| format!("flags is {value:?}, not an octal number"))?;
                flags = Some(parsed);
            }
            "mnt_id" => {
                let parsed = value
                    .parse()
                    .map_err(|_| format!("mnt_id is {value:?}, not a number"))?;
                mnt_id = Some(parsed);
            }
            _ => {}
        }
    }
    Ok(FdInfo {
        flags: flags.ok_or("it has no flags line")?,
        mnt_id: mnt_id.ok_or("it has no mnt_id line")?,
    })
}

/// What a /proc/PID/fd/N link says the descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    /// `socket:[INODE]`
    Socket,
    /// `pipe:[INODE]`
    Pipe,
    /// `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`, `anon_inode:inotify`, ...
    AnonInode,
    /// `/memfd:NAME (deleted)`
    Memfd,
    /// Any other absolute path: a file, directory, device or named pipe.
    Path,
    /// Anything else (`net:[...]`, `pidfd:[...]`, ...).
    Other,
}

fn classify_link(link: &[u8]) -> LinkKind {
    if link.starts_with(b"socket:[") {
        LinkKind::Socket
    } else if link.starts_with(b"pipe:[") {
        LinkKind::Pipe
    } else if link.starts_with(b"anon_inode:") {
        LinkKind::AnonInode
    } else if link.starts_with(b"/memfd:") {
        LinkKind::Memfd
    } else if link.starts_with(b"/") {
        LinkKind::Path
    } else {
        LinkKind::Other
    }
}

/// The first line where the copy's cgroup text differs from the template's,
/// for the refusal's message.
fn first_difference(template: &str, copy: &str) -> String {
    let mut template_lines = template.lines();
    let mut copy_lines = copy.lines();
    loop {
        match (template_lines.next(), copy_lines.next()) {
            (Some(t), Some(c)) if t == c => continue,
            (Some(t), Some(c)) => return format!("the template's {t:?}, the copy's {c:?}"),
            (Some(t), None) => return format!("the template's {t:?}, nothing in the copy's"),
            (None, Some(c)) => return format!("the copy's {c:?}, nothing in the template's"),
            (None, None) => return "they differ only in whitespace".to_string(),
        }
    }
}

#[cfg(test)]
mod mapping_tests {
    use super::*;

    #[test]
    fn maps_lines_are_read_with_hex_devices_and_optional_paths() {
        let m = parse_maps_line(
            "7f1c2a000000-7f1c2a021000 rw-s 00000000 00:01 2052 /dev/zero (deleted)",
        )
        .unwrap();
        assert!(m.shared);
        assert_eq!((m.dev.major, m.dev.minor), (0, 1));
        assert_eq!(m.path, "/dev/zero (deleted)");
        let m = parse_maps_line("55d0c8a00000-55d0c8a21000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!m.shared);
        assert_eq!(m.path, "");
        let m = parse_maps_line("7f00-7f01 r--s 00000000 fe:1a 12 /usr/lib/x.cache").unwrap();
        assert_eq!((m.dev.major, m.dev.minor), (0xfe, 0x1a));
        assert!(parse_maps_line("garbage").is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// /proc/PID/status of a copy that did everything right (kernel 6.18).
    const COPY_STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t1\nNgid:\t0\nPid:\t1\nPPid:\t0\nTracerPid:\t0\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nFDSize:\t64\nGroups:\t \nNStgid:\t20113\t1\n\
        NSpid:\t20113\t1\nNSpgid:\t20110\t0\nNSsid:\t5845\t0\nKthread:\t0\n\
        VmPeak:\t   17796 kB\nVmSize:\t   17796 kB\nVmRSS:\t    9880 kB\nThreads:\t1\n\
        SigQ:\t0/96363\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
        SigBlk:\t0000000000000000\nSigIgn:\t0000000001001000\nSigCgt:\t0000000100000002\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
        Seccomp:\t2\nSeccomp_filters:\t2\n\
        Speculation_Store_Bypass:\tthread vulnerable\n\
        SpeculationIndirectBranch:\tconditional enabled\nCpus_allowed:\t3\n\
        Cpus_allowed_list:\t0-1\nvoluntary_ctxt_switches:\t3\nnonvoluntary_ctxt_switches:\t1\n";

    /// mountinfo as a systemd host writes it: optional fields, a bind mount
    /// of a subdirectory, escaped names, an empty source.
    const MOUNTINFO: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 28 0:5 / /dev rw,nosuid,relatime shared:2 master:1 - devtmpfs udev rw,size=8000000k,mode=755
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 25 0:24 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
300 28 0:50 / /mnt/my\\040disk ro,nosuid,nodev shared:150 - tmpfs none ro,size=4k
301 28 254:1 /srv/data /data rw,relatime - ext4 /dev/vda1 rw
302 28 0:61 / /weird\\134name\\011tab rw,relatime - tmpfs  rw
";

    #[test]
    fn parse_status_reads_a_copy() {
        let status = parse_status(COPY_STATUS).unwrap();
        assert_eq!(
            status,
            Status {
                state: Some('S'),
                threads: Some(1),
                caps: [Some(0); 5],
                no_new_privs: Some(1),
                seccomp: Some(2),
                seccomp_filters: Some(2),
            }
        );
    }

    #[test]
    fn parse_status_reads_capability_masks_in_hexadecimal() {
        let text = "State:\tR (running)\nThreads:\t14\nCapInh:\t0000000000000000\n\
            CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n\
            CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";
        let status = parse_status(text).unwrap();
        assert_eq!(status.threads, Some(14));
        assert_eq!(status.caps[1], Some(0x1fffeffffff));
        assert_eq!(status.caps[3], Some(0x1fffeffffff));
        assert_eq!(status.caps[4], Some(0));
    }

    #[test]
    fn parse_status_leaves_missing_lines_out() {
        // A kernel older than 5.9 has no Seccomp_filters line.
        let status = parse_status("State:\tS (sleeping)\nSeccomp:\t2\n").unwrap();
        assert_eq!(status.seccomp, Some(2));
        assert_eq!(status.seccomp_filters, None);
        assert_eq!(status.threads, None);
    }

    #[test]
    fn parse_status_refuses_a_field_that_is_not_a_number() {
        let err = parse_status("Threads:\tmany\n").unwrap_err();
        assert!(err.contains("Threads"), "{err}");
        let err = parse_status("CapEff:\tzz\n").unwrap_err();
        assert!(err.contains("CapEff"), "{err}");
    }

    #[test]
    fn parse_mountinfo_reads_every_line() {
        let mounts = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[1],
            Mount {
                id: 25,
                dev: Dev { major: 0, minor: 5 },
                mount_point: PathBuf::from("/dev"),
                writable: true,
                devpts: false,
            }
        );
        assert_eq!(
            mounts[2].dev,
            Dev {
                major: 254,
                minor: 1
            }
        );
        assert!(mounts[3].devpts);
        // Escaped spaces, per-mount ro although nothing else says so.
        assert_eq!(mounts[4].mount_point, PathBuf::from("/mnt/my disk"));
        assert!(!mounts[4].writable);
        // A bind mount of a subdirectory has the superblock of /.
        assert_eq!(mounts[5].dev, mounts[2].dev);
        assert_eq!(mounts[5].mount_point, PathBuf::from("/data"));
        // An empty source does not shift the fields alcove reads.
        assert_eq!(mounts[6].mount_point, PathBuf::from("/weird\\name\ttab"));
        assert_eq!(mounts[6].id, 302);
    }

    #[test]
    fn parse_mountinfo_reads_per_mount_options_only() {
        // ro per mount, rw superblock: not writable through this mount.
        let text = "40 28 0:40 / /ro-bind ro,relatime - tmpfs tmpfs rw\n";
        assert!(!parse_mountinfo(text).unwrap()[0].writable);
        let text = "41 28 0:41 / /rw relatime,rw - tmpfs tmpfs ro\n";
        assert!(parse_mountinfo(text).unwrap()[0].writable);
    }

    #[test]
    fn parse_mountinfo_refuses_a_line_without_the_separator() {
        let text = "22 28 0:21 / /sys rw shared:7 sysfs sysfs rw\n";
        let err = parse_mountinfo(text).unwrap_err();
        assert!(err.starts_with("line 1"), "{err}");
        assert!(parse_mountinfo("22 28 0-21 / /sys rw - sysfs sysfs rw").is_err());
        assert!(parse_mountinfo("x 28 0:21 / /sys rw - sysfs sysfs rw").is_err());
    }

    #[test]
    fn unescape_undoes_octal_escapes_only() {
        assert_eq!(unescape("/a\\040b"), b"/a b");
        assert_eq!(unescape("\\011\\012\\134"), b"\t\n\\");
        // Not an escape: kept as it is.
        assert_eq!(unescape("/a\\x\\04"), b"/a\\x\\04");
        assert_eq!(unescape("/a\\777"), b"/a\\777");
    }

    #[test]
    fn parse_fdinfo_reads_flags_in_octal_and_the_mount() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t15\nino:\t1057\n";
        let info = parse_fdinfo(text).unwrap();
        assert_eq!(info.mnt_id, 15);
        assert_eq!(info.flags, 0o2100002);
        assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
        let eventfd = "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1057\n\
            eventfd-count:                0\neventfd-id: 1\neventfd-semaphore: 0\n";
        assert_eq!(parse_fdinfo(eventfd).unwrap().mnt_id, 16);
        let read_only = "pos:\t4096\nflags:\t0100000\nmnt_id:\t27\nino:\t393231\n";
        assert_eq!(parse_fdinfo(read_only).unwrap().flags & 3, 0);
    }

    #[test]
    fn parse_fdinfo_refuses_what_it_cannot_read() {
        assert!(parse_fdinfo("pos:\t0\nflags:\t0100000\n")
            .unwrap_err()
            .contains("mnt_id"));
        assert!(parse_fdinfo("flags:\t9\nmnt_id:\t1\n")
            .unwrap_err()
            .contains("octal"));
    }

    #[test]
    fn parse_ns_link_takes_the_inode_of_its_own_kind() {
        assert_eq!(parse_ns_link("net:[4026531840]", "net"), Some(4026531840));
        assert_eq!(parse_ns_link("net:[4026531840]", "mnt"), None);
        assert_eq!(parse_ns_link("net:4026531840", "net"), None);
        assert_eq!(parse_ns_link("user:[]", "user"), None);
    }

    #[test]
    fn classify_link_names_each_kind() {
        assert_eq!(classify_link(b"socket:[99]"), LinkKind::Socket);
        assert_eq!(classify_link(b"pipe:[1234]"), LinkKind::Pipe);
        assert_eq!(classify_link(b"anon_inode:[eventfd]"), LinkKind::AnonInode);
        assert_eq!(classify_link(b"anon_inode:inotify"), LinkKind::AnonInode);
        assert_eq!(classify_link(b"/memfd:cache (deleted)"), LinkKind::Memfd);
        assert_eq!(classify_link(b"/dev/null"), LinkKind::Path);
        assert_eq!(classify_link(b"/tmp/log (deleted)"), LinkKind::Path);
        assert_eq!(classify_link(b"net:[4026531840]"), LinkKind::Other);
        assert_eq!(classify_link(b""), LinkKind::Other);
    }

    #[test]
    fn stat_state_reads_past_a_command_with_parentheses() {
        assert_eq!(stat_state("42 (a) b) Z 1 42 42 0"), Some('Z'));
        assert_eq!(stat_state("42 (sleep) S 1 42"), Some('S'));
        assert_eq!(stat_state("42 (sleep"), None);
    }

    #[test]
    fn parse_children_lists_pids() {
        assert_eq!(parse_children(""), "");
        assert_eq!(parse_children("812 815 "), "812 815");
    }

    #[test]
    fn exempt_is_by_path_component() {
        let shared = [PathBuf::from("/data")];
        assert!(exempt(Path::new("/data"), &shared));
        assert!(exempt(Path::new("/data/cache"), &shared));
        assert!(!exempt(Path::new("/database"), &shared));
        assert!(!exempt(Path::new("/"), &shared));
        assert!(!exempt(Path::new("/data"), &[]));
        let odd = [PathBuf::from("/d\u{FFFD}")];
        assert!(!exempt(Path::new("/d\u{FFFD}"), &odd));
    }

    #[test]
    fn first_difference_names_the_line() {
        let template = "4:memory:/alcove/f\n0::/alcove/f\n";
        let copy = "4:memory:/other\n0::/alcove/f\n";
        assert_eq!(
            first_difference(template, copy),
            "the template's \"4:memory:/alcove/f\", the copy's \"4:memory:/other\""
        );
        assert!(first_difference(template, "").contains("nothing in the copy's"));
    }

    #[test]
    fn terminals_are_told_by_major() {
        assert!(is_terminal_major(5)); // /dev/tty, /dev/ptmx
        assert!(is_terminal_major(136)); // /dev/pts/N
        assert!(!is_terminal_major(1)); // /dev/null, /dev/urandom
        assert!(!is_terminal_major(10)); // misc
    }

    #[test]
    fn a_descriptor_refusal_says_what_to_do() {
        let refused = CopyRefused::Pipe {
            fd: 5,
            link: "pipe:[1234]".into(),
        };
        assert_eq!(
            refused.to_string(),
            "descriptor 5 (pipe:[1234]) is open in the copy; made during initialisation, it \
             would be shared by every copy: close it before the runtime says ready"
        );
    }

    #[test]
    fn read_bounded_refuses_a_longer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), "12345");
        assert!(matches!(
            read_bounded(&path, 4),
            Err(VerifyError::TooLong { limit: 4, .. })
        ));
        assert_eq!(read_prefix(&path, 3).unwrap(), "123");
    }

    // ---- Real processes. They need root (CI runs them as root).

    fn root(test: &str) -> bool {
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            eprintln!("{test}: skipped: it needs root (to start a copy as another user)");
        }
        euid == 0
    }

    fn own_pid() -> libc::pid_t {
        std::process::id() as libc::pid_t
    }

    /// Kills and reaps what a test started, however the test ends: the copy
    /// (whose parent is `child`, so that it is reaped there), then `child`.
    /// (Were `child` killed first, the copy would die of its parent-death
    /// signal and be reaped by init.)
    struct Reap {
        child: Option<Child>,
        copy: Option<libc::pid_t>,
    }

    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(pid) = self.copy {
                // SAFETY: kill takes no pointers. `pid` is a child of
                // `self.child`, which has not been reaped yet, so the pid is
                // still the copy's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let Some(mut child) = self.child.take() else {
                return;
            };
            // The middle process exits once it has reaped the copy.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.copy.is_some() && Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[test]
    fn template_facts_of_this_process() {
        if !root("template_facts_of_this_process") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        assert_eq!(facts.pid(), own_pid());
        let link = fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(
            Some(facts.namespaces[3]),
            parse_ns_link(&link.to_string_lossy(), "net")
        );
        assert!(!facts.writable.is_empty(), "root has writable mounts");
        assert!(!facts.mounts.is_empty());
        assert_eq!(
            facts.cgroup,
            fs::read_to_string("/proc/self/cgroup").unwrap()
        );
        assert!(thread_count(own_pid()).unwrap() >= 1);
    }

    #[test]
    fn a_plain_child_is_refused_for_its_namespaces() {
        if !root("a_plain_child_is_refused_for_its_namespaces") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let child = Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let _reap = Reap {
            child: Some(child),
            copy: None,
        };
        came_from(pid, &facts).unwrap();
        let refused = check_copy(pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::SharedNamespace { kind: "user", .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_that_has_exited_is_gone() {
        if !root("a_copy_that_has_exited_is_gone") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        // A zombie first: exited, not yet reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let refused = check_copy(pid, &facts, &[]).unwrap_err();
        assert!(matches!(refused, CopyRefused::Gone { .. }), "{refused:?}");
        assert!(matches!(
            came_from(pid, &facts),
            Err(CopyRefused::Gone { .. })
        ));
        child.wait().unwrap();
    }

    /// A copy made the protocol's way, in Python (run as nobody, with
    /// no_new_privs). `argv[1]` says what it does wrong, if anything: `pipe`
    /// keeps a pipe, `socket` a socket pair, `rodir` a directory of the
    /// host's (writable) root file system opened read-only, `memfd` a memfd
    /// reopened read-only, `eventfd` an eventfd; `cwd` changes to a
    /// directory of the host's root it opened before its unshare; `keeprw`
    /// leaves the mounts writable. The first process unshares and forks the copy
    /// (pid 1 of its pid namespace) and reaps it; the copy connects to
    /// `argv[2]`, says `copy` and waits.
    const COPY_SCRIPT: &str = r#"
import ctypes, os, signal, socket, struct, sys

mode, path = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_ulong

def check(rc, what):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f'{what}: {os.strerror(e)}')

def prctl(option, arg2=0):
    return libc.prctl(L(option), L(arg2), L(0), L(0), L(0))

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
CLONE_FLAGS = 0x10000000 | 0x00020000 | 0x40000000 | 0x08000000 | 0x04000000 | 0x20000000

class MountAttr(ctypes.Structure):
    _fields_ = [('attr_set', ctypes.c_uint64), ('attr_clr', ctypes.c_uint64),
                ('propagation', ctypes.c_uint64), ('userns_fd', ctypes.c_uint64)]

class Fprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]

check(prctl(1, signal.SIGKILL), 'PR_SET_PDEATHSIG')
keep = []
if mode == 'pipe':
    keep += os.pipe()
elif mode == 'socket':
    keep += [s.detach() for s in socket.socketpair()]
elif mode == 'rodir':
    keep.append(os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY))
elif mode == 'memfd':
    writable = os.memfd_create('cache')
    keep.append(os.open(f'/proc/self/fd/{writable}', os.O_RDONLY))
    os.close(writable)
elif mode == 'eventfd':
    keep.append(os.eventfd(0))
elif mode == 'cwd':
    outside = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)

uid, gid = os.getuid(), os.getgid()
check(libc.unshare(ctypes.c_int(CLONE_FLAGS)), 'unshare')
for name, text in (('setgroups', 'deny'), ('uid_map', f'{uid} {uid} 1'), ('gid_map', f'{gid} {gid} 1')):
    with open(f'/proc/self/{name}', 'w') as f:
        f.write(text)
check(libc.mount(None, b'/', None, L(MS_REC | MS_PRIVATE), None), 'make / private')
if mode != 'keeprw':
    # Every mount read-only, those hidden under others included.
    attr = MountAttr(1, 0, 0, 0)
    check(libc.syscall(L(442), ctypes.c_int(-100), b'/', ctypes.c_uint(0x8000),
                       ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), 'mount_setattr')
for target, extra in ((b'/tmp', 0), (b'/dev/shm', MS_NOEXEC)):
    if os.path.isdir(target):
        check(libc.mount(b'tmpfs', target, b'tmpfs', L(MS_NOSUID | MS_NODEV | extra),
                         b'mode=1777,size=1048576'), 'tmpfs on ' + target.decode())
if os.path.isdir(b'/dev/pts'):
    check(libc.mount(b'devpts', b'/dev/pts', b'devpts', L(MS_NOSUID | MS_NOEXEC),
                     b'newinstance,ptmxmode=0666,mode=0620'), 'devpts')
cap_last = int(open('/proc/sys/kernel/cap_last_cap').read())
devnull = os.open('/dev/null', os.O_RDWR)

pid = os.fork()
if pid:
    print(pid, flush=True)  # for the test to kill, should the copy never connect
    _, status = os.waitpid(pid, 0)
    if status:
        print(f'the copy ended with wait status {status:#x}', file=sys.stderr)
    sys.exit(0)

step = 'start'
err = os.dup(2)
try:
    step = 'PR_SET_PDEATHSIG'
    check(prctl(1, signal.SIGKILL), step)
    step = 'mount proc'
    check(libc.mount(b'proc', b'/proc', b'proc', L(MS_NOSUID | MS_NODEV | MS_NOEXEC), None), step)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if mode == 'cwd':
        os.fchdir(outside)  # then closed with the rest
    else:
        os.chdir('/tmp')  # its own tmpfs
    for fd in range(3, 1024):
        if fd not in keep and fd != err:
            try:
                os.close(fd)
            except OSError:
                pass
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    step = 'PR_CAPBSET_DROP'
    for cap in range(cap_last + 1):
        check(prctl(24, cap), step)
    step = 'capset'
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.syscall(L(126), header, data), step)
    step = 'seccomp'
    allow = ctypes.create_string_buffer(struct.pack('=HBBI', 0x06, 0, 0, 0x7fff0000))
    prog = Fprog(1, ctypes.addressof(allow))
    check(libc.prctl(L(22), L(2), ctypes.byref(prog), L(0), L(0)), step)
    step = 'connect'
    os.close(err)
    err = None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    s.send(b'copy')
    s.recv(16)
    os._exit(0)
except BaseException as e:
    if err is not None:
        os.write(err, f'copy: {step}: {e}\n'.encode())
    os._exit(70)
"#;

    /// A copy started with `mode`, connected, and its pid from `SO_PEERCRED`.
    struct StartedCopy {
        pid: libc::pid_t,
        // Dropped in this order: the connection, the processes, the directory.
        _connection: UnixStream,
        _reap: Reap,
        _dir: tempfile::TempDir,
    }

    fn start_copy(mode: &str) -> StartedCopy {
        // Not under /tmp or /dev/shm: the copy mounts fresh ones over them.
        let dir = tempfile::Builder::new()
            .prefix("alcove-warm-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("copy.sock");
        let listener = listen_seqpacket(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();

        let child = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["--no-new-privs", "--", "/usr/bin/python3", "-I", "-c"])
            .arg(COPY_SCRIPT)
            .arg(mode)
            .arg(&path)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv and /usr/bin/python3 run");
        let mut reap = Reap {
            child: Some(child),
            copy: None,
        };
        // The middle process writes the copy's pid once it has forked it, or
        // nothing if it failed before.
        let mut line = String::new();
        let stdout = reap.child.as_mut().unwrap().stdout.take().unwrap();
        io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line).unwrap();
        reap.copy = line.trim().parse().ok();

        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut connection = loop {
            match listener.accept() {
                Ok((connection, _)) => break connection,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            let child = reap.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("the copy's script ended ({status}) before connecting: {stderr}");
            }
            assert!(Instant::now() < deadline, "no copy connected in 20 s");
            std::thread::sleep(Duration::from_millis(2));
        };
        let pid = peer_pid(&connection);
        assert_eq!(reap.copy, Some(pid), "SO_PEERCRED names the copy");
        connection
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = [0; 16];
        let n = connection.read(&mut hello).unwrap();
        assert_eq!(&hello[..n], b"copy");
        StartedCopy {
            pid,
            _connection: connection,
            _reap: reap,
            _dir: dir,
        }
    }

    fn listen_seqpacket(path: &Path) -> UnixListener {
        // SAFETY: socket takes no pointers; its result is checked before use.
        let fd =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by socket and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_un is plain old data, for which all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `addr` is an initialised sockaddr_un that outlives the call,
        // `len` is its size, and `fd` is an open socket.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        // SAFETY: listen takes no pointers; `fd` is an open, bound socket.
        let rc = unsafe { libc::listen(fd.as_raw_fd(), 8) };
        assert_eq!(rc, 0, "listen: {}", io::Error::last_os_error());
        UnixListener::from(fd)
    }

    fn peer_pid(connection: &UnixStream) -> libc::pid_t {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes for the whole call and
        // `len` holds `cred`'s size; the descriptor is a connected unix socket
        // that `connection` owns.
        let rc = unsafe {
            libc::getsockopt(
                connection.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_PEERCRED: {}", io::Error::last_os_error());
        cred.pid
    }

    #[test]
    fn a_copy_made_the_protocol_s_way_passes() {
        if !root("a_copy_made_the_protocol_s_way_passes") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("ok");
        came_from(copy.pid, &facts).unwrap();
        assert_eq!(thread_count(copy.pid).unwrap(), 1);
        check_copy(copy.pid, &facts, &[]).unwrap();

        let mut times: Vec<Duration> = (0..300)
            .map(|_| {
                let start = Instant::now();
                check_copy(copy.pid, &facts, &[]).unwrap();
                start.elapsed()
            })
            .collect();
        times.sort();
        let start = Instant::now();
        let _ = TemplateFacts::read(own_pid()).unwrap();
        let facts_time = start.elapsed();
        eprintln!(
            "check_copy on a real copy, 300 runs: min {:?}, median {:?}, p90 {:?}, max {:?}; \
             TemplateFacts::read of this process {facts_time:?}",
            times[0], times[150], times[270], times[299]
        );
    }

    #[test]
    fn a_copy_keeping_a_pipe_is_refused() {
        if !root("a_copy_keeping_a_pipe_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("pipe");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        match &refused {
            CopyRefused::Pipe { link, .. } => assert!(link.starts_with("pipe:["), "{refused}"),
            other => panic!("refused for {other:?}, not the pipe"),
        }
    }

    #[test]
    fn a_copy_keeping_a_second_socket_is_refused() {
        if !root("a_copy_keeping_a_second_socket_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("socket");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::SecondSocket { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_keeping_a_read_only_directory_of_a_writable_mount_is_refused() {
        if !root("a_copy_keeping_a_read_only_directory_of_a_writable_mount_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("rodir");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::FileOnWritableMount { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_leaving_the_template_s_mounts_writable_is_refused() {
        if !root("a_copy_leaving_the_template_s_mounts_writable_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("keeprw");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::SharedWritableMount { .. }),
            "{refused:?}"
        );
        // The owner's shared mounts are exempt: with all of them shared,
        // the mounts pass and nothing else is wrong.
        check_copy(copy.pid, &facts, &[PathBuf::from("/")]).unwrap();
    }

    #[test]
    fn a_copy_keeping_a_read_only_memfd_is_refused() {
        if !root("a_copy_keeping_a_read_only_memfd_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("memfd");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        match &refused {
            CopyRefused::Memfd { link, .. } => {
                assert!(link.starts_with("/memfd:cache"), "{refused}")
            }
            other => panic!("refused for {other:?}, not the memfd"),
        }
    }

    #[test]
    fn a_copy_keeping_an_eventfd_is_refused() {
        if !root("a_copy_keeping_an_eventfd_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("eventfd");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::EventDescriptor { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_working_in_a_directory_of_a_writable_mount_is_refused() {
        if !root("a_copy_working_in_a_directory_of_a_writable_mount_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("cwd");
        let refused = check_copy(copy.pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(
                refused,
                CopyRefused::PlaceOnWritableMount {
                    what: "working directory",
                    ..
                }
            ),
            "{refused:?}"
        );
    }
}
