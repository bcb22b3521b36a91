//! The messages between the daemon and the agent: one JSON object per
//! SOCK_SEQPACKET message, descriptors attached with SCM_RIGHTS.

use serde::{Deserialize, Serialize};

/// The longest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 256 << 10;
/// The most entries one listing returns (it says when it stopped there).
pub const MAX_ENTRIES: usize = 1000;
/// The start of an upload's file name until it lands in place (a watch of
/// its directory does not show it).
pub const UPLOAD_PREFIX: &str = ".alcove-upload-";
/// About the most bytes one listing's entries take (it stops there too).
pub const MAX_LIST_BYTES: usize = 128 << 10;
/// The socket buffer each end gets: room for a [`MAX_MESSAGE`] message.
pub const SOCKET_BUFFER: i32 = 2 * MAX_MESSAGE as i32;

/// Daemon to agent. Each carries an id its reply repeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start a command. The message's descriptors become the command's
    /// descriptors 0, 1, 2 (and 3 when a fourth is sent), in that order.
    /// With `pty`, none is sent: the agent opens a terminal in the
    /// sandbox's own devpts, gives the command its slave as 0, 1, 2 and as
    /// its controlling terminal, and sends the master back with `Started`.
    Exec {
        id: u64,
        argv: Vec<String>,
        /// Added to (or replacing in) the sandbox's own environment.
        env: Vec<(String, String)>,
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pty: Option<PtySize>,
        /// Keep the sandbox's own filter, which lets a process `unshare`
        /// the namespaces of a fork (the code interpreter only); every other
        /// command gets the copy filter on top, which refuses that.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forkable: bool,
    },
    /// Open a file and send its descriptor back. `write` creates or
    /// truncates it (mode 0644, parents made); otherwise it is opened to read.
    Open {
        id: u64,
        path: String,
        write: bool,
    },
    /// Write a regular file whole: a child of the agent (so the sandbox's
    /// limits hold what is written) copies the first attached pipe into a
    /// new file (named [`UPLOAD_PREFIX`]...) until its end, syncs it and
    /// writes a byte into the third; then a byte from the second lands
    /// it over `path` (the file `path`'s links lead to: renamed over it,
    /// or copied into it where it cannot be replaced), and an end without
    /// one removes it. Answered `Started`, ended by `Exited` (code 0, or
    /// the errno that stopped it; ECANCELED: let go).
    Write {
        id: u64,
        path: String,
    },
    List {
        id: u64,
        path: String,
    },
    /// A file, a symlink or an empty directory.
    Remove {
        id: u64,
        path: String,
    },
    /// A directory and its missing parents.
    Mkdir {
        id: u64,
        path: String,
    },
    /// An inotify descriptor watching `path` (a directory), sent back; or,
    /// with a pipe attached, its events copied into that pipe by a child
    /// of the agent (answered `Started`): for a sandbox that cannot hand
    /// its descriptors out (gVisor's).
    Watch {
        id: u64,
        path: String,
    },
    /// Open a regular file to read and copy it into the attached pipe in a
    /// child of the agent (answered `Started` with its size, ended by
    /// `Exited`): `Open` for a sandbox that cannot hand descriptors out.
    Read {
        id: u64,
        path: String,
    },
    /// A signal to a command this agent started, and its process group.
    Signal {
        id: u64,
        pid: i32,
        signal: i32,
    },
    /// Add to (or replace in) the environment every later command and the
    /// interpreter start with: a ready sandbox's, claimed by a create that
    /// gives one.
    SetEnv {
        id: u64,
        env: Vec<(String, String)>,
    },
    /// Watch a process of the sandbox the agent did not start (a forked
    /// sandbox's interpreter, made before the agent ran): answered
    /// `Started`, ended by `Exited`, like a command; without a status where
    /// it is not the agent's child (another process reaps it).
    Adopt {
        id: u64,
        pid: i32,
    },
    /// Reap, as soon as it ends, a child of the agent that it did not
    /// start, named by the pidfd that comes with the request: a fork's
    /// interpreter, whose parent the agent became when the session's child
    /// that made it ended. Nothing is reported (the fork's own agent reads
    /// how it ended from its own pidfd once it is reaped). Answered `Done`.
    Reap {
        id: u64,
    },
}

impl Request {
    pub fn id(&self) -> u64 {
        match self {
            Request::Exec { id, .. }
            | Request::Open { id, .. }
            | Request::Write { id, .. }
            | Request::List { id, .. }
            | Request::Remove { id, .. }
            | Request::Mkdir { id, .. }
            | Request::Watch { id, .. }
            | Request::Read { id, .. }
            | Request::Signal { id, .. }
            | Request::SetEnv { id, .. }
            | Request::Adopt { id, .. }
            | Request::Reap { id } => *id,
        }
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl PtySize {
    /// The most columns or rows a terminal is given.
    pub const MAX: u16 = 1000;

    /// A size within 1..=[`PtySize::MAX`] each way, or why not.
    pub fn new(cols: u64, rows: u64) -> Result<PtySize, String> {
        let bounded = |what: &str, n: u64| {
            u16::try_from(n)
                .ok()
                .filter(|n| (1..=Self::MAX).contains(n))
                .ok_or_else(|| format!("pty {what} {n}: give 1 to {}", Self::MAX))
        };
        Ok(PtySize {
            cols: bounded("cols", cols)?,
            rows: bounded("rows", rows)?,
        })
    }
}

/// Agent to daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Sent once, when the agent is ready for requests.
    Ready {
        pid: i32,
    },
    /// A command started (the pid is in the sandbox's pid namespace); its
    /// terminal's master is attached when it was asked for one.
    Started {
        id: u64,
        pid: i32,
        /// A read's file size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// Done; a descriptor may be attached (open, watch).
    Done {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    Listed {
        id: u64,
        entries: Vec<Entry>,
        truncated: bool,
    },
    Failed {
        id: u64,
        failure: AgentFailure,
    },
    /// A command this agent started ended.
    Exited {
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Why a request failed, in a form the API maps to a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentFailure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    NotEmpty,
    Invalid,
    Other,
}

impl AgentFailure {
    /// From an OS error met while doing `what`.
    pub fn io(what: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => FailureKind::NotFound,
            K::PermissionDenied => FailureKind::PermissionDenied,
            K::AlreadyExists => FailureKind::AlreadyExists,
            K::InvalidInput | K::InvalidData => FailureKind::Invalid,
            _ => match e.raw_os_error() {
                Some(libc::ENOTDIR) => FailureKind::NotADirectory,
                Some(libc::EISDIR) => FailureKind::IsADirectory,
                Some(libc::ENOTEMPTY) => FailureKind::NotEmpty,
                Some(libc::EPERM) | Some(libc::EROFS) => FailureKind::PermissionDenied,
                _ => FailureKind::Other,
            },
        };
        AgentFailure {
            kind,
            message: format!("{what}: {e}"),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        AgentFailure {
            kind: FailureKind::Invalid,
            message: message.into(),
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A change in a watched directory, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    /// `create`, `modify`, `delete`, `move`, or `overflow` (events were lost: look again).
    pub event: &'static str,
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_size_is_bounded() {
        assert_eq!(PtySize::new(80, 24), Ok(PtySize { cols: 80, rows: 24 }));
        assert!(PtySize::new(1, 1000).is_ok());
        for (cols, rows) in [
            (0, 24),
            (80, 0),
            (1001, 24),
            (80, 1001),
            (1 << 16, 24),
            (u64::MAX, 1),
        ] {
            let refused = PtySize::new(cols, rows).unwrap_err();
            assert!(refused.contains("give 1 to 1000"), "{refused}");
        }
    }

    #[test]
    fn an_exec_without_a_terminal_reads_and_writes_as_before() {
        // An exec from a daemon that knows nothing of terminals still parses.
        let old = r#"{"op":"exec","id":3,"argv":["true"],"env":[],"cwd":null}"#;
        let Request::Exec { pty, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(pty, None);
        // And one without a terminal says nothing of one.
        let request = Request::Exec {
            id: 3,
            argv: vec!["true".into()],
            env: Vec::new(),
            cwd: None,
            pty: None,
            forkable: false,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(
            !text.contains("pty") && !text.contains("forkable"),
            "{text}"
        );
        let with = Request::Exec {
            id: 4,
            argv: vec!["sh".into()],
            env: Vec::new(),
            cwd: None,
            pty: Some(PtySize {
                cols: 100,
                rows: 30,
            }),
            forkable: true,
        };
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains(r#""pty":{"cols":100,"rows":30}"#), "{text}");
        assert!(text.contains(r#""forkable":true"#), "{text}");
    }
}
