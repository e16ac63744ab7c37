//! The subset of PostgreSQL's interval syntax that makes sense for "at least this old":
//! `"5 minutes"`, `"1 hour 30 mins"`, `"1h30m"`, `"90s"`, `"00:05:00"`, `"1 day 02:00:00"`,
//! `"@ 2 hours"`, a bare number (seconds, as PostgreSQL reads it). Months count 30 days and years
//! 365.25 days, as PostgreSQL's `extract(epoch from interval)` does. Kept pure so that the filter
//! can be validated without a server.

use super::error::suggest;

const MICROS_PER_SECOND: f64 = 1_000_000.0;

/// (unit names, microseconds per unit)
const UNITS: &[(&[&str], f64)] = &[
    (&["us", "usec", "usecs", "microsecond", "microseconds"], 1.0),
    (
        &["ms", "msec", "msecs", "millisecond", "milliseconds"],
        1_000.0,
    ),
    (
        &["s", "sec", "secs", "second", "seconds"],
        MICROS_PER_SECOND,
    ),
    (
        &["m", "min", "mins", "minute", "minutes"],
        60.0 * MICROS_PER_SECOND,
    ),
    (
        &["h", "hr", "hrs", "hour", "hours"],
        3_600.0 * MICROS_PER_SECOND,
    ),
    (&["d", "day", "days"], 86_400.0 * MICROS_PER_SECOND),
    (&["w", "week", "weeks"], 7.0 * 86_400.0 * MICROS_PER_SECOND),
    (
        &["mon", "mons", "month", "months"],
        30.0 * 86_400.0 * MICROS_PER_SECOND,
    ),
    (
        &["y", "yr", "yrs", "year", "years"],
        365.25 * 86_400.0 * MICROS_PER_SECOND,
    ),
];

const UNIT_NAMES: &[&str] = &[
    "microseconds",
    "milliseconds",
    "seconds",
    "minutes",
    "hours",
    "days",
    "weeks",
    "months",
    "years",
];

/// Parses an interval into microseconds. The result may be negative; the caller decides.
pub fn parse_interval(text: &str) -> Result<i64, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(r) = rest.strip_prefix('@') {
        rest = r.trim_start();
    }
    let mut negate = false;
    let lower = rest.to_ascii_lowercase();
    let mut body = lower.as_str();
    if let Some(b) = body.strip_suffix("ago") {
        if b.ends_with(|c: char| c.is_ascii_whitespace()) {
            negate = true;
            body = b.trim_end();
        }
    }

    let mut total = 0.0f64;
    let mut seen_any = false;
    let mut chars = body.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_ascii_whitespace() || c == ',' {
            chars.next();
            continue;
        }
        if !(c.is_ascii_digit() || c == '-' || c == '+' || c == '.') {
            return Err(format!("expected a number at \"{}\"", &body[start..]));
        }
        // A number, possibly a clock time such as 01:30:00 or -00:05.
        let mut end = start + c.len_utf8();
        chars.next();
        while let Some(&(i, c)) = chars.peek() {
            if c.is_ascii_digit() || c == '.' || c == ':' {
                end = i + c.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let number = &body[start..end];
        if number.contains(':') {
            total += parse_clock(number)?;
            seen_any = true;
            continue;
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("\"{number}\" is not a number"))?;
        // Skip blanks between the number and its unit.
        while let Some(&(_, c)) = chars.peek() {
            if c.is_ascii_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let unit_start = chars.peek().map_or(body.len(), |&(i, _)| i);
        let mut unit_end = unit_start;
        while let Some(&(i, c)) = chars.peek() {
            if c.is_ascii_alphabetic() {
                unit_end = i + c.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let unit = &body[unit_start..unit_end];
        let per_unit = if unit.is_empty() {
            MICROS_PER_SECOND // a bare number means seconds, as in PostgreSQL
        } else {
            unit_micros(unit).ok_or_else(|| match suggest(unit, UNIT_NAMES) {
                Some(s) => format!("unknown unit \"{unit}\"; did you mean \"{s}\"?"),
                None => format!("unknown unit \"{unit}\""),
            })?
        };
        total += value * per_unit;
        seen_any = true;
    }
    if !seen_any {
        return Err("it has no number".into());
    }
    if negate {
        total = -total;
    }
    if !total.is_finite() || total.abs() >= i64::MAX as f64 {
        return Err("it is out of range".into());
    }
    Ok(total.round() as i64)
}

fn unit_micros(unit: &str) -> Option<f64> {
    UNITS
        .iter()
        .find(|(names, _)| names.contains(&unit))
        .map(|(_, micros)| *micros)
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff`, optionally signed.
fn parse_clock(text: &str) -> Result<f64, String> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(d) => (-1.0, d),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    let parts: Vec<&str> = digits.split(':').collect();
    let bad = || format!("\"{text}\" is not a time of day such as 01:30:00");
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let hours: f64 = parts[0].parse().map_err(|_| bad())?;
    let minutes: f64 = parts[1].parse().map_err(|_| bad())?;
    let seconds: f64 = match parts.get(2) {
        Some(s) => s.parse().map_err(|_| bad())?,
        None => 0.0,
    };
    if parts[0].contains('.') || parts[1].contains('.') || minutes >= 60.0 || seconds >= 60.0 {
        return Err(bad());
    }
    Ok(sign * (hours * 3_600.0 + minutes * 60.0 + seconds) * MICROS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::parse_interval;

    const MS: i64 = 1_000;
    const S: i64 = 1_000_000;

    #[test]
    fn accepts_the_common_forms() {
        assert_eq!(parse_interval("5 minutes"), Ok(300 * S));
        assert_eq!(parse_interval("5 minute"), Ok(300 * S));
        assert_eq!(parse_interval("1 hour 30 mins"), Ok(5_400 * S));
        assert_eq!(parse_interval("1h30m"), Ok(5_400 * S));
        assert_eq!(parse_interval("90s"), Ok(90 * S));
        assert_eq!(parse_interval("250 ms"), Ok(250 * MS));
        assert_eq!(parse_interval("1.5 hours"), Ok(5_400 * S));
        assert_eq!(parse_interval("00:05:00"), Ok(300 * S));
        assert_eq!(parse_interval("01:30"), Ok(5_400 * S));
        assert_eq!(parse_interval("1 day 02:00:00"), Ok(26 * 3_600 * S));
        assert_eq!(parse_interval("@ 2 hours"), Ok(7_200 * S));
        assert_eq!(parse_interval("30"), Ok(30 * S));
        assert_eq!(parse_interval("2 Weeks"), Ok(14 * 86_400 * S));
        assert_eq!(parse_interval("1 mon"), Ok(30 * 86_400 * S));
        assert_eq!(parse_interval("0"), Ok(0));
        assert_eq!(parse_interval("10 us"), Ok(10));
    }

    #[test]
    fn negative_forms_parse_as_negative() {
        assert_eq!(parse_interval("-5 minutes"), Ok(-300 * S));
        assert_eq!(parse_interval("5 minutes ago"), Ok(-300 * S));
        assert_eq!(parse_interval("-00:01:00"), Ok(-60 * S));
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        let err = parse_interval("5 minuts").unwrap_err();
        assert!(err.contains("did you mean \"minutes\""), "{err}");
        assert!(parse_interval("").is_err());
        assert!(parse_interval("   ").is_err());
        assert!(parse_interval("minutes").is_err());
        assert!(parse_interval("1..5 s").is_err());
        assert!(parse_interval("10:99").is_err());
        assert!(parse_interval("1:2:3:4").is_err());
        assert!(parse_interval("P1D").is_err());
        assert!(parse_interval("1e400 years").is_err());
        assert!(parse_interval("99999999999999999 years").is_err());
        assert!(parse_interval("5 ☃").is_err());
    }
}
