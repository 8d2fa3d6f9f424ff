//! Known incident windows (`--exclude FILE`): history inside them is not
//! learned.
//!
//! The file has one window per line: start and end as RFC 3339 UTC times,
//! then an optional note; blank lines and lines starting with `#` are
//! ignored.
//!
//! ```text
//! # start               end                   note
//! 2026-11-10T14:00:00Z  2026-11-10T15:30:00Z  checkout outage INC-123
//! ```

use std::path::Path;

use super::doc::parse_time;

/// Why an exclude file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExcludeError {
    #[error("cannot read exclude file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("exclude file {path}, line {line}: {why} (expected `START END [note]`, RFC 3339 UTC times such as 2026-11-10T14:00:00Z)")]
    Line {
        path: String,
        line: usize,
        why: String,
    },
}

/// One window, [start, end) in ns since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub note: String,
}

/// Sorted, non-overlapping windows.
#[derive(Debug, Clone, Default)]
pub struct Windows(Vec<Window>);

impl Windows {
    /// No windows.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ExcludeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExcludeError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the file's text (`path` only names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ExcludeError> {
        let mut out = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| ExcludeError::Line {
                path: path.to_string(),
                line: i + 1,
                why,
            };
            let mut parts = line.splitn(3, char::is_whitespace);
            let start = parts.next().unwrap_or_default();
            let end = parts
                .next()
                .ok_or_else(|| err("the end time is missing".into()))?;
            let note = parts.next().unwrap_or("").trim().to_string();
            let start_ns = parse_time(start).map_err(|e| err(e.to_string()))?;
            let end_ns = parse_time(end.trim()).map_err(|e| err(e.to_string()))?;
            if end_ns <= start_ns {
                return Err(err(format!("end {end} is not after start {start}")));
            }
            out.push(Window {
                start_ns,
                end_ns,
                note,
            });
        }
        out.sort_by_key(|w| w.start_ns);
        // Overlapping windows merge into one.
        let mut merged: Vec<Window> = Vec::with_capacity(out.len());
        for w in out {
            match merged.last_mut() {
                Some(last) if w.start_ns <= last.end_ns => {
                    last.end_ns = last.end_ns.max(w.end_ns);
                }
                _ => merged.push(w),
            }
        }
        Ok(Self(merged))
    }

    /// The window containing `t`, if any.
    pub fn find(&self, t: u64) -> Option<&Window> {
        let i = self.0.partition_point(|w| w.end_ns <= t);
        self.0.get(i).filter(|w| w.start_ns <= t)
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_merge_and_match() {
        let w = Windows::parse(
            "# incidents\n\n2023-11-14T22:00:00Z 2023-11-14T23:00:00Z outage one\n2023-11-14T22:30:00Z 2023-11-14T23:30:00Z\n2023-11-15T00:00:00Z 2023-11-15T00:10:00Z\n",
            "f",
        )
        .unwrap();
        assert_eq!(w.windows().len(), 2);
        let t0 = parse_time("2023-11-14T22:00:00Z").unwrap();
        assert!(w.find(t0).is_some());
        assert!(w.find(t0 - 1).is_none());
        assert!(w
            .find(parse_time("2023-11-14T23:29:59Z").unwrap())
            .is_some());
        assert!(w
            .find(parse_time("2023-11-14T23:30:00Z").unwrap())
            .is_none());
        assert!(w
            .find(parse_time("2023-11-15T00:05:00Z").unwrap())
            .is_some());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = Windows::parse("\n2023-11-14T22:00:00Z\n", "incidents.txt").unwrap_err();
        assert!(e.to_string().contains("incidents.txt, line 2"), "{e}");
        let e = Windows::parse("2023-11-14T23:00:00Z 2023-11-14T22:00:00Z", "f").unwrap_err();
        assert!(e.to_string().contains("not after"), "{e}");
        let e = Windows::parse("monday tuesday", "f").unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}
