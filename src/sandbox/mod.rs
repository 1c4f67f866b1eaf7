//! `segsync sandbox`: a local emulator of the Segment Profile API and the
//! Voucherify customers API on one loopback port, written from the vendors'
//! documentation (docs/DESIGN.md, "The sandbox"), never from segsync's
//! clients: it imports nothing of them.
//!
//! Rooms: [`segment`] and [`voucherify`] serve each vendor's endpoints,
//! [`limits`] enforces their rate limits with the documented headers,
//! [`faults`] injects latency, errors and cut connections, and [`admin`]
//! exposes what the sandbox holds (`/_sandbox/*`) with its [`admin::Stats`].
//! `data` is the deterministic synthetic space, `schema` the vendor's JSON
//! schema of the bulk request.

pub mod activity;
pub mod admin;
pub mod checks;
pub mod data;
pub mod exports;
pub mod faults;
pub mod hostile;
pub mod imports;
pub mod limits;
pub mod metadata;
pub mod profiles_sync;
pub mod queue;
pub mod schema;
pub mod segment;
pub mod voucherify;
pub mod world;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use data::Dataset;
use rand::Rng;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
    /// Time an export takes to be DONE (None: `processing_ms`).
    pub export_ms: Option<u64>,
    /// Length of Voucherify's rate-limit window (a minute; shorter in tests).
    pub voucherify_window: Duration,
    /// Largest request body Voucherify accepts (10 MB; smaller in tests).
    pub max_body_bytes: usize,
    /// Customers one bulk request may carry (100; smaller in tests).
    pub max_customers: usize,
    /// Answer absent async-action fields with explicit nulls (`errors: null`,
    /// `result: null` while queued), as the OpenAPI description allows.
    pub null_fields: bool,
    /// API calls left in the monthly cycle before 429 `api_calls_cycle`.
    pub cycle_quota: Option<u64>,
    /// Bulk calls allowed per `bulk_window` before 429 `bulk_api_calls`.
    pub bulk_quota: Option<u32>,
    /// Length of the bulk-call bucket (an hour; shorter in tests).
    pub bulk_window: Duration,
    /// Profiles a second that get activity (moved to the head of the
    /// activity-sorted listing, `updated_at` bumped).
    pub churn: u32,
    /// Share of anonymous profiles (no `user_id`), 0–100.
    pub anonymous_percent: u64,
    /// Every trait of the type Voucherify's schema gives its field, as the
    /// original script expects (`--plain-traits`).
    pub plain_traits: bool,
    /// The project's customer metadata schema: `{"properties": {...},
    /// "allow_defined_only": bool}` (None: the project defines none).
    pub metadata_schema: Option<Value>,
    /// Break the API contract in one way, to test the client's defences.
    pub misbehave: Option<Misbehave>,
    /// A latency distribution around `latency_ms` (None: exactly `latency_ms`).
    pub latency: Option<Latency>,
    /// Exports end `DONE` with `result: null`: no file (both are nullable).
    pub export_without_file: bool,
    /// CSV imports end `FAILED` as a whole, with `operation_status` and a message.
    pub import_fails_whole: bool,
    /// How the customer export's file is laid out (the docs show no sample).
    pub export_shape: exports::Shape,
    /// Whether a bulk upsert's `address` and `metadata` replace the held
    /// objects whole (true) or merge into them key by key (false): the docs
    /// do not say, so worlds draw both readings.
    pub replace_nested: bool,
    /// Accept bulk-request properties Voucherify's published schema does
    /// not name (by default refused, which holds segsync's own requests to
    /// the schema; the original script sends `system_metadata`).
    pub accept_undocumented: bool,
    /// How far Voucherify's clock, as its async actions' `created_at` and
    /// `updated_at` show it, runs ahead of this machine's (negative:
    /// behind), in ms. Nothing says a vendor's clock agrees with a client's.
    pub action_clock_ms: i64,
    /// Of two profiles that share a `user_id`, the one that wins (updated
    /// more recently) answers its lookups last, so a client writes the
    /// losing profile first (the order a careless early sender trips on).
    pub winners_last: bool,
    /// An export that holds no customer ends `DONE` with `result: null`:
    /// no file (both are nullable; an empty file is not promised either).
    pub empty_export_without_file: bool,
    /// Every Nth profile's email is at an `.invalid` domain, which the
    /// bulk upsert refuses for that customer (0: none).
    pub undeliverable_every: u64,
    /// The profile listing (an undocumented route: Segment removed it from
    /// its docs as "not a production grade API endpoint") answers 404.
    pub refuse_listing: bool,
    /// Lookups by the undocumented `segment_id:` prefix answer 404; the
    /// bare id (the docs' own cursor URLs) and external ids still answer.
    pub refuse_prefixed: bool,
    /// This share of the listed profiles (percent) answer 404 on every
    /// lookup: deleted after the listing saw them.
    pub gone_percent: u8,
    /// Break the contract as a hostile server or proxy would, one case.
    pub hostile: Option<hostile::Hostile>,
    /// What a `null` in a bulk upsert does (the docs do not say).
    pub nulls: Nulls,
    /// How an export's filters are read (the docs do not say).
    pub filters: Filters,
}

/// What a `null` in a customer upsert does. Voucherify's hand-written spec
/// types the standard fields as non-nullable strings; only the generated
/// one makes everything nullable: nothing says a null clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Nulls {
    /// The field (or key) is removed.
    #[default]
    Applied,
    /// Left as it is, the rest of the request applied.
    Ignored,
    /// The customer is refused, named in the batch's `errors`.
    RefusedCustomer,
    /// The whole request is refused, 400.
    RefusedRequest,
}

/// How an export's `filters` are read. Every example in the docs uses
/// `junction: "and"`, and `$after` is typed `format: date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Filters {
    /// As sent: `junction` honoured, times to the millisecond.
    #[default]
    AsSent,
    /// `junction` ignored: conditions are always joined by `and`.
    AlwaysAnd,
    /// Times cut to their day: `$after D` passes only a later day.
    CutToDay,
}

/// How long answers take: `median_ms`, spread by ±`jitter` (a share of the
/// median), and a `tail_share` of answers `tail_factor` times slower.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub median_ms: u64,
    pub jitter: f64,
    pub tail_share: f64,
    pub tail_factor: u32,
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
    /// The first bulk async action ends FAILED, having applied nothing.
    FailFirstAction,
}

/// Voucherify's documented request limit.
pub const MAX_BODY: usize = 10 * 1024 * 1024;

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
            export_ms: None,
            voucherify_window: Duration::from_secs(60),
            max_body_bytes: MAX_BODY,
            max_customers: voucherify::MAX_CUSTOMERS,
            null_fields: false,
            cycle_quota: None,
            bulk_quota: None,
            bulk_window: Duration::from_secs(3600),
            churn: 0,
            anonymous_percent: 0,
            plain_traits: false,
            metadata_schema: None,
            misbehave: None,
            latency: None,
            export_without_file: false,
            export_shape: exports::Shape::Readable,
            import_fails_whole: false,
            replace_nested: false,
            accept_undocumented: false,
            action_clock_ms: 0,
            winners_last: false,
            empty_export_without_file: false,
            undeliverable_every: 0,
            refuse_listing: false,
            refuse_prefixed: false,
            gone_percent: 0,
            hostile: None,
            nulls: Nulls::Applied,
            filters: Filters::AsSent,
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

/// Everything the handlers share.
pub struct AppState {
    pub opts: SandboxOptions,
    pub creds: Credentials,
    pub data: Dataset,
    /// How often each profile changed since start.
    pub versions: RwLock<HashMap<u64, u32>>,
    /// The customer metadata schema (changeable at run time by tests).
    pub metadata_schema: RwLock<Option<Value>>,
    /// The listing's activity order.
    pub order: RwLock<activity::ActivityOrder>,
    /// Profiles deleted after listing (404 on the detail endpoints).
    pub vanished: RwLock<HashSet<u64>>,
    /// The customers Voucherify holds, by `source_id`.
    pub customers: Mutex<BTreeMap<String, Value>>,
    /// How often each `source_id` arrived in a bulk request.
    pub receipts: Mutex<HashMap<String, u64>>,
    pub actions: Mutex<HashMap<String, queue::Action>>,
    pub exports: Mutex<HashMap<String, exports::Export>>,
    pub stats: admin::Stats,
    pub faults: faults::Faults,
    pub limits: limits::Limits,
    /// Request and action id sequence.
    pub seq: AtomicU64,
    /// Profiles with a `user_id`, counted once when first asked.
    pub identified: std::sync::OnceLock<u64>,
    /// How often the hostile case played.
    pub hostile_hits: AtomicU64,
    /// The other host the hostile redirects point at, and what it saw.
    pub evil: hostile::Evil,
    /// Profiles by external id (`type:id`), built at the first lookup by one.
    pub by_external_id: std::sync::OnceLock<HashMap<String, Vec<u64>>>,
    /// The project's bulk job queue.
    pub jobs: tokio::sync::mpsc::UnboundedSender<queue::Job>,
    /// Faults off, quotas refilled, churn stopped, the kind readings again
    /// ([`Sandbox::heal`]).
    pub healed: std::sync::atomic::AtomicBool,
    /// When the monthly quota first answered 429.
    pub quota_spent_at: Mutex<Option<std::time::Instant>>,
    /// Each customer content applied (a hash of source_id and content), and
    /// how often: a content applied twice was sent again after it was done.
    pub applied: Mutex<HashMap<u64, u32>>,
}

impl AppState {
    /// Now by Voucherify's clock (`--action-clock-ms` ahead of this
    /// machine's, or behind): its async actions, its customers'
    /// `created_at` and `updated_at`, and its exports alike. RFC 3339 in UTC
    /// with milliseconds.
    pub fn now_stamp(&self) -> String {
        let now = jiff::Timestamp::now();
        let skewed = now
            .checked_add(jiff::SignedDuration::from_millis(self.opts.action_clock_ms))
            .unwrap_or(now);
        skewed.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    pub fn healed(&self) -> bool {
        self.healed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count one application of `content` to customer `sid`.
    pub fn note_applied(&self, sid: &str, content: &str) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (sid, content).hash(&mut h);
        if let Ok(mut a) = self.applied.lock() {
            *a.entry(h.finish()).or_default() += 1;
        }
    }
}

/// Seconds since the epoch, by the sandbox's own clock.
pub fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        let (jobs, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(AppState {
            jobs,
            identified: std::sync::OnceLock::new(),
            by_external_id: std::sync::OnceLock::new(),
            hostile_hits: AtomicU64::new(0),
            evil: hostile::Evil::default(),
            data: Dataset {
                seed: opts.seed,
                n: opts.profiles,
                anonymous_percent: opts.anonymous_percent,
                plain_traits: opts.plain_traits,
                undeliverable_every: opts.undeliverable_every,
            },
            creds: creds.clone(),
            versions: RwLock::default(),
            order: RwLock::default(),
            metadata_schema: RwLock::new(opts.metadata_schema.clone()),
            vanished: RwLock::default(),
            customers: Mutex::default(),
            receipts: Mutex::default(),
            actions: Mutex::default(),
            exports: Mutex::default(),
            stats: admin::Stats::default(),
            faults: faults::Faults::new(&opts),
            limits: limits::Limits::new(&opts),
            seq: AtomicU64::new(0),
            healed: Default::default(),
            quota_spent_at: Mutex::default(),
            applied: Mutex::default(),
            opts,
        });
        queue::start(state.clone(), jobs_rx);
        admin::start_churn(state.clone());
        if state.opts.hostile.is_some() {
            hostile::start_evil(state.clone()).await?;
        }
        let base = "/v1/spaces/{space}/collections/users/profiles";
        let app = Router::new()
            .route(base, get(segment::list_profiles))
            .route(&format!("{base}/{{id}}/traits"), get(segment::traits))
            .route(
                &format!("{base}/{{id}}/external_ids"),
                get(segment::external_ids),
            )
            .route("/v1/customers/bulk/async", post(voucherify::bulk_async))
            .route("/v1/async-actions/{id}", get(queue::get))
            .route("/v1/metadata-schemas", get(metadata::list))
            .route("/v1/exports", post(exports::create_export))
            .route("/v1/exports/{id}", get(exports::get_export))
            .route("/v1/customers/importCSV", post(imports::import_csv))
            .route("/v1/customers", get(imports::list_customers))
            .route("/_sandbox/downloads/{id}", get(exports::download))
            .route("/_sandbox/customers", get(admin::customers))
            .route(
                "/_sandbox/customers/{source_id}",
                post(voucherify::another_writer),
            )
            .route("/_sandbox/stats", get(admin::stats))
            .route("/_sandbox/actions", get(queue::timeline))
            .route("/_sandbox/touch", post(admin::touch))
            .route("/_sandbox/vanish", post(admin::vanish))
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .layer(DefaultBodyLimit::max(4 * MAX_BODY))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", state.opts.port)).await?;
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
        admin::touch_profiles(&self.state, count)
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

    /// Another writer (the dashboard, another integration) changes customer
    /// `sid`: `patch`'s fields replace the held ones, `updated_at` moves.
    pub fn another_writer(&self, sid: &str, patch: &Value) -> Option<Value> {
        voucherify::edit(&self.state, sid, patch)
    }

    /// Put customers in the project as if an earlier migration had (tests).
    pub fn seed_customers(&self, customers: impl IntoIterator<Item = Value>) {
        if let Ok(mut held) = self.state.customers.lock() {
            for c in customers {
                if let Some(sid) = c.get("source_id").and_then(Value::as_str) {
                    // Created by another writer and never updated: a
                    // `created_at`, and (the pessimistic reading of a
                    // nullable field) no `updated_at`.
                    let mut c = c.clone();
                    if c.get("created_at").is_none() {
                        c["created_at"] = Value::String(self.state.now_stamp());
                    }
                    held.insert(sid.to_string(), c);
                }
            }
        }
    }

    /// Replace the project's customer metadata schema.
    pub fn set_metadata_schema(&self, schema: Option<Value>) {
        if let Ok(mut s) = self.state.metadata_schema.write() {
            *s = schema;
        }
    }

    /// A new billing cycle and a fresh bulk bucket (tests of quota stops).
    pub fn reset_quotas(&self) {
        self.state.limits.reset_quotas();
    }

    /// End the world's trouble: faults and quotas off, churn stopped, exports
    /// with files and imports that work (latency and rate limits stay).
    pub fn heal(&self) {
        self.state
            .healed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.state.limits.reset_quotas();
    }

    /// When the monthly quota first answered 429, if it did.
    pub fn quota_spent_at(&self) -> Option<std::time::Instant> {
        self.state.quota_spent_at.lock().ok().and_then(|t| *t)
    }

    /// Customer contents applied more than once (each extra time counts).
    pub fn repeated_applications(&self) -> u64 {
        self.state
            .applied
            .lock()
            .map(|a| a.values().map(|&n| u64::from(n.saturating_sub(1))).sum())
            .unwrap_or(0)
    }

    /// Every request the other host of the hostile redirects received.
    pub fn evil_seen(&self) -> Vec<Value> {
        self.state
            .evil
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Value {
        self.state.stats.to_json(&self.state)
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
pub enum Api {
    Segment,
    Voucherify,
}

/// Everything every API request goes through, in the order a real edge
/// would apply it: counting, latency and faults, authentication, rate limits.
async fn gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let api = if path.starts_with("/v1/spaces/") {
        Api::Segment
    } else if path.starts_with("/v1/") {
        Api::Voucherify
    } else {
        return next.run(req).await;
    };
    let _inflight = st.stats.enter(req.uri());
    if let Some(resp) = st.faults.inject(&st, api).await {
        return resp;
    }
    match api {
        Api::Segment => {
            if !segment::authorized(&st, req.headers()) {
                return segment::unauthorized();
            }
            if let Some(resp) = hostile::intercept(&st, &req) {
                return segment::with_request_id(&st, resp);
            }
            if let Some(resp) = st.limits.segment(&st) {
                return resp;
            }
            if let Some(resp) = segment::misbehave(&st) {
                return resp;
            }
            segment::with_request_id(&st, next.run(req).await)
        }
        Api::Voucherify => {
            if !checks::authorized(&st, req.headers()) {
                return checks::unauthorized();
            }
            if let Some(resp) = hostile::intercept(&st, &req) {
                return resp;
            }
            let bulk =
                path.starts_with("/v1/customers/bulk") && req.method() == axum::http::Method::POST;
            if let Err(resp) = st.limits.voucherify_quotas(&st, bulk) {
                return resp;
            }
            let window = match st.limits.voucherify(&st) {
                Ok(w) => w,
                Err(resp) => return resp,
            };
            let mut resp = next.run(req).await;
            if let Some(w) = window {
                w.add_headers(resp.headers_mut());
            }
            resp
        }
    }
}
