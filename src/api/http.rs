//! The one HTTP layer both API clients share.
//!
//! It owns the pooled reqwest client, the concurrency bound, the token-bucket
//! rate limiter (governor) and the single retry loop of the project. Each API
//! client describes its service through [`RetryLogic`]: which answers are worth
//! retrying, how to read the server's wait hints, and how to find the API's own
//! error message in a body. [`RetryPolicy`] decides how long to wait between
//! attempts: capped exponential backoff with full jitter, overridden by the
//! server's hint when it gives one.

pub use super::answer::{
    epoch_text, header_str, now_epoch, rate_limit_reset, retry_after, HttpStats, RawResponse,
};
pub use super::retry::{run_with_retries, Attempt, Jitter, RetryLogic, RetryPolicy, Throttle};
use crate::config::redact;
use crate::error::ApiError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::RequestBuilder;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const USER_AGENT: &str = concat!("segsync/", env!("CARGO_PKG_VERSION"));

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
    /// The most bytes an answer held in memory may have, as read (gzip
    /// inflated): more is a contract error, never read on.
    pub max_answer_bytes: usize,
    /// The most bytes an answer streamed to a file may have (an export).
    pub max_file_bytes: u64,
}

/// An API answer held in memory: a listing page of 100 profiles, a page of
/// 200 traits, an async action. 64 MB is far past any of them.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// An export file: a million customers are about 100 MB.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            concurrency: 16,
            rate: None,
            rate_period: Duration::from_secs(1),
            burst: None,
            timeout: Duration::from_secs(60),
            policy: RetryPolicy::default(),
            max_answer_bytes: MAX_ANSWER_BYTES,
            max_file_bytes: MAX_FILE_BYTES,
        }
    }
}

/// Shared HTTP machinery: pooled client, concurrency bound, rate limiter, retries.
pub struct HttpLayer {
    client: reqwest::Client,
    limits: Limits,
    limiter: Option<DefaultDirectRateLimiter>,
    concurrency: Semaphore,
    policy: RetryPolicy,
    /// Until when the server told us to send nothing (budget spent).
    paused_until: Mutex<Option<tokio::time::Instant>>,
    pub stats: Arc<HttpStats>,
}

impl HttpLayer {
    pub fn new(settings: HttpSettings) -> anyhow::Result<HttpLayer> {
        // No redirect is followed: reqwest would carry `X-App-Token` (and a
        // bulk request's customers) to wherever a 307 points. A redirect is
        // an error naming where it pointed; the export's download follows
        // its own, to https only, with no key past its first origin.
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .gzip(true)
            .redirect(reqwest::redirect::Policy::none())
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
            limits: Limits {
                answer: settings.max_answer_bytes,
                file: settings.max_file_bytes,
            },
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
        self.send_inner(endpoint, logic, build, None).await
    }

    /// As [`HttpLayer::send`], but a 2xx answer's body is streamed into
    /// `to` (replaced atomically once whole) instead of held in memory: an
    /// export file may be hundreds of megabytes. The answer's body is empty.
    pub async fn send_to_file(
        &self,
        endpoint: &str,
        logic: &dyn RetryLogic,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        to: &std::path::Path,
    ) -> Result<RawResponse, ApiError> {
        self.send_inner(endpoint, logic, build, Some(to)).await
    }

    async fn send_inner(
        &self,
        endpoint: &str,
        logic: &dyn RetryLogic,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        to: Option<&std::path::Path>,
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
                Ok(resp) => read_body(resp, to, self.limits).await,
            };
            if let Attempt::Response(r) = &attempt {
                self.stats.answers.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .answer_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
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

/// How many bytes an answer may have.
#[derive(Debug, Clone, Copy)]
struct Limits {
    answer: usize,
    file: u64,
}

/// Read an answer's body: whole (at most `limits.answer` bytes), or for a
/// 2xx answer with `to`, chunk by chunk into that file (at most
/// `limits.file` bytes; committed only once the body is whole). Bytes are
/// counted as read, gzip inflated, and a `Content-Length` over the limit is
/// refused before a byte is read: an answer's size never decides memory.
async fn read_body(
    mut resp: reqwest::Response,
    to: Option<&std::path::Path>,
    limits: Limits,
) -> Attempt {
    let status = resp.status();
    let headers = resp.headers().clone();
    let file = to.filter(|_| status.is_success());
    let limit = file.map_or(limits.answer as u64, |_| limits.file);
    let too_large = |n: u64| {
        Attempt::TooLarge(format!(
            "the answer is larger than {limit} bytes{} (at least {n}); it is not read on",
            if file.is_some() {
                " (--max-export-bytes)"
            } else {
                ""
            }
        ))
    };
    if let Some(n) = resp.content_length().filter(|n| *n > limit) {
        return too_large(n);
    }
    let Some(path) = file else {
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > limit {
                        return too_large((body.len() + chunk.len()) as u64);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Attempt::Transport(describe_transport(&e)),
            }
        }
        return Attempt::Response(RawResponse {
            status,
            headers,
            body: body.into(),
        });
    };
    // A file that cannot be written is this machine's fault, not the
    // network's: never retried, reported with the file's own error.
    let local = |e: anyhow::Error| {
        Attempt::Local(format!(
            "the answer could not be saved to {}: {e:#}; fix the file's directory (permissions, free space) and run again",
            path.display()
        ))
    };
    let mut out = match crate::files::AtomicFile::create(path) {
        Ok(f) => f,
        Err(e) => return local(e),
    };
    let mut written = 0u64;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                written += chunk.len() as u64;
                if written > limit {
                    return too_large(written);
                }
                if let Err(e) = std::io::Write::write_all(&mut out, &chunk) {
                    return local(anyhow::anyhow!("cannot write {}: {e}", path.display()));
                }
            }
            Ok(None) => break,
            Err(e) => return Attempt::Transport(describe_transport(&e)),
        }
    }
    match out.commit() {
        Ok(()) => Attempt::Response(RawResponse {
            status,
            headers,
            body: bytes::Bytes::new(),
        }),
        Err(e) => local(e),
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
