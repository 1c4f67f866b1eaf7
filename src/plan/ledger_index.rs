//! `load.ledger.index`: what a plan made of the ledger's confirmations
//! ([`Confirmed`]), kept beside the ledger so the next plan reads only the
//! lines added since. The ledger is append-only, so the index names how much
//! of it it covers (bytes, lines) and that part's hash as the plan hashes a
//! ledger (`file::ledger_hashes`: XXH3-128 of its lines but the `opened`
//! ones, which say nothing an index keeps; one read gives both). A plan uses
//! the index only when the ledger still starts with those lines, ending at
//! that byte, for the same project. When the index covered the whole ledger
//! it also keeps the ledger's length and modification time and the plan's
//! hash of it; a ledger that still has them, modified before the index was
//! written, is not read again ([`Stamp::vouches`]). Anything else (another
//! ledger, a damaged or torn index,
//! another version) is not an error: the ledger is read whole, as without
//! an index. The index is only ever a shortcut; deleting it costs one slow
//! plan.
//!
//! Layout, little-endian: the header line, the project, the mark and the
//! prefix's hash, the field lists, the source ids' entries (key, content,
//! time and fields, cleared list), the profiles' entries, the earlier
//! source ids of profiles, and an XXH3-64 of everything before it.

use super::confirmed::{Confirmed, Mark, Packed};
use crate::keys::KeyMap;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::hash::Hasher;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

const HEADER: &[u8] = b"segsync ledger index 4 (a cache of load.ledger.ndjson; safe to delete)\n";

/// Read the ledger's confirmations for `target`: from its index and the
/// lines added since, when the index is the ledger's; the whole ledger
/// otherwise (and the index is written again when more than a little was
/// read).
pub fn read(path: &Path, target: &str) -> Result<Confirmed> {
    Ok(read_hashing(path, target)?.0)
}

/// [`read`], and the ledger's [`super::file::ledger_hash`] when the index
/// was this ledger's: the ledger is then read once for both hashes.
pub fn read_hashing(path: &Path, target: &str) -> Result<(Confirmed, Option<String>)> {
    let (kept, ledger_hash) = load_hashing(path, target);
    let (confirmed, from, end) = super::confirmed::read_from(path, target, kept)?;
    if end.bytes - from.bytes > rewrite_after() {
        if let Err(e) = save(path, target, end, &confirmed) {
            crate::ui::warn(format!(
                "plan: could not keep the ledger's index ({e:#}); the next plan reads the whole ledger again"
            ));
        }
    }
    Ok((confirmed, ledger_hash))
}

/// The index of the ledger at `ledger`.
pub fn path_of(ledger: &Path) -> PathBuf {
    ledger.with_file_name("load.ledger.index")
}

/// Bytes of ledger read past the index after which a plan writes it again
/// (`SEGSYNC_LEDGER_INDEX_BYTES`, for tests).
pub fn rewrite_after() -> u64 {
    std::env::var("SEGSYNC_LEDGER_INDEX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20)
}

/// Writes and hashes at once.
struct Out<W: Write> {
    w: W,
    h: twox_hash::XxHash3_64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.h.write(b);
        self.w.write_all(b)
    }
    fn u32(&mut self, n: u32) -> std::io::Result<()> {
        self.put(&n.to_le_bytes())
    }
    fn u64(&mut self, n: u64) -> std::io::Result<()> {
        self.put(&n.to_le_bytes())
    }
    fn u128(&mut self, n: u128) -> std::io::Result<()> {
        self.put(&n.to_le_bytes())
    }
    fn text(&mut self, s: &str) -> std::io::Result<()> {
        self.u32(s.len() as u32)?;
        self.put(s.as_bytes())
    }
}

/// Keep `confirmed`, read from the ledger up to `end`.
/// Saves held for the rest of the process (`load --dry-run` writes
/// nothing, not even this cache).
static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn hold_saves() {
    HELD.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn save(ledger: &Path, target: &str, end: Mark, confirmed: &Confirmed) -> Result<()> {
    if HELD.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let path = path_of(ledger);
    let before = Stamp::of(ledger);
    let (whole, hash) = super::file::ledger_hashes(ledger, Some(end.bytes), 1 << 20)?;
    let hash = hash.with_context(|| format!("{} changed while it was read", ledger.display()))?;
    // The stamp vouches for the ledger only when it ended at `end` and did
    // not change while it was hashed.
    let vouched = before.filter(|b| b.len == end.bytes && Stamp::of(ledger) == Some(*b));
    let mut file = crate::files::AtomicFile::create(&path)?;
    let mut out = Out {
        w: file.writer(),
        h: twox_hash::XxHash3_64::new(),
    };
    let written = (|| -> std::io::Result<()> {
        out.put(HEADER)?;
        out.text(target)?;
        out.u64(end.bytes)?;
        out.u64(end.lines)?;
        out.u128(hash)?;
        let none = Stamp {
            len: u64::MAX,
            secs: 0,
            nanos: 0,
        };
        let stamp = vouched.unwrap_or(none);
        out.u64(stamp.len)?;
        out.u64(stamp.secs)?;
        out.u32(stamp.nanos)?;
        out.text(if vouched.is_some() { &whole } else { "" })?;
        out.u32(confirmed.field_lists.len() as u32)?;
        for list in &confirmed.field_lists {
            out.u32(list.len() as u32)?;
            for f in list {
                out.text(f)?;
            }
        }
        out.u64(confirmed.by_source.len() as u64)?;
        for (k, p) in confirmed.by_source.entries() {
            out.u128(*k)?;
            out.u64(p.0)?;
            out.u64(p.1)?;
            out.u32(p.2)?;
        }
        out.u64(confirmed.by_profile.len() as u64)?;
        for (k, v) in confirmed.by_profile.entries() {
            out.u128(*k)?;
            out.u128(*v)?;
        }
        out.u32(confirmed.earlier.len() as u32)?;
        for (k, olds) in &confirmed.earlier {
            out.u128(*k)?;
            out.u32(olds.len() as u32)?;
            for o in olds {
                out.u128(*o)?;
            }
        }
        let sum = out.h.finish();
        out.w.write_all(&sum.to_le_bytes())
    })();
    written.with_context(|| format!("cannot write {}", path.display()))?;
    file.commit()
}

/// The index's file as read, hashed a buffer at a time as it comes in (all
/// but its last 8 bytes, the sum they must give).
struct Hashed {
    f: std::fs::File,
    h: twox_hash::XxHash3_64,
    left: u64,
}

impl Read for Hashed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.f.read(buf)?;
        let k = (n as u64).min(self.left) as usize;
        self.h.write(&buf[..k]);
        self.left -= k as u64;
        Ok(n)
    }
}

/// Reads the index's fields; a short read is None.
struct In {
    r: BufReader<Hashed>,
    size: u64,
}

impl In {
    fn open(path: &Path) -> Option<In> {
        let f = std::fs::File::open(path).ok()?;
        let size = f.metadata().ok()?.len();
        let hashed = Hashed {
            f,
            h: twox_hash::XxHash3_64::new(),
            left: size.checked_sub(8)?,
        };
        Some(In {
            r: BufReader::with_capacity(1 << 20, hashed),
            size,
        })
    }
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).ok()?;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }
    /// A count of items at least `each` bytes long: None when the file
    /// could not hold that many (a damaged count never allocates).
    fn count(&self, n: u64, each: u64) -> Option<usize> {
        (n.saturating_mul(each) <= self.size).then_some(n as usize)
    }
    fn text(&mut self) -> Option<String> {
        let n = self.u32()? as u64;
        let n = self.count(n, 1)?;
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).ok()?;
        String::from_utf8(b).ok()
    }
    /// The file ends here with the sum of everything before it.
    fn at_sum(&mut self) -> Option<()> {
        let stored = self.take::<8>()?;
        let mut rest = [0u8; 1];
        let at_end = matches!(self.r.read(&mut rest), Ok(0));
        let hashed = self.r.get_ref();
        (at_end && hashed.left == 0 && hashed.h.finish() == u64::from_le_bytes(stored))
            .then_some(())
    }
}

/// The confirmations the index kept and where in the ledger they end,
/// when the index is this ledger's, for this project, whole.
#[cfg(test)]
pub fn load(ledger: &Path, target: &str) -> Option<(Confirmed, Mark)> {
    load_hashing(ledger, target).0
}

/// [`load`], and the ledger's hash (read beside the index's prefix hash)
/// when the index was whole and for this project.
fn load_hashing(ledger: &Path, target: &str) -> (Option<(Confirmed, Mark)>, Option<String>) {
    let loaded = load_parts(ledger, target);
    match loaded {
        Some((Some(c), mark, whole)) => (Some((c, mark)), whole),
        Some((None, _, whole)) => (None, whole),
        None => (None, None),
    }
}

type Parts = (Option<Confirmed>, Mark, Option<String>);

fn load_parts(ledger: &Path, target: &str) -> Option<Parts> {
    let path = path_of(ledger);
    let mut r = In::open(&path)?;
    let header: [u8; HEADER.len()] = r.take()?;
    if header != HEADER || r.text()? != target {
        return None;
    }
    let mark = Mark {
        bytes: r.u64()?,
        lines: r.u64()?,
    };
    let hash = r.u128()?;
    let kept = Stamp {
        len: r.u64()?,
        secs: r.u64()?,
        nanos: r.u32()?,
    };
    let kept_whole = r.text()?;
    if kept.vouches(ledger, mark, &path) {
        // The kept hash counts only when the index checks out whole.
        let confirmed = read_body(&mut r);
        let whole = confirmed.as_ref().map(|_| kept_whole);
        return Some((confirmed, mark, whole));
    }
    // The ledger is hashed beside the index's read, its prefix as it is
    // and the whole for the plan's inputs (`file::ledger_hashes`).
    let (hashes, confirmed) = std::thread::scope(|s| {
        let hashes = s.spawn(|| super::file::ledger_hashes(ledger, Some(mark.bytes), 1 << 20).ok());
        let confirmed = read_body(&mut r);
        (hashes.join().ok().flatten(), confirmed)
    });
    let (whole, prefix) = hashes?;
    let confirmed = confirmed.filter(|_| prefix == Some(hash));
    Some((confirmed, mark, Some(whole)))
}

/// A ledger's length and modification time, as the file system gives them.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Stamp {
    len: u64,
    secs: u64,
    nanos: u32,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        let t = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(Stamp {
            len: meta.len(),
            secs: t.as_secs(),
            nanos: t.subsec_nanos(),
        })
    }

    /// Whether this stamp, kept in the index at `index`, stands for the
    /// ledger's bytes as the index read them, so the ledger need not be
    /// read again: it has the kept length and modification time, ends at
    /// the mark, and was last modified before the index was written (git's
    /// rule for a "racily clean" file: a change in the second the index was
    /// written could keep both). A ledger is only appended to, which changes
    /// its length; anything else is hashed as without a stamp.
    fn vouches(&self, ledger: &Path, mark: Mark, index: &Path) -> bool {
        let modified = UNIX_EPOCH + std::time::Duration::new(self.secs, self.nanos);
        let index_written = std::fs::metadata(index).and_then(|m| m.modified()).ok();
        self.len == mark.bytes
            && Stamp::of(ledger) == Some(*self)
            && index_written.is_some_and(|w| w > modified)
    }
}

fn read_body(r: &mut In) -> Option<Confirmed> {
    let n = r.u32()? as u64;
    let mut field_lists = Vec::with_capacity(r.count(n, 4)?);
    for _ in 0..n {
        let m = r.u32()? as u64;
        let mut list = Vec::with_capacity(r.count(m, 4)?);
        for _ in 0..m {
            list.push(r.text()?);
        }
        field_lists.push(list);
    }
    let lists = field_lists.len() as u64;
    let n = r.u64()?;
    let mut by_source = Vec::with_capacity(r.count(n, 36)?);
    for _ in 0..n {
        let (k, content, rest, cleared) = (r.u128()?, r.u64()?, r.u64()?, r.u32()?);
        let p = Packed(content, rest, cleared);
        let fields_ok = p.last().fields.is_none_or(|f| u64::from(f) < lists);
        if !fields_ok || u64::from(cleared) >= lists {
            return None;
        }
        by_source.push((k, p));
    }
    let n = r.u64()?;
    let mut by_profile = Vec::with_capacity(r.count(n, 32)?);
    for _ in 0..n {
        by_profile.push((r.u128()?, r.u128()?));
    }
    let n = r.u32()? as u64;
    let mut earlier = HashMap::with_capacity(r.count(n, 20)?);
    for _ in 0..n {
        let k = r.u128()?;
        let m = r.u32()? as u64;
        let mut olds = Vec::with_capacity(r.count(m, 16)?);
        for _ in 0..m {
            olds.push(r.u128()?);
        }
        earlier.insert(k, olds);
    }
    r.at_sum()?;
    Some(Confirmed {
        by_source: KeyMap::from_sorted(by_source)?,
        by_profile: KeyMap::from_sorted(by_profile)?,
        earlier,
        field_lists,
    })
}

#[cfg(test)]
mod tests {
    use super::super::confirmed::Confirmed;
    use super::*;
    use crate::keys::h128;

    fn line(n: usize, target: &str) -> String {
        let fields = ["[\"name\"]", "[\"email\",\"name\"]", "[\"metadata.tier\"]"][n % 3];
        let cleared = if n.is_multiple_of(5) {
            ",\"cleared\":[\"name\"]"
        } else {
            ""
        };
        format!(
            "{{\"event\":\"confirmed\",\"at\":\"2026-01-0{}T00:00:00Z\",\"target\":\"{target}\",\"async_action_id\":\"a{n}\",\"status\":\"DONE\",\"failed\":[],\"done\":[{{\"source_id\":\"c{}\",\"hash\":\"{:032x}\",\"line\":2,\"segment_id\":\"s{}\",\"fields\":{fields}{cleared}}}]}}\n",
            1 + n % 9,
            n % 40,
            n,
            n % 25
        )
    }

    fn ledger(lines: std::ops::Range<usize>) -> String {
        let mut out = String::new();
        for n in lines {
            if n.is_multiple_of(7) {
                out.push_str("{\"event\":\"opened\",\"at\":\"2026-01-01T00:00:00Z\",\"target\":\"t\",\"version\":2}\n");
            }
            out.push_str(&line(n, if n.is_multiple_of(11) { "other" } else { "t" }));
        }
        out
    }

    /// What a plan reads of every customer and profile.
    fn seen(c: &Confirmed) -> String {
        let mut out = format!("{:?} {:?}\n", c.field_lists, {
            let mut e: Vec<_> = c.earlier.iter().collect();
            e.sort();
            e
        });
        for i in 0..45 {
            let sid = format!("c{i}");
            let last = c.last(&sid);
            let set = last.and_then(|l| c.fields(&l).map(<[String]>::to_vec));
            let sources: Vec<u128> = c.sources_of(h128(&format!("s{i}"))).collect();
            out.push_str(&format!("{sid} {last:?} {set:?} {sources:?}\n"));
        }
        out
    }

    /// The index and the lines added since give what the whole ledger
    /// gives; an index that is not this ledger's is passed over.
    #[test]
    fn an_index_and_the_lines_since_read_as_the_whole_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let (p, whole) = (
            dir.path().join("load.ledger.ndjson"),
            dir.path().join("whole"),
        );
        std::fs::create_dir(&whole).unwrap();
        let (first, all) = (ledger(0..120), ledger(0..300));
        std::fs::write(&p, &first).unwrap();
        let kept = read(&p, "t").unwrap();
        let mark = Mark {
            bytes: first.len() as u64,
            lines: first.lines().count() as u64,
        };
        save(&p, "t", mark, &kept).unwrap();
        std::fs::write(&p, &all).unwrap();
        std::fs::write(whole.join("load.ledger.ndjson"), &all).unwrap();
        let expected = seen(&read(&whole.join("load.ledger.ndjson"), "t").unwrap());
        assert!(!path_of(&whole.join("load.ledger.ndjson")).exists());
        assert_eq!(
            load(&p, "t").map(|(_, m)| m),
            Some(mark),
            "the index is used"
        );
        assert_eq!(seen(&read(&p, "t").unwrap()), expected);
        assert!(load(&p, "other").is_none(), "another project's");
        // The ledger's first part changed (as long as before): passed over.
        std::fs::write(&p, all.replacen("\"a1\"", "\"b1\"", 1)).unwrap();
        assert!(load(&p, "t").is_none());
        std::fs::write(&p, &all).unwrap();
        // A damaged index: each byte changed in turn (a sample), and torn.
        let index = std::fs::read(path_of(&p)).unwrap();
        for at in (0..index.len()).step_by(97).chain([index.len() - 1]) {
            let mut bad = index.clone();
            bad[at] ^= 0x20;
            std::fs::write(path_of(&p), &bad).unwrap();
            assert!(load(&p, "t").is_none(), "byte {at} changed");
            let hash = super::super::file::ledger_hash(&p).unwrap();
            assert!(
                load_hashing(&p, "t").1.is_none_or(|h| h == hash),
                "byte {at} changed: a hash that is not the ledger's"
            );
            assert_eq!(seen(&read(&p, "t").unwrap()), expected, "byte {at} changed");
        }
        std::fs::write(path_of(&p), &index[..index.len() / 2]).unwrap();
        assert!(load(&p, "t").is_none(), "torn");
        assert_eq!(seen(&read(&p, "t").unwrap()), expected);
    }

    fn set_mtime(path: &Path, t: std::time::SystemTime) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    /// A ledger the index's stamp vouches for is not read again; one
    /// modified no earlier than the index was written is read.
    #[test]
    fn a_stamp_vouches_only_for_a_ledger_modified_before_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("load.ledger.ndjson");
        let text = ledger(0..60);
        std::fs::write(&p, &text).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        set_mtime(&p, old);
        let kept = read(&p, "t").unwrap();
        let mark = Mark {
            bytes: text.len() as u64,
            lines: text.lines().count() as u64,
        };
        save(&p, "t", mark, &kept).unwrap();
        let hash = super::super::file::ledger_hash(&p).unwrap();
        assert!(!hash.is_empty());
        let (used, kept_hash) = load_hashing(&p, "t");
        assert!(used.is_some(), "the index is used");
        assert_eq!(
            kept_hash,
            Some(hash.clone()),
            "the kept hash is the ledger's"
        );
        // A damaged kept hash (the index's sum no longer holds) is not given.
        let index = std::fs::read(path_of(&p)).unwrap();
        let at = HEADER.len() + 4 + 1 + 16 + 16 + 8 + 8 + 4 + 4;
        let mut bad = index.clone();
        bad[at] ^= 0x01;
        std::fs::write(path_of(&p), &bad).unwrap();
        let (used, given) = load_hashing(&p, "t");
        assert!(
            used.is_none() && given.as_ref().is_none_or(|h| *h == hash),
            "{given:?}"
        );
        std::fs::write(path_of(&p), &index).unwrap();
        // Changed in place, as long as before, its modification time put
        // back: the stamp still vouches (what git's index does too); the
        // ledger is not read.
        let changed = text.replacen("\"a1\"", "\"b1\"", 1);
        assert_eq!(changed.len(), text.len());
        std::fs::write(&p, &changed).unwrap();
        set_mtime(&p, old);
        assert_eq!(load_hashing(&p, "t").1, Some(hash.clone()), "vouched for");
        // The index written no later than that modification (racily
        // clean): the ledger is read, and the change seen.
        set_mtime(&path_of(&p), old);
        let (used, fresh) = load_hashing(&p, "t");
        assert!(used.is_none(), "the changed prefix is seen");
        let changed_hash = super::super::file::ledger_hash(&p).unwrap();
        assert_ne!(changed_hash, hash);
        assert_eq!(fresh, Some(changed_hash));
        // Grown since (an append): read, the index used for its part.
        let grown = dir.path().join("grown.ndjson");
        std::fs::write(&grown, &text).unwrap();
        set_mtime(&grown, old);
        save(&grown, "t", mark, &kept).unwrap();
        std::fs::write(&grown, ledger(0..80)).unwrap();
        let (used, h) = load_hashing(&grown, "t");
        assert!(used.is_some());
        assert_eq!(h, Some(super::super::file::ledger_hash(&grown).unwrap()));
    }
}
