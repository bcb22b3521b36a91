//! What a deploy or a configuration change asks for, and the version it
//! makes: the settings given replace the previous version's, environment and
//! secrets merge key by key, and the rest is inherited (and said so).

use crate::engine::Engine;
use crate::model::{DeployRequest, Deployed, FunctionBind, FunctionConfig, VersionInfo};
use crate::EngineError;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// The most secrets a version holds, and the most bytes each may have.
pub const MAX_SECRETS: usize = 256;
pub const MAX_SECRET_BYTES: usize = 1 << 20;
/// The most bytes a version's secrets have together: every version keeps a
/// copy, so a one-line change must not cost the disk much more.
pub const MAX_SECRETS_TOTAL_BYTES: usize = 4 << 20;
/// The most bytes a function's handler and environment have together (each
/// `KEY=VALUE` and argument with its NUL): the kernel's floor for a
/// program's arguments and environment, so that `execve` never refuses them.
pub const MAX_ENV_AND_HANDLER_BYTES: usize = 128 << 10;

/// The settings a deploy, `PATCH /v1/functions/NAME` or a secret change
/// gives; what it leaves out stays as it was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Variables set (or replaced), one by one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Variables removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_env: Vec<String>,
    /// Secret values set (or replaced), one by one; UTF-8 text in JSON.
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "text_values",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Secrets removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_secrets: Vec<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Replaces the whole list when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binds: Option<Vec<FunctionBind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// `body` or `http`: what the handler writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Whether `/fn/NAME` answers without the daemon's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// `python`: alcove's runtime serves `entry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Serve from copies of an initialised template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout_ms: Option<u64>,
    /// Replaces the whole guard when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::Guard>,
    /// `container` or `gvisor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// gVisor sandboxes booted ahead of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<u32>,
}

fn text_values<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    let text = BTreeMap::<String, String>::deserialize(d)?;
    Ok(text.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
}

impl FunctionConfig {
    /// What a function deployed with nothing set gets (before the
    /// operator's defaults fill its limits).
    pub fn fresh() -> FunctionConfig {
        serde_json::from_str(r#"{"handler": []}"#).expect("the defaults parse")
    }
}

/// The version a change makes, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub config: FunctionConfig,
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The previous version's code, when it is kept.
    pub code_digest: Option<String>,
    pub inherited_from: Option<u32>,
    pub inherited: Vec<String>,
}

/// Applies `change` to `base` (the version inherited from and its secret
/// values), or to a fresh configuration without one. `defaults` is a fresh
/// configuration as the operator's defaults fill it: a setting inherited
/// with that value is not worth listing.
pub(crate) fn plan(
    change: &ConfigChange,
    base: Option<(&VersionInfo, BTreeMap<String, Vec<u8>>)>,
    defaults: &FunctionConfig,
) -> Plan {
    let (mut c, mut secrets, code_digest, inherited_from) = match base {
        Some((v, secrets)) => (
            v.config.clone(),
            secrets,
            v.code_digest.clone(),
            Some(v.version),
        ),
        None => (FunctionConfig::fresh(), BTreeMap::new(), None, None),
    };
    let before = c.clone();
    let before_secrets: Vec<String> = secrets.keys().cloned().collect();
    set(&mut c.handler, &change.handler);
    set(&mut c.memory_bytes, &change.memory_bytes.map(Some));
    set(&mut c.cpus, &change.cpus.map(Some));
    set(&mut c.pids, &change.pids.map(Some));
    set(&mut c.timeout_ms, &change.timeout_ms.map(Some));
    set(&mut c.cpu_time_ms, &change.cpu_time_ms.map(Some));
    set(&mut c.output_bytes, &change.output_bytes);
    set(&mut c.tmpfs_bytes, &change.tmpfs_bytes.map(Some));
    set(&mut c.workdir, &change.workdir.clone().map(Some));
    set(&mut c.user, &change.user.clone().map(Some));
    set(&mut c.binds, &change.binds);
    set(&mut c.net, &change.net);
    set(&mut c.concurrency, &change.concurrency);
    set(&mut c.protocol, &change.protocol);
    set(&mut c.public, &change.public);
    set(&mut c.runtime, &change.runtime.clone().map(Some));
    set(&mut c.entry, &change.entry.clone().map(Some));
    set(&mut c.warm, &change.warm);
    set(&mut c.init_timeout_ms, &change.init_timeout_ms.map(Some));
    set(&mut c.guard, &change.guard);
    set(&mut c.accel, &change.accel.clone().map(Some));
    set(&mut c.isolation, &change.isolation);
    if change.isolation.as_deref() == Some("container") {
        c.pool = None; // a gVisor setting: it does not carry over to the container tier
    }
    set(&mut c.pool, &change.pool.map(Some));
    if let Some(image) = &change.image {
        c.image = Some(image.clone());
        c.image_id = None; // resolved again: the name may point at a newer import
    }
    for key in &change.unset_env {
        c.env.remove(key);
    }
    c.env
        .extend(change.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for name in &change.unset_secrets {
        secrets.remove(name);
    }
    secrets.extend(change.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    c.secrets = secrets.keys().cloned().collect();

    let mut inherited = Vec::new();
    if inherited_from.is_some() {
        inherited = inherited_settings(change, &before, defaults);
        // Sets: a list of millions searched once per variable held the deploy lock for minutes.
        let unset_env: std::collections::BTreeSet<&String> = change.unset_env.iter().collect();
        let unset_secrets: std::collections::BTreeSet<&String> =
            change.unset_secrets.iter().collect();
        let kept = |k: &String| !change.env.contains_key(k) && !unset_env.contains(k);
        inherited.extend(
            before
                .env
                .keys()
                .filter(|k| kept(k))
                .map(|k| format!("env.{k}")),
        );
        inherited.extend(
            before_secrets
                .iter()
                .filter(|k| !change.secrets.contains_key(*k) && !unset_secrets.contains(k))
                .map(|k| format!("secrets.{k}")),
        );
        if code_digest.is_some() {
            inherited.push("code".into()); // the deploy drops it when it brings code
        }
    }
    Plan {
        config: c,
        secrets,
        code_digest,
        inherited_from,
        inherited,
    }
}

/// `latest` with its secret values, as a deploy compares with it.
pub(crate) type Latest = Option<(VersionInfo, BTreeMap<String, Vec<u8>>)>;

impl Engine {
    /// The version `req` would make from `latest`, and `latest`.
    pub(crate) fn plan(&self, req: &DeployRequest) -> Result<(Plan, Latest), EngineError> {
        let latest = match self.store.function(&req.name) {
            Ok(f) => f.versions.into_iter().find(|v| v.version == f.latest),
            Err(EngineError::NoFunction(_)) if !req.must_exist => None,
            Err(e) => return Err(e),
        };
        let latest = match latest {
            Some(v) => {
                let secrets = self.store.secrets(&v.function, v.version)?;
                Some((v, secrets))
            }
            None => None,
        };
        let base = latest
            .as_ref()
            .filter(|_| req.inherit)
            .map(|(v, s)| (v, s.clone()));
        let mut defaults = FunctionConfig::fresh();
        // Cannot fail for a fresh configuration: its defaults are the operator's.
        let _ = self.config.limits.check_and_fill(&mut defaults);
        Ok((plan(&req.change, base, &defaults), latest))
    }

    /// Changes settings or secrets of an existing function as a new version
    /// with the same code (none when nothing changed). Blocking.
    pub fn configure(&self, name: &str, change: ConfigChange) -> Result<Deployed, EngineError> {
        self.deploy(DeployRequest {
            name: name.to_owned(),
            change,
            code_tar: None,
            inherit: true,
            must_exist: true,
        })
    }

    /// The names of the secrets `latest` has (never their values).
    pub fn secret_names(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let f = self.store.function(name)?;
        Ok(f.versions
            .into_iter()
            .find(|v| v.version == f.latest)
            .map(|v| v.config.secrets)
            .unwrap_or_default())
    }

    /// Removes one secret as a new version; refuses a name `latest` lacks.
    pub fn remove_secret(&self, name: &str, secret: &str) -> Result<Deployed, EngineError> {
        if !self.secret_names(name)?.iter().any(|s| s == secret) {
            return Err(EngineError::NoSecret(name.to_owned(), secret.to_owned()));
        }
        self.configure(
            name,
            ConfigChange {
                unset_secrets: vec![secret.to_owned()],
                ..ConfigChange::default()
            },
        )
    }
}

/// Records the planned version, unless it equals `latest` in configuration,
/// code and secret values.
pub(crate) fn finish(
    engine: &Engine,
    name: String,
    plan: Plan,
    latest: Latest,
) -> Result<Deployed, EngineError> {
    if let Some((v, secrets)) = &latest {
        if v.config == plan.config && v.code_digest == plan.code_digest && *secrets == plan.secrets
        {
            if v.config.warm && engine.live_template(v).is_none() {
                engine.start_template(v)?;
            }
            engine.refill_pool(v);
            return Ok(Deployed {
                version: v.clone(),
                unchanged: true,
                inherited_from: None,
                inherited: Vec::new(),
            });
        }
    }
    let version = engine.store.add_version(
        &name,
        &plan.config,
        plan.code_digest.as_deref(),
        &plan.secrets,
    )?;
    // Version numbers start again after `fn rm`: a secrets directory a
    // removed function of this name left (a crash between removing its
    // records and its files) must not serve the new version.
    let _ = std::fs::remove_dir_all(
        engine
            .config
            .data_dir
            .join("secrets")
            .join(&name)
            .join(version.version.to_string()),
    );
    engine.forget(&name);
    // A version that cannot start as it asks (a warm template, a gVisor
    // pool) is refused, and leaves nothing: `latest` and what follows it
    // go back to the version before.
    let refuse = |e: EngineError| -> Result<Deployed, EngineError> {
        let previous = latest.as_ref().map(|(v, _)| v.version);
        engine
            .store
            .remove_version(&name, version.version, previous)?;
        engine.forget(&name);
        engine.follow_latest(&name);
        Err(e)
    };
    if version.config.warm {
        if let Err(e) = engine.start_template(&version) {
            return refuse(e);
        }
    } else {
        engine.stop_template(&name);
    }
    if version.config.isolation == "gvisor" {
        if let Err(e) = engine.start_pool(&version) {
            return refuse(e);
        }
    } else {
        engine.stop_pool(&name);
    }
    tracing::info!(
        function = %version.function,
        version = version.version,
        warm = version.config.warm,
        guard = !version.config.guard.is_empty(),
        "deployed"
    );
    Ok(Deployed {
        version,
        unchanged: false,
        inherited_from: plan.inherited_from,
        inherited: plan.inherited,
    })
}

/// Secret names and sizes, bounded.
pub(crate) fn check_secrets(secrets: &BTreeMap<String, Vec<u8>>) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::Invalid(m));
    if secrets.len() > MAX_SECRETS {
        return invalid(format!(
            "{} secrets: a function may have at most {MAX_SECRETS}",
            secrets.len()
        ));
    }
    let total: usize = secrets.values().map(Vec::len).sum();
    if total > MAX_SECRETS_TOTAL_BYTES {
        return invalid(format!(
            "secrets: {total} bytes together; a function's secrets may have at most {} MiB \
             together",
            MAX_SECRETS_TOTAL_BYTES >> 20
        ));
    }
    for (name, value) in secrets {
        if !crate::valid_name(name) {
            return invalid(format!(
                "secret name {name:?}: use 1 to 63 of a-z, 0-9, '-' and '_'"
            ));
        }
        if value.len() > MAX_SECRET_BYTES {
            return invalid(format!(
                "secret {name}: {} bytes; a secret may have at most {} MiB",
                value.len(),
                MAX_SECRET_BYTES >> 20
            ));
        }
    }
    Ok(())
}

/// The handler and environment fit what `execve` takes, whatever the
/// daemon's stack limit.
pub(crate) fn check_env_size(c: &FunctionConfig) -> Result<(), EngineError> {
    let env: usize = c.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let argv: usize = c.handler.iter().map(|a| a.len() + 1).sum();
    if env + argv > MAX_ENV_AND_HANDLER_BYTES {
        return Err(EngineError::Invalid(format!(
            "env: {} variables of {env} bytes with a handler of {argv}: at most {} KiB \
             together (a program's environment and arguments); put large values in a secret \
             or in the code",
            c.env.len(),
            MAX_ENV_AND_HANDLER_BYTES >> 10
        )));
    }
    Ok(())
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *field = v.clone();
    }
}

/// The plain settings (not env, secrets or the pinned image id) `change`
/// left out whose inherited value differs from a fresh deploy's, compared
/// field by field as JSON so that every field counts, new ones too.
fn inherited_settings(
    change: &ConfigChange,
    before: &FunctionConfig,
    defaults: &FunctionConfig,
) -> Vec<String> {
    let object = |v: serde_json::Value| match v {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let before = object(serde_json::to_value(before).unwrap_or_default());
    let defaults = object(serde_json::to_value(defaults).unwrap_or_default());
    let given = object(serde_json::to_value(change).unwrap_or_default());
    before
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "env" | "secrets" | "image_id"))
        .filter(|(k, _)| !given.contains_key(k))
        .filter(|(k, v)| defaults.get(k) != Some(v))
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(config: FunctionConfig) -> VersionInfo {
        VersionInfo {
            function: "f".into(),
            version: 3,
            code_digest: Some("abc".into()),
            config,
            created_at: 0.0,
        }
    }

    fn defaults() -> FunctionConfig {
        let mut d = FunctionConfig::fresh();
        d.memory_bytes = Some(256 << 20);
        d
    }

    #[test]
    fn given_fields_replace_env_and_secrets_merge_and_the_rest_is_listed() {
        let mut old = defaults();
        old.handler = vec!["sh".into(), "/fn/a.sh".into()];
        old.memory_bytes = Some(128 << 20);
        old.env = [("A".into(), "1".into()), ("B".into(), "2".into())].into();
        let secrets = [("db".to_owned(), b"pw".to_vec())].into();
        let change = ConfigChange {
            env: [("B".into(), "3".into())].into(),
            unset_env: vec!["C".into()],
            secrets: [("api".into(), b"k".to_vec())].into(),
            timeout_ms: Some(5000),
            ..ConfigChange::default()
        };
        let v = version(old);
        let p = plan(&change, Some((&v, secrets)), &defaults());
        assert_eq!(p.config.env["A"], "1");
        assert_eq!(p.config.env["B"], "3");
        assert_eq!(p.config.timeout_ms, Some(5000));
        assert_eq!(p.config.memory_bytes, Some(128 << 20));
        assert_eq!(p.config.secrets, vec!["api", "db"]);
        assert_eq!(p.code_digest.as_deref(), Some("abc"));
        assert_eq!(p.inherited_from, Some(3));
        assert_eq!(
            p.inherited,
            vec!["handler", "memory_bytes", "env.A", "secrets.db", "code"]
        );
    }

    #[test]
    fn unset_removes_and_no_base_starts_fresh() {
        let mut old = defaults();
        old.env = [("A".into(), "1".into())].into();
        let v = version(old);
        let change = ConfigChange {
            unset_env: vec!["A".into()],
            unset_secrets: vec!["db".into()],
            ..ConfigChange::default()
        };
        let p = plan(
            &change,
            Some((&v, [("db".to_owned(), b"x".to_vec())].into())),
            &defaults(),
        );
        assert!(p.config.env.is_empty() && p.secrets.is_empty());
        assert!(p.config.secrets.is_empty());
        let p = plan(&change, None, &defaults());
        assert_eq!(p.config, FunctionConfig::fresh());
        assert_eq!((p.code_digest, p.inherited_from), (None, None));
    }

    #[test]
    fn a_new_image_name_is_resolved_again() {
        let mut old = defaults();
        old.image = Some("app:1".into());
        old.image_id = Some("sha256:old".into());
        let v = version(old);
        let keep = plan(
            &ConfigChange::default(),
            Some((&v, BTreeMap::new())),
            &defaults(),
        );
        assert_eq!(keep.config.image_id.as_deref(), Some("sha256:old"));
        let change = ConfigChange {
            image: Some("app:1".into()),
            ..ConfigChange::default()
        };
        let again = plan(&change, Some((&v, BTreeMap::new())), &defaults());
        assert_eq!(again.config.image_id, None);
    }

    #[test]
    fn secrets_in_json_are_text_and_unknown_fields_are_refused() {
        let c: ConfigChange =
            serde_json::from_str(r#"{"secrets": {"db": "pw"}, "env": {"A": "1"}}"#).unwrap();
        assert_eq!(c.secrets["db"], b"pw");
        let e = serde_json::from_str::<ConfigChange>(r#"{"memory": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `memory`"), "{e}");
    }
}
