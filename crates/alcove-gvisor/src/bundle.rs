//! An OCI bundle (config.json and a root directory) made from a
//! [`SandboxSpec`], in a directory of its own that is removed with it.

use crate::GvisorError;
use alcove_sandbox::{NetMode, SandboxSpec};
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The host directories the host view shows read-only, as the container
/// tier does: bound where they are directories, re-made as the same
/// symlink where the host has one (/bin -> usr/bin on a merged-/usr system).
const HOST_VIEW: [&str; 6] = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64"];

/// One run's directory: `bundle/` (config.json, rootfs/) and `state/`
/// (runsc's --root). Removed, with everything in it, when dropped.
pub struct Bundle {
    pub dir: PathBuf,
    pub id: String,
}

impl Bundle {
    /// Writes the bundle for `spec` below `root` (made if missing), its
    /// network as [`Network::of`] says.
    pub fn create(root: &Path, spec: &SandboxSpec) -> Result<Bundle, GvisorError> {
        Bundle::create_for(root, spec, Network::of(spec))
    }

    /// [`Bundle::create`] with its sockets in `network`.
    pub fn create_for(
        root: &Path,
        spec: &SandboxSpec,
        network: Network,
    ) -> Result<Bundle, GvisorError> {
        let config = config_for(spec, network)?;
        let id = format!(
            "alcove-{}-{}",
            std::process::id(),
            alcove_sys::process::random_id()
        );
        let dir = root.join(&id);
        let failed = |source| GvisorError::Bundle {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(root).map_err(failed)?;
        // Only root reads it: config.json holds the run's environment
        // (a function's secrets among it).
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(failed)?;
        let bundle = Bundle { dir, id };
        let failed = |source| GvisorError::Bundle {
            path: bundle.dir.clone(),
            source,
        };
        std::fs::create_dir(bundle.state()).map_err(failed)?;
        let rootfs = bundle.bundle().join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(failed)?;
        if spec.rootfs.is_some() {
            mount_layers(&bundle.dir, &rootfs, spec).map_err(failed)?;
        }
        if spec.rootfs.is_none() {
            for dir in HOST_VIEW {
                let host = Path::new(dir);
                let inside = rootfs.join(dir.trim_start_matches('/'));
                match std::fs::read_link(host) {
                    Ok(target) => std::os::unix::fs::symlink(target, inside).map_err(failed)?,
                    Err(_) if host.is_dir() => std::fs::create_dir(inside).map_err(failed)?,
                    Err(_) => {}
                }
            }
        }
        // Pinned bind sources (this process's descriptors, which runsc's
        // Gofer cannot name from its own /proc) are bound into the run's
        // directory first: runsc serves what was checked, not a path that
        // may have changed since.
        let resolver = match (network, &spec.resolv_conf) {
            (Network::Joined, Some(conf)) => Some(conf),
            _ => None,
        };
        // So are the parts of binds that --allow-path rules reach (allowed.rs).
        let view = crate::allowed::binds(spec)?;
        let needs_pins = view
            .iter()
            .any(|v| v.part_of.is_some() || pinned(&v.bind.source));
        let config = if needs_pins || resolver.is_some() {
            let mut pins = spec.clone();
            pins.allow_paths.clear();
            pins.binds.clear();
            let dir = bundle.dir.join("pins");
            std::fs::create_dir(&dir).map_err(failed)?;
            for (i, v) in view.into_iter().enumerate() {
                let mut b = v.bind;
                let part = match &v.part_of {
                    Some((source, below)) => match crate::allowed::open_part(source, below)? {
                        Some(fd) => Some(fd),
                        None => continue,
                    },
                    None => None,
                };
                if let Some(fd) = &part {
                    b.source = format!("/proc/self/fd/{}", fd.as_raw_fd()).into();
                }
                if pinned(&b.source) {
                    b.source = mount_pin(&dir.join(i.to_string()), &b.source, b.writable)
                        .map_err(failed)?;
                }
                pins.binds.push(b);
            }
            // A joined network's resolver (the daemon's, on its loopback).
            if let Some(conf) = resolver {
                let file = bundle.dir.join("resolv.conf");
                std::fs::write(&file, conf).map_err(failed)?;
                pins.binds.push(alcove_sandbox::Bind {
                    source: file,
                    target: "/etc/resolv.conf".into(),
                    writable: false,
                    device: false,
                });
            }
            config_for(&pins, network)?
        } else {
            config
        };
        let text = serde_json::to_vec_pretty(&config).expect("a config serialises");
        std::fs::write(bundle.bundle().join("config.json"), text).map_err(failed)?;
        Ok(bundle)
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// Removes the run directories of alcove processes that died mid-run (their
/// Sentries and Gofers were in their cgroups, which `alcove gc` kills
/// first); returns how many.
pub fn gc(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("alcove-")
            .and_then(|r| r.split('-').next())
            .and_then(|o| o.parse::<i32>().ok())
        else {
            continue;
        };
        // Signal 0 only asks; EPERM means a process (not ours) has the pid.
        let alive = match alcove_sys::process::kill(owner, 0) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::EPERM),
        };
        if owner == std::process::id() as i32 || alive {
            continue;
        }
        if remove_run_dir(&entry.path()) {
            removed += 1;
        }
    }
    removed
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // The root's overlay, if any (runsc's own mounts are in its own
        // namespaces); remove_dir_all does not follow the host-view
        // symlinks, and through an overlay still mounted it could only
        // touch the upper layer, never the image's.
        remove_run_dir(&self.dir);
    }
}

/// Unmounts what a run's directory holds (the root's overlay, pinned
/// binds) and removes it, unless something is still mounted there: then it
/// is left (and said), as removing it would reach into a bound host
/// directory.
fn remove_run_dir(dir: &Path) -> bool {
    unmount_layers(&dir.join("bundle").join("rootfs"));
    if let Ok(pins) = std::fs::read_dir(dir.join("pins")) {
        for pin in pins.flatten() {
            unmount_layers(&pin.path());
        }
    }
    if mounted_under(dir) {
        eprintln!(
            "alcove: warning: {} still holds a mount; left in place (run `alcove gc` later)",
            dir.display()
        );
        return false;
    }
    std::fs::remove_dir_all(dir).is_ok()
}

/// Whether any mount point lies under `dir` (this process's mount table).
fn mounted_under(dir: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true; // unknown: removing could reach into a mount
    };
    table.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|point| Path::new(point).starts_with(dir))
    })
}

/// Whether a bind source is one of this process's pinned descriptors.
fn pinned(source: &Path) -> bool {
    source.starts_with("/proc/self/fd/")
}

/// Binds the pinned `source` at `at` (made as a directory or a file, as
/// the source is), read-only unless `writable`; returns `at`.
fn mount_pin(at: &Path, source: &Path, writable: bool) -> std::io::Result<std::path::PathBuf> {
    use alcove_sys::mount::{MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT};
    if std::fs::metadata(source)?.is_dir() {
        std::fs::create_dir(at)?;
    } else {
        std::fs::File::create(at)?;
    }
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(source)?, c(at)?);
    alcove_sys::mount::mount(Some(&from), &to, None, MS_BIND | MS_REC, None)?;
    if !writable {
        let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
        alcove_sys::mount::mount(None, &to, None, flags, None)?;
    }
    Ok(at.to_path_buf())
}

/// Mounts the spec's root (an image's layers, top first, or a --rootfs)
/// as one overlay at `target`, what runsc serves as the root. Its upper
/// layer is in the run's directory: runsc makes the mount points of binds
/// there, never in the image's layers or the user's directory; what the
/// program writes stays in the sandbox's memory (runsc --overlay2).
fn mount_layers(dir: &Path, target: &Path, spec: &SandboxSpec) -> std::io::Result<()> {
    use alcove_sys::mount::{MS_NODEV, MS_NOSUID};
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    std::fs::create_dir(&upper)?;
    std::fs::create_dir(&work)?;
    // The overlay's / takes the upper layer's owner and mode: the root's own.
    if let Some(top) = &spec.rootfs {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(top)?;
        std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid()))?;
        std::fs::set_permissions(
            &upper,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        )?;
    }
    let lowers: Vec<String> = spec
        .rootfs
        .iter()
        .chain(&spec.lower_layers)
        .map(|l| l.display().to_string())
        .collect();
    let c = |s: &[u8]| {
        std::ffi::CString::new(s)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    alcove_sys::mount::mount(
        Some(&c(b"overlay")?),
        &c(target.as_os_str().as_bytes())?,
        Some(&c(b"overlay")?),
        MS_NOSUID | MS_NODEV,
        Some(&c(data.as_bytes())?),
    )
}

/// Detaches what `mount_layers` mounted at `rootfs`, if anything.
fn unmount_layers(rootfs: &Path) {
    if let Ok(path) = std::ffi::CString::new(rootfs.as_os_str().as_bytes()) {
        let _ = alcove_sys::mount::umount(&path, alcove_sys::mount::MNT_DETACH);
    }
}

/// Where a gVisor sandbox's sockets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// gVisor's own network stack, loopback alone (runsc --network none):
    /// nothing the program sends reaches the host's network code.
    Isolated,
    /// Host sockets (gVisor's hostinet) in the host's namespace: net host.
    Host,
    /// Host sockets in a namespace of the run's own with loopback alone, so
    /// that its ports can be reached from that namespace (an agent
    /// sandbox's previews); the caller makes the namespace.
    OwnLoopback,
    /// Host sockets in the spec's network namespace (an outbound link),
    /// where alcove's eBPF rules for its cgroup hold every connection.
    Joined,
}

impl Network {
    /// What a run or a function gets: gVisor's own stack unless it shares
    /// the host's network. A namespace to join is refused then (by
    /// [`config`]): only an agent sandbox's run (serve.rs) enters one.
    pub fn of(spec: &SandboxSpec) -> Network {
        match spec.net {
            NetMode::Host => Network::Host,
            NetMode::Joined | NetMode::None => Network::Isolated,
        }
    }

    /// runsc's `--network`.
    pub(crate) fn runsc_flag(self) -> &'static str {
        match self {
            Network::Isolated => "none",
            _ => "host",
        }
    }
}

/// The OCI runtime config for `spec`: the same program, environment, user,
/// working directory, file view and namespaces as the container tier.
/// Limits are not in it: alcove applies them to the cgroup runsc runs in.
pub fn config(spec: &SandboxSpec) -> Result<Value, GvisorError> {
    config_for(spec, Network::of(spec))
}

/// [`config`], its sockets in `network`: a namespace to join (an outbound
/// link) is taken only with [`Network::Joined`], whose caller enters it.
pub fn config_for(spec: &SandboxSpec, network: Network) -> Result<Value, GvisorError> {
    let joins = network == Network::Joined && spec.net == NetMode::Joined && spec.netns.is_some();
    refuse_unsupported(spec, joins)?;
    let text = |s: &std::ffi::OsStr, what: &str| {
        std::str::from_utf8(s.as_bytes())
            .map(str::to_owned)
            .map_err(|_| {
                GvisorError::Invalid(format!("{what} is not UTF-8: the OCI spec needs text"))
            })
    };
    let args = spec
        .argv
        .iter()
        .map(|a| text(a, "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(GvisorError::Invalid("give a program to run".into()));
    }
    let workdir = text(spec.workdir.as_os_str(), "the working directory")?;
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        format!("HOME={workdir}"),
    ];
    for (k, v) in &spec.env {
        let (k, v) = (
            text(k, "an environment name")?,
            text(v, "an environment value")?,
        );
        env.retain(|e| e.split_once('=').is_none_or(|(name, _)| name != k));
        env.push(format!("{k}={v}"));
    }
    let tmpfs = |dest: &str, mode: &str| {
        json!({
            "destination": dest, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", format!("size={}", spec.limits.tmpfs_bytes), format!("mode={mode}")],
        })
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        tmpfs("/tmp", "1777"),
        tmpfs("/dev/shm", "1777"),
    ];
    if spec.rootfs.is_none() {
        for dir in HOST_VIEW {
            if Path::new(dir).is_dir() && std::fs::read_link(dir).is_err() {
                mounts.push(bind(dir, dir, false));
            }
        }
    }
    for view in crate::allowed::binds(spec)? {
        // A part of a bind is mounted only from its pin (Bundle::create
        // opens it beneath the bind's source): its path, joined here, is
        // what a link could redirect, so it never reaches runsc.
        if view.part_of.is_some() {
            continue;
        }
        let b = view.bind;
        let source = text(b.source.as_os_str(), "a bind's source")?;
        let target = text(b.target.as_os_str(), "a bind's target")?;
        mounts.push(bind(&source, &target, b.writable));
    }
    if spec.writable_workdir {
        let mut home = tmpfs(&workdir, "0700");
        if let Some(options) = home["options"].as_array_mut() {
            options.push(json!(format!("uid={}", spec.user.uid)));
            options.push(json!(format!("gid={}", spec.user.gid)));
        }
        mounts.push(home);
    }
    let mut namespaces = vec!["pid", "ipc", "uts", "mount"];
    if network == Network::Isolated {
        namespaces.push("network");
    }
    // The bundle's own rootfs: the host view's directory, or the overlay
    // of the spec's root and layers (Bundle::create).
    let rootfs = "rootfs".to_owned();
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.user.uid, "gid": spec.user.gid},
            "args": args,
            "env": env,
            "cwd": workdir,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": spec.limits.open_files, "soft": spec.limits.open_files}],
        },
        // An image's or --rootfs root is writable as in the container tier,
        // into an overlay in the sandbox's memory (runsc --overlay2
        // root:memory), never into the host's directory; the host view's is
        // read-only.
        "root": {"path": rootfs, "readonly": spec.rootfs.is_none()},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {"namespaces": namespaces.iter().map(|t| json!({"type": t})).collect::<Vec<_>>()},
    }))
}

fn bind(source: &str, target: &str, writable: bool) -> Value {
    let mode = if writable { "rw" } else { "ro" };
    json!({
        "destination": target, "type": "bind", "source": source,
        "options": ["rbind", mode, "nosuid", "nodev"],
    })
}

/// What the container tier offers that this tier does not (yet): refused
/// by name rather than run without it.
fn refuse_unsupported(spec: &SandboxSpec, joins: bool) -> Result<(), GvisorError> {
    let unsupported = [
        (
            spec.net == NetMode::Joined && !joins,
            "outbound networking (--net outbound) outside agent sandboxes",
        ),
        (
            spec.syscall_allow_list.is_some(),
            "syscall policies (--policy)",
        ),
        (
            !spec.device_nodes.is_empty(),
            "host devices (--expose-device)",
        ),
        (!spec.inherit_fds.is_empty(), "inherited descriptors"),
        (spec.warm_template, "warm templates"),
    ];
    match unsupported.into_iter().find(|(used, _)| *used) {
        Some((_, what)) => Err(GvisorError::Unsupported(what)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_carries_the_spec() {
        let mut spec = SandboxSpec::new(vec!["/bin/echo".into(), "hi".into()]);
        spec.env.push(("GREETING".into(), "hello".into()));
        spec.env.push(("PATH".into(), "/opt/bin".into()));
        let c = config(&spec).unwrap();
        assert_eq!(c["process"]["args"], json!(["/bin/echo", "hi"]));
        let env: Vec<&str> = c["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"GREETING=hello"));
        assert!(env.contains(&"PATH=/opt/bin"), "{env:?}");
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert_eq!(c["process"]["user"]["uid"], json!(spec.user.uid));
        assert_eq!(c["root"]["readonly"], json!(true));
        let namespaces = c["linux"]["namespaces"].to_string();
        assert!(namespaces.contains("network"), "{namespaces}");
    }

    #[test]
    fn what_the_tier_lacks_is_refused_by_name() {
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        spec.net = NetMode::Joined;
        let err = config(&spec).unwrap_err().to_string();
        assert!(err.contains("--net outbound"), "{err}");
        // With the namespace given too: a run or a function never enters it.
        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        spec.netns = Some(std::sync::Arc::new(netns.into()));
        let err = config(&spec).unwrap_err().to_string();
        assert!(err.contains("--net outbound"), "{err}");
        assert!(config_for(&spec, Network::Joined).is_ok());
        let spec = SandboxSpec::new(vec![]);
        assert!(config(&spec).is_err());
    }
}
