//! `segsync sandbox`: a local emulator of the Segment Profile API and the
//! Voucherify bulk-customers API on one loopback port, faithful to DESIGN.md:
//! authentication, cursor paging with the documented limits, the documented
//! error bodies, rate limits with their headers, 413 over 10 MB, async actions
//! with a lifecycle, and upsert by `source_id` that merges fields. Flags inject
//! latency and faults. `/_sandbox/*` exposes what it holds for tests and demos.

pub mod data;
pub mod schema;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use data::Dataset;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How the sandbox behaves. `segment_rps`/`voucherify_rpm` of 0 mean unlimited.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub port: u16,
    pub profiles: u64,
    pub seed: u64,
    pub latency_ms: u64,
    pub fault_rate: f64,
    pub segment_rps: u32,
    pub voucherify_rpm: u32,
    pub processing_ms: u64,
    /// Length of Voucherify's rate-limit window (a minute; shorter in tests).
    pub voucherify_window: Duration,
    /// Break the API contract in one way, to test the client's defences.
    pub misbehave: Option<Misbehave>,
}

/// Ways the sandbox can break the API contract on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Misbehave {
    /// Segment answers 200 with an HTML body.
    NonJson,
    /// The profile listing has no `cursor` object.
    NoCursor,
    /// The listing never ends (has_more stays true past the last page) and
    /// traits always point back at the same cursor.
    EndlessCursor,
    /// Every listing page after the first repeats the first.
    RepeatPage,
    /// Async actions never leave IN_PROGRESS.
    StuckAction,
    /// Per-customer errors in async results do not say which customer failed.
    UnnamedErrors,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            port: 0,
            profiles: 1000,
            seed: 1,
            latency_ms: 0,
            fault_rate: 0.0,
            segment_rps: 100,
            voucherify_rpm: 2000,
            processing_ms: 200,
            voucherify_window: Duration::from_secs(60),
            misbehave: None,
        }
    }
}

/// The credentials the sandbox accepts (made up at start).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub segment_token: String,
    pub space_id: String,
    pub app_id: String,
    pub secret_key: String,
}

const MAX_BODY: usize = 10 * 1024 * 1024;

struct Action {
    created: Instant,
    finished: Option<Instant>,
    created_at: String,
    status: &'static str,
    result: Option<Value>,
}

struct AppState {
    opts: SandboxOptions,
    creds: Credentials,
    data: Dataset,
    versions: RwLock<HashMap<u64, u32>>,
    vanished: RwLock<HashSet<u64>>,
    customers: Mutex<BTreeMap<String, Value>>,
    without_source_id: AtomicU64,
    receipts: Mutex<HashMap<String, u64>>,
    actions: Mutex<HashMap<String, Action>>,
    counts: Mutex<BTreeMap<String, u64>>,
    throttled_segment: AtomicU64,
    throttled_voucherify: AtomicU64,
    faults_5xx: AtomicU64,
    faults_dropped: AtomicU64,
    faults_slow: AtomicU64,
    fault_rng: Mutex<rand::rngs::StdRng>,
    inflight: AtomicU64,
    peak: AtomicU64,
    bulk_rejected: AtomicU64,
    customers_received: AtomicU64,
    seq: AtomicU64,
    seg_limiter: Option<DefaultDirectRateLimiter>,
    /// Window start (monotonic), window end (epoch seconds, rounded up), requests in it.
    vf_window: Mutex<(Instant, u64, u32)>,
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub creds: Credentials,
    state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    /// Bind 127.0.0.1:`opts.port` (0 = any free port) and serve in the background.
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Sandbox> {
        let mut r = rand::thread_rng();
        let mut hex = |n: usize| -> String {
            (0..n)
                .map(|_| format!("{:x}", r.gen_range(0..16)))
                .collect()
        };
        let creds = Credentials {
            segment_token: format!("sbx_seg_{}", hex(24)),
            space_id: format!("spa_sandbox{}", opts.seed),
            app_id: format!("sbx-app-{}", hex(8)),
            secret_key: format!("sbx_key_{}", hex(24)),
        };
        let seg_limiter = NonZeroU32::new(opts.segment_rps)
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        let state = Arc::new(AppState {
            data: Dataset {
                seed: opts.seed,
                n: opts.profiles,
            },
            opts: opts.clone(),
            creds: creds.clone(),
            versions: RwLock::default(),
            vanished: RwLock::default(),
            customers: Mutex::default(),
            without_source_id: AtomicU64::new(0),
            receipts: Mutex::default(),
            actions: Mutex::default(),
            counts: Mutex::default(),
            throttled_segment: AtomicU64::new(0),
            throttled_voucherify: AtomicU64::new(0),
            faults_5xx: AtomicU64::new(0),
            faults_dropped: AtomicU64::new(0),
            faults_slow: AtomicU64::new(0),
            fault_rng: Mutex::new(rand::SeedableRng::seed_from_u64(opts.seed ^ 0xFA17)),
            inflight: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            bulk_rejected: AtomicU64::new(0),
            customers_received: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            seg_limiter,
            vf_window: Mutex::new((Instant::now(), window_end(opts.voucherify_window), 0)),
        });
        let base = "/v1/spaces/{space}/collections/users/profiles";
        let app = Router::new()
            .route(base, get(list_profiles))
            .route(&format!("{base}/{{id}}/traits"), get(traits))
            .route(&format!("{base}/{{id}}/external_ids"), get(external_ids))
            .route("/v1/customers/bulk/async", post(bulk_async))
            .route("/v1/async-actions/{id}", get(async_action))
            .route("/_sandbox/customers", get(sandbox_customers))
            .route("/_sandbox/stats", get(sandbox_stats))
            .route("/_sandbox/touch", post(sandbox_touch))
            .route("/_sandbox/vanish", post(sandbox_vanish))
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .layer(DefaultBodyLimit::max(4 * MAX_BODY))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Sandbox {
            addr,
            creds,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The variables that point segsync at this sandbox.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SEGMENT_API_URL", self.url()),
            ("SEGMENT_ACCESS_TOKEN", self.creds.segment_token.clone()),
            ("SEGMENT_SPACE_ID", self.creds.space_id.clone()),
            ("VOUCHERIFY_API_URL", self.url()),
            ("VOUCHERIFY_APPLICATION_ID", self.creds.app_id.clone()),
            ("VOUCHERIFY_SECRET_KEY", self.creds.secret_key.clone()),
        ]
    }

    pub fn dataset(&self) -> &Dataset {
        &self.state.data
    }

    /// How often each profile was changed since start (for expected outcomes).
    pub fn versions(&self) -> HashMap<u64, u32> {
        self.state
            .versions
            .read()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Change `count` profiles (spread over the space): new `updated_at`, new description.
    pub fn touch(&self, count: u64) -> Vec<String> {
        touch(&self.state, count)
    }

    /// Make a profile disappear from the detail endpoints (it stays listed),
    /// as a profile deleted between listing and fetching.
    pub fn vanish(&self, index: u64) {
        if let Ok(mut v) = self.state.vanished.write() {
            v.insert(index);
        }
    }

    /// How often each `source_id` arrived in a bulk request.
    pub fn receipts(&self) -> HashMap<String, u64> {
        self.state
            .receipts
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The upserted customers, by `source_id`.
    pub fn customers(&self) -> BTreeMap<String, Value> {
        self.state
            .customers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Value {
        stats_json(&self.state)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Segment,
    Voucherify,
}

struct Inflight<'a>(&'a AppState);
impl Drop for Inflight<'_> {
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
    } else if path.starts_with("/v1/async-actions/") {
        "voucherify.async_action"
    } else {
        "other"
    }
}

fn segment_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn voucherify_error(status: StatusCode, message: &str, details: &str, key: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message, "details": details, "key": key})),
    )
        .into_response()
}

/// Everything every API request goes through: counting, latency, faults,
/// authentication and rate limits.
async fn gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let api = if path.starts_with("/v1/spaces/") {
        Api::Segment
    } else if path.starts_with("/v1/") {
        Api::Voucherify
    } else {
        return next.run(req).await;
    };
    let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    st.peak.fetch_max(now, Ordering::SeqCst);
    let _guard = Inflight(&st);
    if let Ok(mut c) = st.counts.lock() {
        *c.entry(endpoint_name(&path).to_string()).or_default() += 1;
    }
    if st.opts.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(st.opts.latency_ms)).await;
    }
    if st.opts.fault_rate > 0.0 {
        // Seeded: the same seed gives the same sequence of fault decisions.
        let (fault, kind) = match st.fault_rng.lock() {
            Ok(mut r) => (
                r.gen_bool(st.opts.fault_rate.clamp(0.0, 1.0)),
                r.gen_range(0..3u8),
            ),
            Err(_) => (false, 0),
        };
        if fault && kind == 2 {
            // A slow answer: late, then normal.
            st.faults_slow.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1500)).await;
        } else if fault {
            if kind == 1 {
                st.faults_dropped.fetch_add(1, Ordering::Relaxed);
                // Headers go out, then the body fails: the connection is cut mid-response.
                let stream = futures::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "sandbox fault",
                    ))
                });
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .header("content-length", "64")
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            }
            st.faults_5xx.fetch_add(1, Ordering::Relaxed);
            return match api {
                Api::Segment => segment_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "injected fault",
                ),
                Api::Voucherify => voucherify_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                    "injected fault",
                    "service_unavailable",
                ),
            };
        }
    }
    match api {
        Api::Segment => {
            if !segment_authorized(&st, req.headers()) {
                return segment_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid or missing access token",
                );
            }
            if let Some(l) = &st.seg_limiter {
                if let Err(not_until) = l.check() {
                    st.throttled_segment.fetch_add(1, Ordering::Relaxed);
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ));
                    let mut resp = segment_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        "rate limit exceeded: 100 requests per second per space",
                    );
                    let secs = format!("{:.3}", wait.as_secs_f64().max(0.001));
                    if let Ok(v) = HeaderValue::from_str(&secs) {
                        resp.headers_mut().insert("retry-after", v);
                    }
                    return resp;
                }
            }
            if st.opts.misbehave == Some(Misbehave::NonJson) {
                return (
                    StatusCode::OK,
                    [("content-type", "text/html")],
                    "<html><body>Service temporarily rerouted</body></html>",
                )
                    .into_response();
            }
            let mut resp = next.run(req).await;
            let id = format!("req_{:x}", st.seq.fetch_add(1, Ordering::Relaxed));
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert("request-id", v);
            }
            resp
        }
        Api::Voucherify => {
            let h = req.headers();
            let id_ok =
                h.get("x-app-id").and_then(|v| v.to_str().ok()) == Some(st.creds.app_id.as_str());
            let token_ok = h.get("x-app-token").and_then(|v| v.to_str().ok())
                == Some(st.creds.secret_key.as_str());
            if !(id_ok && token_ok) {
                return voucherify_error(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "invalid X-App-Id or X-App-Token",
                    "unauthorized",
                );
            }
            let rpm = st.opts.voucherify_rpm;
            let mut window = None;
            if rpm > 0 {
                let (remaining, reset_epoch, allowed) = {
                    let Ok(mut w) = st.vf_window.lock() else {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    };
                    if w.0.elapsed() >= st.opts.voucherify_window {
                        *w = (Instant::now(), window_end(st.opts.voucherify_window), 0);
                    }
                    let allowed = w.2 < rpm;
                    if allowed {
                        w.2 += 1;
                    }
                    (rpm - w.2, w.1, allowed)
                };
                if !allowed {
                    st.throttled_voucherify.fetch_add(1, Ordering::Relaxed);
                    let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(json!({"code": 429, "message": "Too many requests hit the API too quickly."}))).into_response();
                    let retry = reset_epoch.saturating_sub(crate::http::now_epoch()).max(1);
                    add_rate_headers(resp.headers_mut(), rpm, 0, reset_epoch);
                    resp.headers_mut()
                        .insert("retry-after", HeaderValue::from(retry));
                    return resp;
                }
                window = Some((remaining, reset_epoch));
            }
            let mut resp = next.run(req).await;
            if let Some((remaining, reset)) = window {
                add_rate_headers(resp.headers_mut(), rpm, remaining, reset);
            }
            resp
        }
    }
}

/// Epoch second by which a window starting now has ended (rounded up, so a
/// client that waits until then is never early).
fn window_end(window: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + window).as_secs_f64().ceil() as u64
}

fn add_rate_headers(h: &mut HeaderMap, limit: u32, remaining: u32, reset_epoch: u64) {
    h.insert("x-rate-limit-limit", HeaderValue::from(limit));
    h.insert("x-rate-limit-remaining", HeaderValue::from(remaining));
    h.insert("x-rate-limit-retry", HeaderValue::from(reset_epoch));
}

fn segment_authorized(st: &AppState, h: &HeaderMap) -> bool {
    let Some(auth) = h.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b64) = auth.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    raw == format!("{}:", st.creds.segment_token).as_bytes()
}

fn encode_cursor(kind: &str, offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{offset}"))
}

fn decode_cursor(kind: &str, s: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.strip_prefix(kind)?.strip_prefix(':')?.parse().ok()
}

/// Parse `limit` and `next` for a list with maximum page size `max`.
#[allow(clippy::result_large_err)]
fn paging(q: &HashMap<String, String>, kind: &str, max: usize) -> Result<(usize, usize), Response> {
    let limit = match q.get("limit") {
        None => 10,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(segment_error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    &format!("limit must be an integer between 1 and {max}"),
                ))
            }
        },
    };
    let offset = match q.get("next").filter(|s| !s.is_empty()) {
        None => 0,
        Some(c) => match decode_cursor(kind, c) {
            Some(o) => o,
            None => {
                return Err(segment_error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    "invalid cursor",
                ))
            }
        },
    };
    Ok((limit, offset))
}

fn cursor_json(path: &str, kind: &str, limit: usize, end: usize, total: usize) -> Value {
    let has_more = end < total;
    let next = if has_more {
        encode_cursor(kind, end)
    } else {
        String::new()
    };
    let url = if has_more {
        format!("{path}?limit={limit}&next={next}")
    } else {
        String::new()
    };
    json!({"url": url, "has_more": has_more, "next": next})
}

async fn list_profiles(
    State(st): State<Arc<AppState>>,
    Path(space): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if space != st.creds.space_id {
        return segment_error(StatusCode::NOT_FOUND, "not_found", "space not found");
    }
    let (limit, offset) = match paging(&q, "p", 100) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let n = st.data.n as usize;
    let (offset, shown_end) = match st.opts.misbehave {
        Some(Misbehave::RepeatPage) => (0, offset + limit),
        _ => (offset, offset + limit),
    };
    let end = (offset + limit).min(n);
    let versions = st.versions.read().map(|v| v.clone()).unwrap_or_default();
    let data: Vec<Value> = (offset.min(n)..end)
        .map(|i| {
            let i = i as u64;
            json!({"segment_id": st.data.segment_id(i), "metadata": st.data.metadata(i, versions.get(&i).copied().unwrap_or(0))})
        })
        .collect();
    let path = format!("/v1/spaces/{space}/collections/users/profiles");
    match st.opts.misbehave {
        Some(Misbehave::NoCursor) => Json(json!({"data": data})).into_response(),
        Some(Misbehave::EndlessCursor) => Json(
            json!({"data": data, "cursor": cursor_json(&path, "p", limit, shown_end, usize::MAX)}),
        )
        .into_response(),
        Some(Misbehave::RepeatPage) => Json(
            json!({"data": data, "cursor": cursor_json(&path, "p", limit, shown_end.min(n), n)}),
        )
        .into_response(),
        _ => Json(json!({"data": data, "cursor": cursor_json(&path, "p", limit, end, n)}))
            .into_response(),
    }
}

#[allow(clippy::result_large_err)]
fn lookup(st: &AppState, space: &str, id: &str) -> Result<data::GeneratedProfile, Response> {
    if space != st.creds.space_id {
        return Err(segment_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "space not found",
        ));
    }
    let Some(sid) = id.strip_prefix("segment_id:") else {
        return Err(segment_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "profile not found: only segment_id lookups are emulated",
        ));
    };
    let index = st
        .data
        .index_of(sid)
        .filter(|i| !st.vanished.read().map(|v| v.contains(i)).unwrap_or(false));
    let Some(index) = index else {
        return Err(segment_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "profile not found",
        ));
    };
    let version = st
        .versions
        .read()
        .ok()
        .and_then(|v| v.get(&index).copied())
        .unwrap_or(0);
    Ok(st.data.profile(index, version))
}

async fn traits(
    State(st): State<Arc<AppState>>,
    Path((space, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = match lookup(&st, &space, &id) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (limit, offset) = match paging(&q, "t", 200) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let total = p.traits.len();
    let end = (offset + limit).min(total);
    let page: Map<String, Value> = p
        .traits
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .collect();
    let path = format!("/v1/spaces/{space}/collections/users/profiles/{id}/traits");
    if st.opts.misbehave == Some(Misbehave::EndlessCursor) {
        return Json(json!({"traits": page, "cursor": cursor_json(&path, "t", limit, offset.max(1), usize::MAX)})).into_response();
    }
    Json(json!({"traits": page, "cursor": cursor_json(&path, "t", limit, end, total)}))
        .into_response()
}

async fn external_ids(
    State(st): State<Arc<AppState>>,
    Path((space, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = match lookup(&st, &space, &id) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (limit, offset) = match paging(&q, "e", 100) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let total = p.external_ids.len();
    let end = (offset + limit).min(total);
    let page: Vec<Value> = p
        .external_ids
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .collect();
    let path = format!("/v1/spaces/{space}/collections/users/profiles/{id}/external_ids");
    Json(json!({"data": page, "cursor": cursor_json(&path, "e", limit, end, total)}))
        .into_response()
}

async fn bulk_async(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        st.bulk_rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"statusCode": 413, "error": "Request Entity Too Large", "message": format!("Payload content length greater than maximum allowed: {MAX_BODY}")})),
        )
            .into_response();
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            st.bulk_rejected.fetch_add(1, Ordering::Relaxed);
            return voucherify_error(
                StatusCode::BAD_REQUEST,
                "Invalid JSON",
                &e.to_string(),
                "invalid_payload",
            );
        }
    };
    let errors = schema::validate(&schema::bulk_request_schema(), &v, false);
    if !errors.is_empty() {
        st.bulk_rejected.fetch_add(1, Ordering::Relaxed);
        return voucherify_error(
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
    st.customers_received
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
    let id = format!(
        "aa_{:014x}{:04x}",
        rand::thread_rng().gen::<u64>() >> 8,
        st.seq.fetch_add(1, Ordering::Relaxed) & 0xffff
    );
    if let Ok(mut a) = st.actions.lock() {
        a.insert(
            id.clone(),
            Action {
                created: Instant::now(),
                finished: None,
                created_at: data::iso(crate::http::now_epoch() as i64),
                status: "ENQUEUED",
                result: None,
            },
        );
    }
    let st2 = st.clone();
    let id2 = id.clone();
    tokio::spawn(async move {
        let half = Duration::from_millis(st2.opts.processing_ms / 2);
        tokio::time::sleep(half).await;
        set_status(&st2, &id2, "IN_PROGRESS", None);
        if st2.opts.misbehave == Some(Misbehave::StuckAction) {
            return;
        }
        tokio::time::sleep(half).await;
        let result = process(&st2, customers);
        set_status(&st2, &id2, "DONE", Some(result));
    });
    (StatusCode::ACCEPTED, Json(json!({"async_action_id": id}))).into_response()
}

fn set_status(st: &AppState, id: &str, status: &'static str, result: Option<Value>) {
    if let Ok(mut a) = st.actions.lock() {
        if let Some(action) = a.get_mut(id) {
            action.status = status;
            if status == "DONE" {
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
fn process(st: &AppState, customers: Vec<Value>) -> Value {
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
                if !crate::mapping::is_real_date(b) {
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
            st.without_source_id.fetch_add(1, Ordering::Relaxed);
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

async fn async_action(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(actions) = st.actions.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(a) = actions.get(&id) else {
        return voucherify_error(
            StatusCode::NOT_FOUND,
            "Resource not found",
            &format!("Cannot find async_action with id {id}"),
            "not_found",
        );
    };
    let progress = match a.status {
        "DONE" => 100,
        "IN_PROGRESS" => 50,
        _ => 0,
    };
    let mut body = json!({
        "id": id,
        "type": "CUSTOMERS.BULK_UPSERT",
        "status": a.status,
        "created_at": a.created_at,
        "updated_at": data::iso(crate::http::now_epoch() as i64),
        "request_id": format!("v-{id}"),
        "progress": progress,
        "processing_time": a.finished.unwrap_or_else(Instant::now).duration_since(a.created).as_millis() as u64,
        "object": "async_action",
    });
    if let Some(r) = &a.result {
        body["operation_status"] = json!(if r["failed_count"].as_u64() == Some(0) {
            "SUCCESS"
        } else {
            "PARTIAL_SUCCESS"
        });
        body["result"] = r.clone();
    }
    Json(body).into_response()
}

async fn sandbox_customers(State(st): State<Arc<AppState>>) -> Response {
    let customers: Vec<Value> = st
        .customers
        .lock()
        .map(|c| c.values().cloned().collect())
        .unwrap_or_default();
    let receipts = st.receipts.lock().map(|r| r.clone()).unwrap_or_default();
    Json(json!({
        "count": customers.len(),
        "without_source_id": st.without_source_id.load(Ordering::Relaxed),
        "customers": customers,
        "receipts": receipts,
    }))
    .into_response()
}

async fn sandbox_stats(State(st): State<Arc<AppState>>) -> Response {
    Json(stats_json(&st)).into_response()
}

fn stats_json(st: &AppState) -> Value {
    let counts = st.counts.lock().map(|c| c.clone()).unwrap_or_default();
    json!({
        "requests": counts,
        "throttled": {"segment": st.throttled_segment.load(Ordering::Relaxed), "voucherify": st.throttled_voucherify.load(Ordering::Relaxed)},
        "faults": {"server_errors": st.faults_5xx.load(Ordering::Relaxed), "dropped_connections": st.faults_dropped.load(Ordering::Relaxed), "slow": st.faults_slow.load(Ordering::Relaxed)},
        "peak_concurrent_requests": st.peak.load(Ordering::Relaxed),
        "customers": st.customers.lock().map(|c| c.len()).unwrap_or(0),
        "customers_without_source_id": st.without_source_id.load(Ordering::Relaxed),
        "customers_received": st.customers_received.load(Ordering::Relaxed),
        "bulk_requests_rejected": st.bulk_rejected.load(Ordering::Relaxed),
        "profiles": st.data.n,
    })
}

fn touch(st: &AppState, count: u64) -> Vec<String> {
    let n = st.data.n;
    if n == 0 || count == 0 {
        return vec![];
    }
    let count = count.min(n);
    let step = n / count;
    let mut touched = Vec::new();
    if let Ok(mut v) = st.versions.write() {
        for k in 0..count {
            let i = (k * step + step / 2).min(n - 1);
            *v.entry(i).or_default() += 1;
            touched.push(st.data.segment_id(i));
        }
    }
    touched
}

async fn sandbox_touch(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let count = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
    Json(json!({"touched": touch(&st, count)})).into_response()
}

async fn sandbox_vanish(
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
