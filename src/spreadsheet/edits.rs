//! Hand edits of `customers.csv`, and the damage spreadsheets do on save.
//!
//! Pure functions over cell text: which separator a header uses, whether a
//! changed value looks like a spreadsheet's doing (leading zeros lost, a date
//! rewritten in a locale format, a digit string turned into scientific
//! notation), which format a non-ISO date is in, and whether bytes that are
//! not UTF-8 read as Windows-1252 (a plain "CSV" save). `diff` and `load` use
//! them; nothing here reads a file.

use crate::records::COLUMNS;

/// The separators `load` accepts: a spreadsheet in a European locale saves
/// with `;`, some with tab.
pub const SEPARATORS: [(u8, &str); 3] = [(b',', "comma"), (b';', "semicolon"), (b'\t', "tab")];

/// The separator a header row uses: the one that splits it into known column
/// names only. Err: why none or several do.
pub fn detect_separator(header_line: &[u8]) -> Result<u8, String> {
    let line = header_line
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(header_line);
    let line = line
        .strip_suffix(b"\n")
        .unwrap_or(line)
        .strip_suffix(b"\r")
        .unwrap_or(line.strip_suffix(b"\n").unwrap_or(line));
    let fits: Vec<(u8, &str, usize)> = SEPARATORS
        .iter()
        .filter_map(|&(sep, name)| {
            let names: Vec<&[u8]> = line.split(|&b| b == sep).collect();
            let known = names.iter().all(|n| {
                let n = n
                    .strip_prefix(b"\"")
                    .and_then(|n| n.strip_suffix(b"\""))
                    .unwrap_or(n);
                COLUMNS.iter().any(|c| c.as_bytes() == n)
            });
            known.then_some((sep, name, names.len()))
        })
        .collect();
    match fits.as_slice() {
        [] => Err(String::new()),
        [(sep, _, _)] => Ok(*sep),
        // A single column fits every separator equally: nothing to choose.
        many if many.iter().all(|f| f.2 == 1) => Ok(b','),
        many => Err(format!(
            "the header splits into known columns with more than one separator ({}); keep one separator",
            many.iter().map(|f| f.1).collect::<Vec<_>>().join(", ")
        )),
    }
}

pub fn separator_name(sep: u8) -> &'static str {
    SEPARATORS
        .iter()
        .find(|s| s.0 == sep)
        .map(|s| s.1)
        .unwrap_or("?")
}

/// What a spreadsheet probably did to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// `00461` → `461`: the column was read as a number.
    LostLeadingZeros,
    /// `1990-05-17` → `17/05/1990`: the date was rewritten in a locale format.
    LocaleDate,
    /// `123456789012` → `1.23457E+11`: a long digit string became a number.
    ScientificNotation,
}

impl Damage {
    /// What happened and what to do, for messages.
    pub fn explain(self) -> &'static str {
        match self {
            Damage::LostLeadingZeros => "lost its leading zeros: a spreadsheet read the column as a number; format the column as text before editing (or import the file with every column as text), or pass --accept-edits if this is intended",
            Damage::LocaleDate => "is the same date rewritten in a locale format by a spreadsheet; dates must stay YYYY-MM-DD: format the column as text before editing",
            Damage::ScientificNotation => "is a long digit string a spreadsheet turned into scientific notation, losing digits; format the column as text before editing",
        }
    }

    /// Refused by `load` unless `--accept-edits` (almost never intended).
    pub fn refused_by_default(self) -> bool {
        self == Damage::LostLeadingZeros
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether changing `old` into `new` looks like a spreadsheet's doing.
pub fn classify(old: &str, new: &str) -> Option<Damage> {
    let (o, n) = (old.trim(), new.trim());
    let strip_plus = |s: &str| s.strip_prefix('+').unwrap_or(s).to_string();
    let (od, nd) = (strip_plus(o), strip_plus(n));
    // A number a spreadsheet read drops its leading zeros; all zeros
    // (`00000`) become `0`.
    let stripped = match od.trim_start_matches('0') {
        "" => "0",
        rest => rest,
    };
    if all_digits(&od) && od.starts_with('0') && od != nd && all_digits(&nd) && stripped == nd {
        return Some(Damage::LostLeadingZeros);
    }
    if all_digits(&od) && od.len() >= 10 && is_scientific(n) {
        return Some(Damage::ScientificNotation);
    }
    if let Some(iso) = crate::dates::parse_date(o) {
        if locale_date_candidates(n).contains(&iso) {
            return Some(Damage::LocaleDate);
        }
    }
    None
}

fn is_scientific(s: &str) -> bool {
    let up = s.to_ascii_uppercase();
    let Some((mantissa, exp)) = up.split_once('E') else {
        return false;
    };
    let exp = exp.strip_prefix('+').unwrap_or(exp);
    let m = mantissa.replace([',', '.'], "");
    all_digits(&m) && all_digits(exp)
}

/// Dates a locale-formatted text can mean: `17/05/1990`, `5/17/1990`,
/// `17.05.1990`, `17-05-1990`, `1990/05/17`.
fn locale_date_candidates(s: &str) -> Vec<jiff::civil::Date> {
    let parts: Vec<&str> = s.split(['/', '.', '-']).collect();
    if parts.len() != 3 || !parts.iter().all(|p| all_digits(p)) {
        return vec![];
    }
    let num = |p: &str| p.parse::<i32>().ok();
    let (Some(a), Some(b), Some(c)) = (num(parts[0]), num(parts[1]), num(parts[2])) else {
        return vec![];
    };
    let mut out = Vec::new();
    let mut try_push = |y: i32, m: i32, d: i32| {
        let y = if y < 100 {
            y + if y < 50 { 2000 } else { 1900 }
        } else {
            y
        };
        if let (Ok(y), Ok(m), Ok(d)) = (i16::try_from(y), i8::try_from(m), i8::try_from(d)) {
            if let Ok(date) = jiff::civil::Date::new(y, m, d) {
                out.push(date);
            }
        }
    };
    if parts[0].len() == 4 {
        try_push(a, b, c);
    } else {
        try_push(c, b, a); // day first
        try_push(c, a, b); // month first
    }
    out
}

/// The format a date that is not `YYYY-MM-DD` seems to be in, for messages.
pub fn date_format_found(s: &str) -> Option<&'static str> {
    let t = s.trim();
    if is_scientific(t) || all_digits(t) {
        return Some("a number (a spreadsheet's serial date?)");
    }
    let sep = t.chars().find(|c| matches!(c, '/' | '.' | '-'))?;
    let parts: Vec<&str> = t.split(sep).collect();
    if parts.len() != 3 || !parts.iter().all(|p| all_digits(p)) {
        return None;
    }
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    Some(match (sep, lens.as_slice()) {
        ('/', [4, _, _]) => "YYYY/MM/DD",
        ('/', [_, _, 4]) => {
            let first: u32 = parts[0].parse().unwrap_or(0);
            let second: u32 = parts[1].parse().unwrap_or(0);
            if first > 12 {
                "DD/MM/YYYY"
            } else if second > 12 {
                "MM/DD/YYYY"
            } else {
                "DD/MM/YYYY or MM/DD/YYYY"
            }
        }
        ('.', [_, _, 4]) => "DD.MM.YYYY",
        ('-', [_, _, 4]) => "DD-MM-YYYY",
        ('-', [4, _, _]) => "YYYY-M-D (without leading zeros)",
        (_, [_, _, 2]) => "a two-digit year",
        _ => return None,
    })
}

/// When `bytes` are not UTF-8 but read as Windows-1252 (a spreadsheet's plain
/// "CSV" save), the text they mean.
pub fn as_windows_1252(bytes: &[u8]) -> Option<String> {
    if std::str::from_utf8(bytes).is_ok() {
        return None;
    }
    let (text, _, had_errors) = encoding_rs::WINDOWS_1252.decode(bytes);
    (!had_errors).then(|| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_decides_the_separator() {
        assert_eq!(detect_separator(b"source_id,name,email\n"), Ok(b','));
        assert_eq!(
            detect_separator(b"\xef\xbb\xbfsource_id;name;email\r\n"),
            Ok(b';')
        );
        assert_eq!(detect_separator(b"source_id\tname\n"), Ok(b'\t'));
        assert_eq!(detect_separator(b"\"source_id\";\"name\"\n"), Ok(b';'));
        assert_eq!(detect_separator(b"source_id\n"), Ok(b','));
        assert!(detect_separator(b"source_id;name,email\n").is_err());
        assert!(detect_separator(b"id,name\n").is_err());
    }

    #[test]
    fn spreadsheet_damage_is_recognised() {
        assert_eq!(classify("00461", "461"), Some(Damage::LostLeadingZeros));
        assert_eq!(
            classify("+0048600", "48600"),
            Some(Damage::LostLeadingZeros)
        );
        assert_eq!(classify("0150", "150"), Some(Damage::LostLeadingZeros));
        // All zeros read as a number are one zero (issue 47).
        assert_eq!(classify("00000", "0"), Some(Damage::LostLeadingZeros));
        assert_eq!(classify("0", "0"), None);
        assert_eq!(classify("00000", "00000"), None);
        assert_eq!(
            classify("123456789012", "1.23457E+11"),
            Some(Damage::ScientificNotation)
        );
        assert_eq!(
            classify("1990-05-17", "17/05/1990"),
            Some(Damage::LocaleDate)
        );
        assert_eq!(
            classify("1990-05-17", "5/17/1990"),
            Some(Damage::LocaleDate)
        );
        assert_eq!(
            classify("1990-05-17", "17.05.1990"),
            Some(Damage::LocaleDate)
        );
        assert_eq!(classify("1990-05-17", "17/05/90"), Some(Damage::LocaleDate));
        // Real edits are not damage.
        assert_eq!(classify("00461", "00462"), None);
        assert_eq!(classify("Ann", "Anna"), None);
        assert_eq!(classify("1990-05-17", "18/05/1990"), None);
        assert_eq!(classify("461", "0461"), None);
    }

    #[test]
    fn the_date_format_found_is_named() {
        assert_eq!(date_format_found("17/05/1990"), Some("DD/MM/YYYY"));
        assert_eq!(date_format_found("5/17/1990"), Some("MM/DD/YYYY"));
        assert_eq!(
            date_format_found("05/06/1990"),
            Some("DD/MM/YYYY or MM/DD/YYYY")
        );
        assert_eq!(date_format_found("17.05.1990"), Some("DD.MM.YYYY"));
        assert_eq!(
            date_format_found("33000"),
            Some("a number (a spreadsheet's serial date?)")
        );
        assert_eq!(date_format_found("yesterday"), None);
    }

    #[test]
    fn windows_1252_is_recognised() {
        assert_eq!(as_windows_1252(b"Zo\xeb"), Some("Zoë".to_string()));
        assert_eq!(as_windows_1252("Zoë".as_bytes()), None);
    }
}
