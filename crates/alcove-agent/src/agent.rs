//! The agent: pid 1 of an agent sandbox. One thread, one loop: a request
//! from the daemon, or one of its commands ending. It runs as the sandbox's
//! user under the sandbox's filters, so it can do nothing its commands could
//! not; what it adds is that the daemon can ask.

use crate::protocol::{
    AgentFailure, Entry, EntryKind, PtySize, Reply, Request, MAX_ENTRIES, MAX_MESSAGE,
    UPLOAD_PREFIX,
};
use alcove_sys::pidfd::{ExitInfo, ExitStatus};
use alcove_sys::{fd, process, pty, seqpacket};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The commands running, by pid, each with a pidfd that wakes the loop
/// (none on a kernel without pidfds, gVisor's: the loop then looks for
/// their ends by itself, see [`Agent::wake`]).
type Running = HashMap<i32, Option<OwnedFd>>;

/// Children it did not start that it reaps as they end, at most: a
/// quarter of its open-file limit (a pidfd each; the rest is for its
/// commands' pidfds and the descriptors requests bring), and no more than
/// this. Beyond, its once-a-second look for orphans reaps them.
const MAX_REAPING: usize = 1024;

/// How often the loop looks for the end of a command it has no pidfd for:
/// a quarter of the time since the latest such start, within these bounds
/// (a short command's end is seen within a millisecond or two; a server
/// that runs for hours costs ten wakes a second).
const LOOK_SOONEST: Duration = Duration::from_millis(1);
const LOOK_LATEST: Duration = Duration::from_millis(100);

/// How long an ended command's report waits for the rest of its process
/// group to die after a SIGKILL to the group (a process stuck in the kernel
/// cannot hold the answer back longer).
const GROUP_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long an adopted process's end waits for its parent to reap it, so
/// that the kernel can say how it ended (its parent, another sandbox's
/// agent, reaps it at once, watching it for [`Request::Reap`], or else
/// within its one-second wake).
const FOREIGN_REAP_LIMIT: Duration = Duration::from_millis(1500);

/// An adopted process that ended, waiting for its parent's reap.
struct ForeignEnd {
    pid: i32,
    pidfd: OwnedFd,
    until: std::time::Instant,
}

/// Serves the daemon on the socket named by `$ALCOVE_AGENT_FD` (inherited
/// from the daemon); returns the exit code.
pub fn serve_inherited() -> i32 {
    let Some(raw) = std::env::var(crate::AGENT_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<std::os::fd::RawFd>().ok())
        .filter(|fd| *fd > 2 || (*fd == 0 && is_socket(0)))
        .and_then(|fd| if fd == 0 { stdin_moved_up() } else { Some(fd) })
    else {
        eprintln!(
            "alcove sandbox-agent runs inside an agent sandbox, started by the daemon (no ${} here)",
            crate::AGENT_FD_ENV
        );
        return 2;
    };
    // The number must name an open unix socket before it is taken as one.
    if !alcove_sys::fd::is_open(raw) || !is_socket(raw) {
        eprintln!("alcove sandbox-agent: descriptor {raw} is not the daemon's socket");
        return 2;
    }
    if std::env::var_os(crate::FORK_INIT_ENV).is_some() {
        std::env::remove_var(crate::FORK_INIT_ENV);
        if let Err(e) = become_fork_init() {
            eprintln!("alcove sandbox-agent: as pid 1 of a fork: {e}");
            return 2;
        }
    }
    // Not dumpable: the sandbox's code, the same user, cannot reach into it
    // (no ptrace, no pidfd_getfd of its socket, no /proc/1/fd or environ).
    // What it starts is dumpable again after its exec.
    if let Err(e) = process::set_dumpable(false) {
        eprintln!("alcove sandbox-agent: {e}");
        return 2;
    }
    // Never inherited by the commands it starts: only the agent speaks for the sandbox.
    if let Err(e) = fd::set_cloexec(raw, true) {
        eprintln!("alcove sandbox-agent: {e}");
        return 2;
    }
    // SAFETY: `raw` is open and a socket (checked above), inherited from the
    // daemon for this purpose; nothing else in this process owns or closes it.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    std::env::remove_var(crate::AGENT_FD_ENV);
    serve(sock)
}

/// A fork's home ([`Agent::home`]), set by [`become_fork_init`].
static FORK_HOME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// pid 1 of a fork with memory (alcove_fork.py): its /proc, mounted with
/// the CAP_SYS_ADMIN it was spawned with, then no capability left (its
/// bounding set is empty already). The daemon checks both from /proc.
fn become_fork_init() -> io::Result<()> {
    if std::process::id() != 1 {
        return Err(io::Error::other("it is not pid 1 of its pid namespace"));
    }
    let proc = c"proc";
    alcove_sys::mount::mount(
        Some(proc),
        c"/proc",
        Some(proc),
        alcove_sys::mount::MS_NOSUID | alcove_sys::mount::MS_NODEV | alcove_sys::mount::MS_NOEXEC,
        None,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("mounting /proc: {e}")))?;
    // Its commands start where a sandbox's do, not where its spawner was:
    // in its home, by path at each start (see `Agent::home`).
    if let Some(home) = std::env::var_os("HOME") {
        std::env::set_current_dir(&home).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("changing to {}: {e}", Path::new(&home).display()),
            )
        })?;
        if let Some(home) = home.to_str() {
            let _ = FORK_HOME.set(home.to_owned());
        }
    }
    alcove_sys::caps::clear_ambient()?;
    alcove_sys::caps::clear_all()
}

/// The gVisor tier hands the socket in as stdin (runsc passes on only
/// stdio): moved above 2 (close-on-exec), /dev/null in its place, so that
/// nothing the agent starts without its own stdin reads the daemon's socket.
fn stdin_moved_up() -> Option<std::os::fd::RawFd> {
    use std::os::fd::IntoRawFd;
    // SAFETY: descriptor 0 is open (checked by the caller) for this call.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    // F_DUPFD_CLOEXEC from 3.
    let moved = stdin.try_clone_to_owned().ok()?;
    let null = std::fs::File::open("/dev/null").ok()?;
    fd::dup_onto(null.as_raw_fd(), 0).ok()?;
    Some(moved.into_raw_fd())
}

fn is_socket(raw: std::os::fd::RawFd) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(format!("/proc/self/fd/{raw}")).is_ok_and(|m| m.file_type().is_socket())
}

/// Serves the daemon on `sock` until it closes it; returns the exit code.
pub fn serve(sock: OwnedFd) -> i32 {
    let copy_filter = match std::env::var_os(crate::COPY_FILTER_ENV) {
        None => None,
        Some(path) => match read_filter(Path::new(&path)) {
            Ok(filter) => Some(std::sync::Arc::new(filter)),
            Err(e) => {
                // Without it every command could make namespaces: no sandbox.
                eprintln!(
                    "alcove sandbox-agent: the copy filter {}: {e}",
                    Path::new(&path).display()
                );
                return 2;
            }
        },
    };
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k != crate::AGENT_FD_ENV && k != crate::COPY_FILTER_ENV)
        .collect();
    let mut agent = Agent {
        sock,
        env,
        running: Running::new(),
        group_killed: std::collections::HashSet::new(),
        draining: Vec::new(),
        copy_filter,
        unwatched_since: None,
        foreign: HashMap::new(),
        foreign_ending: Vec::new(),
        reaping: Vec::new(),
        max_reaping: alcove_sys::process::open_files_limit().map_or(64, |n| {
            usize::try_from(n / 4)
                .unwrap_or(MAX_REAPING)
                .min(MAX_REAPING)
        }),
        starter: crate::start::Starter::new(),
        uploads: HashMap::new(),
        home: FORK_HOME.get().cloned(),
    };
    if agent
        .send(
            &Reply::Ready {
                pid: std::process::id() as i32,
            },
            &[],
        )
        .is_err()
    {
        return 1;
    }
    agent.run()
}

/// An ended command's report, held back while its killed group dies.
struct Drain {
    exited: Reply,
    group: i32,
    until: std::time::Instant,
}

struct Agent {
    sock: OwnedFd,
    env: Vec<(String, String)>,
    running: Running,
    /// Commands whose whole process group was sent SIGKILL.
    group_killed: std::collections::HashSet<i32>,
    /// Ended commands whose report waits until their killed group is gone,
    /// so that "it ended" also means nothing it started still runs.
    draining: Vec<Drain>,
    /// Stacked on every command but a forkable one (the interpreter).
    copy_filter: Option<std::sync::Arc<Vec<libc::sock_filter>>>,
    starter: crate::start::Starter,
    /// When the latest command without a pidfd started.
    unwatched_since: Option<std::time::Instant>,
    /// Adopted processes that are not its children (a fork's interpreter,
    /// whose parent left outside this pid namespace): watched through their
    /// pidfd; how they ended is known once their parent reaps them, and only
    /// on Linux 6.15 and later (the kernel keeps it on the pidfd).
    foreign: HashMap<i32, OwnedFd>,
    /// Adopted processes that ended and await their parent's reap.
    foreign_ending: Vec<ForeignEnd>,
    /// Children it did not start, reaped as they end (its forks'
    /// interpreters, see [`Request::Reap`]): their pidfds.
    reaping: Vec<OwnedFd>,
    /// How many `reaping` may hold (see [`MAX_REAPING`]).
    max_reaping: usize,
    /// Uploads' copies, by pid: the new file each writes until it lands.
    uploads: HashMap<i32, AtDir>,
    /// A fork's: where a command given no directory starts, by path, found
    /// again at each start. The fork's agent started before its own home
    /// was mounted over its parent's, so its own working directory may be
    /// the parent's home.
    home: Option<String>,
}

/// Sends `signal` to the process group that the process behind `pidfd`
/// (pid `pid` here) leads; whether it was sent. Linux 6.9+ names the group
/// through the pidfd itself; before (EINVAL), `kill(-pid)` once the pidfd
/// says the leader has not been reaped: at that check neither its pid nor
/// its group's id can be another's (a reuse in the moment between would
/// need the leader reaped, its group empty and the pid given out again, all
/// within this sandbox's pid namespace, the only one `kill` reaches here).
fn signal_group_of(pidfd: BorrowedFd<'_>, pid: i32, signal: i32) -> bool {
    match alcove_sys::pidfd::send_signal_to_group(pidfd, signal) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            alcove_sys::pidfd::send_signal(pidfd, 0).is_ok() && process::kill(-pid, signal).is_ok()
        }
        Err(_) => false,
    }
}

/// A pidfd for `pid`, or none where the kernel has none (gVisor's).
fn watch_child(pid: i32, what: &str) -> Result<Option<OwnedFd>, AgentFailure> {
    match seqpacket::pidfd_open(pid) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(None),
        Err(e) => Err(AgentFailure::io(what, &e)),
    }
}

/// A seccomp program as raw `struct sock_filter`s (8 bytes each).
fn read_filter(path: &Path) -> io::Result<Vec<libc::sock_filter>> {
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > libc::BPF_MAXINSNS as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes is not a seccomp program", bytes.len()),
        ));
    }
    Ok(alcove_sys::seccomp::filter_from_bytes(&bytes))
}

impl Agent {
    fn run(&mut self) -> i32 {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut polled: Vec<libc::pollfd> = std::iter::once(self.sock.as_raw_fd())
                .chain(self.running.values().flatten().map(|p| p.as_raw_fd()))
                .chain(self.foreign.values().map(|p| p.as_raw_fd()))
                .chain(self.reaping.iter().map(|p| p.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // Orphans reparented to pid 1 are reaped on each wake, at least
            // once a second; often while a killed group is dying.
            let wake = self.wake();
            if let Err(e) = fd::poll(&mut polled, Some(wake)) {
                eprintln!("alcove agent: poll: {e}");
                return 1;
            }
            // The watched children come last in the poll.
            let first_watched = polled.len() - self.reaping.len();
            self.reap_watched(&polled[first_watched..]);
            self.reap();
            if polled[0].revents == 0 {
                continue;
            }
            let (n, fds) = match seqpacket::recv_fds(self.sock.as_fd(), &mut buf, true) {
                Ok((0, _)) => return 0, // the daemon is gone: so is this sandbox
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => continue, // refused
                Err(_) => return 0,
            };
            let request: Request = match serde_json::from_slice(&buf[..n]) {
                Ok(r) => r,
                Err(_) => continue, // not from alcove's daemon; nothing to answer
            };
            let id = request.id();
            let (reply, attach) = match self.handle(request, fds) {
                Ok(done) => done,
                Err(failure) => (Reply::Failed { id, failure }, None),
            };
            let attach: Vec<BorrowedFd<'_>> = attach.iter().map(|f| f.as_fd()).collect();
            match self.send(&reply, &attach) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    let failure = AgentFailure::invalid("the answer is too long to send");
                    if self.send(&Reply::Failed { id, failure }, &[]).is_err() {
                        return 0;
                    }
                }
                Err(_) => return 0,
            }
        }
    }

    /// How long the loop may sleep: a second, less while a killed group
    /// dies or a command without a pidfd runs.
    fn wake(&mut self) -> Duration {
        let mut wake = match self.draining.is_empty() {
            true => Duration::from_secs(1),
            false => Duration::from_millis(2),
        };
        if !self.foreign_ending.is_empty() {
            wake = wake.min(LOOK_SOONEST);
        }
        if self.running.values().any(Option::is_none) {
            let since = self.unwatched_since.map_or(Duration::ZERO, |t| t.elapsed());
            wake = wake.min((since / 4).clamp(LOOK_SOONEST, LOOK_LATEST));
        } else {
            self.unwatched_since = None;
        }
        wake
    }

    /// Tracks a started child, with its pidfd if the kernel gave one.
    fn track(&mut self, pid: i32, pidfd: Option<OwnedFd>) {
        if pidfd.is_none() {
            self.unwatched_since = Some(std::time::Instant::now());
        }
        self.running.insert(pid, pidfd);
    }

    fn send(&self, reply: &Reply, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
        seqpacket::send(self.sock.as_fd(), &bytes, fds)
    }

    fn reap(&mut self) {
        self.reap_foreign();
        while let Some((pid, status)) = process::reap_any() {
            // An upload's copy killed mid-way leaves its new file: not the old one's.
            if let Some(temp) = self.uploads.remove(&pid) {
                if libc::WIFSIGNALED(status) {
                    let _ = temp.remove();
                }
            }
            if self.running.remove(&pid).is_some() {
                let (code, signal) = if libc::WIFSIGNALED(status) {
                    (None, Some(libc::WTERMSIG(status)))
                } else {
                    (Some(libc::WEXITSTATUS(status)), None)
                };
                let exited = Reply::Exited { pid, code, signal };
                if self.group_killed.remove(&pid) && process::exists(-pid) {
                    self.draining.push(Drain {
                        exited,
                        group: pid,
                        until: std::time::Instant::now() + GROUP_DRAIN_LIMIT,
                    });
                } else {
                    let _ = self.send(&exited, &[]);
                }
            }
        }
        // The group's members are the agent's children once their leader is
        // gone (it is pid 1), so each is reaped above before this looks.
        let now = std::time::Instant::now();
        let (gone, waiting): (Vec<Drain>, Vec<Drain>) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|d| now >= d.until || !process::exists(-d.group));
        self.draining = waiting;
        for drained in gone {
            let _ = self.send(&drained.exited, &[]);
        }
    }

    /// Reaps the children watched for [`Request::Reap`] whose pidfd woke
    /// the poll (`polled`, in the order of `reaping`), and lets them go.
    fn reap_watched(&mut self, polled: &[libc::pollfd]) {
        let mut at = 0;
        self.reaping.retain(|pidfd| {
            let woke = polled.get(at).is_some_and(|p| p.revents != 0);
            at += 1;
            // Ended and reaped now, or not its child any more: either way done.
            !woke || matches!(alcove_sys::pidfd::reap_if_ended(pidfd.as_fd()), Ok(false))
        });
    }

    /// Reports the adopted processes that ended, with how they ended once
    /// their parent has reaped them (where the kernel can say).
    fn reap_foreign(&mut self) {
        let ended: Vec<i32> = self
            .foreign
            .iter()
            .filter(|(_, pidfd)| matches!(fd::readable(pidfd.as_fd(), Duration::ZERO), Ok(true)))
            .map(|(pid, _)| *pid)
            .collect();
        let now = std::time::Instant::now();
        let until = now + FOREIGN_REAP_LIMIT;
        for pid in ended {
            if let Some(pidfd) = self.foreign.remove(&pid) {
                self.foreign_ending.push(ForeignEnd { pid, pidfd, until });
            }
        }
        let mut waiting = Vec::new();
        for end in std::mem::take(&mut self.foreign_ending) {
            let (code, signal) = match alcove_sys::pidfd::exit_state(end.pidfd.as_fd()) {
                ExitInfo::Ended(ExitStatus::Exited(code)) => (Some(code), None),
                ExitInfo::Ended(ExitStatus::Signaled(signal)) => (None, Some(signal)),
                ExitInfo::NotReaped if now < end.until => {
                    waiting.push(end);
                    continue;
                }
                ExitInfo::NotReaped | ExitInfo::Unknowable => (None, None),
            };
            let pid = end.pid;
            let _ = self.send(&Reply::Exited { pid, code, signal }, &[]);
        }
        self.foreign_ending = waiting;
    }

    fn handle(
        &mut self,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Reply, Option<OwnedFd>), AgentFailure> {
        match request {
            Request::Exec {
                id,
                argv,
                env,
                cwd,
                pty: None,
                forkable,
            } => {
                let cwd = cwd.or_else(|| self.home.clone());
                let pid = self.exec(&argv, env, cwd.as_deref(), fds, forkable)?;
                let size = None;
                Ok((Reply::Started { id, pid, size }, None))
            }
            Request::Exec {
                id,
                argv,
                env,
                cwd,
                pty: Some(size),
                forkable,
            } => {
                drop(fds); // its stdio is the terminal
                let cwd = cwd.or_else(|| self.home.clone());
                let (pid, master) = self.exec_pty(&argv, env, cwd.as_deref(), size, forkable)?;
                let size = None;
                Ok((Reply::Started { id, pid, size }, Some(master)))
            }
            Request::Open { id, path, write } => {
                let file = open(&path, write)?;
                let size = file.metadata().ok().map(|m| m.len());
                Ok((Reply::Done { id, size }, Some(file.into())))
            }
            Request::Write { id, path } => {
                let mut fds = fds.into_iter();
                let (Some(source), Some(verdict), Some(ready)) =
                    (fds.next(), fds.next(), fds.next())
                else {
                    return Err(AgentFailure::invalid(
                        "a write needs the pipe to read from, the one its verdict comes on and \
                         the one it says it is ready on",
                    ));
                };
                let (file, landing) = open_upload(&path)?;
                // Its own handle on the new file, to remove it if the copy is killed.
                let temp = match landing.temp.try_clone() {
                    Ok(temp) => temp,
                    Err(e) => {
                        let _ = landing.temp.remove();
                        return Err(AgentFailure::io("starting a copy", &e));
                    }
                };
                let pid = match self.copier(source, file.into(), Some((landing, ready, verdict))) {
                    Ok(pid) => pid,
                    Err(e) => {
                        let _ = temp.remove();
                        return Err(e);
                    }
                };
                self.uploads.insert(pid, temp);
                let size = None;
                Ok((Reply::Started { id, pid, size }, None))
            }
            Request::Read { id, path } => {
                let Some(into) = fds.into_iter().next() else {
                    return Err(AgentFailure::invalid("a read needs the pipe to write to"));
                };
                let file = open(&path, false)?;
                let size = file.metadata().ok().map(|m| m.len());
                let pid = self.copier(file.into(), into, None)?;
                Ok((Reply::Started { id, pid, size }, None))
            }
            Request::List { id, path } => {
                let (entries, truncated) = list(&path)?;
                Ok((
                    Reply::Listed {
                        id,
                        entries,
                        truncated,
                    },
                    None,
                ))
            }
            Request::Remove { id, path } => {
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| AgentFailure::io(&format!("removing {path}"), &e))?;
                let removed = if meta.is_dir() {
                    std::fs::remove_dir(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| AgentFailure::io(&format!("removing {path}"), &e))?;
                Ok((Reply::Done { id, size: None }, None))
            }
            Request::Mkdir { id, path } => {
                std::fs::create_dir_all(&path)
                    .map_err(|e| AgentFailure::io(&format!("making directory {path}"), &e))?;
                Ok((Reply::Done { id, size: None }, None))
            }
            Request::Watch { id, path } => {
                let c = CString::new(path.as_bytes())
                    .map_err(|_| AgentFailure::invalid("a path holds a NUL byte"))?;
                let watch = alcove_sys::fs::inotify_watch(&c)
                    .map_err(|e| AgentFailure::io(&format!("watching {path}"), &e))?;
                match fds.into_iter().next() {
                    None => Ok((Reply::Done { id, size: None }, Some(watch))),
                    Some(into) => {
                        let pid = self.copier(watch, into, None)?;
                        let size = None;
                        Ok((Reply::Started { id, pid, size }, None))
                    }
                }
            }
            Request::Signal { id, pid, signal } => {
                if let Some(pidfd) = self.foreign.get(&pid) {
                    // Not a command it started (a fork's interpreter): signalled
                    // through its pidfd, with what it started where it leads a
                    // group of its own (a fork's does, in a session of the
                    // fork's own); the process alone where it does not.
                    let group = process::group_of(pid) == Some(pid)
                        && signal_group_of(pidfd.as_fd(), pid, signal);
                    if !group {
                        alcove_sys::pidfd::send_signal(pidfd.as_fd(), signal)
                            .map_err(|e| AgentFailure::io("sending a signal", &e))?;
                    }
                    return Ok((Reply::Done { id, size: None }, None));
                }
                if !self.running.contains_key(&pid) {
                    return Err(AgentFailure {
                        kind: crate::FailureKind::NotFound,
                        message: format!("no running command has pid {pid}"),
                    });
                }
                // The command leads its own process group: what it started goes too.
                match process::kill(-pid, signal) {
                    Ok(()) if signal == libc::SIGKILL => {
                        self.group_killed.insert(pid);
                    }
                    Ok(()) => {}
                    Err(_) => process::kill(pid, signal)
                        .map_err(|e| AgentFailure::io("sending a signal", &e))?,
                }
                Ok((Reply::Done { id, size: None }, None))
            }
            Request::SetEnv { id, env } => {
                // All or nothing: checked before any is taken.
                let malformed = |(key, value): &(String, String)| {
                    key.is_empty() || key.contains(['=', '\0']) || value.contains('\0')
                };
                if env.iter().any(malformed) {
                    return Err(AgentFailure::invalid(
                        "an environment variable is malformed",
                    ));
                }
                for (key, value) in env {
                    match self.env.iter_mut().find(|(k, _)| *k == key) {
                        Some(entry) => entry.1 = value,
                        None => self.env.push((key, value)),
                    }
                }
                Ok((Reply::Done { id, size: None }, None))
            }
            Request::Reap { id } => {
                let Some(pidfd) = fds.into_iter().next() else {
                    return Err(AgentFailure::invalid(
                        "reap: the process's pidfd comes with it",
                    ));
                };
                if !alcove_sys::pidfd::is_child(pidfd.as_fd()) {
                    return Err(AgentFailure {
                        kind: crate::FailureKind::NotFound,
                        message: "reap: that process is not a child of the agent".into(),
                    });
                }
                if self.reaping.len() >= self.max_reaping {
                    return Err(AgentFailure::invalid(format!(
                        "reap: {} processes are watched already",
                        self.max_reaping
                    )));
                }
                self.reaping.push(pidfd);
                Ok((Reply::Done { id, size: None }, None))
            }
            Request::Adopt { id, pid } => {
                let not_found = || AgentFailure {
                    kind: crate::FailureKind::NotFound,
                    message: format!("pid {pid} is not a process of the sandbox"),
                };
                if pid <= 1 || self.running.contains_key(&pid) || self.foreign.contains_key(&pid) {
                    return Err(not_found());
                }
                if process::is_child(pid) {
                    let pidfd = watch_child(pid, "watching the process")?;
                    self.track(pid, pidfd);
                } else {
                    // Any other process of its pid namespace (all of them are
                    // the sandbox's); a pidfd is the only way to see its end.
                    let pidfd = seqpacket::pidfd_open(pid).map_err(|_| not_found())?;
                    self.foreign.insert(pid, pidfd);
                }
                let size = None;
                Ok((Reply::Started { id, pid, size }, None))
            }
        }
    }

    /// What a command runs under besides the sandbox's filter: the copy
    /// filter, unless it is `forkable`.
    fn confine(&self, cmd: &mut Command, forkable: bool) {
        let Some(filter) = self.copy_filter.clone().filter(|_| !forkable) else {
            return;
        };
        // SAFETY: the closure runs in the child between fork and exec and
        // makes one seccomp call, allocating nothing; `filter` is the
        // child's copy of this process's memory, alive until the exec.
        unsafe {
            cmd.pre_exec(move || alcove_sys::seccomp::install_filter(&filter));
        }
    }

    fn exec(
        &mut self,
        argv: &[String],
        env: Vec<(String, String)>,
        cwd: Option<&str>,
        fds: Vec<OwnedFd>,
        forkable: bool,
    ) -> Result<i32, AgentFailure> {
        let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
            return Err(AgentFailure::invalid("a command needs a program to run"));
        };
        // Found on PATH here, so that the standard library can start it with
        // vfork and exec (posix_spawn) rather than a fork of this process:
        // ~0.3 ms less per command. Only for an ELF file or a `#!` script:
        // anything else starts by name as before.
        let path = env
            .iter()
            .rev()
            .chain(self.env.iter().rev())
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let found = find_program(program, path.as_deref(), cwd);
        if let Some(found) = &found {
            let env = self
                .env
                .iter()
                .chain(env.iter())
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let filter = self.copy_filter.as_deref().filter(|_| !forkable);
            let (pid, pidfd) = self.starter.start(&crate::start::Command {
                path: found,
                argv0: program,
                args: &argv[1..],
                env,
                cwd,
                fds: &fds,
                filter: filter.map(Vec::as_slice),
            })?;
            self.track(pid, pidfd);
            return Ok(pid);
        }
        // Not found, or not an ELF file or a script: the standard library's
        // execvp, which says why or runs it through /bin/sh as execvp does.
        let mut cmd = Command::new(program);
        cmd.arg0(program)
            .args(&argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env)
            .process_group(0);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut fds = fds.into_iter();
        let mut stdio = || fds.next().map_or_else(Stdio::null, Stdio::from);
        cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
        // A fourth descriptor becomes the command's 3 (the code interpreter's
        // control socket); held open here until the command has started.
        let extra = fds.next();
        if let Some(raw) = extra.as_ref().map(|f| f.as_raw_fd()) {
            // SAFETY: the closure runs in the child between fork and exec and
            // makes one dup3 or fcntl call (async-signal-safe), allocating nothing.
            unsafe {
                cmd.pre_exec(move || fd::dup_onto(raw, 3));
            }
        }
        self.confine(&mut cmd, forkable);
        let spawned = self.spawn(&mut cmd, program);
        drop(extra);
        spawned
    }

    /// Starts a command on a new terminal of the sandbox's own devpts (its
    /// /dev/ptmx): the slave is its stdin, stdout and stderr and, in a
    /// session of its own, its controlling terminal (so ^C on the line is
    /// SIGINT to its foreground group, and a resize is SIGWINCH). Returns
    /// its pid and the master, which goes to the daemon: the agent keeps
    /// neither end, so the master reads EIO once the last holder of the
    /// slave is gone.
    fn exec_pty(
        &mut self,
        argv: &[String],
        env: Vec<(String, String)>,
        cwd: Option<&str>,
        size: PtySize,
        forkable: bool,
    ) -> Result<(i32, OwnedFd), AgentFailure> {
        let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
            return Err(AgentFailure::invalid("a command needs a program to run"));
        };
        if !(1..=PtySize::MAX).contains(&size.cols) || !(1..=PtySize::MAX).contains(&size.rows) {
            return Err(AgentFailure::invalid(format!(
                "a terminal is 1 to {} columns and rows",
                PtySize::MAX
            )));
        }
        let master = pty::open_master(c"/dev/ptmx").map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC) => AgentFailure {
                kind: crate::FailureKind::Other,
                message: "no terminal is left in this sandbox (its /dev/pts holds a fixed \
                          number at once): end a command that holds one"
                    .into(),
            },
            _ => AgentFailure::io("opening a terminal (/dev/ptmx)", &e),
        })?;
        let failed = |e: io::Error| AgentFailure::io("setting up a terminal", &e);
        pty::unlock(master.as_fd()).map_err(failed)?;
        pty::set_window_size(master.as_fd(), size.rows, size.cols).map_err(failed)?;
        let slave = pty::open_slave(master.as_fd(), true).map_err(failed)?;
        // The command's own TERM, or one that fits the terminals clients
        // draw with (the sandbox's may be whatever the daemon was started with).
        let term_given = env.iter().any(|(k, _)| k == "TERM");
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env);
        if !term_given {
            cmd.env("TERM", "xterm-256color");
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let stdio = || slave.try_clone().map(Stdio::from).map_err(failed);
        cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
        let tty = std::sync::Arc::new(slave);
        let child_tty = std::sync::Arc::clone(&tty);
        // SAFETY: the closure runs in the child between fork and exec and
        // makes two system calls (setsid, ioctl), both async-signal-safe,
        // allocating nothing; `child_tty` is an open descriptor the child
        // has as well (close-on-exec: gone after the exec).
        unsafe {
            cmd.pre_exec(move || {
                process::setsid()?;
                pty::set_controlling_terminal(child_tty.as_fd())
            });
        }
        self.confine(&mut cmd, forkable);
        let spawned = self.spawn(&mut cmd, program);
        // The slave's copies here go with the command: only the child holds it.
        drop(cmd);
        drop(tty);
        Ok((spawned?, master))
    }

    /// A child that copies `source` into `into` until the end of either
    /// (a pipe into an upload's new file, synced and landed as the daemon
    /// says; a file or a watch into a pipe), so
    /// the pages it writes are the sandbox's own (its memory and disk
    /// limits), and this loop stays free. Its exit code is 0, or the errno
    /// that stopped it.
    fn copier(
        &mut self,
        source: OwnedFd,
        into: OwnedFd,
        landing: Option<(Landing, OwnedFd, OwnedFd)>,
    ) -> Result<i32, AgentFailure> {
        let once = process::SingleThreaded::check()
            .map_err(|e| AgentFailure::io("starting a copy", &e))?;
        match once
            .fork()
            .map_err(|e| AgentFailure::io("starting a copy", &e))?
        {
            None => {
                let copied = match landing {
                    Some((landing, ready, verdict)) => {
                        let (mut source, mut file) =
                            (std::fs::File::from(source), std::fs::File::from(into));
                        let written =
                            std::io::copy(&mut source, &mut file).and_then(|_| file.sync_data());
                        let landed = written.and_then(|()| landing.land_if(&file, ready, verdict));
                        if landed.is_err() {
                            let _ = landing.temp.remove();
                        }
                        landed
                    }
                    None => pump(source.as_fd(), into.as_fd()),
                };
                let code = match copied {
                    Ok(()) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
                };
                process::exit_now(code)
            }
            Some(pid) => {
                let pidfd = watch_child(pid, "watching the copy")?;
                self.track(pid, pidfd);
                Ok(pid)
            }
        }
    }

    fn spawn(&mut self, cmd: &mut Command, program: &str) -> Result<i32, AgentFailure> {
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => AgentFailure {
                kind: crate::FailureKind::NotFound,
                message: format!(
                    "{program}: executable file not found in $PATH or no such directory"
                ),
            },
            _ => AgentFailure::io(&format!("starting {program}"), &e),
        })?;
        let pid = child.id() as i32;
        // Reaped by `reap` (waitpid), not through `child`; the pidfd wakes the loop.
        drop(child);
        let pidfd = watch_child(pid, "watching the command")?;
        self.track(pid, pidfd);
        Ok(pid)
    }
}

/// Copies `source` into the pipe `into` until `source` ends or the pipe's
/// reader goes away, whichever comes first: a watch that sees nothing
/// still ends when the daemon stops reading.
fn pump(source: BorrowedFd<'_>, into: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut polled = [
            libc::pollfd {
                fd: source.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            // A pipe's write end shows POLLERR once its reader is gone.
            libc::pollfd {
                fd: into.as_raw_fd(),
                events: 0,
                revents: 0,
            },
        ];
        match fd::poll(&mut polled, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        if polled[1].revents != 0 {
            return Ok(());
        }
        if polled[0].revents == 0 {
            continue;
        }
        let n = match fd::read(source, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match fd::write_all(into.as_raw_fd(), &buf[..n]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Where `program` is, as execvp would find it on `path` (default
/// /usr/local/bin:/usr/bin:/bin): the first executable regular file, or a
/// name with a slash as it is. The path is the one to exec (a relative one
/// is resolved after the chdir to `cwd`, as the checks here resolve it).
/// None, and the command then starts by name through execvp as before,
/// when nothing is found or what is found is not an ELF file or a `#!`
/// script (execvp runs one without `#!` through /bin/sh) or cannot be read.
fn find_program(
    program: &str,
    path: Option<&str>,
    cwd: Option<&str>,
) -> Option<std::path::PathBuf> {
    let seen = |p: &Path| match cwd {
        Some(dir) if p.is_relative() => Path::new(dir).join(p),
        _ => p.to_path_buf(),
    };
    let executable = |p: &Path| {
        let p = seen(p);
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .is_ok_and(|c| alcove_sys::fs::is_executable(&c))
            && std::fs::metadata(&p).is_ok_and(|m| m.is_file())
    };
    let found = if program.contains('/') {
        Some(Path::new(program).to_path_buf()).filter(|p| executable(p))
    } else {
        path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
            .find(|p| executable(p))
    };
    found.filter(|p| spawnable(&seen(p)))
}

/// Whether `path` is a regular file exec runs as it is: an ELF file or a
/// `#!` script. Opened without waiting (a FIFO swapped in answers no).
fn spawnable(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            f.read_exact(&mut head)
        })
        .is_ok_and(|()| head == *b"\x7fELF" || head.starts_with(b"#!"))
}

/// A file by name in a directory held open: what a rename of that
/// directory (by the sandbox's code, mid-upload) does not lose.
struct AtDir {
    dir: OwnedFd,
    name: CString,
}

impl AtDir {
    fn remove(&self) -> io::Result<()> {
        alcove_sys::dirfd::unlink_at(self.dir.as_fd(), &self.name, false)
    }

    fn try_clone(&self) -> io::Result<AtDir> {
        Ok(AtDir {
            dir: self.dir.try_clone()?,
            name: self.name.clone(),
        })
    }
}

/// An upload's new file and the file it replaces.
struct Landing {
    temp: AtDir,
    target: AtDir,
    /// Copied into the target, not renamed over it: the target has other
    /// hard links, or its directory is not the sandbox's user's to write.
    in_place: bool,
}

impl Landing {
    /// Says on `ready` that `file` (the new file) is written and synced,
    /// then lands it if `verdict` brings a byte: renamed over the target
    /// or, where that cannot be (a file mounted there, another's file in a
    /// sticky directory), copied into it under an exclusive lock, so that
    /// two uploads to one file do not mix. ECANCELED when the upload was
    /// let go: `verdict` ended without a byte. A target the sandbox's user
    /// may no longer write is refused (EACCES); it keeps its own mode.
    fn land_if(&self, file: &std::fs::File, ready: OwnedFd, verdict: OwnedFd) -> io::Result<()> {
        use std::io::{Read, Seek};
        fd::write_all(ready.as_raw_fd(), b"r")?;
        drop(ready);
        let mut byte = [0u8; 1];
        let mut verdict = std::fs::File::from(verdict);
        loop {
            match verdict.read(&mut byte) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let (dir, name) = (self.target.dir.as_fd(), self.target.name.as_c_str());
        if let Some(mode) = alcove_sys::dirfd::mode_at(dir, name)? {
            if mode & libc::S_IFMT == libc::S_IFREG {
                if !alcove_sys::dirfd::writable_at(dir, name) {
                    return Err(io::Error::from_raw_os_error(libc::EACCES));
                }
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
            }
        }
        if !self.in_place {
            let renamed =
                alcove_sys::dirfd::rename_at(self.temp.dir.as_fd(), &self.temp.name, dir, name);
            match renamed {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::EPERM | libc::EACCES | libc::EXDEV)
                    ) => {}
                renamed => return renamed,
            }
        }
        let mut from = std::fs::File::from(alcove_sys::dirfd::open_plain_at(
            self.temp.dir.as_fd(),
            &self.temp.name,
            libc::O_RDONLY | libc::O_NOFOLLOW,
        )?);
        // Without waiting: a FIFO swapped in with no reader is ENXIO, not a hang.
        let into = alcove_sys::dirfd::open_plain_at(dir, name, libc::O_WRONLY | libc::O_NONBLOCK)?;
        let mut into = std::fs::File::from(into);
        alcove_sys::fd::flock(into.as_fd(), alcove_sys::fd::Lock::Exclusive)?;
        into.set_len(0)?;
        into.rewind()?;
        std::io::copy(&mut from, &mut into)?;
        into.sync_data()?;
        // Landed: a directory made unwritable meanwhile keeps the new file.
        let _ = self.temp.remove();
        Ok(())
    }
}

/// Opens a new file for an upload to `path`, and where it will land: over
/// `path`, whole, once written (a failed upload leaves `path` as it was).
/// Links at `path` are followed, as a write into it would follow them. An
/// existing file is checked first, so that a directory, a FIFO, a device
/// or a file the sandbox's user may not write is refused before the
/// upload starts (the new file takes its permissions at the landing).
fn open_upload(path: &str) -> Result<(std::fs::File, Landing), AgentFailure> {
    let what = |e: &io::Error| AgentFailure::io(&format!("opening {path}"), e);
    let not_a_file = || AgentFailure {
        kind: crate::FailureKind::IsADirectory,
        message: format!("{path} names a directory: give the path of a file"),
    };
    let names_a_dir = |p: &str| {
        p.ends_with('/') || p.ends_with("/.") || p.ends_with("/..") || p == "." || p == ".."
    };
    if names_a_dir(path) {
        return Err(not_a_file());
    }
    let given = Path::new(path);
    if let Some(parent) = given.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| what(&e))?;
    }
    let target = through_links(given);
    let name = match target.file_name() {
        Some(name) if !names_a_dir(&target.to_string_lossy()) => name,
        _ => return Err(not_a_file()),
    };
    let dir_path = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c_path = |p: &std::ffi::OsStr| {
        CString::new(p.as_bytes()).map_err(|_| AgentFailure::invalid("a path holds a NUL byte"))
    };
    let target = AtDir {
        dir: alcove_sys::dirfd::open_dir(&c_path(dir_path.as_os_str())?).map_err(|e| what(&e))?,
        name: c_path(name)?,
    };
    // Not followed: a link left here is one of a loop, not a file.
    let existing = match std::fs::symlink_metadata(dir_path.join(name)) {
        Ok(meta) => {
            if let Some(refused) = not_a_regular_file(path, &meta) {
                return Err(refused);
            }
            if !alcove_sys::dirfd::writable_at(target.dir.as_fd(), &target.name) {
                return Err(what(&io::Error::from_raw_os_error(libc::EACCES)));
            }
            Some(meta)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(what(&e)),
    };
    let (temp, file, in_place) =
        match new_upload_file(target.dir.try_clone().map_err(|e| what(&e))?) {
            Ok((temp, file)) => {
                let linked = existing.as_ref().is_some_and(|m| m.nlink() > 1);
                (temp, file, linked)
            }
            // A file it may write in a directory it may not: the new file is
            // written in its home, then copied into the file.
            Err(e)
                if existing.is_some()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES | libc::EPERM | libc::EROFS)
                    ) =>
            {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
                let home = alcove_sys::dirfd::open_dir(&c_path(&home)?).map_err(|e| what(&e))?;
                let (temp, file) = new_upload_file(home).map_err(|e| what(&e))?;
                (temp, file, true)
            }
            Err(e) => return Err(what(&e)),
        };
    let landing = Landing {
        temp,
        target,
        in_place,
    };
    Ok((file, landing))
}

/// `path` with the links of its last part followed (at most 40, as the
/// kernel follows): the file an upload to it replaces. A link to nothing
/// yet gives the path the link names.
fn through_links(path: &Path) -> std::path::PathBuf {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink());
        let Some(next) = is_link.then(|| std::fs::read_link(&at).ok()).flatten() else {
            break;
        };
        at = match at.parent() {
            Some(dir) if next.is_relative() => dir.join(next),
            _ => next,
        };
    }
    at
}

/// A new file in `dir` for an upload, under a short name nothing else
/// holds (O_EXCL: one the sandbox's code made is passed over).
fn new_upload_file(dir: OwnedFd) -> io::Result<(AtDir, std::fs::File)> {
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for _ in 0..16 {
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = CString::new(format!("{UPLOAD_PREFIX}{started:x}-{n}"))
            .expect("a name of hex digits holds no NUL");
        match alcove_sys::dirfd::create_at(dir.as_fd(), &name, 0o644) {
            Ok(fd) => return Ok((AtDir { dir, name }, std::fs::File::from(fd))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Why `meta` is not a file to read or write here, if it is not.
fn not_a_regular_file(path: &str, meta: &std::fs::Metadata) -> Option<AgentFailure> {
    if meta.is_dir() {
        return Some(AgentFailure {
            kind: crate::FailureKind::IsADirectory,
            message: format!("{path} is a directory (list it instead)"),
        });
    }
    (!meta.is_file()).then(|| {
        AgentFailure::invalid(format!(
            "{path} is not a regular file (a FIFO, socket or device is not read or written here)"
        ))
    })
}

/// Opens a regular file. Without waiting: a FIFO or a device opens at once
/// (O_NONBLOCK) and is then refused, so nothing here or in the daemon can
/// block on a file the sandbox's code made.
fn open(path: &str, write: bool) -> Result<std::fs::File, AgentFailure> {
    let what = |e: &io::Error| AgentFailure::io(&format!("opening {path}"), e);
    let mut options = std::fs::OpenOptions::new();
    options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    if write {
        if let Some(parent) = Path::new(path).parent() {
            std::fs::create_dir_all(parent).map_err(|e| what(&e))?;
        }
        // Not truncated until it is known to be a regular file.
        options.write(true).create(true).mode(0o644);
    } else {
        options.read(true);
    }
    let file = options.open(path).map_err(|e| what(&e))?;
    let meta = file.metadata().map_err(|e| what(&e))?;
    if let Some(refused) = not_a_regular_file(path, &meta) {
        return Err(refused);
    }
    fd::set_nonblocking(file.as_fd(), false).map_err(|e| what(&e))?;
    if write {
        file.set_len(0).map_err(|e| what(&e))?;
    }
    Ok(file)
}

fn list(path: &str) -> Result<(Vec<Entry>, bool), AgentFailure> {
    let dir =
        std::fs::read_dir(path).map_err(|e| AgentFailure::io(&format!("listing {path}"), &e))?;
    let mut names: Vec<std::ffi::OsString> =
        dir.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    names.sort();
    let mut truncated = names.len() > MAX_ENTRIES;
    names.truncate(MAX_ENTRIES);
    let mut bytes = 0;
    let entries = names
        .into_iter()
        .take_while(|name| {
            // Each entry costs its name, its path and ~100 bytes of fields.
            bytes += 2 * name.len() + path.len() + 100;
            let fits = bytes <= crate::protocol::MAX_LIST_BYTES;
            truncated |= !fits;
            fits
        })
        .filter_map(|name| {
            let full = Path::new(path).join(&name);
            let meta = std::fs::symlink_metadata(&full).ok()?;
            let kind = if meta.file_type().is_symlink() {
                EntryKind::Symlink
            } else if meta.is_dir() {
                EntryKind::Dir
            } else if meta.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            Some(Entry {
                name: String::from_utf8_lossy(name.as_bytes()).into_owned(),
                path: full.to_string_lossy().into_owned(),
                kind,
                size: meta.len(),
                mode: meta.mode() & 0o7777,
                mtime: meta.mtime(),
            })
        })
        .collect();
    Ok((entries, truncated))
}
