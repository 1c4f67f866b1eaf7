//! `segsync extract`: Segment Profile API → `profiles.ndjson`.
//!
//! Reads: every profile of the space (listing pages of 100), and for each one
//! every page of its traits (200 a page) and external ids (100 a page), with
//! the two lists of a profile fetched together and up to `--concurrency`
//! profiles in flight, while the next listing page is already being read. One
//! token bucket (`--rate-limit`) paces every Segment request.
//!
//! Writes: `profiles.ndjson.partial`, one complete JSON line per profile, and
//! `extract.checkpoint.json` beside it; when the listing is exhausted the
//! partial file is renamed over `profiles.ndjson`, so a complete earlier file
//! is never replaced by a half-written one.
//!
//! Resumes: the checkpoint holds the listing cursor after the last page whose
//! profiles are *all* written, the byte offset of the partial file at that
//! moment, and the ids of later pages already written by then. A rerun cuts a
//! torn last line, skips every profile written after that point, and lists
//! again from the cursor: only the pages that were in flight are requested
//! twice, and every profile ends in the file exactly once. Memory stays flat:
//! only in-flight pages are held.

use crate::config::SegmentArgs;
use crate::error::{ApiError, UsageError};
use crate::files::{self, AtomicFile};
use crate::http::HttpSettings;
use crate::records::ProfileRecord;
use crate::segment::{ProfilePage, SegmentClient};
use crate::ui::{self, Progress};
use anyhow::{Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Output file [default: DATA_DIR/profiles.ndjson]
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Profiles fetched at once (each has its traits and external ids requests in flight together)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub concurrency: u32,
    /// Segment requests per second, all endpoints together (Segment allows 100 per space); 0 = no limit
    #[arg(long = "rate-limit", default_value_t = 100, value_name = "PER_SECOND")]
    pub rate_limit: u32,
    /// Ignore any checkpoint and unfinished file: start the extraction over
    #[arg(long)]
    pub fresh: bool,
    /// Reuse profiles from the previous complete file whose metadata.updated_at is unchanged
    #[arg(long)]
    pub incremental: bool,
    #[command(flatten)]
    pub segment: SegmentArgs,
}

/// What `extract.checkpoint.json` holds. Small and readable on purpose.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    pub version: u32,
    pub space_id: String,
    pub api_url: String,
    pub started_at: String,
    pub updated_at: String,
    /// The listing is exhausted and `profiles.ndjson` holds the result.
    pub complete: bool,
    pub incremental: bool,
    /// Listing cursor of the first page not yet fully written (None: the first page).
    pub cursor: Option<String>,
    pub pages_committed: u64,
    /// Length of the partial file when `cursor` was committed.
    pub offset: u64,
    /// Complete lines before `offset`.
    pub lines: u64,
    /// Profiles of later pages already written before `offset`.
    pub ahead: Vec<String>,
    /// Profiles listed but gone (404) when their traits were read.
    pub missing: Vec<String>,
    pub reused: u64,
    pub requests: u64,
}

pub const CHECKPOINT_VERSION: u32 = 1;

/// Listing pages read ahead of the detail fetches. Listing is serial (each
/// page needs the previous cursor), so at high rate limits it must run ahead.
pub const LISTING_LOOKAHEAD: usize = 4;

pub fn checkpoint_path(out: &Path) -> PathBuf {
    files::parent_dir(out).join("extract.checkpoint.json")
}

pub fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

pub fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{}: not a segsync checkpoint; delete it or run `segsync extract --fresh`",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Whether an unfinished run left anything worth resuming.
fn has_progress(cp: &Checkpoint, partial: &Path) -> bool {
    cp.pages_committed > 0
        || cp.lines > 0
        || std::fs::metadata(partial)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Summary of a run, for the caller and tests.
#[derive(Debug, Default)]
pub struct Summary {
    pub profiles: u64,
    pub fetched: u64,
    pub reused: u64,
    pub missing: u64,
    pub requests: u64,
}

/// A listing page being worked on.
struct PageState {
    /// Cursor that lists the page after this one (None: this was the last).
    next: Option<String>,
    /// Profiles not yet written or found missing.
    remaining: usize,
    /// All profiles received from the listing.
    written: Vec<String>,
}

/// The previous complete file, indexed to reuse unchanged profiles.
struct PreviousFile {
    file: File,
    /// hash(segment_id) → (hash(updated_at), offset, length)
    index: HashMap<u64, (u64, u64, u32)>,
}

fn h64(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl PreviousFile {
    fn open(path: &Path) -> Result<PreviousFile> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file.try_clone()?);
        let mut index = HashMap::new();
        let mut offset = 0u64;
        let mut line = Vec::new();
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            segment_id: std::borrow::Cow<'a, str>,
            #[serde(default)]
            metadata: Option<Meta>,
        }
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            updated_at: Option<String>,
        }
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if let Ok(head) = serde_json::from_slice::<Head>(&line) {
                let updated = head.metadata.and_then(|m| m.updated_at).unwrap_or_default();
                index.insert(h64(&head.segment_id), (h64(&updated), offset, n as u32));
            }
            offset += n as u64;
        }
        Ok(PreviousFile { file, index })
    }

    /// The previous line of `segment_id` if its `updated_at` is unchanged.
    fn reusable(&mut self, segment_id: &str, updated_at: &str) -> Option<Vec<u8>> {
        let &(uh, off, len) = self.index.get(&h64(segment_id))?;
        if uh != h64(updated_at) {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        self.file.seek(SeekFrom::Start(off)).ok()?;
        self.file.read_exact(&mut buf).ok()?;
        // Guard against hash collisions: the line must be that profile's.
        let rec: ProfileRecord = serde_json::from_slice(&buf).ok()?;
        (rec.segment_id == segment_id && rec.updated_at() == Some(updated_at)).then_some(buf)
    }
}

pub async fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    let cfg = args.segment.resolve()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| data_dir.join("profiles.ndjson"));
    let partial = partial_path(&out);
    let cp_path = checkpoint_path(&out);
    files::ensure_dir(&files::parent_dir(&out))?;

    let previous = read_checkpoint(&cp_path)?;
    let resume = match previous {
        Some(cp)
            if !cp.complete && !args.fresh && partial.exists() && has_progress(&cp, &partial) =>
        {
            if cp.version != CHECKPOINT_VERSION
                || cp.space_id != cfg.space_id
                || cp.api_url != cfg.api_url.as_str()
            {
                return Err(UsageError::new(format!(
                    "{} belongs to an unfinished extraction of space {} at {}; run `segsync extract --fresh` to start over for this space",
                    cp_path.display(),
                    cp.space_id,
                    cp.api_url
                ))
                .into());
            }
            Some(cp)
        }
        _ => None,
    };

    // Where to start, and which already-written profiles to skip.
    let mut skip: HashSet<String> = HashSet::new();
    let mut written_lines = 0u64;
    let mut resumed = None;
    if let Some(cp) = resume {
        let (len, dropped) = files::truncate_torn_tail(&partial)?;
        if dropped > 0 {
            ui::warn(format!(
                "{}: discarded a torn last line ({dropped} bytes) left by an interrupted run",
                partial.display()
            ));
        }
        if len < cp.offset {
            ui::warn(format!(
                "{} is shorter than its checkpoint says; starting the extraction over",
                partial.display()
            ));
        } else {
            skip.extend(cp.ahead.iter().cloned());
            let mut f = File::open(&partial)?;
            f.seek(SeekFrom::Start(cp.offset))?;
            let mut tail_lines = 0u64;
            for line in BufReader::new(f).lines() {
                let line = line?;
                let rec: ProfileRecord = serde_json::from_str(&line).with_context(|| {
                    format!("{}: a line after offset {} is not a profile; run `segsync extract --fresh`", partial.display(), cp.offset)
                })?;
                skip.insert(rec.segment_id);
                tail_lines += 1;
            }
            written_lines = cp.lines + tail_lines;
            ui::info(format!(
                "extract: resuming {} ({} profiles already written, {} listing pages done)",
                partial.display(),
                written_lines,
                cp.pages_committed
            ));
            resumed = Some(cp);
        }
    }
    let mut cp = match resumed {
        Some(cp) => cp,
        None => {
            // A fresh start: nothing of an earlier unfinished run is kept.
            skip.clear();
            let _ = std::fs::remove_file(&partial);
            Checkpoint {
                version: CHECKPOINT_VERSION,
                space_id: cfg.space_id.clone(),
                api_url: cfg.api_url.as_str().to_string(),
                started_at: now(),
                incremental: args.incremental,
                ..Default::default()
            }
        }
    };
    let incremental = cp.incremental || args.incremental;
    let mut prev = if incremental && out.exists() {
        let p = PreviousFile::open(&out)?;
        ui::info(format!(
            "extract: incremental: {} profiles in the previous {}",
            p.index.len(),
            out.display()
        ));
        Some(p)
    } else {
        if incremental {
            ui::warn(format!(
                "--incremental: no previous {} to reuse; extracting everything",
                out.display()
            ));
        }
        None
    };

    let settings = HttpSettings {
        concurrency: args.concurrency as usize * 2 + 2,
        rate: (args.rate_limit > 0).then_some(args.rate_limit),
        rate_period: Duration::from_secs(1),
        // A small burst (1/20 s of requests) lets a request that woke late be
        // made up for; Segment's own bucket holds a whole second.
        burst: Some((args.rate_limit / 20).max(1)),
        ..Default::default()
    };
    let client = Arc::new(SegmentClient::new(cfg.clone(), settings)?);
    // Unbuffered on purpose: each profile goes to the file in one write as
    // soon as it is complete, so a kill loses only what was in flight.
    let mut journal = files::open_append(&partial)?;
    let mut line_buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let cp_requests_before = cp.requests;
    save_checkpoint(&cp_path, &mut cp)?;

    let progress = Progress::new(
        "extract",
        "profiles",
        prev.as_ref().map(|p| p.index.len() as u64),
    );
    progress.set_position(written_lines);
    let started = Instant::now();
    let mut summary = Summary {
        reused: cp.reused,
        missing: cp.missing.len() as u64,
        ..Default::default()
    };

    // Listing runs ahead in its own task, up to LISTING_LOOKAHEAD pages ahead of the fetches.
    let (page_tx, mut page_rx) = tokio::sync::mpsc::channel::<
        Result<(ProfilePage, Option<String>), ApiError>,
    >(LISTING_LOOKAHEAD);
    let lister = {
        let client = client.clone();
        let mut cursor = cp.cursor.clone();
        tokio::spawn(async move {
            let mut seen_cursors: HashSet<String> = HashSet::new();
            let mut last_ids: Vec<String> = Vec::new();
            let mut empty_pages = 0u32;
            loop {
                let page = client.list_profiles(cursor.as_deref()).await;
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = page_tx.send(Err(e)).await;
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
                    let _ = page_tx
                        .send(Err(ApiError::Contract {
                            api: "Segment",
                            endpoint: "GET profiles".into(),
                            message: "a listing page repeats the previous page".into(),
                        }))
                        .await;
                    return;
                }
                if ids.is_empty() && page.cursor.has_more {
                    empty_pages += 1;
                    if empty_pages >= 3 {
                        let _ = page_tx.send(Err(ApiError::Contract { api: "Segment", endpoint: "GET profiles".into(), message: "the listing returns empty pages but says it has more (it would never end)".into() })).await;
                        return;
                    }
                } else {
                    empty_pages = 0;
                }
                last_ids = ids;
                let next = if page.cursor.has_more {
                    page.cursor.next.clone()
                } else {
                    None
                };
                if let Some(n) = &next {
                    if !seen_cursors.insert(n.clone()) {
                        let _ = page_tx
                            .send(Err(ApiError::Contract {
                                api: "Segment",
                                endpoint: "GET profiles".into(),
                                message: "the listing cursor repeats (the list would never end)"
                                    .into(),
                            }))
                            .await;
                        return;
                    }
                }
                let done = next.is_none();
                if page_tx.send(Ok((page, next.clone()))).await.is_err() {
                    return;
                }
                if done {
                    return;
                }
                cursor = next;
            }
        })
    };

    type Fetch = (
        u64,
        Map<String, Value>,
        Result<Option<(Map<String, Value>, Vec<Value>)>, ApiError>,
    );
    let mut in_flight: FuturesUnordered<
        std::pin::Pin<Box<dyn std::future::Future<Output = Fetch> + Send>>,
    > = FuturesUnordered::new();
    let mut queue: VecDeque<(u64, Map<String, Value>)> = VecDeque::new();
    let mut pages: BTreeMap<u64, PageState> = BTreeMap::new();
    let mut next_page_index = cp.pages_committed;
    let mut listing_done = false;
    let concurrency = args.concurrency as usize;
    let mut last_checkpoint = Instant::now();

    let outcome: Result<()> = async {
        loop {
            while in_flight.len() < concurrency {
                let Some((page, entry)) = queue.pop_front() else { break };
                let client = client.clone();
                in_flight.push(Box::pin(async move {
                    let id = entry.get("segment_id").and_then(Value::as_str).unwrap_or_default().to_string();
                    let (t, e) = tokio::join!(client.all_traits(&id), client.all_external_ids(&id));
                    let r = match (t, e) {
                        (Ok(Some(t)), Ok(Some(e))) => Ok(Some((t, e))),
                        (Err(err), _) | (_, Err(err)) => Err(err),
                        _ => Ok(None),
                    };
                    (page, entry, r)
                }));
            }
            if listing_done && in_flight.is_empty() && queue.is_empty() {
                break;
            }
            // Keep a page's worth queued beyond what is in flight, so the
            // fetches never wait for the (serial) listing.
            let want_page = !listing_done
                && queue.len() < concurrency + crate::segment::PROFILES_LIMIT as usize;
            tokio::select! {
                Some((page, entry, r)) = in_flight.next(), if !in_flight.is_empty() => {
                    let id = entry.get("segment_id").and_then(Value::as_str).unwrap_or_default().to_string();
                    match r? {
                        Some((traits, external_ids)) => {
                            let rec = record(entry, traits, external_ids);
                            line_buf.clear();
                            serde_json::to_writer(&mut line_buf, &rec)?;
                            line_buf.push(b'\n');
                            journal.write_all(&line_buf)?;
                            written_lines += 1;
                            summary.fetched += 1;
                            progress.inc(1);
                        }
                        None => {
                            ui::debug(format!("extract: profile {id} disappeared before it could be read (404); skipped"));
                            cp.missing.push(id.clone());
                            summary.missing += 1;
                        }
                    }
                    if let Some(p) = pages.get_mut(&page) {
                        p.remaining -= 1;
                        p.written.push(id);
                    }
                }
                msg = page_rx.recv(), if want_page => {
                    match msg {
                        None => listing_done = true,
                        Some(Err(e)) => return Err(listing_error(e)),
                        Some(Ok((page, next))) => {
                            let index = next_page_index;
                            next_page_index += 1;
                            let mut state = PageState { next: next.clone(), remaining: 0, written: Vec::new() };
                            for entry in page.profiles {
                                let id = entry.get("segment_id").and_then(Value::as_str).unwrap_or_default().to_string();
                                if skip.remove(&id) {
                                    continue;
                                }
                                if let Some(prev) = prev.as_mut() {
                                    let updated = entry.get("metadata").and_then(|m| m.get("updated_at")).and_then(Value::as_str).unwrap_or("");
                                    if let Some(line) = prev.reusable(&id, updated) {
                                        let mut line = line;
                                        if !line.ends_with(b"\n") {
                                            line.push(b'\n');
                                        }
                                        journal.write_all(&line)?;
                                        written_lines += 1;
                                        summary.reused += 1;
                                        cp.reused += 1;
                                        progress.inc(1);
                                        continue;
                                    }
                                }
                                state.remaining += 1;
                                queue.push_back((index, entry));
                            }
                            pages.insert(index, state);
                            if next.is_none() {
                                listing_done = true;
                            }
                        }
                    }
                }
            }
            // Commit every leading page whose profiles are all written.
            let mut advanced = false;
            while let Some(entry) = pages.first_entry() {
                if entry.get().remaining > 0 {
                    break;
                }
                let state = entry.remove();
                cp.cursor = state.next;
                cp.pages_committed += 1;
                advanced = true;
            }
            if advanced && last_checkpoint.elapsed() >= Duration::from_millis(200) {
                commit(&mut journal, &mut cp, &pages, written_lines, client.stats().get(&client.stats().requests) + cp_requests_before, &cp_path)?;
                last_checkpoint = Instant::now();
            }
            progress.tick(|| {
                let s = client.stats();
                format!("{} in flight, {} requests, {} retries, {} answered 429", in_flight.len(), s.get(&s.requests), s.get(&s.retries), s.get(&s.throttled))
            });
        }
        Ok(())
    }
    .await;
    lister.abort();
    let requests_now = client.stats().get(&client.stats().requests) + cp_requests_before;

    if let Err(e) = outcome {
        // Keep what is written; the checkpoint already points at a safe resume point.
        let _ = commit(
            &mut journal,
            &mut cp,
            &pages,
            written_lines,
            requests_now,
            &cp_path,
        );
        progress.finish();
        return Err(e.context(format!(
            "extract stopped after writing {written_lines} profiles; rerun `segsync extract` to resume (checkpoint {})",
            cp_path.display()
        )));
    }

    // Done: make the file complete and put it in place.
    journal.sync_all()?;
    drop(journal);
    drop(prev);
    std::fs::rename(&partial, &out)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
    cp.complete = true;
    cp.cursor = None;
    cp.ahead.clear();
    cp.lines = written_lines;
    cp.offset = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    cp.requests = requests_now;
    save_checkpoint(&cp_path, &mut cp)?;
    progress.finish();

    summary.profiles = written_lines;
    summary.requests = client.stats().get(&client.stats().requests);
    let secs = started.elapsed().as_secs_f64();
    let s = client.stats();
    ui::info(format!(
        "extract: {} profiles in {} ({} fetched, {} reused unchanged, {} gone before they could be read)",
        summary.profiles,
        out.display(),
        summary.fetched,
        summary.reused,
        summary.missing
    ));
    ui::info(format!(
        "extract: {}; {:.2} requests per fetched profile; {:.1}s, {:.1} profiles/s",
        s.summary(),
        if summary.fetched > 0 {
            s.get(&s.requests) as f64 / summary.fetched as f64
        } else {
            0.0
        },
        secs,
        (summary.fetched + summary.reused) as f64 / secs.max(0.001)
    ));
    Ok(summary)
}

/// 401/403/404 on the listing mean the token, space or region is wrong:
/// a configuration error (exit 2) that says what to check.
fn listing_error(e: ApiError) -> anyhow::Error {
    match e.status() {
        Some(401) | Some(403) | Some(404) => UsageError::new(format!(
            "{e}\ncheck SEGMENT_ACCESS_TOKEN (a Profile API token of this space), SEGMENT_SPACE_ID, and SEGMENT_API_URL \
             (EU spaces use https://profiles.euw1.segment.com)"
        ))
        .into(),
        _ => e.into(),
    }
}

/// Flush what is written and record the resume point.
fn commit(
    journal: &mut File,
    cp: &mut Checkpoint,
    pages: &BTreeMap<u64, PageState>,
    lines: u64,
    requests: u64,
    path: &Path,
) -> Result<()> {
    journal.sync_data()?;
    cp.offset = journal.metadata()?.len();
    // Every line up to `offset`; those of pages still pending are listed in `ahead`.
    cp.lines = lines;
    cp.ahead = pages
        .values()
        .flat_map(|p| p.written.iter().cloned())
        .collect();
    cp.requests = requests;
    save_checkpoint(path, cp)
}

fn save_checkpoint(path: &Path, cp: &mut Checkpoint) -> Result<()> {
    cp.updated_at = now();
    let mut f = AtomicFile::create(path)?;
    serde_json::to_writer_pretty(&mut f, cp)?;
    f.write_all(b"\n")?;
    f.commit()
}

/// One profile line: the listing entry's fields, then all traits and ids.
fn record(
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
