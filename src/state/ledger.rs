//! `load.ledger.ndjson`: what load sent and what Voucherify confirmed.
//!
//! Append-only, one JSON event a line, each written whole in one `write`.
//! Every `load` opens it with an `opened` event that carries the format
//! version. Reading trusts only complete lines: a torn last line (a run killed
//! mid-write) is reported by [`read`] and left in place; only `load`, the
//! file's owner, cuts it, on its own start ([`repair`]).

use crate::files;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Mutex;

pub const VERSION: u32 = 3;

/// A customer in a batch: who, with which content, from which CSV line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CustomerRepr")]
pub struct LedgerCustomer {
    pub source_id: String,
    /// Hex SHA-256 (128 bits) of the request body sent for this customer.
    pub hash: String,
    /// Line of the customers CSV the row came from.
    pub line: u64,
    /// The profile the row came from (`segment_id`), when the file says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<String>,
    /// The fields the row gives Voucherify (`name`, `address.city`,
    /// `metadata.tier`): what segsync set, so what `--clear-removed` may
    /// clear. Absent in lines from before plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// The fields this request cleared (sent as null): segsync no longer
    /// holds them set. Absent when it cleared none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Vec<String>>,
}

/// Version 1 wrote customers as `[source_id, hash, line]`; both spellings read.
#[derive(Deserialize)]
#[serde(untagged)]
enum CustomerRepr {
    Named {
        source_id: String,
        hash: String,
        line: u64,
        #[serde(default)]
        segment_id: Option<String>,
        #[serde(default)]
        fields: Option<Vec<String>>,
        #[serde(default)]
        cleared: Option<Vec<String>>,
    },
    Tuple(String, String, u64),
}

impl From<CustomerRepr> for LedgerCustomer {
    fn from(r: CustomerRepr) -> Self {
        match r {
            CustomerRepr::Named {
                source_id,
                hash,
                line,
                segment_id,
                fields,
                cleared,
            } => LedgerCustomer {
                source_id,
                hash,
                line,
                segment_id,
                fields,
                cleared,
            },
            CustomerRepr::Tuple(source_id, hash, line) => LedgerCustomer {
                source_id,
                hash,
                line,
                segment_id: None,
                fields: None,
                cleared: None,
            },
        }
    }
}

/// One line of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LedgerEvent {
    /// A load started appending.
    Opened {
        at: String,
        target: String,
        version: u32,
    },
    Submitted {
        at: String,
        target: String,
        async_action_id: String,
        /// `import` for a CSV import (its file is `file`); bulk when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        /// In request order: for an import, row N of the file is customer N.
        customers: Vec<LedgerCustomer>,
    },
    Confirmed {
        at: String,
        target: String,
        async_action_id: String,
        status: String,
        done: Vec<LedgerCustomer>,
        failed: Vec<LedgerCustomer>,
        /// Voucherify's own time of the confirmation (the async action's
        /// `updated_at` when it finished), which a plan compares with an
        /// export's `updated_at`: one clock on both sides. Absent in lines
        /// before version 3, or when the action did not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vf_at: Option<String>,
        /// Voucherify's time the action was made (its `created_at`): every
        /// customer it changed was stamped after it, so a delta export
        /// asking for updates after an earlier time must hold them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vf_from: Option<String>,
    },
    /// A load's verification found that Voucherify does not hold what it
    /// confirmed: for each customer, the content (`hash`) no longer counts
    /// as confirmed, and `fields` (sent, not held as sent) and `cleared`
    /// (sent as null, still held) name what was not applied; the clears stay
    /// pending.
    Unverified {
        at: String,
        target: String,
        customers: Vec<LedgerCustomer>,
    },
    /// The action could not be found or failed as a whole: its customers will be resent.
    Abandoned {
        at: String,
        target: String,
        async_action_id: String,
        reason: String,
    },
}

impl LedgerEvent {
    fn target(&self) -> &str {
        match self {
            LedgerEvent::Opened { target, .. }
            | LedgerEvent::Submitted { target, .. }
            | LedgerEvent::Confirmed { target, .. }
            | LedgerEvent::Unverified { target, .. }
            | LedgerEvent::Abandoned { target, .. } => target,
        }
    }
}

/// What the ledger says about one Voucherify project.
#[derive(Debug, Default)]
pub struct LedgerState {
    /// Content keys ([`content_key`]) of customers Voucherify confirmed.
    pub confirmed: HashSet<u128>,
    pub confirmed_customers: u64,
    pub failed_customers: u64,
    /// Submitted, never confirmed: action id → customers, in submission order.
    pub pending: Vec<(String, Vec<LedgerCustomer>)>,
    /// `source_id`s of confirmed customers: the project holds them.
    pub confirmed_ids: HashSet<String>,
    pub batches: u64,
    /// Bytes of a torn last line (an interrupted write), not read.
    pub torn_tail: u64,
    /// Every project (API host and application id) the ledger has lines for.
    pub targets: std::collections::BTreeSet<String>,
    /// Outcomes of import files in order: None confirmed, Some(why) abandoned.
    pub import_outcomes: Vec<Option<String>>,
}

impl LedgerState {
    /// Why the last two import files failed, when both failed the same way.
    pub fn repeated_import_failure(&self) -> Option<&str> {
        match self.import_outcomes.as_slice() {
            [.., Some(a), Some(b)] if a == b => Some(a),
            _ => None,
        }
    }
}

/// The 128-bit key of a content hash, as kept in memory.
pub fn content_key(hex: &str) -> Option<u128> {
    u128::from_str_radix(hex.get(..32)?, 16).ok()
}

/// Read the ledger for `target` (every target when None). Changes nothing.
pub fn read(path: &Path, target: Option<&str>) -> Result<LedgerState> {
    let mut st = LedgerState::default();
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            BufReader::new(f)
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(st),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    st.torn_tail = (bytes.len() - complete) as u64;
    let mut pending: HashMap<String, (usize, Vec<LedgerCustomer>)> = HashMap::new();
    let mut imports: std::collections::HashSet<String> = Default::default();
    for (i, line) in bytes[..complete].lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: LedgerEvent = serde_json::from_str(&line).map_err(|e| {
            crate::error::UsageError::new(format!(
                "{}:{}: not a ledger line ({e}); the ledger was damaged (it is written by segsync only): restore it from a backup, or move it aside, in which case the next `segsync load` sends every row again",
                path.display(),
                i + 1
            ))
        })?;
        st.targets.insert(ev.target().to_string());
        if let LedgerEvent::Opened { version, .. } = &ev {
            if *version > VERSION {
                anyhow::bail!(
                    "{}:{}: ledger format {version} is newer than this segsync reads ({VERSION}); use a newer segsync",
                    path.display(),
                    i + 1
                );
            }
        }
        if target.is_some_and(|want| want != ev.target()) {
            continue;
        }
        match ev {
            LedgerEvent::Opened { .. } => {}
            LedgerEvent::Submitted {
                async_action_id,
                customers,
                method,
                ..
            } => {
                if method.as_deref() == Some("import") {
                    imports.insert(async_action_id.clone());
                }
                pending.insert(async_action_id, (i, customers));
            }
            LedgerEvent::Confirmed {
                async_action_id,
                done,
                failed,
                ..
            } => {
                pending.remove(&async_action_id);
                if imports.contains(&async_action_id) {
                    st.import_outcomes.push(None);
                }
                st.batches += 1;
                st.confirmed
                    .extend(done.iter().filter_map(|c| content_key(&c.hash)));
                st.confirmed_ids
                    .extend(done.iter().map(|c| c.source_id.clone()));
                st.confirmed_customers += done.len() as u64;
                st.failed_customers += failed.len() as u64;
            }
            LedgerEvent::Unverified { customers, .. } => {
                // Voucherify does not hold these as confirmed: sent again.
                for c in &customers {
                    if let Some(k) = content_key(&c.hash) {
                        st.confirmed.remove(&k);
                    }
                }
            }
            LedgerEvent::Abandoned {
                async_action_id,
                reason,
                ..
            } => {
                pending.remove(&async_action_id);
                if imports.contains(&async_action_id) {
                    // The message without the action's own id, to compare.
                    let why = reason
                        .split_once(": ")
                        .map_or(reason.as_str(), |(_, m)| m)
                        .to_string();
                    st.import_outcomes.push(Some(why));
                }
            }
        }
    }
    let mut pending: Vec<_> = pending.into_iter().collect();
    pending.sort_by_key(|(_, (line, _))| *line);
    st.pending = pending.into_iter().map(|(id, (_, c))| (id, c)).collect();
    Ok(st)
}

/// Cut a torn last line; for `load` alone, on its own start.
pub fn repair(path: &Path) -> Result<u64> {
    Ok(files::truncate_torn_tail(path)?.1)
}

/// Appends events, one complete line per write.
pub struct LedgerWriter {
    file: Mutex<std::fs::File>,
    pub target: String,
}

impl LedgerWriter {
    /// Open for appending and record that a load for `target` started.
    pub fn open(path: &Path, target: &str) -> Result<LedgerWriter> {
        let mut line = serde_json::to_vec(&LedgerEvent::Opened {
            at: super::now(),
            target: target.to_string(),
            version: VERSION,
        })?;
        line.push(b'\n');
        let mut file = files::open_append(path)?;
        file.write_all(&line)
            .and_then(|()| file.flush())
            .context("cannot append to the load ledger")?;
        Ok(LedgerWriter {
            file: Mutex::new(file),
            target: target.to_string(),
        })
    }

    pub fn append(&self, ev: &LedgerEvent) -> Result<()> {
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
        f.write_all(&line)
            .context("cannot append to the load ledger")?;
        f.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(s: &str) -> LedgerCustomer {
        LedgerCustomer {
            source_id: s.into(),
            hash: "0123456789abcdef0123456789abcdef".into(),
            line: 2,
            segment_id: None,
            fields: None,
            cleared: None,
        }
    }

    #[test]
    fn reading_leaves_a_torn_tail_in_place_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("load.ledger.ndjson");
        let w = LedgerWriter::open(&p, "t").unwrap();
        w.append(&LedgerEvent::Submitted {
            at: "x".into(),
            target: "t".into(),
            async_action_id: "aa_1".into(),
            method: None,
            file: None,
            customers: vec![customer("a")],
        })
        .unwrap();
        drop(w);
        let mut f = files::open_append(&p).unwrap();
        f.write_all(b"{\"event\":\"confir").unwrap();
        let before = std::fs::read(&p).unwrap();
        let st = read(&p, Some("t")).unwrap();
        assert_eq!(st.torn_tail, 16);
        assert_eq!(st.pending.len(), 1);
        assert_eq!(std::fs::read(&p).unwrap(), before, "read changed the file");
        assert_eq!(repair(&p).unwrap(), 16);
        assert_eq!(read(&p, None).unwrap().torn_tail, 0);
    }

    #[test]
    fn version_1_lines_still_read_and_newer_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.ndjson");
        std::fs::write(&p, "{\"event\":\"confirmed\",\"at\":\"x\",\"target\":\"t\",\"async_action_id\":\"aa\",\"status\":\"DONE\",\"done\":[[\"a\",\"0123456789abcdef0123456789abcdef\",2]],\"failed\":[]}\n").unwrap();
        let st = read(&p, Some("t")).unwrap();
        assert_eq!(st.confirmed_customers, 1);
        assert!(st
            .confirmed
            .contains(&content_key("0123456789abcdef0123456789abcdef").unwrap()));
        std::fs::write(
            &p,
            "{\"event\":\"opened\",\"at\":\"x\",\"target\":\"t\",\"version\":99}\n",
        )
        .unwrap();
        let e = read(&p, None).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
    }

    #[test]
    fn pending_actions_come_back_in_submission_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.ndjson");
        let w = LedgerWriter::open(&p, "t").unwrap();
        for id in ["aa_3", "aa_1", "aa_2"] {
            w.append(&LedgerEvent::Submitted {
                at: "x".into(),
                target: "t".into(),
                async_action_id: id.into(),
                method: None,
                file: None,
                customers: vec![customer(id)],
            })
            .unwrap();
        }
        let ids: Vec<String> = read(&p, None)
            .unwrap()
            .pending
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(ids, ["aa_3", "aa_1", "aa_2"]);
    }
}
