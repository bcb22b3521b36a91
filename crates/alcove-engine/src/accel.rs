//! The accelerator service functions deployed with `--accel` reach: one
//! `alcove-accel serve` process per daemon, started on first use and again
//! if it dies; each invocation gets its own connection, granted the
//! function's placement and limits (memory and time), which the sandbox
//! inherits. The service confines itself: its worker runs in a cgroup of
//! its own, without privileges, under seccomp (see alcove-accel's `serve`).

use crate::EngineError;
use alcove_sys::unix::{send_with_fd, seqpacket_pair};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Service {
    child: Child,
    control: Option<OwnedFd>,
}

/// How long the service gets to end by itself (and remove its cgroup)
/// once its control socket closes, before it is killed.
const GRACE: Duration = Duration::from_secs(2);

impl Drop for Service {
    fn drop(&mut self) {
        // Closing the control socket ends the service, which then removes
        // its cgroup; kill it only if it is stuck.
        drop(self.control.take());
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(program: &Path) -> Result<Service, EngineError> {
    let io = |what: &'static str| EngineError::io(what);
    let (control, theirs) =
        seqpacket_pair().map_err(io("creating the accelerator's control socket"))?;
    let child = Command::new(program)
        .arg("serve")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|source| EngineError::Io {
            what: "starting alcove-accel (install it next to alcove)",
            source,
        })?;
    Ok(Service {
        child,
        control: Some(control),
    })
}

/// A new connection to the service with `placement`, limited to the
/// invoking function's memory and time (the service's defaults where it
/// has none), starting or restarting the service as needed.
pub(crate) fn connect(
    service: &mut Option<Service>,
    program: &Path,
    placement: &str,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
) -> Result<OwnedFd, EngineError> {
    let grant = serde_json::json!({
        "placement": placement, "memory_bytes": memory_bytes, "timeout_ms": timeout_ms,
    })
    .to_string();
    for _ in 0..2 {
        let alive = service
            .as_mut()
            .is_some_and(|s| matches!(s.child.try_wait(), Ok(None)));
        if !alive {
            *service = Some(start(program)?);
        }
        let Some(control) = service.as_ref().and_then(|s| s.control.as_ref()) else {
            continue;
        };
        let (ours, theirs) =
            seqpacket_pair().map_err(EngineError::io("creating an accelerator connection"))?;
        if send_with_fd(control.as_fd(), grant.as_bytes(), Some(theirs.as_fd())).is_ok() {
            return Ok(ours);
        }
        *service = None; // it died between the check and the send: once more
    }
    Err(EngineError::Io {
        what: "reaching the accelerator service",
        source: std::io::Error::other(
            "alcove-accel exited at once; run `alcove accel info` to see why",
        ),
    })
}
