//! The project's customer metadata schema (`GET /v1/metadata-schemas`, the
//! schema whose `related_object` is `customer`), and the check of a
//! customer's metadata against it, so that what Voucherify would reject one
//! customer at a time after sending is found before anything is sent.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One metadata key's definition. Every field is optional in the answer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Definition {
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    #[serde(default)]
    pub array: Option<bool>,
    #[serde(default)]
    pub optional: Option<bool>,
    #[serde(default)]
    pub deleted: Option<bool>,
    #[serde(default)]
    pub eq: Option<Vec<Value>>,
    #[serde(default)]
    pub ne: Option<Vec<Value>>,
    #[serde(default)]
    pub lt: Option<f64>,
    #[serde(default)]
    pub lte: Option<f64>,
    #[serde(default)]
    pub gt: Option<f64>,
    #[serde(default)]
    pub gte: Option<f64>,
    #[serde(default, rename = "minLength")]
    pub min_length: Option<u64>,
    #[serde(default, rename = "maxLength")]
    pub max_length: Option<u64>,
    #[serde(default, rename = "exactLength")]
    pub exact_length: Option<u64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Definition>, D::Error> {
    Ok(Option::<BTreeMap<String, Definition>>::deserialize(d)?.unwrap_or_default())
}

/// The customer metadata schema of a project.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CustomerSchema {
    /// `properties` may be null: no keys defined.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub properties: BTreeMap<String, Definition>,
    /// Only defined keys are accepted.
    #[serde(default)]
    pub allow_defined_only: Option<bool>,
}

/// Read the project's customer schema from Voucherify.
pub async fn read(
    client: &crate::api::voucherify::VoucherifyClient,
) -> Result<CustomerSchema, crate::error::ApiError> {
    let v = client.metadata_schemas().await?;
    CustomerSchema::from_answer(&v).map_err(|e| {
        crate::error::ApiError::contract("Voucherify", crate::api::voucherify::METADATA_SCHEMAS, &e)
    })
}

impl CustomerSchema {
    /// The customer schema from a `GET /v1/metadata-schemas` answer; an empty
    /// (anything goes) schema when the project defines none.
    pub fn from_answer(v: &Value) -> Result<CustomerSchema, String> {
        // `schemas` is nullable: null and [] both mean the project defines no
        // schema; a missing key is a broken answer.
        let schemas = match v.get("schemas") {
            Some(Value::Null) => return Ok(CustomerSchema::default()),
            Some(Value::Array(a)) => a,
            _ => return Err("no `schemas` array".into()),
        };
        for s in schemas {
            if s.get("related_object").and_then(Value::as_str) == Some("customer") {
                return serde_json::from_value(s.clone()).map_err(|e| e.to_string());
            }
        }
        Ok(CustomerSchema::default())
    }

    /// The keys the schema requires (`optional: false`, not deleted).
    pub fn required_keys(&self) -> Vec<String> {
        self.properties
            .iter()
            .filter(|(_, d)| d.optional == Some(false) && d.deleted != Some(true))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn defined(&self, key: &str) -> Option<&Definition> {
        self.properties.get(key).filter(|d| d.deleted != Some(true))
    }

    /// Every problem with a customer's metadata, as (key, what is wrong).
    pub fn check(&self, metadata: &Map<String, Value>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in metadata {
            match self.defined(k) {
                None if self.allow_defined_only == Some(true) => out.push((
                    k.clone(),
                    "is not defined in the project's customer metadata schema, which allows defined keys only; define it in Voucherify (Project Settings > Metadata Schema) or leave it out of the mapping".into(),
                )),
                None => {}
                Some(d) => {
                    if let Some(why) = check_value(d, v) {
                        out.push((k.clone(), why));
                    }
                }
            }
        }
        out
    }
}

fn type_name(d: &Definition) -> String {
    format!(
        "{}{}",
        d.ty.as_deref().unwrap_or("any"),
        if d.array == Some(true) { " array" } else { "" }
    )
}

/// What is wrong with `v` under `d`, if anything.
pub fn check_value(d: &Definition, v: &Value) -> Option<String> {
    if v.is_null() {
        return None;
    }
    if d.array == Some(true) {
        let Value::Array(items) = v else {
            return Some(format!(
                "{v} is not an array; the schema defines {}",
                type_name(d)
            ));
        };
        return items.iter().find_map(|i| check_one(d, i));
    }
    if v.is_array() {
        return Some(format!(
            "{v} is an array; the schema defines {}",
            type_name(d)
        ));
    }
    check_one(d, v)
}

/// "latitude, longitude" as two numbers in range.
fn geopoint_text(s: &str) -> bool {
    let Some((lat, lng)) = s.split_once(',') else {
        return false;
    };
    match (lat.trim().parse::<f64>(), lng.trim().parse::<f64>()) {
        (Ok(lat), Ok(lng)) => lat.abs() <= 90.0 && lng.abs() <= 180.0,
        _ => false,
    }
}

fn check_one(d: &Definition, v: &Value) -> Option<String> {
    let ty = d.ty.as_deref().unwrap_or("");
    let type_ok = match ty {
        "string" | "image_url" => v.is_string(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        // `YYYY-MM-DD`, or a date-time as the docs' own example
        // (`2020-03-11T09:00:00.000Z`).
        "date" => v.as_str().is_some_and(|s| {
            crate::dates::is_real_date(s) || crate::dates::parse_timestamp(s).is_some()
        }),
        "datetime" => v
            .as_str()
            .is_some_and(|s| s.len() > 10 && crate::dates::parse_timestamp(s).is_some()),
        "object" => v.is_object(),
        // An object, or the documented string form "37.786971, -122.399677".
        "geopoint" => v.is_object() || v.as_str().is_some_and(geopoint_text),
        _ => true,
    };
    if !type_ok {
        return Some(format!("{v} is not a {ty}, as the schema defines it"));
    }
    if let Some(eq) = &d.eq {
        if !eq.is_empty() && !eq.iter().any(|e| same(e, v)) {
            return Some(format!(
                "{v} is not one of the values the schema allows ({})",
                list(eq)
            ));
        }
    }
    if let Some(ne) = &d.ne {
        if ne.iter().any(|e| same(e, v)) {
            return Some(format!("{v} is a value the schema forbids ({})", list(ne)));
        }
    }
    if let Some(n) = v.as_f64() {
        for (bound, ok, word) in [
            (d.lt, d.lt.is_none_or(|b| n < b), "less than"),
            (d.lte, d.lte.is_none_or(|b| n <= b), "at most"),
            (d.gt, d.gt.is_none_or(|b| n > b), "greater than"),
            (d.gte, d.gte.is_none_or(|b| n >= b), "at least"),
        ] {
            if !ok {
                return Some(format!("{v} must be {word} {}", bound.unwrap_or_default()));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if d.exact_length.is_some_and(|l| len != l) {
            return Some(format!(
                "{v} is {len} characters long; the schema wants exactly {}",
                d.exact_length.unwrap_or_default()
            ));
        }
        if d.min_length.is_some_and(|l| len < l) {
            return Some(format!(
                "{v} is {len} characters long, shorter than the schema's minimum {}",
                d.min_length.unwrap_or_default()
            ));
        }
        if d.max_length.is_some_and(|l| len > l) {
            return Some(format!(
                "{v} is {len} characters long, longer than the schema's maximum {}",
                d.max_length.unwrap_or_default()
            ));
        }
    }
    None
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn list(vs: &[Value]) -> String {
    vs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> CustomerSchema {
        CustomerSchema::from_answer(&json!({"schemas": [
            {"related_object": "campaign", "properties": {}, "allow_defined_only": true},
            v
        ]}))
        .unwrap()
    }

    #[test]
    fn null_properties_geopoint_text_datetime_dates_and_required_keys() {
        let s = schema(json!({"related_object": "customer", "properties": null}));
        assert!(s.properties.is_empty());
        let s = schema(json!({"related_object": "customer", "properties": {
            "where": {"type": "geopoint"},
            "since": {"type": "date"},
            "plan": {"type": "string", "optional": false},
            "gone": {"type": "string", "optional": false, "deleted": true}
        }}));
        let ok = json!({"where": "37.786971, -122.399677", "since": "2020-03-11T09:00:00.000Z"});
        assert!(s.check(ok.as_object().unwrap()).is_empty());
        let bad = json!({"where": "somewhere", "since": "2020-02-30"});
        assert_eq!(s.check(bad.as_object().unwrap()).len(), 2);
        assert_eq!(s.required_keys(), vec!["plan".to_string()]);
    }

    #[test]
    fn the_customer_schema_is_the_one_used() {
        let s = schema(
            json!({"related_object": "customer", "allow_defined_only": true,
            "properties": {"plan": {"type": "string"}}}),
        );
        assert_eq!(s.allow_defined_only, Some(true));
        assert!(s.properties.contains_key("plan"));
        let none = CustomerSchema::from_answer(&json!({"schemas": []})).unwrap();
        assert_eq!(
            CustomerSchema::from_answer(&json!({"schemas": null})).unwrap(),
            none,
            "nullable: null is no schema"
        );
        assert!(none.check(json!({"x": 1}).as_object().unwrap()).is_empty());
    }

    #[test]
    fn every_rule_is_checked() {
        let s = schema(
            json!({"related_object": "customer", "allow_defined_only": true, "properties": {
                "big_spender": {"type": "boolean"},
                "ltv": {"type": "number", "gte": 0, "lt": 1000000},
                "tier": {"type": "string", "eq": ["gold", "silver"]},
                "code": {"type": "string", "exactLength": 3},
                "nick": {"type": "string", "minLength": 2, "maxLength": 5},
                "score": {"type": "number", "ne": [13]},
                "tags": {"type": "string", "array": true},
                "born": {"type": "date"},
                "seen": {"type": "datetime"},
                "gone": {"type": "string", "deleted": true}
            }}),
        );
        let bad = |v: Value| s.check(v.as_object().unwrap());
        assert!(bad(
            json!({"big_spender": true, "ltv": 10.5, "tier": "gold", "code": "abc", "nick": "zz",
            "score": 12, "tags": ["a", "b"], "born": "1990-05-17", "seen": "2024-01-02T03:04:05Z"})
        )
        .is_empty());
        for (v, key, says) in [
            (
                json!({"undefined_key": 1}),
                "undefined_key",
                "allows defined keys only",
            ),
            (json!({"gone": "x"}), "gone", "allows defined keys only"),
            (
                json!({"big_spender": "true"}),
                "big_spender",
                "not a boolean",
            ),
            (json!({"ltv": -1}), "ltv", "at least 0"),
            (json!({"ltv": 1000000}), "ltv", "less than"),
            (json!({"tier": "bronze"}), "tier", "not one of"),
            (json!({"code": "ab"}), "code", "exactly 3"),
            (json!({"nick": "z"}), "nick", "shorter"),
            (json!({"nick": "zzzzzz"}), "nick", "longer"),
            (json!({"score": 13}), "score", "forbids"),
            (json!({"tags": "a"}), "tags", "not an array"),
            (json!({"tags": [1]}), "tags", "not a string"),
            (json!({"born": "17/05/1990"}), "born", "not a date"),
            (json!({"seen": "1990-05-17"}), "seen", "not a datetime"),
        ] {
            let p = bad(v.clone());
            assert_eq!(p.len(), 1, "{v}: {p:?}");
            assert_eq!(p[0].0, key);
            assert!(p[0].1.contains(says), "{v}: {}", p[0].1);
        }
    }
}
