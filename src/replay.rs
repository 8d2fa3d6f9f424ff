//! Replay recorded series through the detectors, as they would run live.
//!
//! `replay nab` feeds every `DIR/<family>/<file>.csv` (`timestamp,value`) of a
//! NAB-style corpus to the metric detector one point at a time, in order, with
//! the time taken from the timestamp column (no look-ahead), and writes NAB's
//! results layout: `RESULTS/<name>/<family>/<name>_<file>.csv` with
//! `timestamp,value,anomaly_score` (the detector's 0–100 score divided by 100).
//! Scoring against labelled windows is done by [`crate::nab`].

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::detect::metric::{MetricDetector, MetricParams, PointValue};
use crate::nab::{self, CorpusReport, FileInput, NabError};

/// Default detector name in results paths (NAB forbids `_` in it).
pub const DEFAULT_NAME: &str = "otelanomaly";

/// Errors of a replay run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file or directory could not be read or written (the cause is the source).
    #[error("cannot access {path}")]
    Io {
        /// Path that failed.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A data file is malformed.
    #[error("{path}:{line}: {message}")]
    Data {
        /// File that failed.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The data directory holds no `<family>/<file>.csv`.
    #[error("no <family>/<file>.csv files under {0}")]
    Empty(PathBuf),
    /// The detector name is not usable in NAB's results layout.
    #[error("detector name {0:?} must be non-empty and contain no '_' or path separators")]
    Name(String),
    /// Loading labels or scoring failed.
    #[error(transparent)]
    Nab(#[from] NabError),
}

/// Result alias of this module.
pub type ReplayResult<T> = Result<T, ReplayError>;

/// One recorded series: the timestamp strings as written, their times and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Corpus key, `family/file.csv`.
    pub key: String,
    /// Timestamps exactly as in the file (echoed into the results).
    pub timestamps: Vec<String>,
    /// Times in ns since the Unix epoch (the timestamps are read as UTC).
    pub times_ns: Vec<u64>,
    /// Values.
    pub values: Vec<f64>,
}

/// Checks a detector name for NAB's results layout.
pub fn check_name(name: &str) -> ReplayResult<()> {
    if name.is_empty() || name.contains(['_', '/', '\\']) {
        return Err(ReplayError::Name(name.to_string()));
    }
    Ok(())
}

/// Corpus keys (`family/file.csv`) of every CSV one level below `data_dir`, sorted.
pub fn discover(data_dir: &Path) -> ReplayResult<Vec<String>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplayError::Io { path, source }
    };
    let mut keys = Vec::new();
    for family in fs::read_dir(data_dir).map_err(io(data_dir))? {
        let family = family.map_err(io(data_dir))?.path();
        if !family.is_dir() {
            continue;
        }
        for file in fs::read_dir(&family).map_err(io(&family))? {
            let file = file.map_err(io(&family))?.path();
            let is_csv = file.extension().is_some_and(|e| e == "csv");
            if !is_csv || !file.is_file() {
                continue;
            }
            let (Some(fam), Some(name)) = (family.file_name(), file.file_name()) else {
                continue;
            };
            keys.push(format!(
                "{}/{}",
                fam.to_string_lossy(),
                name.to_string_lossy()
            ));
        }
    }
    if keys.is_empty() {
        return Err(ReplayError::Empty(data_dir.to_path_buf()));
    }
    keys.sort();
    Ok(keys)
}

/// Reads a `timestamp,value` CSV (header first; extra columns ignored).
pub fn read_series(data_dir: &Path, key: &str) -> ReplayResult<Series> {
    let path = data_dir.join(key);
    let text = fs::read_to_string(&path).map_err(|source| ReplayError::Io {
        path: path.clone(),
        source,
    })?;
    let err = |line: usize, message: String| ReplayError::Data {
        path: path.clone(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (_, header) = lines
        .next()
        .ok_or_else(|| err(1, "empty file (expected a `timestamp,value` header)".into()))?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(ts_col), Some(value_col)) = (col("timestamp"), col("value")) else {
        return Err(err(
            1,
            format!("header {header:?} lacks `timestamp` and `value` columns"),
        ));
    };
    let mut s = Series {
        key: key.to_string(),
        timestamps: Vec::new(),
        times_ns: Vec::new(),
        values: Vec::new(),
    };
    for (line, row) in lines {
        if row.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        let (Some(ts), Some(v)) = (fields.get(ts_col), fields.get(value_col)) else {
            return Err(err(line, format!("expected {} fields", columns.len())));
        };
        let time_ns = nab::parse_timestamp(ts)
            .and_then(epoch_ns)
            .ok_or_else(|| err(line, format!("invalid timestamp {ts:?}")))?;
        if s.times_ns.last().is_some_and(|&prev| prev > time_ns) {
            return Err(err(line, format!("timestamp {ts:?} goes back in time")));
        }
        let value: f64 = v
            .parse()
            .map_err(|_| err(line, format!("value {v:?} is not a number")))?;
        s.timestamps.push((*ts).to_string());
        s.times_ns.push(time_ns);
        s.values.push(value);
    }
    Ok(s)
}

/// ns since the Unix epoch of a parsed `[year, month, day, hour, min, sec, nanos]` (UTC).
fn epoch_ns(t: [u32; 7]) -> Option<u64> {
    let [year, month, day, hour, minute, sec, nanos] = t;
    // Days from civil (H. Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(sec);
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::from(nanos))
}

/// Runs a fresh metric detector over `series`, one point at a time; one NAB score (0–1) per row.
///
/// Rows the detector does not score (cold start) get 0.
pub fn score_series(params: MetricParams, series: &Series) -> Vec<f64> {
    let mut detector = MetricDetector::new(params);
    series
        .times_ns
        .iter()
        .zip(&series.values)
        .map(|(&t, &v)| {
            detector
                .observe(0, t, PointValue::Gauge(v))
                .map_or(0.0, |verdict| f64::from(verdict.score) / 100.0)
        })
        .map(|s| s.clamp(0.0, 1.0))
        .collect()
}

/// Writes one results file in NAB's layout; returns its path.
pub fn write_results(
    results_dir: &Path,
    name: &str,
    series: &Series,
    scores: &[f64],
) -> ReplayResult<PathBuf> {
    check_name(name)?;
    let path = nab::results_path(results_dir, name, &series.key);
    let io = |source| ReplayError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut out = String::with_capacity(40 * scores.len() + 32);
    out.push_str("timestamp,value,anomaly_score\n");
    for ((ts, v), s) in series.timestamps.iter().zip(&series.values).zip(scores) {
        let _ = writeln!(out, "{ts},{v},{s}");
    }
    fs::write(&path, out).map_err(io)?;
    Ok(path)
}

/// One replayed file: its key, row count and scores.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The series replayed.
    pub series: Series,
    /// One score (0–1) per row.
    pub scores: Vec<f64>,
}

/// Replays every file under `data_dir`; `on_file` is called after each file (for progress).
pub fn replay_corpus(
    data_dir: &Path,
    params: MetricParams,
    mut on_file: impl FnMut(&str),
) -> ReplayResult<Vec<Replayed>> {
    discover(data_dir)?
        .into_iter()
        .map(|key| {
            let series = read_series(data_dir, &key)?;
            let scores = score_series(params, &series);
            on_file(&key);
            Ok(Replayed { series, scores })
        })
        .collect()
}

/// Scores replayed files against labelled windows (every labelled file must have been replayed).
pub fn score_replayed(
    name: &str,
    replayed: &[Replayed],
    windows_json: &Path,
    data_dir: &Path,
    profiles: &[nab::Profile],
) -> ReplayResult<CorpusReport> {
    let windows = nab::load_windows(windows_json, data_dir)?;
    let files = windows
        .iter()
        .map(|(key, rows)| {
            let r = replayed
                .iter()
                .find(|r| r.series.key == *key)
                .ok_or_else(|| ReplayError::Data {
                    path: data_dir.join(key),
                    line: 0,
                    message: "labelled file missing from the data directory".into(),
                })?;
            Ok(FileInput::new(
                key.clone(),
                r.series.values.len(),
                rows.clone(),
                r.scores.clone(),
            )?)
        })
        .collect::<ReplayResult<Vec<_>>>()?;
    Ok(nab::score_files(name, &files, profiles))
}

/// Renders a corpus report: the normalised score per profile, then a per-file table.
pub fn render_report(report: &CorpusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "detector {}: {} files, {} windows",
        report.detector, report.n_files, report.n_windows
    );
    for p in &report.profiles {
        let _ = writeln!(
            out,
            "  {:<20} {:>7.2}   (threshold {:.6}, raw {:.3}, TP rows {}, FP rows {})",
            p.profile.name, p.normalized, p.threshold, p.raw_score, p.totals.tp, p.totals.fp
        );
    }
    let _ = write!(out, "\n{:<58}", "file (raw score, FP rows)");
    for p in &report.profiles {
        let _ = write!(out, " {:>20}", p.profile.name);
    }
    out.push('\n');
    if let Some(first) = report.profiles.first() {
        for (i, f) in first.files.iter().enumerate() {
            let _ = write!(out, "{:<58}", f.file);
            for p in &report.profiles {
                let s = &p.files[i].score;
                let _ = write!(out, " {:>13.3} {:>6}", s.score, s.fp);
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nab_dir() -> PathBuf {
        std::env::var_os("NAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/nab"))
    }

    #[test]
    fn epoch_of_known_dates() {
        assert_eq!(epoch_ns([1970, 1, 1, 0, 0, 0, 0]), Some(0));
        // 2014-04-10 07:15:00 UTC
        assert_eq!(
            epoch_ns([2014, 4, 10, 7, 15, 0, 0]),
            Some(1_397_114_100 * 1_000_000_000)
        );
        assert_eq!(
            epoch_ns([2000, 2, 29, 0, 0, 1, 5]),
            Some(951_782_401 * 1_000_000_000 + 5)
        );
        assert_eq!(epoch_ns([1969, 12, 31, 23, 59, 59, 0]), None);
    }

    #[test]
    fn bad_data_gets_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("fam")).expect("mkdir");
        let write = |name: &str, text: &str| {
            fs::write(dir.path().join("fam").join(name), text).expect("write");
        };
        write(
            "a.csv",
            "timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,x\n",
        );
        let e = read_series(dir.path(), "fam/a.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.csv:3") && e.contains("not a number"), "{e}");
        write("b.csv", "time,value\n");
        let e = read_series(dir.path(), "fam/b.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks `timestamp`"), "{e}");
        write(
            "c.csv",
            "timestamp,value\n2020-01-01 00:05:00,1\n2020-01-01 00:00:00,1\n",
        );
        let e = read_series(dir.path(), "fam/c.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("back in time"), "{e}");
        write("d.csv", "timestamp,value\n2020-13-01 00:05:00,1\n");
        let e = read_series(dir.path(), "fam/d.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid timestamp"), "{e}");
        assert!(matches!(check_name("a_b"), Err(ReplayError::Name(_))));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(discover(empty.path()), Err(ReplayError::Empty(_))));
    }

    /// CI smoke: replays two real NAB files and checks the results layout and score range.
    #[test]
    fn replay_writes_nab_layout() {
        let data = nab_dir().join("data");
        assert!(
            data.is_dir(),
            "NAB data not found at {}; set NAB_DIR",
            data.display()
        );
        let keys = discover(&data).expect("discover");
        assert_eq!(keys.len(), 41);
        let windows = nab::load_windows(&nab_dir().join("labels/combined_windows.json"), &data)
            .expect("windows");
        let out = tempfile::tempdir().expect("tempdir");
        for key in [
            "artificialWithAnomaly/art_daily_jumpsup.csv",
            "artificialWithAnomaly/art_daily_flatmiddle.csv",
        ] {
            assert!(keys.iter().any(|k| k == key));
            let series = read_series(&data, key).expect("read");
            let scores = score_series(MetricParams::default(), &series);
            assert_eq!(scores.len(), series.values.len());
            assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
            // The strongest detection after the probationary period is the labelled anomaly.
            let first = nab::probation_rows(scores.len());
            let top = (first..scores.len())
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .expect("rows");
            let (start, end) = windows[key][0];
            assert!(
                (start..=end).contains(&top),
                "{key}: top score {} at row {top}, window rows {start}..={end}",
                scores[top]
            );
            let path = write_results(out.path(), DEFAULT_NAME, &series, &scores).expect("write");
            let (family, file) = key.split_once('/').expect("key");
            assert_eq!(
                path,
                out.path()
                    .join(DEFAULT_NAME)
                    .join(family)
                    .join(format!("{DEFAULT_NAME}_{file}"))
            );
            let text = fs::read_to_string(&path).expect("read back");
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
            assert_eq!(lines.clone().count(), series.values.len());
            let first: Vec<&str> = lines.next().expect("row").split(',').collect();
            assert_eq!(first[0], series.timestamps[0]);
            // The official reader's view of the file: same rows, same scores.
            let back = nab::read_anomaly_scores(&path, series.values.len()).expect("scores");
            assert_eq!(back, scores);
        }
    }

    /// The whole subset, replayed and scored as `replay nab --score` does.
    /// The floors are the scores recorded in BENCHMARKS.md, rounded down: a
    /// change that makes the detector worse on NAB fails here.
    #[test]
    fn nab_subset_scores_do_not_regress() {
        let dir = nab_dir();
        let data = dir.join("data");
        assert!(
            data.is_dir(),
            "NAB data not found at {}; set NAB_DIR",
            data.display()
        );
        let replayed = replay_corpus(&data, MetricParams::default(), |_| {}).expect("replay");
        assert_eq!(replayed.len(), 41);
        let profiles = nab::load_profiles(&dir.join("config/profiles.json")).expect("profiles");
        let report = score_replayed(
            DEFAULT_NAME,
            &replayed,
            &dir.join("labels/combined_windows.json"),
            &data,
            &profiles,
        )
        .expect("score");
        let got: Vec<(String, f64)> = report
            .profiles
            .iter()
            .map(|p| (p.profile.name.clone(), p.normalized))
            .collect();
        let floor = |name: &str| match name {
            "standard" => 62.6,
            "reward_low_FP_rate" => 50.4,
            "reward_low_FN_rate" => 68.8,
            other => panic!("unexpected profile {other}"),
        };
        assert_eq!(got.len(), 3, "{got:?}");
        for (name, score) in &got {
            assert!(*score >= floor(name), "{name}: {score:.2} (all: {got:?})");
        }
        let table = render_report(&report);
        assert!(table.contains("realTraffic/speed_7578.csv"), "{table}");
    }
}
