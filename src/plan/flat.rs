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
    let mut de = serde_json::Deserializer::from_str(cell);
    let mut pairs = de.deserialize_map(Pairs).ok()?;
    de.end().ok()?;
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    pairs.windows(2).all(|w| w[0].0 != w[1].0).then_some(pairs)
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
}
