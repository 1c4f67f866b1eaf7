//! Extract's output while it runs: `profiles.ndjson.partial`, one complete
//! line per profile in one `write` each, and the checkpoint
//! (`state::checkpoint`) that says up to where the file can be trusted.
//!
//! Resume rule: the checkpoint holds the listing pass and the cursor after
//! the last page of that pass whose profiles are *all* written, and the byte
//! offset of the partial file at that moment. A rerun cuts a torn last line,
//! reads the ids of every profile in the file (they are settled: the listing
//! skips them), and lists again from the cursor. When the last pass is done
//! the partial file is renamed over `profiles.ndjson`, so a complete earlier
//! file is never replaced by a half-written one.

use crate::config::SegmentConfig;
use crate::error::UsageError;
use crate::files;
use crate::records::ProfileRecord;
use crate::state::{self, checkpoint, checkpoint::Checkpoint};
use crate::ui;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The profiles settled so far (written, or gone), as 128-bit hashes of their
/// ids: 16 bytes a profile, so a listing that repeats a profile (activity
/// moves it) never writes it twice.
#[derive(Default)]
pub struct Seen(HashSet<u128>);

impl Seen {
    fn key(id: &str) -> u128 {
        crate::keys::h128(id)
    }

    /// Mark `id` settled; false when it already was.
    pub fn insert(&mut self, id: &str) -> bool {
        self.0.insert(Self::key(id))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub struct Journal {
    file: File,
    partial: PathBuf,
    cp_path: PathBuf,
    /// `profiles.missing.csv`, appended a line per profile not read.
    missing_path: PathBuf,
    pub cp: Checkpoint,
    /// Complete lines in the partial file.
    pub lines: u64,
    /// Requests made by earlier runs of this extraction.
    pub requests_before: u64,
    buf: Vec<u8>,
}

/// Whether an unfinished run left anything worth resuming.
fn has_progress(cp: &Checkpoint, partial: &Path) -> bool {
    cp.pages_committed > 0
        || cp.lines > 0
        || std::fs::metadata(partial)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
}

impl Journal {
    /// Open the journal for `out`: resume an unfinished extraction of the same
    /// space, or start over. Returns the profiles already settled (written,
    /// or gone) that the listing must skip.
    pub fn open(
        out: &Path,
        cfg: &SegmentConfig,
        fresh: bool,
        incremental: bool,
        census: Option<&super::census::Census>,
        source: &str,
    ) -> Result<(Journal, Seen)> {
        let partial = state::partial(out);
        let cp_path = state::checkpoint(out);
        files::ensure_dir(&files::parent_dir(out))?;
        let resume = match checkpoint::read(&cp_path)? {
            Some(cp)
                if !cp.complete && !fresh && partial.exists() && has_progress(&cp, &partial) =>
            {
                if cp.source != source {
                    let what = |s: &str| match s {
                        "" => "Segment's profile listing".to_string(),
                        s => format!("an --ids file ({})", s.trim_start_matches("ids:")),
                    };
                    return Err(UsageError::new(format!(
                        "{} belongs to an unfinished extraction from {}, not {}; finish it as it was started, or run `segsync extract --fresh` to start over",
                        cp_path.display(),
                        what(&cp.source),
                        what(source)
                    ))
                    .into());
                }
                if cp.version != checkpoint::VERSION
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
        let mut skip = Seen::default();
        let mut lines = 0u64;
        let resumed = match resume {
            Some(cp) => Self::read_resume_point(&partial, cp, &mut skip, &mut lines, census)?,
            None => None,
        };
        let mut cp = match resumed {
            Some(cp) => cp,
            None => {
                // A fresh start: nothing of an earlier unfinished run is kept.
                skip = Seen::default();
                lines = 0;
                let _ = std::fs::remove_file(&partial);
                let _ = std::fs::remove_file(state::missing(out));
                Checkpoint {
                    version: checkpoint::VERSION,
                    space_id: cfg.space_id.clone(),
                    api_url: cfg.api_url.as_str().to_string(),
                    started_at: state::now(),
                    incremental,
                    pass: 1,
                    source: source.to_string(),
                    ..Default::default()
                }
            }
        };
        let file = files::open_append(&partial)?;
        checkpoint::save(&cp_path, &mut cp)?;
        let requests_before = cp.requests;
        Ok((
            Journal {
                file,
                partial,
                cp_path,
                missing_path: state::missing(out),
                cp,
                lines,
                requests_before,
                buf: Vec::with_capacity(64 * 1024),
            },
            skip,
        ))
    }

    /// Cut a torn tail and collect what was written after the checkpoint.
    /// None: the file does not match its checkpoint; start over.
    fn read_resume_point(
        partial: &Path,
        cp: Checkpoint,
        skip: &mut Seen,
        lines: &mut u64,
        census: Option<&super::census::Census>,
    ) -> Result<Option<Checkpoint>> {
        let (len, dropped) = files::truncate_torn_tail(partial)?;
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
            return Ok(None);
        }
        // Every profile in the file is settled, whichever pass wrote it.
        #[derive(serde::Deserialize)]
        struct Head {
            segment_id: String,
        }
        let f = File::open(partial)?;
        let mut n = 0u64;
        for (i, line) in BufReader::with_capacity(1 << 20, f).lines().enumerate() {
            let line = line?;
            let head: Head = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{}:{}: not a profile line; run `segsync extract --fresh`",
                    partial.display(),
                    i + 1
                )
            })?;
            skip.insert(&head.segment_id);
            if let Some(c) = census {
                c.add_line(line.as_bytes());
            }
            n += 1;
        }
        for id in &cp.missing {
            skip.insert(id);
        }
        *lines = n;
        ui::info(format!(
            "extract: resuming {} ({} profiles already written, {} listing pages done)",
            partial.display(),
            lines,
            cp.pages_committed
        ));
        Ok(Some(cp))
    }

    /// Append one profile. Unbuffered on purpose: each profile goes to the
    /// file in one write as soon as it is complete, so a kill loses only what
    /// was in flight.
    pub fn write_record(&mut self, rec: &ProfileRecord) -> Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, rec)?;
        self.buf.push(b'\n');
        self.file.write_all(&self.buf)?;
        self.lines += 1;
        Ok(())
    }

    /// Append a line copied from the previous file.
    pub fn write_line(&mut self, mut line: Vec<u8>) -> Result<()> {
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        self.file.write_all(&line)?;
        self.lines += 1;
        Ok(())
    }

    /// Flush what is written and record the resume point: `ahead` are the
    /// profiles of pages not yet committed that are already in the file.
    pub fn commit(&mut self, ahead: Vec<String>, requests: u64) -> Result<()> {
        self.file.sync_data()?;
        self.cp.offset = self.file.metadata()?.len();
        self.cp.lines = self.lines;
        self.cp.ahead = ahead;
        self.cp.requests = self.requests_before + requests;
        checkpoint::save(&self.cp_path, &mut self.cp)
    }

    pub fn checkpoint_path(&self) -> &Path {
        &self.cp_path
    }

    pub fn missing_path(&self) -> &Path {
        &self.missing_path
    }

    /// A profile that could not be read: a line of `profiles.missing.csv`
    /// (`segment_id,asked,answered`), written at once, so a stopped run
    /// keeps it (a resumed one appends).
    pub fn note_missing(
        &mut self,
        segment_id: &str,
        m: &crate::api::segment::Missing,
    ) -> Result<()> {
        use crate::records::guard_cell;
        let new = !self.missing_path.exists();
        let f = files::open_append(&self.missing_path)?;
        let mut w = csv::Writer::from_writer(f);
        if new {
            w.write_record(["segment_id", "asked", "answered"])?;
        }
        w.write_record([
            guard_cell(segment_id).as_ref(),
            guard_cell(&m.asked).as_ref(),
            guard_cell(&m.answered).as_ref(),
        ])?;
        w.flush()
            .with_context(|| format!("cannot write {}", self.missing_path.display()))
    }

    /// Make the file complete and put it in place as `out`.
    pub fn finish(mut self, out: &Path, requests: u64) -> Result<()> {
        self.file.sync_all()?;
        drop(self.file);
        std::fs::rename(&self.partial, out).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.partial.display(),
                out.display()
            )
        })?;
        self.cp.complete = true;
        self.cp.cursor = None;
        self.cp.ahead.clear();
        self.cp.lines = self.lines;
        self.cp.offset = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        self.cp.requests = self.requests_before + requests;
        checkpoint::save(&self.cp_path, &mut self.cp)
    }
}
