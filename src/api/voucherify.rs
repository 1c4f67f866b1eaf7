//! Client for Voucherify's customers bulk upsert and async actions. Requests go
//! through the shared [`HttpLayer`]; Voucherify's rate-limit headers pause all
//! requests when the budget is spent, so we never knowingly send into a 429.

use crate::api::http::{
    header_str, path_segment, rate_limit_reset, HttpLayer, HttpSettings, RetryLogic, Throttle,
};
use crate::config::VoucherifyConfig;
use crate::error::ApiError;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Voucherify's request size limit for the bulk endpoint.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

/// Customers one bulk request may carry (400 `too_many_customers` beyond).
pub const MAX_BULK_CUSTOMERS: u32 = 100;

struct VoucherifyLogic;

impl RetryLogic for VoucherifyLogic {
    fn api(&self) -> &'static str {
        "Voucherify"
    }

    /// Only the per-minute window pauses every request: the hourly bulk
    /// bucket holds back bulk calls alone (a poll is no bulk call), and a
    /// spent monthly cycle is an error that ends the run, not a pause. A
    /// reset further off than two windows is no per-minute window either.
    fn pause_hint(&self, headers: &HeaderMap, now_epoch: u64) -> Option<Duration> {
        match header_str(headers, "x-rate-limit-type").map(str::trim) {
            None | Some("api_calls") => {}
            Some(_) => return None,
        }
        let remaining: u64 = header_str(headers, "x-rate-limit-remaining")?
            .trim()
            .parse()
            .ok()?;
        if remaining == 0 {
            rate_limit_reset(headers, now_epoch).filter(|w| *w <= Duration::from_secs(120))
        } else {
            None
        }
    }

    /// `X-Rate-Limit-Type` says which budget a 429 is about: the per-minute
    /// one is waited out; the hourly bulk bucket is waited for up to
    /// `--max-wait`; the monthly cycle stops the run at once.
    fn throttle(&self, headers: &HeaderMap, now_epoch: u64) -> Throttle {
        let resets_epoch =
            header_str(headers, "x-rate-limit-retry").and_then(|v| v.trim().parse::<u64>().ok());
        match header_str(headers, "x-rate-limit-type").map(str::trim) {
            Some("api_calls_cycle") => Throttle::Quota {
                name: "monthly API call quota, api_calls_cycle".into(),
                resets_epoch,
                always_stop: true,
            },
            Some("bulk_api_calls") => Throttle::Quota {
                name: "hourly bulk API call quota, bulk_api_calls".into(),
                resets_epoch,
                always_stop: false,
            },
            // The per-minute limit, or an untyped 429: a wait longer than the
            // per-minute window means something else (the plan may have ended).
            _ => match self.retry_hint(headers, now_epoch) {
                Some(w) if w > Duration::from_secs(120) => Throttle::Quota {
                    name: "API call limit (a wait this long may mean the plan has ended)".into(),
                    resets_epoch,
                    always_stop: false,
                },
                _ => Throttle::Wait,
            },
        }
    }

    fn error_key(&self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.get("key").and_then(Value::as_str).map(str::to_string)
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

/// An async action. Voucherify's OpenAPI marks every field nullable: an
/// explicit `null` means absent, so each is an `Option`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AsyncAction {
    #[serde(default)]
    pub status: Option<String>,
    /// Milliseconds Voucherify spent on the action (when it reports it).
    /// Signed: the spec gives no minimum, and a negative figure is no figure.
    #[serde(default, deserialize_with = "non_negative")]
    pub processing_time: Option<u64>,
    #[serde(default)]
    pub result: Option<AsyncResult>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// When the status last changed: for a finished action, when it finished.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// SUCCESS, FAILED or UNKNOWN (nullable); FAILED on a DONE action can
    /// mean some customers were refused (named in `result.errors`).
    #[serde(default)]
    pub operation_status: Option<String>,
}

impl AsyncAction {
    /// The status, "" when absent.
    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("")
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status(), "DONE" | "FAILED")
    }
}

/// A count or duration the spec types as a plain (signed) integer: read
/// whatever its sign; a negative one says nothing, so it is absent.
fn non_negative<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<serde_json::Number> = Option::deserialize(d)?;
    Ok(v.and_then(|n| {
        n.as_i64()
            .and_then(|i| u64::try_from(i).ok())
            .or_else(|| n.as_u64())
    }))
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AsyncResult {
    #[serde(default, deserialize_with = "non_negative")]
    pub done_count: Option<u64>,
    #[serde(default, deserialize_with = "non_negative")]
    pub failed_count: Option<u64>,
    /// Per-customer errors of a bulk update.
    #[serde(default)]
    pub errors: Option<Vec<CustomerError>>,
    /// Per-row failures of a CSV import (`row` counts data rows from 1).
    #[serde(default)]
    pub failed: Option<Vec<ImportFailure>>,
    /// An import's own words about the file (nullable).
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImportFailure {
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub row: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl AsyncResult {
    pub fn done(&self) -> u64 {
        self.done_count.unwrap_or(0)
    }
    pub fn failed(&self) -> u64 {
        self.failed_count.unwrap_or(0)
    }
    pub fn errors(&self) -> &[CustomerError] {
        self.errors.as_deref().unwrap_or(&[])
    }
    pub fn import_failures(&self) -> &[ImportFailure] {
        self.failed.as_deref().unwrap_or(&[])
    }
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

/// What `GET /v1/exports/{id}` says: `status`, and the file's URL and a
/// message when there are (`result` and `result.url` are both nullable).
#[derive(Debug, Clone)]
pub struct ExportState {
    pub status: String,
    pub url: Option<String>,
    pub message: Option<String>,
    /// When Voucherify made the export (nullable).
    pub created_at: Option<String>,
}

/// Whether the application keys may go with a request to `url`: the same
/// scheme, host and port as the configured API, or a Voucherify host over https.
pub fn keys_go_to(api: &reqwest::Url, url: &reqwest::Url) -> bool {
    let same = url.scheme() == api.scheme()
        && url.host_str() == api.host_str()
        && url.port_or_known_default() == api.port_or_known_default();
    let voucherify = url.scheme() == "https"
        && url
            .host_str()
            .is_some_and(|h| h == "voucherify.io" || h.ends_with(".voucherify.io"));
    same || voucherify
}

/// Redirects an export's download follows at most.
pub const MAX_REDIRECTS: usize = 5;

/// The endpoint of the metadata schemas, as messages name it.
pub const METADATA_SCHEMAS: &str = "GET /v1/metadata-schemas";

pub struct VoucherifyClient {
    http: HttpLayer,
    cfg: VoucherifyConfig,
    base: String,
    /// The budget the last answer's headers revealed: (limit, remaining, type).
    budget: std::sync::Mutex<Option<(u64, u64, String)>>,
}

impl VoucherifyClient {
    pub fn new(cfg: VoucherifyConfig, settings: HttpSettings) -> anyhow::Result<VoucherifyClient> {
        let base = cfg.api_url.as_str().trim_end_matches('/').to_string();
        Ok(VoucherifyClient {
            http: HttpLayer::new(settings)?,
            cfg,
            base,
            budget: std::sync::Mutex::new(None),
        })
    }

    pub fn stats(&self) -> &crate::api::http::HttpStats {
        &self.http.stats
    }

    /// What the last answer's `X-Rate-Limit-Limit` and `-Remaining` said
    /// (and `X-Rate-Limit-Type`, "api_calls" when absent).
    pub fn budget(&self) -> Option<(u64, u64, String)> {
        self.budget.lock().ok().and_then(|b| b.clone())
    }

    /// Send a request with the application keys; the answer as JSON.
    async fn call(
        &self,
        endpoint: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Value, ApiError> {
        self.call_as(endpoint, build).await
    }

    /// Send with the application keys, note the budget the headers reveal,
    /// and read the body straight into `T` (one parse, no `Value` between).
    async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let resp = self
            .http
            .send(endpoint, &VoucherifyLogic, |c| {
                build(c)
                    .header("X-App-Id", &self.cfg.app_id)
                    .header("X-App-Token", self.cfg.secret_key.expose())
            })
            .await?;
        let num = |h: &str| header_str(&resp.headers, h).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(limit), Some(remaining)) =
            (num("x-rate-limit-limit"), num("x-rate-limit-remaining"))
        {
            let kind = header_str(&resp.headers, "x-rate-limit-type").unwrap_or("api_calls");
            if let Ok(mut b) = self.budget.lock() {
                *b = Some((limit, remaining, kind.to_string()));
            }
        }
        serde_json::from_slice(&resp.body).map_err(|e| {
            ApiError::contract("Voucherify", endpoint, &format!("unexpected body ({e})"))
        })
    }

    /// A non-empty text field of an answer, or a contract error naming it.
    fn field(v: &Value, endpoint: &str, name: &str) -> Result<String, ApiError> {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::contract(
                    "Voucherify",
                    endpoint,
                    &format!("no `{name}` in the answer"),
                )
            })
    }

    /// POST a JSON array of customers; returns the async action id.
    pub async fn bulk_upsert(&self, body: bytes::Bytes) -> Result<String, ApiError> {
        let endpoint = "POST /v1/customers/bulk/async";
        let url = format!("{}/v1/customers/bulk/async", self.base);
        let v = self
            .call(endpoint, |c| {
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        Self::field(&v, endpoint, "async_action_id")
    }

    /// `POST /v1/customers/importCSV`: one CSV file of customers as the
    /// multipart field `file`; returns the async action id.
    pub async fn import_csv(&self, name: &str, csv: bytes::Bytes) -> Result<String, ApiError> {
        let endpoint = "POST /v1/customers/importCSV";
        let url = format!("{}/v1/customers/importCSV", self.base);
        let v = self
            .call(endpoint, |c| {
                let part = reqwest::multipart::Part::stream(csv.clone())
                    .file_name(name.to_string())
                    .mime_str("text/csv")
                    .unwrap_or_else(|_| reqwest::multipart::Part::stream(csv.clone()));
                c.post(&url)
                    .multipart(reqwest::multipart::Form::new().part("file", part))
            })
            .await?;
        Self::field(&v, endpoint, "async_action_id")
    }

    /// `POST /v1/exports` of every customer's `source_id`; returns the export id.
    /// `POST /v1/exports` of customers' `fields`; with `since` (`(field,
    /// time)`), only those whose `updated_at` (or `created_at`) is after it:
    /// one condition, so no reading of a `junction` matters (every example
    /// in the docs uses `and`). Returns the export's id and its `created_at`
    /// (nullable).
    pub async fn export_customers(
        &self,
        fields: &[&str],
        since: Option<(&str, &str)>,
    ) -> Result<(String, Option<String>), ApiError> {
        let endpoint = "POST /v1/exports";
        let url = format!("{}/v1/exports", self.base);
        let mut params = serde_json::json!({"fields": fields});
        if let Some((field, after)) = since {
            params["filters"] = serde_json::json!({
                "junction": "and",
                field: {"conditions": {"$after": [after]}}
            });
        }
        let body = serde_json::json!({"exported_object": "customer", "parameters": params});
        let v = self.call(endpoint, |c| c.post(&url).json(&body)).await?;
        let created = v
            .get("created_at")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok((Self::field(&v, endpoint, "id")?, created))
    }

    /// `GET /v1/exports/{id}`: where the export stands.
    pub async fn export(&self, id: &str) -> Result<ExportState, ApiError> {
        let endpoint = format!("GET /v1/exports/{id}");
        let url = format!("{}/v1/exports/{}", self.base, path_segment(id));
        let v = self.call(&endpoint, |c| c.get(&url)).await?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let result = v.get("result").filter(|r| !r.is_null());
        Ok(ExportState {
            status: text(v.get("status")).unwrap_or_default(),
            url: text(result.and_then(|r| r.get("url"))),
            message: text(result.and_then(|r| r.get("message"))).or_else(|| text(v.get("message"))),
            created_at: text(v.get("created_at")),
        })
    }

    /// `GET /v1/customers?limit=1`: whether the project holds any customer.
    /// None when the answer does not say (no `customers` list).
    pub async fn holds_any_customer(&self) -> Result<Option<bool>, ApiError> {
        let endpoint = "GET /v1/customers";
        let url = format!("{}/v1/customers?limit=1", self.base);
        let v = self.call(endpoint, |c| c.get(&url)).await?;
        Ok(v.get("customers")
            .and_then(Value::as_array)
            .map(|c| !c.is_empty()))
    }

    /// Download an export's file "together with authentication headers"
    /// (Voucherify's export guide), which go only to the configured API host
    /// or a Voucherify host over https, never anywhere else. The URL must be
    /// https (or loopback http, for the sandbox). Redirects are followed by
    /// hand, at most [`MAX_REDIRECTS`], each to https (or loopback) only, and
    /// the keys go no further than the first URL's origin: a same-host URL
    /// that redirects elsewhere hands over nothing.
    pub async fn download(&self, file_url: &str, to: &std::path::Path) -> Result<(), ApiError> {
        let endpoint = "GET export file";
        let refuse = |why: String| ApiError::contract("Voucherify", endpoint, &why);
        let mut url = reqwest::Url::parse(file_url)
            .map_err(|e| refuse(format!("the export's URL is not a URL ({e})")))?;
        let first = url.origin();
        for _ in 0..=MAX_REDIRECTS {
            let host = url.host_str().unwrap_or("").to_string();
            if url.scheme() != "https"
                && !(url.scheme() == "http" && crate::config::is_loopback(&host))
            {
                return Err(refuse(format!(
                    "the export's URL (or a redirect of it) is not https ({host}); not downloading it"
                )));
            }
            let with_keys = url.origin() == first && keys_go_to(&self.cfg.api_url, &url);
            let sent = self
                .http
                .send_to_file(
                    endpoint,
                    &VoucherifyLogic,
                    |c| {
                        let req = c.get(url.clone());
                        if with_keys {
                            req.header("X-App-Id", &self.cfg.app_id)
                                .header("X-App-Token", self.cfg.secret_key.expose())
                        } else {
                            req
                        }
                    },
                    to,
                )
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(ApiError::Redirect {
                    location, target, ..
                }) => {
                    url = url.join(&target).map_err(|e| {
                        refuse(format!("the export's download redirects to {location}, which is not a URL ({e})"))
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(refuse(format!(
            "the export's download redirected more than {MAX_REDIRECTS} times"
        )))
    }

    /// The project's metadata schemas (`GET /v1/metadata-schemas`), as
    /// answered; `mapping::metadata_schema` reads the customer's.
    pub async fn metadata_schemas(&self) -> Result<Value, ApiError> {
        let url = format!("{}/v1/metadata-schemas", self.base);
        self.call(METADATA_SCHEMAS, |c| c.get(&url)).await
    }

    /// The state of an async action.
    pub async fn async_action(&self, id: &str) -> Result<AsyncAction, ApiError> {
        let endpoint = format!("GET /v1/async-actions/{id}");
        let url = format!("{}/v1/async-actions/{}", self.base, path_segment(id));
        self.call_as(&endpoint, |c| c.get(&url)).await
    }
}

/// Whether an error is Voucherify's `too_many_customers` (over the bulk cap).
pub fn is_too_many_customers(e: &ApiError) -> bool {
    e.status() == Some(400) && e.key() == Some("too_many_customers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_fields_of_an_async_action_mean_absent() {
        let a: AsyncAction = serde_json::from_str(
            r#"{"status":"DONE","result":{"done_count":3,"failed_count":null,"errors":null},"progress":null}"#,
        )
        .unwrap();
        let r = a.result.unwrap();
        assert_eq!((r.done(), r.failed(), r.errors().len()), (3, 0, 0));
        let a: AsyncAction =
            serde_json::from_str(r#"{"status":"ENQUEUED","result":null,"processing_time":null}"#)
                .unwrap();
        assert!(a.result.is_none() && !a.is_finished());
        // Integers without a minimum in the spec: a negative one is read, and
        // says nothing.
        let a: AsyncAction = serde_json::from_str(
            r#"{"status":"DONE","processing_time":-1,"result":{"done_count":2,"failed_count":-1}}"#,
        )
        .unwrap();
        assert_eq!(a.processing_time, None);
        assert_eq!(
            a.result.as_ref().map(|r| (r.done(), r.failed())),
            Some((2, 0))
        );
        let a: AsyncAction = serde_json::from_str(r#"{"status":null}"#).unwrap();
        assert_eq!(a.status(), "");
        assert!(
            !a.is_finished(),
            "an absent status is not a finished action"
        );
    }

    #[test]
    fn only_the_per_minute_window_pauses_every_request() {
        let h = |pairs: &[(&'static str, String)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let now = 1_000_000;
        let spent = |kind: Option<&str>, reset_in: u64| {
            let mut p = vec![
                ("x-rate-limit-remaining", "0".to_string()),
                ("x-rate-limit-retry", (now + reset_in).to_string()),
            ];
            if let Some(k) = kind {
                p.push(("x-rate-limit-type", k.to_string()));
            }
            VoucherifyLogic.pause_hint(&h(&p), now)
        };
        assert_eq!(spent(None, 30), Some(Duration::from_secs(30)));
        assert_eq!(spent(Some("api_calls"), 30), Some(Duration::from_secs(30)));
        // A month away, or another quota: no pause (the run stops instead).
        assert_eq!(spent(Some("api_calls_cycle"), 30 * 86_400), None);
        assert_eq!(spent(Some("bulk_api_calls"), 1_800), None);
        assert_eq!(spent(None, 30 * 86_400), None);
    }

    #[test]
    fn the_quota_type_decides_between_waiting_and_stopping() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let now = 1_000_000;
        let l = VoucherifyLogic;
        assert!(matches!(
            l.throttle(
                &h(&[
                    ("x-rate-limit-type", "api_calls_cycle"),
                    ("x-rate-limit-retry", "2000000")
                ]),
                now
            ),
            Throttle::Quota {
                always_stop: true,
                resets_epoch: Some(2000000),
                ..
            }
        ));
        assert!(matches!(
            l.throttle(
                &h(&[
                    ("x-rate-limit-type", "bulk_api_calls"),
                    ("x-rate-limit-retry", "1000600")
                ]),
                now
            ),
            Throttle::Quota {
                always_stop: false,
                ..
            }
        ));
        assert_eq!(
            l.throttle(
                &h(&[("x-rate-limit-type", "api_calls"), ("retry-after", "30")]),
                now
            ),
            Throttle::Wait
        );
        assert!(matches!(
            l.throttle(&h(&[("retry-after", "54000")]), now),
            Throttle::Quota {
                always_stop: false,
                ..
            }
        ));
    }

    #[test]
    fn ids_in_paths_keep_unreserved_characters() {
        assert_eq!(path_segment("aa_0c5547cc-5e.17~b6"), "aa_0c5547cc-5e.17~b6");
        assert_eq!(path_segment("a+b/c d"), "a%2Bb%2Fc%20d");
    }
}
