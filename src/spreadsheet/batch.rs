//! Turning valid rows into request bodies and batches: by count (at most
//! `batch_size` customers) and by bytes (under the request limit), leaving
//! out rows the ledger shows as confirmed with the same content.

use super::customers_csv::{open_csv, parse_row, read_layout, Layout};
use anyhow::Result;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

/// A customer ready to send.
pub struct Prepared {
    pub source_id: String,
    pub line: u64,
    pub hash: String,
    pub body: Vec<u8>,
    /// The profile the row came from, when the file says.
    pub segment_id: Option<String>,
    /// The fields the row gives (`crate::records::field_names`).
    pub fields: Vec<String>,
    /// The fields the body clears (a plan's `--clear-removed` request).
    pub cleared: Vec<String>,
}

impl Prepared {
    /// A valid row as load sends it: its request body, content key and
    /// fields; `line` is its line in the customers file (0: none yet).
    pub fn of_row(row: &crate::records::CustomerRow, line: u64) -> Result<Prepared, String> {
        Self::keyed(row, line).map(|(c, _)| c)
    }

    /// [`Prepared::of_row`], with the content key as a number.
    fn keyed(row: &crate::records::CustomerRow, line: u64) -> Result<(Prepared, u128), String> {
        let source_id = row.source_id.clone().unwrap_or_default();
        let v = row.to_request()?;
        let body = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
        let key = content_key_of(&body);
        let c = Prepared {
            source_id,
            line,
            hash: format!("{key:032x}"),
            body,
            segment_id: row.segment_id.clone(),
            fields: crate::records::field_names(&v),
            cleared: Vec::new(),
        };
        Ok((c, key))
    }
}

/// A batch: customers and the request body holding them.
pub struct Batch {
    pub customers: Vec<Prepared>,
}

impl Batch {
    pub fn body(&self) -> bytes::Bytes {
        let mut out = Vec::with_capacity(
            self.customers
                .iter()
                .map(|c| c.body.len() + 1)
                .sum::<usize>()
                + 2,
        );
        out.push(b'[');
        for (i, c) in self.customers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&c.body);
        }
        out.push(b']');
        out.into()
    }

    /// Two halves, for a batch Voucherify found too large.
    pub fn split(mut self) -> (Batch, Batch) {
        let second = self.customers.split_off(self.customers.len() / 2);
        (self, Batch { customers: second })
    }
}

/// The content key of a customer's request body: the first 128 bits of its
/// SHA-256 (the ledger writes it as 32 hex digits, `state::ledger::content_key`
/// reads them back).
pub fn content_key_of(body: &[u8]) -> u128 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(body);
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_be_bytes(first)
}

/// Which customers a batcher keeps.
pub type Keep = Box<dyn Fn(&Prepared) -> bool + Send>;

/// What a batcher sends instead of a row's whole body (a plan's update):
/// None keeps the body.
pub type Rewrite = Box<dyn Fn(&Prepared) -> Result<Option<Vec<u8>>> + Send>;

/// Reads the valid rows that still need sending and groups them in batches.
pub struct Batcher {
    rdr: csv::Reader<std::fs::File>,
    layout: Layout,
    skip_lines: HashSet<u64>,
    confirmed: Arc<HashSet<u128>>,
    full: bool,
    batch_size: usize,
    max_bytes: usize,
    carry: Option<Prepared>,
    /// Rows left out because the ledger shows them confirmed as they are.
    pub unchanged: u64,
    /// Reading stopped on an error, which was yielded: nothing follows.
    failed: bool,
    /// Only customers this accepts are batched (the others are someone
    /// else's: the import's, or the bulk's).
    pub only: Option<Keep>,
    /// The body to send, when not the row's (the ledger still records the
    /// row's content key and fields: after the update Voucherify holds it).
    pub rewrite: Option<Rewrite>,
}

impl Batcher {
    pub fn new(
        input: &Path,
        skip_lines: HashSet<u64>,
        confirmed: Arc<HashSet<u128>>,
        full: bool,
        batch_size: usize,
        max_bytes: usize,
    ) -> Result<Batcher> {
        let mut rdr = open_csv(input)?;
        let layout =
            read_layout(input, &mut rdr).map_err(|problems| crate::error::InputErrors {
                problems,
                hint: format!("{}: fix the header; nothing was sent", input.display()),
            })?;
        Ok(Batcher {
            rdr,
            layout,
            skip_lines,
            confirmed,
            full,
            batch_size,
            max_bytes,
            carry: None,
            unchanged: 0,
            failed: false,
            only: None,
            rewrite: None,
        })
    }

    /// Batch only the customers `keep` accepts (and any earlier `only`).
    pub fn only(mut self, keep: impl Fn(&Prepared) -> bool + Send + 'static) -> Batcher {
        self.only = Some(match self.only.take() {
            Some(before) => Box::new(move |c| before(c) && keep(c)),
            None => Box::new(keep),
        });
        self
    }

    /// Send what `f` gives instead of a row's body.
    pub fn rewrite(
        mut self,
        f: impl Fn(&Prepared) -> Result<Option<Vec<u8>>> + Send + 'static,
    ) -> Batcher {
        self.rewrite = Some(Box::new(f));
        self
    }

    /// Read one row into a [`Prepared`] customer; None at the end.
    fn next_customer(&mut self) -> Option<Result<Prepared>> {
        let mut rec = csv::ByteRecord::new();
        loop {
            match self.rdr.read_byte_record(&mut rec) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(e) => {
                    if !self.skip_lines.is_empty()
                        && self.skip_lines.contains(&self.layout.line(e.position()))
                    {
                        continue;
                    }
                    return Some(Err(e.into()));
                }
            }
            let line = self.layout.line(rec.position());
            if !self.skip_lines.is_empty() && self.skip_lines.contains(&line) {
                continue;
            }
            let (row, problems) = parse_row(&self.layout, &rec);
            let Some(source_id) = row
                .source_id
                .clone()
                .filter(|s| !s.trim().is_empty() && problems.is_empty())
            else {
                // validated earlier; a file changed under us is an error, never an empty source_id sent
                return Some(Err(anyhow::anyhow!(
                    "line {line} changed since validation; rerun `segsync load`"
                )));
            };
            let (c, key) = match Prepared::keyed(&row, line) {
                Ok(c) => c,
                Err(e) => return Some(Err(anyhow::anyhow!("line {line}: {e}"))),
            };
            debug_assert_eq!(c.source_id, source_id);
            if !self.full && self.confirmed.contains(&key) {
                self.unchanged += 1;
                continue;
            }
            if c.body.len() + 2 > crate::api::voucherify::MAX_REQUEST_BYTES {
                return Some(Err(anyhow::anyhow!(
                    "line {line}: this customer alone is {} bytes, over the request limit of {}",
                    c.body.len(),
                    crate::api::voucherify::MAX_REQUEST_BYTES
                )));
            }
            if self.only.as_ref().is_some_and(|keep| !keep(&c)) {
                continue;
            }
            let mut c = c;
            if let Some(rewrite) = &self.rewrite {
                match rewrite(&c) {
                    Ok(Some(body)) => {
                        c.cleared = serde_json::from_slice(&body)
                            .map(|v| crate::records::null_fields(&v))
                            .unwrap_or_default();
                        c.body = body;
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            return Some(Ok(c));
        }
    }

    /// The customers one by one instead of in batches (for import files).
    pub fn customers(mut self) -> impl Iterator<Item = Result<Prepared>> {
        std::iter::from_fn(move || {
            if self.failed {
                return None;
            }
            let c = self.next_customer();
            self.failed = matches!(c, Some(Err(_)));
            c
        })
    }

    /// Read to the end, counting the customers to send; the rows skipped
    /// as confirmed are then in `unchanged`.
    pub fn count_to_send(&mut self) -> Result<u64> {
        let mut n = 0;
        for b in self.by_ref() {
            n += b?.customers.len() as u64;
        }
        Ok(n)
    }
}

/// Batches of customers to send; a read error is yielded once, then the
/// iterator ends (the customers of that partial batch stay unsent).
impl Iterator for Batcher {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed {
            return None;
        }
        let mut batch = Batch {
            customers: Vec::new(),
        };
        let mut bytes = 2usize;
        if let Some(c) = self.carry.take() {
            bytes += c.body.len() + 1;
            batch.customers.push(c);
        }
        while batch.customers.len() < self.batch_size {
            let c = match self.next_customer() {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            if bytes + c.body.len() + 1 > self.max_bytes && !batch.customers.is_empty() {
                self.carry = Some(c);
                break;
            }
            bytes += c.body.len() + 1;
            batch.customers.push(c);
        }
        (!batch.customers.is_empty()).then_some(Ok(batch))
    }
}
