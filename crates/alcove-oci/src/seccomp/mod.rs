//! The container's seccomp filter: the spec's `linux.seccomp` compiled to a
//! classic-BPF program the way libseccomp (which we do not ship) builds it
//! for runc and crun, installed on the container's init, and its user
//! notification listener handed to the seccomp agent at `listenerPath`.
//!
//! Semantics, where the spec leaves them to libseccomp and runc:
//! - Only the host's architecture (x86_64) is filtered; other listed
//!   architectures are ignored, and calls made as another architecture
//!   (i386, x32) kill the process: their numbers mean other syscalls, and
//!   the rules were written for x86_64 numbers.
//! - Names unknown on x86_64 are skipped (profiles list every
//!   architecture's calls).
//! - A rule whose action is the default action is dropped, as runc drops it.
//! - Per syscall, an unconditional rule wins over conditional ones (the
//!   first such, as libseccomp keeps it); otherwise the first rule whose
//!   conditions all hold decides. Conditions that name the same argument
//!   twice are alternatives, each its own rule, as runc splits them.
//! - ERRNO and TRACE without `errnoRet` return EPERM; the default action
//!   uses `defaultErrnoRet`.

mod bpf;
mod table;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use bpf::{Cmp, Cond, Plan, Rule};

/// The most `syscalls` entries a profile may have (podman's has 35, after
/// its includes are resolved fewer).
pub const MAX_ENTRIES: usize = 4096;
/// The most syscall names all entries together may list.
pub const MAX_NAMES: usize = 65_536;
/// The most conditions one entry may have: a syscall has six arguments.
pub const MAX_ARGS: usize = 6;
/// The longest program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = libc::BPF_MAXINSNS as usize;

/// Errors compiling, installing or handing over a seccomp filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters can only be built for x86_64 hosts")]
    UnsupportedArch,
    #[error("the seccomp profile has {0} syscall entries, more than {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("the seccomp profile names more than {MAX_NAMES} syscalls")]
    TooManyNames,
    #[error(
        "the seccomp rule for {syscall} has {count} argument conditions, more than {MAX_ARGS}"
    )]
    TooManyArgs { syscall: String, count: usize },
    #[error(
        "the seccomp rule for {syscall} tests argument {index}; syscalls have arguments 0 to 5"
    )]
    ArgIndex { syscall: String, index: usize },
    #[error("the seccomp errno or trace value {0} does not fit in 16 bits")]
    ErrnoRet(u32),
    #[error("SCMP_ACT_NOTIFY cannot be the default action: the runtime's own calls would wait on an agent")]
    NotifyDefault,
    #[error("the seccomp profile uses SCMP_ACT_NOTIFY but names no listenerPath")]
    NoListenerPath,
    #[error(
        "the seccomp filter needs {0} instructions, more than the kernel's {MAX_INSTRUCTIONS}"
    )]
    TooLong(usize),
    #[error("installing the seccomp filter failed")]
    Install(#[source] io::Error),
    #[error("sending the seccomp listener to the agent failed")]
    SendListener(#[source] io::Error),
}

/// A filter ready to install.
#[derive(Clone)]
pub struct CompiledSeccomp {
    /// The BPF program, at most [`MAX_INSTRUCTIONS`] long.
    pub program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` for seccomp(2), `NEW_LISTENER` included when
    /// `notify`.
    pub flags: u32,
    /// Whether some syscall is handed to a listener (SCMP_ACT_NOTIFY).
    pub notify: bool,
}

impl std::fmt::Debug for CompiledSeccomp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSeccomp")
            .field("instructions", &self.program.len())
            .field("flags", &format_args!("{:#x}", self.flags))
            .field("notify", &self.notify)
            .finish()
    }
}

/// The x86_64 number of syscall `name`, if the kernel has given it one.
pub fn syscall_number(name: &str) -> Option<u32> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let i = table::X86_64
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()?;
    Some(table::X86_64[i].1)
}

/// Compiles the spec's seccomp section to a BPF program and its flags.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<CompiledSeccomp, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedArch);
    }
    if seccomp.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::NotifyDefault);
    }
    let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
    let entries = seccomp.syscalls().as_deref().unwrap_or_default();
    if entries.len() > MAX_ENTRIES {
        return Err(SeccompError::TooManyEntries(entries.len()));
    }
    let mut names = 0usize;
    let mut notify = false;
    let mut syscalls: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for entry in entries {
        names = names.saturating_add(entry.names().len());
        if names > MAX_NAMES {
            return Err(SeccompError::TooManyNames);
        }
        let first = || entry.names().first().cloned().unwrap_or_default();
        let args = entry.args().as_deref().unwrap_or_default();
        if args.len() > MAX_ARGS {
            return Err(SeccompError::TooManyArgs {
                syscall: first(),
                count: args.len(),
            });
        }
        let conds = args
            .iter()
            .map(|arg| {
                condition(arg).ok_or_else(|| SeccompError::ArgIndex {
                    syscall: first(),
                    index: arg.index(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let act = action(entry.action(), entry.errno_ret())?;
        if act == default {
            continue;
        }
        let rules = split_repeated(conds, act);
        for name in entry.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            notify |= entry.action() == LinuxSeccompAction::ScmpActNotify;
            let list = syscalls.entry(nr).or_default();
            for rule in &rules {
                add_rule(list, rule.clone());
            }
        }
    }
    if notify && seccomp.listener_path().is_none() {
        return Err(SeccompError::NoListenerPath);
    }
    let plan = Plan {
        default,
        bad_arch: libc::SECCOMP_RET_KILL_PROCESS,
        syscalls,
    };
    let program = bpf::generate(&plan);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(CompiledSeccomp {
        program,
        flags: flags(seccomp.flags().as_deref().unwrap_or_default(), notify),
        notify,
    })
}

/// Installs `compiled` on the calling thread (all threads with TSYNC).
/// The caller has set `no_new_privs` or holds `CAP_SYS_ADMIN`. Returns the
/// listener when `compiled.notify`: send it with [`send_listener`] before
/// making any call the filter notifies, or that call waits forever.
pub fn install(compiled: &CompiledSeccomp) -> Result<Option<OwnedFd>, SeccompError> {
    alcove_sys::seccomp::install_filter_with_flags(&compiled.program, compiled.flags)
        .map_err(SeccompError::Install)
}

/// Hands `listener` to the seccomp agent: `sock` is a connected
/// SOCK_STREAM unix socket to the spec's `listenerPath`; one message
/// carries `state_json` (the spec's containerProcessState, whose `fds`
/// names the listener "seccompFd") and the listener as SCM_RIGHTS. Our
/// copy of the listener is closed afterwards.
pub fn send_listener(
    sock: BorrowedFd<'_>,
    listener: OwnedFd,
    state_json: &[u8],
) -> Result<(), SeccompError> {
    alcove_sys::unix::send_with_fd(sock, state_json, Some(listener.as_fd()))
        .map_err(SeccompError::SendListener)
}

/// The `SECCOMP_RET_*` value of a spec action.
fn action(act: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<u32, SeccompError> {
    let data = || {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        if value > libc::SECCOMP_RET_DATA {
            return Err(SeccompError::ErrnoRet(value));
        }
        Ok(value)
    };
    Ok(match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data()?,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data()?,
        LinuxSeccompAction::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
    })
}

/// The condition for a spec argument, or `None` past the sixth argument.
fn condition(arg: &LinuxSeccompArg) -> Option<Cond> {
    let index = u8::try_from(arg.index()).ok().filter(|i| *i < 6)?;
    // MASKED_EQ's value is the mask and valueTwo the datum, as libseccomp's
    // SCMP_CMP_MASKED_EQ(mask, datum); the other operators ignore valueTwo.
    let (cmp, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (Cmp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (Cmp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (Cmp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (Cmp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (Cmp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (Cmp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            Cmp::MaskedEq { mask: arg.value() },
            arg.value_two().unwrap_or(0),
        ),
    };
    Some(Cond { index, cmp, value })
}

/// One rule of all `conds`; or, when two test the same argument (which
/// libseccomp cannot AND), one rule per condition, as runc adds them.
fn split_repeated(conds: Vec<Cond>, action: u32) -> Vec<Rule> {
    let mut seen = [false; 6];
    let repeated = conds
        .iter()
        .any(|c| std::mem::replace(&mut seen[usize::from(c.index)], true));
    if repeated {
        conds
            .into_iter()
            .map(|c| Rule {
                conds: vec![c],
                action,
            })
            .collect()
    } else {
        vec![Rule { conds, action }]
    }
}

/// Adds `rule` to one syscall's rules: an unconditional rule replaces
/// conditional ones and absorbs later rules, as in libseccomp's database.
fn add_rule(list: &mut Vec<Rule>, rule: Rule) {
    if list.first().is_some_and(|r| r.conds.is_empty()) {
        return;
    }
    if rule.conds.is_empty() {
        list.clear();
    }
    list.push(rule);
}

/// The seccomp(2) flags for the spec's flags.
fn flags(spec: &[LinuxSeccompFilterFlag], notify: bool) -> u32 {
    let mut flags = 0;
    for flag in spec {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
        } as u32;
    }
    if notify {
        flags |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32;
        // The kernel refuses TSYNC with a listener unless a failed sync
        // reports ESRCH (the return value is the listener's fd).
        if flags & libc::SECCOMP_FILTER_FLAG_TSYNC as u32 != 0 {
            flags |= libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH as u32;
        }
    } else {
        // It only concerns listeners, and the kernel refuses it without one.
        flags &= !(libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV as u32);
    }
    flags
}
