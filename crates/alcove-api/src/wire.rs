//! The JSON the API accepts and returns, and the parsing of request bodies
//! (kept apart from the routes so it can be fuzzed on its own).

use crate::errors::ApiError;
use alcove_engine::{ConfigChange, DeployRequest, FunctionBind, FunctionInfo, InvocationRecord};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/functions`: deploys a new version of `name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    pub name: String,
    /// The handler's argv, such as `["python3", "/fn/main.py"]`; with an
    /// image it may be left out to run the image's command.
    #[serde(default)]
    pub handler: Vec<String>,
    /// An imported image to run in, instead of the host's view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The accelerator service inside the sandbox: auto, cpu or gpu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// The code: a tar archive, base64-encoded; mounted read-only at /fn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Variables set; with inheritance, merged into the previous version's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables of the previous version to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_env: Vec<String>,
    /// Secret values by name: files under /run/secrets, never returned;
    /// merged into the previous version's.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Start from the previous version's configuration, code and secrets
    /// (default) or from the defaults (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Numeric `UID[:GID]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Host paths to show inside; replaces the previous version's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binds: Option<Vec<FunctionBind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// `body` (default: stdout is the response) or `http` (a CGI response,
    /// streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `/fn/NAME` answers without the daemon's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// `python`: alcove's runtime serves `entry` (no handler needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The runtime's entry file in the code, such as `main.py`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Serve each invocation from a copy of an initialised template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    /// How long a warm function's initialisation may take (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout_ms: Option<u64>,
    /// What the kernel polices its invocations with; replaces the previous
    /// version's guard when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<alcove_engine::Guard>,
    /// `container` (default) or `gvisor`: each invocation on gVisor's
    /// user-space kernel (runsc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// With `gvisor`: sandboxes booted ahead of requests (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<u32>,
}

/// `POST /v1/functions/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    pub version: u32,
}

/// The query of `POST /v1/functions/{name}/invoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeQuery {
    /// Run this version instead of `latest`.
    pub version: Option<u32>,
    /// Return 202 and the invocation's id at once; fetch the result later.
    #[serde(rename = "async", default)]
    pub is_async: bool,
    /// For async invocations: attempts after the first while it fails.
    #[serde(default)]
    pub retries: u32,
}

/// The most retries an async invocation may ask for.
pub const MAX_RETRIES: u32 = 10;

/// `GET /v1/functions`: one line per function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub name: String,
    pub latest: u32,
    pub versions: usize,
    /// What runs: the handler, or the runtime's command.
    pub handler: Vec<String>,
    /// Served from copies of an initialised template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

impl From<&FunctionInfo> for FunctionSummary {
    fn from(f: &FunctionInfo) -> Self {
        let latest = f.versions.iter().find(|v| v.version == f.latest);
        let handler = latest
            .map(|v| {
                alcove_engine::runtime_command(&v.config)
                    .unwrap_or_else(|| v.config.handler.clone())
            })
            .unwrap_or_default();
        let warm = latest.is_some_and(|v| v.config.warm);
        FunctionSummary {
            name: f.name.clone(),
            latest: f.latest,
            versions: f.versions.len(),
            handler,
            warm,
        }
    }
}

/// An invocation as the API returns it: the record, and for finished async
/// invocations the response (as text when it is UTF-8, else base64).
#[derive(Debug, Clone, Serialize)]
pub struct InvocationView {
    #[serde(flatten)]
    pub record: InvocationRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_base64: Option<String>,
}

impl From<InvocationRecord> for InvocationView {
    fn from(mut record: InvocationRecord) -> Self {
        let (mut response, mut response_base64) = (None, None);
        if let Some(bytes) = record.response.take() {
            match String::from_utf8(bytes) {
                Ok(text) => response = Some(text),
                Err(e) => {
                    response_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))
                }
            }
        }
        InvocationView {
            record,
            response,
            response_base64,
        }
    }
}

/// Parses a JSON body into `T`, saying where it went wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the {what} body is empty: send a JSON object"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the {what} body is not valid: {}",
            without_values(e.to_string())
        ))
    })
}

/// serde's message without the value it quotes (`invalid type: string
/// "...", expected a map`): a secret sent in the wrong place must not come
/// back in an answer or a log.
fn without_values(message: String) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some(expected) = rest.rfind(", expected ") else {
            continue;
        };
        let end = rest.find(['"', '`']).map_or(expected, |q| q.min(expected));
        return format!("{prefix}{}{}", rest[..end].trim_end(), &rest[expected..]);
    }
    message
}

/// Parses and checks a deploy body into the engine's request. The engine
/// checks the rest (names, limits) and answers with its own codes.
pub fn parse_deploy(body: &[u8]) -> Result<DeployRequest, ApiError> {
    let d: DeployBody = parse_json(body, "deploy")?;
    let code_tar = match d.code {
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "code: not base64 ({e}); send a base64-encoded tar archive"
                    ))
                })?,
        ),
        None => None,
    };
    let change = ConfigChange {
        handler: (!d.handler.is_empty()).then_some(d.handler),
        image: d.image,
        accel: d.accel,
        env: d.env,
        unset_env: d.unset_env,
        secrets: d
            .secrets
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        unset_secrets: Vec::new(),
        memory_bytes: d.memory_bytes,
        cpus: d.cpus,
        pids: d.pids,
        timeout_ms: d.timeout_ms,
        cpu_time_ms: d.cpu_time_ms,
        output_bytes: d.output_bytes,
        tmpfs_bytes: d.tmpfs_bytes,
        workdir: d.workdir,
        user: d.user,
        binds: d.binds,
        net: d.net,
        concurrency: d.concurrency,
        protocol: d.protocol,
        public: d.public,
        runtime: d.runtime,
        entry: d.entry,
        warm: d.warm,
        init_timeout_ms: d.init_timeout_ms,
        guard: d.guard,
        isolation: d.isolation,
        pool: d.pool,
    };
    Ok(DeployRequest {
        name: d.name,
        change,
        code_tar,
        inherit: d.inherit.unwrap_or(true),
        must_exist: false,
    })
}

/// Checks an invoke query beyond its types.
pub fn check_invoke_query(q: &InvokeQuery) -> Result<(), ApiError> {
    if q.retries > MAX_RETRIES {
        return Err(ApiError::bad_request(format!(
            "retries {}: use 0 to {MAX_RETRIES}",
            q.retries
        )));
    }
    if q.retries > 0 && !q.is_async {
        return Err(ApiError::bad_request(
            "retries apply to async invocations: add async=true",
        ));
    }
    Ok(())
}
