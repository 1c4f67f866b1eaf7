//! Pass 2's work on one partition: its records grouped by profile, each
//! profile written as a line of `profiles.ndjson`, straight from the
//! records' bytes (no `serde_json::Value` but for values that are JSON
//! objects, arrays or unusual numbers).

use super::spill::{Kind, Rec};
use crate::extract::fetcher::Wanted;
use anyhow::Result;
use rustc_hash::FxHashMap as HashMap;
use std::cmp::Reverse;

/// How a partition's profiles are written.
pub struct Shape<'a> {
    pub wanted: &'a Wanted,
    /// Trait values are JSON text (else plain text).
    pub json_values: bool,
}

/// Group `recs` by profile and append a line per profile to `out`, in the
/// order of the ids' hashes (then the ids). Returns the profiles written.
pub fn write_profiles(recs: &[Rec], shape: &Shape, out: &mut Vec<u8>) -> Result<u64> {
    // Each record's profile, numbered as first seen; then the records laid
    // out profile by profile (a counting sort), and only the profiles sorted.
    let mut numbers: HashMap<&[u8], u32> = HashMap::default();
    let of: Vec<u32> = recs
        .iter()
        .map(|r| {
            let next = numbers.len() as u32;
            *numbers.entry(r.id).or_insert(next)
        })
        .collect();
    let mut start = vec![0u32; numbers.len() + 1];
    for &p in &of {
        start[p as usize + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let mut at = start.clone();
    let mut laid = vec![0u32; recs.len()];
    for (i, &p) in of.iter().enumerate() {
        laid[at[p as usize] as usize] = i as u32;
        at[p as usize] += 1;
    }
    let mut ids: Vec<(u64, &[u8], u32)> = numbers
        .into_iter()
        .map(|(id, p)| (super::spill::id_hash(id), id, p))
        .collect();
    ids.sort_unstable();
    let (mut traits, mut external) = (Vec::new(), Vec::new());
    for (_, id, p) in &ids {
        let (from, to) = (start[*p as usize] as usize, start[*p as usize + 1] as usize);
        traits.clear();
        external.clear();
        let mut span = Span::default();
        for &i in &laid[from..to] {
            let r = recs[i as usize];
            span.add(r.ts);
            match r.kind {
                Kind::Seen => {}
                Kind::Trait => traits.push(r),
                Kind::Id => external.push(r),
            }
        }
        write_profile(id, span, &mut traits, &mut external, shape, out)?;
    }
    Ok(ids.len() as u64)
}

/// The earliest and latest timestamps of a profile's rows.
#[derive(Default, Clone, Copy)]
struct Span {
    first: Option<i64>,
    last: Option<i64>,
}

impl Span {
    fn add(&mut self, ts: Option<i64>) {
        if let Some(t) = ts {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
    }
}

/// A profile's line: its traits by name, the latest (highest `seq`) of
/// each; its external ids oldest first, as the API lists them.
fn write_profile(
    id: &[u8],
    span: Span,
    traits: &mut [Rec],
    ids: &mut [Rec],
    shape: &Shape,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (first, last) = (span.first, span.last);
    out.extend_from_slice(b"{\"segment_id\":");
    string(out, id);
    out.extend_from_slice(b",\"metadata\":{");
    if let Some(f) = first {
        out.extend_from_slice(b"\"created_at\":");
        string(out, crate::dates::iso_millis(f).as_bytes());
    }
    if let Some(l) = last {
        out.extend_from_slice(if first.is_some() {
            b",\"updated_at\":"
        } else {
            b"\"updated_at\":"
        });
        string(out, crate::dates::iso_millis(l).as_bytes());
    }
    out.extend_from_slice(b"},\"traits\":{");
    let identified = shape.wanted.everything
        || ids
            .iter()
            .any(|r| shape.wanted.id_types.iter().any(|w| w.as_bytes() == r.key));
    if identified {
        // Equal seqs (never in a sound unload): the larger value, so the
        // result does not depend on the order the parts were read in.
        traits.sort_unstable_by(|a, b| {
            (a.key, Reverse(a.seq), Reverse(a.value)).cmp(&(
                b.key,
                Reverse(b.seq),
                Reverse(b.value),
            ))
        });
        let mut comma = false;
        let mut prev: Option<&[u8]> = None;
        for r in traits.iter() {
            if prev == Some(r.key) {
                continue; // superseded: the latest came first
            }
            prev = Some(r.key);
            // A trait whose latest value is null is no longer set.
            let Some(v) = r.value else { continue };
            if comma {
                out.push(b',');
            }
            comma = true;
            string(out, r.key);
            out.push(b':');
            if shape.json_values {
                json_value(out, v)?;
            } else {
                string(out, v);
            }
        }
    }
    out.extend_from_slice(b"},\"external_ids\":[");
    ids.sort_unstable_by(|a, b| (a.seq, a.key, a.value).cmp(&(b.seq, b.key, b.value)));
    let mut written: Vec<(&[u8], &[u8])> = Vec::with_capacity(ids.len());
    for r in ids.iter() {
        let pair = (r.key, r.value.unwrap_or_default());
        if written.contains(&pair) {
            continue;
        }
        if !written.is_empty() {
            out.push(b',');
        }
        written.push(pair);
        out.extend_from_slice(b"{\"type\":");
        string(out, pair.0);
        out.extend_from_slice(b",\"id\":");
        string(out, pair.1);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}\n");
    Ok(())
}

/// UTF-8 text as a JSON string, escaped as serde_json escapes it: `"`,
/// `\\` and control characters, the common ones by their short forms.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in s.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..0x20 => 0,
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        start = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// A string literal serde_json would write back byte for byte: quoted, with
/// no escape, quote or control character inside.
fn plain_string(v: &[u8]) -> bool {
    v.len() >= 2
        && v[0] == b'"'
        && v[v.len() - 1] == b'"'
        && !v[1..v.len() - 1]
            .iter()
            .any(|&c| c == b'"' || c == b'\\' || c < 0x20)
}

/// An integer serde_json would write back byte for byte: no sign but `-`,
/// no leading zero, no `-0`, and small enough for an i64.
fn plain_integer(v: &[u8]) -> bool {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && digits.len() == v.len()))
}

/// Whether a value's text is JSON: the common shapes by a scan, the rest
/// by serde_json.
pub fn is_json(v: &[u8]) -> bool {
    plain_string(v)
        || plain_integer(v)
        || matches!(v, b"true" | b"false" | b"null")
        || serde_json::from_slice::<serde::de::IgnoredAny>(v).is_ok()
}

/// A JSON value's text as serde_json writes it once parsed (compact, its
/// escapes and numbers in serde_json's spelling); text that is not JSON
/// goes as a string.
fn json_value(out: &mut Vec<u8>, v: &[u8]) -> Result<()> {
    if plain_string(v) || plain_integer(v) || matches!(v, b"true" | b"false" | b"null") {
        out.extend_from_slice(v);
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(v) {
        Ok(value) => serde_json::to_writer(&mut *out, &value)?,
        Err(_) => string(out, v),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oracle: serde_json's own parse and write.
    fn by_serde(v: &str) -> String {
        match serde_json::from_str::<serde_json::Value>(v) {
            Ok(x) => serde_json::to_string(&x).unwrap(),
            Err(_) => serde_json::to_string(v).unwrap(),
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        for v in [
            "\"plain\"",
            "\"é 東京\"",
            "\"a\\/b\"",
            "\"\\u00e9\"",
            "\"tab\\there\"",
            "\"x\" ",
            " \"x\"",
            "0",
            "-0",
            "007",
            "-12",
            "123456789012345678",
            "12345678901234567890123",
            "1.50",
            "1e3",
            "true",
            "null",
            "{\"b\": 1, \"a\": [1, 2.0]}",
            "not json",
            "\"unterminated",
            "",
            "\"\"",
            "\"",
        ] {
            let mut out = Vec::new();
            json_value(&mut out, v.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), by_serde(v), "value {v:?}");
            assert_eq!(
                is_json(v.as_bytes()),
                serde_json::from_str::<serde_json::Value>(v).is_ok(),
                "is_json({v:?})"
            );
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        for s in [
            all.as_str(),
            "",
            "plain",
            "é 東京 \u{7f}",
            "\"quoted\" \\ back",
            "\u{0}\u{1f}",
        ] {
            let mut out = Vec::new();
            string(&mut out, s.as_bytes());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn a_profile_is_its_latest_traits_its_ids_in_seq_order_and_its_time_span() {
        let rec = |kind,
                   id: &'static str,
                   ts: i64,
                   seq,
                   key: &'static str,
                   value: Option<&'static str>| Rec {
            kind,
            id: id.as_bytes(),
            ts: Some(ts),
            seq,
            key: key.as_bytes(),
            value: value.map(str::as_bytes),
        };
        let recs = [
            rec(Kind::Trait, "a", 2_000, 1, "email", Some("\"old@x\"")),
            rec(Kind::Seen, "b", 5_000, 0, "", None),
            rec(Kind::Trait, "a", 3_000, 2, "email", Some("\"new@x\"")),
            rec(Kind::Id, "a", 1_000, 3, "user_id", Some("u2")),
            rec(Kind::Trait, "a", 1_500, 5, "phone", None),
            rec(Kind::Trait, "a", 1_400, 4, "phone", Some("123")),
            rec(Kind::Id, "a", 1_000, 1, "user_id", Some("u1")),
            rec(Kind::Id, "a", 1_000, 4, "user_id", Some("u1")),
            rec(Kind::Seen, "a", 9_000, 0, "", None),
            rec(
                Kind::Trait,
                "a",
                1_000,
                1,
                "name",
                Some("{\"first\": \"Ann\"}"),
            ),
            rec(Kind::Trait, "b", 4_000, 1, "email", Some("\"b@x\"")),
        ];
        let wanted = Wanted {
            id_types: vec!["user_id".into()],
            traits: vec![],
            everything: false,
            by_external_id: false,
        };
        let shape = Shape {
            wanted: &wanted,
            json_values: true,
        };
        let mut out = Vec::new();
        assert_eq!(write_profiles(&recs, &shape, &mut out).unwrap(), 2);
        let mut lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                r#"{"segment_id":"a","metadata":{"created_at":"1970-01-01T00:00:01.000Z","updated_at":"1970-01-01T00:00:09.000Z"},"traits":{"email":"new@x","name":{"first":"Ann"}},"external_ids":[{"type":"user_id","id":"u1"},{"type":"user_id","id":"u2"}]}"#,
                // Not identified: no traits, as the API path.
                r#"{"segment_id":"b","metadata":{"created_at":"1970-01-01T00:00:04.000Z","updated_at":"1970-01-01T00:00:05.000Z"},"traits":{},"external_ids":[]}"#,
            ]
        );
    }
}
