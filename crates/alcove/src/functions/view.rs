//! How `alcove fn` prints functions and invocations as text.

use serde_json::Value;

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

pub(super) fn show_function(f: &Value) {
    println!(
        "{} (latest: version {})",
        f["name"].as_str().unwrap_or(""),
        f["latest"]
    );
    for v in f["versions"].as_array().into_iter().flatten() {
        let c = &v["config"];
        let mut limits = Vec::new();
        for (key, label) in [
            ("memory_bytes", "memory"),
            ("cpus", "cpus"),
            ("pids", "pids"),
            ("timeout_ms", "timeout_ms"),
            ("cpu_time_ms", "cpu_time_ms"),
            ("output_bytes", "output"),
            ("tmpfs_bytes", "tmpfs"),
            ("concurrency", "concurrency"),
        ] {
            if !c[key].is_null() {
                limits.push(format!("{label}={}", c[key]));
            }
        }
        let marker = if v["version"] == f["latest"] {
            "*"
        } else {
            " "
        };
        println!("{marker} v{:<4} {}", v["version"], join_argv(&c["handler"]));
        println!(
            "        code {}  net {}  {}",
            v["code_digest"]
                .as_str()
                .map_or("none", |d| &d[..12.min(d.len())]),
            c["net"].as_str().unwrap_or(""),
            limits.join(" ")
        );
        let secrets: Vec<&str> = c["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !secrets.is_empty() {
            println!("        secrets {}", secrets.join(", "));
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

pub(super) fn invocation_line(r: &Value) -> String {
    let ms = r["wall_ms"]
        .as_f64()
        .map_or("-".into(), |m| format!("{m:.1}ms"));
    let exit = r["exit_code"]
        .as_i64()
        .map_or(String::new(), |c| format!(" exit={c}"));
    let error = r["error"]
        .as_str()
        .map_or(String::new(), |e| format!(" ({e})"));
    format!(
        "{} v{} {}{exit} {ms}{error}",
        r["id"].as_str().unwrap_or(""),
        r["version"],
        r["status"].as_str().unwrap_or("")
    )
}
