//! Fetching one listed profile: every page of its traits and of its external
//! ids, the two lists together, made into a `profiles.ndjson` record.

use crate::error::ApiError;
use crate::records::ProfileRecord;
use crate::segment::SegmentClient;
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

pub fn fetch(
    client: Arc<SegmentClient>,
    page: u64,
    entry: Map<String, Value>,
) -> BoxFuture<'static, Fetched> {
    Box::pin(async move {
        let id = segment_id(&entry).to_string();
        let (t, e) = tokio::join!(client.all_traits(&id), client.all_external_ids(&id));
        let outcome = match (t, e) {
            (Ok(Some(t)), Ok(Some(e))) => Ok(Some(record(entry, t, e))),
            (Err(err), _) | (_, Err(err)) => Err(err),
            _ => Ok(None),
        };
        Fetched {
            page,
            segment_id: id,
            outcome,
        }
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
