//! One writer per data directory: every command that writes holds an
//! advisory lock on `DIR/.segsync.lock` for its whole run (the kernel
//! releases it when the process ends, a crash or `kill -9` included). The
//! file names the holder (command, pid, start time) so that a second command
//! can say who holds it. Commands that only read never take it.

use crate::error::UsageError;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const LOCK: &str = ".segsync.lock";

/// Held while the command runs; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// A clear error when `dir` exists and is not a directory: no rerun fixes
/// that (exit 2). Reads only.
pub fn check_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(UsageError::new(format!(
            "{} is not a directory: --data-dir (or SEGSYNC_DATA_DIR) must name a directory",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

/// [`check_dir`], then create the directory if it is missing (0700).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    check_dir(dir)?;
    crate::files::ensure_dir(dir)
}

/// Take the lock on `dir` for `command`, or exit 2 naming its holder.
pub fn acquire(dir: &Path, command: &str) -> Result<DirLock> {
    ensure_dir(dir)?;
    let path = dir.join(LOCK);
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if crate::files::is_symlink_error(&e) => {
            return Err(crate::files::symlink_refused(&path))
        }
        // No rerun fixes a permission: exit 2, naming what to fix.
        Err(e) if path.exists() => {
            return Err(crate::error::UsageError::new(format!(
                "cannot open the lock file {} ({e}): it belongs to another user or is read-only; run as its owner, or choose another --data-dir",
                path.display()
            ))
            .into())
        }
        Err(e) => {
            return Err(crate::error::UsageError::new(format!(
                "{} is not writable (cannot create its lock file {LOCK}: {e}): make it writable, or choose another --data-dir",
                dir.display()
            ))
            .into())
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(UsageError::new(format!(
                "{} is in use by {}; one command at a time writes to a data directory: wait for it to end (or stop it), then run this again",
                dir.display(),
                describe(&read_holder(&mut file))
            ))
            .into());
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    let holder = serde_json::json!({
        "command": command,
        "pid": std::process::id(),
        "started_at": super::now(),
    });
    // Written over the old holder in place, then cut to length: a command
    // refused meanwhile reads a whole first line (the old holder's or this
    // one's), never the empty file a truncation first would show it.
    let line = format!("{holder}\n");
    std::os::unix::fs::FileExt::write_all_at(&file, line.as_bytes(), 0)?;
    file.set_len(line.len() as u64)?;
    Ok(DirLock { _file: file })
}

/// The holder's line. A holder that has just created the lock file takes it
/// before it writes its name, so an empty file is read again a few times,
/// for at most [`HOLDER_WAIT`], before it is described without a name.
fn read_holder(file: &mut File) -> String {
    use std::io::{Seek, SeekFrom};
    let deadline = std::time::Instant::now() + HOLDER_WAIT;
    loop {
        let mut holder = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut holder));
        if read.is_err() || holder.contains('\n') || std::time::Instant::now() >= deadline {
            return holder;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How long a refused command waits for a new holder to write its name.
const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// The holder as a person reads it.
fn describe(holder: &str) -> String {
    let first = holder.lines().next().unwrap_or("");
    match serde_json::from_str::<serde_json::Value>(first.trim()) {
        Ok(h) => format!(
            "`segsync {}` (pid {}, started at {})",
            h["command"].as_str().unwrap_or("?"),
            h["pid"],
            h["started_at"].as_str().unwrap_or("?")
        ),
        Err(_) => "another segsync command (one that has not yet written its name)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), "load").unwrap();
        let e = acquire(dir.path(), "extract").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`segsync load` (pid "), "{text}");
        assert_eq!(crate::error::exit_code_for(&e), 2);
        drop(first);
        acquire(dir.path(), "extract").unwrap();
    }

    #[test]
    fn a_holder_that_has_not_yet_written_its_name_is_waited_for_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK);
        // The holder's state between taking the lock and writing its line.
        let held = File::create(&path).unwrap();
        held.try_lock().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(60));
            let line = "{\"command\":\"run\",\"pid\":7,\"started_at\":\"t\"}\n";
            std::os::unix::fs::FileExt::write_all_at(&held, line.as_bytes(), 0).unwrap();
            held
        });
        let e = acquire(dir.path(), "load").unwrap_err().to_string();
        assert!(e.contains("in use by `segsync run` (pid 7"), "{e}");
        let held = writer.join().unwrap();
        // A holder that never writes its name: refused without it, in time.
        held.set_len(0).unwrap();
        let t = std::time::Instant::now();
        let e = acquire(dir.path(), "load").unwrap_err().to_string();
        assert!(e.contains("in use by another segsync command"), "{e}");
        assert!(t.elapsed() >= HOLDER_WAIT, "{:?}", t.elapsed());
    }

    #[test]
    fn a_file_as_the_data_directory_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let e = acquire(&f, "load").unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        assert_eq!(crate::error::exit_code_for(&e), 2);
    }
}
