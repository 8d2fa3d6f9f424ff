//! Outputs: Elasticsearch (bulk API), NDJSON files (the embedded default),
//! and the dead-letter file.

pub mod bulk;
pub mod deadletter;
pub mod document;
pub mod elasticsearch;
pub mod file;

use crate::telemetry::Signal;

/// One encoded document on its way out.
#[derive(Debug, Clone)]
pub struct Doc {
    pub signal: Signal,
    /// Deterministic `_id`, so a resend never duplicates.
    pub id: String,
    /// The JSON source.
    pub source: Vec<u8>,
    /// Retryable failures so far.
    pub attempts: u32,
}

impl Doc {
    /// A new document.
    pub fn new(signal: Signal, id: String, source: Vec<u8>) -> Self {
        Self {
            signal,
            id,
            source,
            attempts: 0,
        }
    }
}

/// Index or data stream name of a signal: `<signal>-<dataset>-<environment>`.
pub fn stream_name(signal: Signal, dataset: &str, environment: &str) -> String {
    format!("{}-{dataset}-{environment}", signal.as_str())
}
