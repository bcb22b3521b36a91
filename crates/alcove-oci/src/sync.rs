//! The messages the runtime and the processes it forks exchange while a
//! container (or an exec'd process) is set up: one JSON document per
//! SOCK_SEQPACKET message, a descriptor attached where one travels.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// The largest message (an error text, a state document).
const MAX_MESSAGE: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// The setup process has made its user namespace (if any): map it and
    /// place it in its cgroup.
    SetupReady,
    /// Go on.
    Go,
    /// The container's init (or exec'd process) is this pid, in the runtime's
    /// pid namespace.
    Pid(i32),
    /// The init has mounted the rootfs and waits for the createRuntime hooks.
    Mounted,
    /// The state hooks read, and go on.
    HookState(String),
    /// Set up; the init now waits for `start` (or the process execs).
    Ready,
    /// Setup failed; the text is what the user should see.
    Fail(String),
}

/// One end of the setup channel.
pub struct Channel(pub OwnedFd);

impl Channel {
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = alcove_sys::unix::seqpacket_pair()?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        alcove_sys::unix::send_with_fd(self.0.as_fd(), &bytes, None)
    }

    /// The next message; `Ok(None)` when the other end closed without one
    /// (it died, or exec'd: the channel is close-on-exec).
    pub fn recv(&self) -> io::Result<Option<Msg>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match alcove_sys::unix::recv_with_fd(self.0.as_fd(), &mut buf) {
                Ok((0, _)) => return Ok(None),
                Ok((n, _)) => {
                    return serde_json::from_slice(&buf[..n])
                        .map(Some)
                        .map_err(io::Error::other)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
