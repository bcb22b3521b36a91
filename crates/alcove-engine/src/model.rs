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
    /// What the handler writes: `body` (stdout is the response, 200 when it
    /// exits 0) or `http` (a CGI response: a header block, a blank line, then
    /// the body, streamed as it is written).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Whether `/fn/NAME` answers without the daemon's token.
    #[serde(default)]
    pub public: bool,
}

fn default_protocol() -> String {
    "body".into()
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

/// A deploy: a new immutable version of `name`, which `latest` then points at.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub name: String,
    pub config: FunctionConfig,
    /// Secret values by name (written to files, never returned by the API).
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The code, as a tar archive, mounted read-only at /fn.
    pub code_tar: Option<Vec<u8>>,
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
    /// The response, kept for async invocations.
    #[serde(skip)]
    pub response: Option<Vec<u8>>,
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
}
