//! The one duration syntax of the whole config file (and of the CLI's
//! duration flags): [`humantime`]'s, e.g. `500ms`, `30s`, `5m`, `2h`,
//! `1d`, `1h 30m`, `1.5s`. A number always needs its unit (`30` alone is
//! refused everywhere: it could mean seconds or milliseconds). Every
//! duration in the config is at most a year, so no value can overflow a
//! timer.

use std::time::Duration;

/// The longest duration accepted anywhere in the config.
pub const MAX: Duration = Duration::from_secs(365 * 86_400);

/// Parses one duration; the error is a sentence for the person editing
/// the config (the caller adds the key).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("is empty; write a duration such as 500ms, 30s, 5m, 2h or 1d".into());
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "`{t}` has no unit; write e.g. {t}s or {t}ms (units: ms, s, m, h, d)"
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => {
            format!("`{t}` is too long; at most 365d")
        }
        e => format!("`{t}` is not a duration ({e}); write e.g. 500ms, 30s, 5m, 2h, 1d or 1h 30m"),
    })?;
    if d > MAX {
        return Err(format!("`{t}` is too long; at most 365d"));
    }
    Ok(d)
}

/// Parses a duration that must lie within `min ..= max`.
pub fn parse_within(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse(s)?;
    if d < min {
        return Err(format!(
            "`{}` is too short; at least {}",
            s.trim(),
            format(min)
        ));
    }
    if d > max {
        return Err(format!(
            "`{}` is too long; at most {}",
            s.trim(),
            format(max)
        ));
    }
    Ok(d)
}

/// A duration in the same syntax, for messages and summaries.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax_for_every_duration() {
        let ok = |s: &str, d: Duration| assert_eq!(parse(s), Ok(d), "{s}");
        ok("500ms", Duration::from_millis(500));
        ok("30s", Duration::from_secs(30));
        ok(" 5m ", Duration::from_secs(300));
        ok("2h", Duration::from_secs(7200));
        ok("1d", Duration::from_secs(86_400));
        ok("1h 30m", Duration::from_secs(5400));
        ok("1.5s", Duration::from_millis(1500));
        ok("365d", MAX);
        for (bad, needle) in [
            ("30", "has no unit"),
            ("1.5", "has no unit"),
            ("5 parsecs", "not a duration"),
            ("abc", "not a duration"),
            ("-1s", "not a duration"),
            ("", "is empty"),
            ("366d", "too long"),
            ("99999999999999999999s", "too long"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bounds_are_named_in_the_same_syntax() {
        let e = parse_within("500ms", Duration::from_secs(1), MAX).unwrap_err();
        assert!(e.contains("at least 1s"), "{e}");
        assert_eq!(format(Duration::from_secs(5400)), "1h 30m");
    }
}
