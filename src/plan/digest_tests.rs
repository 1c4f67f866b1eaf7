//! The fast path's soundness, by property: random export records and rows,
//! drawn from values that are nearly the same (a date and a date-time of
//! that day, `1` and `1.0`, `TRUE` and `true`, a trailing space). Wherever
//! the row's digest equals the record's, the full comparison
//! (`compare::compare`, the slow path, which the digests must never
//! contradict) finds the customer unchanged.

use super::compare::{compare, Rules};
use super::compare_tests::schema;
use super::confirmed::Confirmed;
use super::digest::{Kind, Layout};
use super::held::Held;
use crate::fields::STANDARD;
use crate::mapping::metadata_schema::CustomerSchema;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// The export's columns, in order: source id, then these fields.
const COLUMNS: [&str; 9] = [
    "name",
    "email",
    "birthdate",
    "address.city",
    "metadata.tier",
    "metadata.n",
    "metadata.on",
    "metadata.day",
    "metadata.when",
];

const TEXTS: &[&str] = &["Ann", "Ann ", "ann", ""];
const DATES: &[&str] = &[
    "1990-01-02",
    "1990-01-02T00:00:00Z",
    "1990-01-02x",
    "1990-01-03",
    "1990-02-30",
    "",
];
const TIMES: &[&str] = &[
    "2026-01-02T03:04:05Z",
    "2026-01-02T03:04:05.000Z",
    "2026-01-02T04:04:05+01:00",
    " 2026-01-02T03:04:05Z",
    "2026-01-02T03:04:06Z",
    "soon",
    "",
];
const NUMBERS: &[&str] = &["1", "1.0", " 1", "-0", "0", "0.1", "1e0", "x", ""];
const BOOLS: &[&str] = &["true", "TRUE", " false", "false", "yes", ""];

fn pool(field: &str) -> &'static [&'static str] {
    match field {
        "birthdate" | "metadata.day" => DATES,
        "metadata.when" => TIMES,
        "metadata.n" => NUMBERS,
        "metadata.on" => BOOLS,
        _ => TEXTS,
    }
}

/// A row's value for `field`: mostly of the field's kind, sometimes not.
fn value(field: &str, r: &mut impl Rng) -> Value {
    let s = pool(field)[r.gen_range(0..pool(field).len())];
    match field {
        "metadata.n" if r.gen_bool(0.8) => match s.trim().parse::<f64>() {
            Ok(n) if r.gen_bool(0.5) && n.fract() == 0.0 => json!(n as i64),
            Ok(n) => json!(n),
            Err(_) => json!(s),
        },
        "metadata.on" if r.gen_bool(0.8) => json!(s.trim().eq_ignore_ascii_case("true")),
        _ if r.gen_bool(0.05) => Value::Null,
        _ => json!(s),
    }
}

fn layout(schema: &CustomerSchema) -> Layout {
    let mut standard = [None; 11];
    let mut metadata = Vec::new();
    for (col, f) in COLUMNS.iter().enumerate() {
        match f.strip_prefix("metadata.") {
            Some(k) => metadata.push((
                k.to_string(),
                col + 1,
                Kind::metadata(&schema.properties[k]).unwrap(),
            )),
            None => standard[STANDARD.iter().position(|s| s.path == *f).unwrap()] = Some(col + 1),
        }
    }
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    Layout { standard, metadata }
}

fn held(cells: &[String]) -> Held {
    let mut standard: [Option<String>; 11] = Default::default();
    let mut metadata = std::collections::HashMap::new();
    for (f, cell) in COLUMNS.iter().zip(cells) {
        match f.strip_prefix("metadata.") {
            Some(k) => {
                metadata.insert(k.to_string(), cell.clone());
            }
            None => {
                standard[STANDARD.iter().position(|s| s.path == *f).unwrap()] = Some(cell.clone())
            }
        }
    }
    Held {
        standard,
        updated_at: None,
        metadata,
    }
}

/// The row's request: `compare_tests`'s, with this source id.
fn body(fields: &[(&str, Value)], source_id: &str) -> Map<String, Value> {
    let model: super::compare_tests::Model = fields
        .iter()
        .map(|(f, v)| (f.to_string(), v.clone()))
        .collect();
    let mut body = super::compare_tests::to_body(&model);
    body.insert("source_id".into(), json!(source_id));
    body
}

#[test]
fn property_equal_digests_mean_the_full_comparison_finds_nothing_to_send() {
    let schema = schema();
    let layout = layout(&schema);
    let mut r = rand::rngs::StdRng::seed_from_u64(0x00D1_6E57);
    let (mut equal, mut cases) = (0, 0);
    for _ in 0..60_000 {
        // The row's fields: a few of the columns (sometimes one without a
        // column, or another customer's id).
        let mut fields: Vec<(&str, Value)> = Vec::new();
        for f in COLUMNS {
            if r.gen_bool(0.4) {
                fields.push((f, value(f, &mut r)));
            }
        }
        if r.gen_bool(0.03) {
            fields.push(("metadata.obj", json!({"x": 1})));
        }
        if r.gen_bool(0.03) {
            fields.push(("phone", json!("+1")));
        }
        // The record: what the row says, in an export's spelling, or not.
        let cells: Vec<String> = COLUMNS
            .iter()
            .map(|f| match fields.iter().find(|(g, _)| g == f) {
                Some((_, Value::String(s))) if r.gen_bool(0.7) => s.clone(),
                Some((_, Value::Bool(b))) if r.gen_bool(0.7) => b.to_string(),
                Some((_, Value::Number(n))) if r.gen_bool(0.7) => n.to_string(),
                None if r.gen_bool(0.93) => String::new(),
                _ => pool(f)[r.gen_range(0..pool(f).len())].to_string(),
            })
            .collect();
        let mut rec = csv::StringRecord::new();
        rec.push_field("a");
        for c in &cells {
            rec.push_field(c);
        }
        let sid = if r.gen_bool(0.02) { "b" } else { "a" };
        let body = body(&fields, sid);
        cases += 1;
        if layout.of_body(&body) != Some(layout.of_record("a", &rec)) {
            continue;
        }
        equal += 1;
        let h = held(&cells);
        let rules = Rules {
            clear_removed: r.gen_bool(0.5),
            keep_newer: r.gen_bool(0.5),
        };
        let change = compare(
            &body,
            7,
            Some(&h),
            None,
            &Confirmed::default(),
            &schema,
            rules,
        );
        assert!(
            change.is_none(),
            "equal digests, yet the comparison sends {change:?}\nrow: {body:?}\nrecord: {cells:?}"
        );
    }
    // The draw must reach the fast path often enough to mean something.
    assert!(
        equal * 20 > cases,
        "only {equal} of {cases} digests were equal"
    );
}

/// The rows' fast path makes no request: `of_row` must give exactly what
/// `of_body` gives of the request the row makes (`request_with`), for rows
/// drawn as above, every standard field sometimes set (some without an
/// export column), metadata of every kind, and keys the export lacks.
#[test]
fn property_a_rows_digest_is_its_requests() {
    let schema = schema();
    let layout = layout(&schema);
    let mut r = rand::rngs::StdRng::seed_from_u64(34);
    let mut speaks = 0;
    for case in 0..30_000 {
        let mut row = crate::records::CustomerRow {
            source_id: Some(format!("c{}", case % 7)),
            ..Default::default()
        };
        for column in 1..12 {
            // Mostly the fields the export has a column for.
            let odds = if [1, 2, 4, 8].contains(&column) {
                0.5
            } else {
                0.05
            };
            if r.gen_bool(odds) {
                let field = ["name", "birthdate", "address.city"][r.gen_range(0..3)];
                let text = pool(field)[r.gen_range(0..pool(field).len())];
                *row.cell_mut(column).unwrap() = Some(text.to_string());
            }
        }
        let mut metadata = Map::new();
        for key in ["tier", "n", "on", "day", "when", "undefined"] {
            if r.gen_bool(0.5) {
                let field = format!("metadata.{key}");
                metadata.insert(key.to_string(), value(&field, &mut r));
            }
        }
        let metadata = (!metadata.is_empty() || r.gen_bool(0.5)).then_some(metadata);
        let want = layout.of_body(&row.request_with(metadata.clone()));
        assert_eq!(
            layout.of_row(&row, metadata.as_ref()),
            want,
            "case {case}: {row:?} {metadata:?}"
        );
        // The same from the cells as the record holds them, the metadata
        // read by the flat parse (escaped now and then).
        let text = metadata.as_ref().map(|m| {
            let t = serde_json::to_string(m).unwrap();
            if case % 3 == 0 {
                t.replace("\"tier\"", "\"ti\\u0065r\"")
            } else {
                t
            }
        });
        let flat = match &text {
            Some(t) => super::flat::parse(t).expect("an object"),
            None => Vec::new(),
        };
        let standard: [Option<&str>; 11] =
            std::array::from_fn(|i| row.cell(i + 1).filter(|c| !c.is_empty()));
        assert_eq!(
            layout.of_cells(row.source_id.as_deref().unwrap(), &standard, &flat),
            want,
            "case {case}, from cells: {row:?} {text:?}"
        );
        speaks += usize::from(want.is_some());
    }
    assert!(
        speaks > 1_000,
        "the digests speak for too few rows ({speaks}) to prove much"
    );
}
