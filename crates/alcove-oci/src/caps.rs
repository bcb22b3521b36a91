//! The spec's five capability sets turned into the kernel's bit masks.

use alcove_sys::caps::CapSets;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// The kernel's capability numbers, by the name the spec uses.
const NUMBERS: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_IPC_OWNER", 15),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_RAWIO", 17),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_PACCT", 20),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_BOOT", 22),
    ("CAP_SYS_NICE", 23),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYS_TIME", 25),
    ("CAP_SYS_TTY_CONFIG", 26),
    ("CAP_MKNOD", 27),
    ("CAP_LEASE", 28),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_AUDIT_CONTROL", 30),
    ("CAP_SETFCAP", 31),
    ("CAP_MAC_OVERRIDE", 32),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_SYSLOG", 34),
    ("CAP_WAKE_ALARM", 35),
    ("CAP_BLOCK_SUSPEND", 36),
    ("CAP_AUDIT_READ", 37),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// The spec's name of a capability ("CAP_CHOWN").
pub fn name(cap: Capability) -> String {
    match serde_json::to_value(cap) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("CAP_{cap}"),
    }
}

/// The kernel's number for `cap`, or `None` for one this kernel does not
/// know (skipped, as runc does, so a newer spec still runs on an older kernel).
pub fn number(cap: Capability) -> Option<u32> {
    let name = name(cap);
    let last = alcove_sys::caps::last_cap();
    NUMBERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
        .filter(|nr| *nr <= last)
}

fn mask(set: &Option<Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .filter_map(|c| number(*c))
        .fold(0, |m, nr| m | (1u64 << nr))
}

/// The masks for `caps`; a set the spec leaves out is empty.
pub fn sets(caps: Option<&LinuxCapabilities>) -> CapSets {
    let Some(caps) = caps else {
        return CapSets::default();
    };
    CapSets {
        bounding: mask(caps.bounding()),
        effective: mask(caps.effective()),
        permitted: mask(caps.permitted()),
        inheritable: mask(caps.inheritable()),
        ambient: mask(caps.ambient()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_kernels_numbers() {
        assert_eq!(number(Capability::Chown), Some(0));
        assert_eq!(number(Capability::SysAdmin), Some(21));
        assert_eq!(name(Capability::NetBindService), "CAP_NET_BIND_SERVICE");
    }

    #[test]
    fn sets_are_masks() {
        let json = r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"]}"#;
        let caps: LinuxCapabilities = serde_json::from_str(json).unwrap();
        let s = sets(Some(&caps));
        assert_eq!(s.bounding, (1 << 5) | 1);
        assert_eq!(s.effective, 1 << 5);
        assert_eq!(s.permitted, 0);
    }
}
