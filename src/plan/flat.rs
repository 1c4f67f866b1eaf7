//! A row's metadata read for its digest alone, borrowed from the cell: no
//! map, no allocation but for a string with escapes. The keys and values a
//! digest can use (text, numbers, booleans) are kept; anything else (null,
//! arrays, objects) is kept as `Other`, which no digest speaks for. A cell
//! that is not a JSON object, or names a key twice, gives None: the full
//! parse (`parse_row`) decides those rows.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// One metadata value, as far as a digest can use it.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta<'a> {
    Str(Cow<'a, str>),
    /// As `serde_json::Number::as_f64` gives it.
    Num(f64),
    Bool(bool),
    Other,
}

impl<'a> Meta<'a> {
    /// A parsed value's.
    pub fn of(v: &'a serde_json::Value) -> Meta<'a> {
        match v {
            serde_json::Value::String(s) => Meta::Str(Cow::Borrowed(s)),
            serde_json::Value::Number(n) => n.as_f64().map_or(Meta::Other, Meta::Num),
            serde_json::Value::Bool(b) => Meta::Bool(*b),
            _ => Meta::Other,
        }
    }
}

/// The keys and values of a metadata cell, sorted by key; None when the
/// cell is not a JSON object or names a key twice.
pub fn parse(cell: &str) -> Option<Vec<(Cow<'_, str>, Meta<'_>)>> {
    let mut pairs = match simple(cell.as_bytes()) {
        Some(pairs) => pairs,
        None => {
            let mut de = serde_json::Deserializer::from_str(cell);
            let pairs = de.deserialize_map(Pairs).ok()?;
            de.end().ok()?;
            pairs
        }
    };
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    pairs.windows(2).all(|w| w[0].0 != w[1].0).then_some(pairs)
}

/// The common cell read without serde_json (a plan reads a million): an
/// object of keys without escapes, whose values are strings without
/// escapes, `true`, `false`, `null` or integers of up to 15 digits (exact
/// as f64). None for anything else, which `serde_json` then reads: every
/// text this accepts is JSON that serde_json reads the same (a test holds
/// the two side by side).
fn simple(b: &[u8]) -> Option<Vec<(Cow<'_, str>, Meta<'_>)>> {
    let mut at = skip_ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(b, at + 1);
    let mut out = Vec::new();
    if b.get(at) == Some(&b'}') {
        return (skip_ws(b, at + 1) == b.len()).then_some(out);
    }
    loop {
        let (key, next) = plain_string(b, at)?;
        at = skip_ws(b, next);
        if b.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(b, at + 1);
        let (value, next) = match b.get(at)? {
            b'"' => plain_string(b, at).map(|(s, n)| (Meta::Str(Cow::Borrowed(s)), n))?,
            b't' if b[at..].starts_with(b"true") => (Meta::Bool(true), at + 4),
            b'f' if b[at..].starts_with(b"false") => (Meta::Bool(false), at + 5),
            b'n' if b[at..].starts_with(b"null") => (Meta::Other, at + 4),
            _ => integer(b, at)?,
        };
        out.push((Cow::Borrowed(key), value));
        at = skip_ws(b, next);
        match b.get(at)? {
            b',' => at = skip_ws(b, at + 1),
            b'}' => return (skip_ws(b, at + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

/// Past JSON's white space from `at`.
fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The string opening at `at` and the position past it, when it has no
/// escape and no control character (which JSON refuses unescaped).
fn plain_string(b: &[u8], at: usize) -> Option<(&str, usize)> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let len = memchr::memchr(b'"', &b[at + 1..])?;
    let body = &b[at + 1..at + 1 + len];
    if body.iter().any(|&c| c == b'\\' || c < 0x20) {
        return None;
    }
    // A slice of a `str` between two ASCII quotes is whole characters.
    Some((std::str::from_utf8(body).ok()?, at + len + 2))
}

/// An integer of 1 to 15 digits at `at` (no leading zero, no `-0`), not
/// followed by a fraction or an exponent, and the position past it.
fn integer(b: &[u8], at: usize) -> Option<(Meta<'static>, usize)> {
    let negative = b.get(at) == Some(&b'-');
    let start = at + usize::from(negative);
    let digits = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    let end = start + digits;
    if digits == 0 || digits > 15 || (b[start] == b'0' && (digits > 1 || negative)) {
        return None;
    }
    if matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let n: i64 = std::str::from_utf8(&b[start..end]).ok()?.parse().ok()?;
    Some((Meta::Num(if negative { -n } else { n } as f64), end))
}

struct Pairs;

impl<'de> Visitor<'de> for Pairs {
    type Value = Vec<(Cow<'de, str>, Meta<'de>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Text(key)) = map.next_key::<Text>()? {
            out.push((key, map.next_value::<Value>()?.0));
        }
        Ok(out)
    }
}

/// A string, borrowed when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_string())))
    }
}

struct Value<'de>(Meta<'de>);

impl<'de> serde::Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Value(Meta::Str(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Value(Meta::Str(Cow::Owned(v.to_string()))))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Value(Meta::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Value(Meta::Num(v as f64)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Value(Meta::Num(v as f64)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Value(Meta::Num(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Value(Meta::Other))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value(Meta::Other))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value(Meta::Other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_digest_uses_and_refuses_what_the_full_parse_decides() {
        let got = parse(
            r#"{"b": "x\"y", "a": 1.5, "c": true, "d": null, "e": [1], "f": {"g": 1}, "h": 7}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("a".into(), Meta::Num(1.5)),
                ("b".into(), Meta::Str("x\"y".into())),
                ("c".into(), Meta::Bool(true)),
                ("d".into(), Meta::Other),
                ("e".into(), Meta::Other),
                ("f".into(), Meta::Other),
                ("h".into(), Meta::Num(7.0)),
            ]
        );
        for bad in [
            "[1]",
            "\"x\"",
            "{",
            "{\"a\": 1} x",
            "{\"a\": 1, \"a\": 2}",
            "1",
            "",
            "{\"a\": tru}",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(parse("{}"), Some(vec![]));
    }

    /// The oracle: serde_json's reading alone, as `parse` was before its
    /// fast path.
    fn by_serde(cell: &str) -> Option<Vec<(Cow<'_, str>, Meta<'_>)>> {
        let mut de = serde_json::Deserializer::from_str(cell);
        let mut pairs = de.deserialize_map(Pairs).ok()?;
        de.end().ok()?;
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pairs.windows(2).all(|w| w[0].0 != w[1].0).then_some(pairs)
    }

    /// Objects drawn from pieces near every rule of the fast path (numbers
    /// at 15 and 16 digits, leading zeros, `-0`, escapes, controls, white
    /// space, trailing commas, nesting), then one byte changed, dropped or
    /// doubled: `parse` gives what serde_json alone gives, every time.
    #[test]
    fn the_fast_path_reads_as_serde_json_reads() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let keys = [
            "\"a\"",
            "\"b\"",
            "\"\"",
            "\"é\"",
            "\"a\\\"\"",
            "\"\u{1}\"",
            "a",
            "\"a",
        ];
        let values = [
            "\"x\"",
            "\"\"",
            "\"é ü\"",
            "\"\\n\"",
            "\"\t\"",
            "true",
            "false",
            "null",
            "tru",
            "0",
            "-0",
            "01",
            "7",
            "-12",
            "123456789012345",
            "1234567890123456",
            "-999999999999999",
            "1.5",
            "1e3",
            "1E3",
            "-",
            "[1]",
            "{\"g\": 1}",
            "{}",
            "\"x",
            "nul",
        ];
        let spaces = ["", "", " ", "\n", "\t", "\r", "\u{b}", "\u{a0}"];
        let mut rng = SmallRng::seed_from_u64(34);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let pick =
                |rng: &mut SmallRng, from: &[&str]| from[rng.gen_range(0..from.len())].to_string();
            let mut text = pick(&mut rng, &spaces) + "{";
            for i in 0..rng.gen_range(0..4) {
                if i > 0 {
                    text += ",";
                }
                text +=
                    &(pick(&mut rng, &spaces) + &pick(&mut rng, &keys) + &pick(&mut rng, &spaces));
                text += &(":".to_string() + &pick(&mut rng, &spaces) + &pick(&mut rng, &values));
                text += &pick(&mut rng, &spaces);
            }
            if rng.gen_bool(0.05) {
                text += ",";
            }
            text += &("}".to_string() + &pick(&mut rng, &spaces));
            let mut bytes = text.into_bytes();
            if rng.gen_bool(0.3) && !bytes.is_empty() {
                let i = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => {
                        let with = b"{}[]\":,\\-0e. x";
                        bytes[i] = with[rng.gen_range(0..with.len())];
                    }
                    1 => drop(bytes.remove(i)),
                    _ => bytes.insert(i, bytes[i]),
                }
            }
            let Ok(cell) = String::from_utf8(bytes) else {
                continue;
            };
            let want = by_serde(&cell);
            accepted += usize::from(simple(cell.as_bytes()).is_some());
            assert_eq!(parse(&cell), want, "{cell:?}");
        }
        // The fast path takes most of them (else the test proves little).
        assert!(accepted > 15_000, "{accepted}");
    }
}
