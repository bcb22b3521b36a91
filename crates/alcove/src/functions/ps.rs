//! `alcove fn ps`: the invocations in flight as aligned text, with units
//! people read.

use alcove_sandbox::units::{format_duration, format_size};
use serde_json::Value;
use std::time::Duration;

/// The columns, and whether each is right-aligned (numbers).
const COLUMNS: [(&str, bool); 11] = [
    ("ID", false),
    ("NODE", false),
    ("FUNCTION", false),
    ("VERSION", true),
    ("STATUS", false),
    ("MODE", false),
    ("ATTEMPTS", true),
    ("AGE", true),
    ("MEMORY", true),
    ("PEAK", true),
    ("CPU", true),
];

/// The listing `GET /v1/invocations` returned, as a table.
pub(super) fn table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    super::view::table(&COLUMNS, &rows)
}

fn row(r: &Value) -> Vec<String> {
    let text = |key: &str| r[key].as_str().unwrap_or("-").to_owned();
    let bytes = |key: &str| r[key].as_u64().map_or("-".into(), format_size);
    let ms = |key: &str| {
        r[key].as_f64().map_or("-".into(), |ms| {
            format_duration(Duration::from_secs_f64(ms.max(0.0) / 1e3))
        })
    };
    let mut status = text("status");
    if r["cancelled"] == true {
        status.push_str(" (cancelling)");
    }
    vec![
        text("id"),
        text("node"),
        text("function"),
        r["version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}")),
        status,
        if r["async"] == true { "async" } else { "sync" }.into(),
        r["attempts"].as_u64().unwrap_or(0).to_string(),
        ms("age_ms"),
        bytes("memory_bytes"),
        bytes("memory_peak_bytes"),
        ms("cpu_ms"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_aligns_its_columns_whatever_the_widths() {
        let list = json!({ "invocations": [
            { "id": "a1", "function": "f", "version": 1, "status": "running", "async": false,
              "attempts": 1, "age_ms": 1500.0, "memory_bytes": 64u64 << 20,
              "memory_peak_bytes": 70u64 << 20, "cpu_ms": 12.0, "cancelled": false },
            { "id": "b2", "function": "a-much-longer-name", "version": 12, "status": "queued",
              "async": true, "attempts": 0, "age_ms": 20.0, "memory_bytes": null,
              "memory_peak_bytes": null, "cpu_ms": null, "cancelled": true },
        ]});
        let text = table(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].contains("64M") && lines[1].contains("1.5s"),
            "{text}"
        );
        assert!(lines[2].contains("queued (cancelling)"), "{text}");
        // Every column starts where its header does (left-aligned) or ends
        // where it does (right-aligned).
        let start = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(start(lines[0], "FUNCTION"), start(lines[1], "f "));
        assert_eq!(start(lines[0], "FUNCTION"), start(lines[2], "a-much"));
        let end = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        assert_eq!(end(lines[0], "CPU"), lines[1].len());
        assert_eq!(end(lines[0], "AGE"), end(lines[1], "1.5s"));
        assert_eq!(end(lines[0], "AGE"), end(lines[2], "20ms"));
    }
}
