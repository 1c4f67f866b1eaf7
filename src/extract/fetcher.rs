//! Fetching one listed profile into a `profiles.ndjson` record: external ids
//! first (only the types that can become `source_id`), then, only for a
//! profile that has one, its traits (only those the mapping reads). Most
//! profiles of a real space are anonymous: they cost one request, not two,
//! and no personal data that nothing uses is copied. `--all-traits` asks for
//! everything, both lists together.

use super::hedge::Hedge;
use crate::api::segment::SegmentClient;
use crate::error::ApiError;
use crate::records::ProfileRecord;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A fetch's outcome, with the listing page it belongs to.
pub struct Fetched {
    pub page: u64,
    pub segment_id: String,
    /// None: the profile is gone (404).
    pub outcome: Result<Option<ProfileRecord>, ApiError>,
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
}

impl Wanted {
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

pub fn fetch(
    client: Arc<SegmentClient>,
    wanted: Arc<Wanted>,
    hedge: Arc<Hedge>,
    page: u64,
    entry: Map<String, Value>,
) -> BoxFuture<'static, Fetched> {
    Box::pin(async move {
        let id = segment_id(&entry).to_string();
        let outcome = if wanted.everything {
            let (t, e) = tokio::join!(
                client.all_traits(&id, None),
                client.all_external_ids(&id, None)
            );
            match (t, e) {
                (Ok(Some(t)), Ok(Some(e))) => Ok(Some(record(entry, t, e))),
                (Err(err), _) | (_, Err(err)) => Err(err),
                _ => Ok(None),
            }
        } else {
            fetch_identified(&client, &wanted, &hedge, &id, entry).await
        };
        Fetched {
            page,
            segment_id: id,
            outcome,
        }
    })
}

async fn fetch_identified(
    client: &SegmentClient,
    wanted: &Wanted,
    hedge: &Hedge,
    id: &str,
    entry: Map<String, Value>,
) -> Result<Option<ProfileRecord>, ApiError> {
    let include = wanted.ids_include();
    let Some(ids) = hedge
        .read(|| client.all_external_ids(id, include.as_deref()))
        .await?
    else {
        return Ok(None);
    };
    if !wanted.identified(&ids) {
        return Ok(Some(record(entry, Map::new(), ids)));
    }
    let include = wanted.traits_include();
    Ok(hedge
        .read(|| client.all_traits(id, include.as_deref()))
        .await?
        .map(|t| record(entry, t, ids)))
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
