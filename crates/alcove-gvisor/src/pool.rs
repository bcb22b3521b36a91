//! A gVisor sandbox booted ahead of its request: its Sentry and Gofer run,
//! its mounts are made and its first process (a waiter that does nothing)
//! holds it open. The request then pays only `runsc exec` of the handler
//! into it, not the boot. Each one serves one request and is then killed
//! whole: nothing one request leaves (files, processes) reaches the next.

use crate::bundle::Bundle;
use crate::run::{finish, network, sandbox_cgroup, start_in, supervise, wait_for, Waited};
use crate::runsc::Runsc;
use crate::{GvisorError, GvisorOptions};
use alcove_cgroup::SandboxCgroup;
use alcove_sandbox::{Outcome, SandboxSpec, Stdio};
use std::os::fd::AsFd;
use std::time::Duration;

/// The longest `runsc create` and `runsc start` may take together before
/// the boot is given up (a KVM platform that hangs, a stuck Gofer).
const BOOT_LIMIT: Duration = Duration::from_secs(20);

/// One booted sandbox, waiting for the request it will serve.
pub struct PooledSandbox {
    runsc: Runsc,
    bundle: Bundle,
    cgroup: Option<SandboxCgroup>,
    /// Its mounts, user and limits: what every request to it must match.
    spec: SandboxSpec,
}

impl PooledSandbox {
    /// Boots a sandbox for `spec` (its mounts, namespaces and limits; not
    /// its program) with `waiter` as its first process: a program that
    /// waits until killed, in its root or in `waiter_binds` (which only
    /// the waiter needs).
    pub fn boot(
        spec: &SandboxSpec,
        waiter: Vec<String>,
        waiter_binds: &[alcove_sandbox::Bind],
        options: &GvisorOptions,
    ) -> Result<PooledSandbox, GvisorError> {
        let runsc = Runsc::find()?;
        let mut first = spec.clone();
        first.argv = waiter.into_iter().map(Into::into).collect();
        first.binds.extend_from_slice(waiter_binds);
        first.stdio = Stdio::Inherit;
        first.limits.timeout = None;
        let bundle = Bundle::create(&options.root(), &first)?;
        let cgroup = sandbox_cgroup(spec)?;
        let mut pooled = PooledSandbox {
            runsc,
            bundle,
            cgroup: Some(cgroup),
            spec: spec.clone(),
        };
        pooled.start()?; // dropped on failure: killed whole
        Ok(pooled)
    }

    fn start(&mut self) -> Result<(), GvisorError> {
        let cgroup = self.cgroup.as_ref().expect("held until dropped");
        let log = self.bundle.dir.join("boot.err");
        for step in ["create", "start"] {
            let errors = std::fs::File::create(&log).map_err(|source| GvisorError::Bundle {
                path: log.clone(),
                source,
            })?;
            let mut cmd = self
                .runsc
                .command(&self.bundle.state(), network(&self.spec));
            cmd.arg(step);
            if step == "create" {
                cmd.arg("--bundle").arg(self.bundle.bundle());
            }
            // The waiter inherits these: a file, not a pipe, so that nothing
            // waits for the sandbox to close them.
            cmd.arg(&self.bundle.id)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(errors);
            start_in(&mut cmd, cgroup);
            let mut child = cmd.spawn().map_err(|source| GvisorError::Start {
                path: self.runsc.path.clone(),
                source,
            })?;
            let ended = alcove_sys::seqpacket::pidfd_open(child.id() as i32)
                .map(|fd| wait_for(fd.as_fd(), Some(BOOT_LIMIT), &[]) == Waited::Ended)
                .unwrap_or(false);
            if !ended {
                cgroup.kill_all();
            }
            let status = child.wait().map_err(|source| GvisorError::Prepare {
                what: "waiting for runsc",
                source,
            })?;
            if !ended || !status.success() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let said = said.lines().last().unwrap_or("").trim();
                return Err(GvisorError::Invalid(if ended {
                    format!("booting a gVisor sandbox: runsc {step} failed ({status}): {said}")
                } else {
                    format!("booting a gVisor sandbox: runsc {step} took over {BOOT_LIMIT:?}")
                }));
            }
        }
        Ok(())
    }

    /// Whether a request with `spec` can run here: the same mounts, root,
    /// user, network and limits it was booted with (only the program, its
    /// environment, its input and its wall-clock limit may differ).
    pub fn fits(&self, spec: &SandboxSpec) -> bool {
        let key = |s: &SandboxSpec| {
            (
                s.binds.clone(),
                s.rootfs.clone(),
                s.user,
                s.net,
                s.hostname.clone(),
                s.writable_workdir,
                s.limits.memory_bytes,
                s.limits.pids,
                s.limits.cpus.map(f64::to_bits),
                s.limits.tmpfs_bytes,
            )
        };
        key(spec) == key(&self.spec)
    }

    /// Whether the sandbox still runs (its cgroup holds its processes).
    pub fn alive(&self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(SandboxCgroup::is_populated)
    }

    /// Runs `spec`'s program in this sandbox to completion (`runsc exec`),
    /// then kills the sandbox whole. The report is as `run`'s, its CPU time
    /// counted from this request's start; its memory peak is the sandbox's
    /// since boot.
    pub fn exec(
        mut self,
        spec: &SandboxSpec,
        options: &GvisorOptions,
    ) -> Result<Outcome, GvisorError> {
        if !self.fits(spec) {
            return Err(GvisorError::Invalid(
                "this request's mounts or limits differ from the pooled sandbox's".into(),
            ));
        }
        let config = crate::bundle::config(spec)?;
        let process = self.bundle.dir.join("process.json");
        let text = serde_json::to_vec(&config["process"]).expect("a process serialises");
        std::fs::write(&process, text).map_err(|source| GvisorError::Bundle {
            path: process.clone(),
            source,
        })?;
        let cgroup = self.cgroup.take().expect("held until dropped");
        let before = cgroup.usage().unwrap_or_default();
        let mut cmd = self.runsc.command(&self.bundle.state(), network(spec));
        cmd.arg("exec")
            .arg("--process")
            .arg(&process)
            .arg(&self.bundle.id);
        let result = supervise(cmd, &self.runsc, &cgroup, spec, options, &before);
        let cgroup_id = finish(cgroup);
        result.map(|mut outcome| {
            outcome.cgroup_id = cgroup_id;
            outcome
        })
    }
}

impl Drop for PooledSandbox {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            finish(cgroup);
        }
        // The bundle's directory goes after it (a field dropped next).
    }
}
