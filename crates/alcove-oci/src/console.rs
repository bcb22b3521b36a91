//! The container's terminal, handed over as runc does (runc's
//! `docs/terminals.md`): with `process.terminal`, the caller (conmon, the
//! containerd shim) listens on a unix socket and passes its path as
//! `--console-socket`. The runtime connects before entering the container;
//! the container's init (or an exec'd process) opens a pty in the
//! container's own devpts, makes the slave its stdio and controlling
//! terminal, and sends the master back over the socket (SCM_RIGHTS), so the
//! caller owns the terminal and the runtime can exit.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use alcove_sys::{fd, process, pty, unix};

/// What went wrong setting up the container's terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console socket could not be reached.
    #[error("could not connect to the console socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path held a NUL byte.
    #[error("the path {0} holds a NUL byte")]
    NulInPath(PathBuf),
    /// The pty could not be opened, unlocked or named.
    #[error("could not open a pty through {path}")]
    OpenPty {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TIOCSWINSZ failed.
    #[error("could not set the terminal's size to {rows}x{cols}")]
    SetSize {
        rows: u16,
        cols: u16,
        #[source]
        source: std::io::Error,
    },
    /// setsid failed.
    #[error("could not start a new session")]
    Setsid(#[source] std::io::Error),
    /// TIOCSCTTY failed.
    #[error("could not make the pty the controlling terminal")]
    ControllingTerminal(#[source] std::io::Error),
    /// dup3 onto 0, 1 or 2 failed.
    #[error("could not make the pty descriptor {target}")]
    Dup {
        target: i32,
        #[source]
        source: std::io::Error,
    },
    /// fchown of the slave failed.
    #[error("could not give the terminal to uid {uid}")]
    SetOwner {
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    /// sendmsg on the console socket failed.
    #[error("could not send the pty master over the console socket")]
    Send(#[source] std::io::Error),
}

/// A freshly opened, unlocked pty.
#[derive(Debug)]
pub struct Pty {
    /// The side the caller keeps (sent over the console socket).
    pub master: OwnedFd,
    /// The side the container's process gets as stdio.
    pub slave: OwnedFd,
    /// The slave's path as seen by the process that opened it, `/dev/pts/N`
    /// beside the `ptmx` used (what ptsname(3) reports).
    pub name: String,
    /// The path the master was opened through: runc sends the master's file
    /// name (`/dev/ptmx`) as the message's payload, and so do we.
    pub master_name: String,
}

/// Connects to the caller's console socket (a SOCK_STREAM unix socket it
/// listens on), done by the runtime before it enters the container, whose
/// mount namespace may not see the path. The descriptor is close-on-exec.
pub fn connect(path: &Path) -> Result<OwnedFd, ConsoleError> {
    UnixStream::connect(path)
        .map(OwnedFd::from)
        .map_err(|source| ConsoleError::Connect {
            path: path.to_owned(),
            source,
        })
}

/// Opens a new pty through `ptmx` (e.g. `/dev/ptmx` after pivot_root, or
/// `<rootfs>/dev/pts/ptmx` before it), unlocks it and opens its slave
/// without a path lookup. Both ends are close-on-exec and the slave is
/// opened O_NOCTTY: [`become_controlling`] decides that explicitly.
pub fn open_pty(ptmx: &Path) -> Result<Pty, ConsoleError> {
    let c_path = CString::new(ptmx.as_os_str().as_bytes())
        .map_err(|_| ConsoleError::NulInPath(ptmx.to_owned()))?;
    let fail = |source| ConsoleError::OpenPty {
        path: ptmx.to_owned(),
        source,
    };
    let master = pty::open_master(&c_path).map_err(fail)?;
    pty::unlock(master.as_fd()).map_err(fail)?;
    let number = pty::number(master.as_fd()).map_err(fail)?;
    let slave = pty::open_slave(master.as_fd(), true).map_err(fail)?;
    // `/dev/ptmx` is normally a symlink or bind of `/dev/pts/ptmx`; either
    // way its slaves live in the `pts` directory of the same /dev.
    let dev = match ptmx.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "pts") => parent.to_owned(),
        Some(parent) => parent.join("pts"),
        None => PathBuf::from("/dev/pts"),
    };
    Ok(Pty {
        master,
        slave,
        name: dev.join(number.to_string()).to_string_lossy().into_owned(),
        master_name: ptmx.to_string_lossy().into_owned(),
    })
}

/// Sets the terminal's window size (`process.consoleSize`: height is rows,
/// width is columns). runc skips it when either is zero; so does the caller.
pub fn set_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), ConsoleError> {
    pty::set_window_size(fd, rows, cols).map_err(|source| ConsoleError::SetSize {
        rows,
        cols,
        source,
    })
}

/// Makes `slave` the calling process's controlling terminal and its stdin,
/// stdout and stderr: a new session unless it already leads one (the
/// container's init may have called setsid earlier, as runc's does), then
/// TIOCSCTTY, then dup3 onto 0, 1 and 2 (which survive execve). `slave` is
/// closed afterwards unless it already was one of 0, 1, 2.
pub fn become_controlling(slave: OwnedFd) -> Result<(), ConsoleError> {
    if !pty::is_session_leader() {
        process::setsid().map_err(ConsoleError::Setsid)?;
    }
    pty::set_controlling_terminal(slave.as_fd()).map_err(ConsoleError::ControllingTerminal)?;
    for target in 0..=2 {
        fd::dup_onto(slave.as_raw_fd(), target)
            .map_err(|source| ConsoleError::Dup { target, source })?;
    }
    if (0..=2).contains(&slave.as_raw_fd()) {
        // Dropping it would close a descriptor that is now stdio.
        let _stdio = slave.into_raw_fd();
    }
    Ok(())
}

/// Gives the slave to the container process's user (`process.user.uid`),
/// keeping its group, as runc's `fixStdioPermissions` does for a terminal:
/// otherwise a non-root process could not reopen `/dev/tty` or change its
/// own terminal's modes. Call it before dropping privileges.
pub fn give_to_user(slave: BorrowedFd<'_>, uid: u32) -> Result<(), ConsoleError> {
    pty::set_owner(slave, uid).map_err(|source| ConsoleError::SetOwner { uid, source })
}

/// Sends `pty`'s master over the console socket: one message whose payload
/// is the master's name (as runc's `utils.SendFd`) with the descriptor
/// attached as SCM_RIGHTS. The caller closes its own copy afterwards.
pub fn send_master(socket: BorrowedFd<'_>, pty: &Pty) -> Result<(), ConsoleError> {
    unix::send_with_fd(socket, pty.master_name.as_bytes(), Some(pty.master.as_fd()))
        .map_err(ConsoleError::Send)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const HELPER_ENV: &str = "ALCOVE_OCI_CONSOLE_HELPER";

    /// The container side, run in a child process (this test binary,
    /// re-executed with `HELPER_ENV` naming the socket): a new session and a
    /// controlling terminal cannot be tried inside the test harness itself.
    /// Without the variable it does nothing.
    #[test]
    fn console_helper_child() {
        let Some(socket_path) = std::env::var_os(HELPER_ENV) else {
            return;
        };
        let socket = connect(Path::new(&socket_path)).expect("connect");
        let pty = open_pty(Path::new("/dev/ptmx")).expect("open pty");
        set_size(pty.slave.as_fd(), 24, 91).expect("set size");
        send_master(socket.as_fd(), &pty).expect("send master");
        let Pty { master, slave, .. } = pty;
        drop(master);
        drop(socket);
        become_controlling(slave).expect("become controlling");
        // Through fd 1, not print!: the harness captures print!.
        fd::write_all(1, b"hello from the container\n").unwrap();
        // /dev/tty opens only for a process with a controlling terminal.
        let mut tty = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/tty")
            .expect("open /dev/tty");
        let (rows, cols) = pty::window_size(std::io::stdout().as_fd()).unwrap();
        std::io::Write::write_all(&mut tty, format!("tty ok {rows}x{cols}\n").as_bytes()).unwrap();
        // Wait for the other side to answer through stdin, so the master
        // is not read after the slave has gone.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), "bye");
        fd::write_all(1, b"got bye\n").unwrap();
    }

    fn read_until(master: &OwnedFd, want: &str, deadline: Instant) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&seen).contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {want:?} from the pty; got {:?}",
                String::from_utf8_lossy(&seen)
            );
            let mut pfd = [libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if fd::poll(&mut pfd, Some(left)).unwrap() == 0 {
                continue;
            }
            match fd::read(master.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the master: {e}; got {seen:?}"),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[test]
    fn the_master_arrives_over_the_socket_and_carries_the_childs_output() {
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&socket_path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "console::tests::console_helper_child",
                "--test-threads=1",
                "--quiet",
            ])
            .env(HELPER_ENV, &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.try_wait().unwrap() {
                        let mut err = String::new();
                        child.stderr.take().unwrap().read_to_string(&mut err).ok();
                        panic!("the helper exited ({status}) before connecting: {err}");
                    }
                    assert!(Instant::now() < deadline, "the helper never connected");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut payload = [0u8; 256];
        let (n, master) = unix::recv_with_fd(stream.as_fd(), &mut payload).unwrap();
        assert_eq!(&payload[..n], b"/dev/ptmx");
        let master = master.expect("a descriptor came with the message");
        assert!(pty::is_terminal(master.as_fd()));

        let out = read_until(&master, "tty ok", deadline);
        assert!(out.contains("hello from the container"), "{out:?}");
        assert!(out.contains("tty ok 24x91"), "{out:?}");
        fd::write_all(master.as_raw_fd(), b"bye\n").unwrap();
        let out = read_until(&master, "got bye", deadline);
        assert!(out.contains("got bye"), "{out:?}");

        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the helper did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).ok();
        assert!(status.success(), "the helper failed ({status}): {err}");
    }

    #[test]
    fn a_missing_socket_or_ptmx_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nobody-listens");
        let err = connect(&gone).unwrap_err();
        assert!(err.to_string().contains("nobody-listens"), "{err}");
        let err = open_pty(&dir.path().join("ptmx")).unwrap_err();
        assert!(matches!(err, ConsoleError::OpenPty { .. }), "{err}");
    }

    #[test]
    fn the_slave_name_follows_the_ptmx_path() {
        let pty = open_pty(Path::new("/dev/pts/ptmx")).unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        let pty2 = open_pty(Path::new("/dev/ptmx")).unwrap();
        assert!(pty2.name.starts_with("/dev/pts/"), "{}", pty2.name);
        assert_ne!(pty.name, pty2.name);
        assert!(Path::new(&pty2.name).exists());
    }
}
