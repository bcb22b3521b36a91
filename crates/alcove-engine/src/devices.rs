//! The device cgroup rule for invocations given host devices (`--accel gpu`):
//! the sandbox may open its basic /dev and those devices, and the kernel
//! refuses every other device with EPERM, whatever the mounts show.
//!
//! The rule is alcove-bpf's `cgroup/dev` program. Its monitor is not `Send`
//! and is loaded once, so one thread owns it and invocations ask that thread
//! to attach and detach their rules (a message each way, microseconds, against
//! the tens of milliseconds a load costs).

use alcove_bpf::{DeviceId, Monitor, SandboxPolicy};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// What every sandbox's /dev holds (null, zero, full, random, urandom, tty,
/// ptmx and the pts of its own devpts).
const BASIC: [DeviceId; 8] = [
    dev(1, Some(3)),
    dev(1, Some(5)),
    dev(1, Some(7)),
    dev(1, Some(8)),
    dev(1, Some(9)),
    dev(5, Some(0)),
    dev(5, Some(2)),
    dev(136, None),
];

const fn dev(major: u32, minor: Option<u32>) -> DeviceId {
    DeviceId { major, minor }
}

/// Why a device rule could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRuleError {
    #[error(
        "cannot load the device cgroup rule (eBPF cgroup/dev), which device access needs; \
         `alcove doctor` says what this kernel allows"
    )]
    Load(#[source] alcove_bpf::BpfError),
    #[error("cannot attach the device cgroup rule to the sandbox's cgroup")]
    Attach(#[source] alcove_bpf::BpfError),
    #[error(
        "device rules identify sandboxes by their cgroup2 id, and no cgroup2 tree is mounted \
         (mount one, for example at /sys/fs/cgroup/unified)"
    )]
    NoCgroup2,
    #[error("the device rule thread has stopped")]
    Gone,
    #[error("{} is not a character device", .0.display())]
    NotCharDevice(PathBuf),
}

enum Request {
    Allow {
        cgroup_id: u64,
        dir: PathBuf,
        devices: Vec<DeviceId>,
        done: mpsc::SyncSender<Result<(), DeviceRuleError>>,
    },
    Forget {
        cgroup_id: u64,
        done: mpsc::SyncSender<()>,
    },
}

/// The thread that owns the loaded rule program. Cloning shares it; it stops
/// (detaching everything) when the last clone is dropped.
#[derive(Clone)]
pub struct DeviceRules {
    requests: mpsc::Sender<Request>,
}

impl DeviceRules {
    /// Loads the rule program on a thread of its own.
    pub fn start() -> Result<Self, DeviceRuleError> {
        let (requests, incoming) = mpsc::channel();
        let (loaded, load_result) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("alcove-device-rules".into())
            .spawn(move || {
                let policy = SandboxPolicy {
                    devices: Some(Vec::new()),
                    ..SandboxPolicy::default()
                };
                match Monitor::load(&policy) {
                    Ok(monitor) => {
                        let _ = loaded.send(Ok(()));
                        serve(monitor, incoming);
                    }
                    Err(e) => {
                        let _ = loaded.send(Err(DeviceRuleError::Load(e)));
                    }
                }
            })
            .map_err(|_| DeviceRuleError::Gone)?;
        load_result.recv().map_err(|_| DeviceRuleError::Gone)??;
        Ok(DeviceRules { requests })
    }

    /// An observer that confines one run to its basic /dev plus `nodes`.
    pub fn observer(&self, nodes: &[PathBuf]) -> Result<DeviceRuleObserver, DeviceRuleError> {
        let mut devices = BASIC.to_vec();
        for node in nodes {
            devices.push(char_device(node)?);
        }
        Ok(DeviceRuleObserver {
            rules: self.clone(),
            devices,
            cgroup_id: None,
        })
    }
}

fn char_device(node: &Path) -> Result<DeviceId, DeviceRuleError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(node).map_err(|_| DeviceRuleError::NotCharDevice(node.into()))?;
    if !meta.file_type().is_char_device() {
        return Err(DeviceRuleError::NotCharDevice(node.into()));
    }
    Ok(dev(
        libc::major(meta.rdev()),
        Some(libc::minor(meta.rdev())),
    ))
}

fn serve(mut monitor: Monitor, incoming: mpsc::Receiver<Request>) {
    loop {
        let request = match incoming.recv_timeout(Duration::from_secs(1)) {
            Ok(request) => Some(request),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // The always-on exec/exit events of watched sandboxes are not what
        // this monitor is for; drained so the ring never fills.
        let _ = monitor.take_events();
        match request {
            Some(Request::Allow {
                cgroup_id,
                dir,
                devices,
                done,
            }) => {
                let policy = SandboxPolicy {
                    devices: Some(devices),
                    ..SandboxPolicy::default()
                };
                let result = monitor
                    .watch(cgroup_id, &dir, &policy)
                    .map_err(DeviceRuleError::Attach);
                if result.is_err() {
                    monitor.unwatch(cgroup_id);
                }
                let _ = done.send(result);
            }
            Some(Request::Forget { cgroup_id, done }) => {
                monitor.unwatch(cgroup_id);
                let _ = done.send(());
            }
            None => {}
        }
    }
}

/// Puts one run under the device rule from before its first process starts
/// until its last one is gone.
pub struct DeviceRuleObserver {
    rules: DeviceRules,
    devices: Vec<DeviceId>,
    cgroup_id: Option<u64>,
}

impl alcove_sandbox::Observer for DeviceRuleObserver {
    fn before_start(
        &mut self,
        cgroup: Option<(u64, &Path)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (cgroup_id, dir) = cgroup.ok_or(DeviceRuleError::NoCgroup2)?;
        let (done, result) = mpsc::sync_channel(1);
        self.rules
            .requests
            .send(Request::Allow {
                cgroup_id,
                dir: dir.to_owned(),
                devices: self.devices.clone(),
                done,
            })
            .map_err(|_| DeviceRuleError::Gone)?;
        result.recv().map_err(|_| DeviceRuleError::Gone)??;
        self.cgroup_id = Some(cgroup_id);
        Ok(())
    }

    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn on_ready(&mut self) -> Option<String> {
        None
    }

    fn after_end(&mut self) {
        // Waits until the rule is off: the cgroup may be a pool slot that
        // the next run, with no rule, takes as soon as this one returns.
        if let Some(cgroup_id) = self.cgroup_id.take() {
            let (done, detached) = mpsc::sync_channel(1);
            if self
                .rules
                .requests
                .send(Request::Forget { cgroup_id, done })
                .is_ok()
            {
                let _ = detached.recv();
            }
        }
    }
}

impl Drop for DeviceRuleObserver {
    /// A run that ended early (an error after the rule was attached) still
    /// takes its rule off the cgroup, which a pool will hand to another run.
    fn drop(&mut self) {
        alcove_sandbox::Observer::after_end(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_sandbox::{Bind, RunOptions, SandboxSpec, Stdio, User};
    use std::io::Write;

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

        let rules = DeviceRules::start().expect("cgroup/dev programs load on this kernel");
        let mut observer = rules.observer(&spec.device_nodes).unwrap();
        let ruled = alcove_sandbox::run_observed(&spec, &OPTIONS, &mut observer).unwrap();
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

    #[test]
    fn only_character_devices_can_be_exposed() {
        if !can_run("only_character_devices_can_be_exposed") {
            return;
        }
        let rules = DeviceRules::start().expect("cgroup/dev programs load on this kernel");
        let err = rules
            .observer(&["/etc/hostname".into()])
            .err()
            .expect("a regular file is refused");
        assert_eq!(err.to_string(), "/etc/hostname is not a character device");
    }
}
