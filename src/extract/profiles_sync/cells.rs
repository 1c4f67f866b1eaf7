//! The cells of a Profiles Sync row that carry a number or a time: `seq`
//! (exact, never through f64) and the timestamp, in every physical and
//! logical type and text spelling a warehouse writes, or refused naming
//! the file and row.

use crate::error::UsageError;
use anyhow::Result;
use std::path::Path;

/// A `seq` as text: an integer (any width that fits 64 bits), or a decimal
/// or float spelling of one (`123.000`, `123.`, `1.23E2`) when it is exactly
/// that integer. Never rounded through f64: a value beyond 64 bits, or with
/// a fraction, is refused naming the file and row; a float spelling beyond
/// 2^53 (past which a DOUBLE has lost digits) is refused with how to unload
/// the column instead.
pub fn parse_seq(s: &str, file: &Path, row: u64) -> Result<i64> {
    let t = s.trim();
    let refuse = |why: &str| -> anyhow::Error {
        UsageError::new(format!("{}: row {row}: seq {s:?} {why}", file.display())).into()
    };
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    let beyond = "is beyond 64 bits, which segsync keeps; it cannot be compared exactly";
    if t.parse::<i128>().is_ok() {
        return Err(refuse(beyond));
    }
    // `123.000` or `123.`: a decimal with a zero (or no) fraction, as a
    // DECIMAL(38,0) column (Snowflake's NUMBER) is written: exact.
    if let Some((int, frac)) = t.split_once('.') {
        if frac.bytes().all(|b| b == b'0') && int.bytes().any(|b| b.is_ascii_digit()) {
            if let Ok(n) = int.parse::<i64>() {
                return Ok(n);
            }
            if int.parse::<i128>().is_ok() {
                return Err(refuse(beyond));
            }
        }
    }
    // A float spelling: only when it is an integer f64 holds exactly.
    match t.parse::<f64>() {
        Ok(f) => float_seq(f, file, row),
        Err(_) => Err(refuse("is not a number")),
    }
}

/// 2^53: the integers below it are exact in a DOUBLE.
const DOUBLE_EXACT: f64 = 9_007_199_254_740_992.0;

/// A `seq` stored as a float (a DOUBLE column, as DuckDB writes a HUGEINT):
/// exact only below 2^53 and without a fraction; otherwise refused naming
/// the file and row and how to unload it instead.
pub fn float_seq(f: f64, file: &Path, row: u64) -> Result<i64> {
    if f.fract() == 0.0 && f.abs() < DOUBLE_EXACT {
        return Ok(f as i64);
    }
    let why = if f.fract() != 0.0 || !f.is_finite() {
        "is not an integer".to_string()
    } else {
        "is a floating-point number past 2^53, where a DOUBLE has lost its last digits (two rows' order may be wrong)".to_string()
    };
    Err(UsageError::new(format!(
        "{}: row {row}: seq {f} {why}; unload the seq column as an integer instead (CAST(seq AS BIGINT), or DECIMAL(38,0))",
        file.display()
    ))
    .into())
}

/// A `seq` stored as an unsigned 64-bit integer: exact below 2^63, refused
/// beyond (never wrapped).
pub fn unsigned_seq(n: u64, file: &Path, row: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| {
        UsageError::new(format!(
            "{}: row {row}: seq {n} is beyond 64 signed bits, which segsync keeps; it cannot be compared exactly",
            file.display()
        ))
        .into()
    })
}

/// A `seq` stored as a DECIMAL with `scale` digits after the point, read as
/// its unscaled integer: exact when the fraction is zero, else refused.
pub fn scaled_seq(unscaled: i128, scale: u32, file: &Path, row: u64) -> Result<i64> {
    let p = 10i128.checked_pow(scale);
    let refuse = |why: &str| -> anyhow::Error {
        UsageError::new(format!(
            "{}: row {row}: seq {unscaled}e-{scale} {why}",
            file.display()
        ))
        .into()
    };
    let Some(p) = p else {
        return Err(refuse("has a scale no integer fits"));
    };
    if unscaled % p != 0 {
        return Err(refuse("has a fraction; seq must be an integer"));
    }
    i64::try_from(unscaled / p).map_err(|_| {
        refuse("is beyond 64 bits, which segsync keeps; it cannot be compared exactly")
    })
}

/// A timestamp as warehouses spell it in text: ISO 8601 with `T` or a
/// space, and `Z`, `+00:00`, `+0000`, `+00` or ` UTC`; or epoch seconds,
/// milliseconds, microseconds or nanoseconds (by size), with a fraction.
/// Exact to the millisecond (floored), never through f64.
pub fn parse_ts_text(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Some(ms) = epoch_ms(t) {
        return Some(ms);
    }
    let mut u = t.to_string();
    for suffix in [" UTC", "UTC", " utc"] {
        if let Some(rest) = u.strip_suffix(suffix) {
            u = format!("{}Z", rest.trim_end());
            break;
        }
    }
    // `… +0000`: the offset written apart from the time.
    if let Some(i) = u.rfind([' ']).filter(|i| *i > 10) {
        if u[i + 1..].starts_with(['+', '-']) {
            u.remove(i);
        }
    }
    // `+0000` and `+00` become `+00:00`.
    let b = u.as_bytes();
    let n = b.len();
    let sign = |i: usize| n > i && (b[n - i - 1] == b'+' || b[n - i - 1] == b'-');
    let digits = |k: usize| n >= k && b[n - k..].iter().all(u8::is_ascii_digit);
    if sign(4) && digits(4) && n > 15 {
        u.insert(n - 2, ':');
    } else if sign(2) && digits(2) && n > 13 && b[n - 6] == b':' {
        u.push_str(":00");
    }
    if u.len() > 10 && u.as_bytes()[10] == b' ' {
        u.replace_range(10..11, "T");
    }
    crate::dates::parse_timestamp(&u).map(|t| t.as_millisecond())
}

/// Epoch time as digits with an optional fraction: seconds, milliseconds,
/// microseconds or nanoseconds by the integer part's size. Floored to the
/// millisecond, a negative one too (-1.5 s is -1500 ms, -1.0005 s -1001).
fn epoch_ms(t: &str) -> Option<i64> {
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let n: i64 = int.parse().ok()?;
    let nonzero = |digits: &str| digits.bytes().any(|b| b != b'0');
    // The whole milliseconds, and whether anything is left below them.
    let (ms, below) = match n {
        n if n >= 100_000_000_000_000_000 => (n / 1_000_000, n % 1_000_000 != 0 || nonzero(frac)),
        n if n >= 100_000_000_000_000 => (n / 1_000, n % 1_000 != 0 || nonzero(frac)),
        n if n >= 100_000_000_000 => (n, nonzero(frac)),
        _ => {
            let d: String = frac.chars().chain("000".chars()).take(3).collect();
            let frac_ms = d.parse::<i64>().ok()?;
            (
                n.checked_mul(1_000)? + frac_ms,
                nonzero(frac.get(3..).unwrap_or("")),
            )
        }
    };
    Some(if neg { -ms - i64::from(below) } else { ms })
}

/// A timestamp cell: None when empty (or `\N`), an error naming the file
/// and row when it is no timestamp: never dropped without a word.
pub fn ts_cell(text: &str, file: &Path, row: u64) -> Result<Option<i64>> {
    let t = text.trim();
    if t.is_empty() || t == "\\N" {
        return Ok(None);
    }
    parse_ts_text(t).map(Some).ok_or_else(|| {
        UsageError::new(format!(
            "{}: row {row}: timestamp {text:?} is not a time segsync reads (ISO 8601 with Z, +00:00, +0000, +00 or UTC, or epoch seconds, ms, µs or ns)",
            file.display()
        ))
        .into()
    })
}

/// The unit of a timestamp column stored as a number, by its logical or
/// converted type; None for a plain number (then read by its size, as text
/// is). INT96 columns are converted to milliseconds as they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsUnit {
    Millis,
    Micros,
    Nanos,
    /// `DATE`: days since the epoch.
    Days,
}

impl TsUnit {
    /// Milliseconds since the epoch, exactly (floored, never through f64).
    pub fn to_ms(self, n: i64) -> i64 {
        match self {
            TsUnit::Millis => n,
            TsUnit::Micros => n.div_euclid(1_000),
            TsUnit::Nanos => n.div_euclid(1_000_000),
            TsUnit::Days => n.saturating_mul(86_400_000),
        }
    }
}

pub fn timestamp_unit(d: &parquet::schema::types::ColumnDescriptor) -> Option<TsUnit> {
    use parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type};
    if d.physical_type() == Type::INT96 {
        return Some(TsUnit::Millis);
    }
    match d.logical_type() {
        Some(LogicalType::Timestamp { unit, .. }) => Some(match unit {
            TimeUnit::MILLIS(_) => TsUnit::Millis,
            TimeUnit::MICROS(_) => TsUnit::Micros,
            TimeUnit::NANOS(_) => TsUnit::Nanos,
        }),
        Some(LogicalType::Date) => Some(TsUnit::Days),
        _ => match d.converted_type() {
            ConvertedType::TIMESTAMP_MILLIS => Some(TsUnit::Millis),
            ConvertedType::TIMESTAMP_MICROS => Some(TsUnit::Micros),
            ConvertedType::DATE => Some(TsUnit::Days),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_read_exactly_in_every_spelling_a_warehouse_writes() {
        let want = 1_704_164_645_123; // 2024-01-02T03:04:05.123Z
        for s in [
            "2024-01-02T03:04:05.123Z",
            "2024-01-02T03:04:05.123+00:00",
            "2024-01-02T03:04:05.123+0000",
            "2024-01-02T03:04:05.123+00",
            "2024-01-02 03:04:05.123 UTC",
            "2024-01-02 03:04:05.123",
            "2024-01-02 03:04:05.123456+00",
            "2024-01-02 03:04:05.123456 +0000",
            "1704164645.123",
            "1704164645.1239",
            "1704164645123",
            "1704164645123456",
            "1704164645123456789",
        ] {
            assert_eq!(parse_ts_text(s), Some(want), "{s}");
        }
        assert_eq!(parse_ts_text("2024-01-02 04:04:05.123+01:00"), Some(want));
        assert_eq!(parse_ts_text("yesterday"), None);
        let e = ts_cell("yesterday", Path::new("p.csv"), 3).unwrap_err();
        assert!(e.to_string().contains("p.csv: row 3"), "{e}");
        assert_eq!(ts_cell("", Path::new("p.csv"), 3).unwrap(), None);
        // Numbers by unit, floored, never through f64 (ns came out 1 ms early).
        assert_eq!(TsUnit::Nanos.to_ms(1_704_164_645_123_999_999), want);
        assert_eq!(TsUnit::Micros.to_ms(1_704_164_645_123_999), want);
        assert_eq!(TsUnit::Micros.to_ms(-1), -1);
        assert_eq!(TsUnit::Days.to_ms(19_724), 1_704_153_600_000);
    }

    #[test]
    fn a_seq_is_exact_or_refused() {
        let p = Path::new("s.parquet");
        assert_eq!(
            parse_seq("9007199254740993", p, 1).unwrap(),
            9_007_199_254_740_993
        );
        assert_eq!(parse_seq("123.000", p, 1).unwrap(), 123);
        assert_eq!(parse_seq("1.23E2", p, 1).unwrap(), 123);
        assert!(parse_seq("99999999999999999999", p, 2).is_err());
        assert!(parse_seq("1.5", p, 2).is_err());
        let e = parse_seq("x", p, 2).unwrap_err();
        assert!(e.to_string().contains("s.parquet: row 2"), "{e}");
        // DECIMAL(38,0), as Snowflake's NUMBER and pyarrow's decimal128
        // write it: exact at real magnitudes.
        assert_eq!(
            parse_seq("1700000000000060222.", p, 1).unwrap(),
            1_700_000_000_000_060_222
        );
        assert_eq!(
            parse_seq("1700000000000060223.000", p, 1).unwrap(),
            1_700_000_000_000_060_223
        );
        assert_eq!(
            scaled_seq(170_000_000_000_006_022_200, 2, p, 1).unwrap(),
            1_700_000_000_000_060_222
        );
        assert!(scaled_seq(170_000_000_000_006_022_205, 2, p, 1).is_err());
        // A DOUBLE past 2^53 has lost digits: refused, saying how to unload.
        let e = parse_seq("1.7000000000000602e18", p, 7)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 7") && e.contains("CAST(seq AS BIGINT)"),
            "{e}"
        );
        let e = float_seq(1.7000000000000602e18, p, 8)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("past 2^53") && e.contains("DECIMAL(38,0)"),
            "{e}"
        );
        assert_eq!(
            float_seq(9_007_199_254_740_991.0, p, 1).unwrap(),
            9_007_199_254_740_991
        );
        // An unsigned 64-bit seq past 2^63 is refused, never wrapped.
        assert_eq!(unsigned_seq(42, p, 1).unwrap(), 42);
        assert!(unsigned_seq(u64::MAX, p, 1).is_err());
    }

    #[test]
    fn a_negative_epoch_with_a_fraction_is_floored() {
        assert_eq!(parse_ts_text("-1.5"), Some(-1_500));
        assert_eq!(parse_ts_text("-1.0005"), Some(-1_001));
        assert_eq!(parse_ts_text("-1.0"), Some(-1_000));
        assert_eq!(parse_ts_text("-1"), Some(-1_000));
        assert_eq!(parse_ts_text("1.0005"), Some(1_000));
        assert_eq!(parse_ts_text("-100000000000.5"), Some(-100_000_000_001));
        assert_eq!(parse_ts_text("-100000000000000.5"), Some(-100_000_000_001));
        assert_eq!(parse_ts_text("-100000000000000"), Some(-100_000_000_000));
    }
}
