//! /dev inside the container (config-linux.md "Devices", "Default
//! Devices"): the default devices and `linux.devices` made with mknod, or
//! bound from the host where mknod is not allowed (a user namespace), then
//! /dev/ptmx, /dev/fd and the std links, as runc's createDevices,
//! setupPtmx and setupDevSymlinks do. /dev/console belongs to the console.

use super::resolve::{resolve, Create};
use super::{cstring, Context, RootfsError};
use alcove_sys::dirfd::{self, Scope};
use alcove_sys::mount;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// The devices every container gets (config-linux.md "Default Devices").
const DEFAULTS: &[(&str, u32, u32)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// One device to create, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    pub path: PathBuf,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO` with the permission bits.
    pub mode: libc::mode_t,
    pub major: u32,
    pub minor: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The defaults (those the spec does not list itself), then the spec's.
pub(super) fn nodes(listed: &[LinuxDevice]) -> Result<Vec<Node>, RootfsError> {
    let mut out: Vec<Node> = DEFAULTS
        .iter()
        .filter(|(path, _, _)| {
            !listed
                .iter()
                .any(|d| super::clean(d.path()) == Path::new(path))
        })
        .map(|&(path, major, minor)| Node {
            path: PathBuf::from(path),
            mode: libc::S_IFCHR | 0o666,
            major,
            minor,
            uid: 0,
            gid: 0,
        })
        .collect();
    for d in listed {
        out.push(node(d)?);
    }
    Ok(out)
}

fn node(d: &LinuxDevice) -> Result<Node, RootfsError> {
    let path = d.path().clone();
    let invalid = |reason: &str| RootfsError::DeviceSpec {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    };
    if !path.is_absolute() || super::clean(&path) == Path::new("/") {
        return Err(invalid("its path is not an absolute file path"));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => return Err(invalid("type \"a\" names no device")),
    };
    let number = |n: i64, what: &str| {
        u32::try_from(n).map_err(|_| invalid(&format!("its {what} number is out of range")))
    };
    let mode = d.file_mode().unwrap_or(0o666);
    if mode & !0o7777 != 0 && mode & libc::S_IFMT != kind {
        return Err(invalid("its fileMode names another file type"));
    }
    Ok(Node {
        path: path.clone(),
        mode: kind | (mode & 0o7777),
        major: number(d.major(), "major")?,
        minor: number(d.minor(), "minor")?,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Creates every device in the rootfs.
pub(super) fn create_all(ctx: &Context, listed: &[LinuxDevice]) -> Result<(), RootfsError> {
    for n in nodes(listed)? {
        create(ctx, &n).map_err(|cause| RootfsError::Device {
            path: n.path.display().to_string(),
            cause,
        })?;
    }
    Ok(())
}

fn create(ctx: &Context, n: &Node) -> io::Result<()> {
    let (parent, name) = split(&n.path)?;
    let dir = resolve(ctx.root.as_fd(), parent, Create::Dir)?;
    if ctx.in_userns {
        return bind_from_host(dir.fd.as_fd(), &name, &n.path);
    }
    let dev = libc::makedev(n.major, n.minor);
    match dirfd::mknod_at(dir.fd.as_fd(), &name, n.mode, dev) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return bind_from_host(dir.fd.as_fd(), &name, &n.path)
        }
        other => other?,
    }
    // mknod is subject to the umask; the spec's mode is not.
    dirfd::chmod_at(dir.fd.as_fd(), &name, n.mode & 0o7777)?;
    dirfd::chown_at(dir.fd.as_fd(), &name, n.uid, n.gid)
}

/// runc's bindMountDeviceNode: an empty file bound over by the host's node
/// of the same path.
fn bind_from_host(dir: BorrowedFd<'_>, name: &CString, host: &Path) -> io::Result<()> {
    dirfd::touch_at(dir, name, 0o644)?;
    let at = dirfd::open_at(dir, name, libc::O_PATH, Scope::NoLinks)?;
    let host = cstring(host)?;
    let at = super::resolve::proc_fd_path(at.as_fd());
    mount::mount(Some(&host), &at, None, mount::MS_BIND, None)
}

/// /dev/ptmx → pts/ptmx (the container's devpts), /dev/fd and the std
/// streams → /proc/self/fd, /dev/core → /proc/kcore where the kernel has it.
pub(super) fn links(ctx: &Context) -> Result<(), RootfsError> {
    let fail = |cause| RootfsError::Device {
        path: "/dev".into(),
        cause,
    };
    let dev = resolve(ctx.root.as_fd(), Path::new("/dev"), Create::Dir).map_err(fail)?;
    let dir = dev.fd.as_fd();
    match dirfd::unlink_at(dir, c"ptmx", false) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(fail(e)),
        _ => {}
    }
    let mut list = vec![
        (c"pts/ptmx", c"ptmx"),
        (c"/proc/self/fd", c"fd"),
        (c"/proc/self/fd/0", c"stdin"),
        (c"/proc/self/fd/1", c"stdout"),
        (c"/proc/self/fd/2", c"stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        list.push((c"/proc/kcore", c"core"));
    }
    for (target, name) in list {
        match dirfd::symlink_at(target, dir, name) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(fail(e)),
            _ => {}
        }
    }
    Ok(())
}

/// A device path's parent and file name.
fn split(path: &Path) -> io::Result<(&Path, CString)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "not a file path");
    let name = path.file_name().ok_or_else(bad)?;
    let parent = path.parent().ok_or_else(bad)?;
    let name = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name)).map_err(|_| bad())?;
    Ok((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(json: &str) -> LinuxDevice {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn listed_devices_replace_defaults_and_are_validated() {
        let listed = [
            dev(r#"{"path":"/dev/null","type":"c","major":1,"minor":3,"fileMode":432}"#),
            dev(r#"{"path":"/dev/fuse","type":"c","major":10,"minor":229,"uid":5,"gid":6}"#),
        ];
        let n = nodes(&listed).unwrap();
        assert_eq!(
            n.iter()
                .filter(|n| n.path == Path::new("/dev/null"))
                .count(),
            1
        );
        let null = n.iter().find(|n| n.path == Path::new("/dev/null")).unwrap();
        assert_eq!(null.mode, libc::S_IFCHR | 0o660);
        let fuse = n.last().unwrap();
        assert_eq!(
            (fuse.major, fuse.minor, fuse.uid, fuse.gid),
            (10, 229, 5, 6)
        );
        assert_eq!(fuse.mode, libc::S_IFCHR | 0o666);
        assert_eq!(n.len(), DEFAULTS.len() + 1);
    }

    #[test]
    fn bad_devices_are_refused() {
        for bad in [
            r#"{"path":"dev/x","type":"c","major":1,"minor":1}"#,
            r#"{"path":"/dev/x","type":"a","major":1,"minor":1}"#,
            r#"{"path":"/dev/x","type":"b","major":-1,"minor":1}"#,
            r#"{"path":"/dev/x","type":"b","major":1,"minor":99999999999}"#,
            r#"{"path":"/","type":"c","major":1,"minor":1}"#,
        ] {
            assert!(nodes(&[dev(bad)]).is_err(), "{bad}");
        }
    }
}
