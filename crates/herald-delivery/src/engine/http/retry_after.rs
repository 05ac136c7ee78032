//! `Retry-After` as a wait, in both of its forms.

use chrono::{DateTime, NaiveDateTime, Utc};
use std::time::Duration;

/// Parses `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date,
/// returned as the wait from `now` (zero for a date in the past).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// IMF-fixdate, plus the obsolete RFC 850 and asctime forms recipients
/// must still accept.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc2822(value) {
        return Some(at.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(value, fmt).ok())
        .map(|at| at.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:49:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let secs = |s| parse_retry_after(s, now);
        assert_eq!(secs("5"), Some(Duration::from_secs(5)));
        assert_eq!(secs(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            secs("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            secs("Sun Nov  6 08:49:37 1994"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(secs("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "99999999999999999999999",
            "Sun, 99 Nov",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }
}
