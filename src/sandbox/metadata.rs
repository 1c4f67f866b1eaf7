//! The project's customer metadata schema, as Voucherify documents it:
//! `GET /v1/metadata-schemas` lists the project's schemas, and an upsert
//! whose metadata breaks the customer schema fails for that customer. The
//! sandbox's own reading, not segsync's checker: with `allow_defined_only`
//! an undefined key is refused; a defined key must have the defined type
//! (arrays when `array`), and for strings and numbers the defined bounds.

use super::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub async fn list(State(st): State<Arc<AppState>>) -> Response {
    let schema = st.metadata_schema.read().ok().and_then(|s| s.clone());
    let schemas: Vec<Value> = schema
        .into_iter()
        .map(|s| {
            json!({
                "id": "ms_sandbox_customer",
                "related_object": "customer",
                "properties": s.get("properties").cloned().unwrap_or(json!({})),
                "allow_defined_only": s.get("allow_defined_only").cloned().unwrap_or(json!(false)),
                "created_at": "2026-01-01T00:00:00.000Z",
                "updated_at": null,
                "object": "metadata_schema",
            })
        })
        .collect();
    Json(json!({"object": "list", "data_ref": "schemas", "total": schemas.len(), "schemas": schemas}))
        .into_response()
}

fn fits(def: &Map<String, Value>, v: &Value) -> bool {
    let ty = def.get("type").and_then(Value::as_str).unwrap_or("");
    let ok_type = match ty {
        "string" | "image_url" => v.is_string(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "date" => v
            .as_str()
            .is_some_and(|s| super::checks::valid_date(s) || s.parse::<jiff::Timestamp>().is_ok()),
        "datetime" => v
            .as_str()
            .is_some_and(|s| s.len() > 10 && s.parse::<jiff::Timestamp>().is_ok()),
        "object" => v.is_object(),
        // An object, or the documented string "37.786971, -122.399677".
        "geopoint" => {
            v.is_object()
                || v.as_str().is_some_and(|s| {
                    s.split_once(',').is_some_and(|(a, b)| {
                        a.trim().parse::<f64>().is_ok() && b.trim().parse::<f64>().is_ok()
                    })
                })
        }
        _ => true,
    };
    if !ok_type {
        return false;
    }
    let num = |k: &str| def.get(k).and_then(Value::as_f64);
    if let Some(n) = v.as_f64() {
        if num("lt").is_some_and(|b| n >= b)
            || num("lte").is_some_and(|b| n > b)
            || num("gt").is_some_and(|b| n <= b)
            || num("gte").is_some_and(|b| n < b)
        {
            return false;
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as f64;
        if num("exactLength").is_some_and(|l| len != l)
            || num("minLength").is_some_and(|l| len < l)
            || num("maxLength").is_some_and(|l| len > l)
        {
            return false;
        }
    }
    let listed = |k: &str| {
        def.get(k)
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.iter()
                    .any(|x| x == v || (x.as_f64().is_some() && x.as_f64() == v.as_f64()))
            })
    };
    if listed("eq") == Some(false) || listed("ne") == Some(true) {
        return false;
    }
    true
}

/// Why a customer's metadata breaks the schema, if it does.
pub fn violation(st: &AppState, metadata: &Value) -> Option<String> {
    let schema = st.metadata_schema.read().ok()?.clone()?;
    let props = schema.get("properties").and_then(Value::as_object)?;
    let strict = schema.get("allow_defined_only") == Some(&json!(true));
    for (k, v) in metadata.as_object()? {
        let def = props
            .get(k)
            .and_then(Value::as_object)
            .filter(|d| d.get("deleted") != Some(&json!(true)));
        match def {
            None if strict => {
                return Some(format!(
                    "metadata property {k:?} is not defined in the schema"
                ))
            }
            None => {}
            Some(d) => {
                let array = d.get("array") == Some(&json!(true));
                let ok = match (array, v) {
                    (true, Value::Array(items)) => items.iter().all(|i| fits(d, i)),
                    (true, _) => false,
                    (false, Value::Array(_)) => false,
                    (false, v) => v.is_null() || fits(d, v),
                };
                if !ok {
                    return Some(format!(
                        "metadata property {k:?} does not match its definition in the schema: {v}"
                    ));
                }
            }
        }
    }
    None
}

/// A new customer without a key the schema requires (`optional: false`):
/// "If you do not include required metadata when sending a request,
/// Voucherify rejects it with a validation error." Existing customers keep
/// what they have, so only new ones are held to it.
pub fn missing_required(st: &AppState, new: bool, metadata: Option<&Value>) -> Option<String> {
    if !new {
        return None;
    }
    let schema = st.metadata_schema.read().ok()?.clone()?;
    let props = schema.get("properties").and_then(Value::as_object)?;
    props
        .iter()
        .filter(|(_, d)| {
            d.get("optional") == Some(&json!(false)) && d.get("deleted") != Some(&json!(true))
        })
        .find(|(k, _)| {
            metadata
                .and_then(|m| m.get(k.as_str()))
                .is_none_or(Value::is_null)
        })
        .map(|(k, _)| format!("metadata property {k:?} is required"))
}
