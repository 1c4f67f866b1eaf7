//! Client for Segment's Profile API (Unify): list profiles, and every page of
//! a profile's traits and external ids. All requests go through the shared
//! [`HttpLayer`], so one token bucket covers every Segment request.

use crate::api::http::{path_segment, HttpLayer, HttpSettings, RawResponse, RetryLogic};
use crate::config::SegmentConfig;
use crate::error::ApiError;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Page sizes: the documented maxima, so a profile costs as few requests as it can.
pub const PROFILES_LIMIT: u32 = 100;
pub const TRAITS_LIMIT: u32 = 200;
pub const EXTERNAL_IDS_LIMIT: u32 = 100;

/// A profile's traits or ids list that has not ended after this many pages
/// (200,000 traits) is treated as broken rather than followed forever.
const MAX_PAGES: usize = 1_000;

/// Pages in a row that bring nothing new (every trait or id already read)
/// stop a list as broken: a cursor that cycles under new strings would
/// never end.
pub const STALE_PAGES: usize = 10;

struct SegmentLogic;

impl RetryLogic for SegmentLogic {
    fn api(&self) -> &'static str {
        "Segment"
    }
    fn error_message(&self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let e = v.get("error")?;
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        match e.get("code").and_then(Value::as_str) {
            Some(code) => Some(format!("{code}: {msg}")),
            None => Some(msg.to_string()),
        }
    }
}

/// Paging state of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub has_more: bool,
    pub next: Option<String>,
}

/// One page of the profile listing: raw entries (`segment_id`, `metadata`, and
/// whatever else the API returns).
#[derive(Debug)]
pub struct ProfilePage {
    pub profiles: Vec<Map<String, Value>>,
    pub cursor: Cursor,
}

pub struct SegmentClient {
    http: HttpLayer,
    cfg: SegmentConfig,
    base: String,
    /// How a listed profile is named in a lookup: [`PREFIXED`] until the
    /// space answers only the bare id, then [`BARE`].
    form: std::sync::atomic::AtomicU8,
}

/// `segment_id:use_…`: undocumented, but what the listing's ids need in
/// most spaces.
pub const PREFIXED: u8 = 0;
/// `use_…`: the bare id, as the docs' own cursor URLs name a profile.
pub const BARE: u8 = 1;

/// How a lookup names a profile.
#[derive(Debug, Clone, Copy)]
pub enum Name<'a> {
    /// A listed profile, by its segment id.
    Listed(&'a str),
    /// By an external id, `TYPE:VALUE` (`user_id:u1`): the documented route.
    External(&'a str),
}

/// A lookup Segment answered 404: what was asked and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub asked: String,
    pub answered: String,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<T> {
    Found(T),
    /// Segment answered 404 (to both forms, for a listed profile).
    Gone(Missing),
}

impl SegmentClient {
    pub fn new(cfg: SegmentConfig, settings: HttpSettings) -> anyhow::Result<SegmentClient> {
        let base = format!(
            "{}/v1/spaces/{}/collections/users/profiles",
            cfg.api_url.as_str().trim_end_matches('/'),
            path_segment(&cfg.space_id)
        );
        Ok(SegmentClient {
            http: HttpLayer::new(settings)?,
            cfg,
            base,
            form: std::sync::atomic::AtomicU8::new(PREFIXED),
        })
    }

    pub fn stats(&self) -> &crate::api::http::HttpStats {
        &self.http.stats
    }

    async fn get(
        &self,
        path: &str,
        limit: u32,
        next: Option<&str>,
        include: Option<&str>,
    ) -> Result<(RawResponse, Value), ApiError> {
        let url = format!("{}{}", self.base, path);
        let endpoint = format!(
            "GET /v1/spaces/{}/collections/users/profiles{}",
            self.cfg.space_id, path
        );
        let limit = limit.to_string();
        let resp = self
            .http
            .send(&endpoint, &SegmentLogic, |c| {
                let mut q: Vec<(&str, &str)> = vec![("limit", limit.as_str())];
                if let Some(n) = next {
                    q.push(("next", n));
                }
                if let Some(i) = include {
                    q.push(("include", i));
                }
                c.get(&url)
                    .query(&q)
                    .basic_auth(self.cfg.token.expose(), Some(""))
                    .header("accept", "application/json")
            })
            .await?;
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| ApiError::Contract {
            api: "Segment",
            endpoint: endpoint.clone(),
            message: format!("body is not JSON ({e})"),
        })?;
        Ok((resp, v))
    }

    /// One page of the profile listing.
    pub async fn list_profiles(&self, next: Option<&str>) -> Result<ProfilePage, ApiError> {
        let (_, v) = self.get("", PROFILES_LIMIT, next, None).await?;
        let endpoint = "GET profiles";
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::contract("Segment", endpoint, "no `data` array"))?;
        if data.len() > PROFILES_LIMIT as usize {
            return Err(ApiError::contract(
                "Segment",
                endpoint,
                &format!(
                    "a page of {} profiles, where at most {PROFILES_LIMIT} were asked for",
                    data.len()
                ),
            ));
        }
        let mut profiles = Vec::with_capacity(data.len());
        for p in data {
            let obj = p.as_object().ok_or_else(|| {
                ApiError::contract("Segment", endpoint, "a `data` entry is not an object")
            })?;
            match obj.get("segment_id") {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => {
                    return Err(ApiError::contract(
                        "Segment",
                        endpoint,
                        "a profile has no `segment_id`",
                    ))
                }
            }
            profiles.push(obj.clone());
        }
        Ok(ProfilePage {
            profiles,
            cursor: cursor(&v, endpoint)?,
        })
    }

    /// The form listed profiles are named in now ([`PREFIXED`], [`BARE`]).
    pub fn form(&self) -> u8 {
        self.form.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The path of a lookup (`what`: `traits`, `external_ids`).
    fn path_of(name: Name<'_>, form: u8, what: &str) -> String {
        match name {
            Name::Listed(id) if form == BARE => format!("/{}/{what}", path_segment(id)),
            Name::Listed(id) => format!("/segment_id:{}/{what}", path_segment(id)),
            Name::External(key) => {
                let (ty, value) = key.split_once(':').unwrap_or(("", key));
                format!("/{}:{}/{what}", path_segment(ty), path_segment(value))
            }
        }
    }

    /// Every page of one of a profile's lists. A listed profile is asked
    /// for in the form the space answers: when one form answers 404, the
    /// other is asked once, and the one that answers is kept for every
    /// later lookup (the `segment_id:` prefix is undocumented; the bare id
    /// is the docs' own). Gone when every form it was asked in answers 404.
    async fn lookup(
        &self,
        name: Name<'_>,
        what: &str,
        limit: u32,
        include: Option<&str>,
        mut take: impl FnMut(Value, &str) -> Result<bool, ApiError>,
    ) -> Result<Lookup<()>, ApiError> {
        use std::sync::atomic::Ordering;
        let form = self.form();
        let first = Self::path_of(name, form, what);
        let Some(missing) = self.each_page(&first, limit, include, &mut take).await? else {
            return Ok(Lookup::Found(()));
        };
        if matches!(name, Name::External(_)) {
            return Ok(Lookup::Gone(missing));
        }
        let other = if form == BARE { PREFIXED } else { BARE };
        let second = Self::path_of(name, other, what);
        match self.each_page(&second, limit, include, &mut take).await? {
            Some(_) => Ok(Lookup::Gone(missing)),
            None => {
                if self
                    .form
                    .compare_exchange(form, other, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    crate::ui::info(format!(
                        "extract: Segment answered `{}` but 404 to `{}`: the space's lookups are asked in that form from now on",
                        second, first
                    ));
                }
                Ok(Lookup::Found(()))
            }
        }
    }

    /// Every page of a profile's traits, merged in API order; only the
    /// traits named in `include` when given (Segment's `include=`).
    pub async fn all_traits(
        &self,
        name: Name<'_>,
        include: Option<&str>,
    ) -> Result<Lookup<Map<String, Value>>, ApiError> {
        let mut traits = Map::new();
        let found = self
            .lookup(name, "traits", TRAITS_LIMIT, include, |mut v, endpoint| {
                let Some(Value::Object(page)) = v.get_mut("traits").map(Value::take) else {
                    return Err(ApiError::contract(
                        "Segment",
                        endpoint,
                        "no `traits` object",
                    ));
                };
                over_limit(page.len(), TRAITS_LIMIT, "traits", endpoint)?;
                let new = page.keys().any(|k| !traits.contains_key(k));
                traits.extend(page);
                Ok(new)
            })
            .await?;
        Ok(match found {
            Lookup::Found(()) => Lookup::Found(traits),
            Lookup::Gone(m) => Lookup::Gone(m),
        })
    }

    /// Every page of a profile's external ids, in API order; only the types
    /// named in `include` when given.
    pub async fn all_external_ids(
        &self,
        name: Name<'_>,
        include: Option<&str>,
    ) -> Result<Lookup<Vec<Value>>, ApiError> {
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        let found = self
            .lookup(
                name,
                "external_ids",
                EXTERNAL_IDS_LIMIT,
                include,
                |mut v, endpoint| {
                    let Some(Value::Array(page)) = v.get_mut("data").map(Value::take) else {
                        return Err(ApiError::contract("Segment", endpoint, "no `data` array"));
                    };
                    over_limit(page.len(), EXTERNAL_IDS_LIMIT, "external ids", endpoint)?;
                    let mut new = false;
                    for e in &page {
                        new |= seen.insert(format!("{}:{}", e["type"], e["id"]));
                    }
                    ids.extend(page);
                    Ok(new)
                },
            )
            .await?;
        Ok(match found {
            Lookup::Found(()) => Lookup::Found(ids),
            Lookup::Gone(m) => Lookup::Gone(m),
        })
    }

    /// Follow a list's cursor to its end, handing each page to `take` (by
    /// value: its traits and ids move out, nothing is copied).
    /// Returns what was asked and answered if the first page is a 404.
    async fn each_page(
        &self,
        path: &str,
        limit: u32,
        include: Option<&str>,
        take: &mut impl FnMut(Value, &str) -> Result<bool, ApiError>,
    ) -> Result<Option<Missing>, ApiError> {
        let mut next: Option<String> = None;
        let mut seen = HashSet::new();
        let mut stale = 0usize;
        for page in 0..MAX_PAGES {
            let (_, v) = match self.get(path, limit, next.as_deref(), include).await {
                Ok(r) => r,
                Err(e) if e.status() == Some(404) && page == 0 => {
                    return Ok(Some(Missing {
                        asked: format!("GET {path}"),
                        answered: e.to_string(),
                    }))
                }
                Err(e) => return Err(e),
            };
            let c = cursor(&v, path)?;
            let new = take(v, path)?;
            if !c.has_more {
                return Ok(None);
            }
            stale = if new || page == 0 { 0 } else { stale + 1 };
            if stale >= STALE_PAGES {
                return Err(ApiError::contract(
                    "Segment",
                    path,
                    &format!("{stale} pages in a row brought nothing new under new cursors (the list would never end)"),
                ));
            }
            let n = c.next.ok_or_else(|| {
                ApiError::contract("Segment", path, "`has_more` is true but `next` is empty")
            })?;
            if !seen.insert(n.clone()) {
                return Err(ApiError::contract(
                    "Segment",
                    path,
                    "the cursor repeats a page already read (the list would never end)",
                ));
            }
            next = Some(n);
        }
        Err(ApiError::contract(
            "Segment",
            path,
            &format!("the list did not end after {MAX_PAGES} pages"),
        ))
    }
}

/// A page longer than the `limit` asked for breaks the contract.
fn over_limit(n: usize, limit: u32, what: &str, endpoint: &str) -> Result<(), ApiError> {
    if n > limit as usize {
        return Err(ApiError::contract(
            "Segment",
            endpoint,
            &format!("a page of {n} {what}, where at most {limit} were asked for"),
        ));
    }
    Ok(())
}

/// Read the `cursor` object of a list answer.
pub fn cursor(v: &Value, endpoint: &str) -> Result<Cursor, ApiError> {
    let c = v
        .get("cursor")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::contract("Segment", endpoint, "no `cursor` object"))?;
    let has_more = c.get("has_more").and_then(Value::as_bool).ok_or_else(|| {
        ApiError::contract("Segment", endpoint, "`cursor.has_more` is not a boolean")
    })?;
    let next = c
        .get("next")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if has_more && next.is_none() {
        return Err(ApiError::contract(
            "Segment",
            endpoint,
            "`has_more` is true but `next` is empty",
        ));
    }
    Ok(Cursor { has_more, next })
}
