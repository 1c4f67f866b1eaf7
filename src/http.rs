//! The one HTTP layer both API clients share.
//!
//! It owns the pooled reqwest client, the concurrency bound, the token-bucket
//! rate limiter (governor) and the single retry loop of the project. Each API
//! client describes its service through [`RetryLogic`]: which answers are worth
//! retrying, how to read the server's wait hints, and how to find the API's own
//! error message in a body. [`RetryPolicy`] decides how long to wait between
//! attempts: capped exponential backoff with full jitter, overridden by the
//! server's hint when it gives one.

use crate::config::redact;
use crate::error::ApiError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

pub const USER_AGENT: &str = concat!("segsync/", env!("CARGO_PKG_VERSION"));

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

/// What one attempt produced, before the retry decision.
#[derive(Debug)]
pub enum Attempt {
    Response(RawResponse),
    /// The request never produced a complete response (timeout, refused or
    /// reset connection, truncated body).
    Transport(String),
}

/// How a service's answers are judged. One implementation per API client.
pub trait RetryLogic: Send + Sync {
    /// Name used in messages ("Segment", "Voucherify").
    fn api(&self) -> &'static str;

    /// Whether an error status is worth retrying. 429 and 5xx by default.
    fn is_retriable(&self, status: StatusCode) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
    }

    /// How long the server asks us to wait before retrying this answer.
    fn retry_hint(&self, headers: &HeaderMap, now_epoch: u64) -> Option<Duration> {
        retry_after(headers).or_else(|| rate_limit_reset(headers, now_epoch))
    }

    /// How long to hold *every* request after this (successful) answer, when
    /// the server says the budget is spent. None: go on.
    fn pause_hint(&self, _headers: &HeaderMap, _now_epoch: u64) -> Option<Duration> {
        None
    }

    /// The API's own error message from an error body.
    fn error_message(&self, body: &[u8]) -> Option<String>;

    /// What a 429 means: a short throttle to wait out (the default), or a
    /// quota that may take long to refill.
    fn throttle(&self, _headers: &HeaderMap, _now_epoch: u64) -> Throttle {
        Throttle::Wait
    }
}

/// What a 429 answer asks of the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Throttle {
    /// A per-second or per-minute limit: back off (by the hint) and retry.
    Wait,
    /// A named quota refilling at `resets_epoch`: wait for it when that is
    /// within `RetryPolicy::max_quota_wait`, unless `always_stop`.
    Quota {
        name: String,
        resets_epoch: Option<u64>,
        always_stop: bool,
    },
}

/// Path-segment encoding per RFC 3986: every byte but the unreserved
/// characters `A-Z a-z 0-9 - . _ ~` is percent-encoded (so `+` is `%2B`).
pub const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One path segment, encoded.
pub fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Uniform in [0, ceiling]: spreads a herd of clients (AWS "full jitter").
    Full,
    /// The ceiling itself; for tests that assert exact delays.
    None,
}

/// How long to wait between attempts and how many to make.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Retries for 5xx and transport errors.
    pub max_retries: u32,
    /// Retries for 429 answers, counted apart: a throttled run is slow, not broken.
    pub max_throttled: u32,
    /// Longest server hint honoured as given; longer ones are clipped.
    pub max_hint: Duration,
    /// Longest wait for a named quota to refill ([`Throttle::Quota`]);
    /// beyond it the request fails at once with [`ApiError::Quota`].
    pub max_quota_wait: Duration,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            max_retries: 8,
            max_throttled: 60,
            max_hint: Duration::from_secs(15 * 60),
            max_quota_wait: Duration::from_secs(15 * 60),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): min(cap, base·2^retry), jittered.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        let ceiling = exp.min(self.cap);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => {
                let nanos = ceiling.as_nanos() as u64;
                Duration::from_nanos(if nanos == 0 {
                    0
                } else {
                    rand::Rng::gen_range(&mut rand::thread_rng(), 0..=nanos)
                })
            }
        }
    }
}

/// Counters for progress lines and summaries.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
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

/// Settings of one HTTP layer instance (one per API).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub concurrency: usize,
    /// Requests allowed per `rate_period`; None = unlimited.
    pub rate: Option<u32>,
    pub rate_period: Duration,
    /// Requests that may go at once before the pacing starts.
    pub burst: Option<u32>,
    pub timeout: Duration,
    pub policy: RetryPolicy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            concurrency: 16,
            rate: None,
            rate_period: Duration::from_secs(1),
            burst: None,
            timeout: Duration::from_secs(60),
            policy: RetryPolicy::default(),
        }
    }
}

/// Shared HTTP machinery: pooled client, concurrency bound, rate limiter, retries.
pub struct HttpLayer {
    client: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    concurrency: Semaphore,
    policy: RetryPolicy,
    /// Until when the server told us to send nothing (budget spent).
    paused_until: Mutex<Option<tokio::time::Instant>>,
    pub stats: Arc<HttpStats>,
}

impl HttpLayer {
    pub fn new(settings: HttpSettings) -> anyhow::Result<HttpLayer> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .gzip(true)
            .https_only(false) // http:// is admitted only for loopback by config::api_url
            .connect_timeout(Duration::from_secs(10))
            .timeout(settings.timeout)
            .pool_max_idle_per_host(settings.concurrency.max(1))
            .build()?;
        let limiter = match settings.rate {
            Some(n) if n > 0 => {
                let per = settings.rate_period / n;
                let per = if per.is_zero() {
                    Duration::from_nanos(1)
                } else {
                    per
                };
                let burst = settings.burst.unwrap_or(1).max(1);
                let quota = Quota::with_period(per)
                    .ok_or_else(|| anyhow::anyhow!("invalid rate limit"))?
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                Some(RateLimiter::direct(quota))
            }
            _ => None,
        };
        Ok(HttpLayer {
            client,
            limiter,
            concurrency: Semaphore::new(settings.concurrency.max(1)),
            policy: settings.policy,
            paused_until: Mutex::new(None),
            stats: Arc::new(HttpStats::default()),
        })
    }

    /// Send a request built by `build`, retrying per `logic` and the policy.
    /// Returns the first 2xx answer; any other outcome is an [`ApiError`].
    /// `endpoint` names the call in messages (method and path, no secrets).
    pub async fn send(
        &self,
        endpoint: &str,
        logic: &dyn RetryLogic,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<RawResponse, ApiError> {
        run_with_retries(&self.policy, logic, endpoint, &self.stats, || async {
            self.wait_for_pause().await;
            let _permit = self.concurrency.acquire().await.ok();
            if let Some(l) = &self.limiter {
                l.until_ready().await;
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let attempt = match build(&self.client).send().await {
                Err(e) => Attempt::Transport(describe_transport(&e)),
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) => Attempt::Response(RawResponse {
                            status,
                            headers,
                            body,
                        }),
                        Err(e) => Attempt::Transport(describe_transport(&e)),
                    }
                }
            };
            if let Attempt::Response(r) = &attempt {
                crate::ui::trace(format!(
                    "{} {} -> {} in {:?}",
                    logic.api(),
                    endpoint,
                    r.status.as_u16(),
                    started.elapsed()
                ));
                if let Some(p) = logic.pause_hint(&r.headers, now_epoch()) {
                    self.pause_for(p.min(self.policy.max_hint));
                }
            } else if let Attempt::Transport(e) = &attempt {
                crate::ui::trace(format!("{} {} -> {e}", logic.api(), endpoint));
            }
            attempt
        })
        .await
    }

    fn pause_for(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let until = tokio::time::Instant::now() + d;
        if let Ok(mut p) = self.paused_until.lock() {
            if p.map(|cur| cur < until).unwrap_or(true) {
                *p = Some(until);
            }
        }
    }

    async fn wait_for_pause(&self) {
        let until = self.paused_until.lock().ok().and_then(|p| *p);
        if let Some(until) = until {
            if until > tokio::time::Instant::now() {
                tokio::time::sleep_until(until).await;
            }
        }
    }
}

fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "connection dropped while reading the response"
    } else {
        "request failed"
    };
    // reqwest's text may include the URL. Ours hold no credentials, but an
    // export's download URL carries a token in its query: drop queries.
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    redact(&strip_queries(&format!("{kind} ({detail})")))
}

/// `?…` of every URL in `s` replaced by `?…`.
fn strip_queries(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_query = false;
    for c in s.chars() {
        if in_query {
            if c.is_whitespace() || c == ')' || c == '"' {
                in_query = false;
                out.push(c);
            }
            continue;
        }
        out.push(c);
        if c == '?' {
            out.push('…');
            in_query = true;
        }
    }
    out
}

pub fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The retry loop. Generic over how an attempt is made so it can be tested
/// with a paused clock and scripted answers.
pub async fn run_with_retries<F, Fut>(
    policy: &RetryPolicy,
    logic: &dyn RetryLogic,
    endpoint: &str,
    stats: &HttpStats,
    mut attempt: F,
) -> Result<RawResponse, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut retries = 0u32;
    let mut throttled = 0u32;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = attempt().await;
        let (wait, last) = match outcome {
            Attempt::Response(r) if r.status.is_success() => return Ok(r),
            Attempt::Response(r) => {
                let status = r.status;
                let message = logic
                    .error_message(&r.body)
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
                if !logic.is_retriable(status) {
                    return Err(ApiError::Status {
                        api: logic.api(),
                        endpoint: endpoint.to_string(),
                        status: status.as_u16(),
                        message: redact(&message),
                        request_id: r.request_id(),
                    });
                }
                let last = format!(
                    "HTTP {}: {}{}",
                    status.as_u16(),
                    redact(&message),
                    r.request_id()
                        .map(|id| format!(" (Request-Id {id})"))
                        .unwrap_or_default()
                );
                if status == StatusCode::TOO_MANY_REQUESTS {
                    stats.throttled.fetch_add(1, Ordering::Relaxed);
                    let now = now_epoch();
                    if let Throttle::Quota {
                        name,
                        resets_epoch,
                        always_stop,
                    } = logic.throttle(&r.headers, now)
                    {
                        let wait = resets_epoch
                            .map(|at| Duration::from_secs(at.saturating_sub(now)))
                            .or_else(|| logic.retry_hint(&r.headers, now));
                        match wait {
                            Some(w) if !always_stop && w <= policy.max_quota_wait => {
                                wait_for_quota(logic.api(), &name, w).await;
                                stats.retries.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            _ => {
                                return Err(ApiError::Quota {
                                    api: logic.api(),
                                    endpoint: endpoint.to_string(),
                                    quota: format!("{} ({})", redact(&message), name),
                                    resets_at: resets_epoch.map(epoch_text),
                                    advice: if always_stop {
                                        "nothing more can be sent until then (or until the plan is raised)".into()
                                    } else {
                                        format!(
                                            "that is past --max-wait ({} min)",
                                            policy.max_quota_wait.as_secs() / 60
                                        )
                                    },
                                });
                            }
                        }
                    }
                    throttled += 1;
                    if throttled > policy.max_throttled {
                        return Err(exhausted(logic, endpoint, attempts, last));
                    }
                    let wait = logic
                        .retry_hint(&r.headers, now_epoch())
                        .map(|h| h.min(policy.max_hint))
                        .unwrap_or_else(|| policy.backoff(throttled - 1));
                    (wait, last)
                } else {
                    stats.server_errors.fetch_add(1, Ordering::Relaxed);
                    retries += 1;
                    if retries > policy.max_retries {
                        return Err(exhausted(logic, endpoint, attempts, last));
                    }
                    let hint = logic
                        .retry_hint(&r.headers, now_epoch())
                        .map(|h| h.min(policy.max_hint));
                    (hint.unwrap_or_else(|| policy.backoff(retries - 1)), last)
                }
            }
            Attempt::Transport(e) => {
                stats.transport_errors.fetch_add(1, Ordering::Relaxed);
                retries += 1;
                if retries > policy.max_retries {
                    return Err(exhausted(logic, endpoint, attempts, e));
                }
                (policy.backoff(retries - 1), e)
            }
        };
        stats.retries.fetch_add(1, Ordering::Relaxed);
        crate::ui::debug(format!(
            "{} {endpoint}: {last}; retrying in {:.1}s",
            logic.api(),
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
    }
}

/// Wait out a quota, saying how long is left once a minute.
async fn wait_for_quota(api: &str, name: &str, wait: Duration) {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        crate::ui::info(format!(
            "{api}: the {name} quota is spent; waiting for it to refill: {}:{:02} left",
            left.as_secs() / 60,
            left.as_secs() % 60
        ));
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
    }
}

fn exhausted(logic: &dyn RetryLogic, endpoint: &str, attempts: u32, last: String) -> ApiError {
    ApiError::RetriesExhausted {
        api: logic.api(),
        endpoint: endpoint.to_string(),
        attempts,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::collections::VecDeque;

    struct TestLogic;
    impl RetryLogic for TestLogic {
        fn api(&self) -> &'static str {
            "Test"
        }
        fn error_message(&self, body: &[u8]) -> Option<String> {
            std::str::from_utf8(body).ok().map(str::to_string)
        }
    }

    fn resp(status: u16, headers: &[(&'static str, &str)], body: &str) -> Attempt {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Attempt::Response(RawResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: bytes::Bytes::from(body.to_string()),
        })
    }

    fn exact_policy() -> RetryPolicy {
        RetryPolicy {
            jitter: Jitter::None,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_retries: 5,
            ..Default::default()
        }
    }

    /// Runs scripted attempts and returns the (paused-clock) instants of each.
    async fn script(
        policy: &RetryPolicy,
        answers: Vec<Attempt>,
    ) -> (Result<RawResponse, ApiError>, Vec<Duration>) {
        let start = tokio::time::Instant::now();
        let answers = std::sync::Mutex::new(VecDeque::from(answers));
        let times = std::sync::Mutex::new(Vec::new());
        let stats = HttpStats::default();
        let r = run_with_retries(policy, &TestLogic, "GET /x", &stats, || {
            times.lock().unwrap().push(start.elapsed());
            let next = answers.lock().unwrap().pop_front().expect("script ran out");
            async move { next }
        })
        .await;
        let t = times.lock().unwrap().clone();
        (r, t)
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_and_caps() {
        let p = exact_policy();
        let answers = (0..5)
            .map(|_| resp(503, &[], "busy"))
            .chain([resp(200, &[], "{}")])
            .collect();
        let (r, times) = script(&p, answers).await;
        assert!(r.is_ok());
        let ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
        // waits 100, 200, 400, 800, 1000 (capped)
        assert_eq!(ms, vec![0, 100, 300, 700, 1500, 2500]);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_overrides_backoff() {
        let p = exact_policy();
        let answers = vec![
            resp(429, &[("retry-after", "7")], "slow down"),
            resp(200, &[], "ok"),
        ];
        let (r, times) = script(&p, answers).await;
        assert!(r.is_ok());
        assert_eq!(times[1], Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_reset_epoch_is_honoured() {
        let p = exact_policy();
        let reset = (now_epoch() + 3).to_string();
        let answers = vec![
            resp(429, &[("x-rate-limit-retry", &reset)], "{}"),
            resp(200, &[], "ok"),
        ];
        let (r, times) = script(&p, answers).await;
        assert!(r.is_ok());
        // epoch seconds are coarse: between 2 and 3 s depending on the wall clock's fraction
        assert!(
            times[1] >= Duration::from_secs(2) && times[1] <= Duration::from_secs(3),
            "{:?}",
            times[1]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried_and_keep_message_and_request_id() {
        let p = exact_policy();
        let answers = vec![resp(
            400,
            &[("request-id", "req-42")],
            "limit must be 1..100",
        )];
        let (r, times) = script(&p, answers).await;
        assert_eq!(times.len(), 1);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("HTTP 400") && e.contains("limit must be 1..100") && e.contains("req-42"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transport_errors_retry_then_give_up() {
        let p = exact_policy();
        let answers = (0..6)
            .map(|_| Attempt::Transport("connection reset".into()))
            .collect();
        let (r, times) = script(&p, answers).await;
        assert_eq!(times.len(), 6);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("gave up after 6 attempts") && e.contains("connection reset"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_has_its_own_budget() {
        let p = exact_policy();
        // more 429s than max_retries, then success: throttling alone must not exhaust retries
        let answers = (0..7)
            .map(|_| resp(429, &[("retry-after", "1")], "{}"))
            .chain([resp(200, &[], "ok")])
            .collect();
        let (r, times) = script(&p, answers).await;
        assert!(r.is_ok());
        assert_eq!(times.last().copied(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        let p = RetryPolicy {
            jitter: Jitter::Full,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..Default::default()
        };
        for retry in 0..10 {
            let ceiling =
                Duration::from_millis(100 * (1 << retry.min(4))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(p.backoff(retry) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(3)).collect();
        assert!(spread.len() > 1, "full jitter must vary");
    }
}
