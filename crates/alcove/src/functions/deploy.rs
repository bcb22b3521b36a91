//! `alcove fn deploy`: its flags, and the deploy body they make.

use alcove_api::wire::DeployBody;
use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub(super) struct DeployArgs {
    name: String,
    /// The command to run, split like a shell would (no shell runs it):
    /// 'python3 /fn/main.py'. Optional with --image (its Entrypoint and Cmd run).
    #[arg(long, required_unless_present = "image")]
    handler: Option<String>,
    /// Run in an imported image (`alcove image import`) instead of the host's view.
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Give the handler the accelerator service (ALCOVE_ACCEL_FD; clients in
    /// clients/python and the alcove-accel crate): auto, cpu or gpu.
    #[arg(long, value_name = "PLACEMENT")]
    accel: Option<String>,
    /// A directory to copy into the function: read-only at /fn, the working directory.
    #[arg(long, value_name = "DIR")]
    code: Option<PathBuf>,
    /// Memory limit, such as 128M.
    #[arg(long, value_parser = alcove_sandbox::units::parse_size)]
    memory: Option<u64>,
    /// CPU limit in cores, such as 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes and threads at once.
    #[arg(long)]
    pids: Option<u64>,
    /// Wall-clock limit per invocation, such as 5s.
    #[arg(long, value_parser = alcove_sandbox::units::parse_duration)]
    timeout: Option<Duration>,
    /// Most bytes of response kept [default: 6M].
    #[arg(long, value_parser = alcove_sandbox::units::parse_size)]
    output_limit: Option<u64>,
    /// KEY=VALUE in the handler's environment. Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// NAME=VALUE or NAME=@FILE: a file at /run/secrets/NAME, never shown by the API. Repeatable.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secrets: Vec<String>,
    /// Network: none (loopback only) or host.
    #[arg(long)]
    net: Option<String>,
    /// Invocations of this function running at once [default: 16].
    #[arg(long)]
    concurrency: Option<u32>,
}

pub(super) fn deploy_body(d: DeployArgs) -> anyhow::Result<DeployBody> {
    let handler = match &d.handler {
        Some(line) => shlex::split(line)
            .filter(|argv| !argv.is_empty())
            .with_context(|| {
                format!("--handler {line:?}: give a command, quoted like in a shell")
            })?,
        None => Vec::new(),
    };
    let mut env = std::collections::BTreeMap::new();
    for kv in &d.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?} is not KEY=VALUE")
        };
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut secrets = std::collections::BTreeMap::new();
    for kv in &d.secrets {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--secret {kv:?} is not NAME=VALUE or NAME=@FILE")
        };
        let value = match v.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).with_context(|| {
                format!("reading the secret file {path} (secrets must be UTF-8 text)")
            })?,
            None => v.to_owned(),
        };
        secrets.insert(k.to_owned(), value);
    }
    let code = match &d.code {
        Some(dir) => Some(base64::engine::general_purpose::STANDARD.encode(tar_directory(dir)?)),
        None => None,
    };
    Ok(DeployBody {
        name: d.name,
        handler,
        code,
        env,
        secrets,
        memory_bytes: d.memory,
        cpus: d.cpus,
        pids: d.pids,
        timeout_ms: d.timeout.map(|t| t.as_millis().max(1) as u64),
        output_bytes: d.output_limit,
        net: d.net,
        concurrency: d.concurrency,
        image: d.image,
        accel: d.accel,
    })
}

/// A tar archive of `dir`'s contents (not following symlinks).
fn tar_directory(dir: &Path) -> anyhow::Result<Vec<u8>> {
    super::code_dir::pack_code(dir)
}
