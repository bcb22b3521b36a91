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
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a valid OCI runtime config: {source}")]
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
        if linux.sysctl().is_some()
            && linux
                .sysctl()
                .iter()
                .flatten()
                .any(|(k, _)| k.contains('/') || k.contains(".."))
        {
            return bad("a sysctl name holds '/' or '..'".into());
        }
    }
    Ok(())
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
    if !process.cwd().is_absolute() {
        return Err(ConfigError::Invalid(format!(
            "process.cwd {} must be an absolute path",
            process.cwd().display()
        )));
    }
    Ok(())
}
