//! The sandbox flags `alcove run` and `alcove fn deploy` / `fn config` share:
//! one definition, so names, metavars, help and meaning cannot drift apart.

use alcove_sandbox::units::{parse_duration, parse_size};
use alcove_sandbox::{Bind, User};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Limits and the view of the sandbox. For `run`, unset means the
/// sandbox's default; for a function, the previous version's (inherited)
/// or the daemon's default.
#[derive(Args, Debug, Clone, Default)]
pub struct SandboxFlags {
    /// Memory limit (tmpfs writes count too), e.g. 256M.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU bandwidth in CPUs, e.g. 0.5 for half of one CPU.
    #[arg(long, value_name = "FLOAT")]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Wall-clock limit, e.g. 500ms, 2s, 1m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// CPU-time limit summed over all the sandbox's processes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cpu_time: Option<Duration>,
    /// Pass at most BYTES of stdout (a function's response), then close the stream.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub output_limit: Option<u64>,
    /// Size of each writable tmpfs (/tmp, /dev/shm, the root's upper layer) [default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub tmpfs_size: Option<u64>,
    /// Working directory inside the sandbox [default: /; /fn for a function with code].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Numeric user and group to run as (no capabilities either way).
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<User>,
    /// Set an environment variable inside the sandbox. Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Make host path SRC visible at DST; read-only unless :rw (for a function,
    /// only under a directory `alcove serve --allow-bind` allows). Repeatable.
    #[arg(long = "bind", value_name = "SRC:DST[:ro|rw]", value_parser = parse_bind)]
    pub binds: Vec<Bind>,
    /// Network: `none` (own namespace, loopback only) or `host` [default: none].
    #[arg(long, value_name = "MODE", value_enum)]
    pub net: Option<Net>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    None,
    Host,
}

impl Net {
    pub fn as_str(self) -> &'static str {
        match self {
            Net::None => "none",
            Net::Host => "host",
        }
    }
}

fn parse_bind(text: &str) -> Result<Bind, String> {
    Bind::parse(text).map_err(|e| e.to_string())
}

fn parse_user(text: &str) -> Result<User, String> {
    User::parse(text).map_err(|e| e.to_string())
}

pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Milliseconds of a duration, at least 1 (a limit never rounds to "none").
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
