//! The rows of `customers.csv` as a plan reads them, on every core. Two
//! workers take turns reading the next chunk of records, and each checks
//! the records it read as `validate` does (every rule but duplicates),
//! builds their requests, and settles the rows whose digest the export
//! shows ([`super::digest`], the fast path: most rows of a rerun). The
//! comparison receives, in file order, a verdict per row: invalid,
//! unchanged, or a row to compare in full. Duplicates are found there, in
//! file order, as `validate` finds them: the first row of a source id is
//! the one read, the later ones are invalid.

use super::confirmed::Confirmed;
use super::held::{Found, HeldFile, Present};
use super::orphans::Seen;
use crate::files::Hashing;
use crate::keys::h128;
use crate::spreadsheet::customers_csv::open_csv_hashing;
use crate::spreadsheet::customers_csv::Cells;
use crate::spreadsheet::input::{check_row_keeping_metadata, read_layout, Layout};
use anyhow::Result;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

/// A row the comparison decides.
pub struct Row {
    pub source_id: String,
    pub segment_id: Option<String>,
    pub line: u64,
    /// The row's request as a JSON object.
    pub request: Map<String, Value>,
}

impl Row {
    /// The row's request body and its content key (`content_key_of`),
    /// exactly as `load`'s batcher makes them.
    pub fn content_key(&self) -> Result<u128> {
        let body = serde_json::to_vec(&self.request)?;
        Ok(crate::spreadsheet::batch::content_key_of(&body))
    }
}

/// What a worker made of one record.
pub enum Verdict {
    /// Left out of the plan; its source id, when the row has one, still
    /// makes a later row with it a duplicate (as in `validate`).
    Invalid(Option<Found>),
    /// The export shows exactly this row and can read back every field
    /// segsync set: unchanged, without a full comparison.
    Unchanged(Seen),
    /// The full comparison decides.
    Compare(Seen, Box<Row>),
}

/// Which rows are left out.
pub enum Skip<'a> {
    /// These lines (`load` validated every row); any other row that does
    /// not read cleanly changed since, which is an error.
    Lines(&'a HashSet<u64>),
    /// Every row that fails validation.
    Invalid,
}

/// What the workers share.
pub struct Shared<'a> {
    pub skip: Skip<'a>,
    pub held: &'a HeldFile,
    pub confirmed: &'a Confirmed,
    /// Per field list of the ledger: whether the export can read back every
    /// field in it (else a field segsync set may be unreadable).
    pub readable: Vec<bool>,
    /// Every list in `readable` is.
    pub all_readable: bool,
}

const CHUNK: usize = 1024;
const WORKERS: usize = 2;

/// Records of one chunk: (line, record, or the CSV error's text).
type Records = Vec<(u64, Result<csv::ByteRecord, String>)>;

/// Read `input` on every core, calling `f` with each verdict in file order
/// (duplicates already turned into `Invalid`); the first error stops it.
/// Gives the content hash (`file::hash_of`'s) of the bytes it read.
pub fn each(
    input: &Path,
    shared: &Shared,
    mut f: impl FnMut(Verdict) -> Result<()>,
) -> Result<String> {
    let mut rdr = open_csv_hashing(input)?;
    let layout = read_layout(input, &mut rdr).map_err(|problems| crate::error::InputErrors {
        problems,
        hint: format!("{}: fix the header; nothing was sent", input.display()),
    })?;
    let source = Mutex::new(Source {
        rdr,
        seq: 0,
        ended: false,
        hash: None,
    });
    let (done_tx, done_rx) = sync_channel::<(u64, Result<Vec<Verdict>>)>(WORKERS * 2);
    std::thread::scope(|s| {
        let (layout, source) = (&layout, &source);
        for _ in 0..WORKERS {
            let done = done_tx.clone();
            s.spawn(move || work(layout, shared, source, &done));
        }
        drop(done_tx);
        let find_duplicates = matches!(shared.skip, Skip::Invalid);
        in_order(done_rx, find_duplicates, shared.held, &mut f)
    })?;
    let hash = (source.into_inner().ok())
        .and_then(|s| s.hash)
        .ok_or_else(|| anyhow::anyhow!("{}: read but not to its end", input.display()))?;
    Ok(format!("{hash:032x}"))
}

/// The file's reader, shared by the workers. Each takes the next chunk of
/// records under the lock and judges it itself, so a record is read and
/// judged on one core, its bytes still in that core's cache (a thread that
/// only read handed every record to another core); the chunk's number keeps
/// the file's order.
struct Source {
    rdr: csv::Reader<Hashing<std::fs::File>>,
    /// The next chunk's number.
    seq: u64,
    /// The file was read to its end, and its hash.
    ended: bool,
    hash: Option<u128>,
}

/// Fill `chunk` with the next records (reusing its records); the chunk's
/// number, or None at the end of the file.
fn take(source: &Mutex<Source>, layout: &Layout, chunk: &mut Records) -> Option<u64> {
    let mut src = source.lock().ok()?;
    if src.ended {
        return None;
    }
    let mut n = 0;
    while n < CHUNK {
        if chunk.len() == n {
            chunk.push((0, Ok(csv::ByteRecord::new())));
        }
        let slot = &mut chunk[n];
        let mut rec = match std::mem::replace(&mut slot.1, Err(String::new())) {
            Ok(rec) => rec,
            Err(_) => csv::ByteRecord::new(),
        };
        match src.rdr.read_byte_record(&mut rec) {
            Ok(false) => {
                src.ended = true;
                src.hash = src.rdr.get_ref().finish();
                break;
            }
            Ok(true) => *slot = (layout.line(rec.position()), Ok(rec)),
            Err(e) => *slot = (layout.line(e.position()), Err(e.to_string())),
        }
        n += 1;
    }
    chunk.truncate(n);
    if n == 0 {
        return None;
    }
    src.seq += 1;
    Some(src.seq - 1)
}

fn work(
    layout: &Layout,
    shared: &Shared,
    source: &Mutex<Source>,
    done: &SyncSender<(u64, Result<Vec<Verdict>>)>,
) {
    let mut chunk = Records::new();
    while let Some(seq) = take(source, layout, &mut chunk) {
        // The export's digests first, in a loop of lookups alone: the
        // processor overlaps their cache misses, which one lookup per row
        // among the row's other work cannot.
        let keys: Vec<Option<u128>> = (chunk.iter())
            .map(|(_, rec)| Some(h128(source_cell(layout, rec.as_ref().ok()?)?)))
            .collect();
        let places = shared.held.places(&keys);
        let found: Vec<Option<Found>> = (keys.iter().zip(places))
            .map(|(key, place)| {
                Some(Found {
                    key: (*key)?,
                    at: place.map(|p| p.0),
                    digest: place.and_then(|p| p.1),
                })
            })
            .collect();
        let verdicts = (chunk.iter().zip(found))
            .map(|((line, rec), found)| judge(layout, shared, *line, rec, found))
            .collect::<Result<Vec<_>>>();
        if done.send((seq, verdicts)).is_err() {
            return;
        }
    }
}

/// A record's source id as `parse_row` reads it (unguarded; None when
/// empty or not UTF-8).
fn source_cell<'r>(layout: &Layout, rec: &'r csv::ByteRecord) -> Option<&'r str> {
    let at = layout.fields.iter().position(|f| *f == 0)?;
    let text = std::str::from_utf8(rec.get(at)?).ok()?;
    Some(crate::records::unguard_cell(text)).filter(|s| !s.is_empty())
}

/// One record's verdict; `found` is its source id in the export's index
/// (None when it has none).
fn judge(
    layout: &Layout,
    shared: &Shared,
    line: u64,
    rec: &Result<csv::ByteRecord, String>,
    found: Option<Found>,
) -> Result<Verdict> {
    let changed = |why: &str| {
        anyhow::anyhow!("line {line} changed since validation ({why}); rerun `segsync load`")
    };
    let skip_lines = match shared.skip {
        Skip::Lines(lines) if lines.contains(&line) => return Ok(Verdict::Invalid(None)),
        Skip::Lines(_) => true,
        Skip::Invalid => false,
    };
    let rec = match rec {
        Ok(rec) => rec,
        Err(e) if skip_lines => return Err(changed(e)),
        // A ragged row cannot be mapped to columns: invalid.
        Err(_) => return Ok(Verdict::Invalid(None)),
    };
    if let Some(v) = unchanged_from_cells(layout, shared, rec, found) {
        return Ok(v);
    }
    let (row, problems, metadata) = check_row_keeping_metadata(layout, rec);
    let (source_id, found) = match (row.source_id.clone(), found) {
        (Some(sid), Some(found)) if problems.is_empty() => (sid, found),
        _ if skip_lines => return Err(changed("it no longer reads as a valid row")),
        _ => return Ok(Verdict::Invalid(found)),
    };

    let seen = Seen::of(
        found,
        &source_id,
        row.segment_id.as_deref(),
        shared.confirmed,
    );
    if let Some(digest) = found.digest {
        // When the export reads back every field list, which fields this
        // customer had set needs no lookup.
        let set_readable = shared.all_readable
            || (shared.confirmed.last_of(seen.key))
                .and_then(|l| l.fields)
                .is_none_or(|i| shared.readable[i as usize]);
        // A row without problems has its metadata parsed already, when it
        // has any; the digest needs no request made.
        if set_readable && shared.held.layout().of_row(&row, metadata.as_ref()) == Some(digest) {
            return Ok(Verdict::Unchanged(seen));
        }
    }
    let request = row.request_with(metadata);
    Ok(Verdict::Compare(
        seen,
        Box::new(Row {
            source_id,
            segment_id: row.segment_id,
            line,
            request,
        }),
    ))
}

/// Most rows of a rerun: a valid row whose digest the export shows,
/// settled from its cells as the record holds them (no row, no metadata
/// map made). None when the full path must decide: any problem, metadata
/// the flat parse leaves to it, another digest.
fn unchanged_from_cells(
    layout: &Layout,
    shared: &Shared,
    rec: &csv::ByteRecord,
    found: Option<Found>,
) -> Option<Verdict> {
    let found = found?;
    let digest = found.digest?;
    // A record this long may make a request over Voucherify's limit: the
    // full path checks it.
    if rec.as_slice().len() >= crate::api::voucherify::MAX_REQUEST_BYTES / 6 {
        return None;
    }
    let cells = Cells::of(layout, rec);
    if !cells.problems().is_empty() || cells.email_problem().is_some() {
        return None;
    }
    let source_id = cells.at[0]?;
    let set_readable = shared.all_readable
        || (shared.confirmed.last_of(found.key))
            .and_then(|l| l.fields)
            .is_none_or(|i| shared.readable[i as usize]);
    if !set_readable {
        return None;
    }
    let metadata = match cells.at[12] {
        Some(m) => super::flat::parse(m)?,
        None => Vec::new(),
    };
    let standard: &[Option<&str>; 11] = cells.at[1..12].try_into().ok()?;
    let same = shared
        .held
        .layout()
        .of_cells(source_id, standard, &metadata)?
        == digest;
    same.then(|| Verdict::Unchanged(Seen::of(found, source_id, cells.at[13], shared.confirmed)))
}

/// The verdicts in file order, duplicates made invalid.
fn in_order(
    done: Receiver<(u64, Result<Vec<Verdict>>)>,
    find_duplicates: bool,
    held: &HeldFile,
    f: &mut impl FnMut(Verdict) -> Result<()>,
) -> Result<()> {
    let mut waiting = std::collections::BTreeMap::new();
    let mut next = 0u64;
    let mut seen = Present::new(held);
    for (seq, verdicts) in done {
        waiting.insert(seq, verdicts);
        while let Some(verdicts) = waiting.remove(&next) {
            next += 1;
            for v in verdicts? {
                let found = match &v {
                    Verdict::Invalid(found) => found.map(|f| (f.at, f.key)),
                    Verdict::Unchanged(s) | Verdict::Compare(s, _) => Some((s.at, s.key)),
                };
                let repeat =
                    find_duplicates && found.is_some_and(|(at, key)| !seen.insert(at, key));
                match v {
                    Verdict::Invalid(_) => {}
                    _ if repeat => {}
                    v => f(v)?,
                }
            }
        }
    }
    Ok(())
}
