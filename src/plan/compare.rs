//! One customer: what `customers.csv` says against what Voucherify holds
//! and what segsync last confirmed, and the request that closes the gap.
//!
//! The rules (docs/DESIGN.md, "Plans"):
//! - A field the export shows is compared with today's value.
//! - A field the export cannot show (no column; a metadata key the schema
//!   does not define; a type whose export format is undocumented: objects,
//!   arrays, geopoints) counts as unchanged only when the ledger's last
//!   confirmed row equals today's and Voucherify's `updated_at` is not later
//!   than that confirmation. Otherwise it is sent.
//! - A field the row no longer gives is cleared only when segsync set it
//!   (the ledger's fields set and not cleared since) and `--clear-removed`
//!   is given; otherwise it is listed as a pending clear on every plan.
//! - An update carries only the changed top-level fields. `address` and
//!   `metadata` are objects, and whether Voucherify merges a partial one is
//!   not written, so when any of their keys changes the whole object is
//!   sent: what the export shows, with today's values over it.

use super::confirmed::{Confirmed, Last};
use super::held::Held;
use crate::fields::{self, STANDARD};
use crate::mapping::metadata_schema::{CustomerSchema, Definition};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Clear,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Clear => "clear",
        }
    }
}

/// The flags that change what a plan sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rules {
    pub clear_removed: bool,
    pub keep_newer: bool,
}

/// What would change for one customer.
#[derive(Debug)]
pub struct Change {
    pub action: Action,
    /// Changed fields, then the ones to clear (see `clears`).
    pub fields: Vec<String>,
    /// How many of `fields`, at the end, are clears: fields segsync set that
    /// the source no longer has. Sent as null only with `--clear-removed`;
    /// otherwise listed on every plan as pending.
    pub clears: usize,
    pub old: Map<String, Value>,
    pub new: Map<String, Value>,
    /// Voucherify changed the customer after segsync last confirmed it.
    pub elsewhere: bool,
    /// Voucherify's `updated_at` for this customer could not be read.
    pub unknown_updated: bool,
    /// The request body; None when nothing is sent (see `skip`).
    pub send: Option<Value>,
    pub skip: Option<&'static str>,
}

impl Change {
    /// The fields to clear.
    pub fn cleared(&self) -> &[String] {
        &self.fields[self.fields.len() - self.clears..]
    }

    /// Clears listed but not sent.
    pub fn pending_clears(&self) -> &[String] {
        match &self.send {
            Some(body) if self.clears > 0 && has_null(body) => &[],
            _ => self.cleared(),
        }
    }
}

fn has_null(body: &Value) -> bool {
    !crate::records::null_fields(body).is_empty()
}

/// Marks a value the export cannot show.
pub const UNREADABLE: &str = "(not in the export)";

/// The row's fields, flattened: `name`, `address.city`, `metadata.KEY`.
fn flatten(body: &Map<String, Value>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, v) in body {
        match (k.as_str(), v) {
            ("source_id", _) => {}
            ("address" | "metadata", Value::Object(inner)) => {
                out.extend(
                    inner
                        .iter()
                        .map(|(ik, iv)| (format!("{k}.{ik}"), iv.clone())),
                );
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// The held value of `field`: Some(cell) (empty: no value) when the export
/// shows it in a comparable form, None when it cannot be read.
fn readable<'a>(held: &'a Held, schema: &CustomerSchema, field: &str) -> Option<&'a str> {
    if let Some(key) = field.strip_prefix("metadata.") {
        let def = schema.properties.get(key)?;
        comparable(def)?;
        return held.metadata.get(key).map(String::as_str);
    }
    let (i, _) = fields::by_path(field)?;
    held.standard[i].as_deref()
}

/// The metadata types whose exported text can be compared.
fn comparable(def: &Definition) -> Option<()> {
    if def.array == Some(true) {
        return None;
    }
    matches!(
        def.ty.as_deref(),
        Some("string" | "image_url" | "number" | "boolean" | "date" | "datetime")
    )
    .then_some(())
}

/// Whether the exported `cell` shows `new`.
fn same(field: &str, cell: &str, new: &Value, schema: &CustomerSchema) -> bool {
    let ty = field
        .strip_prefix("metadata.")
        .and_then(|k| schema.properties.get(k))
        .and_then(|d| d.ty.as_deref());
    let date = |s: &str| {
        s.get(..10)
            .filter(|d| crate::dates::is_real_date(d))
            .map(str::to_string)
    };
    match (ty, new) {
        (Some("number"), Value::Number(n)) => cell.trim().parse::<f64>().ok() == n.as_f64(),
        (Some("boolean"), Value::Bool(b)) => cell.trim().eq_ignore_ascii_case(&b.to_string()),
        (Some("datetime"), Value::String(s)) => {
            s == cell
                || matches!((s.parse::<jiff::Timestamp>(), cell.trim().parse::<jiff::Timestamp>()), (Ok(a), Ok(b)) if a == b)
        }
        (Some("date"), Value::String(s)) => {
            s == cell || (date(s).is_some() && date(s) == date(cell))
        }
        (None, Value::String(s)) if fields::by_path(field).is_some_and(|(_, f)| f.date) => {
            s == cell || (date(s).is_some() && date(s) == date(cell))
        }
        (_, Value::String(s)) => s == cell,
        _ => false,
    }
}

/// Compare one row (its request body and content key) with what is held.
pub fn compare(
    body: &Map<String, Value>,
    content: u64,
    held: Option<&Held>,
    last: Option<Last>,
    confirmed: &Confirmed,
    schema: &CustomerSchema,
    rules: Rules,
) -> Option<Change> {
    let row = flatten(body);
    let Some(held) = held else {
        return Some(Change {
            action: Action::Create,
            fields: row.iter().map(|(f, _)| f.clone()).collect(),
            clears: 0,
            old: Map::new(),
            new: row.into_iter().collect(),
            elsewhere: false,
            unknown_updated: false,
            send: Some(Value::Object(body.clone())),
            skip: None,
        });
    };
    let updated_ms = held.updated_at.map(|t| t.as_millisecond());
    let elsewhere = matches!((last, updated_ms), (Some(l), Some(u)) if u > l.at_ms);
    // Only a customer segsync confirmed can have been changed "since".
    let unknown_updated = last.is_some() && updated_ms.is_none();
    let as_confirmed =
        matches!((last, updated_ms), (Some(l), Some(u)) if l.content == content && u <= l.at_ms);
    let (mut fields, mut old, mut new) = (Vec::new(), Map::new(), Map::new());
    for (f, v) in &row {
        let was = match readable(held, schema, f) {
            Some(cell) if same(f, cell, v, schema) => continue,
            Some("") => Value::Null,
            Some(cell) => Value::String(cell.to_string()),
            None if as_confirmed => continue,
            None => Value::String(UNREADABLE.into()),
        };
        fields.push(f.clone());
        old.insert(f.clone(), was);
        new.insert(f.clone(), v.clone());
    }
    let changed = fields.len();
    let set_before = last.and_then(|l| confirmed.fields(&l)).unwrap_or(&[]);
    for f in set_before
        .iter()
        .filter(|f| !row.iter().any(|(r, _)| r == *f))
    {
        let was = match readable(held, schema, f) {
            Some("") => continue,
            Some(cell) => Value::String(cell.to_string()),
            None => Value::String(UNREADABLE.into()),
        };
        fields.push(f.clone());
        old.insert(f.clone(), was);
        new.insert(f.clone(), Value::Null);
    }
    if fields.is_empty() {
        return None;
    }
    let clears = fields.len() - changed;
    let action = if changed > 0 {
        Action::Update
    } else {
        Action::Clear
    };
    let skip = if rules.keep_newer && elsewhere {
        Some("--keep-newer: Voucherify changed it after segsync last confirmed it")
    } else if rules.keep_newer && unknown_updated {
        Some("--keep-newer: Voucherify's updated_at for it cannot be read, so a change made there cannot be ruled out")
    } else if changed == 0 && !rules.clear_removed {
        Some("clearing needs --clear-removed")
    } else {
        None
    };
    let send = skip.is_none().then(|| {
        request(
            body,
            held,
            schema,
            &fields[..changed],
            if rules.clear_removed {
                &fields[changed..]
            } else {
                &[]
            },
        )
    });
    Some(Change {
        action,
        fields,
        clears,
        old,
        new,
        elsewhere,
        unknown_updated,
        send,
        skip,
    })
}

/// What Voucherify holds of one customer against what segsync confirmed
/// it sent ([`verify`]).
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Fields not held as sent: the field, what was sent (`null` for a
    /// clear), what is held (`(not in the export)` when the customer is not).
    pub not_applied: Vec<(String, Value, String)>,
    /// Fields the export cannot show (undefined metadata, objects, arrays):
    /// not read back.
    pub unreadable: usize,
    /// Voucherify changed the customer after segsync's confirmation (by its
    /// own clock): a difference is then another writer's, not a change it
    /// did not apply.
    pub elsewhere: bool,
}

/// Verify one confirmed change by the plan's own typed equality: every field
/// of the row (`body`) held as sent, every field of `cleared` held empty.
/// `confirmed_at_ms` is Voucherify's time of the confirmation.
pub fn verify(
    body: &Map<String, Value>,
    cleared: &[String],
    held: Option<&Held>,
    schema: &CustomerSchema,
    confirmed_at_ms: Option<i64>,
) -> Verdict {
    let row = flatten(body);
    let Some(held) = held else {
        let missing = || String::from("(not in the export)");
        return Verdict {
            not_applied: (row.into_iter().map(|(f, v)| (f, v, missing())))
                .chain(cleared.iter().map(|f| (f.clone(), Value::Null, missing())))
                .collect(),
            ..Default::default()
        };
    };
    let mut v = Verdict {
        elsewhere: matches!(
            (held.updated_at, confirmed_at_ms),
            (Some(u), Some(at)) if u.as_millisecond() > at
        ),
        ..Default::default()
    };
    for (f, want) in &row {
        match readable(held, schema, f) {
            Some(cell) if same(f, cell, want, schema) => {}
            Some(cell) => v
                .not_applied
                .push((f.clone(), want.clone(), cell.to_string())),
            None => v.unreadable += 1,
        }
    }
    for f in cleared {
        match readable(held, schema, f) {
            Some("") => {}
            Some(cell) => v
                .not_applied
                .push((f.clone(), Value::Null, cell.to_string())),
            None => v.unreadable += 1,
        }
    }
    v
}

/// The request: `source_id`, the changed top-level fields, `null` for the
/// cleared ones, and whole `address` and `metadata` objects when any of
/// their keys changes.
fn request(
    body: &Map<String, Value>,
    held: &Held,
    schema: &CustomerSchema,
    changed: &[String],
    cleared: &[String],
) -> Value {
    let mut out = Map::new();
    out.insert(
        "source_id".into(),
        body.get("source_id").cloned().unwrap_or(Value::Null),
    );
    for f in changed.iter().chain(cleared) {
        if !f.contains('.') {
            out.insert(f.clone(), body.get(f).cloned().unwrap_or(Value::Null));
        }
    }
    for group in ["address", "metadata"] {
        let prefix = format!("{group}.");
        let touched = |fs: &[String]| fs.iter().any(|f| f.starts_with(&prefix));
        if !touched(changed) && !touched(cleared) {
            continue;
        }
        let mut obj = held_object(held, schema, group);
        if let Some(Value::Object(today)) = body.get(group) {
            obj.extend(today.clone());
        }
        for f in cleared.iter().filter_map(|f| f.strip_prefix(&prefix)) {
            obj.insert(f.to_string(), Value::Null);
        }
        out.insert(group.into(), Value::Object(obj));
    }
    Value::Object(out)
}

/// The object Voucherify holds, as far as the export shows it: every
/// address field, and the defined metadata keys whose text converts back
/// to their type.
fn held_object(held: &Held, schema: &CustomerSchema, group: &str) -> Map<String, Value> {
    let mut out = Map::new();
    if group == "address" {
        for (i, f) in STANDARD.iter().enumerate() {
            if let (Some(k), Some(cell)) = (f.path.strip_prefix("address."), &held.standard[i]) {
                if !cell.is_empty() {
                    out.insert(k.to_string(), Value::String(cell.clone()));
                }
            }
        }
        return out;
    }
    for (k, cell) in held.metadata.iter().filter(|(_, c)| !c.is_empty()) {
        let def = schema.properties.get(k);
        let v = match def
            .filter(|d| d.array != Some(true))
            .and_then(|d| d.ty.as_deref())
        {
            Some("string" | "image_url" | "date" | "datetime") => Some(Value::String(cell.clone())),
            Some("number") => cell.trim().parse::<f64>().ok().and_then(|n| {
                if n.fract() == 0.0 && n.abs() < 9e15 {
                    Some(Value::from(n as i64))
                } else {
                    serde_json::Number::from_f64(n).map(Value::Number)
                }
            }),
            Some("boolean") => match cell.trim().to_ascii_lowercase().as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        };
        if let Some(v) = v {
            out.insert(k.clone(), v);
        }
    }
    out
}
