//! One spec mount performed inside the rootfs (runc's mountToRootfs): the
//! destination resolved in the root, created if missing, checked not to
//! land in /proc, mounted through `/proc/self/fd/N` of the resolved
//! descriptor, then remounted for the flags a bind ignores, then given its
//! propagation and recursive attributes. Also the remounts [`super::finalize`]
//! does after the pivot.

use super::mountinfo;
use super::options::{self, MountOptions};
use super::resolve::{proc_fd_path, resolve, Create, Resolved};
use super::{cstring, Context, RootfsError};
use alcove_sys::mount;
use oci_spec::runtime::Mount;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The flags mount(2) takes for a bind besides `MS_BIND`/`MS_REC`: their
/// presence means a remount is needed.
const BIND_IGNORED: libc::c_ulong = !(libc::MS_REC | libc::MS_REMOUNT | libc::MS_BIND);
/// Entries copied by `tmpcopyup`, and how deep.
const MAX_COPY_ENTRIES: usize = 100_000;
const MAX_COPY_DEPTH: usize = 64;

/// One mount as performed: where, what, from where, how.
struct Req<'a> {
    dest: &'a Path,
    fstype: &'a str,
    source: Option<&'a Path>,
    opts: MountOptions,
}

impl Req<'_> {
    fn fail(&self, cause: io::Error) -> RootfsError {
        RootfsError::Mount {
            destination: self.dest.display().to_string(),
            fstype: self.fstype.to_owned(),
            from: self
                .source
                .map_or_else(String::new, |s| s.display().to_string()),
            cause,
        }
    }

    fn refuse(&self, reason: &str) -> RootfsError {
        RootfsError::Refused {
            destination: self.dest.display().to_string(),
            reason: reason.to_owned(),
        }
    }
}

/// Performs the spec mount `m` inside the rootfs.
pub(super) fn mount_one(ctx: &Context, m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination().as_path();
    let shown = dest.display().to_string();
    if shown.len() > super::MAX_PATH {
        return Err(RootfsError::Options {
            destination: shown.chars().take(64).collect(),
            reason: "the destination is longer than PATH_MAX".into(),
        });
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err(RootfsError::Options {
            destination: shown,
            reason: "id-mapped mounts (uidMappings, gidMappings) are not supported".into(),
        });
    }
    let req = Req {
        dest,
        fstype: m.typ().as_deref().unwrap_or(""),
        source: m.source().as_deref(),
        opts: options::parse(m.options().as_deref().unwrap_or(&[]), &shown)?,
    };
    if super::clean(dest) == Path::new("/") {
        return Err(req.refuse("a mount over the container's root is not supported"));
    }
    if req.opts.is_bind() || req.fstype == "bind" {
        bind(ctx, &req)
    } else {
        match req.fstype {
            "cgroup" => cgroup(ctx, &req),
            "tmpfs" => tmpfs(ctx, &req),
            "" => Err(req.refuse("a mount that is not a bind needs a type")),
            _ => filesystem(ctx, &req),
        }
    }
}

/// Resolves `dest` in the root (creating as `create` says) and checks that
/// the kernel agrees it is inside the rootfs.
fn target(ctx: &Context, req: &Req, create: Create) -> Result<Resolved, RootfsError> {
    let r = resolve(ctx.root.as_fd(), req.dest, create).map_err(|e| req.fail(e))?;
    let real = std::fs::read_link(r.proc_path().to_str().unwrap_or("")).map_err(|e| req.fail(e))?;
    if !real.starts_with(&ctx.rootfs) {
        return Err(req.refuse("its destination resolves outside the rootfs"));
    }
    Ok(r)
}

/// runc's checkProcMount: nothing may be mounted inside /proc but a few
/// files lxcfs-style tools replace; /proc itself only takes a procfs.
fn check_proc(req: &Req, inside: &str, source_is_proc: bool) -> Result<(), RootfsError> {
    const ALLOWED: &[&str] = &[
        "/proc/cpuinfo",
        "/proc/diskstats",
        "/proc/meminfo",
        "/proc/stat",
        "/proc/swaps",
        "/proc/uptime",
        "/proc/loadavg",
        "/proc/slabinfo",
        "/proc/net/dev",
        "/proc/sys/kernel/ns_last_pid",
    ];
    let path = Path::new(inside);
    if !path.starts_with("/proc") || ALLOWED.contains(&inside) {
        return Ok(());
    }
    if path == Path::new("/proc") && (req.fstype == "proc" || source_is_proc) {
        return Ok(());
    }
    Err(req.refuse(&format!("{inside} is inside /proc")))
}

/// A bind mount (`bind`/`rbind`, or type "bind"): the source bound, then
/// remounted with the flags mount(2) ignores on a bind.
fn bind(ctx: &Context, req: &Req) -> Result<(), RootfsError> {
    let source = req
        .source
        .ok_or_else(|| req.refuse("a bind mount needs a source"))?;
    let csource = cstring(source).map_err(|e| req.fail(e))?;
    let meta = std::fs::metadata(source).map_err(|e| req.fail(e))?;
    let create = if meta.is_dir() {
        Create::Dir
    } else {
        Create::File
    };
    let t = target(ctx, req, create)?;
    let source_is_proc =
        alcove_sys::fs::filesystem_magic(&csource).is_ok_and(|m| m == libc::PROC_SUPER_MAGIC);
    check_proc(req, &t.path, source_is_proc)?;
    let flags = mount::MS_BIND | (req.opts.flags & mount::MS_REC);
    mount::mount(Some(&csource), &t.proc_path(), None, flags, None).map_err(|e| req.fail(e))?;
    let t = target(ctx, req, Create::Nothing)?;
    if req.opts.flags & BIND_IGNORED != 0 {
        remount_keeping_locked(&t.proc_path(), req.opts.flags, req.opts.atime_named)
            .map_err(|e| req.fail(e))?;
    }
    finish(req, &t)
}

/// A tmpfs: mounted writable (so it can be filled and chmod-ed), its old
/// contents copied in for `tmpcopyup`, then made read-only if asked, except
/// /dev, which [`super::finalize`] makes read-only after the devices exist.
fn tmpfs(ctx: &Context, req: &Req) -> Result<(), RootfsError> {
    let (t, existed) = match target(ctx, req, Create::Nothing) {
        Ok(t) => (t, true),
        Err(RootfsError::Mount { cause, .. }) if cause.raw_os_error() == Some(libc::ENOENT) => {
            (target(ctx, req, Create::Dir)?, false)
        }
        Err(e) => return Err(e),
    };
    check_proc(req, &t.path, false)?;
    let old_mode = std::fs::metadata(t.proc_path().to_str().unwrap_or(""))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .map_err(|e| req.fail(e))?;
    // A descriptor opened before the mount keeps reaching the covered directory.
    let old_dir = if req.opts.tmpcopyup {
        Some(std::fs::File::open(t.proc_path().to_str().unwrap_or("")).map_err(|e| req.fail(e))?)
    } else {
        None
    };
    let source = req
        .source
        .map(cstring)
        .transpose()
        .map_err(|e| req.fail(e))?;
    let data = data(req).map_err(|e| req.fail(e))?;
    mount::mount(
        Some(source.as_deref().unwrap_or(c"tmpfs")),
        &t.proc_path(),
        Some(c"tmpfs"),
        req.opts.flags & !mount::MS_RDONLY,
        data.as_deref(),
    )
    .map_err(|e| req.fail(e))?;
    let new = target(ctx, req, Create::Nothing)?;
    let new_path = PathBuf::from(new.proc_path().to_str().unwrap_or(""));
    if let Some(old) = old_dir {
        let mut budget = MAX_COPY_ENTRIES;
        copy_dir(
            &PathBuf::from(proc_fd_path(old.as_fd()).to_str().unwrap_or("")),
            &new_path,
            0,
            &mut budget,
        )
        .map_err(|e| req.fail(e))?;
    }
    if existed && !req.opts.data.split(',').any(|o| o.starts_with("mode=")) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &new_path,
            std::fs::Permissions::from_mode(old_mode & 0o7777),
        )
        .map_err(|e| req.fail(e))?;
    }
    if req.opts.flags & mount::MS_RDONLY != 0 && new.path != "/dev" {
        mount::mount(
            None,
            &new.proc_path(),
            None,
            req.opts.flags | mount::MS_REMOUNT,
            None,
        )
        .map_err(|e| req.fail(e))?;
    }
    finish(req, &new)
}

/// Any other filesystem (proc, sysfs, devpts, mqueue, overlay, ...): a
/// directory made and the filesystem mounted on it with the flags and data.
fn filesystem(ctx: &Context, req: &Req) -> Result<(), RootfsError> {
    let t = target(ctx, req, Create::Dir)?;
    check_proc(req, &t.path, false)?;
    let fstype = CString::new(req.fstype).map_err(|_| req.refuse("its type holds a NUL"))?;
    let source = match req.source {
        Some(s) => cstring(s).map_err(|e| req.fail(e))?,
        None => fstype.clone(),
    };
    let mut flags = req.opts.flags;
    if t.path == "/dev" {
        flags &= !mount::MS_RDONLY;
    }
    let data = data(req).map_err(|e| req.fail(e))?;
    match mount::mount(
        Some(&source),
        &t.proc_path(),
        Some(&fstype),
        flags,
        data.as_deref(),
    ) {
        Ok(()) => {}
        // A user namespace that owns no network (or IPC) namespace may not
        // mount sysfs (mqueue): bind the host's instead, as runc does.
        Err(e) if ctx.in_userns && matches!(e.raw_os_error(), Some(libc::EPERM | libc::EBUSY)) => {
            let host = match req.fstype {
                "sysfs" => Path::new("/sys"),
                "mqueue" => Path::new("/dev/mqueue"),
                _ => return Err(req.fail(e)),
            };
            let mut opts = req.opts.clone();
            opts.flags |= mount::MS_BIND | mount::MS_REC;
            let fallback = Req {
                dest: req.dest,
                fstype: "bind",
                source: Some(host),
                opts,
            };
            return bind(ctx, &fallback);
        }
        Err(e) => return Err(req.fail(e)),
    }
    let t = target(ctx, req, Create::Nothing)?;
    finish(req, &t)
}

/// `opts` with the host cgroup2 tree's own flags (nsdelegate,
/// memory_recursiveprot, favordynmods, ...) added to its data: a new cgroup2
/// mount made from the host's cgroup namespace (a container without one of
/// its own) sets every flag of the tree to its own options, so a bare one
/// would clear them for the whole host. In a cgroup namespace of its own the
/// kernel ignores them.
fn with_host_root_flags(opts: &MountOptions, entries: &[mountinfo::MountEntry]) -> MountOptions {
    let mut opts = opts.clone();
    let Some(host) = entries.iter().find(|e| e.fstype == "cgroup2") else {
        return opts;
    };
    let mut data: Vec<String> = opts
        .data
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    for flag in alcove_cgroup::migrations::root_flags(&host.super_options) {
        if !data.contains(&flag) {
            data.push(flag);
        }
    }
    opts.data = data.join(",");
    opts
}

/// cgroup: cgroup2 on a v2-only host; on a v1 or hybrid host a tmpfs with
/// each v1 hierarchy under it (a fresh mount in a cgroup namespace, else a
/// bind of the init's own cgroup), as runc's mountCgroupV1.
fn cgroup(ctx: &Context, req: &Req) -> Result<(), RootfsError> {
    let v2 = alcove_sys::fs::filesystem_magic(c"/sys/fs/cgroup")
        .is_ok_and(|m| m == libc::CGROUP2_SUPER_MAGIC);
    let own = mountinfo::read_cgroups().map_err(|e| req.fail(e))?;
    let entries = mountinfo::read_mountinfo().map_err(|e| req.fail(e))?;
    if v2 {
        let v2req = Req {
            dest: req.dest,
            fstype: "cgroup2",
            source: Some(Path::new("cgroup2")),
            opts: with_host_root_flags(&req.opts, &entries),
        };
        return match filesystem(ctx, &v2req) {
            Err(RootfsError::Mount { cause, .. })
                if matches!(cause.raw_os_error(), Some(libc::EPERM | libc::EBUSY)) =>
            {
                let mine = own.iter().find(|c| c.controllers.is_empty());
                let host = entries.iter().find(|e| e.fstype == "cgroup2");
                let (Some(mine), Some(host)) = (mine, host) else {
                    return Err(
                        req.refuse("cgroup2 cannot be mounted and the init's cgroup is unknown")
                    );
                };
                let source = own_dir(host, &mine.path).ok_or_else(|| {
                    req.refuse("the init's cgroup is outside the host's cgroup2 mount")
                })?;
                let mut opts = req.opts.clone();
                opts.flags |= mount::MS_BIND | mount::MS_REC;
                bind(
                    ctx,
                    &Req {
                        dest: req.dest,
                        fstype: "bind",
                        source: Some(&source),
                        opts,
                    },
                )
            }
            other => other,
        };
    }
    let base = MountOptions {
        flags: mount::MS_NOEXEC | mount::MS_NOSUID | mount::MS_NODEV,
        data: "mode=755".into(),
        propagation: req.opts.propagation.clone(),
        ..MountOptions::default()
    };
    tmpfs(
        ctx,
        &Req {
            dest: req.dest,
            fstype: "tmpfs",
            source: Some(Path::new("tmpfs")),
            opts: base.clone(),
        },
    )?;
    // The host's hierarchies, not their copies already bound into the rootfs
    // (an rbind of /sys brings them along).
    let host = entries
        .iter()
        .filter(|e| e.fstype == "cgroup" && !e.mount_point.starts_with(&ctx.rootfs));
    for hierarchy in host {
        let controllers = mountinfo::v1_controllers(&hierarchy.super_options, &own);
        let Some(mine) = own.iter().find(|c| {
            !c.controllers.is_empty()
                && c.controllers.len() == controllers.len()
                && c.controllers.iter().all(|x| controllers.contains(x))
        }) else {
            continue;
        };
        let Some(name) = hierarchy.mount_point.file_name() else {
            continue;
        };
        let sub = req.dest.join(name);
        if ctx.cgroupns {
            let mut opts = req.opts.clone();
            opts.data = controllers.join(",");
            filesystem(
                ctx,
                &Req {
                    dest: &sub,
                    fstype: "cgroup",
                    source: Some(Path::new("cgroup")),
                    opts,
                },
            )?;
        } else {
            let source = own_dir(hierarchy, &mine.path).ok_or_else(|| {
                req.refuse("the init's cgroup is outside a host hierarchy's mount")
            })?;
            let mut opts = req.opts.clone();
            opts.flags |= mount::MS_BIND | mount::MS_REC;
            bind(
                ctx,
                &Req {
                    dest: &sub,
                    fstype: "bind",
                    source: Some(&source),
                    opts,
                },
            )?;
        }
        // cpu,cpuacct is also reachable as cpu and cpuacct, as on the host.
        let name = name.to_string_lossy();
        if name.contains(',') {
            let dir = target(ctx, req, Create::Nothing)?;
            for single in name.split(',') {
                let link = CString::new(single)
                    .map_err(|_| req.refuse("a controller name holds a NUL"))?;
                let target = CString::new(name.as_bytes())
                    .map_err(|_| req.refuse("a controller name holds a NUL"))?;
                match alcove_sys::dirfd::symlink_at(&target, dir.fd.as_fd(), &link) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(req.fail(e)),
                    _ => {}
                }
            }
        }
    }
    if req.opts.flags & mount::MS_RDONLY != 0 {
        let t = target(ctx, req, Create::Nothing)?;
        remount_keeping_locked(&t.proc_path(), base.flags | mount::MS_RDONLY, false)
            .map_err(|e| req.fail(e))?;
    }
    Ok(())
}

/// The directory of the cgroup at `path` (as /proc/self/cgroup shows it)
/// under the hierarchy mounted as `hierarchy`.
fn own_dir(hierarchy: &mountinfo::MountEntry, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(&hierarchy.root).ok()?;
    Some(hierarchy.mount_point.join(relative))
}

/// Propagation changes and recursive attributes, on the mount just made.
fn finish(req: &Req, t: &Resolved) -> Result<(), RootfsError> {
    for &p in &req.opts.propagation {
        mount::mount(None, &t.proc_path(), None, p, None).map_err(|e| req.fail(e))?;
    }
    if req.opts.attr_set != 0 || req.opts.attr_clr != 0 {
        mount::change_attributes(t.fd.as_fd(), req.opts.attr_set, req.opts.attr_clr, true)
            .map_err(|e| req.fail(e))?;
    }
    Ok(())
}

fn data(req: &Req) -> io::Result<Option<CString>> {
    if req.opts.data.is_empty() {
        return Ok(None);
    }
    CString::new(req.opts.data.as_bytes())
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the mount data"))
}

/// A bind remount of `path` with `flags`; when the kernel refuses (EPERM:
/// flags locked by a less privileged user namespace), again keeping the
/// mount's current read-only, nosuid, nodev, noexec (and atime, unless the
/// spec named one) flags, as runc does.
pub(super) fn remount_keeping_locked(
    path: &CStr,
    flags: libc::c_ulong,
    atime_named: bool,
) -> io::Result<()> {
    let flags = (flags & !libc::MS_REC) | mount::MS_REMOUNT | mount::MS_BIND;
    match mount::mount(None, path, None, flags, None) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut keep = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if !atime_named {
                keep |= libc::MS_NOATIME
                    | libc::MS_NODIRATIME
                    | libc::MS_RELATIME
                    | libc::MS_STRICTATIME;
            }
            let current = mount::mount_flags(path)?;
            mount::mount(None, path, None, flags | (current & keep), None)
        }
        other => other,
    }
}

/// runc's readonlyPath, after the pivot: `path` bound onto itself and made
/// read-only, keeping nosuid, nodev, noexec; a missing path is left alone.
pub(super) fn readonly_path(path: &str) -> io::Result<()> {
    let c = cstring(Path::new(path))?;
    match mount::mount(Some(&c), &c, None, mount::MS_BIND | mount::MS_REC, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        other => other?,
    }
    let keep = mount::mount_flags(&c)? & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
    remount_keeping_locked(&c, keep | mount::MS_RDONLY, false)
}

/// runc's maskPath, after the pivot: /dev/null over a file, a read-only
/// empty tmpfs over a directory; a missing path is left alone.
pub(super) fn mask_path(path: &str) -> io::Result<()> {
    let c = cstring(Path::new(path))?;
    match mount::mount(Some(c"/dev/null"), &c, None, mount::MS_BIND, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            mount::mount(Some(c"tmpfs"), &c, Some(c"tmpfs"), mount::MS_RDONLY, None)
        }
        other => other,
    }
}

/// Copies the tree at `from` into the empty directory `to`: directories,
/// regular files and links, with their modes and owners (tmpcopyup).
/// Device nodes, FIFOs and sockets are skipped.
fn copy_dir(from: &Path, to: &Path, depth: usize, budget: &mut usize) -> io::Result<()> {
    use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
    if depth > MAX_COPY_DEPTH {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let meta = entry.metadata()?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_dir(&src, &dst, depth + 1, budget)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            continue;
        }
        lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}
