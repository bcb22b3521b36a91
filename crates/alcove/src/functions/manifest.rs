//! The function manifest (`alcove.toml`) that `alcove fn deploy DIR` reads,
//! and env files (`--env-file`, `env_file`). Sizes and durations are written
//! as on the command line ("128M", "5s"); paths are relative to the
//! manifest's directory; unknown keys are errors.

use alcove_api::wire::DeployBody;
use alcove_sandbox::units::{parse_duration, parse_size};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's file name in a function's directory.
pub(super) const FILE: &str = "alcove.toml";

/// The most a manifest or env file may hold: they are settings, not data.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    name: Option<String>,
    handler: Option<Handler>,
    /// Default: the manifest's directory.
    code: Option<PathBuf>,
    image: Option<String>,
    accel: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    env_file: Option<PathBuf>,
    memory: Option<Quantity>,
    cpus: Option<f64>,
    pids: Option<u64>,
    timeout: Option<Quantity>,
    cpu_time: Option<Quantity>,
    output_limit: Option<Quantity>,
    tmpfs_size: Option<Quantity>,
    workdir: Option<String>,
    user: Option<String>,
    net: Option<String>,
    concurrency: Option<u32>,
    /// `python`: alcove's runtime serves `entry` (default main.py).
    runtime: Option<String>,
    entry: Option<String>,
    /// Serve from copies of an initialised template.
    warm: Option<bool>,
    init_timeout: Option<Quantity>,
    /// `container` (default) or `gvisor`.
    isolation: Option<String>,
    /// gVisor sandboxes kept booted ahead of requests.
    pool: Option<u32>,
    /// `SRC:DST[:ro|rw]`, SRC relative to the manifest's directory.
    #[serde(default)]
    bind: Vec<String>,
    /// What the kernel polices the function with, as in the API (`[guard]`
    /// with syscall_budget, cpu_budget_ms, deny_net, allow_net, allow_paths,
    /// devices, policy = "learned").
    guard: Option<alcove_engine::Guard>,
}

/// A command line split like a shell would, or an argv.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Handler {
    Line(String),
    Argv(Vec<String>),
}

/// A size or duration: text as on the command line, or a bare number
/// (bytes, or seconds).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Text(String),
    Number(u64),
}

impl Quantity {
    fn bytes(&self, key: &str) -> anyhow::Result<u64> {
        match self {
            Quantity::Number(n) => Ok(*n),
            Quantity::Text(t) => parse_size(t).map_err(|e| anyhow::anyhow!("{FILE}: {key}: {e}")),
        }
    }

    fn millis(&self, key: &str) -> anyhow::Result<u64> {
        let duration = match self {
            Quantity::Number(n) => std::time::Duration::from_secs(*n),
            Quantity::Text(t) => {
                parse_duration(t).map_err(|e| anyhow::anyhow!("{FILE}: {key}: {e}"))?
            }
        };
        Ok(crate::sandbox_flags::millis(duration))
    }
}

/// Reads a manifest; returns it with the directory its paths are relative to.
pub(super) fn read(file: &Path) -> anyhow::Result<(Manifest, PathBuf)> {
    let text = read_small(file)?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    Ok((manifest, dir))
}

fn read_small(file: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("reading {} (it must be UTF-8 text)", file.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "{}: larger than {} KiB; it should hold settings only",
            file.display(),
            MAX_FILE_BYTES >> 10
        );
    }
    Ok(text)
}

impl Manifest {
    /// Sets the manifest's settings in `body`; returns the code directory.
    pub(super) fn apply(
        &self,
        body: &mut DeployBody,
        dir: &Path,
    ) -> anyhow::Result<Option<PathBuf>> {
        if let Some(name) = &self.name {
            body.name = name.clone();
        }
        match &self.handler {
            Some(Handler::Line(line)) => {
                body.handler = shlex::split(line)
                    .filter(|argv| !argv.is_empty())
                    .with_context(|| {
                        format!("{FILE}: handler {line:?}: give a command, quoted like in a shell")
                    })?;
            }
            Some(Handler::Argv(argv)) => body.handler = argv.clone(),
            None => {}
        }
        body.image = self.image.clone();
        body.accel = self.accel.clone();
        if let Some(file) = &self.env_file {
            body.env.extend(read_env_file(&dir.join(file))?);
        }
        body.env
            .extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        body.memory_bytes = self
            .memory
            .as_ref()
            .map(|q| q.bytes("memory"))
            .transpose()?;
        body.cpus = self.cpus;
        body.pids = self.pids;
        body.timeout_ms = self
            .timeout
            .as_ref()
            .map(|q| q.millis("timeout"))
            .transpose()?;
        body.cpu_time_ms = self
            .cpu_time
            .as_ref()
            .map(|q| q.millis("cpu_time"))
            .transpose()?;
        body.output_bytes = self
            .output_limit
            .as_ref()
            .map(|q| q.bytes("output_limit"))
            .transpose()?;
        body.tmpfs_bytes = self
            .tmpfs_size
            .as_ref()
            .map(|q| q.bytes("tmpfs_size"))
            .transpose()?;
        body.workdir = self.workdir.clone();
        body.user = self.user.clone();
        body.net = self.net.clone();
        body.concurrency = self.concurrency;
        body.runtime = self.runtime.clone();
        body.entry = self.entry.clone();
        body.warm = self.warm;
        body.isolation = self.isolation.clone();
        body.pool = self.pool;
        if let Some(q) = &self.init_timeout {
            body.init_timeout_ms = Some(q.millis("init_timeout")?);
        }
        if let Some(guard) = &self.guard {
            body.guard = Some(guard.clone());
        }
        if !self.bind.is_empty() {
            let mut binds = Vec::new();
            for text in &self.bind {
                let b = alcove_sandbox::Bind::parse(text)
                    .map_err(|e| anyhow::anyhow!("{FILE}: bind: {e}"))?;
                let source = std::path::absolute(dir.join(&b.source))
                    .with_context(|| format!("{FILE}: bind {text}"))?;
                binds.push(alcove_engine::FunctionBind {
                    source: source.to_string_lossy().into_owned(),
                    target: b.target.to_string_lossy().into_owned(),
                    writable: b.writable,
                });
            }
            body.binds = Some(binds);
        }
        // No image: the directory is the code. With an image, only when named.
        let code = match (&self.code, &self.image) {
            (Some(code), _) => Some(dir.join(code)),
            (None, None) => Some(dir.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(code)
    }
}

/// Reads `KEY=VALUE` lines; blank lines and lines starting with `#` are
/// skipped, `export ` before a key and one pair of quotes around a value
/// are dropped. A bad line is an error naming the file and line.
pub(super) fn read_env_file(file: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = read_small(file)?;
    parse_env_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        // The line itself is never shown: an env file holds values meant to
        // stay private, and a wrong path may name a file of credentials.
        let bad = |why: &str| format!("line {}: {why}; write KEY=VALUE", i + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad("no '='"));
        };
        let key = key.trim();
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(bad(
                "the key must be letters, digits and '_', not starting with a digit",
            ));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        env.insert(key.to_owned(), unquoted.to_owned());
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_skip_comments_and_name_the_bad_line() {
        let env = parse_env_file("# a comment\n\nA=1\nexport B=\"two words\"\nC='x=y'\n").unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "x=y");
        let e = parse_env_file("A=1\n\nnot a pair\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        assert!(!e.contains("not a pair"), "the line was shown: {e}");
        let e = parse_env_file("root:$6$hash:19000:0:99999:7:::\n").unwrap_err();
        assert!(!e.contains("hash"), "the line was shown: {e}");
        assert!(parse_env_file("1X=2").unwrap_err().contains("line 1"));
    }

    #[test]
    fn manifests_parse_sizes_and_refuse_unknown_keys_with_the_line() {
        let m: Manifest = toml::from_str(
            "name = \"hello\"\nhandler = \"sh /fn/h.sh\"\nmemory = \"128M\"\ntimeout = \"5s\"\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        let mut body = DeployBody::default();
        let code = m.apply(&mut body, Path::new("/srv/hello")).unwrap();
        assert_eq!(body.name, "hello");
        assert_eq!(body.handler, vec!["sh", "/fn/h.sh"]);
        assert_eq!(body.memory_bytes, Some(128 << 20));
        assert_eq!(body.timeout_ms, Some(5000));
        assert_eq!(body.env["A"], "1");
        assert_eq!(code, Some(PathBuf::from("/srv/hello")));
        let e = toml::from_str::<Manifest>("name = \"x\"\nmemroy = \"1M\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("memroy") && text.contains("line 2"), "{text}");
    }
}
