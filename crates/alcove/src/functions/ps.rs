//! `alcove fn ps`: the invocations in flight as aligned text, with units
//! people read.

use serde_json::Value;

/// The columns, and whether each is right-aligned (numbers).
const COLUMNS: [(&str, bool); 10] = [
    ("ID", false),
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
    let rows: Vec<[String; 10]> = list["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    let mut widths = COLUMNS.map(|(name, _)| name.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 10]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let (w, right) = (widths[i], COLUMNS[i].1);
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if i > 0 {
                text.push_str("  ");
            }
            if right {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&pad);
                }
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(COLUMNS.map(|(name, _)| name));
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

fn row(r: &Value) -> [String; 10] {
    let text = |key: &str| r[key].as_str().unwrap_or("-").to_owned();
    let bytes = |key: &str| r[key].as_u64().map_or("-".into(), human_bytes);
    let mut status = text("status");
    if r["cancelled"] == true {
        status.push_str(" (cancelling)");
    }
    [
        text("id"),
        text("function"),
        r["version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}")),
        status,
        if r["async"] == true { "async" } else { "sync" }.into(),
        r["attempts"].as_u64().unwrap_or(0).to_string(),
        r["age_ms"].as_f64().map_or("-".into(), human_ms),
        bytes("memory_bytes"),
        bytes("memory_peak_bytes"),
        r["cpu_ms"].as_f64().map_or("-".into(), human_ms),
    ]
}

/// Bytes with the unit `--memory` takes: `512B`, `64M`, `1.5G`.
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 && value.fract() >= 0.05 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{:.0}{}", value, UNITS[unit])
    }
}

/// Milliseconds as people read them: `250ms`, `1.2s`, `3m05s`, `2h07m`.
pub(super) fn human_ms(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        return format!("{ms:.0}ms");
    }
    let secs = ms / 1000.0;
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let whole = secs as u64;
    if whole < 3600 {
        return format!("{}m{:02}s", whole / 60, whole % 60);
    }
    format!("{}h{:02}m", whole / 3600, whole % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(64 << 20), "64M");
        assert_eq!(human_bytes(1536 << 20), "1.5G");
        assert_eq!(human_bytes(100 << 10), "100K");
        assert_eq!(human_ms(3.4), "3ms");
        assert_eq!(human_ms(1234.0), "1.2s");
        assert_eq!(human_ms(185_000.0), "3m05s");
        assert_eq!(human_ms(7_620_000.0), "2h07m");
    }

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
