//! Durations and byte sizes as operators write them, in flags, the
//! environment and the tenants file.

use std::time::Duration;

/// Parses `90s`, `5m`, `1h`, `250ms`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}' is not a duration such as 90s, 5m or 1h: {e}"))
}

/// Parses a byte size: a number of bytes, or a number and a unit, with or
/// without a space, in any case: `KiB`/`K`, `MiB`/`M`, `GiB`/`G` are powers
/// of two, `KB`, `MB`, `GB` powers of ten (`1048576`, `512 KiB`, `64MiB`,
/// `64mib`, `1GB`).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("'{s}' is not a size such as 64MiB"))?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("'{s}': unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(multiplier).ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses a duration that must not be zero (a time to live, a deadline).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("'{s}' is zero; give a duration above it, such as 90s, 5m or 1h")),
        d => Ok(d),
    }
}

/// Parses a byte size that must not be zero.
pub fn parse_positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err(format!("'{s}' is zero; give a size above it, such as 64MiB")),
        n => Ok(n),
    }
}

/// Parses a count that must be at least 1 (workers, postings, tasks).
pub fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("it must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_size("64mib"), Ok(64 << 20));
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert!(parse_positive_size("0MiB").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_count("3"), Ok(3));
        assert!(parse_count("0").is_err());
    }
}
