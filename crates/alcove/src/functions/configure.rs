//! `alcove fn config` and `alcove fn secret`, and how every command that
//! makes a version (these and `fn deploy`) says what it made and inherited.

use super::deploy::SettingsArgs;
use alcove_api::Client;
use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub(super) enum SecretCommand {
    /// Set a secret (a file at /run/secrets/KEY) as a new version:
    /// KEY=VALUE, or KEY=@FILE for a file's bytes.
    Set {
        name: String,
        #[arg(value_name = "KEY=VALUE|KEY=@FILE")]
        pair: String,
    },
    /// Remove a secret as a new version.
    Rm { name: String, key: String },
    /// List the secrets' names (never their values).
    Ls { name: String },
}

/// `fn config NAME [settings]`: a new version with these settings changed.
pub(super) fn config(
    client: &Client,
    name: &str,
    settings: SettingsArgs,
    json: bool,
) -> anyhow::Result<()> {
    let change = settings.change()?;
    check_not_empty(&change)?;
    let v = client.configure(name, &change)?;
    print_version(&v, json);
    Ok(())
}

pub(super) fn secret(client: &Client, command: SecretCommand, json: bool) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set { name, pair } => {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("{pair:?} is not KEY=VALUE or KEY=@FILE");
            };
            let value = match value.strip_prefix('@') {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("reading the secret file {path}"))?,
                None => value.as_bytes().to_vec(),
            };
            let v = client.set_secret(&name, key, &value)?;
            print_version(&v, json);
        }
        SecretCommand::Rm { name, key } => {
            let v = client.remove_secret(&name, &key)?;
            print_version(&v, json);
        }
        SecretCommand::Ls { name } => {
            let v = client.secrets(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for s in v["secrets"].as_array().into_iter().flatten() {
                    println!("{}", s.as_str().unwrap_or(""));
                }
            }
        }
    }
    Ok(())
}

/// Prints a deploy's answer: the version made and what it inherited, or
/// that nothing changed.
pub(super) fn print_version(v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let name = v["function"].as_str().unwrap_or("");
    if v["unchanged"] == true {
        println!("{name} is unchanged (version {})", v["version"]);
        return;
    }
    let digest = v["code_digest"]
        .as_str()
        .map(|d| format!(", code {}", &d[..12.min(d.len())]))
        .unwrap_or_default();
    println!("deployed {name} version {}{digest}", v["version"]);
    if let Some(line) = inherited_line(v) {
        println!("{line}");
    }
}

/// `inherited from version 3: env LOG_LEVEL, secrets db, memory 128M, code`.
fn inherited_line(v: &Value) -> Option<String> {
    let from = v["inherited_from"].as_u64()?;
    let names: Vec<&str> = v["inherited"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if names.is_empty() {
        return None;
    }
    let keys = |prefix: &str| -> Vec<&str> {
        names
            .iter()
            .filter_map(|n| n.strip_prefix(prefix))
            .collect()
    };
    let mut parts = Vec::new();
    for (prefix, label) in [("env.", "env"), ("secrets.", "secrets")] {
        let k = keys(prefix);
        if !k.is_empty() {
            parts.push(format!("{label} {}", k.join(",")));
        }
    }
    let c = &v["config"];
    for n in names.iter().filter(|n| !n.contains('.') && **n != "code") {
        parts.push(setting(n, &c[*n]));
    }
    if names.contains(&"code") {
        parts.push("code".into());
    }
    Some(format!(
        "inherited from version {from}: {}",
        parts.join(", ")
    ))
}

/// One inherited setting, named as its flag and with the flag's units.
fn setting(field: &str, value: &Value) -> String {
    let n = value.as_u64();
    let shown = match field {
        "memory_bytes" | "output_bytes" | "tmpfs_bytes" => n.map(size),
        "timeout_ms" | "cpu_time_ms" => n.map(duration),
        "handler" => value.as_array().map(|argv| {
            let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            format!("'{}'", words.join(" "))
        }),
        "binds" => value.as_array().map(|binds| {
            let all: Vec<String> = binds
                .iter()
                .map(|b| {
                    let rw = if b["writable"] == true { ":rw" } else { "" };
                    format!(
                        "{}:{}{rw}",
                        b["source"].as_str().unwrap_or(""),
                        b["target"].as_str().unwrap_or("")
                    )
                })
                .collect();
            all.join(" ")
        }),
        _ => None,
    }
    .unwrap_or_else(|| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let label = match field {
        "memory_bytes" => "memory",
        "output_bytes" => "output-limit",
        "tmpfs_bytes" => "tmpfs-size",
        "timeout_ms" => "timeout",
        "cpu_time_ms" => "cpu-time",
        "binds" => "bind",
        other => other,
    };
    format!("{label} {shown}")
}

/// Bytes as the size flags take them: 128M, 6M, 1536K, 100.
pub(super) fn size(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && (bytes >> shift) << shift == bytes {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Milliseconds as the duration flags take them: 5s, 2m, 1500ms.
pub(super) fn duration(ms: u64) -> String {
    if ms >= 60_000 && (ms / 60_000) * 60_000 == ms {
        format!("{}m", ms / 60_000)
    } else if ms >= 1000 && (ms / 1000) * 1000 == ms {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Refuses `fn config NAME` with nothing to change.
pub(super) fn check_not_empty(change: &Value) -> anyhow::Result<()> {
    let empty = change.as_object().is_some_and(|m| {
        m.values().all(|v| match v {
            Value::Object(o) => o.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Null => true,
            _ => false,
        })
    });
    if empty {
        bail!("nothing to change: give settings such as --env KEY=VALUE, --unset-env KEY or --memory 256M");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_inherited_line_uses_flag_names_and_units() {
        let v = json!({
            "function": "hello", "version": 4, "unchanged": false, "inherited_from": 3,
            "inherited": ["memory_bytes", "env.LOG_LEVEL", "secrets.db", "code"],
            "config": { "memory_bytes": 134217728 }
        });
        assert_eq!(
            inherited_line(&v).unwrap(),
            "inherited from version 3: env LOG_LEVEL, secrets db, memory 128M, code"
        );
        assert_eq!(
            (size(6 << 20), size(1536 << 10), size(100)),
            ("6M".into(), "1536K".into(), "100".into())
        );
        assert_eq!(
            (duration(5000), duration(120_000), duration(1500)),
            ("5s".into(), "2m".into(), "1500ms".into())
        );
    }
}
