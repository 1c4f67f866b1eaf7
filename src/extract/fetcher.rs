//! Fetching one listed profile into a `profiles.ndjson` record: external ids
//! first (only the types that can become `source_id`), then, only for a
//! profile that has one, its traits (only those the mapping reads). Most
//! profiles of a real space are anonymous: they cost one request, not two,
//! and no personal data that nothing uses is copied. `--all-traits` asks for
//! everything, both lists together. A listed profile is named by its segment
//! id; one from `--ids FILE` by the external id it was listed by (the
//! documented route).

use super::hedge::Hedge;
use crate::api::segment::{Lookup, Name, SegmentClient};
use crate::error::ApiError;
use crate::records::ProfileRecord;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A fetch's outcome, with the listing page it belongs to.
pub struct Fetched {
    pub page: u64,
    pub segment_id: String,
    /// Gone: Segment answered 404, saying so.
    pub outcome: Result<Lookup<ProfileRecord>, ApiError>,
    /// The ids read before the traits, when this is the traits' read (the
    /// census counted the profile with them; a 404 takes it out).
    pub read_ids: Option<Vec<Value>>,
}

/// One step of a profile's fetch: its external ids, then (only for a
/// profile that has a `source_id` type) its traits.
pub enum Step {
    /// The ids are read and name a `source_id` type: the traits come next.
    Ids {
        page: u64,
        entry: Map<String, Value>,
        ids: Vec<Value>,
    },
    /// The profile is read whole (or gone, or failed).
    Done(Box<Fetched>),
}

pub fn segment_id(entry: &Map<String, Value>) -> &str {
    entry
        .get("segment_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn updated_at(entry: &Map<String, Value>) -> &str {
    entry
        .get("metadata")
        .and_then(|m| m.get("updated_at"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// What to ask Segment for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// External-id types that can become `source_id`, in fallback order.
    pub id_types: Vec<String>,
    /// The traits the mapping reads (top level).
    pub traits: Vec<String>,
    /// Every trait and every external id (`--all-traits`).
    pub everything: bool,
    /// Profiles are named by an external id (`--ids FILE`: the entry's
    /// `segment_id` holds `TYPE:VALUE`), not by a listed segment id.
    pub by_external_id: bool,
}

impl Wanted {
    /// How a lookup names the profile of a listing entry with this id.
    pub fn name<'a>(&self, id: &'a str) -> Name<'a> {
        if self.by_external_id {
            Name::External(id)
        } else {
            Name::Listed(id)
        }
    }

    fn ids_include(&self) -> Option<String> {
        (!self.everything).then(|| self.id_types.join(","))
    }

    fn traits_include(&self) -> Option<String> {
        (!self.everything).then(|| self.traits.join(","))
    }

    fn identified(&self, ids: &[Value]) -> bool {
        ids.iter().any(|e| {
            e.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| self.id_types.iter().any(|w| w == t))
        })
    }
}

/// The first step: the profile's external ids (with `--all-traits`, both
/// lists at once, and the profile is done).
pub fn fetch_ids(
    client: Arc<SegmentClient>,
    wanted: Arc<Wanted>,
    hedge: Arc<Hedge>,
    page: u64,
    entry: Map<String, Value>,
) -> BoxFuture<'static, Step> {
    Box::pin(async move {
        let id = segment_id(&entry).to_string();
        let done = |outcome| {
            Step::Done(Box::new(Fetched {
                page,
                segment_id: id.clone(),
                outcome,
                read_ids: None,
            }))
        };
        let name = wanted.name(&id);
        if wanted.everything {
            let (t, e) = tokio::join!(
                client.all_traits(name, None),
                client.all_external_ids(name, None)
            );
            return done(match (t, e) {
                (Ok(Lookup::Found(t)), Ok(Lookup::Found(e))) => {
                    Ok(Lookup::Found(record(entry, t, e)))
                }
                (Err(err), _) | (_, Err(err)) => Err(err),
                (Ok(Lookup::Gone(m)), _) | (_, Ok(Lookup::Gone(m))) => Ok(Lookup::Gone(m)),
            });
        }
        let include = wanted.ids_include();
        match hedge
            .read(|| client.all_external_ids(name, include.as_deref()))
            .await
        {
            Err(e) => done(Err(e)),
            Ok(Lookup::Gone(m)) => done(Ok(Lookup::Gone(m))),
            Ok(Lookup::Found(ids)) if !wanted.identified(&ids) => {
                done(Ok(Lookup::Found(record(entry, Map::new(), ids))))
            }
            Ok(Lookup::Found(ids)) => Step::Ids { page, entry, ids },
        }
    })
}

/// The second step: the traits of a profile whose ids name a `source_id`
/// type (only those the mapping reads).
pub fn fetch_traits(
    client: Arc<SegmentClient>,
    wanted: Arc<Wanted>,
    hedge: Arc<Hedge>,
    (page, entry, ids): (u64, Map<String, Value>, Vec<Value>),
) -> BoxFuture<'static, Step> {
    Box::pin(async move {
        let id = segment_id(&entry).to_string();
        let include = wanted.traits_include();
        let name = wanted.name(&id);
        let outcome = hedge
            .read(|| client.all_traits(name, include.as_deref()))
            .await;
        let read_ids = Some(ids.clone());
        let outcome = outcome.map(|t| match t {
            Lookup::Found(t) => Lookup::Found(record(entry, t, ids)),
            Lookup::Gone(m) => Lookup::Gone(m),
        });
        Step::Done(Box::new(Fetched {
            page,
            segment_id: id,
            outcome,
            read_ids,
        }))
    })
}

/// One profile line: the listing entry's fields, then all traits and ids.
pub fn record(
    mut entry: Map<String, Value>,
    traits: Map<String, Value>,
    external_ids: Vec<Value>,
) -> ProfileRecord {
    let segment_id = entry
        .remove("segment_id")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let metadata = entry.remove("metadata").unwrap_or(Value::Null);
    ProfileRecord {
        segment_id,
        metadata,
        traits,
        external_ids,
        extra: entry,
    }
}
