//! Segment's Profile API as documented: list profiles, a profile's traits
//! and external ids, each paged by an opaque `next` cursor with the
//! documented page limits; HTTP Basic auth with the token as user; errors as
//! `{"error":{"code","message"}}`; a `Request-Id` on every answer.

use super::data;
use super::{AppState, Misbehave};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid or missing access token",
    )
}

/// An answer that breaks the contract on purpose (`--misbehave non-json`).
pub fn misbehave(st: &AppState) -> Option<Response> {
    (st.opts.misbehave == Some(Misbehave::NonJson)).then(|| {
        (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body>Service temporarily rerouted</body></html>",
        )
            .into_response()
    })
}

pub fn with_request_id(st: &AppState, mut resp: Response) -> Response {
    let id = format!("req_{:x}", st.seq.fetch_add(1, Ordering::Relaxed));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

pub fn authorized(st: &AppState, h: &HeaderMap) -> bool {
    let Some(auth) = h.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b64) = auth.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    raw == format!("{}:", st.creds.segment_token).as_bytes()
}

fn encode_cursor(kind: &str, offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{offset}"))
}

fn decode_cursor(kind: &str, s: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.strip_prefix(kind)?.strip_prefix(':')?.parse().ok()
}

/// Parse `limit` and `next` for a list with maximum page size `max`.
#[allow(clippy::result_large_err)]
fn paging(q: &HashMap<String, String>, kind: &str, max: usize) -> Result<(usize, usize), Response> {
    let limit = match q.get("limit") {
        None => 10,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    &format!("limit must be an integer between 1 and {max}"),
                ))
            }
        },
    };
    // `next=0` is the first page, as Segment takes it: the original script
    // starts its listing so.
    let offset = match q.get("next").filter(|s| !s.is_empty() && *s != "0") {
        None => 0,
        Some(c) => match decode_cursor(kind, c) {
            Some(o) => o,
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    "invalid cursor",
                ))
            }
        },
    };
    Ok((limit, offset))
}

fn cursor_json(path: &str, kind: &str, limit: usize, end: usize, total: usize) -> Value {
    let has_more = end < total;
    let next = if has_more {
        encode_cursor(kind, end)
    } else {
        String::new()
    };
    let url = if has_more {
        format!("{path}?limit={limit}&next={next}")
    } else {
        String::new()
    };
    json!({"url": url, "has_more": has_more, "next": next})
}

pub async fn list_profiles(
    State(st): State<Arc<AppState>>,
    Path(space): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if space != st.creds.space_id {
        return error(StatusCode::NOT_FOUND, "not_found", "space not found");
    }
    if st.opts.refuse_listing {
        // The route is undocumented and may go without notice.
        return error(StatusCode::NOT_FOUND, "not_found", "Not Found");
    }
    let (limit, offset) = match paging(&q, "p", 100) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let n = st.data.n as usize;
    let (offset, shown_end) = match st.opts.misbehave {
        Some(Misbehave::RepeatPage) => (0, offset + limit),
        _ => (offset, offset + limit),
    };
    let end = (offset + limit).min(n);
    let versions = st.versions.read().map(|v| v.clone()).unwrap_or_default();
    let indices = st
        .order
        .read()
        .map(|o| o.page(offset.min(n), end.saturating_sub(offset), st.data.n))
        .unwrap_or_default();
    let data: Vec<Value> = indices
        .into_iter()
        .map(|i| {
            json!({"segment_id": st.data.segment_id(i), "metadata": st.data.metadata(i, versions.get(&i).copied().unwrap_or(0))})
        })
        .collect();
    let path = format!("/v1/spaces/{space}/collections/users/profiles");
    match st.opts.misbehave {
        Some(Misbehave::NoCursor) => Json(json!({"data": data})).into_response(),
        Some(Misbehave::EndlessCursor) => Json(
            json!({"data": data, "cursor": cursor_json(&path, "p", limit, shown_end, usize::MAX)}),
        )
        .into_response(),
        Some(Misbehave::RepeatPage) => Json(
            json!({"data": data, "cursor": cursor_json(&path, "p", limit, shown_end.min(n), n)}),
        )
        .into_response(),
        _ => Json(json!({"data": data, "cursor": cursor_json(&path, "p", limit, end, n)}))
            .into_response(),
    }
}

/// The profile a lookup names, as the docs name one: `TYPE:VALUE` by an
/// external id (`user_id:u1`, `email:a@b.co`), the bare id (`use_…`, as the
/// docs' cursor URLs), or the undocumented `segment_id:use_…` (refused with
/// `refuse_prefixed`). Of two profiles that share an external id, the one
/// updated most recently answers (the docs do not say which).
#[allow(clippy::result_large_err)]
fn lookup(st: &AppState, space: &str, id: &str) -> Result<data::GeneratedProfile, Response> {
    if space != st.creds.space_id {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "space not found"));
    }
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "Profile was not found.");
    let versions = st.versions.read().map(|v| v.clone()).unwrap_or_default();
    let index = if let Some(sid) = id.strip_prefix("segment_id:") {
        if st.opts.refuse_prefixed {
            return Err(not_found());
        }
        st.data.index_of(sid)
    } else if id.starts_with("use_") {
        st.data.index_of(id)
    } else if id.contains(':') {
        let found = by_external_id(st).get(id);
        found.and_then(|all| {
            all.iter().copied().max_by_key(|i| {
                let v = versions.get(i).copied().unwrap_or(0);
                let at = st.data.metadata(*i, v)["updated_at"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                (at, std::cmp::Reverse(*i))
            })
        })
    } else {
        None
    };
    let gone = |i: &u64| {
        st.vanished.read().map(|v| v.contains(i)).unwrap_or(false)
            || (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % 100 < u64::from(st.opts.gone_percent)
    };
    let Some(index) = index.filter(|i| !gone(i)) else {
        return Err(not_found());
    };
    let version = versions.get(&index).copied().unwrap_or(0);
    Ok(st.data.profile(index, version))
}

/// Every profile by each of its external ids (`type:id`), built once.
fn by_external_id(st: &AppState) -> &HashMap<String, Vec<u64>> {
    st.by_external_id.get_or_init(|| {
        let mut m: HashMap<String, Vec<u64>> = HashMap::new();
        for i in 0..st.data.n {
            for e in st.data.profile(i, 0).external_ids {
                if let (Some(t), Some(v)) = (e["type"].as_str(), e["id"].as_str()) {
                    m.entry(format!("{t}:{v}")).or_default().push(i);
                }
            }
        }
        m
    })
}

/// `include=a,b` as a set of names (None: everything).
fn include(q: &HashMap<String, String>) -> Option<Vec<String>> {
    q.get("include")
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_string).collect())
}

/// Traits are paged by trait name, as Segment documents (`next: "browser"`):
/// the cursor is the name of the first trait of the next page.
pub async fn traits(
    State(st): State<Arc<AppState>>,
    Path((space, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = match lookup(&st, &space, &id) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if st.opts.winners_last && !q.contains_key("next") {
        let versions = st.versions.read().map(|v| v.clone()).unwrap_or_default();
        if st.data.wins_shared(p.index, &versions) {
            let wait = (st.opts.latency_ms * 4).max(300);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
    }
    let limit = match q.get("limit") {
        None => 10,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    "limit must be an integer between 1 and 200",
                )
            }
        },
    };
    let wanted = include(&q);
    let all: Vec<(String, Value)> = p
        .traits
        .into_iter()
        .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.contains(k)))
        .collect();
    let start = match q.get("next").filter(|s| !s.is_empty()) {
        None => 0,
        Some(name) => match all.iter().position(|(k, _)| k == name) {
            Some(i) => i,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    "invalid cursor",
                )
            }
        },
    };
    let end = (start + limit).min(all.len());
    let has_more = end < all.len();
    let next = if has_more {
        all[end].0.clone()
    } else {
        String::new()
    };
    let page: Map<String, Value> = all[start..end].iter().cloned().collect();
    let path = format!("/v1/spaces/{space}/collections/users/profiles/{id}/traits");
    if st.opts.misbehave == Some(Misbehave::EndlessCursor) {
        let first = page.keys().next().cloned().unwrap_or_default();
        return Json(
            json!({"traits": page, "cursor": {"url": path, "has_more": true, "next": first}}),
        )
        .into_response();
    }
    let url = if has_more {
        format!("{path}?limit={limit}&next={next}")
    } else {
        String::new()
    };
    Json(json!({"traits": page, "cursor": {"url": url, "has_more": has_more, "next": next}}))
        .into_response()
}

pub async fn external_ids(
    State(st): State<Arc<AppState>>,
    Path((space, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = match lookup(&st, &space, &id) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (limit, offset) = match paging(&q, "e", 100) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let wanted = include(&q);
    let ids: Vec<Value> = p
        .external_ids
        .into_iter()
        .filter(|e| {
            wanted.as_ref().is_none_or(|w| {
                e.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| w.iter().any(|x| x == t))
            })
        })
        .collect();
    let total = ids.len();
    let end = (offset + limit).min(total);
    let page: Vec<Value> = ids
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .collect();
    let path = format!("/v1/spaces/{space}/collections/users/profiles/{id}/external_ids");
    Json(json!({"data": page, "cursor": cursor_json(&path, "e", limit, end, total)}))
        .into_response()
}
