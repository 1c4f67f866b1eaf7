//! The two vendors' APIs: one HTTP layer ([`http`]: pooled client, rate
//! limiter, the only retry loop) under one client each ([`segment`],
//! [`voucherify`]), and the adaptive concurrency controller ([`adaptive`])
//! that keeps a rate limit's budget busy.

pub mod adaptive;
pub mod answer;
pub mod http;
pub mod retry;
pub mod segment;
pub mod voucherify;

/// An API error as the stages report it: 401/403 mean the keys or the region are
/// wrong, a configuration error (exit 2) that says what to check.
pub fn api_error(e: crate::error::ApiError) -> anyhow::Error {
    match e.status() {
        Some(401) | Some(403) => crate::error::UsageError::new(format!(
            "{e}\ncheck VOUCHERIFY_APPLICATION_ID and VOUCHERIFY_SECRET_KEY (Project Settings > Application Keys) and VOUCHERIFY_API_URL (your project's region)"
        ))
        .into(),
        _ => e.into(),
    }
}
