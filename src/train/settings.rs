//! The `train:` section of the configuration file (every `train` and
//! `backfill` option can be set there; flags override it).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// Learning from history in Elasticsearch.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// How far back `train` reads.
    #[serde(with = "humantime_serde")]
    pub since: Duration,
    /// Where `train` writes the model snapshot.
    pub out: PathBuf,
    /// Known incident windows to leave out of the baseline (see docs/train.md).
    pub exclude_file: Option<PathBuf>,
    /// Documents per search page.
    pub page_size: usize,
    /// How long Elasticsearch keeps the point in time (or scroll) between pages.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Timeout of one search request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts of one page after a timeout, 429, 5xx or an incomplete reply.
    pub max_retries: u32,
    /// Skip (and count) documents that cannot be read instead of stopping.
    pub skip_bad_documents: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            since: Duration::from_secs(14 * 86_400),
            out: PathBuf::from("model.snap"),
            exclude_file: None,
            page_size: 5_000,
            keep_alive: Duration::from_secs(300),
            request_timeout: Duration::from_secs(60),
            max_retries: 3,
            skip_bad_documents: false,
        }
    }
}

/// Checks the section.
pub fn validate(t: &TrainSettings) -> Result<(), ConfigError> {
    if t.since.is_zero() {
        return Err(invalid("train.since", "must be greater than 0"));
    }
    if t.page_size == 0 || t.page_size > 10_000 {
        return Err(invalid(
            "train.page_size",
            "must be between 1 and 10000 (Elasticsearch's default index.max_result_window)",
        ));
    }
    if t.keep_alive < Duration::from_secs(1) {
        return Err(invalid("train.keep_alive", "must be at least 1s"));
    }
    if t.request_timeout.is_zero() {
        return Err(invalid("train.request_timeout", "must be greater than 0"));
    }
    Ok(())
}
