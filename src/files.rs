//! File machinery shared by the stages: atomic replacement (write aside, then
//! rename), append-only journals whose torn last line is discarded, and
//! owner-only permissions for every file holding personal data.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Create `dir` (and parents) or say clearly why not. A directory segsync
/// creates is its owner's alone (0700): it holds personal data.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// The error for a state file that is a symbolic link: refused by name,
/// never written through (a link would have its target overwritten).
pub fn symlink_refused(path: &Path) -> anyhow::Error {
    crate::error::UsageError::new(format!(
        "{} is a symbolic link: segsync never writes its state files through one (the link's target would be overwritten); remove the link",
        path.display()
    ))
    .into()
}

/// Whether an open failed because the path is a symbolic link (O_NOFOLLOW).
pub fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Open an input file for reading: a regular file (a link to one is
/// followed), or an error naming it (a directory, a pipe, a device). Its
/// content is never quoted in that error.
pub fn open_regular(path: &Path) -> Result<File> {
    // Looked at before it is opened: opening a FIFO waits for a writer.
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(crate::error::UsageError::new(format!(
            "{} is not a regular file (a directory, a pipe or a device): give a file",
            path.display()
        ))
        .into());
    }
    File::open(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The directory a file lives in ("." for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A reader that hashes what it reads (XXH3-128, as `plan::file::hash_of`
/// hashes a file): one read both parses a file and gives its hash.
pub struct Hashing<R> {
    inner: R,
    hash: twox_hash::XxHash3_128,
    /// The inner reader said it was at its end.
    ended: bool,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: twox_hash::XxHash3_128::new(),
            ended: false,
        }
    }

    /// The hash of everything read, once the inner reader was read to its
    /// end (None before: a hash of part of a file is no file's hash).
    pub fn finish(&self) -> Option<u128> {
        self.ended.then(|| self.hash.finish_128())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ended |= n == 0 && !buf.is_empty();
        self.hash.write(&buf[..n]);
        Ok(n)
    }
}

/// A file written aside (owner-only, in the target's directory) and renamed
/// over the target only by [`AtomicFile::commit`]: a crash or an error at
/// any point leaves the previous file untouched.
pub struct AtomicFile {
    out: BufWriter<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(path);
        ensure_dir(&dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("segsync")
            ))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| {
                format!(
                    "cannot create a file in {} (is it writable?)",
                    dir.display()
                )
            })?;
        Ok(AtomicFile {
            out: BufWriter::with_capacity(256 * 1024, tmp),
            path: path.to_path_buf(),
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<tempfile::NamedTempFile> {
        &mut self.out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the content is being written until commit (to read it back).
    pub fn temp_path(&self) -> &Path {
        self.out.get_ref().path()
    }

    /// Flush, sync and rename over the target.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", path.display()))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Replace `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.commit()
}

/// Open (creating owner-only if missing) a journal for appending.
pub fn open_append(path: &Path) -> Result<File> {
    ensure_dir(&parent_dir(path))?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if is_symlink_error(&e) {
                symlink_refused(path)
            } else {
                anyhow::Error::new(e)
                    .context(format!("cannot open {} for appending", path.display()))
            }
        })
}

/// Cut a journal back to its last complete line (one ending in `\n`), so a
/// line torn by a crash mid-write is discarded. Returns the kept length and
/// how many bytes were dropped.
pub fn truncate_torn_tail(path: &Path) -> Result<(u64, u64)> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(pos) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + pos as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
            }
            return Ok((keep, len - keep));
        }
        end = start;
    }
    if len > 0 {
        f.set_len(0)?;
    }
    Ok((0, len))
}

/// SHA-256 of a file's content, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Modification time of a file as RFC 3339, if it exists.
pub fn modified(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(crate::dates::system_time(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A reader that hashes what it reads has no hash before its end, and
    /// at the end the whole file's, however the reads were cut.
    #[test]
    fn a_hashing_reader_gives_the_files_hash_only_at_its_end() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = twox_hash::XxHash3_128::oneshot(&bytes);
        let mut r = Hashing::new(&bytes[..]);
        let mut buf = [0u8; 777];
        let n = r.read(&mut buf).unwrap();
        assert_eq!(n, 777);
        assert_eq!(r.finish(), None, "not read to its end");
        while r.read(&mut buf).unwrap() > 0 {}
        assert_eq!(r.finish(), Some(want));
    }

    #[test]
    fn atomic_file_is_private_and_leaves_old_content_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "old").unwrap();
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.ndjson");
        std::fs::write(&p, "{\"a\":1}\n{\"b\":").unwrap();
        assert_eq!(truncate_torn_tail(&p).unwrap(), (8, 5));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n");
        std::fs::write(&p, "no newline").unwrap();
        assert_eq!(truncate_torn_tail(&p).unwrap(), (0, 10));
    }
}
