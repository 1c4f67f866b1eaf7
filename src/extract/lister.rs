//! The listing: a task of its own that walks the profile list page by page
//! (each page needs the previous cursor) and runs up to `lookahead` pages
//! ahead of the fetches. It stops with a contract error instead of looping
//! forever when the API repeats a page or a cursor, or keeps answering empty
//! pages that claim more.

use crate::api::segment::{ProfilePage, SegmentClient, STALE_PAGES};
use crate::error::ApiError;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;

/// A listed page and the cursor of the page after it (None: it was the last).
pub type Listed = Result<(ProfilePage, Option<String>), ApiError>;

fn contract(message: &str) -> ApiError {
    ApiError::contract("Segment", "GET profiles", message)
}

/// Start listing at `cursor` (None: the first page).
pub fn spawn(
    client: Arc<SegmentClient>,
    mut cursor: Option<String>,
    lookahead: usize,
) -> (JoinHandle<()>, Receiver<Listed>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Listed>(lookahead);
    let task = tokio::spawn(async move {
        let mut seen_cursors: HashSet<String> = HashSet::new();
        let mut last_ids: Vec<String> = Vec::new();
        let mut empty_pages = 0u32;
        // The profiles this pass handed over, and the pages in a row that
        // brought none new: a listing that cycles through the same pages
        // under new cursor strings would never end.
        let mut listed: HashSet<u128> = HashSet::new();
        let mut stale = 0usize;
        loop {
            let page = match client.list_profiles(cursor.as_deref()).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let ids: Vec<String> = page
                .profiles
                .iter()
                .filter_map(|p| {
                    p.get("segment_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect();
            if !ids.is_empty() && ids == last_ids {
                let _ = tx
                    .send(Err(contract("a listing page repeats the previous page")))
                    .await;
                return;
            }
            if ids.is_empty() && page.cursor.has_more {
                empty_pages += 1;
                if empty_pages >= 3 {
                    let _ = tx.send(Err(contract("the listing returns empty pages but says it has more (it would never end)"))).await;
                    return;
                }
            } else {
                empty_pages = 0;
            }
            let new = ids
                .iter()
                .filter(|id| listed.insert(crate::keys::h128(id)))
                .count();
            stale = if new > 0 || ids.is_empty() {
                0
            } else {
                stale + 1
            };
            if stale >= STALE_PAGES {
                let _ = tx
                    .send(Err(contract(&format!(
                        "{stale} pages in a row gave only profiles this pass listed already, under new cursors (the listing would never end)"
                    ))))
                    .await;
                return;
            }
            last_ids = ids;
            let next = if page.cursor.has_more {
                page.cursor.next.clone()
            } else {
                None
            };
            if let Some(n) = &next {
                if !seen_cursors.insert(n.clone()) {
                    let _ = tx
                        .send(Err(contract(
                            "the listing cursor repeats (the list would never end)",
                        )))
                        .await;
                    return;
                }
            }
            let done = next.is_none();
            if tx.send(Ok((page, next.clone()))).await.is_err() || done {
                return;
            }
            cursor = next;
        }
    });
    (task, rx)
}
