//! What the engine stores and returns: functions, versions, invocations.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a function runs: its handler, environment and limits. Part of every
/// version and never changed once deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// The handler's argv (no shell: use `["sh", "-c", "..."]` for one).
    pub handler: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of the secrets mounted at /run/secrets (their values are never returned).
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<u64>,
    /// Wall-clock limit per invocation, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes of response (stdout) kept; beyond it the handler's stdout is closed.
    #[serde(default = "default_output_bytes")]
    pub output_bytes: u64,
    /// `none` (default: loopback only) or `host`.
    #[serde(default = "default_net")]
    pub net: String,
    /// An imported image (`alcove image import`) to run in, instead of the
    /// host's view; its command is the handler when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image's id, pinned when the version is deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The accelerator service inside the sandbox: `auto` (the cost model
    /// picks CPU or GPU per call), `cpu` or `gpu`; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Invocations of this function running at once; more wait in the queue.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// CPU time per invocation, summed over its processes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    /// Size of each writable tmpfs (/tmp, /dev/shm, an image's upper layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_bytes: Option<u64>,
    /// Working directory inside the sandbox (default: /fn with code, else
    /// the image's, else /).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Numeric `UID[:GID]` the handler runs as (default: nobody, or the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Host paths made visible inside, each under a directory the operator
    /// allowed (`alcove serve --allow-bind`); sources are stored resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<FunctionBind>,
    /// What the handler writes: `body` (stdout is the response, 200 when it
    /// exits 0) or `http` (a CGI response: a header block, a blank line, then
    /// the body, streamed as it is written).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Whether `/fn/NAME` answers without the daemon's token.
    #[serde(default)]
    pub public: bool,
    /// A runtime alcove provides (`python`): the handler is then the
    /// runtime serving `entry`, a file of the code that defines `handle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The runtime's entry file, relative to the code (`main.py`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Served from copies of an initialised template (docs/warm-protocol.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// How long a warm function's initialisation may take, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout_ms: Option<u64>,
    /// What the kernel polices its invocations with (budgets, rules, a policy).
    #[serde(default, skip_serializing_if = "crate::Guard::is_empty")]
    pub guard: crate::Guard,
    /// `container` (default: alcove's own sandbox on the host kernel) or
    /// `gvisor` (each invocation on gVisor's user-space kernel, runsc).
    #[serde(default = "default_isolation", skip_serializing_if = "is_container")]
    pub isolation: String,
    /// With `gvisor`: sandboxes booted ahead of requests (default 1; 0 for
    /// none), so that a request pays `runsc exec`, not the boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<u32>,
}

fn default_isolation() -> String {
    "container".into()
}

fn is_container(isolation: &str) -> bool {
    isolation == "container"
}

/// A host path a function sees (`--bind SRC:DST[:ro|rw]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionBind {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub writable: bool,
}

fn default_output_bytes() -> u64 {
    6 << 20
}

fn default_net() -> String {
    "none".into()
}

fn default_concurrency() -> u32 {
    16
}

fn default_protocol() -> String {
    "body".into()
}

/// A deploy: a new immutable version of `name`, which `latest` then points
/// at. What `change` leaves out (and the code, when none is given) is
/// inherited from `latest` unless `inherit` is false.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub name: String,
    pub change: crate::ConfigChange,
    /// The code, as a tar archive, mounted read-only at /fn.
    pub code_tar: Option<Vec<u8>>,
    /// Start from `latest`'s configuration (true) or from the defaults.
    pub inherit: bool,
    /// Refuse unless the function exists (a configuration change, not a deploy).
    pub must_exist: bool,
}

/// What a deploy made: the new version (or `latest`, when nothing changed)
/// and what it took from the version before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployed {
    #[serde(flatten)]
    pub version: VersionInfo,
    /// The configuration and code equal `latest`'s: no version was made.
    pub unchanged: bool,
    /// The version settings were inherited from.
    pub inherited_from: Option<u32>,
    /// The settings taken from it that differ from a fresh deploy's, named
    /// as in the deploy body: `env.KEY`, `secrets.NAME`, `memory_bytes`,
    /// `code`...
    pub inherited: Vec<String>,
}

/// One deployed version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub function: String,
    pub version: u32,
    /// sha256 of the code's content (paths, modes, bytes), if it has code.
    pub code_digest: Option<String>,
    pub config: FunctionConfig,
    /// Unix seconds.
    pub created_at: f64,
}

/// A function, its versions, and the version `latest` points at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub latest: u32,
    pub versions: Vec<VersionInfo>,
}

/// One invocation, as recorded. `status` uses the `alcove run` report's
/// vocabulary (exited, signaled, timeout, cpu_time, oom, killed_by_policy,
/// error) plus `queued` and `running` while in flight.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InvocationRecord {
    pub id: String,
    pub function: String,
    pub version: u32,
    pub status: String,
    #[serde(rename = "async")]
    pub is_async: bool,
    pub attempts: u32,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub wall_ms: Option<f64>,
    pub cpu_user_ms: Option<f64>,
    pub cpu_sys_ms: Option<f64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    pub output_truncated: bool,
    /// Why alcove could not run it, when it could not.
    pub error: Option<String>,
    /// The handler's stderr (its log), capped at [`STDERR_KEPT`](crate::STDERR_KEPT).
    pub stderr: String,
    /// The request body's size (the handler's stdin).
    pub request_bytes: Option<u64>,
    /// The response's size (the handler's stdout, as kept); none when it
    /// streamed to the client or the handler never ran.
    pub response_bytes: Option<u64>,
    /// The response, kept for async invocations.
    #[serde(skip)]
    pub response: Option<Vec<u8>>,
    /// Where a warm invocation's time went (not kept in the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<alcove_sandbox::WarmPhases>,
    /// What the kernel saw of it (eBPF): counters, rule decisions, a policy kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::KernelRecord>,
    /// The node (daemon) that ran its latest attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node of each attempt, in order (async invocations on a shared store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl InvocationRecord {
    /// Whether the handler succeeded (exited 0).
    pub fn succeeded(&self) -> bool {
        self.status == "exited" && self.exit_code == Some(0)
    }

    /// Whether it has finished (successfully or not).
    pub fn finished(&self) -> bool {
        self.status != "queued" && self.status != "running"
    }

    /// What a warm template's sandbox is built with in place of a request's
    /// record: `ALCOVE_INVOCATION` is `template` during initialisation.
    pub(crate) fn new_for_template(v: &VersionInfo) -> Self {
        InvocationRecord {
            id: "template".into(),
            function: v.function.clone(),
            version: v.version,
            ..Default::default()
        }
    }
}
