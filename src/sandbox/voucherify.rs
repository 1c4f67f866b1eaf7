//! Voucherify's customers API as documented: `POST /v1/customers/bulk/async`
//! (a JSON array validated against the vendor's schema, 413 over the body
//! limit, 202 with an `async_action_id`), `GET /v1/async-actions/{id}` with
//! its ENQUEUED → IN_PROGRESS → DONE lifecycle and per-customer errors, and
//! upsert by `source_id` that puts what a request gives over what the
//! project holds. Auth by `X-App-Id` and `X-App-Token`.

use super::checks::{error, valid_date};
use super::{schema, AppState, Misbehave, Nulls};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Customers one bulk request may carry (a Voucherify maintainer, in
/// voucherify-java-sdk PR #113; the seed's README: "a maximum of 100 records").
pub const MAX_CUSTOMERS: usize = 100;

pub async fn bulk_async(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let max = st.opts.max_body_bytes;
    if body.len() > max {
        st.stats.bulk_rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"statusCode": 413, "error": "Request Entity Too Large", "message": format!("Payload content length greater than maximum allowed: {max}")})),
        )
            .into_response();
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            st.stats.bulk_rejected.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid JSON",
                &e.to_string(),
                "invalid_payload",
            );
        }
    };
    let mut errors = schema::validate(&schema::bulk_request_schema(), &v, false);
    if st.opts.accept_undocumented {
        // For peers that send what the schema does not name (the original
        // script's `system_metadata`): only type errors refuse a request.
        errors.retain(|e| !e.ends_with("property not in the schema"));
    }
    if !errors.is_empty() {
        st.stats.bulk_rejected.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid payload",
            &errors
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            "invalid_payload",
        );
    }
    let customers = v.as_array().cloned().unwrap_or_default();
    if st.opts.nulls == Nulls::RefusedRequest {
        if let Some(sid) = customers.iter().find(|c| has_null(c)) {
            st.stats.bulk_rejected.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid payload",
                &format!(
                    "customer {}: a field is null, and must be a string",
                    sid["source_id"]
                ),
                "invalid_payload",
            );
        }
    }
    let max_customers = st.opts.max_customers;
    if customers.len() > max_customers {
        st.stats.bulk_rejected.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::BAD_REQUEST,
            "Too many customers",
            &format!("Specify at most {max_customers} customers"),
            "too_many_customers",
        );
    }
    st.stats
        .customers_received
        .fetch_add(customers.len() as u64, Ordering::Relaxed);
    if let Ok(mut r) = st.receipts.lock() {
        for c in &customers {
            let sid = c
                .get("source_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            *r.entry(sid).or_default() += 1;
        }
    }
    let id = super::queue::enqueue(
        &st,
        "CUSTOMERS.BULK_UPDATE",
        Box::new(move |st: &AppState| Ok(process(st, customers))),
    );
    (StatusCode::ACCEPTED, Json(json!({"async_action_id": id}))).into_response()
}

/// Apply a bulk upsert: validate each customer as Voucherify would, merge the
/// valid ones into what the sandbox holds.
pub fn process(st: &AppState, customers: Vec<Value>) -> Value {
    let mut errors = Vec::new();
    let mut done = 0u64;
    let Ok(mut held) = st.customers.lock() else {
        return json!({"done_count": 0, "failed_count": customers.len(), "errors": []});
    };
    for c in customers {
        let sid = c
            .get("source_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let mut problem = None;
        for key in ["birthdate", "birthday"] {
            if let Some(b) = c.get(key).and_then(Value::as_str) {
                if !valid_date(b) {
                    problem = Some((
                        format!("Invalid {key}"),
                        format!("{key} must be a date in format YYYY-MM-DD, got {b:?}"),
                        format!("invalid_customer_{key}"),
                    ));
                }
            }
        }
        if let Some(e) = c.get("email").and_then(Value::as_str) {
            let domain = e.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            if !domain.contains('.') || domain.ends_with(".invalid") {
                problem = Some((
                    "Invalid email".into(),
                    format!("email {e:?} is not deliverable"),
                    "invalid_customer_email".into(),
                ));
            }
        }
        let new = sid.as_ref().is_none_or(|s| !held.contains_key(s));
        if let Some(why) = c
            .get("metadata")
            .and_then(|m| super::metadata::violation(st, m))
            .or_else(|| super::metadata::missing_required(st, new, c.get("metadata")))
        {
            problem = Some(("Invalid metadata".into(), why, "invalid_metadata".into()));
        }
        if st.opts.nulls == Nulls::RefusedCustomer && has_null(&c) {
            problem = Some((
                "Invalid customer".into(),
                "a field is null, and must be a string".into(),
                "invalid_customer".into(),
            ));
        }
        if let Some((message, details, key)) = problem {
            let sid = if st.opts.misbehave == Some(Misbehave::UnnamedErrors) {
                None
            } else {
                sid
            };
            errors.push(
                json!({"message": message, "details": details, "key": key, "source_id": sid}),
            );
            continue;
        }
        done += 1;
        let Some(sid) = sid else {
            st.stats.without_source_id.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        st.note_applied(&sid, &c.to_string());
        let c = if st.opts.nulls == Nulls::Ignored {
            without_nulls(&c)
        } else {
            c
        };
        upsert(
            &mut held,
            &sid,
            &c,
            (st.opts.replace_nested, &st.now_stamp()),
        );
    }
    json!({"done_count": done, "failed_count": errors.len(), "errors": errors})
}

/// Whether a customer carries a `null` (a field, or a key of `address` or
/// `metadata`).
fn has_null(c: &Value) -> bool {
    c.as_object().is_some_and(|o| {
        o.values().any(|v| {
            v.is_null()
                || v.as_object()
                    .is_some_and(|inner| inner.values().any(Value::is_null))
        })
    })
}

/// A customer with every `null` left out (the reading that ignores them).
fn without_nulls(c: &Value) -> Value {
    let Some(o) = c.as_object() else {
        return c.clone();
    };
    let kept = o
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v.as_object() {
            Some(inner) => (
                k.clone(),
                Value::Object(
                    inner
                        .iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
            ),
            None => (k.clone(), v.clone()),
        })
        .collect();
    Value::Object(kept)
}

/// Create or update one customer, stamping `created_at` and `updated_at`
/// as Voucherify does.
pub fn upsert(
    held: &mut std::collections::BTreeMap<String, Value>,
    sid: &str,
    c: &Value,
    (replace_nested, now): (bool, &str),
) {
    let entry = held.entry(sid.to_string()).or_insert_with(|| {
        json!({"id": format!("cust_{sid}"), "source_id": sid, "object": "customer", "created_at": now})
    });
    merge(entry, c, replace_nested);
    entry["updated_at"] = json!(now);
}

/// Upsert semantics: given fields replace, absent fields stay ("any
/// parameters not provided in the payload will be left unchanged"), and a
/// field given as `null` is removed (how else a value is cleared is not
/// written). `address` and `metadata` merge key by key, or, with
/// `replace_nested`, replace the held object whole: whether nested objects
/// merge is not written, so the worlds draw both.
fn merge(into: &mut Value, from: &Value, replace_nested: bool) {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
        return;
    };
    for (k, v) in from {
        match (k.as_str(), into.get_mut(k), v) {
            ("address" | "metadata", Some(Value::Object(old)), Value::Object(new))
                if !replace_nested =>
            {
                for (nk, nv) in new {
                    if nv.is_null() {
                        old.remove(nk);
                    } else {
                        old.insert(nk.clone(), nv.clone());
                    }
                }
            }
            (_, _, Value::Null) => {
                into.remove(k);
            }
            ("address" | "metadata", _, Value::Object(new)) => {
                let kept: serde_json::Map<String, Value> = new
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                into.insert(k.clone(), Value::Object(kept));
            }
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
    // An object left empty holds nothing.
    for k in ["address", "metadata"] {
        if into
            .get(k)
            .is_some_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
        {
            into.remove(k);
        }
    }
}

/// `POST /_sandbox/customers/{source_id}`: another writer (the dashboard,
/// Segment's own destination) changes a customer: the body's fields replace
/// the held ones, `address` and `metadata` key by key, and `updated_at`
/// moves. Not part of Voucherify's API; tests use it.
pub async fn another_writer(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(sid): axum::extract::Path<String>,
    Json(body): Json<Value>,
) -> Response {
    match edit(&st, &sid, &body) {
        Some(c) => Json(c).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Another writer's change to customer `sid`; the customer after it, or
/// None when the project does not hold it.
pub fn edit(st: &AppState, sid: &str, body: &Value) -> Option<Value> {
    let mut held = st.customers.lock().ok()?;
    let c = held.get_mut(sid)?;
    if let (Some(c), Some(body)) = (c.as_object_mut(), body.as_object()) {
        for (k, v) in body {
            match (k.as_str(), c.get_mut(k), v) {
                ("address" | "metadata", Some(Value::Object(old)), Value::Object(new)) => {
                    old.extend(new.clone());
                }
                _ => {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c.insert("updated_at".into(), json!(st.now_stamp()));
    }
    Some(c.clone())
}
