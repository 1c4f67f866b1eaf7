//! Client for Voucherify's customers bulk upsert and async actions. Requests go
//! through the shared [`HttpLayer`]; Voucherify's rate-limit headers pause all
//! requests when the budget is spent, so we never knowingly send into a 429.

use crate::config::VoucherifyConfig;
use crate::error::ApiError;
use crate::http::{header_str, rate_limit_reset, HttpLayer, HttpSettings, RetryLogic};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Voucherify's request size limit for the bulk endpoint.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

struct VoucherifyLogic;

impl RetryLogic for VoucherifyLogic {
    fn api(&self) -> &'static str {
        "Voucherify"
    }

    fn pause_hint(&self, headers: &HeaderMap, now_epoch: u64) -> Option<Duration> {
        let remaining: u64 = header_str(headers, "x-rate-limit-remaining")?
            .trim()
            .parse()
            .ok()?;
        if remaining == 0 {
            rate_limit_reset(headers, now_epoch)
        } else {
            None
        }
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let message = v.get("message").and_then(Value::as_str)?;
        let mut out = message.to_string();
        if let Some(d) = v.get("details").and_then(Value::as_str) {
            out.push_str(&format!(" ({d})"));
        }
        if let Some(k) = v.get("key").and_then(Value::as_str) {
            out.push_str(&format!(" [{k}]"));
        }
        Some(out)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AsyncAction {
    pub status: String,
    /// Milliseconds Voucherify spent on the action (when it reports it).
    #[serde(default)]
    pub processing_time: Option<u64>,
    #[serde(default)]
    pub result: Option<AsyncResult>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AsyncResult {
    #[serde(default)]
    pub done_count: u64,
    #[serde(default)]
    pub failed_count: u64,
    #[serde(default)]
    pub errors: Vec<CustomerError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CustomerError {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub details: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
}

pub struct VoucherifyClient {
    http: HttpLayer,
    cfg: VoucherifyConfig,
    base: String,
}

impl VoucherifyClient {
    pub fn new(cfg: VoucherifyConfig, settings: HttpSettings) -> anyhow::Result<VoucherifyClient> {
        let base = cfg.api_url.as_str().trim_end_matches('/').to_string();
        Ok(VoucherifyClient {
            http: HttpLayer::new(settings)?,
            cfg,
            base,
        })
    }

    pub fn stats(&self) -> &crate::http::HttpStats {
        &self.http.stats
    }

    /// POST a JSON array of customers; returns the async action id.
    pub async fn bulk_upsert(&self, body: bytes::Bytes) -> Result<String, ApiError> {
        let endpoint = "POST /v1/customers/bulk/async";
        let url = format!("{}/v1/customers/bulk/async", self.base);
        let resp = self
            .http
            .send(endpoint, &VoucherifyLogic, |c| {
                c.post(&url)
                    .header("X-App-Id", &self.cfg.app_id)
                    .header("X-App-Token", self.cfg.secret_key.expose())
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        let v: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| contract(endpoint, &format!("body is not JSON ({e})")))?;
        v.get("async_action_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| contract(endpoint, "no `async_action_id` in the answer"))
    }

    /// The state of an async action.
    pub async fn async_action(&self, id: &str) -> Result<AsyncAction, ApiError> {
        let endpoint = format!("GET /v1/async-actions/{id}");
        let url = format!(
            "{}/v1/async-actions/{}",
            self.base,
            utf8_percent_encode(id, NON_ALPHANUMERIC)
        );
        let resp = self
            .http
            .send(&endpoint, &VoucherifyLogic, |c| {
                c.get(&url)
                    .header("X-App-Id", &self.cfg.app_id)
                    .header("X-App-Token", self.cfg.secret_key.expose())
            })
            .await?;
        serde_json::from_slice(&resp.body)
            .map_err(|e| contract(&endpoint, &format!("unexpected async action body ({e})")))
    }
}

fn contract(endpoint: &str, message: &str) -> ApiError {
    ApiError::Contract {
        api: "Voucherify",
        endpoint: endpoint.to_string(),
        message: message.to_string(),
    }
}
