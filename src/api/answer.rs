//! What an answer is and how it is read, shared by the HTTP layer and the
//! retry loop: the raw answer, the servers' hint headers (`Retry-After`,
//! `X-Rate-Limit-Retry`), the clock they are read against, and the counters
//! both keep.

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A response the layer accepted: a 2xx status and its whole body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl RawResponse {
    pub fn request_id(&self) -> Option<String> {
        header_str(&self.headers, "request-id")
            .or_else(|| header_str(&self.headers, "x-request-id"))
            .map(str::to_string)
    }
}

/// An epoch second as RFC 3339, for messages.
pub fn epoch_text(epoch: u64) -> String {
    jiff::Timestamp::from_second(epoch as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("epoch {epoch}"))
}

/// `Retry-After` in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = header_str(headers, "retry-after")?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Voucherify's `X-Rate-Limit-Retry`: the epoch second when the budget refills.
pub fn rate_limit_reset(headers: &HeaderMap, now_epoch: u64) -> Option<Duration> {
    let at: u64 = header_str(headers, "x-rate-limit-retry")?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(at.saturating_sub(now_epoch)))
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Counters for progress lines and summaries.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    /// Answers received (any status), and the time they took in all, from
    /// the request leaving (after the rate limiter) to the answer's end.
    pub answers: AtomicU64,
    pub answer_micros: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub transport_errors: AtomicU64,
}

impl HttpStats {
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} retries ({} answered 429, {} 5xx, {} connection errors)",
            self.get(&self.requests),
            self.get(&self.retries),
            self.get(&self.throttled),
            self.get(&self.server_errors),
            self.get(&self.transport_errors)
        )
    }
}

pub fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
