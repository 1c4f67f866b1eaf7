//! Pass 1's spill: every row goes, as a compact binary record, to the
//! partition its profile id hashes to. Each reader thread buffers its
//! partitions in memory and, when the buffers together pass a bound, appends
//! them to its one spill file as chunks, remembering where each chunk of each
//! partition lies. Pass 2 reads a partition's chunks back from every spill
//! file. One file per thread, whatever the number of partitions: no limit on
//! open files is ever near.
//!
//! A record (little-endian):
//! `kind:u8 id_len:u16 id ts:i64` and, for a kept trait or identifier,
//! `seq:i64 key_len:u16 key value_len:u32 value` (`value_len` u32::MAX: null).

use anyhow::{Context, Result};
use std::fs::File;
use std::hash::Hasher;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A row whose trait or identifier is not kept: the profile exists, and
    /// the row dates it.
    Seen = 0,
    /// A kept trait value.
    Trait = 1,
    /// A kept external id.
    Id = 2,
}

/// `ts` of a row without a usable timestamp.
const NO_TS: i64 = i64::MIN;
/// `value_len` of a null value.
const NULL: u32 = u32::MAX;

/// The hash that orders profiles: partitions are ranges of it, and pass 2
/// writes a partition's profiles in its order, so the output's order does
/// not depend on how many partitions there are.
pub fn id_hash(id: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(id);
    h.write_u8(0xff);
    h.finish()
}

/// The partition of a profile id, out of `partitions` (a power of two): the
/// top bits of its hash.
pub fn partition_of(id: &[u8], partitions: usize) -> usize {
    debug_assert!(partitions.is_power_of_two());
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    (id_hash(id) >> (64 - bits)) as usize
}

/// How many partitions an unload of `input_bytes` is split into, so that
/// one partition's records stay a few MB, whatever the unload's size.
pub fn partitions_for(input_bytes: u64) -> usize {
    const PER_PARTITION: u64 = 2 << 20;
    (input_bytes / PER_PARTITION)
        .next_power_of_two()
        .clamp(128, 16_384) as usize
}

/// What a kept row adds to its record: seq, name or type, value.
pub type Kept<'a> = (i64, &'a [u8], Option<&'a [u8]>);

/// One reader thread's spill: its partitions' buffers and its file.
pub struct Spill {
    path: PathBuf,
    file: BufWriter<File>,
    bufs: Vec<Vec<u8>>,
    buffered: usize,
    limit: usize,
    /// Per partition, the (offset, length) of its chunks in the file.
    chunks: Vec<Vec<(u64, u32)>>,
    pos: u64,
}

impl Spill {
    pub fn create(path: PathBuf, partitions: usize, limit: usize) -> Result<Spill> {
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Spill {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            bufs: vec![Vec::new(); partitions],
            buffered: 0,
            limit,
            chunks: vec![Vec::new(); partitions],
            pos: 0,
        })
    }

    /// Append a record of a row to its profile's partition. Err: an id or a
    /// key longer than a record can hold (65,535 bytes).
    pub fn push(
        &mut self,
        kind: Kind,
        id: &[u8],
        ts: Option<i64>,
        kept: Option<Kept>,
    ) -> Result<(), &'static str> {
        let p = partition_of(id, self.bufs.len());
        let b = &mut self.bufs[p];
        let before = b.len();
        encode(b, kind, id, ts, kept)?;
        self.buffered += b.len() - before;
        Ok(())
    }

    /// Whether the buffers have passed their bound (then [`Spill::flush`]).
    pub fn full(&self) -> bool {
        self.buffered >= self.limit
    }

    /// Append every partition's buffered records to the file as chunks.
    pub fn flush(&mut self) -> Result<()> {
        for (p, b) in self.bufs.iter_mut().enumerate() {
            // A chunk's length fits a u32: the bound is far below 4 GB.
            for piece in b.chunks(u32::MAX as usize) {
                self.file
                    .write_all(piece)
                    .with_context(|| format!("cannot write {}", self.path.display()))?;
                self.chunks[p].push((self.pos, piece.len() as u32));
                self.pos += piece.len() as u64;
            }
            b.clear();
        }
        self.buffered = 0;
        Ok(())
    }

    /// Flush what is left and close the file: where every chunk lies.
    pub fn finish(mut self) -> Result<Spilled> {
        self.flush()?;
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(Spilled {
            path: self.path,
            chunks: self.chunks,
            bytes: self.pos,
        })
    }
}

/// Append one record to `b`. Err: an id or a key longer than a record can
/// hold (65,535 bytes), or a value of 4 GB or more (naming which).
pub fn encode(
    b: &mut Vec<u8>,
    kind: Kind,
    id: &[u8],
    ts: Option<i64>,
    kept: Option<Kept>,
) -> Result<(), &'static str> {
    b.push(kind as u8);
    put_str16(b, id).map_err(|_| "canonical_segment_id")?;
    b.extend_from_slice(&ts.unwrap_or(NO_TS).to_le_bytes());
    if let Some((seq, key, value)) = kept {
        b.extend_from_slice(&seq.to_le_bytes());
        put_str16(b, key).map_err(|_| "the name or type")?;
        match value {
            Some(v) if v.len() < NULL as usize => {
                b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                b.extend_from_slice(v);
            }
            Some(_) => return Err("the value"),
            None => b.extend_from_slice(&NULL.to_le_bytes()),
        }
    }
    Ok(())
}

fn put_str16(b: &mut Vec<u8>, s: &[u8]) -> Result<(), ()> {
    let n = u16::try_from(s.len()).map_err(|_| ())?;
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(s);
    Ok(())
}

/// A finished spill file and where each partition's chunks lie in it.
pub struct Spilled {
    path: PathBuf,
    chunks: Vec<Vec<(u64, u32)>>,
    /// The file's size.
    pub bytes: u64,
}

/// Read partition `p` from every spill file into `buf` (cleared first).
pub fn read_partition(spills: &[Spilled], p: usize, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    each_place(spills, p, |file, len, path| {
        let start = buf.len();
        buf.resize(start + len, 0);
        file.read_exact(&mut buf[start..])
            .with_context(|| format!("cannot read {}", path.display()))
    })
}

/// Each chunk of partition `p`: its file, positioned at it, and its length.
fn each_place(
    spills: &[Spilled],
    p: usize,
    mut f: impl FnMut(&mut File, usize, &Path) -> Result<()>,
) -> Result<()> {
    for s in spills {
        if s.chunks[p].is_empty() {
            continue;
        }
        let mut file =
            File::open(&s.path).with_context(|| format!("cannot read {}", s.path.display()))?;
        for &(off, len) in &s.chunks[p] {
            file.seek(SeekFrom::Start(off))
                .with_context(|| format!("cannot read {}", s.path.display()))?;
            f(&mut file, len as usize, &s.path)?;
        }
    }
    Ok(())
}

/// The bytes partition `p` spilled, in every file.
pub fn partition_bytes(spills: &[Spilled], p: usize) -> u64 {
    spills
        .iter()
        .flat_map(|s| &s.chunks[p])
        .map(|c| c.1 as u64)
        .sum()
}

/// Each chunk of partition `p`, one at a time (read into `chunk`): a chunk
/// holds whole records.
pub fn each_chunk(
    spills: &[Spilled],
    p: usize,
    chunk: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    each_place(spills, p, |file, len, path| {
        chunk.resize(len, 0);
        file.read_exact(chunk)
            .with_context(|| format!("cannot read {}", path.display()))?;
        f(chunk)
    })
}

/// One record, borrowed from a partition's bytes (UTF-8 text: pass 1
/// checked it).
#[derive(Debug, Clone, Copy)]
pub struct Rec<'a> {
    pub kind: Kind,
    pub id: &'a [u8],
    pub ts: Option<i64>,
    pub seq: i64,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// The records of a partition's bytes. Err: bytes that are not records, which
/// only a damaged temporary file gives.
pub fn records<'a>(mut b: &'a [u8], file: &Path) -> Result<Vec<Rec<'a>>> {
    let damaged = || anyhow::anyhow!("{}: damaged temporary file", file.display());
    let mut out = Vec::new();
    while !b.is_empty() {
        let kind = match b[0] {
            0 => Kind::Seen,
            1 => Kind::Trait,
            2 => Kind::Id,
            _ => return Err(damaged()),
        };
        b = &b[1..];
        let id = take_str16(&mut b).ok_or_else(damaged)?;
        let ts = take_i64(&mut b).ok_or_else(damaged)?;
        let mut rec = Rec {
            kind,
            id,
            ts: (ts != NO_TS).then_some(ts),
            seq: 0,
            key: b"",
            value: None,
        };
        if kind != Kind::Seen {
            rec.seq = take_i64(&mut b).ok_or_else(damaged)?;
            rec.key = take_str16(&mut b).ok_or_else(damaged)?;
            let len = u32::from_le_bytes(take(&mut b, 4).ok_or_else(damaged)?.try_into()?);
            if len != NULL {
                let v = take(&mut b, len as usize).ok_or_else(damaged)?;
                rec.value = Some(v);
            }
        }
        out.push(rec);
    }
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_i64(b: &mut &[u8]) -> Option<i64> {
    take(b, 8).map(|x| i64::from_le_bytes(x.try_into().unwrap_or_default()))
}

fn take_str16<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u16::from_le_bytes(take(b, 2)?.try_into().ok()?) as usize;
    take(b, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_from_their_partition_as_written() {
        let dir = std::env::temp_dir().join(format!("segsync-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A bound of 1 byte flushes after every record: many chunks.
        let mut s = Spill::create(dir.join("w0.bin"), 4, 1).unwrap();
        type Kept = Option<(i64, &'static [u8], Option<&'static [u8]>)>;
        let rows: Vec<(Kind, Vec<u8>, Option<i64>, Kept)> = (0..50)
            .map(|i| {
                let id = format!("p{i}").into_bytes();
                match i % 3 {
                    0 => (Kind::Seen, id, Some(i), None),
                    1 => (
                        Kind::Trait,
                        id,
                        None,
                        Some((i, &b"email"[..], Some("\"é\"".as_bytes()))),
                    ),
                    _ => (Kind::Id, id, Some(-i), Some((7, &b"user_id"[..], None))),
                }
            })
            .collect();
        for (k, id, ts, kept) in &rows {
            s.push(*k, id, *ts, *kept).unwrap();
            if s.full() {
                s.flush().unwrap();
            }
        }
        let spilled = [s.finish().unwrap()];
        let mut seen = 0;
        let mut buf = Vec::new();
        for p in 0..4 {
            read_partition(&spilled, p, &mut buf).unwrap();
            for r in records(&buf, Path::new("x")).unwrap() {
                let (k, _, ts, kept) = rows.iter().find(|r2| r2.1 == r.id).unwrap();
                assert_eq!(partition_of(r.id, 4), p);
                assert_eq!((r.kind, r.ts), (*k, *ts));
                if let Some((seq, key, value)) = kept {
                    assert_eq!((r.seq, r.key, r.value), (*seq, *key, *value));
                }
                seen += 1;
            }
        }
        assert_eq!(seen, rows.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_id_too_long_for_a_record_is_named() {
        let dir = std::env::temp_dir().join(format!("segsync-spill-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Spill::create(dir.join("w0.bin"), 4, 1 << 20).unwrap();
        let long = vec![b'x'; 70_000];
        assert_eq!(
            s.push(Kind::Seen, &long, None, None),
            Err("canonical_segment_id")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
