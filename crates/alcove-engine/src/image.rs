//! Running an image: its layers as a sandbox's root and its config as the
//! defaults for the command, environment, working directory and user.
//! Shared by functions and `alcove run --image`.

use crate::EngineError;
use alcove_image::{ImageRecord, Store};
use alcove_sandbox::{SandboxSpec, User};
use std::ffi::OsString;

/// Makes `spec` run `record`: its layers as the root, its environment under
/// the caller's, and its command, working directory and user where the
/// caller gave none. Image users that are root run as nobody: alcove has no
/// user namespace, so uid 0 inside would be uid 0 on the host.
pub fn apply_image(
    spec: &mut SandboxSpec,
    store: &Store,
    record: &ImageRecord,
    explicit_user: bool,
    explicit_workdir: bool,
) -> Result<(), EngineError> {
    let invalid = |m: String| EngineError::Invalid(m);
    let mut lowers = store.lower_dirs(record);
    if lowers.is_empty() {
        return Err(invalid(format!("image {} has no layers", record.name)));
    }
    spec.rootfs = Some(lowers.remove(0));
    spec.lower_layers = lowers;
    if spec.argv.is_empty() {
        let config = &record.config;
        spec.argv = config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .map(OsString::from)
            .collect();
        if spec.argv.is_empty() {
            return Err(invalid(format!(
                "image {} has no Entrypoint or Cmd: give a command",
                record.name
            )));
        }
    }
    let mut env: Vec<(OsString, OsString)> = record
        .config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    for (k, v) in spec.env.drain(..) {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    spec.env = env;
    if !explicit_workdir {
        if let Some(dir) = &record.config.working_dir {
            spec.workdir = dir.into();
        }
    }
    if !explicit_user {
        if let Some(user) = &record.config.user {
            let resolved = resolve_user(store, record, user)?;
            if resolved.uid != 0 {
                spec.user = resolved;
            }
        }
    }
    Ok(())
}

/// `uid`, `uid:gid`, `name` or `name:group`, names looked up in the image's
/// /etc/passwd and /etc/group (top layer first).
fn resolve_user(store: &Store, record: &ImageRecord, user: &str) -> Result<User, EngineError> {
    let (who, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        for layer in store.lower_dirs(record) {
            let Ok(text) = std::fs::read_to_string(layer.join(file)) else {
                continue;
            };
            return text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .flatten()
            });
        }
        None
    };
    let missing = |what: &str, file: &str| {
        EngineError::Invalid(format!(
            "image {}: {what} is not in its {file}",
            record.name
        ))
    };
    let (uid, mut gid) = match who.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("etc/passwd", who)
            .ok_or_else(|| missing(&format!("user {who:?}"), "/etc/passwd"))?,
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("etc/group", g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| missing(&format!("group {g:?}"), "/etc/group"))?,
        };
    }
    Ok(User { uid, gid })
}
