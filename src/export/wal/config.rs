//! `wal.*` settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When an accepted request is forced to disk before it is acknowledged.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// fsync as soon as a request is written; requests that arrive during
    /// one fsync share the next (group commit). Nothing acknowledged is
    /// lost on a power failure.
    Always,
    /// fsync every `sync_interval`; every request written in that window
    /// shares one fsync and waits up to the interval for its answer.
    /// Fewer fsyncs under light load, higher latency; equally safe.
    Interval,
}

/// The disk write-ahead queue between the receivers and the output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WalSettings {
    /// Acknowledge requests only once they are in the queue on disk.
    pub enabled: bool,
    /// Segment directory (default: `<data_dir>/wal`).
    pub dir: Option<PathBuf>,
    /// Cap on the queue's size on disk; past it, receivers refuse (429 / RESOURCE_EXHAUSTED).
    pub max_bytes: u64,
    /// Size at which a new segment file is started (a segment is deleted once all its requests are delivered).
    pub segment_bytes: u64,
    /// `always` or `interval`.
    pub sync: SyncPolicy,
    /// Group-commit window for `sync: interval`.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
}

impl Default for WalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            sync: SyncPolicy::Always,
            sync_interval: Duration::from_millis(10),
        }
    }
}

impl WalSettings {
    /// Checks the values; `Err((key, reason))`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_bytes < 1 << 20 {
            return Err(("wal.max_bytes", "must be at least 1 MiB".into()));
        }
        if self.segment_bytes < 64 << 10 || self.segment_bytes > self.max_bytes {
            return Err((
                "wal.segment_bytes",
                "must be at least 64 KiB and at most wal.max_bytes".into(),
            ));
        }
        if self.sync == SyncPolicy::Interval
            && (self.sync_interval.is_zero() || self.sync_interval > Duration::from_secs(1))
        {
            return Err((
                "wal.sync_interval",
                "must be between 1 ms and 1 s (every acknowledgement waits up to this long)".into(),
            ));
        }
        Ok(())
    }
}
