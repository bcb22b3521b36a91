//! Reading a bundle's `config.json` and checking what the runtime relies on
//! before anything is created.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;

/// The largest config.json accepted (podman's are a few tens of KiB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Bounds on lists a hostile config could make huge.
const MAX_MOUNTS: usize = 1024;
const MAX_ARGS: usize = 65536;
const MAX_ENV: usize = 65536;
const MAX_NAMESPACES: usize = 16;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a valid OCI runtime config")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config.json: {0}")]
    Invalid(String),
}

/// A bundle's config, with its rootfs resolved to an absolute path.
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

/// Loads `<bundle>/config.json` and checks it.
pub fn load(bundle: &Path) -> Result<Bundle, ConfigError> {
    let dir = std::fs::canonicalize(bundle).map_err(|source| ConfigError::Read {
        path: bundle.to_path_buf(),
        source,
    })?;
    let path = dir.join("config.json");
    let read_err = |source| ConfigError::Read {
        path: path.clone(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .map_err(read_err)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path });
    }
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
        path: path.clone(),
        source,
    })?;
    check(&spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| ConfigError::Invalid("root.path is required".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs).map_err(|source| ConfigError::Read {
        path: rootfs.clone(),
        source,
    })?;
    if !rootfs.is_dir() {
        return Err(ConfigError::Invalid(format!(
            "root.path {} is not a directory",
            rootfs.display()
        )));
    }
    Ok(Bundle { dir, rootfs, spec })
}

/// What must hold for the runtime to act on `spec` at all.
pub fn check(spec: &Spec) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    if !spec.version().starts_with("1.") {
        return bad(format!(
            "ociVersion {:?} is not supported: this runtime implements 1.x",
            spec.version()
        ));
    }
    if spec.mounts().as_ref().map_or(0, Vec::len) > MAX_MOUNTS {
        return bad(format!("more than {MAX_MOUNTS} mounts"));
    }
    if let Some(process) = spec.process() {
        check_process(process)?;
    }
    if let Some(linux) = spec.linux() {
        let namespaces = linux.namespaces().as_deref().unwrap_or_default();
        if namespaces.len() > MAX_NAMESPACES {
            return bad("too many namespaces".into());
        }
        for (i, ns) in namespaces.iter().enumerate() {
            if namespaces[..i].iter().any(|o| o.typ() == ns.typ()) {
                return bad(format!("namespace {:?} is listed twice", ns.typ()));
            }
        }
        let has = |t| namespaces.iter().any(|n| n.typ() == t);
        let new_user = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
        if (linux.uid_mappings().is_some() || linux.gid_mappings().is_some())
            && !has(LinuxNamespaceType::User)
        {
            return bad("uidMappings/gidMappings need a user namespace".into());
        }
        if new_user
            && (linux.uid_mappings().as_ref().is_none_or(Vec::is_empty)
                || linux.gid_mappings().as_ref().is_none_or(Vec::is_empty))
        {
            return bad("a new user namespace needs uidMappings and gidMappings".into());
        }
        // Fields this runtime cannot honour are refused, never ignored: a
        // caller must not believe a limit or label holds when it does not.
        let unsupported = [
            (linux.intel_rdt().is_some(), "linux.intelRdt (Intel RDT)"),
            (linux.memory_policy().is_some(), "linux.memoryPolicy"),
            (
                linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()),
                "linux.netDevices",
            ),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
            return bad(format!(
                "{what} is not supported by alcove-oci: remove it from config.json"
            ));
        }
        if let Some(offsets) = linux.time_offsets() {
            if !has(LinuxNamespaceType::Time) {
                return bad("linux.timeOffsets needs a time namespace".into());
            }
            if offsets.keys().any(|k| k != "monotonic" && k != "boottime") {
                return bad("linux.timeOffsets: only monotonic and boottime can be offset".into());
            }
        }
        // Compiled now (and again by the init, where it is installed) so that
        // a bad profile fails `create`, as with runc, not the start.
        if let Some(seccomp) = linux.seccomp() {
            crate::seccomp::compile(seccomp)
                .map_err(|e| ConfigError::Invalid(format!("linux.seccomp: {e}")))?;
        }
        for key in linux.sysctl().iter().flatten().map(|(k, _)| k) {
            check_sysctl(key, |t| has(t) && !joins_host(namespaces, t))?;
        }
    }
    Ok(())
}

/// Whether the config joins namespace `typ` by path (which may be the host's).
fn joins_host(namespaces: &[oci_spec::runtime::LinuxNamespace], typ: LinuxNamespaceType) -> bool {
    namespaces
        .iter()
        .any(|n| n.typ() == typ && n.path().is_some())
}

/// Refuses a sysctl that is not confined to a namespace the container has
/// of its own (it would be written on the host), as runc's validator does.
fn check_sysctl(key: &str, own: impl Fn(LinuxNamespaceType) -> bool) -> Result<(), ConfigError> {
    if key.is_empty() || key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..") {
        return Err(ConfigError::Invalid(format!("invalid sysctl name {key:?}")));
    }
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needs = if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        LinuxNamespaceType::Ipc
    } else if key.starts_with("net.") {
        LinuxNamespaceType::Network
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        LinuxNamespaceType::Uts
    } else {
        return Err(ConfigError::Invalid(format!(
            "sysctl {key:?} is not in a separate kernel namespace: it would change the host"
        )));
    };
    if own(needs) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "sysctl {key:?} needs a {needs:?} namespace of the container's own: it would change the host"
        )))
    }
}

/// Checks a process (the container's, or one given to `exec`).
pub fn check_process(process: &oci_spec::runtime::Process) -> Result<(), ConfigError> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Err(ConfigError::Invalid(
            "process.args must name a program to run".into(),
        ));
    }
    if args.len() > MAX_ARGS || process.env().as_ref().map_or(0, Vec::len) > MAX_ENV {
        return Err(ConfigError::Invalid("too many args or env entries".into()));
    }
    // setresuid(-1) means "leave unchanged": a uid of 4294967295 would keep
    // root. runc refuses everything above i32::MAX the same way.
    let user = process.user();
    let ids = [user.uid(), user.gid()]
        .into_iter()
        .chain(user.additional_gids().iter().flatten().copied());
    for id in ids {
        if id > i32::MAX as u32 {
            return Err(ConfigError::Invalid(format!(
                "uid or gid {id} is out of range: uids and gids must be in range 0-{}",
                i32::MAX
            )));
        }
    }
    if user.additional_gids().as_ref().map_or(0, Vec::len) > 65536 {
        return Err(ConfigError::Invalid(
            "more than 65536 additionalGids".into(),
        ));
    }
    let unsupported = [
        (process.scheduler().is_some(), "process.scheduler"),
        (
            process.exec_cpu_affinity().is_some(),
            "process.execCPUAffinity",
        ),
        (process.io_priority().is_some(), "process.ioPriority"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(ConfigError::Invalid(format!(
            "{what} is not supported by alcove-oci: remove it from the process"
        )));
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|l| !l.is_empty())
        && std::path::Path::new("/sys/fs/selinux/enforce").exists()
    {
        return Err(ConfigError::Invalid(
            "process.selinuxLabel is set and SELinux is on: alcove-oci cannot apply SELinux labels"
                .into(),
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(ConfigError::Invalid(format!(
            "process.cwd {} must be an absolute path",
            process.cwd().display()
        )));
    }
    Ok(())
}
