//! The two documents the runtime prints about itself: `features` (what this
//! runtime recognizes, runtime-spec `features.md`, as `runc features`
//! prints it) and `spec` (a starting `config.json`, as `runc spec` writes
//! it). What is listed here must match what [`crate::rootfs`],
//! [`crate::seccomp`] and [`crate::caps`] accept; the tests check it.

use std::io::Write;
use std::path::Path;

use oci_spec::runtime::Spec;
use serde::Serialize;
use serde_json::{json, Value};

/// What went wrong writing one of the documents.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// serde_json refused the value.
    #[error("could not serialize the document")]
    Serialize(#[source] serde_json::Error),
    /// `runc spec` refuses to overwrite a config, and so do we.
    #[error("{0} exists; remove it first")]
    Exists(std::path::PathBuf),
    /// Creating or writing config.json failed.
    #[error("could not write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The oldest runtime-spec version whose configs we run.
pub const OCI_VERSION_MIN: &str = "1.0.0";

/// The capability names the spec uses, indexed by the kernel's number.
const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The mount options [`crate::rootfs`] understands itself (not passed on to
/// the filesystem as data), sorted as runc lists them.
#[rustfmt::skip]
const MOUNT_OPTIONS: &[&str] = &[
    "acl", "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion",
    "lazytime", "loud", "mand", "noacl", "noatime", "nodev", "nodiratime", "noexec", "noiversion",
    "nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid", "nosymfollow", "notmpcopyup",
    "private", "ratime", "rbind", "rdev", "rdiratime", "relatime", "remount", "rexec", "rnoatime",
    "rnodev", "rnodiratime", "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow",
    "ro", "rprivate", "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid",
    "rsymfollow", "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid",
    "symfollow", "sync", "tmpcopyup", "unbindable",
];

const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// Filter flags we know, each with the kernel release (major, minor) that
/// brought it: seccomp(2).
const SECCOMP_FLAGS: &[(&str, (u32, u32))] = &[
    ("SECCOMP_FILTER_FLAG_TSYNC", (3, 17)),
    ("SECCOMP_FILTER_FLAG_LOG", (4, 14)),
    ("SECCOMP_FILTER_FLAG_SPEC_ALLOW", (4, 17)),
    ("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", (5, 19)),
];

/// Only the native architecture: [`crate::seccomp`] compiles filters for
/// x86_64 alone (and kills calls made through another ABI), and refuses to
/// compile elsewhere.
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCHS: &[&str] = &["SCMP_ARCH_X86_64"];
#[cfg(not(target_arch = "x86_64"))]
const NATIVE_ARCHS: &[&str] = &[];

/// The `features` document (runtime-spec `features.md`), as `runc features`
/// prints it. Capabilities are those the running kernel knows
/// (`/proc/sys/kernel/cap_last_cap`); `supportedFlags` are the known seccomp
/// flags the running kernel's release has, absent (unknown) if the release
/// cannot be read.
pub fn features_json() -> Value {
    let last_cap = usize::try_from(alcove_sys::caps::last_cap()).unwrap_or(usize::MAX);
    let capabilities: Vec<&str> = CAPABILITY_NAMES
        .iter()
        .take(last_cap.saturating_add(1))
        .copied()
        .collect();
    let mut seccomp = json!({
        "enabled": !NATIVE_ARCHS.is_empty(),
        "actions": SECCOMP_ACTIONS,
        "operators": SECCOMP_OPERATORS,
        "archs": NATIVE_ARCHS,
        "knownFlags": SECCOMP_FLAGS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
    });
    if let Some(release) = kernel_release() {
        let supported: Vec<&str> = SECCOMP_FLAGS
            .iter()
            .filter(|(_, since)| release >= *since)
            .map(|(name, _)| *name)
            .collect();
        seccomp["supportedFlags"] = json!(supported);
    }
    json!({
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": crate::hooks::STAGES,
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": capabilities,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": seccomp,
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": false } },
        },
        "annotations": {
            "io.alcove.oci.version": env!("CARGO_PKG_VERSION"),
        },
    })
}

/// The running kernel's (major, minor) release, from
/// `/proc/sys/kernel/osrelease` ("6.18.44-fc").
fn kernel_release() -> Option<(u32, u32)> {
    parse_release(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

fn parse_release(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The masked paths of `runc spec` (runc 1.2): files in /proc and /sys that
/// leak the host's state or reach its hardware.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_CAPS: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// The starting `config.json` that `spec` writes: `runc spec`'s (a `sh`,
/// but on the caller's stdio rather than a terminal: a terminal needs a
/// console socket, which conmon and the shim give and a person running
/// `alcove-oci run` in a shell does not; three capabilities, NOFILE 1024, proc/dev/devpts/shm/
/// mqueue/sysfs/cgroup mounts, masked and read-only paths, pid, network,
/// ipc, uts, mount and cgroup namespaces, a read-only `rootfs`). With
/// `rootless`, as `runc spec --rootless`: a user namespace mapping the
/// caller's effective uid and gid to root, no network namespace (a rootless
/// caller could not configure it), no device cgroup rules, /sys bound from
/// the host instead of a fresh sysfs, and devpts without `gid=5`.
pub fn default_spec(rootless: bool) -> Spec {
    let ids = rootless.then(effective_ids);
    let spec = spec_value(ids);
    // The literal above is fixed at compile time; the unit tests parse it.
    serde_json::from_value(spec).expect("the built-in default spec parses")
}

fn spec_value(rootless: Option<(u32, u32)>) -> Value {
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    let sys = if rootless.is_some() {
        json!({
            "destination": "/sys", "type": "none", "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        })
    } else {
        devpts.push("gid=5");
        json!({
            "destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        })
    };
    let mut namespaces = vec!["pid", "network", "ipc", "uts", "mount", "cgroup"];
    let mut linux = json!({
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if let Some((uid, gid)) = rootless {
        namespaces.retain(|ns| *ns != "network");
        namespaces.push("user");
        linux["uidMappings"] = json!([{ "containerID": 0, "hostID": uid, "size": 1 }]);
        linux["gidMappings"] = json!([{ "containerID": 0, "hostID": gid, "size": 1 }]);
    } else {
        linux["resources"] = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    }
    linux["namespaces"] = namespaces.iter().map(|ns| json!({ "type": ns })).collect();
    json!({
        "ociVersion": oci_spec::runtime::VERSION,
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
                "ambient": DEFAULT_CAPS,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "alcove",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            {
                "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts },
            {
                "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            sys,
            {
                "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": linux,
    })
}

/// The caller's effective uid and gid (what `runc spec --rootless` maps).
fn effective_ids() -> (u32, u32) {
    let uid = alcove_sys::process::effective_uid();
    // The second field of "Gid:" is the effective gid; std has no getegid.
    let gid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Gid:"))?;
            line.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or(uid);
    (uid, gid)
}

/// `value` as pretty JSON indented with `indent`.
fn to_pretty_json<T: Serialize>(value: &T, indent: &[u8]) -> Result<Vec<u8>, FeaturesError> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .map_err(FeaturesError::Serialize)?;
    Ok(out)
}

/// `spec` as `runc spec` writes it: pretty JSON indented with a tab, no
/// final newline. Keys come out sorted and each capability set sorted:
/// oci-spec keeps capability sets as hash sets, whose order would change
/// from run to run.
pub fn spec_text(spec: &Spec) -> Result<Vec<u8>, FeaturesError> {
    let mut value = serde_json::to_value(spec).map_err(FeaturesError::Serialize)?;
    sort_capabilities(&mut value);
    to_pretty_json(&value, b"\t")
}

/// Sorts the string arrays under `process.capabilities` in place.
fn sort_capabilities(spec: &mut Value) {
    let Some(sets) = spec
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for set in sets.values_mut() {
        if let Some(names) = set.as_array_mut() {
            names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
}

/// What `features` prints: [`features_json`] indented with four spaces and
/// a final newline, as `runc features` prints it (keys sorted).
pub fn features_text() -> Result<Vec<u8>, FeaturesError> {
    let mut out = to_pretty_json(&features_json(), b"    ")?;
    out.push(b'\n');
    Ok(out)
}

/// Writes `<bundle>/config.json` as `runc spec` does: the default spec,
/// tab-indented, mode 0666 before the umask, refusing to replace one that
/// exists.
pub fn write_spec(bundle: &Path, rootless: bool) -> Result<(), FeaturesError> {
    let path = bundle.join("config.json");
    let text = spec_text(&default_spec(rootless))?;
    let fail = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            FeaturesError::Exists(path.clone())
        } else {
            FeaturesError::Write {
                path: path.clone(),
                source,
            }
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(fail)?;
    file.write_all(&text).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability, Features};

    #[test]
    fn features_parse_as_the_spec_defines_them() {
        let value = features_json();
        let features: Features = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(features.oci_version_min(), "1.0.0");
        let linux = features.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 8);
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.actions().as_ref().unwrap().len(), 9);
        assert!(!seccomp.archs().as_ref().unwrap().is_empty());
        // On this machine's kernel (>= 5.19) every known flag is supported.
        let known = value["linux"]["seccomp"]["knownFlags"].as_array().unwrap();
        let supported = value["linux"]["seccomp"]["supportedFlags"]
            .as_array()
            .unwrap();
        if kernel_release().is_some_and(|r| r >= (5, 19)) {
            assert_eq!(known, supported);
        }
        assert_eq!(
            features.hooks().as_ref().unwrap(),
            &crate::hooks::STAGES.map(String::from).to_vec()
        );
    }

    #[test]
    fn every_capability_name_is_one_the_spec_knows_in_the_kernels_order() {
        let last = alcove_sys::caps::last_cap();
        for (number, name) in (0u32..).zip(CAPABILITY_NAMES) {
            let cap: Capability =
                serde_json::from_value(json!(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let expected = (number <= last).then_some(number);
            assert_eq!(crate::caps::number(cap), expected, "{name}");
        }
        let listed = features_json()["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .len();
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap();
        assert_eq!(listed, last.trim().parse::<usize>().unwrap() + 1);
    }

    #[test]
    fn release_strings_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1045\n"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("6-rc"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn the_default_spec_round_trips_and_matches_runcs() {
        for rootless in [false, true] {
            let spec = default_spec(rootless);
            let text = spec_text(&spec).unwrap();
            let back: Spec = serde_json::from_slice(&text).unwrap();
            assert_eq!(back, spec);
            // Written out, it holds exactly what the literal held: nothing
            // lost to oci-spec's types, nothing added by their defaults.
            let ids = rootless.then(effective_ids);
            let written: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(written, spec_value(ids));
        }
        let root = default_spec(false);
        let process = root.process().as_ref().unwrap();
        assert!(!process.terminal().unwrap());
        assert_eq!(process.args().as_ref().unwrap(), &["sh".to_string()]);
        let ns: Vec<_> = root
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ().to_string())
            .collect();
        assert_eq!(ns, ["pid", "net", "ipc", "uts", "mnt", "cgroup"]);
        let rootless = default_spec(true);
        let linux = rootless.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ().to_string())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mnt", "cgroup", "user"]);
        let (uid, gid) = effective_ids();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), uid);
        assert_eq!(linux.gid_mappings().as_ref().unwrap()[0].host_id(), gid);
        assert!(linux.resources().is_none());
    }

    /// runc 1.1's `runc spec`, where installed: ours differs only where
    /// runc 1.2 moved on (cgroup namespace, powercap masked, version) and in
    /// the hostname.
    #[test]
    fn the_default_spec_matches_what_runc_writes() {
        let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            eprintln!("runc is not installed; skipped");
            return;
        };
        for rootless in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = std::process::Command::new(runc);
            cmd.arg("spec").current_dir(dir.path());
            if rootless {
                cmd.arg("--rootless");
            }
            assert!(cmd.status().unwrap().success());
            let mut theirs: Value =
                serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                    .unwrap();
            let mut ours: Value =
                serde_json::from_slice(&spec_text(&default_spec(rootless)).unwrap()).unwrap();
            for doc in [&mut theirs, &mut ours] {
                doc["ociVersion"] = json!("x");
                doc["process"]["terminal"] = json!("x");
                doc["hostname"] = json!("x");
                let linux = doc["linux"].as_object_mut().unwrap();
                linux["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|ns| ns["type"] != "cgroup");
                linux["maskedPaths"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|p| p != "/sys/devices/virtual/powercap");
            }
            assert_eq!(ours, theirs, "rootless: {rootless}");
        }
    }

    #[test]
    fn spec_is_written_once_with_tabs() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(dir.path(), false).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        // Key order depends on serde_json's preserve_order, which another
        // crate of the workspace turns on: check the tabs, not the order.
        assert!(text.starts_with("{\n\t\""), "{text}");
        assert!(text.contains("\n\t\"hostname\": \"alcove\""), "{text}");
        assert!(!text.ends_with('\n'));
        // Sets come out sorted, every time.
        assert!(text.contains("[\n\t\t\t\t\"CAP_AUDIT_WRITE\",\n\t\t\t\t\"CAP_KILL\",\n\t\t\t\t\"CAP_NET_BIND_SERVICE\"\n"), "{text}");
        let err = write_spec(dir.path(), false).unwrap_err();
        assert!(matches!(err, FeaturesError::Exists(_)), "{err}");
        let features = features_text().unwrap();
        assert!(features.starts_with(b"{\n    \"") && features.ends_with(b"}\n"));
    }
}
