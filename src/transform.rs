//! `segsync transform`: `profiles.ndjson` → `customers.csv` + `rejected.csv`.
//!
//! Streams the profiles through the pure mapping (`mapping::map_profile`) and
//! writes every customer as a CSV row a person can review and edit, every
//! profile that produced no customer to `rejected.csv` with the reason, and
//! every dropped value (an invalid birthdate) to `transform.warnings.csv`.
//! Profiles in = customers out + rejected, always.
//!
//! Two profiles with the same `source_id` are not both sent: the one updated
//! most recently (`metadata.updated_at`) is kept, the other rejected as
//! `duplicate_source_id`. Duplicates are found from 16 bytes per row held in
//! memory (a hash of the `source_id` and the update time), so memory stays
//! small for any input size.
//!
//! Outputs are written aside and renamed when complete. `transform.manifest.json`
//! records the SHA-256 of the `customers.csv` it wrote, so a later run can tell
//! a hand-edited file from its own and refuse to overwrite it.

use crate::error::{InputErrors, UsageError};
use crate::files::{self, AtomicFile};
use crate::mapping::{map_profile, Mapped};
use crate::records::{guard_cell, ProfileRecord, COLUMNS, REJECTED_COLUMNS};
use crate::ui;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Profiles to read [default: DATA_DIR/profiles.ndjson]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Customers CSV to write [default: DATA_DIR/customers.csv]
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Rejected profiles CSV [default: rejected.csv beside --out]
    #[arg(long = "rejected", value_name = "FILE")]
    pub rejected: Option<PathBuf>,
    /// External-id type(s) used as source_id; a comma list is a fallback order
    #[arg(
        long = "source-id-type",
        env = "IDENTIFIER_SAVED_AS_SOURCE_ID",
        default_value = "user_id",
        value_name = "TYPES"
    )]
    pub source_id_type: String,
    /// Overwrite customers.csv even if it was edited after transform wrote it
    #[arg(long)]
    pub force: bool,
    /// Send malformed lines of the input to rejected.csv instead of stopping
    #[arg(long = "skip-invalid")]
    pub skip_invalid: bool,
}

/// What transform records about the `customers.csv` it wrote.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub written_at: String,
    pub input: String,
    pub source_id_types: Vec<String>,
    pub profiles: u64,
    pub customers: u64,
    pub rejected: u64,
    pub warnings: u64,
    /// SHA-256 of customers.csv as written. While a run is replacing the file,
    /// the previous hash is listed too, so a crash between the two renames is
    /// not mistaken for a hand edit.
    pub customers_sha256: Vec<String>,
}

pub fn manifest_path(customers: &Path) -> PathBuf {
    files::parent_dir(customers).join("transform.manifest.json")
}

pub fn warnings_path(customers: &Path) -> PathBuf {
    files::parent_dir(customers).join("transform.warnings.csv")
}

pub fn read_manifest(path: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Whether `customers` differs from what transform last wrote there.
/// None: no file. Some(true): edited (or not written by transform).
pub fn edited_since_transform(customers: &Path) -> Result<Option<bool>> {
    if !customers.exists() {
        return Ok(None);
    }
    let Some(m) = read_manifest(&manifest_path(customers)) else {
        return Ok(Some(true));
    };
    let sha = files::sha256_file(customers)?;
    Ok(Some(!m.customers_sha256.contains(&sha)))
}

#[derive(Debug, Default)]
pub struct Summary {
    pub profiles: u64,
    pub customers: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub warnings: u64,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Input read per chunk handed to a worker.
const CHUNK_BYTES: usize = 1 << 20;

/// Whole lines of the input, starting at line `first_line`.
struct Chunk {
    first_line: u64,
    data: Vec<u8>,
}

/// A chunk turned into output: CSV bytes for each file, and the counts.
#[derive(Default)]
struct ChunkResult {
    customers: Vec<u8>,
    rejected: Vec<u8>,
    warnings: Vec<u8>,
    keys: Vec<(u64, i64)>,
    profiles: u64,
    warning_count: u64,
    rejected_counts: Vec<(&'static str, u64)>,
    invalid: Vec<String>,
    debug: Vec<String>,
}

impl Chunk {
    fn process(&self, id_types: &[String], input: &str, skip_invalid: bool) -> ChunkResult {
        let mut r = ChunkResult::default();
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        {
            let csv_writer = |buf: &mut Vec<u8>| {
                csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(std::mem::take(buf))
            };
            let mut customers = csv_writer(&mut r.customers);
            let mut rejected = csv_writer(&mut r.rejected);
            let mut warnings = csv_writer(&mut r.warnings);
            let lines = self.data.split(|&b| b == b'\n');
            let mut line_no = self.first_line - 1;
            // Writing CSV into memory cannot fail; errors are ignored on that basis.
            for line in lines {
                line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                r.profiles += 1;
                let profile = match crate::records::parse_for_mapping(line) {
                    Ok(p) => p,
                    Err(e) => {
                        let problem = format!("{input}:{line_no}: not a valid profile line: {e}");
                        if skip_invalid {
                            *counts.entry("invalid_json").or_default() += 1;
                            let _ = rejected.write_record(["", "invalid_json", &problem]);
                        } else {
                            r.invalid.push(problem);
                        }
                        continue;
                    }
                };
                match map_profile(&profile, id_types) {
                    Mapped::Rejected(rej) => {
                        *counts.entry(rej.reason).or_default() += 1;
                        let _ = rejected.write_record([
                            guard_cell(&profile.segment_id).as_ref(),
                            rej.reason,
                            &rej.detail,
                        ]);
                    }
                    Mapped::Customer { row, warnings: ws } => {
                        let sid = row.source_id.as_deref().unwrap_or("");
                        for w in &ws {
                            r.warning_count += 1;
                            if ui::verbosity() >= 1 {
                                r.debug.push(format!(
                                    "transform: {} ({sid}): {} {:?} dropped: {}",
                                    profile.segment_id, w.field, w.value, w.reason
                                ));
                            }
                            let _ = warnings.write_record([
                                guard_cell(&profile.segment_id).as_ref(),
                                &guard_cell(sid),
                                w.field,
                                &guard_cell(&w.value),
                                &w.reason,
                            ]);
                        }
                        let cells = row.cells().map(|c| guard_cell(c.as_deref().unwrap_or("")));
                        let _ = customers.write_record(cells.iter().map(|c| c.as_ref()));
                        r.keys.push((h64(sid), updated_millis(&profile)));
                    }
                }
            }
            r.customers = customers.into_inner().unwrap_or_default();
            r.rejected = rejected.into_inner().unwrap_or_default();
            r.warnings = warnings.into_inner().unwrap_or_default();
        }
        r.rejected_counts = counts.into_iter().collect();
        r
    }
}

fn h64(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// `updated_at` as milliseconds since the epoch, for ordering duplicates.
fn updated_millis(p: &ProfileRecord) -> i64 {
    p.updated_at()
        .and_then(|s| {
            humantime::parse_rfc3339_weak(s)
                .ok()
                .or_else(|| humantime::parse_rfc3339(s).ok())
        })
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(i64::MIN)
}

pub fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| data_dir.join("profiles.ndjson"));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| data_dir.join("customers.csv"));
    let rejected_path = args
        .rejected
        .clone()
        .unwrap_or_else(|| files::parent_dir(&out).join("rejected.csv"));
    let id_types = crate::config::identifier_types(&args.source_id_type)?;

    if !input.exists() {
        return Err(UsageError::new(format!(
            "{} not found: `segsync extract` writes it (or pass --in FILE)",
            input.display()
        ))
        .into());
    }
    let previous_sha = match edited_since_transform(&out)? {
        Some(true) if !args.force => {
            return Err(UsageError::new(format!(
                "{} was changed after transform wrote it (its content differs from the hash in {}). \
                 To keep your edits, load it as it is with `segsync load`, or move it aside first; \
                 to overwrite it, rerun with --force.",
                out.display(),
                manifest_path(&out).display()
            ))
            .into());
        }
        Some(_) => Some(files::sha256_file(&out)?),
        None => None,
    };

    let started = Instant::now();
    let file =
        std::fs::File::open(&input).with_context(|| format!("cannot read {}", input.display()))?;
    let input_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::with_capacity(1 << 20, file);

    let mut customers_file = AtomicFile::create(&out)?;
    let mut rejected_file = AtomicFile::create(&rejected_path)?;
    let warnings_file_path = warnings_path(&out);
    let mut warnings_file = AtomicFile::create(&warnings_file_path)?;
    let mut customers = csv::Writer::from_writer(customers_file.writer());
    let mut rejected = csv::Writer::from_writer(rejected_file.writer());
    let mut warnings = csv::Writer::from_writer(warnings_file.writer());
    customers.write_record(COLUMNS)?;
    rejected.write_record(REJECTED_COLUMNS)?;
    warnings.write_record(["segment_id", "source_id", "field", "value", "reason"])?;

    // Parsing and mapping run on every core: a reader thread cuts the input
    // into chunks of whole lines, workers turn each chunk into CSV bytes, and
    // this thread writes the chunks back in input order.
    let mut summary = Summary::default();
    // Per written row: hash of its source_id and its update time.
    let mut keys: Vec<(u64, i64)> = Vec::new();
    let mut invalid = Vec::new();
    let progress = ui::Progress::new("transform", "profiles", None);
    customers.flush()?;
    rejected.flush()?;
    warnings.flush()?;
    drop((customers, rejected, warnings));
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let input_name = input.display().to_string();
    let mut write_error: Option<anyhow::Error> = None;
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(u64, Chunk)>(workers * 2);
    let work_rx = std::sync::Mutex::new(work_rx);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<(u64, ChunkResult)>(workers * 2);
    let read_result = std::thread::scope(|s| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (work_rx, id_types, input_name) = (&work_rx, &id_types, &input_name);
            let skip_invalid = args.skip_invalid;
            s.spawn(move || loop {
                let job = match work_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((idx, chunk)) = job else { return };
                if done_tx
                    .send((idx, chunk.process(id_types, input_name, skip_invalid)))
                    .is_err()
                {
                    return;
                }
            });
        }
        drop(done_tx);
        let reader_thread = s.spawn(move || -> std::io::Result<()> {
            let mut line_no = 0u64;
            for idx in 0.. {
                let mut chunk = Chunk {
                    first_line: line_no + 1,
                    data: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
                };
                while chunk.data.len() < CHUNK_BYTES {
                    if reader.read_until(b'\n', &mut chunk.data)? == 0 {
                        break;
                    }
                    line_no += 1;
                }
                if chunk.data.is_empty() {
                    return Ok(());
                }
                if work_tx.send((idx, chunk)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut pending: BTreeMap<u64, ChunkResult> = BTreeMap::new();
        let mut next = 0u64;
        for (idx, result) in done_rx.iter() {
            pending.insert(idx, result);
            while let Some(r) = pending.remove(&next) {
                next += 1;
                if write_error.is_some() {
                    continue;
                }
                for msg in &r.debug {
                    ui::debug(msg);
                }
                let written = customers_file
                    .write_all(&r.customers)
                    .and_then(|_| rejected_file.write_all(&r.rejected))
                    .and_then(|_| warnings_file.write_all(&r.warnings));
                if let Err(e) = written {
                    write_error = Some(
                        anyhow::Error::new(e).context(format!("cannot write {}", out.display())),
                    );
                    continue;
                }
                keys.extend_from_slice(&r.keys);
                summary.profiles += r.profiles;
                summary.customers += r.keys.len() as u64;
                summary.warnings += r.warning_count;
                for (reason, n) in r.rejected_counts {
                    *summary.rejected.entry(reason).or_default() += n;
                }
                if invalid.len() < 20 {
                    invalid.extend(r.invalid);
                }
                progress.set_position(summary.profiles);
                progress.tick(|| {
                    format!(
                        "{} customers, {} rejected",
                        summary.customers,
                        summary.rejected_total()
                    )
                });
            }
        }
        reader_thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")))
    });
    read_result.with_context(|| format!("cannot read {}", input.display()))?;
    if let Some(e) = write_error {
        return Err(e);
    }
    invalid.truncate(20);
    let mut rejected = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(rejected_file.writer());
    progress.finish();
    if !invalid.is_empty() {
        return Err(InputErrors {
            problems: invalid,
            hint: format!(
                "{}: fix or remove these lines, or rerun with --skip-invalid to send them to {}; nothing was written",
                input.display(),
                rejected_path.display()
            ),
        }
        .into());
    }
    customers_file.writer().flush()?;

    // Duplicates: rows whose source_id hash is shared, checked on the real value.
    let losers = find_duplicates(
        &keys,
        customers_file.temp_path(),
        &mut rejected,
        &mut summary,
    )?;
    rejected.flush()?;
    drop(rejected);
    let mut customers_file = if losers.is_empty() {
        customers_file
    } else {
        let mut filtered = AtomicFile::create(&out)?;
        {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_path(customers_file.temp_path())?;
            let mut w = csv::Writer::from_writer(filtered.writer());
            w.write_record(COLUMNS)?;
            for (i, rec) in rdr.byte_records().enumerate() {
                if !losers.contains_key(&(i as u32)) {
                    w.write_byte_record(&rec?)?;
                }
            }
            w.flush()?;
        }
        summary.customers -= losers.len() as u64;
        drop(customers_file);
        filtered
    };

    // Hand-edit protection: record the hash of what we are about to put in place.
    customers_file.writer().flush()?;
    let new_sha = files::sha256_file(customers_file.temp_path())?;
    let mut manifest = Manifest {
        written_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        input: input.display().to_string(),
        source_id_types: id_types.clone(),
        profiles: summary.profiles,
        customers: summary.customers,
        rejected: summary.rejected_total(),
        warnings: summary.warnings,
        customers_sha256: [previous_sha, Some(new_sha.clone())]
            .into_iter()
            .flatten()
            .collect(),
    };
    let mpath = manifest_path(&out);
    files::write_atomic(&mpath, &serde_json::to_vec_pretty(&manifest)?)?;
    customers_file.commit()?;
    rejected_file.commit()?;
    warnings_file.commit()?;
    manifest.customers_sha256 = vec![new_sha];
    files::write_atomic(&mpath, &serde_json::to_vec_pretty(&manifest)?)?;

    if summary.profiles != summary.customers + summary.rejected_total() {
        anyhow::bail!(
            "internal error: {} profiles in but {} customers + {} rejected out",
            summary.profiles,
            summary.customers,
            summary.rejected_total()
        );
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let reasons: Vec<String> = summary
        .rejected
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    ui::info(format!(
        "transform: {} profiles in = {} customers ({}) + {} rejected ({}{})",
        summary.profiles,
        summary.customers,
        out.display(),
        summary.rejected_total(),
        rejected_path.display(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join(", "))
        }
    ));
    if summary.warnings > 0 {
        ui::info(format!(
            "transform: {} invalid birthdates dropped, customers kept (listed in {}; -v prints them)",
            summary.warnings,
            warnings_file_path.display()
        ));
    }
    ui::info(format!(
        "transform: {:.1}s, {:.0} profiles/s, {:.1} MB/s",
        secs,
        summary.profiles as f64 / secs,
        input_bytes as f64 / 1e6 / secs
    ));
    Ok(summary)
}

/// Decide which rows lose to another row with the same `source_id`: the one
/// updated most recently wins, the first listed on a tie. Losers are written
/// to `rejected`; returns their row indices.
fn find_duplicates<W: Write>(
    keys: &[(u64, i64)],
    rows_path: &Path,
    rejected: &mut csv::Writer<W>,
    summary: &mut Summary,
) -> Result<HashMap<u32, ()>> {
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_unstable_by_key(|&i| keys[i as usize].0);
    let mut candidates: HashSet<u32> = HashSet::new();
    for w in order.windows(2) {
        if keys[w[0] as usize].0 == keys[w[1] as usize].0 {
            candidates.insert(w[0]);
            candidates.insert(w[1]);
        }
    }
    let mut losers = HashMap::new();
    if candidates.is_empty() {
        return Ok(losers);
    }
    // Read the candidates' real source_id and segment_id.
    let mut groups: HashMap<Vec<u8>, Vec<(u32, Vec<u8>)>> = HashMap::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(rows_path)?;
    let sid_col = 0;
    let seg_col = COLUMNS.len() - 1;
    for (i, rec) in rdr.byte_records().enumerate() {
        let rec = rec?;
        if candidates.contains(&(i as u32)) {
            groups
                .entry(rec[sid_col].to_vec())
                .or_default()
                .push((i as u32, rec[seg_col].to_vec()));
        }
    }
    for (sid, rows) in groups {
        if rows.len() < 2 {
            continue;
        }
        let winner = rows
            .iter()
            .enumerate()
            .max_by(|(ai, a), (bi, b)| {
                keys[a.0 as usize]
                    .1
                    .cmp(&keys[b.0 as usize].1)
                    .then(bi.cmp(ai))
            })
            .map(|(_, r)| r.clone());
        let Some((win_row, win_seg)) = winner else {
            continue;
        };
        for (row, seg) in rows {
            if row == win_row {
                continue;
            }
            losers.insert(row, ());
            *summary.rejected.entry("duplicate_source_id").or_default() += 1;
            let detail = format!(
                "source_id {} also maps from segment_id {}, updated more recently, which was kept",
                String::from_utf8_lossy(&sid),
                String::from_utf8_lossy(&win_seg)
            );
            rejected.write_record([&seg[..], b"duplicate_source_id", detail.as_bytes()])?;
        }
    }
    Ok(losers)
}
