//! Learned profiles (`alcove run --learn`, `alcove fn learn`): record what a
//! program did, then allow exactly that (`--policy`).

use alcove_bpf::{EventKind, IpNet, SandboxPolicy};
use alcove_sandbox::{PathRule, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// A learned profile, as `--learn` writes it and `--policy` reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
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
    /// More was seen than a profile holds (4096 paths per list, 1024
    /// addresses): what is past the bound was left out, so the policy will
    /// refuse it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
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

    /// Adds what `other` saw (a later invocation of the same function),
    /// within the bounds a profile may hold; past them, marks it incomplete.
    pub fn merge(&mut self, other: &Profile) {
        fn add(into: &mut BTreeSet<String>, from: &BTreeSet<String>, max: usize) -> bool {
            for item in from {
                if into.len() >= max && !into.contains(item) {
                    return true;
                }
                into.insert(item.clone());
            }
            false
        }
        let mut cut = add(&mut self.syscalls, &other.syscalls, MAX_PATHS);
        cut |= add(&mut self.files.read, &other.files.read, MAX_PATHS);
        cut |= add(&mut self.files.write, &other.files.write, MAX_PATHS);
        cut |= add(&mut self.files.exec, &other.files.exec, MAX_PATHS);
        cut |= add(&mut self.network, &other.network, MAX_ADDRESSES);
        self.incomplete |= cut || other.incomplete;
        if self.program.is_empty() {
            self.program = other.program.clone();
        }
    }

    /// Checks a profile given as a value (in an API body): the bounds
    /// [`load`](Self::load) checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.alcove_profile != 1 {
            return Err(format!(
                "profile version {} is not supported (1 is)",
                self.alcove_profile
            ));
        }
        for name in &self.syscalls {
            if alcove_sandbox::syscall_number(name).is_none() {
                return Err(format!("syscalls: {name:?} is not a syscall alcove knows"));
            }
        }
        self.check()
    }

    /// The syscall numbers the profile allows (execve always: the program
    /// starts after the filter is in place).
    pub fn syscall_numbers(&self) -> Result<Vec<u32>, String> {
        self.syscalls
            .iter()
            .map(String::as_str)
            .chain(["execve"])
            .map(|name| {
                alcove_sandbox::syscall_number(name)
                    .ok_or_else(|| format!("the profile names an unknown syscall {name:?}"))
            })
            .collect()
    }

    /// Reads and checks a profile: a regular file of at most
    /// [`MAX_PROFILE_BYTES`], every path without NUL and shorter than
    /// `PATH_MAX`, every list and port within its bounds.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let shown = path.display();
        let cannot = |e: std::io::Error| format!("cannot read the profile {shown}: {e}");
        // Checked before opening: a FIFO would block the open.
        if !std::fs::metadata(path).map_err(cannot)?.is_file() {
            return Err(format!("the profile {shown} is not a regular file"));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PROFILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_PROFILE_BYTES {
            return Err(format!(
                "the profile {shown} is larger than {MAX_PROFILE_BYTES} bytes"
            ));
        }
        let profile: Profile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{shown} is not an alcove profile: {e}"))?;
        if profile.alcove_profile != 1 {
            return Err(format!(
                "{shown}: profile version {} is not supported (1 is)",
                profile.alcove_profile
            ));
        }
        profile.check().map_err(|e| format!("{shown}: {e}"))?;
        Ok(profile)
    }

    /// Every path without NUL and shorter than `PATH_MAX`; every list and
    /// port within its bounds.
    fn check(&self) -> Result<(), String> {
        let lists = [
            ("files.read", &self.files.read),
            ("files.write", &self.files.write),
            ("files.exec", &self.files.exec),
        ];
        for (field, paths) in lists {
            if paths.len() > MAX_PATHS {
                return Err(format!(
                    "{field} lists {} paths; at most {MAX_PATHS}",
                    paths.len()
                ));
            }
            for path in paths {
                check_path(path).map_err(|why| format!("{field}: {path:?} {why}"))?;
            }
        }
        if self.network.len() > MAX_ADDRESSES {
            return Err(format!(
                "network lists {} addresses; at most {MAX_ADDRESSES}",
                self.network.len()
            ));
        }
        for address in &self.network {
            peer_ip(address).map_err(|why| format!("network: {address:?}: {why}"))?;
        }
        Ok(())
    }

    /// Restricts `spec` and `policy` to exactly what the profile allows: a
    /// seccomp allow-list (each call outside it refused with EPERM and
    /// reported as a denial), Landlock path rules and a network allow-list.
    pub fn apply(&self, spec: &mut SandboxSpec, policy: &mut SandboxPolicy) -> Result<(), String> {
        let allowed = self.syscall_numbers()?;
        spec.syscall_allow_list = Some(allowed.clone());
        policy.syscall_policy = Some(allowed);
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
            let ip = peer_ip(address).map_err(|why| format!("network: {address:?}: {why}"))?;
            nets.push(IpNet::parse(ip)?);
        }
        policy.net_allow = Some(nets);
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

/// The most bytes of profile alcove reads.
pub const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// The most paths in each of `files.read`, `files.write` and `files.exec`
/// (each is a Landlock rule the sandbox adds before it starts).
const MAX_PATHS: usize = 4096;
/// The most addresses in `network`.
const MAX_ADDRESSES: usize = 1024;

/// Why `path` cannot be a profile's path rule, if it cannot. (A relative
/// one, as a learned exec of `./prog`, resolves in the working directory.)
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.contains('\0') {
        return Err("holds a NUL byte");
    }
    if path.len() >= libc::PATH_MAX as usize {
        return Err("is longer than PATH_MAX");
    }
    Ok(())
}

/// The address part of a `network` entry: `192.0.2.7:443`,
/// `[2001:db8::1]:443`, or an address or range without a port
/// (`10.0.0.0/8`, `::1`); a port must be 0 to 65535.
fn peer_ip(entry: &str) -> Result<&str, &'static str> {
    let (ip, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("a '[' without its ']'")?;
        match after {
            "" => (ip, None),
            _ => (ip, Some(after.strip_prefix(':').ok_or("text after ']'")?)),
        }
    } else {
        match entry.split_once(':') {
            // One colon: IPv4 and a port; more: a bare IPv6 address.
            Some((ip, port)) if !port.contains(':') => (ip, Some(port)),
            _ => (entry, None),
        }
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("the port must be 0 to 65535");
    }
    Ok(ip)
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

    #[test]
    fn merged_profiles_stay_within_their_bounds() {
        let mut learned = Profile {
            alcove_profile: 1,
            ..Profile::default()
        };
        let mut many = Profile::default();
        many.files.read = (0..MAX_PATHS + 10).map(|i| format!("/tmp/{i}")).collect();
        many.syscalls.insert("read".into());
        learned.merge(&many);
        assert_eq!(learned.files.read.len(), MAX_PATHS);
        assert!(learned.incomplete);
        assert!(learned.syscalls.contains("read"));
        assert_eq!(learned.check(), Ok(()));
    }

    #[test]
    fn bad_paths_and_ports_are_refused_naming_the_field() {
        let with = |f: fn(&mut Profile)| {
            let mut p = Profile {
                alcove_profile: 1,
                ..Profile::default()
            };
            f(&mut p);
            p.check()
        };
        assert_eq!(with(|_| {}), Ok(()));
        let e = with(|p| {
            p.files.read.insert("/a\0b".into());
        });
        assert_eq!(e.unwrap_err(), r#"files.read: "/a\0b" holds a NUL byte"#);
        let e = with(|p| {
            p.files.write.insert(format!("/{}", "a".repeat(4096)));
        });
        assert!(e.unwrap_err().ends_with(" is longer than PATH_MAX"));
        let e = with(|p| {
            p.network.insert("[::1]:70000".into());
        });
        assert_eq!(
            e.unwrap_err(),
            r#"network: "[::1]:70000": the port must be 0 to 65535"#
        );
        for ok in ["192.0.2.7:443", "[2001:db8::1]:443", "10.0.0.0/8", "::1"] {
            assert!(peer_ip(ok).is_ok(), "{ok}");
        }
        assert_eq!(peer_ip("[2001:db8::1]:443"), Ok("2001:db8::1"));
        assert_eq!(peer_ip("::1"), Ok("::1"));
    }
}
