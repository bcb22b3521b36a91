//! The accelerator service functions deployed with `--accel` reach: one
//! `alcove-accel serve` process per daemon, started on first use and again
//! if it dies; each invocation gets its own connection, granted the
//! function's placement, which the sandbox inherits.

use crate::EngineError;
use alcove_sys::unix::{send_with_fd, seqpacket_pair};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub(crate) struct Service {
    child: Child,
    control: OwnedFd,
}

impl Drop for Service {
    fn drop(&mut self) {
        // Closing the control socket ends it; kill it in case it is stuck.
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
    Ok(Service { child, control })
}

/// A new connection to the service with `placement`, starting or
/// restarting the service as needed.
pub(crate) fn connect(
    service: &mut Option<Service>,
    program: &Path,
    placement: &str,
) -> Result<OwnedFd, EngineError> {
    let grant = format!("{{\"placement\":\"{placement}\"}}");
    for _ in 0..2 {
        let alive = service
            .as_mut()
            .is_some_and(|s| matches!(s.child.try_wait(), Ok(None)));
        if !alive {
            *service = Some(start(program)?);
        }
        let s = service.as_ref().expect("started");
        let (ours, theirs) =
            seqpacket_pair().map_err(EngineError::io("creating an accelerator connection"))?;
        if send_with_fd(s.control.as_fd(), grant.as_bytes(), Some(theirs.as_fd())).is_ok() {
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
