//! Rate limits as the vendors document them. Segment: a token bucket of
//! `--segment-rps` requests a second per space, 429 `rate_limit_error` with
//! `Retry-After`. Voucherify: a fixed window of `--voucherify-rpm` requests,
//! every answer carrying `X-Rate-Limit-Limit`, `-Remaining` and `-Retry`
//! (epoch second of the reset), and a 429 with `Retry-After` past it.

use super::{epoch_now, AppState, SandboxOptions};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Limits {
    segment: Option<DefaultDirectRateLimiter>,
    /// Window start (monotonic), window end (epoch seconds, rounded up), requests in it.
    voucherify: Mutex<(Instant, u64, u32)>,
    /// Calls made in the monthly cycle.
    cycle_used: std::sync::atomic::AtomicU64,
    /// The bulk-call bucket: window start, window end (epoch s), calls in it.
    bulk: Mutex<(Instant, u64, u32)>,
}

/// Epoch second of the first day of next month (UTC): when a cycle resets.
fn next_month_epoch() -> u64 {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let first = now.date().first_of_month();
    first
        .checked_add(jiff::Span::new().months(1))
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_second() as u64)
        .unwrap_or(u64::MAX)
}

/// A 429 with Voucherify's documented headers for quota `kind`.
fn quota_429(kind: &str, limit: u64, reset_epoch: u64, message: &str) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"code": 429, "message": message, "key": "too_many_requests"})),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        "x-rate-limit-type",
        HeaderValue::from_str(kind).unwrap_or(HeaderValue::from_static("api_calls")),
    );
    h.insert("x-rate-limit-limit", HeaderValue::from(limit));
    h.insert("x-rate-limit-remaining", HeaderValue::from(0));
    h.insert("x-rate-limit-retry", HeaderValue::from(reset_epoch));
    h.insert(
        "retry-after",
        HeaderValue::from(reset_epoch.saturating_sub(epoch_now()).max(1)),
    );
    resp
}

/// Where a Voucherify request stands in its window, for the answer's headers.
pub struct Window {
    limit: u32,
    remaining: u32,
    reset_epoch: u64,
}

impl Window {
    pub fn add_headers(&self, h: &mut HeaderMap) {
        h.insert("x-rate-limit-limit", HeaderValue::from(self.limit));
        h.insert("x-rate-limit-remaining", HeaderValue::from(self.remaining));
        h.insert("x-rate-limit-retry", HeaderValue::from(self.reset_epoch));
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

impl Limits {
    pub fn new(opts: &SandboxOptions) -> Limits {
        Limits {
            segment: NonZeroU32::new(opts.segment_rps)
                .map(|rps| RateLimiter::direct(Quota::per_second(rps))),
            voucherify: Mutex::new((Instant::now(), window_end(opts.voucherify_window), 0)),
            cycle_used: std::sync::atomic::AtomicU64::new(0),
            bulk: Mutex::new((Instant::now(), window_end(opts.bulk_window), 0)),
        }
    }

    pub fn reset_quotas(&self) {
        self.cycle_used.store(0, Ordering::Relaxed);
        if let Ok(mut w) = self.bulk.lock() {
            w.2 = 0;
        }
    }

    /// The monthly cycle and the hourly bulk bucket. Err: the 429 to answer.
    #[allow(clippy::result_large_err)]
    pub fn voucherify_quotas(&self, st: &AppState, bulk: bool) -> Result<(), Response> {
        if st.healed() {
            return Ok(());
        }
        if let Some(quota) = st.opts.cycle_quota {
            if self.cycle_used.fetch_add(1, Ordering::Relaxed) >= quota {
                if let Ok(mut t) = st.quota_spent_at.lock() {
                    t.get_or_insert_with(Instant::now);
                }
                st.stats
                    .throttled_voucherify
                    .fetch_add(1, Ordering::Relaxed);
                return Err(quota_429(
                    "api_calls_cycle",
                    quota,
                    next_month_epoch(),
                    "You have exceeded the API calls limit of your plan for the current billing cycle.",
                ));
            }
        }
        if let (Some(quota), true) = (st.opts.bulk_quota, bulk) {
            let Ok(mut w) = self.bulk.lock() else {
                return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
            };
            if w.0.elapsed() >= st.opts.bulk_window {
                *w = (Instant::now(), window_end(st.opts.bulk_window), 0);
            }
            if w.2 >= quota {
                st.stats
                    .throttled_voucherify
                    .fetch_add(1, Ordering::Relaxed);
                return Err(quota_429(
                    "bulk_api_calls",
                    quota as u64,
                    w.1,
                    "Too many bulk requests hit the API.",
                ));
            }
            w.2 += 1;
        }
        Ok(())
    }

    /// None: go on. Some: the 429 to answer.
    pub fn segment(&self, st: &AppState) -> Option<Response> {
        let l = self.segment.as_ref()?;
        let not_until = l.check().err()?;
        st.stats.throttled_segment.fetch_add(1, Ordering::Relaxed);
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut resp = super::segment::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate limit exceeded: 100 requests per second per space",
        );
        let secs = format!("{:.3}", wait.as_secs_f64().max(0.001));
        if let Ok(v) = HeaderValue::from_str(&secs) {
            resp.headers_mut().insert("retry-after", v);
        }
        Some(resp)
    }

    /// Ok(window to report) or Err(the 429 to answer).
    #[allow(clippy::result_large_err)]
    pub fn voucherify(&self, st: &AppState) -> Result<Option<Window>, Response> {
        let rpm = st.opts.voucherify_rpm;
        if rpm == 0 {
            return Ok(None);
        }
        let (remaining, reset_epoch, allowed) = {
            let Ok(mut w) = self.voucherify.lock() else {
                return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
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
        let window = Window {
            limit: rpm,
            remaining,
            reset_epoch,
        };
        if allowed {
            return Ok(Some(window));
        }
        st.stats
            .throttled_voucherify
            .fetch_add(1, Ordering::Relaxed);
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"code": 429, "message": "Too many requests hit the API too quickly."})),
        )
            .into_response();
        let retry = reset_epoch.saturating_sub(epoch_now()).max(1);
        window.add_headers(resp.headers_mut());
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(retry));
        Err(resp)
    }
}
