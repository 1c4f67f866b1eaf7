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

/// A wait no server hint is honoured past as a number: a `Retry-After` of
/// `inf` or `1e20` reads as this, and every command's longest wait is far
/// shorter, so it stops (never sleeps or panics).
pub const BEYOND: Duration = Duration::from_secs(u64::MAX / 4);

/// `Retry-After`: seconds (a decimal; `inf` and numbers past any wait read
/// as [`BEYOND`]) or an HTTP-date (RFC 9110: the wait until then). None when
/// absent or unreadable (NaN, negative, text): the client's own backoff
/// applies.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_nan() || secs < 0.0 {
            return None;
        }
        return Some(Duration::try_from_secs_f64(secs).map_or(BEYOND, |d| d.min(BEYOND)));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    let ms = at.as_millisecond() - jiff::Timestamp::now().as_millisecond();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// Voucherify's `X-Rate-Limit-Retry`: the epoch second when the budget
/// refills (the wait until then; far ahead reads as far as it is).
pub fn rate_limit_reset(headers: &HeaderMap, now_epoch: u64) -> Option<Duration> {
    let at: u64 = header_str(headers, "x-rate-limit-retry")?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(at.saturating_sub(now_epoch)).min(BEYOND))
}

/// The server's wait hint as it was given, for a message: the header and
/// its value.
pub fn hint_text(headers: &HeaderMap) -> String {
    ["retry-after", "x-rate-limit-retry"]
        .iter()
        .find_map(|h| header_str(headers, h).map(|v| format!("{h}: {}", v.trim())))
        .unwrap_or_else(|| "no wait header".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    /// Every spelling a server or a proxy in front of it may send, read
    /// without a panic: seconds, fractions, `inf` and huge numbers (past any
    /// wait), NaN and negatives (unreadable), an HTTP-date.
    #[test]
    fn retry_after_reads_every_form_without_a_panic() {
        let ra = |v: &str| retry_after(&with("retry-after", v));
        assert_eq!(ra("3"), Some(Duration::from_secs(3)));
        assert_eq!(ra("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(ra("inf"), Some(BEYOND));
        assert_eq!(ra("+Infinity"), Some(BEYOND));
        assert_eq!(ra("1e20"), Some(BEYOND));
        assert_eq!(ra("NaN"), None);
        assert_eq!(ra("-5"), None);
        assert_eq!(ra("soon"), None);
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        let d = ra(&date).expect("an HTTP-date reads");
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(ra("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let far = rate_limit_reset(&with("x-rate-limit-retry", &u64::MAX.to_string()), 0);
        assert_eq!(far, Some(BEYOND));
    }
}
