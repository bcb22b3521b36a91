//! What a function's invocations are policed by in the kernel (`guard` in
//! its configuration): syscall and CPU budgets, network, path and device
//! rules, and a learned policy. One type from the deploy body to the stored
//! version; turned into a sandbox policy (and spec restrictions) per run.

use alcove_monitor::{IpNet, Profile, SandboxPolicy};
use alcove_sandbox::{PathRule, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The most syscalls a budget may allow.
pub const MAX_SYSCALL_BUDGET: u64 = 1_000_000_000_000;
/// The most entries in `allow_net` and in `allow_paths`.
pub const MAX_RULES: usize = 256;

/// A function's kernel-enforced rules. Every field is optional; none set
/// means the invocation is only counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Kill the invocation past this many syscalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall_budget: Option<u64>,
    /// Kill the invocation past this much CPU time, in milliseconds, from
    /// inside the kernel (sampled every millisecond; catches spinners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_budget_ms: Option<u64>,
    /// Refuse network connects, sends and binds except to loopback and
    /// `allow_net` (for `net: host` functions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny_net: bool,
    /// Addresses or CIDR ranges allowed under `deny_net`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_net: Vec<String>,
    /// `PATH[:ro|rw]`: the paths the handler may reach beyond a base set
    /// (Landlock); none: no path rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_paths: Vec<String>,
    /// The devices the handler may open (names such as `null,urandom` or
    /// `MAJOR:MINOR`); none: no device rule beyond the mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Allow only what this profile allows: `"learned"` in a deploy (the
    /// function's learned profile, pinned into the version), or a profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySource>,
}

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PolicySource {
    /// `"learned"`: what `alcove fn learn` recorded for the function.
    Named(String),
    /// A profile, as `alcove run --learn` writes one.
    Profile(Box<Profile>),
}

impl Guard {
    pub fn is_empty(&self) -> bool {
        *self == Guard::default()
    }

    /// Checks every value, for a function that is `warm` or not.
    pub fn check(&self, warm: bool) -> Result<(), String> {
        if let Some(n) = self.syscall_budget {
            if n == 0 || n > MAX_SYSCALL_BUDGET {
                return Err(format!("syscall budget {n}: use 1 to {MAX_SYSCALL_BUDGET}"));
            }
        }
        if let Some(ms) = self.cpu_budget_ms {
            if ms == 0 || ms > 24 * 3600 * 1000 {
                return Err(format!("CPU budget {ms} ms: use 1 ms to 24 h"));
            }
        }
        let devices = self.devices.as_ref().map_or(0, Vec::len);
        if self.allow_net.len() > MAX_RULES
            || self.allow_paths.len() > MAX_RULES
            || devices > MAX_RULES
        {
            return Err(format!(
                "allow_net, allow_paths and devices take at most {MAX_RULES} entries each"
            ));
        }
        if warm && !self.allow_paths.is_empty() {
            return Err(
                "allow_paths: a warm function cannot take path rules yet (its copies inherit \
                 their template's Landlock rules); deploy it without --warm, or without \
                 --allow-path"
                    .into(),
            );
        }
        if !self.allow_net.is_empty() && !self.deny_net {
            return Err("allow_net: it lists exceptions to deny_net; add --deny-net".into());
        }
        for net in &self.allow_net {
            IpNet::parse(net).map_err(|e| format!("allow_net: {e}"))?;
        }
        for path in &self.allow_paths {
            path_rule(path).map_err(|e| format!("allow_paths: {e}"))?;
        }
        if let Some(devices) = &self.devices {
            alcove_monitor::devices::parse_list(&devices.join(","))
                .map_err(|e| format!("devices: {e}"))?;
        }
        match &self.policy {
            None => {}
            Some(PolicySource::Named(name)) => {
                return Err(format!(
                    "policy {name:?}: use \"learned\" (what `alcove fn learn` recorded) or give a \
                     profile"
                ))
            }
            Some(PolicySource::Profile(p)) => {
                p.validate().map_err(|e| format!("policy: {e}"))?;
                if warm {
                    return Err(
                        "policy: a warm function cannot take a syscall policy yet (its copies \
                         share one seccomp filter); deploy it without --warm, or without --policy"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The kernel side of one run of the function, and the restrictions the
    /// policy adds to its spec. `learning`: record what it does.
    pub fn apply(&self, spec: &mut SandboxSpec, learning: bool) -> Result<SandboxPolicy, String> {
        let mut policy = SandboxPolicy {
            syscall_budget: self.syscall_budget,
            cpu_budget: self.cpu_budget_ms.map(Duration::from_millis),
            learn: learning,
            trace: learning,
            ..SandboxPolicy::default()
        };
        if self.deny_net {
            let nets: Result<Vec<IpNet>, String> =
                self.allow_net.iter().map(|n| IpNet::parse(n)).collect();
            policy.net_allow = Some(nets?);
        }
        for path in &self.allow_paths {
            spec.allow_paths.push(path_rule(path)?);
        }
        if let Some(devices) = &self.devices {
            let mut allowed = alcove_monitor::devices::parse_list(&devices.join(","))?;
            for node in &spec.device_nodes {
                allowed
                    .push(alcove_monitor::devices::char_device(node).map_err(|e| e.to_string())?);
            }
            policy.devices = Some(allowed);
        } else if !spec.device_nodes.is_empty() {
            // Host devices given (a GPU): the kernel refuses every other device.
            policy.devices = Some(
                alcove_monitor::devices::basic_and(&spec.device_nodes)
                    .map_err(|e| e.to_string())?,
            );
        }
        if let Some(PolicySource::Profile(profile)) = &self.policy {
            let net_allow = policy.net_allow.take();
            profile.apply(spec, &mut policy)?;
            // Both network lists hold: a learned peer must be in an allowed range.
            if let (Some(mine), Some(learned)) = (net_allow, policy.net_allow.as_mut()) {
                learned.retain(|n| mine.iter().any(|range| range.contains(n)));
            }
        }
        Ok(policy)
    }
}

/// `PATH[:ro|rw]`, absolute, without NUL, shorter than PATH_MAX.
fn path_rule(text: &str) -> Result<PathRule, String> {
    let (path, writable) = match text.rsplit_once(':') {
        Some((p, "rw")) => (p, true),
        Some((p, "ro")) => (p, false),
        _ => (text, false),
    };
    if !path.starts_with('/') || path.contains('\0') || path.len() >= libc::PATH_MAX as usize {
        return Err(format!(
            "{text:?}: give an absolute path inside the sandbox, optionally with :ro or :rw"
        ));
    }
    Ok(PathRule {
        path: path.into(),
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_checked_and_become_policies() {
        let g = Guard {
            syscall_budget: Some(100),
            cpu_budget_ms: Some(50),
            deny_net: true,
            allow_net: vec!["10.0.0.0/8".into()],
            allow_paths: vec!["/data:rw".into(), "/etc".into()],
            devices: Some(vec!["null".into(), "urandom".into()]),
            policy: None,
        };
        g.check(false).unwrap();
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        let p = g.apply(&mut spec, false).unwrap();
        assert_eq!(p.syscall_budget, Some(100));
        assert_eq!(p.cpu_budget, Some(Duration::from_millis(50)));
        assert_eq!(
            p.net_allow.unwrap(),
            vec![IpNet::parse("10.0.0.0/8").unwrap()]
        );
        assert_eq!(p.devices.unwrap().len(), 2);
        assert_eq!(spec.allow_paths.len(), 2);
        assert!(spec.allow_paths[0].writable && !spec.allow_paths[1].writable);

        let bad = |g: Guard| g.check(false).unwrap_err();
        assert!(bad(Guard {
            syscall_budget: Some(0),
            ..Guard::default()
        })
        .contains("use 1 to"));
        assert!(bad(Guard {
            allow_net: vec!["10.0.0.1".into()],
            ..Guard::default()
        })
        .contains("add --deny-net"));
        assert!(bad(Guard {
            deny_net: true,
            allow_net: vec!["nope".into()],
            ..Guard::default()
        })
        .starts_with("allow_net: "));
        assert!(bad(Guard {
            allow_paths: vec!["rel".into()],
            ..Guard::default()
        })
        .contains("absolute path"));
        assert!(bad(Guard {
            devices: Some(vec!["disk".into()]),
            ..Guard::default()
        })
        .starts_with("devices: "));
        assert!(bad(Guard {
            policy: Some(PolicySource::Named("mine".into())),
            ..Guard::default()
        })
        .contains("\"learned\""));
    }

    #[test]
    fn learned_peers_stay_when_an_allowed_range_holds_them() {
        let net = |t: &str| IpNet::parse(t).unwrap();
        assert!(net("10.0.0.0/8").contains(&net("10.1.2.3")));
        assert!(!net("10.0.0.0/8").contains(&net("11.0.0.1")));
        assert!(!net("10.0.0.0/8").contains(&net("10.0.0.0/7")));
        assert!(net("0.0.0.0/0").contains(&net("192.0.2.1")));
        assert!(net("::/0").contains(&net("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(&net("2001:db8:1::/48")));
        assert!(!net("2001:db8::/32").contains(&net("10.0.0.1")));
        let mut profile = Profile {
            alcove_profile: 1,
            ..Profile::default()
        };
        profile.network.insert("10.1.2.3:443".into());
        profile.network.insert("192.0.2.9:80".into());
        let g = Guard {
            deny_net: true,
            allow_net: vec!["10.0.0.0/8".into()],
            policy: Some(PolicySource::Profile(Box::new(profile))),
            ..Guard::default()
        };
        let p = g
            .apply(&mut SandboxSpec::new(vec!["true".into()]), false)
            .unwrap();
        assert_eq!(p.net_allow.unwrap(), vec![net("10.1.2.3")]);
        let warm_paths = Guard {
            allow_paths: vec!["/data".into()],
            ..Guard::default()
        };
        assert!(warm_paths.check(true).unwrap_err().contains("warm"));
        let many = Guard {
            devices: Some(vec!["null".into(); MAX_RULES + 1]),
            ..Guard::default()
        };
        assert!(many.check(false).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_policy_allows_its_syscalls_and_cannot_go_warm() {
        let mut profile = Profile {
            alcove_profile: 1,
            ..Profile::default()
        };
        profile.syscalls.insert("read".into());
        let g = Guard {
            policy: Some(PolicySource::Profile(Box::new(profile))),
            ..Guard::default()
        };
        g.check(false).unwrap();
        assert!(g.check(true).unwrap_err().contains("warm"));
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        let p = g.apply(&mut spec, false).unwrap();
        assert_eq!(
            p.syscall_policy.as_ref().map(Vec::len),
            Some(2),
            "read and execve"
        );
        assert_eq!(spec.syscall_allow_list, p.syscall_policy);
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<Guard>(&json).unwrap(), g);
        let named: Guard = serde_json::from_str(r#"{"policy":"learned"}"#).unwrap();
        assert_eq!(named.policy, Some(PolicySource::Named("learned".into())));
    }
}
