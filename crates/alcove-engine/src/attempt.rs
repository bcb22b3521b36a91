//! One attempt of an invocation, on a blocking thread from start to end: its
//! record, its sandbox (built from the version and the operator's limits),
//! the run, and what is recorded after. A panic in here fails this one
//! invocation, never the daemon.

use crate::engine::Engine;
use crate::http::Input;
use crate::metrics::{FunctionLabel, InvocationLabels, StartLabel};
use crate::model::{InvocationRecord, VersionInfo};
use crate::store::now;
use crate::{code, EngineError, STDERR_KEPT};
use alcove_sandbox::{Bind, RunOptions, SandboxSpec, Status, Stdio};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

impl Engine {
    /// Runs one attempt and records it, turning a panic into a failed
    /// invocation. Returns the handler's stdout.
    /// With `retry_on_failure`, a failed attempt is stored as `queued`, so
    /// readers wait for the last one.
    pub(crate) fn attempt_blocking(
        &self,
        v: &VersionInfo,
        record: &mut InvocationRecord,
        input: Input,
        retry_on_failure: bool,
    ) -> Result<Vec<u8>, EngineError> {
        let attempt = || self.attempt(v, record, input, retry_on_failure);
        match catch_unwind(AssertUnwindSafe(attempt)) {
            Ok(result) => result,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let why = format!(
                    "alcove failed inside this invocation (a bug: please report it; the daemon carries on): {what}"
                );
                self.fail(record, why, retry_on_failure)
            }
        }
    }

    /// Records an attempt that ended in alcove's own error, not the handler's.
    fn fail(
        &self,
        record: &mut InvocationRecord,
        why: String,
        retry_on_failure: bool,
    ) -> Result<Vec<u8>, EngineError> {
        record.status = "error".into();
        record.error = Some(why);
        record.ended_at = Some(now());
        self.save(record, retry_on_failure)?;
        self.chart(record);
        Ok(Vec::new())
    }

    /// Counts an ended attempt in its function's last hour (the console's
    /// charts count attempts: an async invocation retried counts each).
    fn chart(&self, record: &InvocationRecord) {
        self.stats
            .record(&record.function, record.succeeded(), record.wall_ms, now());
    }

    /// Stores a finished attempt's record (as `queued` when another follows).
    fn save(&self, record: &InvocationRecord, retry_on_failure: bool) -> Result<(), EngineError> {
        if retry_on_failure && !record.succeeded() {
            let mut queued = record.clone();
            queued.status = "queued".into();
            queued.response = None;
            return self.store.update_invocation(&queued);
        }
        self.store.update_invocation(record)
    }

    fn attempt(
        &self,
        v: &VersionInfo,
        record: &mut InvocationRecord,
        input: Input,
        retry_on_failure: bool,
    ) -> Result<Vec<u8>, EngineError> {
        // Debug builds only: lets the tests see what a bug inside one
        // invocation does to the daemon (it must fail that invocation alone).
        #[cfg(debug_assertions)]
        if std::env::var("ALCOVE_FAULT_PANIC_IN").is_ok_and(|f| f == v.function) {
            panic!("ALCOVE_FAULT_PANIC_IN={}", v.function);
        }
        // Its own cancel, unless a client cancelled it before it could start.
        let control = match self.running.begin_attempt(&record.id) {
            Ok(control) => control,
            Err(refused) => {
                let retry = refused.apply(record);
                self.save(record, retry && retry_on_failure)?;
                self.chart(record);
                return Ok(Vec::new());
            }
        };
        record.status = "running".into();
        record.attempts += 1;
        record.started_at = Some(now());
        record.request_bytes = Some(input.body.len() as u64);
        // A streamed response goes to its client as it comes: not counted here.
        let streamed = input.stdout.is_some();
        self.store.update_invocation(record)?;
        let prepared = self
            .spec_for(v, record, input)
            .and_then(|(mut spec, lease, pinned)| {
                let learning = self.learning_now(&v.function);
                let policy = v
                    .config
                    .guard
                    .apply(&mut spec, learning)
                    .map_err(|e| EngineError::Invalid(format!("guard: {e}")))?;
                let cell = control
                    .as_ref()
                    .map(|c| c.cgroup_cell())
                    .unwrap_or_default();
                Ok((
                    self.watch_for(v, record, policy, cell)?,
                    spec,
                    (lease, pinned),
                ))
            });
        let (mut watch, spec, lease) = match prepared {
            Ok(prepared) => prepared,
            // A version that cannot be prepared (its image is gone...) is a failed invocation.
            Err(e) => return self.fail(record, alcove_sandbox::error_chain(&e), retry_on_failure),
        };
        let alive = Alive::new(&self.metrics.sandboxes_alive);
        let template = self.template_for(v);
        let mut cancel = vec![Arc::clone(&self.cancel)];
        cancel.extend(control.as_ref().map(|c| Arc::clone(&c.cancel)));
        let gvisor = alcove_gvisor::GvisorOptions {
            state_root: None,
            cancel: cancel.clone(),
        };
        let options = RunOptions {
            forward_signals: false,
            collect_usage: true,
            cancel,
            watch: control.as_ref().map(|c| c.watch()),
        };
        let mut unwatched = alcove_sandbox::NoObserver;
        let observer: &mut dyn alcove_sandbox::Observer = match watch.as_mut() {
            Some(w) => w,
            None => &mut unwatched,
        };
        self.monitor.emit(
            &v.function,
            serde_json::json!({"event": "start", "version": v.version, "invocation": record.id}),
        );
        // Warm when its template (or gVisor pool) serves; cold (the same
        // code) while it does not.
        let (kind, result) = if v.config.isolation == "gvisor" {
            let (kind, result) = self.run_gvisor(v, &spec, &gvisor);
            (kind, result.map_err(|e| e.to_string()))
        } else {
            let warm = template.map(|t| t.run(&spec, &options, &mut *observer));
            let (kind, result) = match warm {
                Some(Err(alcove_warm::WarmError::Run(e))) => ("warm", Err(e)),
                Some(Ok(outcome)) => ("warm", Ok(outcome)),
                Some(Err(_)) | None => (
                    "cold",
                    alcove_sandbox::run_observed(&spec, &options, observer),
                ),
            };
            (kind, result.map_err(|e| alcove_sandbox::error_chain(&e)))
        };
        if let Some(w) = watch.as_mut() {
            alcove_sandbox::Observer::after_end(w); // (a no-op when the run did it)
            self.after_watch(v, record, w);
        }
        self.metrics
            .starts
            .get_or_create(&StartLabel { kind: kind.into() })
            .inc();
        drop(lease); // the image's layers may be pruned from now on
        drop(alive);
        record.ended_at = Some(now());
        let mut response = Vec::new();
        match result {
            Ok(outcome) => {
                record.status = serde_json::to_value(outcome.status)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_default();
                record.exit_code = outcome.exit_code;
                record.signal = outcome.signal;
                record.wall_ms = Some(outcome.wall_ms);
                record.cpu_user_ms = Some(outcome.cpu_user_ms);
                record.cpu_sys_ms = Some(outcome.cpu_sys_ms);
                record.memory_peak_bytes = outcome.memory_peak_bytes;
                record.pids_peak = outcome.pids_peak;
                record.output_truncated = outcome.stdout_truncated;
                record.response_bytes = (!streamed).then_some(outcome.stdout.len() as u64);
                record.warm = outcome.warm.clone();
                record.error = match outcome.status {
                    Status::Cancelled => Some(
                        control
                            .as_ref()
                            .and_then(|c| c.cancel_reason())
                            .unwrap_or_else(|| {
                                "the daemon stopped while this invocation ran".into()
                            }),
                    ),
                    _ => outcome.reason.clone().or_else(|| {
                        outcome.stdout_undelivered.then(|| {
                            "the client stopped reading the streamed response before its end \
                             (it went away, or read too slowly); the handler's stdout was closed"
                                .into()
                        })
                    }),
                };
                let kept = outcome.stderr.len().min(STDERR_KEPT);
                record.stderr = String::from_utf8_lossy(&outcome.stderr[..kept]).into_owned();
                if outcome.stderr_truncated || outcome.stderr.len() > STDERR_KEPT {
                    record.stderr.push_str(&format!(
                        "\n[alcove: stderr cut here; records keep its first {} KiB]",
                        STDERR_KEPT >> 10
                    ));
                }
                self.metrics
                    .duration
                    .get_or_create(&FunctionLabel {
                        function: v.function.clone(),
                    })
                    .observe(outcome.wall_ms / 1e3);
                self.metrics
                    .kernel
                    .cpu_seconds
                    .get_or_create(&FunctionLabel {
                        function: v.function.clone(),
                    })
                    .inc_by((outcome.cpu_user_ms + outcome.cpu_sys_ms) / 1e3);
                response = outcome.stdout;
            }
            Err(e) => {
                record.status = "error".into();
                record.error = Some(e);
            }
        }
        if record.is_async {
            record.response = Some(response.clone());
        }
        self.save(record, retry_on_failure)?;
        self.monitor.emit(
            &v.function,
            serde_json::json!({
                "event": "end", "version": v.version, "invocation": record.id,
                "status": record.status, "start": kind, "exit_code": record.exit_code,
                "wall_ms": record.wall_ms, "error": record.error,
            }),
        );
        tracing::info!(
            function = %v.function,
            version = v.version,
            invocation = %record.id,
            status = %record.status,
            start = kind,
            wall_ms = record.wall_ms.unwrap_or_default(),
            "invocation ended"
        );
        self.chart(record);
        self.metrics
            .invocations
            .get_or_create(&InvocationLabels {
                function: v.function.clone(),
                status: record.status.clone(),
                outcome: if record.succeeded() {
                    "success"
                } else {
                    "failure"
                }
                .into(),
            })
            .inc();
        Ok(response)
    }

    /// `v`'s sandbox as an invocation would get it, without a request: what
    /// a warm template and a pooled gVisor sandbox are built from.
    pub(crate) fn spec_without_request(
        &self,
        v: &VersionInfo,
    ) -> Result<(SandboxSpec, Option<alcove_image::Lease>, Vec<OwnedFd>), EngineError> {
        let input = Input {
            body: Vec::new(),
            cgi: Vec::new(),
            stdout: None,
        };
        self.spec_for(v, &InvocationRecord::new_for_template(v), input)
    }

    /// The sandbox for one invocation of `v`.
    pub(crate) fn spec_for(
        &self,
        v: &VersionInfo,
        record: &InvocationRecord,
        input: Input,
    ) -> Result<(SandboxSpec, Option<alcove_image::Lease>, Vec<OwnedFd>), EngineError> {
        let c = &v.config;
        let limits = self.config.limits.effective(c);
        // Binds are checked again: the host path may have changed since the deploy.
        let mut spec = crate::function_spec::base_spec(c, &limits, &self.config.allow_binds)?;
        // And what is checked is what is mounted (held until the run ends).
        let pinned = crate::function_spec::pin_binds(&mut spec, c.binds.len())?;
        let mut lease = None;
        if let Some(id) = &c.image_id {
            let (image, held) = self.image_store()?.lease(id).map_err(|e| {
                EngineError::Invalid(format!(
                    "the image of version {} ({}) is not in the store any more ({e}); import it again",
                    v.version,
                    c.image.as_deref().unwrap_or(id)
                ))
            })?;
            crate::image::apply_image(
                &mut spec,
                self.image_store()?,
                &image,
                c.user.is_some(),
                c.workdir.is_some() || v.code_digest.is_some(),
            )?;
            lease = Some(held);
        }
        if let Some(digest) = &v.code_digest {
            self.ensure_code(digest)?;
            spec.binds.push(Bind {
                source: self.config.data_dir.join("code").join(digest),
                target: "/fn".into(),
                writable: false,
                device: false,
            });
            if c.workdir.is_none() {
                spec.workdir = "/fn".into();
            }
        }
        if !c.secrets.is_empty() {
            let values = self.store.secrets(&v.function, v.version)?;
            let dir = code::secrets_dir(
                &self.config.data_dir,
                &v.function,
                v.version,
                &values,
                spec.user.uid,
            )?;
            spec.binds.push(Bind {
                source: dir,
                target: "/run/secrets".into(),
                writable: false,
                device: false,
            });
        }
        // After the function's own (base_spec's): the request's variables are the request's.
        spec.env.extend(input.cgi);
        spec.env
            .push(("ALCOVE_FUNCTION".into(), v.function.clone().into()));
        spec.env
            .push(("ALCOVE_VERSION".into(), v.version.to_string().into()));
        spec.env
            .push(("ALCOVE_INVOCATION".into(), record.id.clone().into()));
        if c.accel.as_deref() == Some("gpu") {
            spec.device_nodes = gpu_device_nodes();
        }
        if let Some(placement) = &c.accel {
            let mut service = self.accel.lock().unwrap_or_else(|e| e.into_inner());
            let conn = crate::accel::connect(
                &mut service,
                &self.config.accel_program,
                placement,
                Some(limits.memory_bytes),
                Some(limits.timeout_ms),
            )?;
            spec.env.push((
                "ALCOVE_ACCEL_FD".into(),
                conn.as_raw_fd().to_string().into(),
            ));
            spec.inherit_fds.push(Arc::new(conn));
        }
        spec.stdio = match input.stdout {
            Some(stdout) => Stdio::Stream {
                stdin: input.body,
                stdout,
            },
            None => Stdio::Capture { stdin: input.body },
        };
        Ok((spec, lease, pinned))
    }
}

/// The host's NVIDIA device nodes (/dev/nvidiactl, /dev/nvidia0...,
/// /dev/nvidia-uvm...): what a `gpu`-placed function may open besides
/// alcove's basic /dev. None on a host without a GPU.
pub(crate) fn gpu_device_nodes() -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut nodes: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_char_device()))
        .map(|e| e.path())
        .collect();
    nodes.sort();
    nodes
}

/// Counts one sandbox in the `alcove_sandboxes_alive` gauge until dropped,
/// also when a panic unwinds through the attempt.
struct Alive<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Alive<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Alive(gauge)
    }
}

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
