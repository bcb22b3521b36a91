//! The sandbox a function's configuration describes, built in one place for
//! the deploy's check and for every invocation, and the operator's gate on
//! host paths (`alcove serve --allow-bind`).

use crate::limits::Effective;
use crate::model::{FunctionBind, FunctionConfig};
use crate::EngineError;
use alcove_sandbox::{Bind, NetMode, SandboxSpec, User};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A host directory under which functions may bind paths, as the operator
/// gave it (`--allow-bind DIR[:rw]`), resolved when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedBind {
    pub dir: PathBuf,
    pub writable: bool,
}

impl AllowedBind {
    /// Parses `DIR[:rw|ro]` and resolves DIR (links followed); it must exist.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (dir, writable) = match text.rsplit_once(':') {
            Some((d, "rw")) => (d, true),
            Some((d, "ro")) => (d, false),
            _ => (text, false),
        };
        let resolved = std::fs::canonicalize(dir)
            .map_err(|e| format!("--allow-bind {dir}: {e}; give an existing directory"))?;
        if !resolved.is_dir() {
            return Err(format!("--allow-bind {dir}: not a directory"));
        }
        Ok(AllowedBind {
            dir: resolved,
            writable,
        })
    }
}

/// Resolves a bind's source (links followed, now) and checks it lies under
/// a directory the operator allows, writable only where allowed so.
pub(crate) fn resolve_bind(b: &FunctionBind, allowed: &[AllowedBind]) -> Result<PathBuf, String> {
    let what = format!(
        "bind {}:{}{}",
        b.source,
        b.target,
        if b.writable { ":rw" } else { "" }
    );
    if allowed.is_empty() {
        return Err(format!(
            "{what}: this daemon allows functions no host paths; the operator must start it \
             with `alcove serve --allow-bind DIR` (or DIR:rw) naming a directory above {}",
            b.source
        ));
    }
    if !Path::new(&b.source).is_absolute() {
        return Err(format!("{what}: give the source as an absolute host path"));
    }
    let source = std::fs::canonicalize(&b.source)
        .map_err(|e| format!("{what}: the source cannot be resolved on the daemon's host: {e}"))?;
    let under: Vec<&AllowedBind> = allowed
        .iter()
        .filter(|a| source.starts_with(&a.dir))
        .collect();
    if under.is_empty() {
        return Err(format!(
            "{what}: {} is not under a directory this daemon allows binds from; the operator \
             must add `alcove serve --allow-bind DIR` for it (or a directory above it)",
            source.display()
        ));
    }
    if b.writable && !under.iter().any(|a| a.writable) {
        return Err(format!(
            "{what}: the daemon allows {} read-only; bind it without :rw, or the operator \
             must allow it with `alcove serve --allow-bind DIR:rw`",
            source.display()
        ));
    }
    Ok(source)
}

/// Opens each of `spec`'s first `count` bind sources (resolved by
/// [`resolve_bind`], so free of links) without following any link, and
/// points the bind at the open directory: a link swapped into the path
/// after the check cannot lead the mount out of the allowed directory. The
/// descriptors must stay open until the sandbox has cloned its binds.
pub(crate) fn pin_binds(
    spec: &mut SandboxSpec,
    count: usize,
) -> Result<Vec<std::os::fd::OwnedFd>, EngineError> {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::ffi::OsStrExt;
    let root = std::fs::File::open("/").map_err(EngineError::io("opening /"))?;
    let mut pinned = Vec::new();
    for bind in spec.binds.iter_mut().take(count) {
        let changed = |e: &dyn std::fmt::Display| {
            EngineError::Invalid(format!(
                "bind {}:{}: the source changed while it was checked ({e}); it must stay under                  a directory this daemon allows binds from, with no link on its way",
                bind.source.display(),
                bind.target.display()
            ))
        };
        let path =
            std::ffi::CString::new(bind.source.as_os_str().as_bytes()).map_err(|e| changed(&e))?;
        let fd = alcove_sys::dirfd::open_at(
            root.as_fd(),
            &path,
            libc::O_PATH,
            alcove_sys::dirfd::Scope::NoLinks,
        )
        .map_err(|e| changed(&e))?;
        let pin = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // A directory above the source renamed meanwhile: the path differs.
        if std::fs::read_link(&pin).ok().as_deref() != Some(bind.source.as_path()) {
            return Err(changed(&"a directory on its way moved"));
        }
        bind.source = pin;
        pinned.push(fd);
    }
    Ok(pinned)
}

/// The command a function with a runtime runs (what `fn show` and `fn ls`
/// show for its handler); `None` without one.
pub fn runtime_command(c: &FunctionConfig) -> Option<Vec<String>> {
    let runtime = c.runtime.as_deref()?;
    let script = std::path::Path::new(alcove_warm::runtime::RUNTIME_DIR)
        .join(alcove_warm::runtime::PYTHON_RUNTIME);
    Some(match runtime {
        "python" => vec![
            "python3".into(),
            script.to_string_lossy().into_owned(),
            c.entry.clone().unwrap_or_else(|| "main.py".into()),
        ],
        other => vec![format!("({other} runtime)")],
    })
}

/// The argv of `runtime` serving `entry`, and the host directory holding
/// the runtime (mounted at `RUNTIME_DIR` inside).
fn runtime_handler(
    runtime: &str,
    entry: Option<&str>,
) -> Result<(Vec<std::ffi::OsString>, PathBuf), EngineError> {
    if runtime != "python" {
        return Err(EngineError::Invalid(format!(
            "runtime {runtime:?}: alcove provides \"python\"; for another language give the \
             handler's command (and see docs/warm-protocol.md for warm starts)"
        )));
    }
    let entry = entry.unwrap_or("main.py");
    let path = Path::new(entry);
    let inside = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || !entry.ends_with(".py") || entry.len() > 255 {
        return Err(EngineError::Invalid(format!(
            "entry {entry:?}: give a .py file of the code, by a relative path such as main.py"
        )));
    }
    let dir = alcove_warm::runtime::install().map_err(|e| {
        EngineError::Invalid(format!(
            "runtime python: {}",
            alcove_sandbox::error_chain(&e)
        ))
    })?;
    let script = std::path::Path::new(alcove_warm::runtime::RUNTIME_DIR)
        .join(alcove_warm::runtime::PYTHON_RUNTIME);
    Ok((
        vec!["python3".into(), script.into(), entry.into()],
        dir.to_path_buf(),
    ))
}

/// The sandbox `c` describes with `limits`, before what only an invocation
/// adds (image, code, secrets, request). Binds are resolved and checked.
pub(crate) fn base_spec(
    c: &FunctionConfig,
    limits: &Effective,
    allowed: &[AllowedBind],
) -> Result<SandboxSpec, EngineError> {
    let mut spec = SandboxSpec::new(c.handler.iter().map(Into::into).collect());
    let runtime = match &c.runtime {
        Some(runtime) => Some(runtime_handler(runtime, c.entry.as_deref())?),
        None => None,
    };
    if let Some((argv, _)) = &runtime {
        spec.argv = argv.clone();
        spec.env
            .push(("ALCOVE_PROTOCOL".into(), c.protocol.clone().into()));
    }
    for (k, v) in &c.env {
        spec.env.push((k.into(), v.into()));
    }
    if let Some(user) = &c.user {
        spec.user = User::parse(user).map_err(|e| EngineError::Invalid(e.to_string()))?;
    }
    // No user namespace: uid or gid 0 inside is root's on the host, owner of
    // the root-only files under a bound directory.
    if !c.binds.is_empty() && (spec.user.uid == 0 || spec.user.gid == 0) {
        return Err(EngineError::Invalid(format!(
            "user {}:{}: a function with binds cannot run as root (uid or gid 0): it would own \
             the host's root files under the bound directories; give another --user, such as \
             65534 (nobody, the default)",
            spec.user.uid, spec.user.gid
        )));
    }
    if let Some(dir) = &c.workdir {
        spec.workdir = dir.into();
    }
    for b in &c.binds {
        let source = resolve_bind(b, allowed).map_err(EngineError::Invalid)?;
        spec.binds.push(Bind {
            source,
            target: b.target.clone().into(),
            writable: b.writable,
            device: false,
        });
    }
    // After the function's own binds, which callers count from the start.
    if let Some((_, runtime_dir)) = runtime {
        spec.binds.push(Bind {
            source: runtime_dir,
            target: alcove_warm::runtime::RUNTIME_DIR.into(),
            writable: false,
            device: false,
        });
    }
    spec.limits.memory_bytes = Some(limits.memory_bytes);
    spec.limits.cpus = limits.cpus;
    spec.limits.pids = Some(limits.pids);
    spec.limits.timeout = Some(Duration::from_millis(limits.timeout_ms));
    spec.limits.cpu_time = limits.cpu_time_ms.map(Duration::from_millis);
    spec.limits.output_bytes = Some(limits.output_bytes);
    spec.limits.stderr_bytes = Some(crate::STDERR_KEPT as u64);
    if let Some(bytes) = limits.tmpfs_bytes {
        spec.limits.tmpfs_bytes = bytes;
    }
    spec.net = if c.net == "host" {
        NetMode::Host
    } else {
        NetMode::None
    };
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &Path, writable: bool) -> FunctionBind {
        FunctionBind {
            source: source.to_string_lossy().into_owned(),
            target: "/data".into(),
            writable,
        }
    }

    #[test]
    fn binds_need_an_allowed_directory_and_rw_needs_rw() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("in");
        std::fs::create_dir(&inside).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let e = resolve_bind(&bind(&inside, false), &[]).unwrap_err();
        assert!(e.contains("--allow-bind"), "{e}");
        let ro = [AllowedBind::parse(dir.path().to_str().unwrap()).unwrap()];
        assert_eq!(
            resolve_bind(&bind(&inside, false), &ro).unwrap(),
            std::fs::canonicalize(&inside).unwrap()
        );
        assert!(resolve_bind(&bind(&inside, true), &ro)
            .unwrap_err()
            .contains(":rw"));
        assert!(resolve_bind(&bind(outside.path(), false), &ro)
            .unwrap_err()
            .contains("not under"));
        // A link inside that leads out is judged by where it leads.
        let link = dir.path().join("out");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        assert!(resolve_bind(&bind(&link, false), &ro)
            .unwrap_err()
            .contains("not under"));
        let rw = [AllowedBind::parse(&format!("{}:rw", dir.path().display())).unwrap()];
        assert!(resolve_bind(&bind(&inside, true), &rw).is_ok());
    }
}
