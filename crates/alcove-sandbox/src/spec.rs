//! What a sandbox should be: the validated description every entry point
//! (CLI flags, API bodies, OCI configs) is turned into before anything runs.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The network a sandbox sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetMode {
    /// A network namespace of its own with only loopback, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A network namespace the caller made and configured
    /// ([`SandboxSpec::netns`]), such as one with an outbound link; its
    /// /etc/resolv.conf is [`SandboxSpec::resolv_conf`].
    Joined,
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub writable: bool,
    /// A device node, mounted without `nodev` so that it can be opened
    /// (see [`SandboxSpec::device_nodes`]).
    pub device: bool,
}

impl Bind {
    /// Parses `SRC:DST[:ro|rw]` (read-only unless `rw`).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let bad =
            |why: &str| SpecError::Invalid(format!("--bind {text:?}: {why}; use SRC:DST[:ro|rw]"));
        let mut parts = text.split(':');
        let source = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("no source"))?;
        let target = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("no destination"))?;
        let writable = match parts.next() {
            None | Some("ro") => false,
            Some("rw") => true,
            Some(other) => return Err(bad(&format!("unknown mode {other:?}"))),
        };
        if parts.next().is_some() {
            return Err(bad("too many ':'"));
        }
        Ok(Bind {
            source: source.into(),
            target: target.into(),
            writable,
            device: false,
        })
    }
}

/// Where the program's stdin comes from and its stdout and stderr go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stdio {
    /// The caller's own (stdout and stderr pass through a cap when
    /// `output_bytes` is set).
    #[default]
    Inherit,
    /// stdin reads these bytes; stdout and stderr are captured into the
    /// outcome, up to `output_bytes` each (1 MiB when unset).
    Capture { stdin: Vec<u8> },
    /// As `Capture`, but stdout goes on to `stdout` (a pipe's write end,
    /// non-blocking) as the program writes it, up to `output_bytes`: alcove
    /// reads the program's stdout only when that pipe has room again, so a
    /// slow reader slows the program's writes and nothing is buffered past
    /// one read. Its reader closing its end closes the program's stdout.
    Stream {
        stdin: Vec<u8>,
        stdout: StreamTarget,
    },
}

/// The write end of the pipe a [`Stdio::Stream`] writes stdout to.
#[derive(Debug, Clone)]
pub struct StreamTarget(pub std::sync::Arc<std::os::fd::OwnedFd>);

impl PartialEq for StreamTarget {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StreamTarget {}

/// A path the program may use when a path allow-list is in force (Landlock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub writable: bool,
}

impl PathRule {
    /// Parses `PATH[:ro|rw]` (read-only unless `rw`).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let (path, writable) = match text.rsplit_once(':') {
            Some((p, "rw")) => (p, true),
            Some((p, "ro")) => (p, false),
            _ => (text, false),
        };
        check_sandbox_path(Path::new(path), "--allow-path")?;
        Ok(PathRule {
            path: path.into(),
            writable,
        })
    }
}

/// The identity the program runs as inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl Default for User {
    /// nobody:nogroup, holding nothing on the host.
    fn default() -> Self {
        User {
            uid: 65534,
            gid: 65534,
        }
    }
}

impl User {
    /// Parses `UID[:GID]`; the gid defaults to the uid.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let bad = || {
            SpecError::Invalid(format!(
                "--user {text:?}: use numeric UID[:GID], such as 1000:1000"
            ))
        };
        let (uid, gid) = match text.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (text, None),
        };
        let uid: u32 = uid.parse().map_err(|_| bad())?;
        let gid: u32 = match gid {
            Some(g) => g.parse().map_err(|_| bad())?,
            None => uid,
        };
        Ok(User { uid, gid })
    }
}

/// Resource limits. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// Memory (and tmpfs pages written, which are charged to it) in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs (0.1 = 10% of one CPU).
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads alive at once.
    pub pids: Option<u64>,
    /// Wall-clock time from start to kill.
    pub timeout: Option<Duration>,
    /// CPU time, summed over every process of the sandbox, from start to kill.
    pub cpu_time: Option<Duration>,
    /// Bytes of stdout passed through before the stream is closed (for
    /// captured output, also stderr's cap unless `stderr_bytes` is set).
    pub output_bytes: Option<u64>,
    /// Bytes of stderr passed through (or captured) before it is closed.
    pub stderr_bytes: Option<u64>,
    /// Size of each writable tmpfs (the root's upper layer, /tmp, /dev/shm).
    pub tmpfs_bytes: u64,
    /// Open file descriptors per process.
    pub open_files: u64,
}

/// The default size of each writable tmpfs.
pub const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

/// Everything needed to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The program and its arguments.
    pub argv: Vec<OsString>,
    /// A directory to use as `/` (read-only lower layer under a tmpfs upper
    /// layer); `None` gives a read-only view of the host's /usr and friends.
    pub rootfs: Option<PathBuf>,
    /// More read-only layers under `rootfs`, top-most first (an image's
    /// layers below its top one): together they are the overlay's lower dirs.
    pub lower_layers: Vec<PathBuf>,
    pub binds: Vec<Bind>,
    /// Working directory inside the sandbox.
    pub workdir: PathBuf,
    /// Mount a fresh tmpfs (`limits.tmpfs_bytes`) at `workdir`, owned by
    /// `user`: a home the program can write to on a read-only host view
    /// (an agent sandbox's /home/user).
    pub writable_workdir: bool,
    /// Extra environment variables, on top of PATH and HOME.
    pub env: Vec<(OsString, OsString)>,
    pub hostname: String,
    pub user: User,
    pub limits: Limits,
    pub net: NetMode,
    /// The network namespace a [`NetMode::Joined`] sandbox joins.
    pub netns: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The /etc/resolv.conf a [`NetMode::Joined`] sandbox sees (host view).
    pub resolv_conf: Option<Vec<u8>>,
    /// A cgroup of its own, never a pooled slot: what the run charges may
    /// outlive it (files in a tmpfs mounted outside the sandbox), and a
    /// reused slot would carry those charges into the next run's limits.
    pub fresh_cgroup: bool,
    /// Record per-phase start timings in the outcome.
    pub record_phases: bool,
    /// Run a minimal init as PID 1, with the program as its child, so the
    /// program gets ordinary signal behaviour (SIGPIPE, SIGTERM to itself).
    pub init: bool,
    /// When non-empty, a Landlock allow-list: the program may use these paths
    /// (and the base set the README lists) and nothing else of the filesystem.
    pub allow_paths: Vec<PathRule>,
    /// When set, a second seccomp filter allows exactly these syscall numbers
    /// (a `--policy` profile) and answers EPERM to the rest.
    pub syscall_allow_list: Option<Vec<u32>>,
    /// The sandbox is a warm template (docs/warm-protocol.md): its seccomp
    /// filter also lets it `unshare` exactly the copies' flag set and call
    /// `mount`, which only a copy's own user namespace gives it the right to.
    pub warm_template: bool,
    pub stdio: Stdio,
    /// Open files the program inherits under their own numbers (not closed
    /// at exec, unlike every other descriptor of alcove's): a socket to a
    /// service, say. Tell the program the numbers (an environment variable).
    pub inherit_fds: Vec<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Host character devices the sandbox may open, shown at the same path
    /// (a GPU's /dev/nvidia* nodes, say). It cannot create others (no
    /// CAP_MKNOD) and its /dev holds only alcove's basic nodes otherwise.
    pub device_nodes: Vec<PathBuf>,
}

impl SandboxSpec {
    /// A spec with defaults that runs `argv`.
    pub fn new(argv: Vec<OsString>) -> Self {
        SandboxSpec {
            argv,
            rootfs: None,
            lower_layers: Vec::new(),
            inherit_fds: Vec::new(),
            device_nodes: Vec::new(),
            binds: Vec::new(),
            workdir: PathBuf::from("/"),
            writable_workdir: false,
            env: Vec::new(),
            hostname: "alcove".into(),
            user: User::default(),
            limits: Limits {
                tmpfs_bytes: DEFAULT_TMPFS_BYTES,
                open_files: 1024,
                ..Limits::default()
            },
            net: NetMode::None,
            netns: None,
            resolv_conf: None,
            fresh_cgroup: false,
            record_phases: false,
            init: false,
            allow_paths: Vec::new(),
            syscall_allow_list: None,
            warm_template: false,
            stdio: Stdio::Inherit,
        }
    }

    /// Checks the spec once, at the boundary, so nothing later has to.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |msg: String| Err(SpecError::Invalid(msg));
        let Some(program) = self.argv.first() else {
            return invalid(
                "no program given: put it after `--`, as in `alcove run -- echo hi`".into(),
            );
        };
        if program.is_empty() || self.argv.iter().any(|a| a.as_bytes().contains(&0)) {
            return invalid(
                "the program and its arguments must be non-empty and free of NUL bytes".into(),
            );
        }
        if (self.net == NetMode::Joined) != self.netns.is_some() {
            return invalid(
                "a network namespace to join is given with net mode Joined, and only then".into(),
            );
        }
        if let Some(root) = &self.rootfs {
            if !root.is_dir() {
                return invalid(format!("--rootfs {}: not a directory", root.display()));
            }
            check_overlay_path(root, "--rootfs")?;
        }
        if !self.lower_layers.is_empty() && self.rootfs.is_none() {
            return invalid("lower layers need a rootfs (the top layer) above them".into());
        }
        if self.lower_layers.len() > 128 {
            return invalid(format!(
                "{} layers: alcove stacks at most 129",
                self.lower_layers.len() + 1
            ));
        }
        let lower_bytes: usize = self
            .rootfs
            .iter()
            .chain(&self.lower_layers)
            .map(|l| l.as_os_str().len() + 1)
            .sum();
        if lower_bytes > 3072 {
            return invalid(format!(
                "{} layers: their paths ({lower_bytes} bytes) do not fit in one overlay mount; flatten the image",
                self.lower_layers.len() + 1
            ));
        }
        for layer in &self.lower_layers {
            if !layer.is_dir() {
                return invalid(format!("layer {}: not a directory", layer.display()));
            }
            check_overlay_path(layer, "a layer")?;
        }
        for node in &self.device_nodes {
            use std::os::unix::fs::FileTypeExt;
            let is_char = std::fs::metadata(node).is_ok_and(|m| m.file_type().is_char_device());
            if !is_char || !node.starts_with("/dev/") {
                return invalid(format!(
                    "device {}: not a character device under /dev",
                    node.display()
                ));
            }
        }
        for bind in &self.binds {
            if !bind.source.exists() {
                return invalid(format!(
                    "--bind {}: source does not exist",
                    bind.source.display()
                ));
            }
            check_sandbox_path(&bind.target, "--bind destination")?;
            if bind.target == Path::new("/") {
                return invalid("--bind: the destination cannot be / (use --rootfs)".into());
            }
        }
        check_sandbox_path(&self.workdir, "--workdir")?;
        if self.writable_workdir && self.workdir == Path::new("/") {
            return invalid("a writable working directory cannot be / (give another)".into());
        }
        for rule in &self.allow_paths {
            let bytes = rule.path.as_os_str().as_bytes();
            if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= libc::PATH_MAX as usize {
                return invalid(format!(
                    "--allow-path {:?}: give a path of 1 to {} bytes without NUL",
                    rule.path,
                    libc::PATH_MAX - 1
                ));
            }
        }
        for (key, value) in &self.env {
            let k = key.as_bytes();
            if k.is_empty() || k.contains(&b'=') || k.contains(&0) || value.as_bytes().contains(&0)
            {
                return invalid(format!(
                    "--env {}: use KEY=VALUE with a non-empty KEY",
                    key.to_string_lossy()
                ));
            }
        }
        let h = self.hostname.as_bytes();
        if h.is_empty()
            || h.len() > 63
            || !h
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
        {
            return invalid(format!(
                "--hostname {:?}: use 1 to 63 letters, digits, '-' or '.'",
                self.hostname
            ));
        }
        let l = &self.limits;
        if let Some(m) = l.memory_bytes {
            if m < 4 << 20 {
                return invalid(format!(
                    "--memory {m}: below the 4M a process needs to start"
                ));
            }
        }
        if let Some(c) = l.cpus {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return invalid(format!(
                    "--cpus {c}: use a number of CPUs from 0.01 up, such as 0.5"
                ));
            }
        }
        if l.pids == Some(0) {
            return invalid("--pids 0: the program itself needs one; use 1 or more".into());
        }
        if l.tmpfs_bytes < 4096 {
            return invalid("--tmpfs-size: use at least 4K".into());
        }
        if l.open_files == 0 {
            return invalid(
                "--open-files 0: the program needs at least stdio; use 3 or more".into(),
            );
        }
        Ok(())
    }
}

/// A path inside the sandbox must be absolute and free of `..`.
fn check_sandbox_path(path: &Path, what: &str) -> Result<(), SpecError> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::Invalid(format!(
            "{what} {}: use an absolute path without '..'",
            path.display()
        )));
    }
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(SpecError::Invalid(format!(
            "{what}: path contains a NUL byte"
        )));
    }
    Ok(())
}

/// overlayfs options separate paths with ',' and ':'.
fn check_overlay_path(path: &Path, what: &str) -> Result<(), SpecError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\' | 0)) {
        return Err(SpecError::Invalid(format!(
            "{what} {}: the path may not contain ',', ':' or '\\' (overlayfs syntax)",
            path.display()
        )));
    }
    Ok(())
}

/// A spec that cannot be run as given.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> SandboxSpec {
        SandboxSpec::new(argv.iter().map(OsString::from).collect())
    }

    #[test]
    fn allowed_paths_with_a_nul_or_past_path_max_are_refused() {
        for path in ["/a\0b", ""] {
            let mut s = spec(&["true"]);
            s.allow_paths.push(PathRule {
                path: path.into(),
                writable: false,
            });
            let message = s.validate().unwrap_err().to_string();
            assert!(message.contains("--allow-path"), "{message}");
        }
        let mut s = spec(&["true"]);
        s.allow_paths.push(PathRule {
            path: format!("/{}", "x".repeat(5000)).into(),
            writable: true,
        });
        assert!(s.validate().is_err());
    }

    #[test]
    fn binds_parse_with_modes() {
        let b = Bind::parse("/data:/mnt/data:rw").unwrap();
        assert_eq!(
            (b.source.to_str(), b.target.to_str(), b.writable),
            (Some("/data"), Some("/mnt/data"), true)
        );
        assert!(!Bind::parse("/a:/b").unwrap().writable);
        assert!(Bind::parse("/a")
            .unwrap_err()
            .to_string()
            .contains("SRC:DST"));
        assert!(Bind::parse("/a:/b:xx").is_err());
    }

    #[test]
    fn users_parse() {
        assert_eq!(
            User::parse("1000").unwrap(),
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(User::parse("0:5").unwrap(), User { uid: 0, gid: 5 });
        assert!(User::parse("root").is_err());
    }

    #[test]
    fn validation_rejects_what_cannot_run() {
        assert!(spec(&[])
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no program"));
        assert!(spec(&["true"]).validate().is_ok());
        let mut s = spec(&["true"]);
        s.workdir = "relative".into();
        assert!(s.validate().unwrap_err().to_string().contains("--workdir"));
        let mut s = spec(&["true"]);
        s.binds
            .push(Bind::parse("/definitely/not/here:/x").unwrap());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        let mut s = spec(&["true"]);
        s.binds.push(Bind::parse("/tmp:/x/../etc").unwrap());
        assert!(s.validate().is_err());
        let mut s = spec(&["true"]);
        s.hostname = "bad host".into();
        assert!(s.validate().is_err());
        let mut s = spec(&["true"]);
        s.limits.memory_bytes = Some(1000);
        assert!(s.validate().unwrap_err().to_string().contains("--memory"));
        let mut s = spec(&["true"]);
        s.rootfs = Some("/definitely/not/here".into());
        assert!(s.validate().unwrap_err().to_string().contains("--rootfs"));
        let mut s = spec(&["true"]);
        s.env.push(("A=B".into(), "c".into()));
        assert!(s.validate().is_err());
    }
}
