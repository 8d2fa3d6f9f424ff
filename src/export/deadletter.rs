//! The dead-letter file: documents rejected for good, one JSON line each,
//! with the reason, so nothing disappears silently.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Doc;
use crate::export::document::json_str;

/// Appends rejected documents to an NDJSON file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    /// A dead-letter file at `path` (created on first use).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `docs` with `reason`s; blocking (call from a blocking context).
    pub fn write(&self, entries: &[(Doc, String)]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut buf = Vec::new();
        for (doc, reason) in entries {
            buf.extend_from_slice(b"{\"signal\":");
            json_str(&mut buf, doc.signal.as_str());
            buf.extend_from_slice(b",\"_id\":");
            json_str(&mut buf, &doc.id);
            buf.extend_from_slice(b",\"reason\":");
            json_str(&mut buf, reason);
            let _ = write!(buf, ",\"attempts\":{},\"document\":", doc.attempts);
            buf.extend_from_slice(&doc.source);
            buf.extend_from_slice(b"}\n");
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&buf)?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Signal;

    #[test]
    fn writes_reason_and_document() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetter::new(&dir.path().join("sub/dl.ndjson"));
        dl.write(&[(
            Doc::new(Signal::logs, "id1".into(), b"{\"a\":1}".to_vec()),
            "400 mapper_parsing_exception".into(),
        )])
        .unwrap();
        let text = std::fs::read_to_string(dl.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["reason"], "400 mapper_parsing_exception");
        assert_eq!(v["document"]["a"], 1);
        assert_eq!(v["_id"], "id1");
    }
}
