//! What Voucherify holds, read from a customer export file: an index from
//! source id to the record's place in the file (16 bytes a customer, so a
//! million customers cost tens of megabytes), and each record read back when
//! its customer is compared.
//!
//! The export's headers are human-readable and their exact spelling is not
//! documented, so a column is found by its name with case, spaces and
//! underscores ignored (`Source ID`, `source_id`, `Address City`). Metadata
//! comes as one column per key the customer schema defines; the docs spell
//! order metadata `metadata.X`, so a header `metadata` followed by `.`,
//! `_`, `:` or a space, then a defined key, is that key's column. A field
//! without a column cannot be read.

use crate::keys::KeyMap;
use crate::keys::{h128, Spread};
use crate::mapping::metadata_schema::CustomerSchema;
use anyhow::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// The fields a plan compares besides metadata: `crate::fields::STANDARD`,
// in its order (a `Held`'s `standard` cells follow it).
use crate::fields::STANDARD;

use super::digest::{Kind, Layout};
use crate::export::header_key as norm;

/// Marks an index entry whose digest cannot be used: the export lists one
/// customer twice (or two records share its 128-bit key).
const NO_DIGEST: u64 = 1 << 63;

/// Where each field is in the export.
struct Columns {
    source_id: usize,
    standard: [Option<usize>; 11],
    updated_at: Option<usize>,
    /// Defined metadata key → column.
    metadata: HashMap<String, usize>,
    /// The comparable columns, for the digests (`super::digest`).
    layout: Layout,
}

fn columns(path: &Path, header: &csv::StringRecord, schema: &CustomerSchema) -> Result<Columns> {
    let names: Vec<String> = header.iter().map(norm).collect();
    let find = |want: &str| names.iter().position(|n| n == want);
    let source_id = find("sourceid").ok_or_else(|| {
        crate::error::UsageError::new(format!(
            "{}: Voucherify's customer export has no source id column (its columns: {}); nothing can be compared",
            path.display(),
            header.iter().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let mut standard = [None; 11];
    for (i, f) in STANDARD.iter().enumerate() {
        standard[i] = find(&norm(f.export));
    }
    let mut metadata = HashMap::new();
    for (col, raw) in header.iter().enumerate() {
        let raw = raw.trim_start_matches('\u{feff}').trim();
        let Some(rest) = raw
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("metadata"))
            .map(|_| &raw[8..])
        else {
            continue;
        };
        let Some(key) = rest.strip_prefix(['.', '_', ':', ' ']).map(str::trim) else {
            continue;
        };
        let defined = schema.properties.keys().find(|k| *k == key).or_else(|| {
            let mut same = schema.properties.keys().filter(|k| norm(k) == norm(key));
            let one = same.next();
            one.filter(|_| same.next().is_none())
        });
        if let Some(k) = defined {
            metadata.insert(k.clone(), col);
        }
    }
    let mut comparable: Vec<(String, usize, Kind)> = metadata
        .iter()
        .filter_map(|(k, c)| Some((k.clone(), *c, Kind::metadata(&schema.properties[k])?)))
        .collect();
    comparable.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Columns {
        source_id,
        standard,
        updated_at: find("updatedat"),
        metadata,
        layout: Layout {
            standard,
            metadata: comparable,
        },
    })
}

/// The index over every record's entry, by key (an unstable sort, which
/// needs no room beside the entries); a key listed again keeps its first
/// record (the lowest offset), its digest marked unusable. Also how many
/// entries were folded so.
fn fold(mut entries: Vec<(u128, (u64, u128))>) -> (KeyMap<u128, (u64, u128)>, u64) {
    sort_on_two_cores(&mut entries);
    let (mut out, mut collisions) = (0, 0);
    for i in 0..entries.len() {
        if out > 0 && entries[out - 1].0 == entries[i].0 {
            let at = entries[i].1 .0;
            let kept = &mut entries[out - 1].1 .0;
            *kept = (*kept & !NO_DIGEST).min(at) | NO_DIGEST;
            collisions += 1;
        } else {
            entries[out] = entries[i];
            out += 1;
        }
    }
    entries.truncate(out);
    entries.shrink_to_fit();
    let index = KeyMap::from_sorted(entries).expect("sorted and folded");
    (index, collisions)
}

/// Sort by key (the order of equal keys is left to `fold`; a key alone
/// compares faster than a key and an offset): split in place by the key's
/// top bit (every key of the first part sorts before any of the second),
/// each part sorted on its own core. Keys are hashes, so the parts are
/// near halves.
fn sort_on_two_cores(entries: &mut [(u128, (u64, u128))]) {
    let by = |e: &(u128, (u64, u128))| e.0;
    if entries.len() < 1 << 16 {
        return entries.sort_unstable_by_key(by);
    }
    let (mut lo, mut hi) = (0, entries.len());
    while lo < hi {
        if entries[lo].0 >> 127 == 0 {
            lo += 1;
        } else {
            hi -= 1;
            entries.swap(lo, hi);
        }
    }
    let (low, high) = entries.split_at_mut(lo);
    std::thread::scope(|s| {
        s.spawn(|| low.sort_unstable_by_key(by));
        high.sort_unstable_by_key(by);
    });
}

/// Index the records `rdr` reads (positions offset by `base`) until one
/// starts at or past `stop`: true when none ran past it (or at the end).
fn index_records<R: std::io::Read>(
    rdr: &mut csv::Reader<R>,
    base: u64,
    stop: Option<u64>,
    cols: &Columns,
    rec: &mut csv::StringRecord,
    push: &mut impl FnMut(u128, (u64, u128)),
) -> Result<bool, csv::Error> {
    loop {
        let pos = base + rdr.position().byte();
        if let Some(stop) = stop.filter(|s| pos >= *s) {
            return Ok(pos == stop);
        }
        if !rdr.read_record(rec)? {
            return Ok(true);
        }
        let Some(sid) = rec.get(cols.source_id).filter(|s| !s.is_empty()) else {
            continue;
        };
        push(h128(sid), (pos, cols.layout.of_record(sid, rec)));
    }
}

/// The entries of the records from byte `at` to the end (the export's
/// second half).
fn index_from(
    path: &Path,
    at: u64,
    cols: &Columns,
    expect: usize,
) -> Result<Vec<(u128, (u64, u128))>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(at))?;
    let mut rdr = (csv::ReaderBuilder::new().has_headers(false))
        .buffer_capacity(1 << 18)
        .from_reader(f);
    let mut out = Vec::with_capacity(expect);
    let mut rec = csv::StringRecord::new();
    index_records(&mut rdr, at, None, cols, &mut rec, &mut |k, v| {
        out.push((k, v))
    })?;
    Ok(out)
}

/// About how many records the bytes from `at` to `size` hold, by the lines
/// of their first 256 KB, a little over (a vector of that capacity is not
/// grown); at most one per 8 bytes.
fn records_in(path: &Path, at: u64, size: u64) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let bytes = size.saturating_sub(at);
    let sample = || -> std::io::Result<(u64, u64)> {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(at))?;
        let mut buf = Vec::with_capacity(1 << 18);
        f.take(1 << 18).read_to_end(&mut buf)?;
        Ok((
            buf.len() as u64,
            memchr::memchr_iter(b'\n', &buf).count() as u64,
        ))
    };
    let estimate = match sample() {
        Ok((read, lines)) if read > 0 && lines > 0 => {
            bytes * lines / read + bytes * lines / read / 32 + 16
        }
        _ => 0,
    };
    estimate.min(bytes / 8) as usize
}

/// Where a record may start near the middle of a file of `min` bytes or
/// more, its body starting at `body`: after the first line end past the
/// middle with an even count of quotes before it (outside any quoted cell,
/// by RFC 4180's quoting; the caller checks it against a reader's records).
fn halfway(path: &Path, body: u64, min: u64) -> Option<u64> {
    use std::io::Read;
    let size = std::fs::metadata(path).ok()?.len();
    if size < min.max(1) {
        return None;
    }
    let mid = body + (size - body) / 2;
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).ok()?);
    std::io::copy(&mut (&mut f).take(body), &mut std::io::sink()).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut quotes) = (body, 0u64);
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        for i in memchr::memchr2_iter(b'"', b'\n', &buf[..n]) {
            let pos = at + i as u64;
            if buf[i] == b'"' {
                quotes += 1;
            } else if pos >= mid && quotes % 2 == 0 {
                return Some(pos + 1).filter(|p| *p < size);
            }
        }
        at += n as u64;
    }
}

/// One customer as the export shows it. `None`: the field has no column.
pub struct Held {
    /// Per [`STANDARD`] field: the cell (empty = no value).
    pub standard: [Option<String>; 11],
    /// `updated_at`, when the export has it and it parses.
    pub updated_at: Option<jiff::Timestamp>,
    /// Defined metadata keys that have a column → their cell.
    pub metadata: HashMap<String, String>,
}

/// The export file, indexed by source id.
pub struct HeldFile {
    path: PathBuf,
    /// 128-bit key of the source id → (the record's offset, its digest).
    index: KeyMap<u128, (u64, u128)>,
    cols: Columns,
    /// Reads records back (the comparison's, one at a time): behind a lock
    /// so the index can be shared with the threads that read the rows.
    reader: std::sync::Mutex<(csv::Reader<std::fs::File>, csv::StringRecord)>,
    /// Source ids whose 64-bit keys collide: looked up by scanning.
    pub collisions: u64,
}

impl HeldFile {
    /// Index `path` (one pass).
    pub fn open(path: &Path, schema: &CustomerSchema) -> Result<HeldFile> {
        Self::open_split(path, schema, 8 << 20)
    }

    /// [`HeldFile::open`], reading files of `split_min` bytes or more in
    /// two halves at once.
    fn open_split(path: &Path, schema: &CustomerSchema, split_min: u64) -> Result<HeldFile> {
        // An export is read whole or refused, naming the file: a rerun that
        // compares the same file cannot fix it.
        let refuse = |what: String| {
            crate::error::UsageError::new(format!(
                "{}: {what}; it cannot be compared (a new export, or another --export-file, can)",
                path.display()
            ))
        };
        if !path.is_file() {
            return Err(refuse("not a file".into()).into());
        }
        // The index's readers read the whole file, 256 KB at a time; the
        // one that reads single records back (a seek each), 1 KB, where
        // its default 8 KB copies eight times what a record of an export
        // usually holds.
        let open = |headers: bool| {
            csv::ReaderBuilder::new()
                .flexible(!headers)
                .has_headers(headers)
                .buffer_capacity(if headers { 1 << 18 } else { 1 << 10 })
                .from_path(path)
                .map_err(|e| refuse(format!("cannot be read ({e})")))
        };
        let mut rdr = open(true)?;
        let header = rdr
            .headers()
            .map_err(|e| refuse(format!("its header cannot be read ({e})")))?
            .clone();
        let cols = columns(path, &header, schema)?;
        let mut rec = csv::StringRecord::new();
        let damaged = |e: csv::Error| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::Error::from(refuse(format!("line {line}: {e} (a torn or damaged file)")))
        };
        // A large export is read in two halves at once: the second from a
        // record boundary found by counting quotes, kept only when the
        // first half's reader, which reads from the start, ends exactly
        // there (else the second half is read again after the first).
        let body = rdr.position().byte();
        // Sized up front from the records' length near the start: a vector
        // grown by doubling would hold half as much again, and twice the
        // first half's while the halves are joined.
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut entries = Vec::with_capacity(records_in(path, body, size));
        let second = std::thread::scope(|s| {
            let second = halfway(path, body, split_min).map(|at| {
                let cols = &cols;
                let expect = records_in(path, at, size);
                (at, s.spawn(move || index_from(path, at, cols, expect)))
            });
            let stop = second.as_ref().map(|(at, _)| *at);
            let ended = index_records(&mut rdr, 0, stop, &cols, &mut rec, &mut |k, v| {
                entries.push((k, v))
            });
            let second = second.and_then(|(_, h)| h.join().ok()?.ok());
            ended.map(|at_stop| second.filter(|_| at_stop))
        });
        match second.map_err(damaged)? {
            Some(half) => entries.extend(half),
            None => {
                index_records(&mut rdr, 0, None, &cols, &mut rec, &mut |k, v| {
                    entries.push((k, v))
                })
                .map_err(damaged)?;
            }
        }
        let (index, collisions) = fold(entries);
        Ok(HeldFile {
            path: path.to_path_buf(),
            index,
            cols,
            // Reads single records at known offsets: no header handling.
            reader: std::sync::Mutex::new((open(false)?, rec)),
            collisions,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the export has a column for this metadata key.
    pub fn has_metadata_column(&self, key: &str) -> bool {
        self.cols.metadata.contains_key(key)
    }

    /// Where the comparable fields are (for a row's digest).
    pub fn layout(&self) -> &Layout {
        &self.cols.layout
    }

    /// Whether the export shows the source id of this key: its place in the
    /// index (0 to `len() - 1`), and its digest when usable (None when the
    /// digest cannot speak for it).
    pub fn place(&self, key: u128) -> Option<(u32, Option<u128>)> {
        let at = self.index.position(key)?;
        let (_, (offset, digest)) = self.index.entries()[at];
        Some((at as u32, (offset & NO_DIGEST == 0).then_some(digest)))
    }

    /// [`HeldFile::place`] of many keys at once (`KeyMap::positions`).
    pub fn places(&self, keys: &[Option<u128>]) -> Vec<Option<(u32, Option<u128>)>> {
        let mut at = Vec::with_capacity(keys.len());
        self.index.positions(keys, &mut at);
        let entries = self.index.entries();
        (at.into_iter())
            .map(|at| {
                let at = at?;
                let (_, (offset, digest)) = entries[at];
                Some((at as u32, (offset & NO_DIGEST == 0).then_some(digest)))
            })
            .collect()
    }

    /// Whether the export has a comparable column for `field` (`name`,
    /// `address.city`, `metadata.KEY`): its value can be read back.
    pub fn readable(&self, field: &str) -> bool {
        match field.strip_prefix("metadata.") {
            Some(key) => self.cols.layout.metadata.iter().any(|(k, _, _)| k == key),
            None => {
                crate::fields::by_path(field).is_some_and(|(i, _)| self.cols.standard[i].is_some())
            }
        }
    }

    /// The customer `sid` as exported; None when the export lacks it.
    pub fn get(&self, sid: &str) -> Result<Option<Held>> {
        let Some((offset, _)) = self.index.get(h128(sid)) else {
            return Ok(None);
        };
        let offset = offset & !NO_DIGEST;
        let mut pos = csv::Position::new();
        pos.set_byte(offset);
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let (rdr, rec) = &mut *reader;
        rdr.seek(pos)?;
        if !rdr.read_record(rec)? {
            return Ok(None);
        }
        if rec.get(self.cols.source_id) != Some(sid) {
            // The export lists this key twice: find this one the slow way.
            return self.scan(sid, rec);
        }
        Ok(Some(self.held(rec)))
    }

    fn scan(&self, sid: &str, rec: &mut csv::StringRecord) -> Result<Option<Held>> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.path)?;
        while rdr.read_record(rec)? {
            if rec.get(self.cols.source_id) == Some(sid) {
                return Ok(Some(self.held(rec)));
            }
        }
        Ok(None)
    }

    fn held(&self, rec: &csv::StringRecord) -> Held {
        let cell = |c: Option<usize>| c.map(|c| rec.get(c).unwrap_or("").to_string());
        let mut standard: [Option<String>; 11] = Default::default();
        for (i, c) in self.cols.standard.iter().enumerate() {
            standard[i] = cell(*c);
        }
        Held {
            standard,
            updated_at: self
                .cols
                .updated_at
                .and_then(|c| rec.get(c))
                .and_then(|t| t.trim().parse().ok()),
            metadata: self
                .cols
                .metadata
                .iter()
                .map(|(k, c)| (k.clone(), rec.get(*c).unwrap_or("").to_string()))
                .collect(),
        }
    }

    /// Every source id in the export, in file order (a pass of its own).
    pub fn each_source_id(&self, mut f: impl FnMut(&str)) -> Result<()> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.path)?;
        let mut rec = csv::StringRecord::new();
        while rdr.read_record(&mut rec)? {
            if let Some(s) = rec.get(self.cols.source_id).filter(|s| !s.is_empty()) {
                f(s);
            }
        }
        Ok(())
    }
}

/// A record's source id as the export's index knows it.
#[derive(Clone, Copy)]
pub struct Found {
    /// The source id's key.
    pub key: u128,
    /// Its place in the export's index, when the export shows it.
    pub at: Option<u32>,
    /// The export's digest of it, when usable.
    pub digest: Option<u128>,
}

/// A set of source ids (by key) laid over the export's index: a bit per
/// customer the export shows (a million cost 128 KB, read in the cache),
/// a hash set for the others (few, on a rerun).
pub struct Present {
    bits: Vec<u64>,
    others: std::collections::HashSet<u128, Spread>,
}

impl Present {
    pub fn new(held: &HeldFile) -> Present {
        Present {
            bits: vec![0; held.len().div_ceil(64)],
            others: Default::default(),
        }
    }

    /// Add the key (its place in the export's index, when it has one);
    /// false when it was there already.
    pub fn insert(&mut self, at: Option<u32>, key: u128) -> bool {
        match at {
            Some(at) => {
                let (word, bit) = (at as usize / 64, 1u64 << (at % 64));
                let new = self.bits[word] & bit == 0;
                self.bits[word] |= bit;
                new
            }
            None => self.others.insert(key),
        }
    }

    pub fn contains(&self, held: &HeldFile, key: u128) -> bool {
        match held.index.position(key) {
            Some(at) => self.bits[at / 64] & (1 << (at % 64)) != 0,
            None => self.others.contains(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_on_two_cores_as_by_a_map() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for n in [0, 1, 1000, 1 << 16, (1 << 16) + 7, 200_000] {
            // Keys repeat (a source id listed twice), with either top bit.
            let mut entries: Vec<(u128, (u64, u128))> = Vec::new();
            for i in 0..n {
                let k = rng.gen::<u128>() | (u128::from(i % 3 == 0) << 127);
                let k = if i % 10 == 0 { k & 0xff } else { k };
                entries.push((k, (rng.gen_range(0..1000), i as u128)));
            }
            // The oracle: each key's lowest offset and its digest, the
            // digest marked unusable when the key is listed again.
            let mut want = std::collections::BTreeMap::new();
            for (k, (at, digest)) in &entries {
                want.entry(*k)
                    .and_modify(|(was, _): &mut (u64, u128)| {
                        *was = (*was & !NO_DIGEST).min(*at) | NO_DIGEST
                    })
                    .or_insert((*at, *digest));
            }
            let want: Vec<(u128, u64)> = want.into_iter().map(|(k, (at, _))| (k, at)).collect();
            let (map, collisions) = fold(entries.clone());
            let got: Vec<(u128, u64)> = map.iter().map(|(k, (at, _))| (k, at)).collect();
            assert!(got == want, "{n} entries: folded unlike the map");
            assert_eq!(collisions as usize, entries.len() - want.len());
            // A key listed once keeps its own digest.
            let given: std::collections::HashSet<_> = entries.iter().collect();
            for (k, (at, digest)) in map.iter().filter(|(_, (at, _))| at & NO_DIGEST == 0) {
                assert!(
                    given.contains(&(k, (at, digest))),
                    "{n} entries: a digest moved"
                );
            }
        }
    }

    fn schema() -> CustomerSchema {
        serde_json::from_value(serde_json::json!({"properties": {"tier": {"type": "string"}}}))
            .unwrap()
    }

    /// Every customer's place, digest and record, as one reading gives them.
    fn everything(f: &HeldFile, ids: &[String]) -> Vec<String> {
        let mut out = vec![format!("{} {}", f.len(), f.collisions)];
        for id in ids {
            let place = f.place(h128(id));
            let held = f
                .get(id)
                .unwrap()
                .map(|h| format!("{:?} {:?}", h.standard, h.metadata));
            out.push(format!("{id} {place:?} {held:?}"));
        }
        out
    }

    /// An export read in two halves gives what one reading gives, whatever
    /// the quotes around the middle: cells with quoted line ends and
    /// quotes, a bare quote in an unquoted cell (which misleads the quote
    /// count: the halves are then not kept), and a customer listed twice,
    /// once in each half.
    #[test]
    fn an_export_read_in_two_halves_is_read_as_in_one() {
        let dir = tempfile::tempdir().unwrap();
        for (case, stray) in [("quoted", false), ("stray quote", true)] {
            let p = dir.path().join(format!("{case}.csv"));
            let mut text = String::from("Source ID,Name,Description,metadata.tier\n");
            let mut ids = Vec::new();
            for i in 0..3000 {
                let id = format!("c{i}");
                let name = match i % 4 {
                    0 => format!("\"Ann \"\"{i}\"\"\""),
                    1 => format!("\"line one\nline two {i}\""),
                    2 if stray && i == 1002 => format!("ab\"c{i}"),
                    _ => format!("Name {i}"),
                };
                text.push_str(&format!("{id},{name},\"d\n\n{i}\",t{}\n", i % 3));
                ids.push(id);
            }
            text.push_str("c7,Again,,t9\n");
            ids.push("absent".into());
            std::fs::write(&p, &text).unwrap();
            let one = HeldFile::open_split(&p, &schema(), u64::MAX).unwrap();
            let two = HeldFile::open_split(&p, &schema(), 0).unwrap();
            assert_eq!(one.len(), 3000, "{case}");
            assert_eq!(one.collisions, 1, "{case}: c7 is listed twice");
            assert_eq!(everything(&one, &ids), everything(&two, &ids), "{case}");
        }
    }

    #[test]
    fn columns_are_found_by_human_readable_names_and_metadata_by_defined_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        std::fs::write(
            &p,
            "\u{feff}Source ID,Name,Address City,Updated At,metadata.tier,Metadata: Big Spender,metadata.other\n\
             a,Ann,Oslo,2026-01-02T03:04:05.678Z,gold,true,x\n\
             b,,,,,,\n",
        )
        .unwrap();
        let schema: CustomerSchema = serde_json::from_value(serde_json::json!({
            "properties": {"tier": {"type": "string"}, "big_spender": {"type": "boolean"}}
        }))
        .unwrap();
        let f = HeldFile::open(&p, &schema).unwrap();
        assert_eq!(f.len(), 2);
        let a = f.get("a").unwrap().unwrap();
        assert_eq!(a.standard[0].as_deref(), Some("Ann"));
        assert_eq!(a.standard[7].as_deref(), Some("Oslo"));
        assert_eq!(a.standard[1], None, "no email column: unreadable");
        assert_eq!(a.metadata["tier"], "gold");
        assert_eq!(a.metadata["big_spender"], "true");
        assert!(!f.has_metadata_column("other"), "not defined in the schema");
        assert!(a.updated_at.is_some());
        let b = f.get("b").unwrap().unwrap();
        assert_eq!(b.standard[0].as_deref(), Some(""));
        assert!(f.get("c").unwrap().is_none());
    }
}
