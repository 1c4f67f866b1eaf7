//! The project's one date parser, on `jiff`: birthdates (`YYYY-MM-DD`, or the
//! date part of an ISO-8601 date-time) and timestamps (`updated_at`, RFC 3339).

use jiff::civil::{Date, DateTime};
use jiff::Timestamp;

/// `YYYY-MM-DD` naming a day that exists (years 0001 to 9999).
pub fn is_real_date(s: &str) -> bool {
    parse_date(s).is_some()
}

/// `YYYY-MM-DD` exactly, as a date.
pub fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape || s.starts_with("0000") {
        return None;
    }
    s.parse::<Date>().ok()
}

/// The date of a `YYYY-MM-DD` value or of an ISO-8601 date-time
/// (`T` separator, optional seconds and fraction, optional `Z` or offset), as
/// written; None when it is neither or the date or time does not exist.
pub fn date_part(s: &str) -> Option<&str> {
    let date = s.get(..10)?;
    parse_date(date)?;
    let rest = &s[10..];
    if rest.is_empty() {
        return Some(date);
    }
    if !(rest.starts_with('T') || rest.starts_with('t')) || rest.len() < 6 {
        return None;
    }
    let ok = s.parse::<Timestamp>().is_ok()
        || (!rest.ends_with(['Z', 'z']) && s.parse::<DateTime>().is_ok());
    ok.then_some(date)
}

/// An RFC 3339 timestamp, or a date-time without offset read as UTC.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok().or_else(|| {
        s.parse::<DateTime>()
            .ok()
            .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    })
}

/// Seconds since the epoch as RFC 3339 with milliseconds (`…T…Z`).
pub fn iso_millis(epoch_millis: i64) -> String {
    Timestamp::from_millisecond(epoch_millis)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

/// A file time as RFC 3339 (seconds).
pub fn system_time(t: std::time::SystemTime) -> String {
    Timestamp::try_from(t)
        .ok()
        .and_then(|t| t.round(jiff::Unit::Second).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_must_exist_and_be_written_in_full() {
        for ok in ["2000-02-29", "1990-05-06", "0001-01-01", "9999-12-31"] {
            assert!(is_real_date(ok), "{ok}");
        }
        for bad in [
            "1900-02-29",
            "2023-02-29",
            "2023-13-01",
            "2023-00-10",
            "2023-04-31",
            "0000-01-01",
            "1990-5-6",
            "19900506",
            "+001990-05-06",
            "1990-05-06T00:00",
            "",
        ] {
            assert!(!is_real_date(bad), "{bad}");
        }
    }

    #[test]
    fn date_times_give_their_date_as_written() {
        for (s, d) in [
            ("1990-05-06T23:30:00Z", "1990-05-06"),
            ("1990-05-06T23:30:00.123+02:00", "1990-05-06"),
            ("2000-02-29T00:00", "2000-02-29"),
            ("1990-05-06t10:00:00-0500", "1990-05-06"),
        ] {
            assert_eq!(date_part(s), Some(d), "{s}");
        }
        for bad in [
            "1990-05-06T25:00:00Z",
            "1990-05-06 10:00",
            "1990-05-06 garbage",
            "1990-05-06T",
            "1990-02-30T10:00",
        ] {
            assert_eq!(date_part(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_with_and_without_offset() {
        let a = parse_timestamp("2024-01-02T03:04:05Z").unwrap();
        let b = parse_timestamp("2024-01-02T05:04:05+02:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(parse_timestamp("2024-01-02T03:04:05").unwrap(), a);
        assert!(parse_timestamp("yesterday").is_none());
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
    }
}
