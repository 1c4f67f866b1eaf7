//! Voucherify's customer export and CSV import, as documented, read the
//! pessimistic way where the documentation is silent.
//!
//! - The customer export is `super::exports`'.
//! - `POST /v1/customers/importCSV` takes the multipart field `file`: a CSV
//!   whose headers are matched to the standard fields case-insensitively;
//!   any other column becomes a metadata key, as text. The job runs on the
//!   same one-at-a-time queue as bulk upserts (`CUSTOMERS.IMPORT_CSV`).
//!   An existing customer is **fully overwritten** (standard attributes and
//!   metadata: what the row does not give is gone). Silent in the docs, so
//!   pessimistic: an empty standard cell leaves the field unset, and an empty
//!   metadata cell is stored as `""` (undefined metadata "is stored as
//!   unknown metadata and treated as a string"). A header with a space fails
//!   the whole file ("No spaces allowed in field names"); `Id` and the
//!   template's `City`, `State`, `Country`, `Postal_Code` are never metadata. A row without `Source_id`,
//!   or with an invalid email or birthdate, fails alone, reported as
//!   `{source_id, row, reason}` with rows counted from 1 after the header.
//!   Over the body limit: 413.

use super::checks::{error, valid_date};
use super::queue::{enqueue, Work};
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A parsed import file.
pub struct ImportCsv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Header names (compared case-insensitively) and the field each fills.
/// Besides the standard columns: `Id` is Voucherify's own customer id, and
/// the dashboard template's `City`, `State`, `Country`, `Postal_Code` are
/// address fields: such a column is never metadata.
const STANDARD: [(&str, &str); 17] = [
    ("id", "id"),
    ("city", "city"),
    ("state", "state"),
    ("country", "country"),
    ("postal_code", "postal_code"),
    ("source_id", "source_id"),
    ("name", "name"),
    ("email", "email"),
    ("phone", "phone"),
    ("birthdate", "birthdate"),
    ("description", "description"),
    ("address_line_1", "line_1"),
    ("address_line_2", "line_2"),
    ("address_city", "city"),
    ("address_state", "state"),
    ("address_postal_code", "postal_code"),
    ("address_country", "country"),
];

/// `GET /v1/customers?limit=N`: the first customers the project holds
/// (`{object: "list", data_ref: "customers", customers, total}`).
pub async fn list_customers(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let Ok(held) = st.customers.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let first: Vec<Value> = held.values().take(limit).cloned().collect();
    Json(
        json!({"object": "list", "data_ref": "customers", "customers": first, "total": held.len()}),
    )
    .into_response()
}

pub async fn import_csv(State(st): State<Arc<AppState>>, mut form: Multipart) -> Response {
    let max = st.opts.max_body_bytes;
    let mut file: Option<Bytes> = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_string();
                let Ok(bytes) = field.bytes().await else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "Invalid payload",
                        "unreadable multipart field",
                        "invalid_payload",
                    );
                };
                if bytes.len() > max {
                    st.stats.bulk_rejected.fetch_add(1, Ordering::Relaxed);
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Json(json!({"statusCode": 413, "error": "Request Entity Too Large", "message": format!("Payload content length greater than maximum allowed: {max}")})),
                    )
                        .into_response();
                }
                if name == "file" {
                    file = Some(bytes);
                }
            }
            Ok(None) => break,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid payload",
                    &format!("not a multipart form: {e}"),
                    "invalid_payload",
                )
            }
        }
    }
    let Some(file) = file else {
        return error(
            StatusCode::BAD_REQUEST,
            "Missing file",
            "the multipart field `file` is required",
            "missing_file",
        );
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file.as_ref());
    let header: Vec<String> = match rdr.headers() {
        Ok(h) => h
            .iter()
            .map(|s| s.trim_start_matches('\u{feff}').to_string())
            .collect(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid CSV",
                &e.to_string(),
                "invalid_csv",
            )
        }
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for rec in rdr.records() {
        match rec {
            Ok(r) => rows.push(r.iter().map(str::to_string).collect()),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid CSV",
                    &e.to_string(),
                    "invalid_csv",
                )
            }
        }
    }
    st.stats
        .customers_received
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    if let Some(col) = header
        .iter()
        .position(|h| h.eq_ignore_ascii_case("source_id"))
    {
        if let Ok(mut r) = st.receipts.lock() {
            for row in &rows {
                *r.entry(row.get(col).cloned().unwrap_or_default())
                    .or_default() += 1;
            }
        }
    }
    let csv = ImportCsv { header, rows };
    let work: Work = Box::new(move |st: &AppState| run(st, csv));
    let id = enqueue(&st, "CUSTOMERS.IMPORT_CSV", work);
    (StatusCode::ACCEPTED, Json(json!({"async_action_id": id}))).into_response()
}

/// An import's turn in the queue: a whole-file failure (the world's
/// reading, or a header with a space), else the file applied.
fn run(st: &AppState, csv: ImportCsv) -> Result<Value, Value> {
    let failed =
        |why: String| json!({"message": why, "done_count": 0, "failed_count": 0, "failed": []});
    if st.opts.import_fails_whole && !st.healed() {
        return Err(failed(
            "Import failed: the file could not be processed".into(),
        ));
    }
    if let Some(why) = refused(&csv) {
        return Err(failed(why));
    }
    Ok(process(st, csv))
}

/// Why a whole file is refused, if it is: "No spaces allowed in field names".
pub fn refused(csv: &ImportCsv) -> Option<String> {
    csv.header
        .iter()
        .find(|h| h.chars().any(char::is_whitespace))
        .map(|h| format!("Import failed: invalid header {h:?}: no spaces allowed in field names"))
}

/// Apply an import file to what the project holds.
pub fn process(st: &AppState, csv: ImportCsv) -> Value {
    let columns: Vec<Option<&str>> = csv
        .header
        .iter()
        .map(|h| {
            STANDARD
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(h))
                .map(|(_, f)| *f)
        })
        .collect();
    let Ok(mut held) = st.customers.lock() else {
        return json!({"message": "internal error", "done_count": 0, "failed_count": csv.rows.len(), "failed": []});
    };
    let mut failed = Vec::new();
    let mut done = 0u64;
    for (i, row) in csv.rows.iter().enumerate() {
        let row_no = i + 1;
        let cell = |field: &str| -> Option<&str> {
            columns
                .iter()
                .position(|c| *c == Some(field))
                .and_then(|p| row.get(p))
                .map(String::as_str)
        };
        let sid = cell("source_id").unwrap_or("").to_string();
        let problem = if sid.is_empty() {
            Some("source_id is required".to_string())
        } else if cell("email")
            .is_some_and(|e| !e.is_empty() && (!e.contains('@') || e.ends_with(".invalid")))
        {
            Some(format!(
                "email {:?} is not valid",
                cell("email").unwrap_or("")
            ))
        } else if cell("birthdate").is_some_and(|b| !b.is_empty() && !valid_date(b)) {
            Some(format!(
                "birthdate {:?} is not a date (YYYY-MM-DD)",
                cell("birthdate").unwrap_or("")
            ))
        } else {
            None
        };
        let problem = problem.or_else(|| {
            let new = !held.contains_key(&sid);
            let meta: Map<String, Value> = csv
                .header
                .iter()
                .zip(&columns)
                .zip(row)
                .filter(|((_, c), _)| c.is_none())
                .map(|((h, _), v)| (h.clone(), json!(v)))
                .collect();
            super::metadata::missing_required(st, new, Some(&Value::Object(meta)))
        });
        if let Some(reason) = problem {
            failed.push(json!({"source_id": if sid.is_empty() { Value::Null } else { json!(sid) }, "row": row_no, "reason": reason}));
            continue;
        }
        done += 1;
        st.note_applied(&sid, &row.join("\u{1f}"));
        let now = st.now_stamp();
        let c = held.entry(sid.clone()).or_insert_with(|| {
            json!({"id": format!("cust_{sid}"), "source_id": sid, "object": "customer", "created_at": now})
        });
        c["updated_at"] = json!(now);
        let Some(obj) = c.as_object_mut() else {
            continue;
        };
        // "fully overwritten": an existing customer keeps nothing of its
        // standard attributes and metadata but what the row gives.
        for (_, f) in STANDARD {
            if !matches!(f, "id" | "source_id") {
                obj.remove(f);
            }
        }
        obj.remove("address");
        obj.remove("metadata");
        for (p, (h, col)) in csv.header.iter().zip(&columns).enumerate() {
            let v = row.get(p).map(String::as_str).unwrap_or("");
            match col {
                Some("source_id" | "id") => {}
                Some(f @ ("line_1" | "line_2" | "city" | "state" | "postal_code" | "country")) => {
                    let addr = obj.entry("address").or_insert_with(|| json!({}));
                    if let Some(a) = addr.as_object_mut() {
                        set_or_clear(a, f, v);
                    }
                }
                Some(f) => set_or_clear(obj, f, v),
                None => {
                    // Metadata the schema does not define "is stored as
                    // unknown metadata and treated as a string": an empty
                    // cell is stored as "" (the pessimistic reading).
                    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
                    if let Some(m) = meta.as_object_mut() {
                        m.insert(h.clone(), json!(v));
                    }
                }
            }
        }
        for k in ["address", "metadata"] {
            if obj
                .get(k)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                obj.remove(k);
            }
        }
    }
    json!({
        "message": format!("{done} customers imported"),
        "done_count": done,
        "failed_count": failed.len(),
        "failed": failed,
    })
}

/// The pessimistic reading: an empty cell clears what the customer had.
fn set_or_clear(m: &mut Map<String, Value>, k: &str, v: &str) {
    if v.is_empty() {
        m.remove(k);
    } else {
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
}
