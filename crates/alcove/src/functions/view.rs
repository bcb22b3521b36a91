//! How `alcove fn` prints functions and invocations as text: aligned
//! columns, sizes and durations as the flags take them (`64M`, `2s`), and
//! times in UTC.

use alcove_sandbox::units::{format_duration, format_size};
use serde_json::Value;
use std::time::Duration;

pub(super) fn join_argv(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| shlex::try_quote(s).map_or_else(|_| s.to_owned(), |q| q.into_owned()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Rows as columns padded to their widest cell: each header is a name and
/// whether its column is right-aligned (numbers). Lines carry no trailing
/// blanks.
pub(super) fn table(header: &[(&str, bool)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if i > 0 {
                out.push_str("  ");
            }
            if header.get(i).is_some_and(|(_, right)| *right) {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|(h, _)| *h).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `fn ls`: one line per function.
pub(super) fn function_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                f["name"].as_str().unwrap_or("").to_owned(),
                f["latest"].to_string(),
                f["versions"].to_string(),
                join_argv(&f["handler"])
                    + if f["warm"].as_bool() == Some(true) {
                        "  [warm]"
                    } else {
                        ""
                    },
            ]
        })
        .collect();
    table(
        &[
            ("NAME", false),
            ("LATEST", true),
            ("VERSIONS", true),
            ("HANDLER", false),
        ],
        &rows,
    )
}

fn size(v: &Value) -> Option<String> {
    v.as_u64().map(format_size)
}

fn millis(v: &Value) -> Option<String> {
    v.as_u64()
        .map(|ms| format_duration(Duration::from_millis(ms)))
}

/// A version's settings as `label value` pairs, in a fixed order; settings
/// this CLI does not know yet are shown as the daemon sent them.
fn settings(c: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |label: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push((label.to_owned(), v));
        }
    };
    put("image", c["image"].as_str().map(str::to_owned));
    put("accel", c["accel"].as_str().map(str::to_owned));
    put("net", c["net"].as_str().map(str::to_owned));
    put("memory", size(&c["memory_bytes"]));
    put("cpus", c["cpus"].as_f64().map(|n| n.to_string()));
    put("pids", c["pids"].as_u64().map(|n| n.to_string()));
    put("timeout", millis(&c["timeout_ms"]));
    put("cpu-time", millis(&c["cpu_time_ms"]));
    put("output-limit", size(&c["output_bytes"]));
    put("tmpfs-size", size(&c["tmpfs_bytes"]));
    put(
        "concurrency",
        c["concurrency"].as_u64().map(|n| n.to_string()),
    );
    let known = [
        "handler",
        "image",
        "image_id",
        "accel",
        "net",
        "memory_bytes",
        "cpus",
        "pids",
        "timeout_ms",
        "cpu_time_ms",
        "output_bytes",
        "tmpfs_bytes",
        "concurrency",
        "env",
        "secrets",
        "binds",
    ];
    for b in c["binds"].as_array().into_iter().flatten() {
        let rw = if b["writable"] == true { ":rw" } else { "" };
        put(
            "bind",
            Some(format!(
                "{}:{}{rw}",
                b["source"].as_str().unwrap_or(""),
                b["target"].as_str().unwrap_or("")
            )),
        );
    }
    if let Some(map) = c.as_object() {
        for (key, value) in map {
            if known.contains(&key.as_str()) || value.is_null() {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(false) => continue,
                Value::Array(a) if a.is_empty() => continue,
                other => other.to_string(),
            };
            put(&key.replace('_', "-"), Some(text));
        }
    }
    out
}

pub(super) fn show_function(f: &Value) {
    println!(
        "{}  (latest: version {})",
        f["name"].as_str().unwrap_or(""),
        f["latest"]
    );
    for v in f["versions"].as_array().into_iter().flatten() {
        let c = &v["config"];
        let marker = if v["version"] == f["latest"] {
            "*"
        } else {
            " "
        };
        println!(
            "{marker} version {}  deployed {}",
            v["version"],
            v["created_at"].as_f64().map_or("-".into(), utc)
        );
        let mut rows: Vec<(String, String)> = vec![
            (
                "handler".into(),
                serde_json::from_value::<alcove_engine::FunctionConfig>(c.clone())
                    .ok()
                    .and_then(|config| alcove_engine::runtime_command(&config))
                    .map_or_else(|| join_argv(&c["handler"]), |argv| argv.join(" ")),
            ),
            (
                "code".into(),
                v["code_digest"]
                    .as_str()
                    .map_or("none".into(), |d| d[..12.min(d.len())].to_owned()),
            ),
        ];
        rows.extend(settings(c));
        if let Some(env) = c["env"].as_object().filter(|e| !e.is_empty()) {
            let pairs: Vec<String> = env
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            rows.push(("env".into(), pairs.join(" ")));
        }
        let secrets: Vec<&str> = c["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !secrets.is_empty() {
            rows.push(("secrets".into(), secrets.join(", ")));
        }
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in rows {
            println!("    {label:<width$}  {value}");
        }
        for key in ["workdir", "user"] {
            if let Some(value) = c[key].as_str() {
                println!("        {key} {value}");
            }
        }
        for b in c["binds"].as_array().into_iter().flatten() {
            let rw = if b["writable"] == true { ":rw" } else { "" };
            let (source, target) = (b["source"].as_str(), b["target"].as_str());
            println!(
                "        bind {}:{}{rw}",
                source.unwrap_or(""),
                target.unwrap_or("")
            );
        }
    }
}

/// One invocation on one line: when, id, version, how it ended, how long.
pub(super) fn invocation_line(r: &Value) -> String {
    let took = r["wall_ms"].as_f64().map_or("-".into(), |m| {
        format_duration(Duration::from_secs_f64(m / 1e3))
    });
    let exit = r["exit_code"]
        .as_i64()
        .map_or(String::new(), |c| format!(" exit={c}"));
    let error = r["error"]
        .as_str()
        .map_or(String::new(), |e| format!(" ({e})"));
    format!(
        "{}  {}  v{}  {}{exit}  {took}{error}",
        r["created_at"].as_f64().map_or("-".into(), utc),
        r["id"].as_str().unwrap_or(""),
        r["version"],
        r["status"].as_str().unwrap_or("")
    )
}

/// Unix seconds as `2026-12-01 04:30:12Z`.
pub(super) fn utc(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One line about a learning session: `learning f: 40 invocations to go, 60 learned (35 syscalls)`.
pub(super) fn learning_line(v: &Value) -> String {
    let name = v["function"].as_str().unwrap_or("?");
    let learned = v["invocations"].as_u64().unwrap_or(0);
    let syscalls = v["profile"]["syscalls"].as_array().map_or(0, Vec::len);
    let state = if v["learning"] == true {
        let mut parts = Vec::new();
        if let Some(n) = v["remaining"].as_u64() {
            parts.push(format!("{n} invocations to go"));
        }
        if let Some(t) = v["until"].as_f64() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            parts.push(format!("{:.0} s left", (t - now).max(0.0)));
        }
        format!("learning {name}: {}", parts.join(", "))
    } else {
        format!("{name} is not learning")
    };
    format!("{state}; learned from {learned} invocations ({syscalls} syscalls)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utc_dates_are_right() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_099_412.5), "2026-12-01 04:30:12Z");
    }

    #[test]
    fn tables_align_on_the_widest_cell() {
        let list = json!({ "functions": [
            { "name": "a-very-long-function-name-indeed", "latest": 12, "versions": 3, "handler": ["sh", "-c", "echo hi"] },
            { "name": "b", "latest": 1, "versions": 1, "handler": ["true"] },
        ]});
        let text = function_table(&list);
        let lines: Vec<&str> = text.lines().collect();
        let column = |line: &str, word: &str| line.find(word).unwrap();
        let end = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        assert_eq!(end(lines[0], "LATEST"), end(lines[1], "12"));
        let latest_end = end(lines[0], "LATEST");
        assert_eq!(&lines[2][latest_end - 2..latest_end], " 1", "{text}");
        assert_eq!(column(lines[0], "HANDLER"), column(lines[1], "sh -c"));
        assert_eq!(column(lines[0], "HANDLER"), column(lines[2], "true"));
    }

    #[test]
    fn settings_read_as_flags_do() {
        let c = json!({ "handler": ["x"], "memory_bytes": 134_217_728u64, "timeout_ms": 5000,
                        "output_bytes": 6_291_456u64, "image": "app:2", "accel": "cpu",
                        "protocol": "http", "public": false });
        let s: Vec<String> = settings(&c)
            .into_iter()
            .map(|(l, v)| format!("{l} {v}"))
            .collect();
        for want in [
            "memory 128M",
            "timeout 5s",
            "output-limit 6M",
            "image app:2",
            "accel cpu",
            "protocol http",
        ] {
            assert!(s.contains(&want.to_owned()), "{want} in {s:?}");
        }
        assert!(!s.iter().any(|l| l.starts_with("public")), "{s:?}");
    }
}
