//! `alcove fn deploy` and `alcove fn config`: their flags, and the bodies
//! they make (a manifest's settings first, the command line's over them).

use super::manifest::{self, Manifest};
use crate::sandbox_flags::{millis, SandboxFlags};
use alcove_api::wire::DeployBody;
use alcove_engine::FunctionBind;
use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use std::path::{Path, PathBuf};

/// The settings `fn deploy` and `fn config` share. Left out, a setting
/// keeps the previous version's value.
#[derive(Args, Debug, Default)]
pub(super) struct SettingsArgs {
    /// The command to run, split like a shell would (no shell runs it):
    /// 'python3 /fn/main.py'. Optional with --image (its Entrypoint and Cmd run).
    #[arg(long, value_name = "COMMAND")]
    handler: Option<String>,
    /// Run in an imported image (`alcove image import`) instead of the host's view.
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Give the handler the accelerator service (ALCOVE_ACCEL_FD; clients in
    /// clients/python and the alcove-accel crate): auto, cpu or gpu.
    #[arg(long, value_name = "PLACEMENT")]
    accel: Option<String>,
    /// NAME=VALUE or NAME=@FILE: a file at /run/secrets/NAME, never shown by the API. Repeatable.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secrets: Vec<String>,
    /// Read KEY=VALUE lines (blank lines and # comments skipped) into the
    /// environment; --env given too wins.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Drop KEY from the environment the previous version had. Repeatable.
    #[arg(long = "unset-env", value_name = "KEY")]
    unset_env: Vec<String>,
    /// Invocations of this function running at once [default: 16].
    #[arg(long, value_name = "N")]
    concurrency: Option<u32>,
    /// What the handler writes: body (stdout is the response) or http (a CGI
    /// response: 'Status:' and other header lines, an empty line, the body,
    /// streamed) [default: body].
    #[arg(long, value_enum, conflicts_with = "http")]
    protocol: Option<Protocol>,
    /// Short for --protocol http.
    #[arg(long)]
    http: bool,
    /// Let anyone call /fn/NAME, without the daemon's token (--public=false: no more).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    public: Option<bool>,
    /// A runtime alcove provides instead of a handler: python (the entry
    /// file's module-level code initialises; its handle(body) serves).
    #[arg(long, value_name = "NAME", conflicts_with = "handler")]
    runtime: Option<String>,
    /// The runtime's entry file in the code [default: main.py].
    #[arg(long, value_name = "FILE", requires = "runtime")]
    entry: Option<String>,
    /// Serve every invocation from a fresh copy of an initialised template
    /// (docs/warm-protocol.md); the deploy fails if it cannot (--warm=false: cold again).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    warm: Option<bool>,
    /// How long a warm function's initialisation may take [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    init_timeout: Option<std::time::Duration>,
    /// Isolation tier: container, or gvisor (runsc: a user-space kernel, slower to start)
    #[arg(long, value_enum)]
    isolation: Option<crate::cli::Isolation>,
    /// gVisor sandboxes kept booted ahead of requests, 0 to 16 [default: 1]
    #[arg(long, value_name = "N")]
    pool: Option<u32>,
    #[command(flatten)]
    sandbox: SandboxFlags,
    #[command(flatten)]
    guard: super::guard_flags::GuardArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Body,
    Http,
}

#[derive(Args, Debug)]
pub(super) struct DeployArgs {
    /// The function's name, or a directory holding alcove.toml (which names
    /// it) [default: the alcove.toml in this directory].
    #[arg(value_name = "NAME|DIR")]
    target: Option<String>,
    /// Read the settings from this manifest (flags given here win).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// A directory to copy into the function: read-only at /fn, the working
    /// directory [default: the manifest's directory; else the previous version's code].
    #[arg(long, value_name = "DIR")]
    code: Option<PathBuf>,
    /// Start from the defaults instead of the previous version's settings,
    /// secrets and code.
    #[arg(long)]
    no_inherit: bool,
    #[command(flatten)]
    settings: SettingsArgs,
}

pub(super) fn deploy_body(d: DeployArgs) -> anyhow::Result<DeployBody> {
    let (name, manifest) = resolve_target(d.target.as_deref(), d.manifest.as_deref())?;
    let mut body = DeployBody::default();
    let mut code_dir = None;
    if let Some((m, dir)) = &manifest {
        code_dir = m.apply(&mut body, dir)?;
    }
    if let Some(name) = name {
        body.name = name;
    }
    if body.name.is_empty() {
        bail!(
            "no function name: give one (`alcove fn deploy NAME ...`) or set name in alcove.toml"
        );
    }
    d.settings.apply(&mut body)?;
    if d.code.is_some() {
        code_dir = d.code;
    }
    if d.no_inherit {
        body.inherit = Some(false);
    }
    if let Some(dir) = &code_dir {
        body.code = Some(base64::engine::general_purpose::STANDARD.encode(tar_directory(dir)?));
    }
    Ok(body)
}

/// The function name given on the command line (if any) and the manifest to
/// read (with its directory), from `fn deploy [NAME|DIR] [--manifest FILE]`.
#[allow(clippy::type_complexity)]
fn resolve_target(
    target: Option<&str>,
    manifest: Option<&Path>,
) -> anyhow::Result<(Option<String>, Option<(Manifest, PathBuf)>)> {
    if let Some(file) = manifest {
        return Ok((target.map(str::to_owned), Some(manifest::read(file)?)));
    }
    let dir = match target {
        None => Path::new("."),
        Some(t) => Path::new(t),
    };
    let file = dir.join(manifest::FILE);
    if file.is_file() {
        return Ok((None, Some(manifest::read(&file)?)));
    }
    match target {
        Some(t) if alcove_engine::valid_name(t) => Ok((Some(t.to_owned()), None)),
        Some(t) if dir.is_dir() => bail!(
            "{t} is a directory without {}: write one (see the README's manifest reference) \
             or give --manifest FILE",
            manifest::FILE
        ),
        Some(t) => Ok((Some(t.to_owned()), None)), // the daemon says what is wrong with it
        None => bail!(
            "give the function's name, or a directory holding {} (there is none here)",
            manifest::FILE
        ),
    }
}

impl SettingsArgs {
    /// Sets what these flags give in `body`, over what is there (a manifest's).
    fn apply(self, body: &mut DeployBody) -> anyhow::Result<()> {
        if let Some(line) = &self.handler {
            body.handler = shlex::split(line)
                .filter(|argv| !argv.is_empty())
                .with_context(|| {
                    format!("--handler {line:?}: give a command, quoted like in a shell")
                })?;
        }
        set(&mut body.image, self.image);
        set(&mut body.accel, self.accel);
        if let Some(file) = &self.env_file {
            body.env.extend(manifest::read_env_file(file)?);
        }
        body.unset_env.extend(self.unset_env);
        for kv in &self.secrets {
            let (k, v) = secret_pair(kv)?;
            body.secrets.insert(k, v);
        }
        set(&mut body.concurrency, self.concurrency);
        let protocol = if self.http {
            Some(Protocol::Http)
        } else {
            self.protocol
        };
        set(
            &mut body.protocol,
            protocol.map(|p| if p == Protocol::Http { "http" } else { "body" }.to_owned()),
        );
        set(&mut body.public, self.public);
        set(&mut body.runtime, self.runtime);
        set(&mut body.entry, self.entry);
        set(&mut body.warm, self.warm);
        set(&mut body.init_timeout_ms, self.init_timeout.map(millis));
        set(
            &mut body.isolation,
            self.isolation.map(|i| i.as_str().to_owned()),
        );
        set(&mut body.pool, self.pool);
        set(&mut body.guard, self.guard.guard()?);
        apply_sandbox_flags(self.sandbox, body)?;
        Ok(())
    }

    /// The `PATCH /v1/functions/NAME` body these flags make: only what they give.
    pub(super) fn change(self) -> anyhow::Result<serde_json::Value> {
        let mut body = DeployBody::default();
        self.apply(&mut body)?;
        let mut change = serde_json::to_value(&body)?;
        if let Some(map) = change.as_object_mut() {
            map.remove("name");
            if body.handler.is_empty() {
                map.remove("handler");
            }
        }
        Ok(change)
    }
}

fn set<T>(field: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *field = value;
    }
}

/// The shared sandbox flags, as a function's settings.
pub(super) fn apply_sandbox_flags(f: SandboxFlags, body: &mut DeployBody) -> anyhow::Result<()> {
    set(&mut body.memory_bytes, f.memory);
    set(&mut body.cpus, f.cpus);
    set(&mut body.pids, f.pids);
    set(&mut body.timeout_ms, f.timeout.map(millis));
    set(&mut body.cpu_time_ms, f.cpu_time.map(millis));
    set(&mut body.output_bytes, f.output_limit);
    set(&mut body.tmpfs_bytes, f.tmpfs_size);
    set(
        &mut body.workdir,
        f.workdir.map(|w| w.to_string_lossy().into_owned()),
    );
    set(
        &mut body.user,
        f.user.map(|u| format!("{}:{}", u.uid, u.gid)),
    );
    body.env.extend(f.env);
    if !f.binds.is_empty() {
        let binds = f
            .binds
            .into_iter()
            .map(|b| {
                // The daemon resolves the source on its host: send it absolute.
                let source = std::path::absolute(&b.source)
                    .with_context(|| format!("--bind {}", b.source.display()))?;
                Ok(FunctionBind {
                    source: source.to_string_lossy().into_owned(),
                    target: b.target.to_string_lossy().into_owned(),
                    writable: b.writable,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        body.binds = Some(binds);
    }
    set(&mut body.net, f.net.map(|n| n.as_str().to_owned()));
    Ok(())
}

/// `NAME=VALUE` or `NAME=@FILE` (the file's bytes, which must be UTF-8).
fn secret_pair(kv: &str) -> anyhow::Result<(String, String)> {
    let Some((k, v)) = kv.split_once('=') else {
        bail!("{kv:?} is not NAME=VALUE or NAME=@FILE")
    };
    let value = match v.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| {
            format!("reading the secret file {path} (secrets must be UTF-8 text)")
        })?,
        None => v.to_owned(),
    };
    Ok((k.to_owned(), value))
}

/// A tar archive of `dir`'s contents (not following symlinks).
fn tar_directory(dir: &Path) -> anyhow::Result<Vec<u8>> {
    super::code_dir::pack_code(dir)
}
