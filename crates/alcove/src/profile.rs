//! `--learn` and `--policy`: record what a program did, then allow exactly that.

use alcove_bpf::{EventKind, IpNet, SandboxPolicy};
use alcove_sandbox::{PathRule, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// A learned profile, as `--learn` writes it and `--policy` reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// Format version.
    pub alcove_profile: u32,
    /// The command the profile was learned from.
    pub program: Vec<String>,
    /// Syscalls the program made, by name.
    pub syscalls: BTreeSet<String>,
    pub files: Files,
    /// Addresses the program connected, sent or bound to.
    pub network: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Files {
    /// Absolute paths opened for reading.
    pub read: BTreeSet<String>,
    /// Absolute paths opened for writing or creating.
    pub write: BTreeSet<String>,
    /// Programs exec'd.
    pub exec: BTreeSet<String>,
}

impl Profile {
    /// What the observer saw of one run.
    pub fn learned(program: &[String], syscalls: &[u32], events: &[alcove_bpf::Event]) -> Self {
        let mut profile = Profile {
            alcove_profile: 1,
            program: program.to_vec(),
            ..Profile::default()
        };
        for nr in syscalls {
            if let Some(name) = alcove_sandbox::syscall_name(*nr) {
                profile.syscalls.insert(name.to_owned());
            }
        }
        for event in events {
            match &event.kind {
                EventKind::File { path, write } if path.starts_with('/') => {
                    let set = if *write {
                        &mut profile.files.write
                    } else {
                        &mut profile.files.read
                    };
                    set.insert(path.clone());
                }
                EventKind::Exec { filename, .. } => {
                    profile.files.exec.insert(filename.clone());
                }
                EventKind::Peer { address, .. } => {
                    profile.network.insert(address.clone());
                }
                _ => {}
            }
        }
        profile
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the profile {}: {e}", path.display()))?;
        let profile: Profile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not an alcove profile: {e}", path.display()))?;
        if profile.alcove_profile != 1 {
            return Err(format!(
                "{}: profile version {} is not supported (1 is)",
                path.display(),
                profile.alcove_profile
            ));
        }
        Ok(profile)
    }

    /// Restricts `spec` and `policy` to exactly what the profile allows: a
    /// seccomp allow-list, Landlock path rules and a network allow-list.
    pub fn apply(&self, spec: &mut SandboxSpec, policy: &mut SandboxPolicy) -> Result<(), String> {
        let mut allowed = Vec::new();
        // execve starts the program after the filter is in place.
        for name in self.syscalls.iter().map(String::as_str).chain(["execve"]) {
            let nr = alcove_sandbox::syscall_number(name)
                .ok_or_else(|| format!("the profile names an unknown syscall {name:?}"))?;
            allowed.push(nr);
        }
        spec.syscall_allow_list = Some(allowed);
        let rule = |path: &str, writable| PathRule {
            path: path.into(),
            writable,
        };
        for path in self.files.read.iter().chain(&self.files.exec) {
            spec.allow_paths.push(rule(path, false));
        }
        for path in &self.files.write {
            let parent = Path::new(path)
                .parent()
                .and_then(Path::to_str)
                .unwrap_or("/");
            spec.allow_paths.push(rule(parent, true));
        }
        if spec.allow_paths.is_empty() {
            spec.allow_paths.push(rule("/usr", false)); // keep Landlock on: base set only
        }
        let mut nets = Vec::new();
        for address in &self.network {
            let ip = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(ip, _)| ip);
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            nets.push(IpNet::parse(ip)?);
        }
        policy.net_allow = Some(nets);
        policy.trace = true; // to report what the profile refused
        Ok(())
    }

    /// Syscalls the run made that the profile does not allow (each refused with EPERM).
    pub fn refused(&self, used: &[u32]) -> Vec<String> {
        used.iter()
            .map(|nr| {
                alcove_sandbox::syscall_name(*nr)
                    .map_or_else(|| format!("syscall_{nr}"), str::to_owned)
            })
            .filter(|name| name != "execve" && !self.syscalls.contains(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_and_become_rules() {
        let mut p = Profile {
            alcove_profile: 1,
            ..Profile::default()
        };
        p.syscalls.extend(["read".to_owned(), "write".to_owned()]);
        p.files.read.insert("/etc/hostname".into());
        p.files.write.insert("/tmp/out.txt".into());
        p.network.insert("192.0.2.7:443".into());
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&text).unwrap(), p);
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        let mut policy = SandboxPolicy::default();
        p.apply(&mut spec, &mut policy).unwrap();
        let allowed = spec.syscall_allow_list.unwrap();
        assert_eq!(allowed.len(), 3, "read, write and execve");
        assert!(spec.allow_paths.contains(&PathRule {
            path: "/tmp".into(),
            writable: true
        }));
        assert!(spec.allow_paths.contains(&PathRule {
            path: "/etc/hostname".into(),
            writable: false
        }));
        assert_eq!(
            policy.net_allow.unwrap(),
            vec![IpNet::parse("192.0.2.7").unwrap()]
        );
        assert_eq!(p.refused(&[0, 1, 39]), vec!["getpid".to_owned()]);
    }
}
