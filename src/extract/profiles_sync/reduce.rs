//! A partition too large to hold at once (a profile with hundreds of MB of
//! rows: a trait rewritten a hundred thousand times) is read chunk by chunk,
//! keeping only what its profiles' lines can show:
//! - per profile, the earliest and latest timestamp of its rows;
//! - per trait, the winning row: the highest `seq`, then the larger value
//!   (`group`'s rule, so a tie does not depend on the order of the parts);
//! - per identifier (type, id), its earliest `seq` (where `group` lists it).
//!
//! What is kept is written back as records and grouped as any partition, so
//! the lines are the same as from the whole partition; memory follows what
//! the lines hold, not the rows read.

use super::spill::{self, Kind, Spilled};
use anyhow::Result;
use rustc_hash::FxHashMap as HashMap;
use std::path::Path;

/// A partition that spilled more than this is read through [`reduced`].
pub const HOLD_BYTES: u64 = 64 << 20;

#[derive(Default)]
struct Profile {
    first: Option<i64>,
    last: Option<i64>,
    /// Trait name → (seq, value) of the winning row.
    traits: HashMap<Vec<u8>, (i64, Option<Vec<u8>>)>,
    /// (type, id) → earliest seq.
    ids: HashMap<(Vec<u8>, Vec<u8>), i64>,
}

/// Read partition `p` into `buf` as the records its lines need.
pub fn reduced(spills: &[Spilled], p: usize, tmp: &Path, buf: &mut Vec<u8>) -> Result<()> {
    let mut profiles: HashMap<Vec<u8>, Profile> = HashMap::default();
    let mut chunk = Vec::new();
    spill::each_chunk(spills, p, &mut chunk, |bytes| {
        for r in spill::records(bytes, tmp)? {
            if !profiles.contains_key(r.id) {
                profiles.insert(r.id.to_vec(), Profile::default());
            }
            let Some(pr) = profiles.get_mut(r.id) else {
                continue;
            };
            if let Some(t) = r.ts {
                pr.first = Some(pr.first.map_or(t, |f| f.min(t)));
                pr.last = Some(pr.last.map_or(t, |l| l.max(t)));
            }
            match r.kind {
                Kind::Seen => {}
                Kind::Trait => match pr.traits.get_mut(r.key) {
                    Some(kept) if (r.seq, r.value) > (kept.0, kept.1.as_deref()) => {
                        *kept = (r.seq, r.value.map(<[u8]>::to_vec));
                    }
                    Some(_) => {}
                    None => {
                        pr.traits
                            .insert(r.key.to_vec(), (r.seq, r.value.map(<[u8]>::to_vec)));
                    }
                },
                Kind::Id => {
                    let pair = (r.key.to_vec(), r.value.unwrap_or_default().to_vec());
                    let seq = pr.ids.entry(pair).or_insert(r.seq);
                    *seq = (*seq).min(r.seq);
                }
            }
        }
        Ok(())
    })?;
    buf.clear();
    let put = |b: &mut Vec<u8>, kind, id: &[u8], ts, kept| {
        spill::encode(b, kind, id, ts, kept)
            .map_err(|what| anyhow::anyhow!("{}: {what} too long for a record", tmp.display()))
    };
    for (id, pr) in &profiles {
        put(buf, Kind::Seen, id, pr.first, None)?;
        put(buf, Kind::Seen, id, pr.last, None)?;
        for (key, (seq, value)) in &pr.traits {
            put(
                buf,
                Kind::Trait,
                id,
                None,
                Some((*seq, key, value.as_deref())),
            )?;
        }
        for ((key, value), seq) in &pr.ids {
            put(buf, Kind::Id, id, None, Some((*seq, key, Some(value))))?;
        }
    }
    Ok(())
}
