//! Turning valid rows into request bodies and batches: by count (at most
//! `batch_size` customers) and by bytes (under the request limit), leaving
//! out rows the ledger shows as confirmed with the same content.

use super::input::{open_csv, parse_row, read_layout, Layout};
use crate::files;
use crate::state::ledger::content_key;
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

/// Content hash of a customer's request body (hex, 128 bits).
pub fn content_hash(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    files::hex(&Sha256::digest(body)[..16])
}

/// Which customers a batcher keeps.
pub type Keep = Box<dyn Fn(&Prepared) -> bool + Send>;

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
    /// Set when reading stops on an error (the iterator then ends).
    pub error: Option<anyhow::Error>,
    /// Only customers this accepts are batched (the others are someone
    /// else's: the import's, or the bulk's).
    pub only: Option<Keep>,
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
        let layout = read_layout(input, &mut rdr).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
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
            error: None,
            only: None,
        })
    }

    /// Batch only the customers `keep` accepts.
    pub fn only(mut self, keep: impl Fn(&Prepared) -> bool + Send + 'static) -> Batcher {
        self.only = Some(Box::new(keep));
        self
    }

    /// Read one row into a [`Prepared`] customer; None at the end or on an error.
    fn next_customer(&mut self) -> Option<Prepared> {
        let mut rec = csv::ByteRecord::new();
        loop {
            match self.rdr.read_byte_record(&mut rec) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(e) => {
                    if self
                        .skip_lines
                        .contains(&e.position().map(|p| p.line()).unwrap_or(0))
                    {
                        continue;
                    }
                    self.error = Some(e.into());
                    return None;
                }
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if self.skip_lines.contains(&line) {
                continue;
            }
            let (row, problems) = parse_row(&self.layout, &rec);
            let Some(source_id) = row
                .source_id
                .clone()
                .filter(|s| !s.trim().is_empty() && problems.is_empty())
            else {
                // validated earlier; a file changed under us is an error, never an empty source_id sent
                self.error = Some(anyhow::anyhow!(
                    "line {line} changed since validation; rerun `segsync load`"
                ));
                return None;
            };
            let body = match row
                .to_request()
                .and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(e) => {
                    self.error = Some(anyhow::anyhow!("line {line}: {e}"));
                    return None;
                }
            };
            let hash = content_hash(&body);
            if !self.full && content_key(&hash).is_some_and(|k| self.confirmed.contains(&k)) {
                self.unchanged += 1;
                continue;
            }
            if body.len() + 2 > self.max_bytes {
                self.error = Some(anyhow::anyhow!(
                    "line {line}: this customer alone is {} bytes, over the request limit of {}",
                    body.len(),
                    self.max_bytes
                ));
                return None;
            }
            let c = Prepared {
                source_id,
                line,
                hash,
                body,
            };
            if self.only.as_ref().is_some_and(|keep| !keep(&c)) {
                continue;
            }
            return Some(c);
        }
    }
}

impl Iterator for Batcher {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let mut batch = Batch {
            customers: Vec::new(),
        };
        let mut bytes = 2usize;
        if let Some(c) = self.carry.take() {
            bytes += c.body.len() + 1;
            batch.customers.push(c);
        }
        while batch.customers.len() < self.batch_size {
            let Some(c) = self.next_customer() else {
                break;
            };
            if bytes + c.body.len() + 1 > self.max_bytes && !batch.customers.is_empty() {
                self.carry = Some(c);
                break;
            }
            bytes += c.body.len() + 1;
            batch.customers.push(c);
        }
        (!batch.customers.is_empty()).then_some(batch)
    }
}
