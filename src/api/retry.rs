//! The one retry loop of the project, and what decides it: each API says
//! through [`RetryLogic`] which answers are worth retrying and how to read
//! the server's hints; [`RetryPolicy`] says how long to wait (capped
//! exponential backoff with full jitter, a doubling floor under 429 hints)
//! and for how long to try. Generic over how an attempt is made, so tests
//! script the answers and pause tokio's clock.

use super::answer::{
    epoch_text, hint_text, now_epoch, rate_limit_reset, retry_after, HttpStats, RawResponse,
};
use crate::config::redact;
use crate::error::ApiError;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What one attempt produced, before the retry decision.
#[derive(Debug)]
pub enum Attempt {
    Response(RawResponse),
    /// The request never produced a complete response (timeout, refused or
    /// reset connection, truncated body).
    Transport(String),
    /// The response came but could not be kept on this machine (a file that
    /// cannot be written): not retried; the error names the file.
    Local(String),
    /// The answer is larger than the layer reads: a contract error, not
    /// retried (asking again brings the same).
    TooLarge(String),
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

    /// The machine-readable key of an error body, when the API has one.
    fn error_key(&self, _body: &[u8]) -> Option<String> {
        None
    }

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
    /// How long one request may stay throttled (429s in a row) before it
    /// gives up: a time budget, counted apart from `max_retries`, since a
    /// throttled run is slow, not broken.
    pub throttle_budget: Duration,
    /// Longest server hint honoured; a longer one stops the request
    /// ([`ApiError::Wait`]): a rerun later resumes.
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
            throttle_budget: Duration::from_secs(10 * 60),
            max_hint: Duration::from_secs(15 * 60),
            max_quota_wait: Duration::from_secs(15 * 60),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// The least wait after the `n`th 429 in a row (0-based), whatever the
    /// server's hint says (a hint of 4 ms must not become 60 retries in a
    /// second): half of min(cap, base·2^n) plus up to as much again, jittered.
    pub fn throttle_floor(&self, n: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => {
                let half = ceiling / 2;
                let extra = half.as_nanos() as u64;
                half + Duration::from_nanos(if extra == 0 {
                    0
                } else {
                    rand::Rng::gen_range(&mut rand::thread_rng(), 0..=extra)
                })
            }
        }
    }

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

/// A redirect, never followed (the key would go with it): said, with where
/// it pointed (its query left out: it may hold a token).
fn redirected(logic: &dyn RetryLogic, endpoint: &str, r: &RawResponse) -> ApiError {
    let target = crate::api::answer::header_str(&r.headers, "location")
        .unwrap_or("")
        .to_string();
    let shown = match target.split('?').next() {
        Some("") | None => "nowhere (no Location)".to_string(),
        Some(l) => l.to_string(),
    };
    ApiError::Redirect {
        api: logic.api(),
        endpoint: endpoint.to_string(),
        status: r.status.as_u16(),
        location: redact(&shown),
        target,
    }
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
    let mut throttled_since: Option<tokio::time::Instant> = None;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = attempt().await;
        let (wait, last) = match outcome {
            Attempt::Response(r) if r.status.is_success() => return Ok(r),
            Attempt::Local(message) => {
                return Err(ApiError::Local {
                    api: logic.api(),
                    endpoint: endpoint.to_string(),
                    message,
                })
            }
            Attempt::TooLarge(message) => {
                return Err(ApiError::Contract {
                    api: logic.api(),
                    endpoint: endpoint.to_string(),
                    message,
                })
            }
            Attempt::Response(r) if r.status.is_redirection() => {
                return Err(redirected(logic, endpoint, &r))
            }
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
                        key: logic.error_key(&r.body),
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
                    match named_quota(policy, logic, endpoint, &r.headers, &message) {
                        Some(Ok(w)) => {
                            wait_for_quota(logic.api(), &quota_name(logic, &r.headers), w).await;
                            stats.retries.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Some(Err(e)) => return Err(e),
                        None => {}
                    }
                    throttled += 1;
                    let since = *throttled_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= policy.throttle_budget {
                        return Err(exhausted(
                            logic,
                            endpoint,
                            attempts,
                            format!(
                                "{last} (throttled for {}s, the budget of one request)",
                                since.elapsed().as_secs()
                            ),
                        ));
                    }
                    let floor = policy.throttle_floor(throttled - 1);
                    let hint = honoured_hint(policy, logic, endpoint, &r)?;
                    (hint.map_or(floor, |h| h.max(floor)), last)
                } else {
                    stats.server_errors.fetch_add(1, Ordering::Relaxed);
                    retries += 1;
                    if retries > policy.max_retries {
                        return Err(exhausted(logic, endpoint, attempts, last));
                    }
                    let hint = honoured_hint(policy, logic, endpoint, &r)?;
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

/// The server's wait hint for this answer, when it is one this command
/// honours; a hint past `policy.max_hint` (a `Retry-After` of `inf` or
/// `1e20`, a date far ahead) stops the request with [`ApiError::Wait`]
/// naming the header: never a sleep of that length, never a panic.
fn honoured_hint(
    policy: &RetryPolicy,
    logic: &dyn RetryLogic,
    endpoint: &str,
    r: &RawResponse,
) -> Result<Option<Duration>, ApiError> {
    match logic.retry_hint(&r.headers, now_epoch()) {
        Some(h) if h > policy.max_hint => Err(ApiError::Wait {
            api: logic.api(),
            endpoint: endpoint.to_string(),
            status: r.status.as_u16(),
            hint: redact(&hint_text(&r.headers)),
            longest_secs: policy.max_hint.as_secs(),
        }),
        h => Ok(h),
    }
}

/// The name of the quota a 429 is about ("" when it names none).
fn quota_name(logic: &dyn RetryLogic, headers: &HeaderMap) -> String {
    match logic.throttle(headers, now_epoch()) {
        Throttle::Quota { name, .. } => name,
        Throttle::Wait => String::new(),
    }
}

/// A 429 about a named quota: Ok(how long to wait for it to refill), or
/// the error that stops the run (a quota that never refills in time, or
/// must not be waited for). None: no named quota, an ordinary throttle.
fn named_quota(
    policy: &RetryPolicy,
    logic: &dyn RetryLogic,
    endpoint: &str,
    headers: &HeaderMap,
    message: &str,
) -> Option<Result<Duration, ApiError>> {
    let now = now_epoch();
    let Throttle::Quota {
        name,
        resets_epoch,
        always_stop,
    } = logic.throttle(headers, now)
    else {
        return None;
    };
    let wait = resets_epoch
        .map(|at| Duration::from_secs(at.saturating_sub(now)))
        .or_else(|| logic.retry_hint(headers, now));
    Some(match wait {
        Some(w) if !always_stop && w <= policy.max_quota_wait => Ok(w),
        _ => Err(ApiError::Quota {
            api: logic.api(),
            endpoint: endpoint.to_string(),
            quota: format!("{} ({})", redact(message), name),
            resets_at: resets_epoch.map(epoch_text),
            advice: if always_stop {
                "nothing more can be sent until then (or until the plan is raised)".into()
            } else {
                format!(
                    "that is past --max-wait ({} min)",
                    policy.max_quota_wait.as_secs() / 60
                )
            },
        }),
    })
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

    #[tokio::test(start_paused = true)]
    async fn a_tiny_retry_after_still_backs_off_and_give_up_is_a_time_budget() {
        let p = RetryPolicy {
            throttle_budget: Duration::from_secs(60),
            ..exact_policy()
        };
        // Retry-After 4 ms: the waits still grow 100, 200, 400, 800 ms, then
        // the 1 s cap, until a minute of throttling has passed.
        let answers = (0..200)
            .map(|_| resp(429, &[("retry-after", "0.004")], "{}"))
            .collect();
        let (r, times) = script(&p, answers).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("throttled for 60s"), "{e}");
        let ms: Vec<u128> = times.iter().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 100, 300, 700, 1500, 2500]);
        assert!(times.len() < 70, "{} attempts in a minute", times.len());
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
