//! `extract --ids FILE`: profiles read through the documented per-profile
//! routes only (`{base}/TYPE:VALUE/external_ids`, then `…/traits`), from a
//! list of external ids made elsewhere: a warehouse query, an audience
//! export. Segment documents no route that lists a space's profiles (the
//! listing extract walks otherwise was removed from its docs), so this is
//! the path that rests on nothing undocumented.
//!
//! The file is a CSV whose header names the id type in its first column
//! (`user_id`, `email`, or any external id type), with an optional
//! `updated_at` column (the profile's last update, as a warehouse knows it:
//! it lets `--incremental` reuse an unchanged profile and transform pick
//! between two profiles of one customer); or, with `--id-type TYPE`, one
//! bare column of ids without a header. It is handed to the scheduler as
//! the listing is, in pages of 100 with a cursor each, so a killed run
//! resumes at the first page not fully written, and a profile costs at most
//! one external-ids call and one traits call. A profile's line names it by
//! the id it was read by (`segment_id`: `user_id:u1`; the lookups do not
//! give Segment's own id). An id Segment does not know is named in
//! `profiles.missing.csv`, not counted as an error.

use super::lister::Listed;
use crate::api::segment::{Cursor, ProfilePage, PROFILES_LIMIT};
use crate::error::UsageError;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;

/// The ids of a `--ids` file, read whole and checked.
pub struct IdsFile {
    /// The external id type every row is looked up by.
    pub id_type: String,
    /// Each row: the id, and its `updated_at` when the file has one.
    rows: Vec<(String, Option<String>)>,
    /// What the checkpoint records of the file (type and content), so a
    /// resume reads the same list.
    pub source: String,
}

/// An external id type as Segment spells one: letters, digits, `_`, `-`.
fn plausible_type(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl IdsFile {
    /// Read and check `path`: every row an id, named by file and line when
    /// it is not one.
    pub fn open(path: &Path, id_type: Option<&str>) -> Result<IdsFile> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = path.display().to_string();
        let bad = |line: u64, why: String| -> anyhow::Error {
            UsageError::new(format!("{file}:{line}: {why}")).into()
        };
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(id_type.is_none())
            .flexible(false)
            .from_reader(&bytes[..]);
        let (ty, updated_col) = match id_type {
            Some(t) => (t.to_string(), None),
            None => {
                let h = rdr
                    .headers()
                    .map_err(|e| bad(1, format!("not a CSV header ({e})")))?;
                let names: Vec<String> = h
                    .iter()
                    .map(|c| c.trim_start_matches('\u{feff}').to_string())
                    .collect();
                let updated = names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case("updated_at"));
                let others: Vec<&String> = (names.iter().enumerate())
                    .filter(|(i, _)| Some(*i) != updated)
                    .map(|(_, n)| n)
                    .collect();
                match others.as_slice() {
                    [t] if updated != Some(0) => (t.to_string(), updated),
                    _ => return Err(bad(1, format!(
                        "the header must name one id type in the first column (user_id, email, or another external id type), and may add updated_at; found {names:?} (or give --id-type TYPE for one bare column of ids)"
                    ))),
                }
            }
        };
        if !plausible_type(&ty) {
            return Err(bad(
                1,
                format!("{ty:?} is not an external id type (letters, digits, _ and -)"),
            ));
        }
        let mut rows = Vec::new();
        for (n, rec) in rdr.records().enumerate() {
            let line = n as u64 + if id_type.is_none() { 2 } else { 1 };
            let rec = rec.map_err(|e| bad(line, format!("not a CSV row ({e})")))?;
            let id = rec.get(0).unwrap_or("");
            if id.is_empty() {
                return Err(bad(line, "an empty id".into()));
            }
            if id.trim() != id {
                return Err(bad(
                    line,
                    format!(
                        "{id:?} has white space at its start or end (segsync never trims an id)"
                    ),
                ));
            }
            let updated = updated_col
                .and_then(|c| rec.get(c))
                .filter(|u| !u.is_empty());
            if let Some(u) = updated {
                crate::dates::parse_timestamp(u).ok_or_else(|| {
                    bad(line, format!("updated_at {u:?} is not an ISO-8601 time"))
                })?;
            }
            rows.push((id.to_string(), updated.map(str::to_string)));
        }
        let hash = twox_hash::XxHash3_128::oneshot(&bytes);
        Ok(IdsFile {
            source: format!("ids:{ty}:{hash:032x}"),
            id_type: ty,
            rows,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The page of entries from row `from`, and the cursor after it.
    fn page(&self, from: usize) -> (ProfilePage, Option<String>) {
        let end = (from + PROFILES_LIMIT as usize).min(self.rows.len());
        let profiles = self.rows[from.min(end)..end]
            .iter()
            .map(|(id, updated)| {
                let mut e = Map::new();
                e.insert("segment_id".into(), json!(format!("{}:{id}", self.id_type)));
                let mut meta = Map::new();
                if let Some(u) = updated {
                    meta.insert("updated_at".into(), Value::String(u.clone()));
                }
                e.insert("metadata".into(), Value::Object(meta));
                e
            })
            .collect();
        let next = (end < self.rows.len()).then(|| format!("row:{end}"));
        let cursor = Cursor {
            has_more: next.is_some(),
            next: next.clone(),
        };
        (ProfilePage { profiles, cursor }, next)
    }
}

/// Hand the file's pages over as the listing task does, from `cursor`
/// (`row:N`; None: the first row).
pub fn spawn(
    ids: Arc<IdsFile>,
    cursor: Option<String>,
    lookahead: usize,
) -> (JoinHandle<()>, Receiver<Listed>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Listed>(lookahead);
    let mut at: usize = cursor
        .as_deref()
        .and_then(|c| c.strip_prefix("row:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let task = tokio::spawn(async move {
        loop {
            let (page, next) = ids.page(at);
            let done = next.is_none();
            if tx.send(Ok((page, next))).await.is_err() || done {
                return;
            }
            at = (at + PROFILES_LIMIT as usize).min(ids.len());
        }
    });
    (task, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ids.csv");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn a_header_names_the_type_and_updated_at_may_follow() {
        let (_d, p) = file("user_id,updated_at\nu1,2024-01-02T03:04:05Z\nu2,\n");
        let f = IdsFile::open(&p, None).unwrap();
        assert_eq!(f.id_type, "user_id");
        let (page, next) = f.page(0);
        assert_eq!(next, None);
        assert_eq!(page.profiles[0]["segment_id"], "user_id:u1");
        assert_eq!(
            page.profiles[0]["metadata"]["updated_at"],
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(page.profiles[1]["metadata"], json!({}));
    }

    #[test]
    fn a_bare_column_with_id_type_and_pages_of_a_hundred() {
        let text: String = (0..250).map(|i| format!("a{i}@x.co\n")).collect();
        let (_d, p) = file(&text);
        let f = IdsFile::open(&p, Some("email")).unwrap();
        assert_eq!(f.len(), 250);
        let (page, next) = f.page(200);
        assert_eq!(page.profiles.len(), 50);
        assert_eq!(page.profiles[0]["segment_id"], "email:a200@x.co");
        assert_eq!(next, None);
        assert_eq!(f.page(0).1.as_deref(), Some("row:100"));
    }

    #[test]
    fn bad_rows_are_named_by_file_and_line() {
        for (text, line, words) in [
            ("user_id\nu1\n\n", 0, ""),
            ("user_id,email\nu1,e\n", 1, "one id type"),
            ("user id\nu1\n", 1, "not an external id type"),
            ("user_id\nu1\n u2\n", 3, "white space"),
            ("user_id,updated_at\nu1,yesterday\n", 2, "not an ISO-8601"),
        ] {
            let (_d, p) = file(text);
            match IdsFile::open(&p, None) {
                Ok(_) => assert_eq!(line, 0, "{text:?} was read"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains(&format!("ids.csv:{line}: ")) && e.contains(words),
                        "{e}"
                    );
                }
            }
        }
    }
}
