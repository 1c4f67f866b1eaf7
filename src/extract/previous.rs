//! `--incremental`: the previous complete `profiles.ndjson`, indexed by
//! profile (24 bytes each) so an unchanged profile's line is copied instead
//! of fetched again.

use crate::records::ProfileRecord;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

pub struct PreviousFile {
    file: File,
    /// hash(segment_id) → (hash(updated_at), offset, length)
    index: HashMap<u64, (u64, u64, u32)>,
}

use crate::keys::h64;

impl PreviousFile {
    pub fn open(path: &Path) -> Result<PreviousFile> {
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

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The previous line of `segment_id` if its `updated_at` is unchanged.
    pub fn reusable(&mut self, segment_id: &str, updated_at: &str) -> Option<Vec<u8>> {
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
