//! The deploy flags for what the kernel polices a function with (its
//! `guard`): budgets, network, path and device rules, and a policy.

use alcove_engine::{Guard, PolicySource};
use anyhow::Context;
use clap::Args;
use std::time::Duration;

/// Given any of these, they replace the function's whole guard (a guard is
/// one setting: give every rule you want at once); `--no-guard` removes it.
#[derive(Args, Debug, Default)]
pub(super) struct GuardArgs {
    /// Kill an invocation, from inside the kernel, past this many syscalls
    /// (status killed_by_policy).
    #[arg(
        long,
        value_name = "N",
        help_heading = "Guard (eBPF; replaces the whole guard)"
    )]
    syscall_budget: Option<u64>,
    /// Kill an invocation, from inside the kernel, past this much CPU time
    /// (sampled every millisecond: catches spinners that make no syscalls).
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration, help_heading = "Guard (eBPF; replaces the whole guard)")]
    cpu_budget: Option<Duration>,
    /// Refuse connects, sends and binds except to loopback and --allow-net
    /// (for --net host functions).
    #[arg(long, help_heading = "Guard (eBPF; replaces the whole guard)")]
    deny_net: bool,
    /// An address or CIDR range allowed under --deny-net. Repeatable.
    #[arg(
        long = "allow-net",
        value_name = "CIDR",
        requires = "deny_net",
        help_heading = "Guard (eBPF; replaces the whole guard)"
    )]
    allow_net: Vec<String>,
    /// A path the handler may reach, read-only unless :rw; every other path
    /// outside a base set is refused (Landlock). Repeatable.
    #[arg(
        long = "allow-path",
        value_name = "PATH[:ro|rw]",
        help_heading = "Guard (eBPF; replaces the whole guard)"
    )]
    allow_paths: Vec<String>,
    /// The devices the handler may open: names (null, zero, full, random,
    /// urandom, tty, ptmx, pts) or MAJOR:MINOR, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        help_heading = "Guard (eBPF; replaces the whole guard)"
    )]
    devices: Option<String>,
    /// Allow only what a profile allows (seccomp allow-list, Landlock paths,
    /// network allow-list): `learned` (what `alcove fn learn` recorded,
    /// pinned into this version) or a profile file from `alcove run --learn`.
    #[arg(
        long,
        value_name = "learned|PROFILE.json",
        help_heading = "Guard (eBPF; replaces the whole guard)"
    )]
    policy: Option<String>,
    /// Remove the function's guard (budgets, rules and policy).
    #[arg(long, conflicts_with_all = ["syscall_budget", "cpu_budget", "deny_net", "allow_net", "allow_paths", "devices", "policy"], help_heading = "Guard (eBPF; replaces the whole guard)")]
    no_guard: bool,
}

impl GuardArgs {
    /// The guard to send, if any flag was given.
    pub(super) fn guard(self) -> anyhow::Result<Option<Guard>> {
        if self.no_guard {
            return Ok(Some(Guard::default()));
        }
        let policy = match self.policy.as_deref() {
            None => None,
            Some("learned") => Some(PolicySource::Named("learned".into())),
            Some(path) => {
                let profile = alcove_monitor::Profile::load(std::path::Path::new(path))
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("--policy {path}"))?;
                Some(PolicySource::Profile(Box::new(profile)))
            }
        };
        let guard = Guard {
            syscall_budget: self.syscall_budget,
            cpu_budget_ms: self
                .cpu_budget
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            deny_net: self.deny_net,
            allow_net: self.allow_net,
            allow_paths: self.allow_paths,
            devices: self.devices.map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            policy,
        };
        Ok((!guard.is_empty()).then_some(guard))
    }
}
