//! The device rule as functions given host devices (a GPU's nodes) get it:
//! through a monitor watch, the run may open its basic /dev and the nodes it
//! was given, and the kernel refuses every other device with EPERM; the rule
//! goes with the run.

use alcove_monitor::{MonitorService, SandboxPolicy, Subject};
use alcove_sandbox::{Bind, RunOptions, SandboxSpec, Stdio, User};
use std::io::Write;
use std::path::Path;

/// Root-owned character devices that are harmless to open and whose open
/// checks nothing beyond the file's mode: stand-ins for a GPU's nodes,
/// which this machine lacks.
const EXPOSED: &str = "/dev/loop-control";
const NOT_EXPOSED: &str = "/dev/net/tun";

fn can_run(test: &str) -> bool {
    let why = if !alcove_sys::process::is_root() {
        "needs root (namespaces, cgroups, eBPF)".to_owned()
    } else if let Some(missing) = [EXPOSED, NOT_EXPOSED]
        .into_iter()
        .find(|d| !Path::new(d).exists())
    {
        format!("{missing} is not on this host")
    } else {
        return true;
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// A run as uid 0 (no capabilities: only the file mode decides an open)
/// that opens both devices, with the unexposed one mounted in as well, so
/// only the device rule can refuse it.
fn opening_both() -> SandboxSpec {
    // (Subshells: a failed redirection on `:` would end dash itself.)
    let script = format!(
        "(: < {EXPOSED}) && echo exposed opened; \
         (: < /dev/standin) 2>&1 && echo other opened || echo other refused"
    );
    let mut spec = SandboxSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
    spec.user = User { uid: 0, gid: 0 };
    spec.device_nodes = vec![EXPOSED.into()];
    spec.binds.push(Bind {
        source: NOT_EXPOSED.into(),
        target: "/dev/standin".into(),
        writable: true,
        device: true,
    });
    spec.stdio = Stdio::Capture { stdin: Vec::new() };
    spec
}

const OPTIONS: RunOptions = RunOptions {
    forward_signals: false,
    collect_usage: false,
    cancel: Vec::new(),
    watch: None,
};

#[test]
fn the_rule_lets_through_the_exposed_devices_and_refuses_the_rest() {
    if !can_run("the_rule_lets_through_the_exposed_devices_and_refuses_the_rest") {
        return;
    }
    let spec = opening_both();
    // Without the rule both opens succeed: the mounts and modes allow them.
    let open = alcove_sandbox::run(&spec, &OPTIONS).unwrap();
    let open_out = String::from_utf8_lossy(&open.stdout);
    assert_eq!(open_out, "exposed opened\nother opened\n", "{open:?}");

    let devices = alcove_monitor::devices::basic_and(&spec.device_nodes).unwrap();
    let policy = SandboxPolicy {
        devices: Some(devices),
        ..SandboxPolicy::default()
    };
    let service = MonitorService::start(policy.clone(), None)
        .expect("cgroup/dev programs load on this kernel");
    let mut watch = service.watch(policy, Subject::default(), false).unwrap();
    let ruled = alcove_sandbox::run_observed(&spec, &OPTIONS, &mut watch).unwrap();
    let out = String::from_utf8_lossy(&ruled.stdout);
    assert!(out.starts_with("exposed opened\n"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.ends_with("other refused\n"), "{out}");

    // The rule goes with the run: the same (pooled) cgroup is free again.
    let after = alcove_sandbox::run(&spec, &OPTIONS).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&after.stdout),
        "exposed opened\nother opened\n"
    );
}
