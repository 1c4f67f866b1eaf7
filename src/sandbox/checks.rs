//! What every Voucherify room of the sandbox shares, written from
//! Voucherify's documentation (never segsync's): the error body, the
//! application keys, and the date check.

use super::AppState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Voucherify's date format for `birthdate`: `YYYY-MM-DD` naming a real day.
/// The sandbox's own check, deliberately not segsync's.
pub fn valid_date(s: &str) -> bool {
    s.len() == 10
        && jiff::fmt::strtime::parse("%Y-%m-%d", s)
            .and_then(|t| t.to_date())
            .is_ok_and(|d| d.year() >= 1)
}

pub fn error(status: StatusCode, message: &str, details: &str, key: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message, "details": details, "key": key})),
    )
        .into_response()
}

pub fn authorized(st: &AppState, h: &HeaderMap) -> bool {
    let id_ok = h.get("x-app-id").and_then(|v| v.to_str().ok()) == Some(st.creds.app_id.as_str());
    let token_ok =
        h.get("x-app-token").and_then(|v| v.to_str().ok()) == Some(st.creds.secret_key.as_str());
    id_ok && token_ok
}

pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "invalid X-App-Id or X-App-Token",
        "unauthorized",
    )
}
