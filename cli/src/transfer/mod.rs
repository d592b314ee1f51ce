//! `ferry cp` and `ferry serve`: argument parsing, presentation (progress bar, JSON events,
//! summaries, log lines) and the mapping of the transfer library's typed errors to exit codes.
//! The transfer itself (QUIC, TLS, identities, sessions) is `ferry-net`.

pub(crate) mod account;
pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod config;
pub(crate) mod cp;
pub(crate) mod doctor;
pub(crate) mod events;
pub(crate) mod log;
pub(crate) mod progress;
pub(crate) mod serve;

/// Parses a rate in bits/s: a number with an optional `k`, `m` or `g` suffix (powers of 1000),
/// e.g. `500m`, `1.5g`, `100000`.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a rate: use bits/s with an optional k, m or g suffix, e.g. 500m")
    })?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e13 {
        return Err(format!("{s:?} is out of range (0 to 10000g)"));
    }
    Ok((v * mult).round() as u64)
}

/// Parses a size in bytes: a number with an optional `k`, `m`, `g` or `t` suffix (powers of
/// 1024), e.g. `64m`, `1.5g`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: use bytes with an optional k, m, g or t suffix, e.g. 64m")
    })?;
    let bytes = v * mult as f64;
    if !v.is_finite() || v < 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: a number with an optional `s`, `m` or `h` suffix (seconds by default),
/// e.g. `90`, `30s`, `5m`, `1.5h`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('s') => (&t[..t.len() - 1], 1.0),
        Some('m') => (&t[..t.len() - 1], 60.0),
        Some('h') => (&t[..t.len() - 1], 3600.0),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration: use seconds, or a number with s, m or h, e.g. 5m")
    })?;
    let secs = v * mult;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to a year)"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "m", "soon", "-1s", "1e12h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("100").unwrap(), 100);
        for bad in ["", "k", "big", "-1m", "1e30t"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500m").unwrap(), 500_000_000);
        assert_eq!(parse_rate("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("100k").unwrap(), 100_000);
        assert_eq!(parse_rate("12345").unwrap(), 12_345);
        assert_eq!(parse_rate("0").unwrap(), 0);
        for bad in ["", "m", "fast", "-1m", "1t", "1e20"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
