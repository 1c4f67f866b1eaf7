//! Voucherify's customer export, as documented (`POST /v1/exports`, the
//! "CSV export with API" guide), read the pessimistic way where it is silent.
//!
//! - `POST /v1/exports` `{exported_object: "customer", parameters: {fields}}`
//!   schedules an export; without `fields` the documented default is `name`,
//!   `source_id`. A field the docs do not list for customers is a 400.
//! - `GET /v1/exports/{id}` says `SCHEDULED`, then `DONE` with `result.url`;
//!   both `result` and `url` are nullable (a world may leave them out).
//! - The file is downloaded "together with authentication headers": the
//!   application keys and the URL's own token. It is a snapshot made when
//!   the export was created.
//! - "These fields define the headers in the CSV file", and the headers are
//!   human-readable: the sandbox writes `Source ID`, `Address City`,
//!   `Updated At`. `metadata` becomes one column per key the customer
//!   metadata schema defines ("all metadata fields defined in Metadata Schema
//!   for the Customer object"), headed `metadata.KEY` as the docs write the
//!   order metadata; keys the schema does not define are not exported.
//!   The docs show no file, so a world may draw another layout ([`Shape`]):
//!   the field names as headers in reverse order with a BOM and CRLF, or
//!   `metadata` as one column of JSON.
//! - Values: text as held, numbers and booleans as JSON writes them, arrays
//!   and objects as compact JSON (the docs give no format: a client must not
//!   trust them), dates and times in UTC as held. An absent value is an
//!   empty cell.

use super::checks::error;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An export the project made: its file, rendered when it was created.
pub struct Export {
    created: Instant,
    /// Voucherify's `created_at` of the export.
    created_at: String,
    token: String,
    file: Bytes,
    /// Customers in the file.
    rows: usize,
}

/// One condition of an export's filters: a field (`created_at`,
/// `updated_at`), `$after` or `$before`, and a time.
type Cond = (String, bool, jiff::Timestamp);

/// `parameters.filters`: `created_at` and `updated_at` with `$after` and
/// `$before` conditions (each a timestamp, or an array of one, as the docs'
/// examples write filter values), joined by `junction` `and` (the default)
/// or `or`. Anything else under `filters` is refused: the sandbox would
/// otherwise export more than asked without a word.
fn parse_filters(filters: &Value) -> Result<(bool, Vec<Cond>), String> {
    let Some(f) = filters.as_object() else {
        return if filters.is_null() {
            Ok((false, vec![]))
        } else {
            Err("filters must be an object".into())
        };
    };
    let mut or = false;
    let mut out = Vec::new();
    for (k, v) in f {
        match k.as_str() {
            "junction" => match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("and") => {}
                Some("or") => or = true,
                _ => return Err("junction is \"and\" or \"or\"".into()),
            },
            "created_at" | "updated_at" => {
                let Some(c) = v.get("conditions").and_then(Value::as_object) else {
                    return Err(format!("filters.{k} needs conditions"));
                };
                for (op, val) in c {
                    let t = match val {
                        Value::String(s) => s.as_str(),
                        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                            a[0].as_str().unwrap_or_default()
                        }
                        _ => return Err(format!("filters.{k}.conditions.{op}: a timestamp")),
                    };
                    let Ok(t) = t.parse::<jiff::Timestamp>() else {
                        return Err(format!(
                            "filters.{k}.conditions.{op}: {t:?} is no timestamp"
                        ));
                    };
                    let after = match op.as_str() {
                        "$after" => true,
                        "$before" => false,
                        _ => {
                            return Err(format!(
                                "the sandbox filters {k} by $after and $before, not {op}"
                            ))
                        }
                    };
                    out.push((k.clone(), after, t));
                }
            }
            other => {
                return Err(format!(
                    "the sandbox does not filter customer exports by {other}"
                ))
            }
        }
    }
    Ok((or, out))
}

/// Whether a customer passes the filters, as `reading` reads them. A
/// customer without the field (an `updated_at` that is null: never
/// updated) passes no condition on it.
fn passes(c: &Value, (or, conds): &(bool, Vec<Cond>), reading: super::Filters) -> bool {
    if conds.is_empty() {
        return true;
    }
    let day = |t: jiff::Timestamp| t.as_second().div_euclid(86_400);
    let one = |(field, after, t): &Cond| {
        let v = c
            .get(field)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<jiff::Timestamp>().ok());
        v.is_some_and(|v| match (reading, *after) {
            // `format: date`: only the day counts, and the same day is
            // neither after nor before it.
            (super::Filters::CutToDay, true) => day(v) > day(*t),
            (super::Filters::CutToDay, false) => day(v) < day(*t),
            (_, true) => v > *t,
            (_, false) => v < *t,
        })
    };
    let or = *or && reading != super::Filters::AlwaysAnd;
    if or {
        conds.iter().any(one)
    } else {
        conds.iter().all(one)
    }
}

/// How an export's file is laid out. The docs name the fields and say the
/// headers are human-readable, but show no file; a world draws one of the
/// readings a careful client must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `Source ID`, `Address City`, `metadata.KEY`; LF; the requested order.
    #[default]
    Readable,
    /// The field names themselves (`source_id`, `address_city`,
    /// `metadata_KEY`), columns in reverse order, a UTF-8 BOM, CRLF.
    FieldNames,
    /// Readable headers, but `metadata` as one `Metadata` column of compact
    /// JSON: no key can be read by name.
    MetadataJson,
}

/// The customer fields the export documents, and their headers.
const FIELDS: [(&str, &str); 17] = [
    ("id", "ID"),
    ("source_id", "Source ID"),
    ("name", "Name"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("birthdate", "Birthdate"),
    ("birthday", "Birthday"),
    ("description", "Description"),
    ("address_line_1", "Address Line 1"),
    ("address_line_2", "Address Line 2"),
    ("address_city", "Address City"),
    ("address_state", "Address State"),
    ("address_postal_code", "Address Postal Code"),
    ("address_country", "Address Country"),
    ("created_at", "Created At"),
    ("updated_at", "Updated At"),
    ("metadata", ""),
];

/// Fields the docs list for customers that the sandbox does not track:
/// accepted, exported empty.
const UNTRACKED: [&str; 14] = [
    "redemptions_total_redeemed",
    "redemptions_total_failed",
    "redemptions_total_succeeded",
    "redemptions_total_rolled_back",
    "redemptions_total_rollback_failed",
    "redemptions_total_rollback_succeeded",
    "orders_total_amount",
    "orders_total_count",
    "orders_average_amount",
    "orders_last_order_amount",
    "orders_last_order_date",
    "loyalty_points",
    "loyalty_referred_customers",
    "system_metadata",
];

pub async fn create_export(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if v["exported_object"] != "customer" {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid export",
            "exported_object must be one of the exportable objects; the sandbox exports \"customer\"",
            "invalid_export",
        );
    }
    let fields: Vec<String> = match v["parameters"]["fields"].as_array() {
        Some(f) if !f.is_empty() => f
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec!["name".into(), "source_id".into()],
    };
    if let Some(bad) = fields
        .iter()
        .find(|f| !FIELDS.iter().any(|(n, _)| n == f) && !UNTRACKED.contains(&f.as_str()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid export",
            &format!("Unsupported field used: {bad}"),
            "invalid_export",
        );
    }
    st.stats.count("voucherify.exports_created");
    let window = match parse_filters(&v["parameters"]["filters"]) {
        Ok(w) => w,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid export",
                &why,
                "invalid_export",
            )
        }
    };
    let id = format!("exp_{:016x}", rand::thread_rng().gen::<u64>());
    let created_at = st.now_stamp();
    let (file, rows) = render(&st, &fields, &window);
    if let Ok(mut e) = st.exports.lock() {
        e.insert(
            id.clone(),
            Export {
                created: Instant::now(),
                created_at: created_at.clone(),
                token: format!("{:024x}", rand::thread_rng().gen::<u128>()),
                file,
                rows,
            },
        );
    }
    Json(
        json!({"id": id, "object": "export", "created_at": created_at, "status": "SCHEDULED",
        "exported_object": "customer", "parameters": {"fields": fields, "filters": v["parameters"]["filters"]},
        "result": null}),
    )
    .into_response()
}

/// The CSV of the customers held now that pass the filters, with the
/// requested fields, and how many customers it holds.
fn render(st: &AppState, fields: &[String], filters: &(bool, Vec<Cond>)) -> (Bytes, usize) {
    let inside = |c: &Value| passes(c, filters, st.opts.filters);
    let defined: Vec<String> = st
        .metadata_schema
        .read()
        .ok()
        .and_then(|s| s.clone())
        .and_then(|s| s.get("properties").and_then(Value::as_object).cloned())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let shape = st.opts.export_shape;
    let mut columns: Vec<(String, String)> = Vec::new();
    for f in fields {
        match (f.as_str(), shape) {
            ("metadata", Shape::MetadataJson) => {
                columns.push(("Metadata".into(), "metadata".into()))
            }
            ("metadata", Shape::FieldNames) => columns.extend(
                defined
                    .iter()
                    .map(|k| (format!("metadata_{k}"), format!("m:{k}"))),
            ),
            ("metadata", Shape::Readable) => columns.extend(
                defined
                    .iter()
                    .map(|k| (format!("metadata.{k}"), format!("m:{k}"))),
            ),
            (_, Shape::FieldNames) => columns.push((f.clone(), f.clone())),
            _ => {
                let header = FIELDS
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, h)| h.to_string())
                    .unwrap_or_else(|| f.clone());
                columns.push((header, f.clone()));
            }
        }
    }
    let mut out = Vec::new();
    if shape == Shape::FieldNames {
        columns.reverse();
        out.extend_from_slice("\u{feff}".as_bytes());
    }
    let terminator = match shape {
        Shape::FieldNames => csv::Terminator::CRLF,
        _ => csv::Terminator::Any(b'\n'),
    };
    let mut w = csv::WriterBuilder::new()
        .terminator(terminator)
        .from_writer(out);
    let _ = w.write_record(columns.iter().map(|(h, _)| h));
    let mut rows = 0;
    if let Ok(held) = st.customers.lock() {
        for c in held.values().filter(|c| inside(c)) {
            let _ = w.write_record(columns.iter().map(|(_, f)| cell(c, f)));
            rows += 1;
        }
    }
    (w.into_inner().unwrap_or_default().into(), rows)
}

fn cell(c: &Value, field: &str) -> String {
    let v = if let Some(key) = field.strip_prefix("m:") {
        c.get("metadata").and_then(|m| m.get(key))
    } else if let Some(part) = field.strip_prefix("address_") {
        c.get("address").and_then(|a| a.get(part))
    } else {
        c.get(field)
    };
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub async fn get_export(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Ok(exports) = st.exports.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(e) = exports.get(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "Resource not found",
            &format!("Cannot find export with id {id}"),
            "not_found",
        );
    };
    let takes = st.opts.export_ms.unwrap_or(st.opts.processing_ms);
    let done = e.created.elapsed() >= Duration::from_millis(takes);
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    // A reading of the vendor's (not a fault): it stays after healing.
    let empty = st.opts.empty_export_without_file && e.rows == 0;
    let file = (!st.opts.export_without_file || st.healed()) && !empty;
    let result = if done && file {
        json!({"url": format!("http://{host}/_sandbox/downloads/{id}?token={}", e.token)})
    } else {
        // Both `result` and `result.url` are nullable: a DONE export may
        // come without a file.
        Value::Null
    };
    Json(
        json!({"id": id, "object": "export", "created_at": e.created_at,
        "status": if done { "DONE" } else { "SCHEDULED" },
        "exported_object": "customer", "result": result}),
    )
    .into_response()
}

/// The export's file, downloaded "together with authentication headers"
/// (the export guide): the application keys are required, as well as the
/// URL's own token.
pub async fn download(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Response {
    st.stats.count("voucherify.export_download");
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    if let Some(r) = super::hostile::download(&st, &format!("/_sandbox/downloads/{id}"), &query) {
        return r;
    }
    if !super::checks::authorized(&st, &headers) {
        return super::checks::unauthorized();
    }
    let Ok(exports) = st.exports.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match exports.get(&id) {
        Some(e) if q.get("token") == Some(&e.token) => {
            (st.stats.export_rows_downloaded)
                .fetch_add(e.rows as u64, std::sync::atomic::Ordering::Relaxed);
            ([("content-type", "text/csv")], e.file.clone()).into_response()
        }
        Some(_) => StatusCode::FORBIDDEN.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
