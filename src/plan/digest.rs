//! A plan's fast path: one 128-bit digest per customer of what the export
//! shows in comparable form, and the same digest of a row's request body.
//! Equal digests mean that [`super::compare::compare`] finds every field of
//! the row the same and nothing else set in the export, so the customer is
//! unchanged without reading its export record back. Unequal digests (or a
//! row the digest cannot speak for) say nothing: the full comparison runs.
//!
//! Each value is reduced to the form in which the comparison's `same`
//! treats it as equal, tagged by kind, so equal forms are always `same`:
//! text as it is; a date by its `YYYY-MM-DD` when it has one; a date-time
//! by its instant when it parses; a number by its value as f64; a boolean
//! by its value. A row value of another kind than its field's (a string for
//! a number key) has no digest: the full comparison decides. The source id
//! is part of the digest, so a digest never speaks for another customer.

use super::flat::Meta;
use crate::fields::STANDARD;
use crate::mapping::metadata_schema::Definition;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// How a field's values compare (the comparison's `same`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Date,
    DateTime,
    Number,
    Boolean,
}

impl Kind {
    /// A standard field's kind (`STANDARD[i]`).
    pub fn standard(i: usize) -> Kind {
        if STANDARD[i].date {
            Kind::Date
        } else {
            Kind::Text
        }
    }

    /// A defined metadata key's kind; None when its export text cannot be
    /// compared (arrays, objects, geopoints, undocumented types).
    pub fn metadata(def: &Definition) -> Option<Kind> {
        if def.array == Some(true) {
            return None;
        }
        match def.ty.as_deref()? {
            "string" | "image_url" => Some(Kind::Text),
            "date" => Some(Kind::Date),
            "datetime" => Some(Kind::DateTime),
            "number" => Some(Kind::Number),
            "boolean" => Some(Kind::Boolean),
            _ => None,
        }
    }
}

/// A value in its compared form.
enum Form<'a> {
    Text(&'a str),
    Date(&'a str),
    Instant(i128),
    Number(u64),
    Bool(bool),
}

fn date(s: &str) -> Option<&str> {
    s.get(..10).filter(|d| crate::dates::is_real_date(d))
}

fn number(n: f64) -> u64 {
    // -0 and 0 are equal as f64, so one form.
    if n == 0.0 {
        0
    } else {
        n.to_bits()
    }
}

/// An exported cell (not empty) in its compared form.
fn cell_form(kind: Kind, cell: &str) -> Form<'_> {
    match kind {
        Kind::Text => Form::Text(cell),
        Kind::Date => date(cell).map_or(Form::Text(cell), Form::Date),
        Kind::DateTime => match cell.trim().parse::<jiff::Timestamp>() {
            Ok(t) => Form::Instant(t.as_nanosecond()),
            Err(_) => Form::Text(cell),
        },
        Kind::Number => match cell.trim().parse::<f64>() {
            Ok(n) => Form::Number(number(n)),
            Err(_) => Form::Text(cell),
        },
        Kind::Boolean => match cell.trim() {
            t if t.eq_ignore_ascii_case("true") => Form::Bool(true),
            t if t.eq_ignore_ascii_case("false") => Form::Bool(false),
            _ => Form::Text(cell),
        },
    }
}

/// A row's text value in its compared form (as [`value_form`] of a JSON
/// string).
fn text_form(kind: Kind, s: &str) -> Option<Form<'_>> {
    Some(match kind {
        Kind::Text => Form::Text(s),
        Kind::Date => date(s).map_or(Form::Text(s), Form::Date),
        Kind::DateTime => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Form::Instant(t.as_nanosecond()),
            Err(_) => Form::Text(s),
        },
        Kind::Number | Kind::Boolean => return None,
    })
}

/// A row's value in its compared form; None when the comparison would not
/// call it the same as any cell by these forms.
fn value_form<'a>(kind: Kind, v: &'a Meta<'a>) -> Option<Form<'a>> {
    Some(match (kind, v) {
        (kind, Meta::Str(s)) => return text_form(kind, s),
        (Kind::Number, Meta::Num(n)) => Form::Number(number(*n)),
        (Kind::Boolean, Meta::Bool(b)) => Form::Bool(*b),
        _ => return None,
    })
}

/// Builds one digest: the source id, then each field's place and form, in
/// the standard fields' order and then by metadata key, each text with its
/// length, hashed at once (XXH3, 128 bits). A field's place is its index
/// among the standard fields or the layout's metadata keys: a digest is
/// compared only with one made by the same layout, in the same run.
struct Builder(Vec<u8>);

thread_local! {
    /// Each thread's digest buffer, kept between digests (a digest is
    /// made per row and per exported record: a million allocations saved).
    static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Builder {
    fn new(source_id: &str) -> Builder {
        let mut buf = BUFFER.take();
        buf.clear();
        let mut b = Builder(buf);
        b.bytes(source_id.as_bytes());
        b
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }

    fn field(&mut self, place: (u8, usize), form: Form) {
        self.0.push(place.0);
        self.0.extend_from_slice(&(place.1 as u32).to_le_bytes());
        match form {
            Form::Text(s) => {
                self.0.push(b's');
                self.bytes(s.as_bytes());
            }
            Form::Date(d) => {
                self.0.push(b'd');
                self.bytes(d.as_bytes());
            }
            Form::Instant(t) => {
                self.0.push(b't');
                self.0.extend_from_slice(&t.to_le_bytes());
            }
            Form::Number(n) => {
                self.0.push(b'n');
                self.0.extend_from_slice(&n.to_le_bytes());
            }
            Form::Bool(b) => self.0.extend_from_slice(if b { b"b1" } else { b"b0" }),
        }
    }

    fn finish(self) -> u128 {
        let digest = twox_hash::XxHash3_128::oneshot(&self.0);
        BUFFER.set(self.0);
        digest
    }
}

/// Where the comparable fields are in the export: `standard[i]` is
/// `STANDARD[i]`'s column; `metadata` holds (key, column, kind), by key.
pub struct Layout {
    pub standard: [Option<usize>; 11],
    pub metadata: Vec<(String, usize, Kind)>,
}

impl Layout {
    /// The digest of an export record: every non-empty comparable cell.
    pub fn of_record(&self, source_id: &str, rec: &csv::StringRecord) -> u128 {
        let mut b = Builder::new(source_id);
        for (i, col) in self.standard.iter().enumerate() {
            if let Some(cell) = col.and_then(|c| rec.get(c)).filter(|c| !c.is_empty()) {
                b.field((0, i), cell_form(Kind::standard(i), cell));
            }
        }
        for (j, (_, col, kind)) in self.metadata.iter().enumerate() {
            if let Some(cell) = rec.get(*col).filter(|c| !c.is_empty()) {
                b.field((1, j), cell_form(*kind, cell));
            }
        }
        b.finish()
    }

    /// The digest of a row's request body, when every field it gives has a
    /// comparable column and a value of its field's kind; None otherwise.
    pub fn of_body(&self, body: &Map<String, Value>) -> Option<u128> {
        let mut standard: [Option<&Value>; 11] = Default::default();
        let mut metadata: Vec<(Cow<str>, Meta)> = Vec::new();
        let mut source_id = None;
        for (k, v) in body {
            match (k.as_str(), v) {
                ("source_id", Value::String(s)) => source_id = Some(s.as_str()),
                ("metadata", Value::Object(m)) => metadata.extend(
                    m.iter()
                        .map(|(k, v)| (Cow::Borrowed(k.as_str()), Meta::of(v))),
                ),
                ("address", Value::Object(m)) => {
                    for (k, v) in m {
                        standard[standard_index(&format!("address.{k}"))?] = Some(v);
                    }
                }
                (path, v) => standard[standard_index(path)?] = Some(v),
            }
        }
        let mut b = Builder::new(source_id?);
        for (i, v) in standard.iter().enumerate() {
            if let Some(v) = v {
                self.standard[i]?;
                b.field((0, i), value_form(Kind::standard(i), &Meta::of(v))?);
            }
        }
        metadata.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.metadata_fields(&mut b, &metadata)?;
        Some(b.finish())
    }

    /// [`Layout::of_body`] of the request `row.request_with(metadata)`
    /// makes, without making it (a million rows of a rerun need no request
    /// each): the same digest, or None where that gives None.
    pub fn of_row(
        &self,
        row: &crate::records::CustomerRow,
        metadata: Option<&Map<String, Value>>,
    ) -> Option<u128> {
        let source_id = row.source_id.as_deref().filter(|s| !s.is_empty())?;
        let cells = [
            ("name", &row.name),
            ("email", &row.email),
            ("phone", &row.phone),
            ("birthdate", &row.birthdate),
            ("description", &row.description),
            ("address.line_1", &row.address_line_1),
            ("address.line_2", &row.address_line_2),
            ("address.city", &row.address_city),
            ("address.state", &row.address_state),
            ("address.postal_code", &row.address_postal_code),
            ("address.country", &row.address_country),
        ];
        let mut standard: [Option<&str>; 11] = Default::default();
        for (path, cell) in cells {
            if let Some(v) = cell.as_deref().filter(|v| !v.is_empty()) {
                standard[standard_index(path)?] = Some(v);
            }
        }
        let metadata = metadata.into_iter().flatten();
        let mut metadata: Vec<(Cow<str>, Meta)> = (metadata)
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Meta::of(v)))
            .collect();
        metadata.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.of_cells(source_id, &standard, &metadata)
    }

    /// [`Layout::of_row`] from the row's cells: its source id, its standard
    /// fields' cells (`STANDARD`'s order, None when empty) and its metadata
    /// (`flat::parse`: sorted by key, each key once).
    pub fn of_cells(
        &self,
        source_id: &str,
        standard: &[Option<&str>; 11],
        metadata: &[(Cow<str>, Meta)],
    ) -> Option<u128> {
        let mut b = Builder::new(source_id);
        for (i, v) in standard.iter().enumerate() {
            if let Some(v) = v {
                self.standard[i]?;
                b.field((0, i), text_form(Kind::standard(i), v)?);
            }
        }
        self.metadata_fields(&mut b, metadata)?;
        Some(b.finish())
    }

    /// The metadata keys' fields, `metadata` sorted by key: None when a key
    /// has no comparable column or a value of another kind.
    fn metadata_fields(&self, b: &mut Builder, metadata: &[(Cow<str>, Meta)]) -> Option<()> {
        let mut at = 0;
        for (key, v) in metadata {
            let key = key.as_ref();
            // Both lists are sorted by key: walk them together.
            while self
                .metadata
                .get(at)
                .is_some_and(|(k, _, _)| k.as_str() < key)
            {
                at += 1;
            }
            let (_, _, kind) = self.metadata.get(at).filter(|(k, _, _)| k == key)?;
            b.field((1, at), value_form(*kind, v)?);
        }
        Some(())
    }
}

fn standard_index(path: &str) -> Option<usize> {
    STANDARD.iter().position(|f| f.path == path)
}
