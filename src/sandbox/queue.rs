//! Voucherify's documented queue of async actions: "the request is put
//! into a queue and processed once every other bulk request placed in the
//! queue prior to this request is finished". One worker, one job at a time,
//! in submission order, each taking `--processing-ms`, always `ENQUEUED`
//! first; `GET /v1/async-actions/{id}` reads the actions. A job is the work
//! its endpoint hands in (a bulk upsert, an import), so this room imports
//! neither of them.

use super::{AppState, Misbehave};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An async action the project holds.
pub struct Action {
    /// `CUSTOMERS.BULK_UPDATE` or `CUSTOMERS.IMPORT_CSV`.
    kind: &'static str,
    created: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
    /// When a client read the action (`GET /v1/async-actions/{id}`): the
    /// bench's measure of how soon a client sees a job finish.
    looks: Vec<Instant>,
    created_at: String,
    /// When the status last changed (the vendor's example: `updated_at` is
    /// the finish time of a DONE action, `processing_time` the time from
    /// creation to it, queue wait included).
    updated_at: String,
    status: &'static str,
    result: Option<Value>,
}

/// What a job does when its turn comes: Ok(result) ends it DONE, Err(result)
/// FAILED as a whole.
pub type Work = Box<dyn FnOnce(&AppState) -> Result<Value, Value> + Send>;

/// A job waiting in the project's queue.
pub struct Job {
    id: String,
    created: Instant,
    work: Work,
    first: bool,
}

/// Run the project's jobs one at a time, in submission order.
pub fn start(st: Arc<AppState>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>) {
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
            match (job.work)(&st) {
                Ok(result) => set_status(&st, &job.id, "DONE", Some(result)),
                Err(result) => set_status(&st, &job.id, "FAILED", Some(result)),
            }
        }
    });
}

/// Now by Voucherify's clock, as its actions show it.
fn now_text(st: &AppState) -> String {
    st.now_stamp()
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
        let now = now_text(st);
        a.insert(
            id.clone(),
            Action {
                kind,
                created: Instant::now(),
                started: None,
                finished: None,
                looks: Vec::new(),
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
            action.updated_at = now_text(st);
            if status == "IN_PROGRESS" {
                action.started = Some(Instant::now());
            }
            if status == "DONE" || status == "FAILED" {
                action.finished = Some(Instant::now());
            }
            if result.is_some() {
                action.result = result;
            }
        }
    }
}

pub async fn get(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(mut actions) = st.actions.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(a) = actions.get_mut(&id) else {
        return super::checks::error(
            StatusCode::NOT_FOUND,
            "Resource not found",
            &format!("Cannot find async_action with id {id}"),
            "not_found",
        );
    };
    a.looks.push(Instant::now());
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
        // The OpenAPI description's enum is SUCCESS, FAILED and UNKNOWN: a
        // batch with any refused customer finishes DONE, operation FAILED,
        // and names each refusal in `errors`.
        body["operation_status"] = json!(if a.status == "FAILED" || failed > 0 {
            "FAILED"
        } else {
            "SUCCESS"
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

/// `GET /_sandbox/actions` (the bench's, not Voucherify's): every action in
/// creation order, with when it was created, started and finished, and when
/// a client read it, in ms from the first action's creation.
pub async fn timeline(State(st): State<Arc<AppState>>) -> Response {
    let Ok(actions) = st.actions.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut all: Vec<(&String, &Action)> = actions.iter().collect();
    all.sort_by_key(|(_, a)| a.created);
    let Some(epoch) = all.first().map(|(_, a)| a.created) else {
        return Json(json!({"actions": []})).into_response();
    };
    let ms = |t: Instant| t.duration_since(epoch).as_secs_f64() * 1000.0;
    let list: Vec<Value> = (all.iter())
        .map(|(id, a)| {
            json!({
                "id": id,
                "type": a.kind,
                "status": a.status,
                "created_ms": ms(a.created),
                "started_ms": a.started.map(ms),
                "finished_ms": a.finished.map(ms),
                "looks_ms": a.looks.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"actions": list})).into_response()
}
