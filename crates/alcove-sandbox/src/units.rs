//! Human-friendly sizes (`64M`) and durations (`500ms`), parsed strictly.

use std::time::Duration;

/// Parses a byte size: a number with an optional binary suffix K, M, G or T
/// (`KiB`, `KB` and lower case are accepted too; all mean powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{text:?} is not a size: use a number with an optional K, M, G or T suffix, such as 64M")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use a number with an optional K, M, G or T suffix, such as 64M"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!(
            "{text:?} is out of range: a size must be at least 1 byte"
        ));
    }
    Ok(bytes as u64)
}

/// Parses a duration: a number followed by ns, us, ms, s, m or h (`1.5s`, `500ms`).
/// A bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: use a number with a unit, such as 500ms, 2s or 1m"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: use a number with a unit, such as 500ms, 2s or 1m")
    })?;
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(format!(
            "{text:?} is out of range: a duration must be positive"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Writes a byte count the way [`parse_size`] reads it: `64M`, `1.5G`,
/// `512K`, `100` (at most one decimal, exact where it can be).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, suffix) in UNITS {
        if bytes >= unit {
            if bytes & (unit - 1) == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
            let value = bytes as f64 / unit as f64;
            return if value >= 100.0 {
                format!("{value:.0}{suffix}")
            } else {
                format!("{value:.1}{suffix}")
            };
        }
    }
    bytes.to_string()
}

/// Writes a duration the way [`parse_duration`] reads it: `2s`, `1.5s`,
/// `250ms`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        return format!("{}us", d.as_micros());
    }
    if ms < 1000.0 {
        return if ms.fract() == 0.0 || ms >= 100.0 {
            format!("{ms:.0}ms")
        } else {
            format!("{ms:.1}ms")
        };
    }
    let s = ms / 1e3;
    for (unit, suffix) in [(3600.0, "h"), (60.0, "m")] {
        if s >= unit && (s % unit == 0.0 || s >= 10.0 * unit) {
            return format!("{:.0}{suffix}", s / unit);
        }
    }
    if s.fract() == 0.0 || s >= 100.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_back() {
        assert_eq!(format_size(64 << 20), "64M");
        assert_eq!(format_size(3 << 29), "1.5G");
        assert_eq!(format_size(100), "100");
        assert_eq!(format_size(1536), "1.5K");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_micros(40)), "40us");
        for n in [1u64, 1000, 64 << 20, 3 << 29, 7 << 40] {
            let back = parse_size(&format_size(n)).unwrap();
            assert!(back.abs_diff(n) * 20 <= n, "{n} -> {}", format_size(n));
        }
        for ms in [1u64, 250, 1500, 60_000, 5_400_000] {
            let d = Duration::from_millis(ms);
            let back = parse_duration(&format_duration(d)).unwrap();
            assert!(back.abs_diff(d) * 20 <= d, "{ms} -> {}", format_duration(d));
        }
    }

    #[test]
    fn sizes_use_binary_suffixes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2mib").unwrap(), 2 << 20);
    }

    #[test]
    fn bad_sizes_say_what_to_do() {
        for bad in ["", "M", "12Q", "-5M", "0", "1..2M"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("size"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
    }

    #[test]
    fn bad_durations_say_what_to_do() {
        for bad in ["", "ms", "5 parsecs", "0s", "-1s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad}: {err}");
        }
    }
}
