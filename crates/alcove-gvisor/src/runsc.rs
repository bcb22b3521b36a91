//! Finding runsc and the flags every call to it shares.

use crate::GvisorError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian package that ships runsc.
pub const PACKAGE: &str = "runsc";

/// Where runsc keeps its containers' state: one directory per run below it,
/// so that a run's `delete` (or its removal after a crash) touches only its own.
pub const STATE_ROOT: &str = "/run/alcove/gvisor";

/// The runsc binary alcove drives.
#[derive(Debug, Clone)]
pub struct Runsc {
    pub path: PathBuf,
    /// gVisor's platform: how the Sentry intercepts the program's syscalls.
    /// `ptrace` works on any kernel (and inside VMs without nested KVM).
    pub platform: String,
}

impl Runsc {
    /// `$ALCOVE_RUNSC`, else `runsc` on PATH, else /usr/bin and /usr/sbin.
    pub fn find() -> Result<Runsc, GvisorError> {
        if let Some(given) = std::env::var_os("ALCOVE_RUNSC").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(given);
            if !is_executable(&path) {
                return Err(GvisorError::Invalid(format!(
                    "ALCOVE_RUNSC={}: no runsc there (install the Debian package `{PACKAGE}`, \
                     or point ALCOVE_RUNSC at runsc)",
                    path.display()
                )));
            }
            return Ok(Runsc {
                path,
                platform: platform()?,
            });
        }
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("runsc"));
        let fixed = ["/usr/bin/runsc", "/usr/sbin/runsc"].map(PathBuf::from);
        let path = on_path
            .chain(fixed)
            .find(|p| is_executable(p))
            .ok_or(GvisorError::Missing)?;
        Ok(Runsc {
            path,
            platform: platform()?,
        })
    }

    /// A runsc command with the flags every call shares: the state root of
    /// one run, the platform, and the network mode.
    pub(crate) fn command(&self, state: &Path, network: &str) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root")
            .arg(state)
            .arg("--platform")
            .arg(&self.platform)
            .arg("--network")
            .arg(network)
            // alcove puts runsc in a cgroup of its own before it starts and
            // reads the run's usage there; runsc must not make another.
            .arg("--ignore-cgroups")
            // The root's writes stay in the sandbox's memory (charged to its
            // cgroup): a writable root never writes the host's directory.
            .args(["--overlay2", "root:memory"]);
        cmd
    }

    /// The version line runsc prints.
    pub fn version(&self) -> Option<String> {
        let out = Command::new(&self.path).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().next().map(str::to_owned)
    }
}

/// `$ALCOVE_GVISOR_PLATFORM`, else ptrace (works on any kernel, and in
/// virtual machines without nested KVM).
fn platform() -> Result<String, GvisorError> {
    let platform = std::env::var("ALCOVE_GVISOR_PLATFORM")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "ptrace".to_owned());
    if !platform.chars().all(|c| c.is_ascii_alphanumeric()) || platform.len() > 32 {
        return Err(GvisorError::Invalid(format!(
            "ALCOVE_GVISOR_PLATFORM={platform:?}: give a platform name such as ptrace, systrap or kvm"
        )));
    }
    Ok(platform)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How long one platform probe may take to start `true`.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Which of gVisor's platforms start a sandbox on this host: each is tried
/// with `runsc do true`, in a cgroup of its own that is killed whole if it
/// has not ended within five seconds (KVM without a usable guest hangs).
/// `(name, works, why not)`.
pub fn platforms(runsc: &Runsc) -> Vec<(&'static str, bool, String)> {
    ["ptrace", "systrap", "kvm"]
        .into_iter()
        .map(|platform| match probe(runsc, platform) {
            Ok(()) => (platform, true, String::new()),
            Err(why) => (platform, false, why),
        })
        .collect()
}

fn probe(runsc: &Runsc, platform: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!(
        "alcove-runsc-probe-{}-{platform}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cgroup = alcove_sandbox::adoption_cgroup(&alcove_sandbox::Limits::default())
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&runsc.path);
    cmd.arg("--root")
        .arg(dir.join("state"))
        .args(["--platform", platform, "--network", "none", "do", "true"])
        // runsc do makes its bundle under TMPDIR: inside the probe's directory.
        .env("TMPDIR", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    crate::run::start_in(&mut cmd, &cgroup);
    let result = (|| {
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let pidfd =
            alcove_sys::seqpacket::pidfd_open(child.id() as i32).map_err(|e| e.to_string())?;
        let ended = crate::run::wait_for(std::os::fd::AsFd::as_fd(&pidfd), Some(PROBE_LIMIT), &[])
            == crate::run::Waited::Ended;
        // Whatever runsc left (or, past the limit, all of it) goes now, so
        // that nothing holds its stderr open.
        cgroup.kill_all();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if !ended {
            return Err(format!("no sandbox started within {PROBE_LIMIT:?}"));
        }
        if status.success() {
            return Ok(());
        }
        Err(err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("it failed")
            .trim()
            .chars()
            .take(160)
            .collect())
    })();
    cgroup.kill_all();
    let _ = cgroup.remove();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
