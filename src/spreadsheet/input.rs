//! Checking a customers CSV before anything is sent: every row parsed
//! (`customers_csv`) and validated, duplicates found, the project's metadata
//! schema applied. Nothing here sends or writes except the
//! `--skip-invalid` rejects file, and only when asked for it.

use crate::error::InputErrors;
use crate::files::AtomicFile;
use crate::records::COLUMNS;
pub use crate::spreadsheet::customers_csv::{open_csv, parse_row, read_layout, separator, Layout};
use crate::ui;
use anyhow::Result;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::keys::h128;

/// Result of the validation pass.
pub struct Validated {
    pub rows: u64,
    /// Lines of rows to leave out (--skip-invalid).
    pub invalid_lines: HashSet<u64>,
}

/// What to do with invalid rows.
pub enum OnInvalid<'a> {
    /// Fail, listing every problem (nothing is sent).
    Fail,
    /// Set them aside in this rejects file (`--skip-invalid`).
    SetAside(&'a Path),
    /// Only count them (for `status`, which writes nothing).
    Count,
}

/// A row whose request body alone is over Voucherify's request limit can
/// never be sent: an invalid row, like any other (exit 2, or set aside).
/// Only rows big enough to matter are serialized to know (escaping can grow
/// a cell up to six times).
fn too_large(rec: &csv::ByteRecord, row: &crate::records::CustomerRow) -> Option<(String, String)> {
    use crate::api::voucherify::MAX_REQUEST_BYTES;
    if rec.as_slice().len() < MAX_REQUEST_BYTES / 6 {
        return None;
    }
    let body = row.to_request().ok()?;
    let n = serde_json::to_vec(&body)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    (n + 2 > MAX_REQUEST_BYTES).then(|| {
        (
            "row".into(),
            format!("this customer's request alone is {n} bytes, over Voucherify's request limit of {MAX_REQUEST_BYTES} bytes (10 MB): no load can send it; shorten its cells"),
        )
    })
}

/// One row parsed and checked on its own (every rule but duplicates, which
/// need the rows before it): its problems, by column.
pub fn check_row(
    layout: &Layout,
    rec: &csv::ByteRecord,
) -> (crate::records::CustomerRow, Vec<(String, String)>) {
    let (row, errs, _) = check_row_keeping_metadata(layout, rec);
    (row, errs)
}

/// [`check_row`], giving back the parsed metadata object (see
/// `parse_row_keeping_metadata`).
pub fn check_row_keeping_metadata(
    layout: &Layout,
    rec: &csv::ByteRecord,
) -> crate::spreadsheet::customers_csv::Parsed {
    let (row, mut errs, metadata) =
        crate::spreadsheet::customers_csv::parse_row_keeping_metadata(layout, rec);
    if let Some(e) = too_large(rec, &row) {
        errs.push(e);
    }
    (row, errs, metadata)
}

/// Check every row of `path`; `extra` adds problems found elsewhere (the
/// spreadsheet damage `diff` finds), by line.
pub fn validate(
    path: &Path,
    on_invalid: OnInvalid,
    extra: &HashMap<u64, Vec<(String, String)>>,
) -> Result<Validated> {
    let file = path.display().to_string();
    let skip_invalid = !matches!(on_invalid, OnInvalid::Fail);
    let mut rdr = open_csv(path)?;
    let layout = read_layout(path, &mut rdr).map_err(|problems| InputErrors {
        problems,
        hint: format!("{file}: fix the header; nothing was sent"),
    })?;
    let mut problems: Vec<String> = Vec::new();
    let mut invalid_lines = HashSet::new();
    let mut seen: HashMap<u128, u64> = HashMap::new();
    let mut rows = 0u64;
    let mut reject_rows: Vec<Vec<String>> = Vec::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = layout.line(e.position());
                let msg = match e.kind() {
                    // A quote never closed swallows the lines after it into
                    // one cell: say so, not just that the count is off.
                    csv::ErrorKind::UnequalLengths { .. }
                        if rec.iter().any(|f| f.contains(&b'\n')) =>
                    {
                        format!(
                            "{file}:{line}: a quoted cell is never closed: its opening quote (\") runs over {} more lines; close the quote (a quote inside a cell is written \"\")",
                            rec.iter().map(|f| f.iter().filter(|&&b| b == b'\n').count()).sum::<usize>()
                        )
                    }
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => {
                        format!(
                            "{file}:{line}: row has {len} fields but the header has {expected_len}"
                        )
                    }
                    _ => format!("{file}:{line}: {e}"),
                };
                if skip_invalid {
                    // A ragged row cannot be mapped to columns; record and go on.
                    invalid_lines.insert(line);
                    reject_rows.push(vec![line.to_string(), msg.clone()]);
                    rows += 1;
                    continue;
                }
                problems.push(msg);
                if problems.len() > 1000 {
                    break;
                }
                continue;
            }
        }
        rows += 1;
        let line = layout.line(rec.position());
        let (row, mut errs) = check_row(&layout, &rec);
        if let Some(more) = extra.get(&line) {
            errs.extend(more.iter().cloned());
        }
        if let Some(sid) = &row.source_id {
            match seen.get(&h128(sid)) {
                Some(first) => errs.push((
                    "source_id".into(),
                    format!(
                        "{sid:?} already appears on line {first}; each customer must appear once"
                    ),
                )),
                None => {
                    seen.insert(h128(sid), line);
                }
            }
        }
        if errs.is_empty() {
            continue;
        }
        let text: Vec<String> = errs
            .iter()
            .map(|(c, m)| format!("{file}:{line}: {c}: {m}"))
            .collect();
        if skip_invalid {
            invalid_lines.insert(line);
            let mut cells = vec![line.to_string(), text.join("; ")];
            cells.extend(rec.iter().map(|c| String::from_utf8_lossy(c).into_owned()));
            reject_rows.push(cells);
        } else {
            problems.extend(text);
        }
    }
    if !problems.is_empty() {
        return Err(InputErrors {
            problems,
            hint: format!("{file}: nothing was sent. Fix these rows, or rerun with --skip-invalid to load the valid rows and set the invalid ones aside"),
        }
        .into());
    }
    if let OnInvalid::SetAside(rejects) = on_invalid {
        write_rejects(rejects, &layout, reject_rows, invalid_lines.len())?;
    }
    Ok(Validated {
        rows,
        invalid_lines,
    })
}

fn write_rejects(
    rejects: &Path,
    layout: &Layout,
    reject_rows: Vec<Vec<String>>,
    count: usize,
) -> Result<()> {
    if reject_rows.is_empty() {
        if rejects.exists() {
            let _ = std::fs::remove_file(rejects);
        }
        return Ok(());
    }
    let mut f = AtomicFile::create(rejects)?;
    {
        let mut w = csv::WriterBuilder::new()
            .flexible(true)
            .from_writer(f.writer());
        let mut header = vec!["line".to_string(), "errors".to_string()];
        header.extend(layout.fields.iter().map(|i| COLUMNS[*i].to_string()));
        w.write_record(&header)?;
        for r in reject_rows {
            w.write_record(&r)?;
        }
        w.flush()?;
    }
    f.commit()?;
    ui::warn(format!(
        "{count} invalid rows set aside in {} (not sent)",
        rejects.display()
    ));
    Ok(())
}

/// Every row of `path` with its line, its `source_id` and its metadata
/// object (None when empty or not an object), to `each`. A file whose header
/// does not read is left to validation, which names its problems.
fn each_metadata(
    path: &Path,
    mut each: impl FnMut(u64, Option<&str>, Option<&serde_json::Map<String, Value>>),
) -> Result<()> {
    let mut rdr = open_csv(path)?;
    let Ok(layout) = read_layout(path, &mut rdr) else {
        return Ok(());
    };
    let mut rec = csv::ByteRecord::new();
    while let Ok(more) = rdr.read_byte_record(&mut rec) {
        if !more {
            break;
        }
        let (row, _) = parse_row(&layout, &rec);
        let meta = row
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_str::<Value>(m).ok());
        each(
            layout.line(rec.position()),
            row.source_id.as_deref(),
            meta.as_ref().and_then(Value::as_object),
        );
    }
    Ok(())
}

/// Every row's metadata checked against the project's customer schema:
/// problems by line (`metadata.KEY: what is wrong`).
pub fn schema_problems(
    path: &Path,
    schema: &crate::mapping::metadata_schema::CustomerSchema,
) -> Result<HashMap<u64, Vec<(String, String)>>> {
    let mut out: HashMap<u64, Vec<(String, String)>> = HashMap::new();
    if schema.properties.is_empty() && schema.allow_defined_only != Some(true) {
        return Ok(out);
    }
    each_metadata(path, |line, _, meta| {
        for (key, why) in meta.map(|m| schema.check(m)).unwrap_or_default() {
            out.entry(line)
                .or_default()
                .push((format!("metadata.{key}"), why));
        }
    })?;
    Ok(out)
}

/// Rows of customers Voucherify does not hold yet (`is_new`) that lack a
/// metadata key the project's schema requires (`optional: false`):
/// "Voucherify rejects it with a validation error". By line.
pub fn required_problems(
    path: &Path,
    schema: &crate::mapping::metadata_schema::CustomerSchema,
    is_new: impl Fn(&str) -> bool,
) -> Result<HashMap<u64, Vec<(String, String)>>> {
    let mut out: HashMap<u64, Vec<(String, String)>> = HashMap::new();
    let required = schema.required_keys();
    if required.is_empty() {
        return Ok(out);
    }
    each_metadata(path, |line, sid, meta| {
        let Some(sid) = sid.filter(|s| is_new(s)) else {
            return;
        };
        for key in &required {
            if meta.and_then(|m| m.get(key)).is_none_or(Value::is_null) {
                out.entry(line).or_default().push((
                    format!("metadata.{key}"),
                    format!("missing, and the project's metadata schema requires it (optional: false): Voucherify rejects a new customer ({sid}) without it"),
                ));
            }
        }
    })?;
    Ok(out)
}
