//! Voucherify's customers API as documented: `POST /v1/customers/bulk/async`
//! (a JSON array validated against the vendor's schema, 413 over the body
//! limit, 202 with an `async_action_id`), `GET /v1/async-actions/{id}` with
//! its ENQUEUED → IN_PROGRESS → DONE lifecycle and per-customer errors, and
//! upsert by `source_id` that merges what a request gives into what the
//! project holds. Auth by `X-App-Id` and `X-App-Token`.

use super::{schema, AppState, Misbehave};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Customers one bulk request may carry (a Voucherify maintainer, in
/// voucherify-java-sdk PR #113; the seed's README: "a maximum of 100 records").
pub const MAX_CUSTOMERS: usize = 100;

/// An async action the project holds.
pub struct Action {
    /// `CUSTOMERS.BULK_UPDATE` or `CUSTOMERS.IMPORT_CSV`.
    kind: &'static str,
    created: Instant,
    finished: Option<Instant>,
    created_at: String,
    /// When the status last changed (the vendor's example: `updated_at` is
    /// the finish time of a DONE action, `processing_time` the time from
    /// creation to it, queue wait included).
    updated_at: String,
    status: &'static str,
    result: Option<Value>,
}

/// A bulk job waiting in the project's queue.
pub struct Job {
    id: String,
    created: Instant,
    work: Work,
    first: bool,
}

/// What a queued job does.
pub enum Work {
    /// A bulk upsert of these customers.
    Bulk(Vec<Value>),
    /// A CSV import: its header and rows.
    Import(super::imports::ImportCsv),
}

/// Voucherify's documented queue: "the request is put into a queue and
/// processed once every other bulk request placed in the queue prior to this
/// request is finished". One worker, one job at a time, in submission order,
/// each taking `--processing-ms`.
pub fn start_queue(st: Arc<AppState>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>) {
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            // A job is picked up from the queue a moment after it arrives:
            // a client always sees it ENQUEUED first.
            let pickup = job.created + Duration::from_millis(st.opts.processing_ms / 4);
            tokio::time::sleep_until(pickup.into()).await;
            set_status(&st, &job.id, "IN_PROGRESS", None);
            if st.opts.misbehave == Some(Misbehave::StuckAction) {
                // The job never finishes, and the queue behind it never moves.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(st.opts.processing_ms)).await;
            if st.opts.misbehave == Some(Misbehave::FailFirstAction) && job.first {
                set_status(&st, &job.id, "FAILED", None);
                continue;
            }
            let result = match job.work {
                Work::Bulk(customers) => process(&st, customers),
                Work::Import(csv) => super::imports::process(&st, csv),
            };
            set_status(&st, &job.id, "DONE", Some(result));
        }
    });
}

/// Now as RFC 3339 with milliseconds.
fn now_text() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

pub fn error(status: StatusCode, message: &str, details: &str, key: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message, "details": details, "key": key})),
    )
        .into_response()
}

pub fn authorized(st: &AppState, h: &HeaderMap) -> bool {
    let id_ok = h.get("x-app-id").and_then(|v| v.to_str().ok()) == Some(st.creds.app_id.as_str());
    let token_ok =
        h.get("x-app-token").and_then(|v| v.to_str().ok()) == Some(st.creds.secret_key.as_str());
    id_ok && token_ok
}

pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "invalid X-App-Id or X-App-Token",
        "unauthorized",
    )
}

/// Voucherify's date format for `birthdate`: `YYYY-MM-DD` naming a real day.
/// The sandbox's own check, deliberately not segsync's.
pub fn valid_date(s: &str) -> bool {
    s.len() == 10
        && jiff::fmt::strtime::parse("%Y-%m-%d", s)
            .and_then(|t| t.to_date())
            .is_ok_and(|d| d.year() >= 1)
}

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
    let errors = schema::validate(&schema::bulk_request_schema(), &v, false);
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
    let id = enqueue(&st, "CUSTOMERS.BULK_UPDATE", Work::Bulk(customers));
    (StatusCode::ACCEPTED, Json(json!({"async_action_id": id}))).into_response()
}

/// Put a job in the project's queue as a new async action; returns its id.
pub fn enqueue(st: &AppState, kind: &'static str, work: Work) -> String {
    let seq = st.seq.fetch_add(1, Ordering::Relaxed);
    let first = st.stats.bulk_accepted.fetch_add(1, Ordering::Relaxed) == 0;
    let id = format!(
        "aa_{:014x}{:04x}",
        rand::thread_rng().gen::<u64>() >> 8,
        seq & 0xffff
    );
    if let Ok(mut a) = st.actions.lock() {
        let now = now_text();
        a.insert(
            id.clone(),
            Action {
                kind,
                created: Instant::now(),
                finished: None,
                created_at: now.clone(),
                updated_at: now,
                status: "ENQUEUED",
                result: None,
            },
        );
    }
    let _ = st.jobs.send(Job {
        id: id.clone(),
        created: Instant::now(),
        work,
        first,
    });
    id
}

fn set_status(st: &AppState, id: &str, status: &'static str, result: Option<Value>) {
    if let Ok(mut a) = st.actions.lock() {
        if let Some(action) = a.get_mut(id) {
            action.status = status;
            action.updated_at = now_text();
            if status == "DONE" || status == "FAILED" {
                action.finished = Some(Instant::now());
            }
            if result.is_some() {
                action.result = result;
            }
        }
    }
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
        if let Some(why) = c
            .get("metadata")
            .and_then(|m| super::metadata::violation(st, m))
        {
            problem = Some(("Invalid metadata".into(), why, "invalid_metadata".into()));
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
        let entry = held.entry(sid.clone()).or_insert_with(
            || json!({"id": format!("cust_{}", sid), "source_id": sid, "object": "customer"}),
        );
        merge(entry, &c);
    }
    json!({"done_count": done, "failed_count": errors.len(), "errors": errors})
}

/// Upsert semantics: given fields replace, absent fields stay; `address` and
/// `metadata` merge key by key.
fn merge(into: &mut Value, from: &Value) {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
        return;
    };
    for (k, v) in from {
        match (k.as_str(), into.get_mut(k), v) {
            ("address" | "metadata", Some(Value::Object(old)), Value::Object(new)) => {
                for (nk, nv) in new {
                    old.insert(nk.clone(), nv.clone());
                }
            }
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

pub async fn async_action(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(actions) = st.actions.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(a) = actions.get(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "Resource not found",
            &format!("Cannot find async_action with id {id}"),
            "not_found",
        );
    };
    let nulls = st.opts.null_fields && a.kind == "CUSTOMERS.BULK_UPDATE";
    let progress = match a.status {
        "DONE" => json!(100),
        "IN_PROGRESS" => json!(50),
        _ if nulls => Value::Null,
        _ => json!(0),
    };
    let mut body = json!({
        "id": id,
        "type": a.kind,
        "status": a.status,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
        "request_id": format!("v-{id}"),
        "progress": progress,
        "processing_time": a.finished.map(|f| f.duration_since(a.created).as_millis() as u64),
        "result": Value::Null,
        "object": "async_action",
    });
    if let Some(r) = &a.result {
        let failed = r["failed_count"].as_u64().unwrap_or(0);
        body["operation_status"] = json!(if failed == 0 {
            "SUCCESS"
        } else {
            "PARTIAL_SUCCESS"
        });
        let mut r = r.clone();
        if nulls && failed == 0 {
            // The OpenAPI description marks these nullable: null means absent.
            r["errors"] = Value::Null;
            r["failed_count"] = Value::Null;
        }
        body["result"] = r;
    } else if !nulls {
        if let Some(o) = body.as_object_mut() {
            o.remove("result");
        }
    }
    Json(body).into_response()
}
