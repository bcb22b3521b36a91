//! The program's side of the plan: argv, environment, where to look for the
//! executable, and rlimits.

use crate::spec::SandboxSpec;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) fn argv(spec: &SandboxSpec) -> Vec<CString> {
    spec.argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).expect("validated"))
        .collect()
}

pub(crate) fn envp(spec: &SandboxSpec) -> Vec<CString> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/tmp".into()),
        ("HOSTNAME".into(), spec.hostname.clone().into()),
    ];
    if let Some(term) = std::env::var_os("TERM") {
        env.push(("TERM".into(), term));
    }
    for (key, value) in &spec.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env.iter()
        .map(|(k, v)| {
            let mut bytes = k.as_bytes().to_vec();
            bytes.push(b'=');
            bytes.extend_from_slice(v.as_bytes());
            CString::new(bytes).expect("validated")
        })
        .collect()
}

pub(super) fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Where to look for the program inside the sandbox, in order (execvp rules).
pub(super) fn exec_candidates(spec: &SandboxSpec) -> Vec<CString> {
    let program = spec.argv[0].as_bytes();
    if program.contains(&b'/') {
        return vec![CString::new(program).expect("validated")];
    }
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == OsStr::new("PATH"))
        .map_or(DEFAULT_PATH.as_bytes(), |(_, v)| v.as_bytes());
    path.split(|b| *b == b':')
        .map(|dir| if dir.is_empty() { &b"."[..] } else { dir })
        .map(|dir| {
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program);
            CString::new(full).expect("validated")
        })
        .collect()
}

pub(super) fn rlimits(spec: &SandboxSpec) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    let files = spec.limits.open_files;
    let mut limits = vec![
        (libc::RLIMIT_NOFILE, files, files),
        (libc::RLIMIT_CORE, 0, 0),
    ];
    if let Some(cpu) = spec.limits.cpu_time {
        // A backstop per process; the cgroup-wide limit is enforced by the supervisor.
        let soft = cpu.as_secs() + 2;
        limits.push((libc::RLIMIT_CPU, soft, soft + 1));
    }
    limits
}

/// The Landlock ruleset for `spec`'s path allow-list: the base set a program
/// needs to run, then the paths given. `None` without an allow-list.
pub(super) fn landlock(
    spec: &SandboxSpec,
) -> Result<Option<crate::child::LandlockPlan>, crate::SandboxError> {
    use alcove_sys::landlock::{
        abi_version, handled_access, ACCESS_EXECUTE, ACCESS_READ_DIR, ACCESS_READ_FILE,
    };
    if spec.allow_paths.is_empty() {
        return Ok(None);
    }
    let abi = abi_version().map_err(|source| crate::SandboxError::Prepare {
        what: "--allow-path needs Landlock, which this kernel does not offer",
        source,
    })?;
    let all = handled_access(abi);
    let read = ACCESS_EXECUTE | ACCESS_READ_FILE | ACCESS_READ_DIR;
    let base: [(&str, u64); 10] = [
        ("/usr", read),
        ("/bin", read),
        ("/sbin", read),
        ("/lib", read),
        ("/lib64", read),
        ("/etc", read),
        ("/proc", read),
        ("/dev", all),
        ("/tmp", all),
        ("/dev/shm", all),
    ];
    let mut rules: Vec<(CString, u64)> = base
        .iter()
        .map(|(p, a)| (CString::new(*p).expect("no NUL"), *a))
        .collect();
    for rule in &spec.allow_paths {
        let access = if rule.writable { all } else { read };
        rules.push((
            CString::new(rule.path.as_os_str().as_bytes()).expect("validated"),
            access,
        ));
    }
    Ok(Some(crate::child::LandlockPlan {
        handled: all,
        rules,
    }))
}
