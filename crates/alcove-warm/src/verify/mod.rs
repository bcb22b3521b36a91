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

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

mod proc;
use proc::*;

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
        "the copy is pid {pid} of its pid namespace, not 1: another process made there first \
         (fork once more right after the unshare, and nothing else)"
    )]
    NotPidOne { pid: i32 },
    #[error(
        "the copy's parent is process {ppid}, not the template: the process between them, which \
         shares its namespaces, must exit at once after its fork"
    )]
    MiddleProcessAlive { ppid: i32 },
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
    // Pid 1 of its own pid namespace, and its middle process gone (its parent
    // is the template): nothing else can share its namespaces then — its
    // children, none below, would be the only other members of its pid
    // namespace, and setns is denied to all of them.
    let innermost = proc.require(status.innermost_pid, "status", "NSpid")?;
    if innermost != 1 {
        return Err(CopyRefused::NotPidOne { pid: innermost });
    }
    let ppid = proc.require(status.ppid, "status", "PPid")?;
    if ppid != template.pid {
        return Err(CopyRefused::MiddleProcessAlive { ppid });
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
/// What matters is whether the copy can write through it: it is writable now
/// (`w` in maps), or `mprotect` could make it so — the kernel's `mw`
/// (VM_MAYWRITE) in smaps, set for shared memory and for files opened for
/// writing. A read-only shared map of a file opened read-only (glibc's
/// gconv-modules.cache) cannot be written by anyone through it, wherever the
/// file lies (an image's overlay shows the lower file's device). Only the
/// owner's `--bind DIR:rw` mounts are exempt. smaps is read only when some
/// shared mapping is not writable now: its page walk costs.
fn check_mappings(
    proc: &Proc,
    template: &TemplateFacts,
    mounts: &[Mount],
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    let text = proc.read("maps", MAX_MAPS)?;
    let mut read_only_shared = Vec::new();
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
        if mapping.writable {
            refuse_unless_shared_on_purpose(proc, &mapping, mounts, template, shared_rw)?;
        } else {
            read_only_shared.push(mapping);
        }
    }
    if read_only_shared.is_empty() {
        return Ok(());
    }
    let smaps = proc.read("smaps", MAX_SMAPS)?;
    for mapping in &read_only_shared {
        match may_write(&smaps, mapping.range) {
            Some(false) => {}
            _ => refuse_unless_shared_on_purpose(proc, mapping, mounts, template, shared_rw)?,
        }
    }
    Ok(())
}

fn refuse_unless_shared_on_purpose(
    proc: &Proc,
    mapping: &Mapping<'_>,
    mounts: &[Mount],
    template: &TemplateFacts,
    shared_rw: &[PathBuf],
) -> Result<(), CopyRefused> {
    let on_purpose = mapping_mount(proc, mapping.range, mounts, template)
        .is_some_and(|m| exempt(&m.mount_point, shared_rw));
    if on_purpose {
        return Ok(());
    }
    Err(CopyRefused::SharedMapping {
        range: mapping.range.to_owned(),
        what: if mapping.path.is_empty() {
            "anonymous".to_owned()
        } else {
            mapping.path.to_owned()
        },
    })
}

/// Whether smaps's `VmFlags` of the mapping at `range` has `mw`; `None` when
/// the mapping is not there.
fn may_write(smaps: &str, range: &str) -> Option<bool> {
    let start = smaps.find(&format!("{range} "))?;
    let rest = &smaps[start..];
    let flags = rest.lines().find_map(|l| l.strip_prefix("VmFlags:"))?;
    Some(flags.split_whitespace().any(|f| f == "mw"))
}

/// The most of /proc/PID/smaps read.
pub const MAX_SMAPS: usize = 16 << 20;

/// The mount a file mapping was made through: `/proc/PID/map_files/RANGE`
/// opened here (`O_PATH`, which needs CAP_SYS_ADMIN, as alcove has), whose
/// fdinfo names the mount.
fn mapping_mount<'a>(
    proc: &Proc,
    range: &str,
    mounts: &'a [Mount],
    template: &'a TemplateFacts,
) -> Option<&'a Mount> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(proc.path(format!("map_files/{range}")))
        .ok()?;
    let info_path = PathBuf::from(format!("/proc/self/fdinfo/{}", opened.as_raw_fd()));
    let info = parse_fdinfo(&read_bounded(&info_path, MAX_PROC_FILE).ok()?).ok()?;
    find_mount(info.mnt_id, mounts, template)
}

/// The most of /proc/PID/maps read (a Python copy's is about 30 KiB).
pub const MAX_MAPS: usize = 4 << 20;

/// One line of /proc/PID/maps, the fields the mapping check uses.
struct Mapping<'a> {
    range: &'a str,
    shared: bool,
    writable: bool,
    path: &'a str,
}

/// `start-end perms offset major:minor inode [path]`, the device in hex.
fn parse_maps_line(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    u32::from_str_radix(major, 16).ok()?;
    u32::from_str_radix(minor, 16).ok()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(Mapping {
        range,
        shared: perms.as_bytes().get(3) == Some(&b's'),
        writable: perms.as_bytes().get(1) == Some(&b'w'),
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

#[cfg(test)]
mod tests;
