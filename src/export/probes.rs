//! What a delta export must hold: the customers segsync confirmed by
//! actions Voucherify made after the delta's `$after` (the ledger's
//! `vf_from`, Voucherify's own clock). A delta that lacks any is not
//! trusted; a project's first delta is made only when the ledger can check
//! it (Voucherify's documents leave the filter's reading open: `format:
//! date` would cut `$after` to its day).

use super::{read_export, Policy, Since};
use crate::ui;
use anyhow::{Context, Result};

/// A delta of a project whose filter reading is not proven yet is made
/// only when the ledger can check it (it confirmed customers after the
/// delta's `$after`, some on that day): else a full export, said.
pub(super) fn checkable(policy: &Policy<'_>, since: Since) -> Result<Option<Since>> {
    match probes(policy, &since)? {
        Some(p) if !p.can_prove() => {
            ui::info(format!(
                "Voucherify's customer export: a delta of updates after {} could not be checked (segsync confirmed no customer in this project since, to look for in it), and no delta of this project was proven yet: a full export",
                since.after
            ));
            Ok(None)
        }
        _ => Ok(Some(since)),
    }
}

/// What the ledger says a delta asked `since` must hold: the customers
/// segsync confirmed in the project by actions Voucherify made after its
/// `$after` (so their `updated_at` is later still), with those times.
/// None without a ledger (no check asked).
pub(super) fn probes(policy: &Policy<'_>, since: &Since) -> Result<Option<Probes>> {
    let Some(ledger) = policy.ledger else {
        return Ok(None);
    };
    let Some(after) = crate::dates::parse_timestamp(&since.after) else {
        return Ok(None);
    };
    Ok(Some(Probes {
        after,
        must: confirmed_after(ledger, policy.target, after)?,
    }))
}

/// The customers a delta must hold, by the ledger.
pub(super) struct Probes {
    after: jiff::Timestamp,
    must: std::collections::HashMap<String, jiff::Timestamp>,
}

impl Probes {
    /// Whether a delta holding every probe proves the filter's reading to
    /// the second: some probe falls on the same UTC day as `$after` (a
    /// filter cut to the day would leave it out).
    pub(super) fn can_prove(&self) -> bool {
        let day = |t: &jiff::Timestamp| t.as_second().div_euclid(86_400);
        self.must.values().any(|t| day(t) == day(&self.after))
    }

    /// Why `delta` cannot be trusted, if it lacks a probe: how many, some
    /// of them, and the filter reading that would explain it.
    pub(super) fn lacking(&self, delta: &std::path::Path, since: &Since) -> Result<Option<String>> {
        if self.must.is_empty() {
            return Ok(None);
        }
        let held = read_export(delta)?;
        let mut lacking: Vec<(&String, &jiff::Timestamp)> = (self.must.iter())
            .filter(|(sid, _)| !held.contains(*sid))
            .collect();
        if lacking.is_empty() {
            return Ok(None);
        }
        lacking.sort();
        let day = |t: &jiff::Timestamp| t.as_second().div_euclid(86_400);
        let reading = if lacking.iter().all(|(_, t)| day(t) == day(&self.after)) {
            "Voucherify may cut the filter's time to the day (the spec says `format: date`)"
        } else {
            "Voucherify did not read the filter as sent"
        };
        let some: Vec<&str> = lacking.iter().take(5).map(|(s, _)| s.as_str()).collect();
        Ok(Some(format!(
            "the delta of customers updated after {} lacks {} of the {} customers segsync confirmed since (e.g. {}): {reading}; deltas of this project are not trusted again (delete load.export.json to try them again)",
            since.after,
            lacking.len(),
            self.must.len(),
            some.join(", ")
        )))
    }
}

/// The customers of `target` whose confirmed action Voucherify made after
/// `after` (its `vf_from`), with that time; not those a verification found
/// Voucherify did not apply (it may not have stamped them).
fn confirmed_after(
    ledger: &std::path::Path,
    target: &str,
    after: jiff::Timestamp,
) -> Result<std::collections::HashMap<String, jiff::Timestamp>> {
    use crate::state::ledger::LedgerEvent;
    use std::io::BufRead;
    let mut out = std::collections::HashMap::new();
    let f = match std::fs::File::open(ledger) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ledger.display())),
    };
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("cannot read {}", ledger.display()))?;
        // Only confirmations that carry Voucherify's time, and findings of
        // a verification, are read whole.
        if !line.contains("\"vf_from\"") && !line.contains("\"unverified\"") {
            continue;
        }
        match serde_json::from_str::<LedgerEvent>(&line) {
            Ok(LedgerEvent::Confirmed {
                target: t,
                done,
                vf_from: Some(from),
                ..
            }) if t == target => {
                if let Some(from) = crate::dates::parse_timestamp(&from).filter(|f| *f > after) {
                    out.extend(done.into_iter().map(|c| (c.source_id, from)));
                }
            }
            Ok(LedgerEvent::Unverified {
                target: t,
                customers,
                ..
            }) if t == target => {
                for c in customers {
                    out.remove(&c.source_id);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
