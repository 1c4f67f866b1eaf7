//! A hostile front (`--hostile CASE`): what a misbehaving server, or a
//! proxy in front of one, may answer, one case at a time, so each of the
//! client's defences has a test through the CLI. Not the vendors' contract:
//! the opposite of it, played on purpose.
//!
//! A case that points the client elsewhere (a redirect) points it at a
//! second listener on another loopback host (`127.0.0.2`), which records
//! every request it receives ([`Evil`]) and answers as blandly as it can:
//! a test then holds that no byte of a secret reached it.

use super::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// One way of breaking the contract on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hostile {
    /// Segment's second listing page: 429 with `Retry-After: inf`, once.
    RetryAfterInf,
    /// …with `Retry-After: 1e20`.
    RetryAfterHuge,
    /// …with `Retry-After: -5` (unreadable: the client's own backoff).
    RetryAfterNegative,
    /// …with `Retry-After: NaN` (unreadable).
    RetryAfterNan,
    /// …with `Retry-After` an HTTP-date a year ahead.
    RetryAfterDate,
    /// Segment's first traits read: 400 whose message echoes the request's
    /// `Authorization` header (the token in Base64).
    EchoAuth,
    /// The profile listing: 301 to the other host.
    RedirectListing,
    /// Voucherify's bulk upsert: 307 to the other host (a client that
    /// follows re-sends the key and the customers there).
    RedirectBulk,
    /// The export's file: 302 to the other host (same-host URL first).
    RedirectDownload,
    /// The profile listing: a gzip answer that inflates to 1 GB.
    GzipBomb,
    /// The profile listing: 100 MB of body.
    HugeBody,
    /// The profile listing: 150 profiles for the 100 asked.
    LongPage,
    /// The profile listing: its first two pages in turn, forever, each
    /// under a new cursor string.
    AlternatingPages,
}

/// What the other host received.
#[derive(Default)]
pub struct Evil {
    pub url: Mutex<Option<String>>,
    pub seen: Mutex<Vec<Value>>,
}

/// The answer to play instead of the real one, if this case plays here.
pub fn intercept(st: &AppState, req: &Request) -> Option<Response> {
    let case = st.opts.hostile?;
    let path = req.uri().path();
    let listing = path.starts_with("/v1/spaces/") && path.ends_with("/profiles");
    let next = req.uri().query().unwrap_or("").contains("next=");
    let first = || st.hostile_hits.fetch_add(1, Ordering::Relaxed) == 0;
    use Hostile::*;
    match case {
        RetryAfterInf | RetryAfterHuge | RetryAfterNegative | RetryAfterNan | RetryAfterDate
            if listing && next && first() =>
        {
            let v = match case {
                RetryAfterInf => "inf".to_string(),
                RetryAfterHuge => "1e20".to_string(),
                RetryAfterNegative => "-5".to_string(),
                RetryAfterNan => "NaN".to_string(),
                _ => jiff::fmt::rfc2822::DateTimePrinter::new()
                    .timestamp_to_rfc9110_string(
                        &(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)),
                    )
                    .unwrap_or_default(),
            };
            let mut r = super::segment::error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Too many requests",
            );
            if let Ok(h) = v.parse() {
                r.headers_mut().insert("retry-after", h);
            }
            Some(r)
        }
        EchoAuth if path.ends_with("/traits") && first() => {
            let auth = header(req.headers(), "authorization");
            Some(super::segment::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("could not read the request {path} with headers Authorization: {auth}"),
            ))
        }
        RedirectListing if listing => Some(redirect(st, StatusCode::MOVED_PERMANENTLY, path)),
        RedirectBulk if path == "/v1/customers/bulk/async" => {
            Some(redirect(st, StatusCode::TEMPORARY_REDIRECT, path))
        }
        GzipBomb if listing => Some(
            (
                [
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ],
                bomb().clone(),
            )
                .into_response(),
        ),
        HugeBody if listing => {
            static SPACES: [u8; 1 << 20] = [b' '; 1 << 20];
            let chunks =
                (0..100).map(|_| Ok::<_, std::convert::Infallible>(Bytes::from_static(&SPACES)));
            Some(Body::from_stream(futures::stream::iter(chunks)).into_response())
        }
        LongPage | AlternatingPages if listing => Some(page(st, case, req)),
        _ => None,
    }
}

/// The export's file, redirected to the other host (`RedirectDownload`).
pub fn download(st: &AppState, path: &str, query: &str) -> Option<Response> {
    (st.opts.hostile == Some(Hostile::RedirectDownload)).then(|| {
        let mut r = redirect(st, StatusCode::FOUND, path);
        if let Some(l) = r.headers().get("location").and_then(|v| v.to_str().ok()) {
            if let Ok(v) = format!("{l}?{query}").parse() {
                r.headers_mut().insert("location", v);
            }
        }
        r
    })
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn redirect(st: &AppState, status: StatusCode, path: &str) -> Response {
    let to = st
        .evil
        .url
        .lock()
        .ok()
        .and_then(|u| u.clone())
        .unwrap_or_default();
    let mut r = status.into_response();
    if let Ok(v) = format!("{to}{path}").parse() {
        r.headers_mut().insert("location", v);
    }
    r
}

/// 1 GB of zeros, gzipped (about 1 MB), made once.
fn bomb() -> &'static Bytes {
    static BOMB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            let _ = gz.write_all(&zeros);
        }
        Bytes::from(gz.finish().unwrap_or_default())
    })
}

/// A listing page that breaks the contract: too long (`LongPage`), or the
/// first two pages in turn under ever new cursors (`AlternatingPages`).
fn page(st: &AppState, case: Hostile, req: &Request) -> Response {
    let n = st.data.n;
    let (first, len) = match case {
        Hostile::LongPage => (0, 150),
        _ => {
            let k = st.hostile_hits.fetch_add(1, Ordering::Relaxed);
            ((k % 2) * 100, 100)
        }
    };
    let data: Vec<Value> = (first..first + len)
        .filter(|i| *i < n)
        .map(|i| json!({"segment_id": st.data.segment_id(i), "metadata": st.data.metadata(i, 0)}))
        .collect();
    let next = format!("fresh-{}", st.hostile_hits.load(Ordering::Relaxed));
    let _ = req;
    axum::Json(json!({"data": data, "cursor": {"url": "", "has_more": true, "next": next}}))
        .into_response()
}

/// Start the other host on `127.0.0.2`: it records every request and
/// answers blandly (an empty export file, an accepted job).
pub async fn start_evil(st: Arc<AppState>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.2", 0)).await?;
    let addr = listener.local_addr()?;
    if let Ok(mut u) = st.evil.url.lock() {
        *u = Some(format!("http://{addr}"));
    }
    let app = axum::Router::new().fallback(record).with_state(st.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

async fn record(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    if let Ok(mut seen) = st.evil.seen.lock() {
        seen.push(json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }));
    }
    if parts.method == axum::http::Method::POST {
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"async_action_id": "aa_evil"})),
        )
            .into_response()
    } else {
        ([("content-type", "text/csv")], "source_id\n").into_response()
    }
}
