//! Reading and checking a customers CSV: the header mapped onto our columns,
//! each row parsed and validated. Nothing here sends or writes except the
//! `--skip-invalid` rejects file, and only when asked for it.

use crate::error::InputErrors;
use crate::files::AtomicFile;
use crate::records::{unguard_cell, CustomerRow, COLUMNS};
use crate::ui;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::Path;

/// The CSV's header mapped onto our columns.
pub struct Layout {
    /// For each CSV field: index into COLUMNS.
    pub fields: Vec<usize>,
}

/// The separator of a customers CSV: `,`, `;` or tab, as its header shows
/// (a spreadsheet in a European locale saves with `;`).
pub fn separator(path: &Path) -> Result<u8> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut first = Vec::new();
    std::io::BufReader::new(f)
        .take(1 << 20)
        .read_until(b'\n', &mut first)
        .with_context(|| format!("cannot read {}", path.display()))?;
    match crate::edits::detect_separator(&first) {
        Ok(sep) => Ok(sep),
        // No separator gives known columns: read with commas, and let the
        // header check name the unknown columns.
        Err(why) if why.is_empty() => Ok(b','),
        Err(why) => Err(InputErrors {
            problems: vec![format!("{}:1: {why}", path.display())],
            hint: format!("{}: nothing was sent", path.display()),
        }
        .into()),
    }
}

pub fn open_csv(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let sep = separator(path)?;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .delimiter(sep)
        .from_reader(f))
}

pub fn read_layout(
    path: &Path,
    rdr: &mut csv::Reader<std::fs::File>,
) -> Result<Layout, Vec<String>> {
    let file = path.display();
    let header = match rdr.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(vec![format!("{file}:1: cannot read the header row: {e}")]),
    };
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(vec![format!("{file}:1: the file is empty; expected a header row naming the columns (source_id required)")]);
    }
    let mut problems = Vec::new();
    let mut fields = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in header.iter().enumerate() {
        let name = match std::str::from_utf8(raw) {
            Ok(n) => n.trim_start_matches('\u{feff}'),
            Err(_) => {
                problems.push(format!(
                    "{file}:1: column {}: header is not valid UTF-8",
                    i + 1
                ));
                continue;
            }
        };
        match COLUMNS.iter().position(|c| *c == name) {
            Some(idx) => {
                if !seen.insert(idx) {
                    problems.push(format!(
                        "{file}:1: column {name}: appears twice in the header"
                    ));
                }
                fields.push(idx);
            }
            None => problems.push(format!(
                "{file}:1: column {name:?}: unknown column; known columns are {} (separated by commas, semicolons or tabs, one kind per file)",
                COLUMNS.join(", ")
            )),
        }
    }
    if !seen.contains(&0) && problems.is_empty() {
        problems.push(format!(
            "{file}:1: column source_id: required column is missing from the header"
        ));
    }
    if problems.is_empty() {
        Ok(Layout { fields })
    } else {
        Err(problems)
    }
}

fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Build a row from a CSV record and check it; problems are column: message.
pub fn parse_row(layout: &Layout, rec: &csv::ByteRecord) -> (CustomerRow, Vec<(String, String)>) {
    let mut row = CustomerRow::default();
    let mut problems = Vec::new();
    for (field, raw) in layout.fields.iter().zip(rec.iter()) {
        let col = COLUMNS[*field];
        match std::str::from_utf8(raw) {
            Ok(text) => {
                let value = unguard_cell(text);
                if let Some(cell) = row.cell_mut(*field) {
                    *cell = (!value.is_empty()).then(|| value.to_string());
                }
            }
            Err(_) => problems.push((
                col.to_string(),
                match crate::edits::as_windows_1252(raw) {
                    Some(text) => format!("not UTF-8: it reads as Windows-1252 ({text:?}), as a spreadsheet's plain \"CSV\" save writes; re-save the file as \"CSV UTF-8\""),
                    None => "not valid UTF-8".to_string(),
                },
            )),
        }
    }
    match &row.source_id {
        None => problems.push((
            "source_id".into(),
            "empty; every customer needs a source_id".into(),
        )),
        Some(s) if s.trim().is_empty() => problems.push((
            "source_id".into(),
            "only whitespace; every customer needs a source_id".into(),
        )),
        _ => {}
    }
    if let Some(b) = &row.birthdate {
        if !crate::dates::is_real_date(b) {
            problems.push((
                "birthdate".into(),
                match crate::edits::date_format_found(b) {
                    Some(found) => format!("{b:?} is not a date in YYYY-MM-DD form: found {found}, as a spreadsheet writes dates in a locale format; format the column as text before editing, and write dates as YYYY-MM-DD"),
                    None => format!("{b:?} is not a real date in YYYY-MM-DD form"),
                },
            ));
        }
    }
    if let Some(m) = &row.metadata {
        match serde_json::from_str::<Value>(m) {
            Ok(Value::Object(_)) => {}
            Ok(_) => problems.push((
                "metadata".into(),
                "must be a JSON object like {\"key\":\"value\"}".into(),
            )),
            Err(e) => problems.push(("metadata".into(), format!("not valid JSON ({e})"))),
        }
    }
    if let Some(e) = &row.email {
        if !plausible_email(e) {
            problems.push((
                "email".into(),
                format!("{e:?} does not look like an email address"),
            ));
        }
    }
    (row, problems)
}

fn h128(s: &str) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (0xC0FFEEu32, s).hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

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
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let msg = match e.kind() {
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
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let (row, mut errs) = parse_row(&layout, &rec);
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

/// Every row's metadata checked against the project's customer schema, as
/// problems by line (`metadata.KEY: what is wrong`).
pub fn schema_problems(
    path: &Path,
    schema: &crate::metadata_schema::CustomerSchema,
) -> Result<HashMap<u64, Vec<(String, String)>>> {
    let mut out: HashMap<u64, Vec<(String, String)>> = HashMap::new();
    if schema.properties.is_empty() && schema.allow_defined_only != Some(true) {
        return Ok(out);
    }
    let mut rdr = open_csv(path)?;
    let Ok(layout) = read_layout(path, &mut rdr) else {
        return Ok(out); // validation names the header's problems
    };
    let mut rec = csv::ByteRecord::new();
    while let Ok(more) = rdr.read_byte_record(&mut rec) {
        if !more {
            break;
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let (row, _) = parse_row(&layout, &rec);
        let Some(Ok(Value::Object(m))) = row.metadata.as_deref().map(serde_json::from_str::<Value>)
        else {
            continue;
        };
        for (key, why) in schema.check(&m) {
            out.entry(line)
                .or_default()
                .push((format!("metadata.{key}"), why));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_plausibility() {
        for ok in ["a@b.co", "first.last+tag@example.com", "Zoë@exämple.de"] {
            assert!(plausible_email(ok), "{ok}");
        }
        for bad in ["", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@.de", "a@de."] {
            assert!(!plausible_email(bad), "{bad}");
        }
    }
}
