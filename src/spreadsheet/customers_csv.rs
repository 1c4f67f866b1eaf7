//! Reading a customers CSV: the one owner of how `customers.csv` (or a file
//! written by hand) is read: its separator (`,` `;` or tab, as the header
//! shows), the header mapped onto the documented columns, and each row
//! parsed and checked. `load` validates with it and `diff` compares with it.

use crate::error::InputErrors;
use crate::records::{unguard_cell, CustomerRow, COLUMNS};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

/// The CSV's header mapped onto our columns.
pub struct Layout {
    /// For each CSV field: index into COLUMNS.
    pub fields: Vec<usize>,
    /// What to add to the csv crate's line count to get the file's line:
    /// after a header ended by CRLF (a spreadsheet's save) it counts one
    /// line short, so the first data row, on line 2, would be called line 1.
    line_offset: u64,
}

impl Layout {
    /// The documented columns in their order (`COLUMNS`), as transform
    /// writes them.
    pub fn standard() -> Layout {
        Layout {
            fields: (0..COLUMNS.len()).collect(),
            line_offset: 0,
        }
    }

    /// The file line a record (or a record's error) starts on, counted from 1.
    pub fn line(&self, pos: Option<&csv::Position>) -> u64 {
        pos.map(|p| p.line() + self.line_offset).unwrap_or(0)
    }
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
    match crate::spreadsheet::edits::detect_separator(&first) {
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
    let (builder, f) = customers_reader(path)?;
    Ok(builder.from_reader(f))
}

/// [`open_csv`], hashing every byte it reads ([`crate::files::Hashing`]):
/// a reader that reads to the end has then the file's content hash, of the
/// very bytes it read. Reads 256 KB at a time (a plan reads the whole file).
pub fn open_csv_hashing(path: &Path) -> Result<csv::Reader<crate::files::Hashing<std::fs::File>>> {
    let (mut builder, f) = customers_reader(path)?;
    Ok(builder
        .buffer_capacity(1 << 18)
        .from_reader(crate::files::Hashing::new(f)))
}

/// How `customers.csv` (or a hand-made file of its columns) is read: a
/// header, every record as long as it, the file's own separator.
fn customers_reader(path: &Path) -> Result<(csv::ReaderBuilder, std::fs::File)> {
    let f = crate::files::open_regular(path)?;
    let sep = separator(path)?;
    let mut builder = csv::ReaderBuilder::new();
    builder.has_headers(true).flexible(false).delimiter(sep);
    Ok((builder, f))
}

pub fn read_layout<R: std::io::Read>(
    path: &Path,
    rdr: &mut csv::Reader<R>,
) -> Result<Layout, Vec<String>> {
    let file = path.display();
    let header = match rdr.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(vec![format!("{file}:1: cannot read the header row: {e}")]),
    };
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(vec![format!("{file}:1: the file is empty; expected a header row naming the columns (source_id required)")]);
    }
    // A first line that names no known column at all is no customers CSV
    // (another file, given by mistake or through a link): named, never
    // quoted, since it may be anything.
    let known = |raw: &[u8]| {
        std::str::from_utf8(raw).is_ok_and(|n| COLUMNS.contains(&n.trim_start_matches('\u{feff}')))
    };
    if !header.iter().any(known) {
        return Err(vec![format!(
            "{file}:1: the first line names none of the columns a customers CSV has ({}, separated by commas, semicolons or tabs, one kind per file); this does not look like one (its content is not shown)",
            COLUMNS.join(", ")
        )]);
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
        // The header is one line, so the first data row starts on line 2.
        let line_offset = 2u64.saturating_sub(rdr.position().line());
        Ok(Layout {
            fields,
            line_offset,
        })
    } else {
        Err(problems)
    }
}

pub use crate::email::plausible as plausible_email;

/// Build a row from a CSV record and check it; problems are column: message.
pub fn parse_row(layout: &Layout, rec: &csv::ByteRecord) -> (CustomerRow, Vec<(String, String)>) {
    let (row, problems, _) = parse_row_keeping_metadata(layout, rec);
    (row, problems)
}

/// A row, its problems by column, and its metadata object when parsed.
pub type Parsed = (
    CustomerRow,
    Vec<(String, String)>,
    Option<serde_json::Map<String, Value>>,
);

/// A record's cells by column, borrowed from it: unguarded, None when empty
/// (or not UTF-8: those are listed, with their bytes, in `not_utf8`).
pub struct Cells<'r> {
    pub at: [Option<&'r str>; COLUMNS.len()],
    pub not_utf8: Vec<(usize, &'r [u8])>,
}

impl<'r> Cells<'r> {
    pub fn of(layout: &Layout, rec: &'r csv::ByteRecord) -> Cells<'r> {
        let mut cells = Cells {
            at: [None; COLUMNS.len()],
            not_utf8: Vec::new(),
        };
        // The record is checked once whole (a plan reads a million); a cell
        // is then its slice, unless the slice cuts a character (a cell that
        // ends inside one, the next cell holding its rest), which is then
        // checked alone, as is every cell of a record that is not UTF-8.
        let whole = std::str::from_utf8(rec.as_slice()).ok();
        for (i, (field, raw)) in layout.fields.iter().zip(rec.iter()).enumerate() {
            let Some(slot) = cells.at.get_mut(*field) else {
                continue;
            };
            let text = match whole.and_then(|w| w.get(rec.range(i)?)) {
                Some(text) => Ok(text),
                None => std::str::from_utf8(raw),
            };
            match text {
                Ok(text) => {
                    let value = unguard_cell(text);
                    *slot = (!value.is_empty()).then_some(value);
                }
                Err(_) => {
                    *slot = None;
                    cells.not_utf8.push((*field, raw));
                }
            }
        }
        cells
    }

    /// The row they make, owned.
    pub fn row(&self) -> CustomerRow {
        let mut row = CustomerRow::default();
        for (column, cell) in self.at.iter().enumerate() {
            if let (Some(slot), Some(v)) = (row.cell_mut(column), cell) {
                *slot = Some(v.to_string());
            }
        }
        row
    }

    /// Every problem but the metadata's, in the order `parse_row` lists
    /// them: cells that are not UTF-8, then `source_id`, then `birthdate`
    /// (`metadata`'s come next), and `email` last (`email_problem`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = (self.not_utf8.iter())
            .map(|(column, raw)| {
                (
                    COLUMNS[*column].to_string(),
                    match crate::spreadsheet::edits::as_windows_1252(raw) {
                        Some(text) => format!("not UTF-8: it reads as Windows-1252 ({text:?}), as a spreadsheet's plain \"CSV\" save writes; re-save the file as \"CSV UTF-8\""),
                        None => "not valid UTF-8".to_string(),
                    },
                )
            })
            .collect();
        let unreadable_id = self.not_utf8.iter().any(|(c, _)| *c == 0);
        let problem = |why: String| ("source_id".to_string(), why);
        match self.at[0] {
            // Not UTF-8 is the problem already named, not an empty cell.
            None if unreadable_id => {}
            None => problems.push(problem("empty; every customer needs a source_id".into())),
            Some(s) if s.trim().is_empty() => {
                problems.push(problem("only whitespace; every customer needs a source_id".into()))
            }
            // Voucherify would keep `" u1"` and `"u1"` as two customers; the
            // source decides, and segsync never trims silently.
            Some(s) if s.trim() != s => problems.push(problem(format!("{s:?} has white space at its start or end, which would make it another customer than {:?}; fix it in the source (segsync never trims)", s.trim()))),
            _ => {}
        }
        if let Some(b) = self.at[4] {
            if !crate::dates::is_real_date(b) {
                problems.push((
                    "birthdate".into(),
                    match crate::spreadsheet::edits::date_format_found(b) {
                        Some(found) => format!("{b:?} is not a date in YYYY-MM-DD form: found {found}, as a spreadsheet writes dates in a locale format; format the column as text before editing, and write dates as YYYY-MM-DD"),
                        None => format!("{b:?} is not a real date in YYYY-MM-DD form"),
                    },
                ));
            }
        }
        problems
    }

    /// The `email` cell's problem, if it has one.
    pub fn email_problem(&self) -> Option<(String, String)> {
        let e = self.at[2]?;
        (!plausible_email(e)).then(|| {
            (
                "email".into(),
                format!("{e:?} does not look like an email address"),
            )
        })
    }
}

/// [`parse_row`], giving back the metadata object it parsed to check it
/// (so a caller that builds the request does not parse it again).
pub fn parse_row_keeping_metadata(layout: &Layout, rec: &csv::ByteRecord) -> Parsed {
    let cells = Cells::of(layout, rec);
    let mut problems = cells.problems();
    let mut metadata = None;
    if let Some(m) = cells.at[12] {
        match serde_json::from_str::<Value>(m) {
            Ok(Value::Object(o)) => metadata = Some(o),
            Ok(_) => problems.push((
                "metadata".into(),
                "must be a JSON object like {\"key\":\"value\"}".into(),
            )),
            Err(e) => problems.push(("metadata".into(), format!("not valid JSON ({e})"))),
        }
    }
    problems.extend(cells.email_problem());
    (cells.row(), problems, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record checked whole as UTF-8 can still hold cells that are not:
    /// a character cut between two cells. Each such cell is refused alone.
    #[test]
    fn a_character_cut_between_two_cells_makes_both_not_utf8() {
        let mut rdr = csv::Reader::from_reader(&b"source_id,name,email\n"[..]);
        let layout = read_layout(Path::new("customers.csv"), &mut rdr).expect("a header");
        let rec = csv::ByteRecord::from(vec![&b"p1"[..], b"Ann\xc3", b"\xa9x@y.com"]);
        assert!(
            std::str::from_utf8(rec.as_slice()).is_ok(),
            "whole, it is UTF-8"
        );
        let cells = Cells::of(&layout, &rec);
        assert_eq!(cells.at[0], Some("p1"));
        assert_eq!((cells.at[1], cells.at[2]), (None, None));
        let refused: Vec<usize> = cells.not_utf8.iter().map(|(c, _)| *c).collect();
        assert_eq!(refused, vec![1, 2]);
        let fine = csv::ByteRecord::from(vec!["p1", "Zoë", "zoë@exämple.de"]);
        let cells = Cells::of(&layout, &fine);
        assert_eq!(cells.at[1..3], [Some("Zoë"), Some("zoë@exämple.de")]);
        assert!(cells.not_utf8.is_empty());
    }

    #[test]
    fn email_plausibility() {
        for ok in ["a@b.co", "first.last+tag@example.com", "Zoë@exämple.de"] {
            assert!(plausible_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.co",
            "a@b",
            "a b@c.de",
            "a@.de",
            "a@de.",
            "a@@example.com",
            "a@x.com,b@x.com",
            "a@x.com;b@x.com",
            "Ann <a@x.com>",
            "a..b@x.com",
            "a@x..com",
            ".a@x.com",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
        // Every ASCII character inside the local part, against the rule by
        // characters (the byte test is a fast path of it).
        for b in 0u8..128 {
            let c = b as char;
            let want =
                c != '@' && !(c.is_whitespace() || c.is_control() || ",;<>()[]\":\\".contains(c));
            assert_eq!(plausible_email(&format!("a{c}b@x.com")), want, "{b:#x}");
        }
    }
}
