//! The container's root filesystem, set up by its init inside its new mount
//! namespace, as runc's `libcontainer/rootfs_linux.go` does and the runtime
//! spec asks (config.md "Mounts"; config-linux.md "Default Filesystems",
//! "Devices", "Default Devices", "rootfsPropagation", "maskedPaths",
//! "readonlyPaths"): [`prepare`] makes the rootfs a mount point and mounts
//! everything into it, [`enter`] pivots into it and locks it down.
//! Every path inside the rootfs is resolved in [`resolve`] from a descriptor
//! of the root, so a link in the image cannot send a mount onto the host.

mod devices;
mod mountinfo;
mod mounts;
mod options;
mod resolve;
#[cfg(test)]
mod tests;

use alcove_sys::{dirfd, fs, mount};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use options::{parse as parse_options, MountOptions};

/// Bound on the spec's mounts, devices, masked and read-only paths (each).
pub const MAX_ENTRIES: usize = 1024;
/// Bound on one path's length, as PATH_MAX.
pub const MAX_PATH: usize = 4096;

/// What [`prepare`] and [`enter`] work from.
pub struct RootfsPlan<'a> {
    pub spec: &'a Spec,
    /// The bundle's rootfs: absolute, links resolved.
    pub rootfs: &'a Path,
    /// Move the rootfs onto `/` and chroot instead of pivot_root (`--no-pivot`).
    pub no_pivot: bool,
    /// The container has a user namespace of its own (devices are bound
    /// from the host, sysfs may fall back to a bind).
    pub new_user_ns: bool,
}

/// Why the root filesystem could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("the options of the mount at {destination} are invalid: {reason}")]
    Options { destination: String, reason: String },
    #[error("mounting {fstype:?} from {from:?} at {destination} failed")]
    Mount {
        destination: String,
        fstype: String,
        from: String,
        #[source]
        cause: io::Error,
    },
    #[error("the mount at {destination} is refused: {reason}")]
    Refused { destination: String, reason: String },
    #[error(
        "rootfsPropagation {0:?} is not one of shared, slave, private, unbindable or their r-forms"
    )]
    Propagation(String),
    #[error("the spec lists more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("the device {path} is invalid: {reason}")]
    DeviceSpec { path: String, reason: String },
    #[error("creating the device {path} failed")]
    Device {
        path: String,
        #[source]
        cause: io::Error,
    },
    #[error("masking {path} failed")]
    Mask {
        path: String,
        #[source]
        cause: io::Error,
    },
    #[error("making {path} read-only failed")]
    ReadOnly {
        path: String,
        #[source]
        cause: io::Error,
    },
    #[error("{step} failed")]
    Step {
        step: &'static str,
        #[source]
        cause: io::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> RootfsError {
    move |cause| RootfsError::Step { step, cause }
}

/// Facts about the container every mount needs.
pub(crate) struct Context {
    /// The rootfs, opened after it was bound onto itself.
    pub root: std::os::fd::OwnedFd,
    pub rootfs: PathBuf,
    /// In a user namespace other than the initial one (mknod is refused,
    /// some filesystems cannot be mounted).
    pub in_userns: bool,
    pub cgroupns: bool,
}

/// Sets the root propagation, binds the rootfs onto itself, performs every
/// mount of the spec in order, then (unless /dev is a bind mount) creates
/// the default and listed devices and /dev's links.
pub fn prepare(plan: &RootfsPlan) -> Result<(), RootfsError> {
    let spec = plan.spec;
    let spec_mounts = spec.mounts().as_deref().unwrap_or(&[]);
    let linux = spec.linux().as_ref();
    bound("mounts", spec_mounts.len())?;
    bound(
        "devices",
        linux.and_then(|l| l.devices().as_ref()).map_or(0, Vec::len),
    )?;
    bound(
        "masked paths",
        linux
            .and_then(|l| l.masked_paths().as_ref())
            .map_or(0, Vec::len),
    )?;
    bound(
        "read-only paths",
        linux
            .and_then(|l| l.readonly_paths().as_ref())
            .map_or(0, Vec::len),
    )?;
    let rootfs = cstring(plan.rootfs).map_err(step("naming the rootfs"))?;
    if !plan.rootfs.is_absolute() {
        return Err(step("finding the rootfs")(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the rootfs path is not absolute",
        )));
    }

    // Slave by default so that nothing mounted here reaches the host, while
    // the host's later mounts still reach the container.
    // An unbindable root could not be bound onto itself below: it is made
    // unbindable after the pivot instead (see `pivot`).
    let propagation = root_propagation(plan)?
        .filter(|p| p & mount::MS_UNBINDABLE == 0)
        .unwrap_or(mount::MS_SLAVE | mount::MS_REC);
    mount::mount(None, c"/", None, propagation, None)
        .map_err(step("setting the root propagation"))?;
    parent_mount_private(plan.rootfs)?;
    mount::mount(
        Some(&rootfs),
        &rootfs,
        None,
        mount::MS_BIND | mount::MS_REC,
        None,
    )
    .map_err(step("binding the rootfs onto itself"))?;

    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let has = |t: LinuxNamespaceType| namespaces.is_some_and(|n| n.iter().any(|ns| ns.typ() == t));
    let ctx = Context {
        root: dirfd::open_dir(&rootfs).map_err(step("opening the rootfs"))?,
        rootfs: plan.rootfs.to_path_buf(),
        in_userns: plan.new_user_ns || in_user_namespace(),
        cgroupns: has(LinuxNamespaceType::Cgroup),
    };
    for m in spec_mounts {
        mounts::mount_one(&ctx, m)?;
    }
    if needs_dev_setup(spec) {
        devices::create_all(
            &ctx,
            linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]),
        )?;
        devices::links(&ctx)?;
    }
    Ok(())
}

/// [`pivot`] then [`finalize`]: the init ends in the rootfs with cwd `/`,
/// read-only where the spec says, masked paths masked.
pub fn enter(plan: &RootfsPlan) -> Result<(), RootfsError> {
    pivot(plan)?;
    finalize(plan)
}

/// Makes the rootfs the root: pivot_root(".", ".") and the old root
/// detached, or with `no_pivot` the rootfs moved onto `/` and chrooted.
/// Things that need a writable container `/proc/sys` or `/dev` (sysctl, the
/// console) go between this and [`finalize`].
pub fn pivot(plan: &RootfsPlan) -> Result<(), RootfsError> {
    let rootfs = cstring(plan.rootfs).map_err(step("naming the rootfs"))?;
    let new_root = dirfd::open_dir(&rootfs).map_err(step("opening the rootfs"))?;
    fs::fchdir(new_root.as_fd()).map_err(step("entering the rootfs"))?;
    if plan.no_pivot {
        move_root(plan.rootfs)?;
    } else {
        let old_root = dirfd::open_dir(c"/").map_err(step("opening the old root"))?;
        mount::pivot_root(c".", c".").map_err(step("pivot_root"))?;
        // The old root is now stacked on the new one; detach it from here,
        // slave first so that the unmount cannot propagate to the host.
        fs::fchdir(old_root.as_fd()).map_err(step("entering the old root"))?;
        mount::mount(None, c".", None, mount::MS_SLAVE | mount::MS_REC, None)
            .map_err(step("making the old root a slave"))?;
        mount::umount(c".", mount::MNT_DETACH).map_err(step("detaching the old root"))?;
        fs::chdir(c"/").map_err(step("entering the new root"))?;
    }
    // Applied only now, to the container's own "/", so that "shared" never
    // shares the host's root; private was already done by prepare.
    if let Some(p) = root_propagation(plan)? {
        if p & mount::MS_PRIVATE == 0 {
            mount::mount(None, c"/", None, p, None)
                .map_err(step("setting the rootfs propagation"))?;
        }
    }
    Ok(())
}

/// After [`pivot`]: /dev read-only if its mount says so, the root read-only
/// if `root.readonly`, then `readonlyPaths`, then `maskedPaths` (runc's order).
pub fn finalize(plan: &RootfsPlan) -> Result<(), RootfsError> {
    let spec = plan.spec;
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        if clean(m.destination()) == Path::new("/dev") {
            let dest = m.destination().to_string_lossy().into_owned();
            let opts = options::parse(m.options().as_deref().unwrap_or(&[]), &dest)?;
            if opts.flags & mount::MS_RDONLY != 0 {
                mounts::remount_keeping_locked(
                    c"/dev",
                    opts.flags | mount::MS_RDONLY,
                    opts.atime_named,
                )
                .map_err(|cause| RootfsError::ReadOnly {
                    path: "/dev".into(),
                    cause,
                })?;
            }
            break;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mounts::remount_keeping_locked(c"/", mount::MS_RDONLY, false).map_err(|cause| {
            RootfsError::ReadOnly {
                path: "/".into(),
                cause,
            }
        })?;
    }
    let linux = spec.linux().as_ref();
    for path in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or(&[])
    {
        mounts::readonly_path(path).map_err(|cause| RootfsError::ReadOnly {
            path: path.clone(),
            cause,
        })?;
    }
    for path in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or(&[])
    {
        mounts::mask_path(path).map_err(|cause| RootfsError::Mask {
            path: path.clone(),
            cause,
        })?;
    }
    fs::chdir(c"/").map_err(step("entering the new root"))
}

fn bound(what: &'static str, n: usize) -> Result<(), RootfsError> {
    if n > MAX_ENTRIES {
        return Err(RootfsError::TooMany {
            what,
            limit: MAX_ENTRIES,
        });
    }
    Ok(())
}

/// The spec's rootfsPropagation as mount(2) flags; `None` when unset.
fn root_propagation(plan: &RootfsPlan) -> Result<Option<libc::c_ulong>, RootfsError> {
    let value = plan
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref());
    match value {
        None | Some("") => Ok(None),
        Some(v) => options::propagation(v)
            .map(Some)
            .ok_or_else(|| RootfsError::Propagation(v.to_owned())),
    }
}

/// Makes the mount holding the rootfs private if it is shared: pivot_root
/// refuses a shared parent, and the self-bind must not propagate out.
fn parent_mount_private(rootfs: &Path) -> Result<(), RootfsError> {
    let entries = mountinfo::read_mountinfo().map_err(step("reading /proc/self/mountinfo"))?;
    if let Some(parent) = mountinfo::mount_of(&entries, rootfs) {
        if parent.optional.split(' ').any(|f| f.starts_with("shared:")) {
            let at =
                cstring(&parent.mount_point).map_err(step("naming the rootfs's parent mount"))?;
            mount::mount(None, &at, None, mount::MS_PRIVATE, None)
                .map_err(step("making the rootfs's parent mount private"))?;
        }
    }
    Ok(())
}

/// runc's msMoveRoot: hide the host's proc and sys mounts (the kernel's
/// "fully visible" check for a later procfs mount counts mounts a chroot
/// leaves reachable), then move the rootfs onto `/` and chroot into it.
fn move_root(rootfs: &Path) -> Result<(), RootfsError> {
    let entries = mountinfo::read_mountinfo().map_err(step("reading /proc/self/mountinfo"))?;
    for e in entries.iter().filter(|e| {
        e.root == Path::new("/")
            && (e.fstype == "proc" || e.fstype == "sysfs")
            && !e.mount_point.starts_with(rootfs)
    }) {
        let at = cstring(&e.mount_point).map_err(step("naming a host proc or sys mount"))?;
        match mount::mount(None, &at, None, mount::MS_SLAVE | mount::MS_REC, None) {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
            other => other.map_err(step("making a host proc or sys mount a slave"))?,
        }
        match mount::umount(&at, mount::MNT_DETACH) {
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => {
                mount::mount(Some(c"tmpfs"), &at, Some(c"tmpfs"), 0, None)
                    .map_err(step("covering a host proc or sys mount"))?;
            }
            other => other.map_err(step("unmounting a host proc or sys mount"))?,
        }
    }
    mount::mount(Some(c"."), c"/", None, mount::MS_MOVE, None)
        .map_err(step("moving the rootfs onto /"))?;
    mount::chroot(c".").map_err(step("chroot into the rootfs"))?;
    fs::chdir(c"/").map_err(step("entering the new root"))
}

/// Whether /dev is left to the runtime (runc's needsSetupDev): unless the
/// spec binds something over /dev, the devices and links are made there.
fn needs_dev_setup(spec: &Spec) -> bool {
    !spec.mounts().as_deref().unwrap_or(&[]).iter().any(|m| {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .any(|o| o == "bind" || o == "rbind");
        bind && clean(m.destination()) == Path::new("/dev")
    })
}

/// Whether this process is in a user namespace other than the initial one.
fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields != ["0", "0", "4294967295"]
    })
}

/// `path` made absolute and lexically clean (no `.`, no trailing `/`).
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn cstring(path: &Path) -> io::Result<CString> {
    if path.as_os_str().len() > MAX_PATH {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}
