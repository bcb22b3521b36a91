//! Where the agent program comes from: this daemon's own executable, run
//! inside the sandbox as `alcove sandbox-agent`, with what it needs bound
//! read-only under /run/alcove/agent. A static build needs only itself; a
//! dynamic one (a debug build) runs through its own loader with its own
//! libraries, so it starts in any image, whatever libc the image has.

use alcove_sandbox::Bind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the agent's files are inside every agent sandbox.
pub const AGENT_DIR: &str = "/run/alcove/agent";

/// The agent's command line and the binds that make it runnable.
#[derive(Debug, Clone)]
pub struct AgentProgram {
    pub argv: Vec<String>,
    pub binds: Vec<Bind>,
}

/// Found once per daemon: the executable and the shared objects it maps.
pub fn agent_program() -> Result<&'static AgentProgram, String> {
    static FOUND: OnceLock<AgentProgram> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found);
    }
    // An error is not kept: the next sandbox looks again.
    let found = find()?;
    Ok(FOUND.get_or_init(|| found))
}

fn find() -> Result<AgentProgram, String> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("finding the alcove executable to run as the sandbox agent: {e}"))?;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let mut libraries: Vec<PathBuf> = Vec::new();
    let mut loader = None;
    for line in maps.lines() {
        // Executable mappings of shared objects only: "ADDR PERMS OFFSET DEV INODE PATH".
        let mut fields = line.splitn(6, ' ');
        let perms = fields.nth(1).unwrap_or("");
        let Some(path) = fields
            .nth(3)
            .map(str::trim_start)
            .filter(|p| p.starts_with('/'))
        else {
            continue;
        };
        if !perms.starts_with("r-x") || path.ends_with(" (deleted)") {
            continue;
        }
        let path = Path::new(path);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let shared_object = name.ends_with(".so")
            || name.split_once(".so.").is_some_and(|(_, v)| {
                v.split('.')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
        if !shared_object || libraries.iter().any(|l| l == path) || Some(path) == loader.as_deref()
        {
            continue;
        }
        if name.starts_with("ld-linux") || name.starts_with("ld64") || name.starts_with("ld-musl") {
            loader = Some(path.to_path_buf());
        } else {
            libraries.push(path.to_path_buf());
        }
    }
    let dir = Path::new(AGENT_DIR);
    let bind = |source: &Path, target: PathBuf| Bind {
        source: source.to_path_buf(),
        target,
        writable: false,
        device: false,
    };
    let inside_exe = dir.join("alcove");
    let mut binds = vec![bind(&exe, inside_exe.clone())];
    let exe_arg = inside_exe.to_string_lossy().into_owned();
    let argv = match loader {
        None => vec![exe_arg, "sandbox-agent".into()],
        Some(loader) => {
            let inside_loader = dir.join("ld.so");
            binds.push(bind(&loader, inside_loader.clone()));
            for lib in &libraries {
                for name in names_of(lib) {
                    binds.push(bind(lib, dir.join("lib").join(name)));
                }
            }
            vec![
                inside_loader.to_string_lossy().into_owned(),
                "--library-path".into(),
                dir.join("lib").to_string_lossy().into_owned(),
                exe_arg,
                "sandbox-agent".into(),
            ]
        }
    };
    Ok(AgentProgram { argv, binds })
}

/// A library's file name and the names that lead to it from its directory
/// (`libelf.so.1 -> libelf-0.188.so`): the loader looks for the soname, and
/// /proc/self/maps shows the file.
fn names_of(lib: &Path) -> Vec<std::ffi::OsString> {
    let Some(name) = lib.file_name() else {
        return Vec::new();
    };
    let mut names = vec![name.to_owned()];
    let Some(dir) = lib.parent().and_then(|d| std::fs::read_dir(d).ok()) else {
        return names;
    };
    for entry in dir.flatten() {
        let leads_here =
            std::fs::read_link(entry.path()).is_ok_and(|target| target.file_name() == Some(name));
        if leads_here {
            names.push(entry.file_name());
        }
    }
    names
}
