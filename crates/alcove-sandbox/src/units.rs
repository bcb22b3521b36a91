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

#[cfg(test)]
mod tests {
    use super::*;

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
