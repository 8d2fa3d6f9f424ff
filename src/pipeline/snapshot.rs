//! Detector snapshots on disk: restored at start, written periodically and
//! at shutdown. Writes are atomic (temporary file, fsync, rename, fsync of
//! the directory), so a crash leaves either the old or the new snapshot.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::process::Processor;
use crate::detect::snapshot::SnapshotError;

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(d) = dir {
        fs::create_dir_all(d)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(d) = dir {
        // The rename is durable only once the directory entry is.
        File::open(d)?.sync_all()?;
    }
    Ok(())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Takes a snapshot of `processor` and writes it to `path`; returns its size.
pub fn save(processor: &Processor, environment: &str, path: &Path) -> std::io::Result<usize> {
    let bytes = processor.detectors().snapshot(environment, now_ns());
    write_atomic(path, &bytes)?;
    Ok(bytes.len())
}

/// What happened when restoring at start.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// No snapshot file: a cold start.
    Missing,
    /// State restored: (span keys, metric series, log services).
    Loaded(usize, usize, usize),
    /// The file was unreadable or of another format version; it was moved
    /// aside to this path and the sidecar starts cold.
    MovedAside(PathBuf, String),
}

/// Restores `processor` from `path`. A snapshot of another environment is an
/// error (a data directory shared by mistake: its state must not be
/// overwritten); a damaged or incompatible file is moved aside.
pub fn restore(
    processor: &Processor,
    environment: &str,
    path: &Path,
) -> Result<Restored, SnapshotError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restored::Missing),
        Err(e) => return Ok(move_aside(path, format!("cannot read it: {e}"))),
    };
    match processor.detectors().restore(&bytes, environment) {
        Ok((s, m, l)) => Ok(Restored::Loaded(s, m, l)),
        Err(e @ SnapshotError::Environment { .. }) => Err(e),
        Err(e) => Ok(move_aside(path, e.to_string())),
    }
}

fn move_aside(path: &Path, why: String) -> Restored {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".unusable-{}", now_ns() / 1_000_000_000));
    let aside = PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => Restored::MovedAside(aside, why),
        Err(e) => Restored::MovedAside(
            path.to_path_buf(),
            format!("{why}; moving it aside failed: {e}"),
        ),
    }
}
