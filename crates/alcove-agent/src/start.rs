//! Starting a command found on disk: a vfork-style child that execs at once
//! ([`alcove_sys::spawn`]), prepared here so that the child allocates
//! nothing. ~50 us less a command than the standard library's posix_spawn,
//! whose glibc child resets all 64 signal dispositions each time; the agent
//! finds the few it changed once.

use crate::protocol::AgentFailure;
use alcove_sys::clone::ChildStack;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the agent keeps from one start to the next.
pub(crate) struct Starter {
    stack: Option<ChildStack>,
    /// Dispositions the agent inherited or set that a command must not:
    /// found at its start, so the agent must install no handler after that
    /// (one would otherwise run in a child that shares its memory).
    reset_signals: Vec<i32>,
}

/// One command to start: `fds` are its 0, 1, 2 and 3, as many as given
/// (stdin, stdout and stderr are /dev/null where none is given; any past
/// the fourth are not passed on).
pub(crate) struct Command<'a> {
    pub path: &'a Path,
    pub argv0: &'a str,
    pub args: &'a [String],
    pub env: Vec<(&'a str, &'a str)>,
    pub cwd: Option<&'a str>,
    pub fds: &'a [OwnedFd],
    pub filter: Option<&'a [libc::sock_filter]>,
}

impl Starter {
    pub(crate) fn new() -> Self {
        Starter {
            stack: None,
            reset_signals: alcove_sys::signal::changed_dispositions(),
        }
    }

    /// Starts `cmd` in a process group of its own: its pid and pidfd (none
    /// on a kernel without pidfds: gVisor's).
    pub(crate) fn start(
        &mut self,
        cmd: &Command<'_>,
    ) -> Result<(i32, Option<OwnedFd>), AgentFailure> {
        let c = |s: &[u8], what: &str| {
            CString::new(s).map_err(|_| AgentFailure::invalid(format!("{what} holds a NUL byte")))
        };
        let path = c(cmd.path.as_os_str().as_bytes(), "the program's path")?;
        let argv: Vec<CString> = std::iter::once(cmd.argv0)
            .chain(cmd.args.iter().map(String::as_str))
            .map(|a| c(a.as_bytes(), "an argument"))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = merged(&cmd.env)
            .into_iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes(), "an environment variable"))
            .collect::<Result<_, _>>()?;
        let cwd = cmd
            .cwd
            .map(|d| c(d.as_bytes(), "the working directory"))
            .transpose()?;
        // Its 0, 1, 2 and 3 as given; 0, 1 and 2 on /dev/null where not.
        let mut sources: Vec<RawFd> = cmd.fds.iter().take(4).map(AsRawFd::as_raw_fd).collect();
        let null = match sources.len() < 3 {
            true => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map_err(|e| AgentFailure::io("opening /dev/null", &e))?,
            ),
            false => None,
        };
        if let Some(null) = &null {
            sources.resize(3, null.as_raw_fd());
        }
        let fds: Vec<(RawFd, RawFd)> = sources.into_iter().zip(0..).collect();
        let pointers = alcove_sys::spawn::pointers;
        let (argv_ptrs, envp_ptrs) = (pointers(&argv), pointers(&envp));
        let plan = alcove_sys::spawn::ExecPlan {
            path: &path,
            argv: &argv_ptrs,
            envp: &envp_ptrs,
            cwd: cwd.as_deref(),
            fds: &fds,
            new_process_group: true,
            reset_signals: &self.reset_signals,
            filter: cmd.filter,
        };
        let stack = match &mut self.stack {
            Some(stack) => stack,
            empty => empty.insert(
                ChildStack::new(64 * 1024)
                    .map_err(|e| AgentFailure::io("starting a command", &e))?,
            ),
        };
        alcove_sys::spawn::spawn(&plan, stack).map_err(|e| {
            use alcove_sys::spawn::SpawnStep;
            match (e.step, e.source.kind()) {
                (SpawnStep::Exec, std::io::ErrorKind::NotFound) => AgentFailure {
                    kind: crate::FailureKind::NotFound,
                    message: format!(
                        "{}: executable file not found in $PATH or no such directory",
                        cmd.argv0
                    ),
                },
                (SpawnStep::Directory, _) => AgentFailure::io(
                    &format!(
                        "starting {}: its working directory {}",
                        cmd.argv0,
                        cmd.cwd.unwrap_or_default()
                    ),
                    &e.source,
                ),
                (SpawnStep::Exec, _) => {
                    AgentFailure::io(&format!("starting {}", cmd.argv0), &e.source)
                }
                (step, _) => AgentFailure::io(
                    &format!("starting {}: {}", cmd.argv0, step.describe()),
                    &e.source,
                ),
            }
        })
    }
}

/// The environment as execve gets it: a later value of a name replaces an
/// earlier one, in the earlier one's place.
fn merged<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(env.len());
    let mut at = std::collections::HashMap::with_capacity(env.len());
    for &(key, value) in env {
        match at.get(key) {
            Some(&i) => out[i] = (key, value),
            None => {
                at.insert(key, out.len());
                out.push((key, value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merged;

    #[test]
    fn a_later_value_replaces_an_earlier_one_in_its_place() {
        let env = [("A", "1"), ("B", "2"), ("A", "3")];
        assert_eq!(merged(&env), [("A", "3"), ("B", "2")]);
    }
}
