//! Checks request bodies against Voucherify's published bulk-request schema
//! (fixtures/voucherify-customers-bulk.json). Only the JSON Schema keywords
//! that file uses are supported: `type` (with unions), `properties`, `items`,
//! `allOf`, `required` and `format: date`. It is stricter than JSON Schema in
//! one way, on purpose: a property the schema does not name is an error, since
//! our requests must carry only the properties Voucherify documents. A general
//! validator crate would pull in a regex engine and more for these six keywords.

use serde_json::{Map, Value};

pub const VENDOR_SCHEMA: &str = include_str!("../../fixtures/voucherify-customers-bulk.json");

/// The schema of `POST /v1/customers/bulk/async` requests.
pub fn bulk_request_schema() -> Value {
    let all: Value =
        serde_json::from_str(VENDOR_SCHEMA).expect("vendor schema fixture is valid JSON");
    all["customers_bulk_async_request"].clone()
}

/// Every problem with `value`, as `path: message`. `formats` also checks
/// `format: date` (Voucherify reports those per customer, not per request).
pub fn validate(schema: &Value, value: &Value, formats: bool) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "$", formats, &mut errors);
    errors
}

fn check(schema: &Value, value: &Value, path: &str, formats: bool, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else { return };
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|ty| type_matches(ty, value)) {
            errors.push(format!(
                "{path}: expected {}, got {}",
                types.join(" or "),
                type_name(value)
            ));
            return;
        }
    }
    if formats && s.get("format").and_then(Value::as_str) == Some("date") {
        if let Some(text) = value.as_str() {
            if !super::checks::valid_date(text) {
                errors.push(format!("{path}: {text:?} is not a date (YYYY-MM-DD)"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), value.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(items, item, &format!("{path}[{i}]"), formats, errors);
        }
    }
    if let Some(obj) = value.as_object() {
        let named = named_properties(schema);
        if !named.is_empty() {
            for key in obj.keys() {
                if !named.contains_key(key) {
                    errors.push(format!("{path}.{key}: property not in the schema"));
                }
            }
        }
        for (key, sub) in &named {
            if let Some(v) = obj.get(key) {
                check(sub, v, &format!("{path}.{key}"), formats, errors);
            }
        }
        for req in required(schema) {
            if !obj.contains_key(&req) {
                errors.push(format!("{path}.{req}: required"));
            }
        }
    }
    if let Some(Value::Array(parts)) = s.get("allOf") {
        // Property checks of the parts are done above on their union; check
        // the rest (types) of each part without its properties.
        for part in parts {
            let mut p = part.as_object().cloned().unwrap_or_default();
            p.remove("properties");
            p.remove("required");
            check(&Value::Object(p), value, path, formats, errors);
        }
    }
}

/// The properties named by a schema and its `allOf` parts.
fn named_properties(schema: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(Value::Object(p)) = schema.get("properties") {
        out.extend(p.clone());
    }
    if let Some(Value::Array(parts)) = schema.get("allOf") {
        for part in parts {
            out.extend(named_properties(part));
        }
    }
    out
}

fn required(schema: &Value) -> Vec<String> {
    let mut out: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Array(parts)) = schema.get("allOf") {
        for part in parts {
            out.extend(required(part));
        }
    }
    out
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => true,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_documented_request() {
        let s = bulk_request_schema();
        let body = json!([{"source_id":"a","name":"N","birthdate":"1990-01-02","address":{"city":"X","postal_code":"1"},"metadata":{"k":1}}]);
        assert_eq!(validate(&s, &body, true), Vec::<String>::new());
    }

    #[test]
    fn rejects_unknown_properties_wrong_types_and_bad_dates() {
        let s = bulk_request_schema();
        let body = json!([{"source_id":"a","segment_id":"use_1","name":5,"birthdate":"1990-02-30","address":{"street":"x"}}]);
        let errs = validate(&s, &body, true);
        assert!(!validate(&s, &body, false)
            .iter()
            .any(|e| e.contains("birthdate")));
        assert!(
            errs.iter()
                .any(|e| e.contains("segment_id") && e.contains("not in the schema")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("$[0].name") && e.contains("expected string")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("birthdate")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("address.street")),
            "{errs:?}"
        );
        assert!(!validate(&s, &json!({"not":"an array"}), false).is_empty());
    }
}
