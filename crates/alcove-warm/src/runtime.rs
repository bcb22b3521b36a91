//! The files alcove mounts read-only into every template and every function
//! run with `--runtime`: the Python runtime, and the seccomp program copies
//! install (docs/warm-protocol.md); and into agent sandboxes, whose code
//! interpreter is the Python REPL here. Written once per boot under /run,
//! in a directory named by their contents: daemons of different builds on
//! one host never change each other's files under their sandboxes.

use crate::WarmError;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the runtime files are inside sandboxes (on the host:
/// `/run/alcove/runtime-HASH`, which [`install`] returns).
pub const RUNTIME_DIR: &str = "/run/alcove/runtime";
/// The Python runtime's file name in [`RUNTIME_DIR`].
pub const PYTHON_RUNTIME: &str = "alcove_runtime.py";
/// The code interpreter of agent sandboxes, in [`RUNTIME_DIR`].
pub const PYTHON_REPL: &str = "alcove_repl.py";
/// The code interpreter's fork into a new sandbox, in [`RUNTIME_DIR`].
pub const PYTHON_FORK: &str = "alcove_fork.py";
/// The copies' seccomp program's file name in [`RUNTIME_DIR`].
pub const COPY_FILTER: &str = "copy-filter.bpf";

static PYTHON_SOURCE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../runtimes/python/alcove_runtime.py"
));
static FORK_SOURCE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../runtimes/python/alcove_fork.py"
));
static REPL_SOURCE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../runtimes/python/alcove_repl.py"
));

/// Writes the runtime files if this boot has not, and returns their
/// directory on the host (bind it at [`RUNTIME_DIR`]).
pub fn install() -> Result<&'static Path, WarmError> {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DONE.get() {
        return Ok(dir);
    }
    let filter = alcove_sandbox::copy_filter_bytes();
    let files = [
        (PYTHON_RUNTIME, PYTHON_SOURCE.as_bytes()),
        (PYTHON_REPL, REPL_SOURCE.as_bytes()),
        (PYTHON_FORK, FORK_SOURCE.as_bytes()),
        (COPY_FILTER, filter.as_slice()),
    ];
    let dir = PathBuf::from(format!("{RUNTIME_DIR}-{:016x}", contents_hash(&files)));
    let io = |what: &'static str| move |source| WarmError::Runtime { what, source };
    std::fs::create_dir_all(&dir).map_err(io("creating /run/alcove/runtime-HASH"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io("making /run/alcove/runtime-HASH readable"))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            continue;
        }
        // Renamed into place: a sandbox starting now sees the old file or the new.
        let staging = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&staging, bytes).map_err(io("writing a runtime file"))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o644))
            .map_err(io("making a runtime file readable"))?;
        std::fs::rename(&staging, &path).map_err(io("putting a runtime file in place"))?;
    }
    Ok(DONE.get_or_init(|| dir))
}

/// A name for these files' contents (FNV-1a over names and bytes): the same
/// files, the same directory, whichever build wrote them.
fn contents_hash(files: &[(&str, &[u8])]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in files {
        for b in name
            .bytes()
            .chain([0])
            .chain(bytes.iter().copied())
            .chain([0])
        {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}
