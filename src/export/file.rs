//! NDJSON file output, the embedded default: one file series per stream
//! name (`traces-otel-default.000001.ndjson`, …), rotated by size.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::Doc;

struct Current {
    writer: BufWriter<File>,
    bytes: u64,
    seq: u32,
}

/// Writes documents to size-rotated NDJSON files in a directory.
pub struct FileSink {
    dir: PathBuf,
    max_file_bytes: u64,
    open: HashMap<String, Current>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink").field("dir", &self.dir).finish()
    }
}

impl FileSink {
    /// A sink writing into `dir` (created if missing).
    pub fn new(dir: &Path, max_file_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_file_bytes,
            open: HashMap::new(),
        })
    }

    fn path_of(&self, stream: &str, seq: u32) -> PathBuf {
        self.dir.join(format!("{stream}.{seq:06}.ndjson"))
    }

    /// Next sequence number after the files already in the directory, so a restart never overwrites.
    fn next_seq(&self, stream: &str) -> u32 {
        let prefix = format!("{stream}.");
        let mut max = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".ndjson"))
                {
                    if let Ok(n) = rest.parse::<u32>() {
                        max = max.max(n);
                    }
                }
            }
        }
        max + 1
    }

    fn open_file(&self, stream: &str, seq: u32) -> std::io::Result<Current> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path_of(stream, seq))?;
        Ok(Current {
            writer: BufWriter::with_capacity(256 << 10, f),
            bytes: 0,
            seq,
        })
    }

    /// Appends documents to their stream's current file, rotating by size.
    pub fn write(
        &mut self,
        docs: &[Doc],
        stream_of: impl Fn(&Doc) -> String,
    ) -> std::io::Result<()> {
        for d in docs {
            let stream = stream_of(d);
            if !self.open.contains_key(&stream) {
                let seq = self.next_seq(&stream);
                let cur = self.open_file(&stream, seq)?;
                self.open.insert(stream.clone(), cur);
            }
            let needs_rotation = self.open.get(&stream).is_some_and(|c| {
                c.bytes > 0 && c.bytes + d.source.len() as u64 + 1 > self.max_file_bytes
            });
            if needs_rotation {
                if let Some(mut old) = self.open.remove(&stream) {
                    old.writer.flush()?;
                    let cur = self.open_file(&stream, old.seq + 1)?;
                    self.open.insert(stream.clone(), cur);
                }
            }
            if let Some(cur) = self.open.get_mut(&stream) {
                cur.writer.write_all(&d.source)?;
                cur.writer.write_all(b"\n")?;
                cur.bytes += d.source.len() as u64 + 1;
            }
        }
        Ok(())
    }

    /// Flushes every open file to the OS.
    pub fn flush(&mut self) -> std::io::Result<()> {
        for c in self.open.values_mut() {
            c.writer.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Signal;

    #[test]
    fn rotates_by_size_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<Doc> = (0..10)
            .map(|i| {
                Doc::new(
                    Signal::traces,
                    format!("{i}"),
                    format!("{{\"i\":{i}}}").into_bytes(),
                )
            })
            .collect();
        let mut sink = FileSink::new(dir.path(), 20).unwrap();
        sink.write(&docs, |_| "traces-otel-x".into()).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let mut sink = FileSink::new(dir.path(), 20).unwrap();
        sink.write(&docs[..1], |_| "traces-otel-x".into()).unwrap();
        sink.flush().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.len() >= 5, "{names:?}");
        let total: usize = names
            .iter()
            .map(|n| {
                std::fs::read_to_string(dir.path().join(n))
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        assert_eq!(total, 11);
    }
}
