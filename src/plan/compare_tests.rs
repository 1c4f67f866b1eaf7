//! The plan's rules (docs/DESIGN.md, "The plan's rules"), one test each,
//! and a property test: random held state, ledger and row; the plan's send
//! applied to a model of Voucherify under both readings of a nested upsert
//! (`address` and `metadata` merged key by key, or replaced whole).
//! The model and its checks are written here, from the rules' words; they
//! share nothing with `compare` but its inputs.

use super::compare::{compare, Action, Change, Rules, UNREADABLE};
use super::confirmed::{Confirmed, Last};
use super::held::Held;
use crate::fields::STANDARD;
use crate::mapping::metadata_schema::CustomerSchema;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub(super) fn schema() -> CustomerSchema {
    serde_json::from_value(json!({"properties": {
        "tier": {"type": "string"},
        "n": {"type": "number"},
        "on": {"type": "boolean"},
        "day": {"type": "date"},
        "when": {"type": "datetime"},
        "obj": {"type": "object"},
    }}))
    .unwrap()
}

/// What the export shows: `cells` by plan field name (absent: no column).
fn held(cells: &[(&str, &str)], updated_ms: Option<i64>) -> Held {
    let mut standard: [Option<String>; 11] = Default::default();
    let mut metadata = std::collections::HashMap::new();
    for (f, cell) in cells {
        if let Some(k) = f.strip_prefix("metadata.") {
            metadata.insert(k.to_string(), cell.to_string());
        } else {
            let i = STANDARD.iter().position(|s| s.path == *f).unwrap();
            standard[i] = Some(cell.to_string());
        }
    }
    Held {
        standard,
        updated_at: updated_ms.map(|ms| jiff::Timestamp::from_millisecond(ms).unwrap()),
        metadata,
    }
}

/// Every standard column present and empty, then `cells` over it.
fn full(cells: &[(&str, &str)], updated_ms: Option<i64>) -> Held {
    let mut h = held(cells, updated_ms);
    for s in h.standard.iter_mut().filter(|s| s.is_none()) {
        *s = Some(String::new());
    }
    h
}

fn row(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A ledger whose one customer segsync confirmed at `at_ms` with `content`,
/// having set `fields`.
fn ledger(fields: &[&str], content: u64, at_ms: i64) -> (Confirmed, Last) {
    let c = Confirmed::with_field_lists(vec![fields.iter().map(|f| f.to_string()).collect()]);
    (
        c,
        Last {
            content,
            at_ms,
            fields: Some(0),
        },
    )
}

const DEFAULT: Rules = Rules {
    clear_removed: false,
    keep_newer: false,
};
const CLEAR: Rules = Rules {
    clear_removed: true,
    keep_newer: false,
};
const KEEP: Rules = Rules {
    clear_removed: false,
    keep_newer: true,
};

fn plan(
    body: &Map<String, Value>,
    h: Option<&Held>,
    l: Option<(&Confirmed, Last)>,
    rules: Rules,
) -> Option<Change> {
    let empty = Confirmed::default();
    let (c, last) = match l {
        Some((c, last)) => (c, Some(last)),
        None => (&empty, None),
    };
    compare(body, 7, h, last, c, &schema(), rules)
}

#[test]
fn rule_create_sends_the_whole_row_when_the_export_lacks_the_customer() {
    let body = row(json!({"source_id": "a", "name": "Ann", "address": {"city": "Oslo"}}));
    let c = plan(&body, None, None, DEFAULT).unwrap();
    assert_eq!(c.action, Action::Create);
    assert_eq!(c.send, Some(Value::Object(body)));
    assert_eq!(c.fields, ["name", "address.city"]);
}

#[test]
fn rule_typed_equality_reads_the_export_by_the_fields_type() {
    let body = row(json!({"source_id": "a", "birthdate": "1990-01-02",
        "metadata": {"n": 1, "on": true, "day": "2024-05-06", "tier": "Gold"}}));
    let h = full(
        &[
            ("birthdate", "1990-01-02T00:00:00.000Z"),
            ("metadata.n", "1.0"),
            ("metadata.on", "TRUE"),
            ("metadata.day", "2024-05-06"),
            ("metadata.tier", "Gold"),
        ],
        Some(5),
    );
    assert!(
        plan(&body, Some(&h), None, DEFAULT).is_none(),
        "all equal by type"
    );
    // Strings compare exactly: no case folding, no trimming.
    let h = full(&[("metadata.tier", "gold")], Some(5));
    let body = row(json!({"source_id": "a", "metadata": {"tier": "Gold"}}));
    let c = plan(&body, Some(&h), None, DEFAULT).unwrap();
    assert_eq!(c.fields, ["metadata.tier"]);
}

#[test]
fn rule_a_field_the_export_cannot_show_is_unchanged_only_as_confirmed() {
    // `obj` is an object (no documented export format); `free` is not in the schema.
    let body = row(json!({"source_id": "a", "metadata": {"obj": {"x": 1}, "free": "f"}}));
    let h = full(&[], Some(100));
    // Confirmed with the same content, and Voucherify not changed since.
    let (c, last) = ledger(&["metadata.obj", "metadata.free"], 7, 100);
    assert!(plan(&body, Some(&h), Some((&c, last)), DEFAULT).is_none());
    // Changed in Voucherify after the confirmation: sent.
    let h = full(&[], Some(101));
    let ch = plan(&body, Some(&h), Some((&c, last)), DEFAULT).unwrap();
    assert_eq!(ch.fields, ["metadata.obj", "metadata.free"]);
    assert_eq!(ch.old["metadata.obj"], json!(UNREADABLE));
    // Another content confirmed: sent.
    let (c, last) = ledger(&["metadata.obj"], 8, 100);
    let h = full(&[], Some(100));
    assert!(plan(&body, Some(&h), Some((&c, last)), DEFAULT).is_some());
    // No ledger: sent.
    assert!(plan(&body, Some(&h), None, DEFAULT).is_some());
}

#[test]
fn rule_a_field_segsync_set_that_the_source_emptied_is_a_pending_clear() {
    let body = row(json!({"source_id": "a", "name": "Ann"}));
    let h = full(&[("name", "Ann"), ("phone", "+1")], Some(5));
    let (c, last) = ledger(&["name", "phone"], 8, 10);
    let ch = plan(&body, Some(&h), Some((&c, last)), DEFAULT).unwrap();
    assert_eq!(ch.action, Action::Clear);
    assert_eq!(ch.cleared(), ["phone"]);
    assert_eq!(ch.pending_clears(), ["phone"]);
    assert!(
        ch.send.is_none() && ch.skip.is_some(),
        "not sent without --clear-removed"
    );
    // With --clear-removed it is sent as null.
    let ch = plan(&body, Some(&h), Some((&c, last)), CLEAR).unwrap();
    assert_eq!(ch.send, Some(json!({"source_id": "a", "phone": null})));
    assert!(ch.pending_clears().is_empty());
}

#[test]
fn rule_an_update_keeps_its_pending_clears_and_does_not_send_them() {
    // The touch-100 case: the name changes, the state was emptied.
    let body = row(json!({"source_id": "a", "name": "New", "address": {"city": "Oslo"}}));
    let h = full(
        &[
            ("name", "Old"),
            ("address.city", "Oslo"),
            ("address.state", "ON"),
        ],
        Some(5),
    );
    let (c, last) = ledger(&["name", "address.city", "address.state"], 8, 10);
    let ch = plan(&body, Some(&h), Some((&c, last)), DEFAULT).unwrap();
    assert_eq!(ch.action, Action::Update);
    assert_eq!(ch.pending_clears(), ["address.state"]);
    assert_eq!(ch.send, Some(json!({"source_id": "a", "name": "New"})));
    let ch = plan(&body, Some(&h), Some((&c, last)), CLEAR).unwrap();
    assert_eq!(
        ch.send,
        Some(json!({"source_id": "a", "name": "New", "address": {"city": "Oslo", "state": null}}))
    );
}

#[test]
fn rule_a_field_segsync_never_set_is_never_cleared() {
    let body = row(json!({"source_id": "a", "name": "Ann"}));
    let h = full(&[("name", "Ann"), ("phone", "+1")], Some(5));
    let (c, last) = ledger(&["name"], 7, 10);
    assert!(plan(&body, Some(&h), Some((&c, last)), CLEAR).is_none());
}

#[test]
fn rule_a_field_already_empty_in_voucherify_is_no_clear() {
    let body = row(json!({"source_id": "a", "name": "Ann"}));
    let h = full(&[("name", "Ann")], Some(5));
    let (c, last) = ledger(&["name", "phone"], 7, 10);
    assert!(plan(&body, Some(&h), Some((&c, last)), CLEAR).is_none());
}

#[test]
fn rule_address_and_metadata_are_sent_whole_with_what_the_export_shows() {
    let body = row(json!({"source_id": "a", "address": {"city": "Rome"},
        "metadata": {"tier": "gold"}}));
    let h = full(
        &[
            ("address.city", "Oslo"),
            ("address.country", "NO"),
            ("metadata.tier", "gold"),
            ("metadata.n", "2.5"),
            ("metadata.on", "false"),
        ],
        Some(5),
    );
    let ch = plan(&body, Some(&h), None, DEFAULT).unwrap();
    assert_eq!(ch.fields, ["address.city"]);
    assert_eq!(
        ch.send,
        Some(json!({"source_id": "a", "address": {"city": "Rome", "country": "NO"}})),
        "metadata unchanged: not sent"
    );
    let body = row(json!({"source_id": "a", "metadata": {"tier": "silver"}}));
    let ch = plan(&body, Some(&h), None, DEFAULT).unwrap();
    assert_eq!(
        ch.send,
        Some(json!({"source_id": "a", "metadata": {"tier": "silver", "n": 2.5, "on": false}}))
    );
}

#[test]
fn rule_only_changed_top_level_fields_are_sent() {
    let body = row(json!({"source_id": "a", "name": "Ann", "email": "a@x.io", "phone": "+1"}));
    let h = full(
        &[("name", "Ann"), ("email", "old@x.io"), ("phone", "+1")],
        Some(5),
    );
    let ch = plan(&body, Some(&h), None, DEFAULT).unwrap();
    assert_eq!(ch.send, Some(json!({"source_id": "a", "email": "a@x.io"})));
    assert_eq!(ch.old["email"], json!("old@x.io"));
}

#[test]
fn rule_changed_elsewhere_is_marked_and_segment_wins_by_default() {
    let body = row(json!({"source_id": "a", "name": "Ann"}));
    let h = full(&[("name", "Renamed")], Some(20));
    let (c, last) = ledger(&["name"], 7, 10);
    let ch = plan(&body, Some(&h), Some((&c, last)), DEFAULT).unwrap();
    assert!(ch.elsewhere);
    assert_eq!(ch.send, Some(json!({"source_id": "a", "name": "Ann"})));
}

#[test]
fn rule_keep_newer_skips_what_voucherify_changed_since() {
    let body = row(json!({"source_id": "a", "name": "Ann"}));
    let h = full(&[("name", "Renamed")], Some(20));
    let (c, last) = ledger(&["name"], 7, 10);
    let ch = plan(&body, Some(&h), Some((&c, last)), KEEP).unwrap();
    assert!(ch.send.is_none());
    assert!(ch.skip.unwrap().contains("--keep-newer"));
    // Not changed since: sent.
    let h = full(&[("name", "Renamed")], Some(10));
    assert!(plan(&body, Some(&h), Some((&c, last)), KEEP)
        .unwrap()
        .send
        .is_some());
}

#[test]
fn rule_keep_newer_fails_closed_on_an_unreadable_updated_at() {
    let body = row(json!({"source_id": "a", "name": "Ann"}));
    let h = full(&[("name", "Renamed")], None);
    let (c, last) = ledger(&["name"], 7, 10);
    let ch = plan(&body, Some(&h), Some((&c, last)), KEEP).unwrap();
    assert!(ch.unknown_updated);
    assert!(ch.send.is_none(), "cannot rule out a change made there");
    assert!(ch.skip.unwrap().contains("updated_at"));
    // Without --keep-newer it is sent, and still counted as unknown.
    let ch = plan(&body, Some(&h), Some((&c, last)), DEFAULT).unwrap();
    assert!(ch.unknown_updated && ch.send.is_some());
    // A customer segsync never confirmed has no "since".
    let ch = plan(&body, Some(&h), None, KEEP).unwrap();
    assert!(!ch.unknown_updated && ch.send.is_some());
}

#[test]
fn rule_unchanged_is_not_listed() {
    let body = row(json!({"source_id": "a", "name": "Ann", "address": {"city": "Oslo"}}));
    let h = full(&[("name", "Ann"), ("address.city", "Oslo")], Some(5));
    assert!(plan(&body, Some(&h), None, DEFAULT).is_none());
}

// ---- the property test ----

/// The fields the property test draws, with the values each may take.
const FIELDS: [(&str, &[&str]); 8] = [
    ("name", &["Ann", "Bob"]),
    ("email", &["a@x.io", "b@x.io"]),
    ("phone", &["+1", "+2"]),
    ("address.city", &["Oslo", "Rome"]),
    ("address.state", &["ON", "QC"]),
    ("metadata.tier", &["gold", "free"]),
    ("metadata.n", &["1", "2.5"]),
    ("metadata.obj", &["{\"x\":1}", "{\"x\":2}"]),
];

fn value_of(field: &str, s: &str) -> Value {
    match field {
        "metadata.n" | "metadata.obj" => serde_json::from_str(s).unwrap(),
        _ => Value::String(s.into()),
    }
}

/// The export's text for a held value (numbers as an exporter may write them).
fn cell_of(field: &str, v: &Value, r: &mut impl Rng) -> String {
    match (field, v) {
        ("metadata.n", Value::Number(n)) if n.as_f64() == Some(1.0) && r.gen_bool(0.5) => {
            "1.0".into()
        }
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

pub(super) type Model = BTreeMap<String, Value>;

/// A request applied to the model: top-level fields replace, null removes;
/// `address` and `metadata` merge key by key, or replace the object whole.
fn apply(model: &mut Model, send: &Value, replace: bool) {
    for (k, v) in send.as_object().unwrap() {
        match (k.as_str(), v) {
            ("source_id", _) => {}
            ("address" | "metadata", Value::Object(inner)) => {
                let prefix = format!("{k}.");
                if replace {
                    model.retain(|f, _| !f.starts_with(&prefix));
                }
                for (ik, iv) in inner {
                    let f = format!("{prefix}{ik}");
                    if iv.is_null() {
                        model.remove(&f);
                    } else {
                        model.insert(f, iv.clone());
                    }
                }
            }
            (_, Value::Null) => {
                model.remove(k);
            }
            _ => {
                model.insert(k.clone(), v.clone());
            }
        }
    }
}

pub(super) fn to_body(fields: &Model) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("source_id".into(), json!("a"));
    for (f, v) in fields {
        match f.split_once('.') {
            Some((group, key)) => {
                let o = body.entry(group).or_insert_with(|| json!({}));
                o.as_object_mut().unwrap().insert(key.into(), v.clone());
            }
            None => {
                body.insert(f.clone(), v.clone());
            }
        }
    }
    body
}

struct Case {
    truth: Model,
    today: Model,
    export: Held,
    /// Fields the export shows truthfully (the others it cannot show).
    shown: Vec<&'static str>,
    last: Option<(Vec<String>, u64, i64)>,
    rules: Rules,
}

fn draw(r: &mut impl Rng) -> Case {
    let pick =
        |r: &mut dyn rand::RngCore, vals: &[&str]| vals[r.gen_range(0..vals.len())].to_string();
    let mut truth = Model::new();
    let mut today = Model::new();
    for (f, vals) in FIELDS {
        if r.gen_bool(0.6) {
            truth.insert(f.into(), value_of(f, &pick(r, vals)));
        }
        if r.gen_bool(0.6) {
            today.insert(f.into(), value_of(f, &pick(r, vals)));
        }
    }
    let content = if r.gen_bool(0.5) { 7 } else { 8 };
    let at_ms = 100;
    let updated = match r.gen_range(0..10) {
        0 => None,
        1..=4 => Some(150),
        _ => Some(50),
    };
    let last = r.gen_bool(0.7).then(|| {
        let set: Vec<String> = FIELDS
            .iter()
            .filter(|_| r.gen_bool(0.5))
            .map(|(f, _)| f.to_string())
            .collect();
        (set, content, at_ms)
    });
    // The ledger tells the truth: confirmed with today's content, and not
    // changed since, means Voucherify holds today's row.
    if matches!((&last, updated), (Some((_, 7, at)), Some(u)) if u <= *at) {
        for (f, v) in &today {
            truth.insert(f.clone(), v.clone());
        }
    }
    // The phone column is sometimes missing; `obj` has no export format.
    let phone_shown = r.gen_bool(0.8);
    let shown: Vec<&str> = FIELDS
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| *f != "metadata.obj" && (phone_shown || *f != "phone"))
        .collect();
    let mut cells: Vec<(String, String)> = Vec::new();
    for f in &shown {
        let cell = truth.get(*f).map(|v| cell_of(f, v, r)).unwrap_or_default();
        cells.push((f.to_string(), cell));
    }
    let refs: Vec<(&str, &str)> = cells
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut export = held(&refs, updated);
    for (i, f) in STANDARD.iter().enumerate() {
        if !FIELDS.iter().any(|(g, _)| *g == f.path) {
            export.standard[i] = Some(String::new());
        }
    }
    Case {
        truth,
        today,
        export,
        shown,
        last,
        rules: Rules {
            clear_removed: r.gen_bool(0.5),
            keep_newer: r.gen_bool(0.3),
        },
    }
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn check(case: &Case, replace: bool) -> Result<(), String> {
    let body = to_body(&case.today);
    let content = 7;
    let confirmed;
    let last = match &case.last {
        Some((set, content, at)) => {
            confirmed = Confirmed::with_field_lists(vec![set.clone()]);
            Some(Last {
                content: *content,
                at_ms: *at,
                fields: Some(0),
            })
        }
        None => {
            confirmed = Confirmed::default();
            None
        }
    };
    let change = compare(
        &body,
        content,
        Some(&case.export),
        last,
        &confirmed,
        &schema(),
        case.rules,
    );
    let mut end = case.truth.clone();
    let send = change.as_ref().and_then(|c| c.send.clone());
    if let Some(s) = &send {
        apply(&mut end, s, replace);
    }
    let skipped_by_keep_newer = change
        .as_ref()
        .and_then(|c| c.skip)
        .is_some_and(|s| s.contains("--keep-newer"));
    if skipped_by_keep_newer {
        return if end == case.truth {
            Ok(())
        } else {
            Err("a skipped customer changed".into())
        };
    }
    // Every field the source has ends equal to the source.
    for (f, v) in &case.today {
        if !same(end.get(f), Some(v)) {
            return Err(format!("{f}: ends {:?}, the source says {v}", end.get(f)));
        }
    }
    let set: &[String] = case.last.as_ref().map_or(&[], |l| &l.0);
    for (f, _) in FIELDS.iter().filter(|(f, _)| !case.today.contains_key(*f)) {
        let was = case.truth.get(*f);
        let now = end.get(*f);
        let cleared_ok = case.rules.clear_removed && set.iter().any(|s| s == f);
        if cleared_ok {
            if now.is_some() {
                return Err(format!("{f}: --clear-removed, segsync set it, the source emptied it, yet it holds {now:?}"));
            }
            continue;
        }
        // Nothing else the source lacks changes, except that a whole object
        // replaced loses keys the export cannot show (documented).
        let invisible = !case.shown.contains(f);
        let lost_to_replace = replace && invisible && f.contains('.') && now.is_none();
        if !same(now, was) && !lost_to_replace {
            return Err(format!(
                "{f}: the source lacks it, Voucherify held {was:?}, it ends {now:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn property_every_plan_leaves_voucherify_as_the_rules_say_under_both_readings() {
    let mut r = rand::rngs::StdRng::seed_from_u64(0x0005_E65C);
    let cases = 40_000;
    let mut sent = 0;
    for i in 0..cases {
        let case = draw(&mut r);
        for replace in [false, true] {
            if let Err(why) = check(&case, replace) {
                panic!(
                    "case {i} ({} reading): {why}\ntruth {:?}\ntoday {:?}\nledger {:?}\nshown {:?} updated {:?}\nrules {:?}",
                    if replace { "replace" } else { "merge" },
                    case.truth,
                    case.today,
                    case.last,
                    case.shown,
                    case.export.updated_at,
                    case.rules
                );
            }
        }
        sent += u32::from(!case.today.is_empty());
    }
    assert!(sent > cases / 2, "the draw must exercise sends");
}
