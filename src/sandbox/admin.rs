//! What the sandbox exposes about itself for tests and demos: `/_sandbox/*`
//! (the customers it holds, request counts, touching and deleting profiles)
//! and the [`Stats`] every room counts into.

use super::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of everything the sandbox saw.
#[derive(Default)]
pub struct Stats {
    /// Requests by endpoint name (`segment.traits`, `voucherify.async_action`, …).
    pub requests: Mutex<BTreeMap<String, u64>>,
    pub throttled_segment: AtomicU64,
    pub throttled_voucherify: AtomicU64,
    pub faults_5xx: AtomicU64,
    pub faults_dropped: AtomicU64,
    pub faults_slow: AtomicU64,
    pub inflight: AtomicU64,
    pub peak_inflight: AtomicU64,
    /// Bulk requests refused whole (400, 413).
    pub bulk_rejected: AtomicU64,
    /// Bulk requests accepted (202).
    pub bulk_accepted: AtomicU64,
    pub customers_received: AtomicU64,
    /// Customers in the export files downloaded (every download counted).
    pub export_rows_downloaded: AtomicU64,
    /// Customers accepted without a `source_id` (a careless client's mark).
    pub without_source_id: AtomicU64,
    /// Profiles that got activity (touch, churn).
    pub activity: AtomicU64,
    /// Every Segment detail read asked so far (a 64-bit hash of its path
    /// and query: 8 bytes a read, not the text), and how many reads asked
    /// one again: a retry or a hedge, never a first read.
    pub detail_reads: Mutex<std::collections::HashSet<u64>>,
    pub detail_reads_again: Mutex<BTreeMap<String, u64>>,
    /// Segment requests of the last second (their arrival times), the most
    /// seen in any second, and the first and last arrival: how much of its
    /// budget a client takes, measured where the budget is kept.
    pub segment_pace: Mutex<SegmentPace>,
}

/// Segment's requests over time, as the sandbox saw them arrive.
#[derive(Default)]
pub struct SegmentPace {
    window: std::collections::VecDeque<std::time::Instant>,
    pub most_in_a_second: u64,
    pub first: Option<std::time::Instant>,
    pub last: Option<std::time::Instant>,
    pub count: u64,
}

impl SegmentPace {
    fn arrived(&mut self, now: std::time::Instant) {
        let second = std::time::Duration::from_secs(1);
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= second)
        {
            self.window.pop_front();
        }
        self.window.push_back(now);
        self.most_in_a_second = self.most_in_a_second.max(self.window.len() as u64);
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.count += 1;
    }
}

/// Holds a request's place in the in-flight count until dropped.
pub struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn endpoint_name(path: &str) -> &'static str {
    if path.starts_with("/v1/spaces/") {
        if path.ends_with("/traits") {
            "segment.traits"
        } else if path.ends_with("/external_ids") {
            "segment.external_ids"
        } else {
            "segment.list_profiles"
        }
    } else if path.starts_with("/v1/customers/bulk") {
        "voucherify.customers_bulk_async"
    } else if path == "/v1/customers" {
        "voucherify.customers_list"
    } else if path.starts_with("/v1/customers/importCSV") {
        "voucherify.customers_import_csv"
    } else if path.starts_with("/v1/exports") {
        "voucherify.exports"
    } else if path.starts_with("/v1/async-actions/") {
        "voucherify.async_action"
    } else if path.starts_with("/v1/metadata-schemas") {
        "voucherify.metadata_schemas"
    } else {
        "other"
    }
}

/// A request's path and query, hashed (two reads that collide would count
/// the second as asked again: odds of about n²/2⁶⁵ for n reads).
fn hash_of(uri: &axum::http::Uri) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()))
}

impl Stats {
    /// Count a request outside the API gate (an export download).
    pub fn count(&self, endpoint: &str) {
        if let Ok(mut c) = self.requests.lock() {
            *c.entry(endpoint.to_string()).or_default() += 1;
        }
    }

    /// Count an API request (`uri`: its path and query) and hold its
    /// in-flight place.
    pub fn enter(&self, uri: &axum::http::Uri) -> InFlight<'_> {
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_inflight.fetch_max(now, Ordering::SeqCst);
        let endpoint = endpoint_name(uri.path());
        if let Ok(mut c) = self.requests.lock() {
            *c.entry(endpoint.to_string()).or_default() += 1;
        }
        if endpoint.starts_with("segment.") {
            if let Ok(mut p) = self.segment_pace.lock() {
                p.arrived(std::time::Instant::now());
            }
        }
        if matches!(endpoint, "segment.traits" | "segment.external_ids") {
            let first = self
                .detail_reads
                .lock()
                .is_ok_and(|mut seen| seen.insert(hash_of(uri)));
            if !first {
                if let Ok(mut c) = self.detail_reads_again.lock() {
                    *c.entry(endpoint.to_string()).or_default() += 1;
                }
            }
        }
        InFlight(self)
    }

    pub fn to_json(&self, st: &AppState) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = self.requests.lock().map(|c| c.clone()).unwrap_or_default();
        let mut again = self
            .detail_reads_again
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        for e in ["segment.traits", "segment.external_ids"] {
            again.entry(e.to_string()).or_default();
        }
        let pace = self.segment_pace.lock().map(|p| {
            let span = match (p.first, p.last) {
                (Some(a), Some(b)) => b.duration_since(a).as_millis() as u64,
                _ => 0,
            };
            json!({"requests": p.count, "span_ms": span, "most_in_a_second": p.most_in_a_second})
        });
        json!({
            "segment_pace": pace.unwrap_or(Value::Null),
            "requests": requests,
            "throttled": {"segment": get(&self.throttled_segment), "voucherify": get(&self.throttled_voucherify)},
            "faults": {"server_errors": get(&self.faults_5xx), "dropped_connections": get(&self.faults_dropped), "slow": get(&self.faults_slow)},
            "peak_concurrent_requests": get(&self.peak_inflight),
            "customers": st.customers.lock().map(|c| c.len()).unwrap_or(0),
            "customers_without_source_id": get(&self.without_source_id),
            "customers_received": get(&self.customers_received),
            "export_rows_downloaded": get(&self.export_rows_downloaded),
            "bulk_requests_rejected": get(&self.bulk_rejected),
            "async_actions_accepted": get(&self.bulk_accepted),
            "profiles": st.data.n,
            "activity": get(&self.activity),
            "segment_reads_again": again,
            "identified_profiles": *st.identified.get_or_init(|| st.data.identified()),
        })
    }
}

pub async fn customers(State(st): State<Arc<AppState>>) -> Response {
    let customers: Vec<Value> = st
        .customers
        .lock()
        .map(|c| c.values().cloned().collect())
        .unwrap_or_default();
    let receipts = st.receipts.lock().map(|r| r.clone()).unwrap_or_default();
    Json(json!({
        "count": customers.len(),
        "without_source_id": st.stats.without_source_id.load(Ordering::Relaxed),
        "customers": customers,
        "receipts": receipts,
    }))
    .into_response()
}

pub async fn stats(State(st): State<Arc<AppState>>) -> Response {
    Json(st.stats.to_json(&st)).into_response()
}

/// Profile `index` gets activity: a new version (new `updated_at`, new
/// description) and the head of the listing.
pub fn activity(st: &AppState, index: u64) {
    if let Ok(mut v) = st.versions.write() {
        *v.entry(index).or_default() += 1;
    }
    if let Ok(mut o) = st.order.write() {
        o.touch(index);
    }
    st.stats.activity.fetch_add(1, Ordering::Relaxed);
}

/// Change `count` profiles spread over the space.
pub fn touch_profiles(st: &AppState, count: u64) -> Vec<String> {
    let n = st.data.n;
    if n == 0 || count == 0 {
        return vec![];
    }
    let count = count.min(n);
    let step = n / count;
    (0..count)
        .map(|k| {
            let i = (k * step + step / 2).min(n - 1);
            activity(st, i);
            st.data.segment_id(i)
        })
        .collect()
}

/// `--churn N`: N random profiles a second get activity, in ticks of 50 ms.
pub fn start_churn(st: Arc<AppState>) {
    let per_sec = st.opts.churn;
    if per_sec == 0 || st.data.n == 0 {
        return;
    }
    tokio::spawn(async move {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(st.opts.seed ^ 0xC4_u64);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        let mut owed = 0f64;
        loop {
            tick.tick().await;
            if st.healed() {
                return;
            }
            owed += per_sec as f64 / 20.0;
            while owed >= 1.0 {
                owed -= 1.0;
                activity(&st, rng.gen_range(0..st.data.n));
            }
        }
    });
}

pub async fn touch(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let count = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
    Json(json!({"touched": touch_profiles(&st, count)})).into_response()
}

pub async fn vanish(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(index) = q.get("segment_id").and_then(|s| st.data.index_of(s)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Ok(mut v) = st.vanished.write() {
        v.insert(index);
    }
    Json(json!({"vanished": index})).into_response()
}
