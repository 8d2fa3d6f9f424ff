//! Outputs: Elasticsearch (bulk API), NDJSON files (the embedded default),
//! the disk write-ahead queue in front of them,
//! and the dead-letter file.

pub mod bulk;
pub mod completion;
pub mod deadletter;
pub mod document;
pub mod elasticsearch;
pub mod file;
pub mod otlp;
pub mod wal;
pub mod wire_document;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::telemetry::Signal;

/// One encoded document on its way out.
#[derive(Debug, Clone)]
pub struct Doc {
    pub signal: Signal,
    /// Deterministic `_id`, so a resend never duplicates.
    pub id: String,
    /// The JSON source: a slice of its request's shared buffer (see [`DocBatch`]).
    pub source: Bytes,
    /// Retryable failures so far.
    pub attempts: u32,
    /// The batch this document's record belongs to (settled when delivered);
    /// `None`: the record's permit is released directly.
    pub ticket: Option<Arc<completion::Ticket>>,
}

impl Doc {
    /// A new document.
    pub fn new(signal: Signal, id: String, source: impl Into<Bytes>) -> Self {
        Self {
            signal,
            id,
            source: source.into(),
            attempts: 0,
            ticket: None,
        }
    }
}

/// Average document size of the last finished batch (a capacity hint only).
static RECENT_DOC_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Documents of one request, encoded back to back into one buffer: one
/// allocation per request instead of one (or more, as it grows) per record.
#[derive(Debug, Default)]
pub struct DocBatch {
    buf: Vec<u8>,
    entries: Vec<(Signal, String, usize, usize)>,
}

impl DocBatch {
    /// Room for `docs` documents of about `bytes_each` bytes, or of the
    /// size seen in recent batches when that is known: a buffer that has to
    /// grow copies everything written so far (a visible cost in profiles).
    pub fn with_capacity(docs: usize, bytes_each: usize) -> Self {
        let seen = RECENT_DOC_BYTES.load(Ordering::Relaxed);
        let each = if seen > 0 {
            seen + seen / 8
        } else {
            bytes_each
        };
        Self {
            buf: Vec::with_capacity(docs * each),
            entries: Vec::with_capacity(docs),
        }
    }

    /// Adds the document that `encode` appends to the buffer.
    pub fn push(&mut self, signal: Signal, id: String, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        encode(&mut self.buf);
        self.entries.push((signal, id, start, self.buf.len()));
    }

    /// Documents added so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no document was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The documents, each a slice of the shared buffer.
    pub fn finish(self) -> Vec<Doc> {
        if !self.entries.is_empty() {
            RECENT_DOC_BYTES.store(self.buf.len() / self.entries.len(), Ordering::Relaxed);
        }
        let buf = Bytes::from(self.buf);
        self.entries
            .into_iter()
            .map(|(signal, id, start, end)| Doc::new(signal, id, buf.slice(start..end)))
            .collect()
    }
}

/// Index or data stream name of a signal: `<signal>-<dataset>-<environment>`.
pub fn stream_name(signal: Signal, dataset: &str, environment: &str) -> String {
    format!("{}-{dataset}-{environment}", signal.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_documents_are_slices_of_one_buffer() {
        let mut b = DocBatch::with_capacity(2, 8);
        b.push(Signal::traces, "a".into(), |o| {
            o.extend_from_slice(b"{\"x\":1}")
        });
        b.push(Signal::logs, "b".into(), |o| o.extend_from_slice(b"{}"));
        assert_eq!(b.len(), 2);
        let docs = b.finish();
        assert_eq!(&docs[0].source[..], b"{\"x\":1}");
        assert_eq!(&docs[1].source[..], b"{}");
        assert_eq!((docs[1].signal, docs[1].id.as_str()), (Signal::logs, "b"));
    }
}
