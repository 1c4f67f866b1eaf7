//! Injected trouble: latency on every request, and at `--fault-rate` a 503
//! with the vendor's error body, a connection cut after the headers, or a
//! slow answer. Decisions come from a seeded generator, so a seed replays.

use super::{Api, AppState, SandboxOptions};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

pub struct Faults {
    rng: Mutex<rand::rngs::StdRng>,
}

impl Faults {
    pub fn new(opts: &SandboxOptions) -> Faults {
        Faults {
            rng: Mutex::new(rand::SeedableRng::seed_from_u64(opts.seed ^ 0xFA17)),
        }
    }

    /// How long this answer takes.
    fn latency(&self, o: &SandboxOptions) -> Duration {
        let Some(l) = o.latency else {
            return Duration::from_millis(o.latency_ms);
        };
        let Ok(mut r) = self.rng.lock() else {
            return Duration::from_millis(l.median_ms);
        };
        let spread = if l.jitter > 0.0 {
            r.gen_range(-l.jitter..l.jitter)
        } else {
            0.0
        };
        let mut ms = l.median_ms as f64 * (1.0 + spread);
        if l.tail_share > 0.0 && r.gen_bool(l.tail_share.min(1.0)) {
            ms = l.median_ms as f64 * f64::from(l.tail_factor);
        }
        Duration::from_millis(ms.max(0.0) as u64)
    }

    /// Delay the request, and maybe answer it with a fault instead.
    pub async fn inject(&self, st: &AppState, api: Api) -> Option<Response> {
        let latency = self.latency(&st.opts);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if st.opts.fault_rate <= 0.0 || st.healed() {
            return None;
        }
        let (fault, kind) = match self.rng.lock() {
            Ok(mut r) => (
                r.gen_bool(st.opts.fault_rate.clamp(0.0, 1.0)),
                r.gen_range(0..3u8),
            ),
            Err(_) => (false, 0),
        };
        if !fault {
            return None;
        }
        match kind {
            2 => {
                // A slow answer: late, then normal.
                st.stats.faults_slow.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                None
            }
            1 => {
                st.stats.faults_dropped.fetch_add(1, Ordering::Relaxed);
                // Headers go out, then the body fails: the connection is cut mid-response.
                let stream = futures::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "sandbox fault",
                    ))
                });
                Some(
                    Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .header("content-length", "64")
                        .body(Body::from_stream(stream))
                        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
                )
            }
            _ => {
                st.stats.faults_5xx.fetch_add(1, Ordering::Relaxed);
                Some(match api {
                    Api::Segment => super::segment::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "injected fault",
                    ),
                    Api::Voucherify => super::checks::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable",
                        "injected fault",
                        "service_unavailable",
                    ),
                })
            }
        }
    }
}
