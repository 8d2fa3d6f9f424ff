//! Numenta Anomaly Benchmark (NAB v1.1) scoring, re-implemented from its published rules.
//!
//! Rules (see `shared/nab/README.md` and `shared/nab/reference/README.md`):
//!
//! * The first `min(floor(0.15·N), 750)` rows of a file are probationary and never scored.
//! * A row is a detection when `anomaly_score >= threshold`.
//! * Scaled sigmoid `σ(y) = 2/(1+e^{5y}) − 1`, with `σ(y) = −1` for `y > 3`.
//! * Per window, only the earliest detection counts, worth `A_TP·σ(y)/σ(−1)` with
//!   `y = −(right − i + 1)/width`; a window without detection costs `−A_FN`.
//! * A detection outside every window costs `A_FP·σ(y)` with
//!   `y = (i − end of previous window)/(previous width − 1)`, or `−A_FP` with no window before.
//! * One threshold per detector and profile maximises the corpus raw score over the
//!   candidates "every distinct non-probationary score, plus 1.1"; ties go to the higher one.
//! * `normalized = 100·(raw − null)/(perfect − null)` with `null = −A_FN·windows`
//!   and `perfect = A_TP·windows`.
//!
//! Choices where NAB itself is silent or would fail:
//!
//! * A window whose rows are all probationary still counts (as a miss), so that the
//!   null/perfect normalisation constants stay `∓A·windows`.
//! * A one-row window has `width − 1 = 0`; NAB would divide by zero. Here a false
//!   positive after it costs the full `−A_FP`.
//! * Anomaly scores must be finite and lie in `[0, 1]` (NAB's file format contract).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Fraction of a file's rows that is probationary (not scored).
pub const PROBATION_FRACTION: f64 = 0.15;
/// Upper bound on the probationary period, in rows (`0.15 · 5000`).
pub const MAX_PROBATION_ROWS: usize = 750;
/// Threshold at which nothing is detected; the optimizer's first candidate.
pub const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// Errors raised while loading or validating NAB inputs.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// File that failed.
        path: PathBuf,
        /// Underlying parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A CSV file is malformed (header, missing column, unparsable value).
    #[error("{path}:{line}: {message}")]
    Csv {
        /// File that failed.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A results file does not have one row per data row.
    #[error("{path}: has {found} rows, expected {expected} (one per row of the data file)")]
    RowCount {
        /// Results file (or in-memory file name).
        path: PathBuf,
        /// Rows in the data file.
        expected: usize,
        /// Rows found.
        found: usize,
    },
    /// A timestamp string could not be parsed.
    #[error("invalid timestamp {value:?} ({context})")]
    Timestamp {
        /// Offending string.
        value: String,
        /// Where it was found.
        context: String,
    },
    /// A window is malformed or does not match the data rows.
    #[error("{}: {message}", if file.is_empty() { "window" } else { file.as_str() })]
    Window {
        /// Corpus key of the file (may be empty when not known).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// An anomaly score is not a finite value in `[0, 1]`.
    #[error("{file}: row {row}: anomaly score {value} is not a finite value in [0, 1]")]
    ScoreRange {
        /// Corpus key of the file.
        file: String,
        /// 0-based data row.
        row: usize,
        /// Offending value.
        value: f64,
    },
    /// A cost profile is invalid.
    #[error("profile {name:?}: {message}")]
    Profile {
        /// Profile name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A detector name is unusable in NAB's results layout.
    #[error("detector name {0:?} must be non-empty and contain no '_', '/' or '\\'")]
    DetectorName(String),
}

/// Result alias for this module.
pub type NabResult<T> = std::result::Result<T, NabError>;

/// A NAB cost profile (`A_TN` is omitted: NAB never uses it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// Profile name, e.g. `standard`.
    pub name: String,
    /// Reward for a detection at the left edge of a window.
    pub a_tp: f64,
    /// Magnitude of the cost of a far-away false positive.
    pub a_fp: f64,
    /// Magnitude of the cost of a missed window.
    pub a_fn: f64,
}

#[derive(Deserialize)]
struct RawProfile {
    #[serde(rename = "CostMatrix")]
    cost_matrix: RawCostMatrix,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCostMatrix {
    tp_weight: f64,
    fp_weight: f64,
    fn_weight: f64,
}

/// Loads NAB's `profiles.json`: standard, low-FP, low-FN first, any others after, by name.
pub fn load_profiles(path: &Path) -> NabResult<Vec<Profile>> {
    let raw: BTreeMap<String, RawProfile> = read_json(path)?;
    let mut profiles = Vec::with_capacity(raw.len());
    for (name, p) in raw {
        let m = p.cost_matrix;
        for (what, v) in [
            ("tpWeight", m.tp_weight),
            ("fpWeight", m.fp_weight),
            ("fnWeight", m.fn_weight),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(NabError::Profile {
                    name,
                    message: format!("{what} = {v} must be finite and >= 0"),
                });
            }
        }
        profiles.push(Profile {
            name,
            a_tp: m.tp_weight,
            a_fp: m.fp_weight,
            a_fn: m.fn_weight,
        });
    }
    const ORDER: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];
    profiles.sort_by_key(|p| {
        let rank = ORDER
            .iter()
            .position(|n| *n == p.name)
            .unwrap_or(ORDER.len());
        (rank, p.name.clone())
    });
    Ok(profiles)
}

/// Loads `combined_windows.json` as `"family/file.csv" -> [(start, end)]` timestamp strings.
pub fn load_window_timestamps(path: &Path) -> NabResult<BTreeMap<String, Vec<(String, String)>>> {
    read_json(path)
}

/// Loads the windows and converts them to inclusive row ranges using the data files under `data_dir`.
pub fn load_windows(
    windows_json: &Path,
    data_dir: &Path,
) -> NabResult<BTreeMap<String, Vec<(usize, usize)>>> {
    let mut out = BTreeMap::new();
    for (key, windows) in load_window_timestamps(windows_json)? {
        let timestamps = read_data_timestamps(&data_dir.join(&key))?;
        let rows = window_rows(&timestamps, &windows).map_err(|e| match e {
            NabError::Window { message, .. } => NabError::Window {
                file: key.clone(),
                message,
            },
            NabError::Timestamp { value, context } => NabError::Timestamp {
                value,
                context: format!("{key}: {context}"),
            },
            other => other,
        })?;
        out.insert(key, rows);
    }
    Ok(out)
}

/// Maps inclusive timestamp windows to inclusive row ranges (first row ≥ start, last row ≤ end).
///
/// Timestamps are compared as times, so `2014-04-10 07:15:00.000000` equals `2014-04-10 07:15:00`.
pub fn window_rows(
    data_timestamps: &[String],
    windows: &[(String, String)],
) -> NabResult<Vec<(usize, usize)>> {
    let mut keys = Vec::with_capacity(data_timestamps.len());
    for (i, ts) in data_timestamps.iter().enumerate() {
        let key = parse_timestamp(ts).ok_or_else(|| NabError::Timestamp {
            value: ts.clone(),
            context: format!("data row {i}"),
        })?;
        if keys.last().is_some_and(|prev| *prev > key) {
            return Err(NabError::Window {
                file: String::new(),
                message: format!("data timestamps are not ascending at row {i} ({ts})"),
            });
        }
        keys.push(key);
    }
    let mut rows = Vec::with_capacity(windows.len());
    for (start, end) in windows {
        let parse = |s: &String| {
            parse_timestamp(s).ok_or_else(|| NabError::Timestamp {
                value: s.clone(),
                context: "window bound".to_string(),
            })
        };
        let (s, e) = (parse(start)?, parse(end)?);
        let first = keys.partition_point(|k| *k < s);
        let past_last = keys.partition_point(|k| *k <= e);
        if first >= past_last {
            return Err(NabError::Window {
                file: String::new(),
                message: format!("window [{start}, {end}] contains no data row"),
            });
        }
        rows.push((first, past_last - 1));
    }
    Ok(rows)
}

/// Reads the `timestamp` column (which must come first) of a NAB data or results CSV.
pub fn read_data_timestamps(path: &Path) -> NabResult<Vec<String>> {
    let text = read_text(path)?;
    let mut lines = csv_lines(&text);
    check_header(path, lines.next())?;
    let mut out = Vec::new();
    for (line, fields) in lines {
        match fields.first() {
            Some(ts) if !ts.is_empty() => out.push((*ts).to_string()),
            _ => return Err(csv_err(path, line, "empty timestamp")),
        }
    }
    Ok(out)
}

/// Reads the `anomaly_score` column of a results CSV; it must have exactly `expected_rows` rows.
pub fn read_anomaly_scores(path: &Path, expected_rows: usize) -> NabResult<Vec<f64>> {
    let text = read_text(path)?;
    let mut lines = csv_lines(&text);
    let header = check_header(path, lines.next())?;
    let col = header
        .iter()
        .position(|h| *h == "anomaly_score")
        .ok_or_else(|| csv_err(path, 1, "header has no `anomaly_score` column"))?;
    let mut scores = Vec::with_capacity(expected_rows);
    for (line, fields) in lines {
        let raw = fields
            .get(col)
            .ok_or_else(|| csv_err(path, line, "missing anomaly_score field"))?;
        let v: f64 = raw.parse().map_err(|_| {
            csv_err(
                path,
                line,
                &format!("anomaly_score {raw:?} is not a number"),
            )
        })?;
        if !v.is_finite() {
            return Err(csv_err(
                path,
                line,
                &format!("anomaly_score {raw:?} is not finite"),
            ));
        }
        scores.push(v);
    }
    if scores.len() != expected_rows {
        return Err(NabError::RowCount {
            path: path.to_path_buf(),
            expected: expected_rows,
            found: scores.len(),
        });
    }
    Ok(scores)
}

/// One file's scoring input: row windows and one anomaly score per row.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInput {
    name: String,
    windows: Vec<(usize, usize)>,
    scores: Vec<f64>,
}

impl FileInput {
    /// Validates and builds an input: `scores.len() == n_rows`, windows sorted, disjoint, in range.
    pub fn new(
        name: impl Into<String>,
        n_rows: usize,
        windows: Vec<(usize, usize)>,
        scores: Vec<f64>,
    ) -> NabResult<Self> {
        let name = name.into();
        if scores.len() != n_rows {
            return Err(NabError::RowCount {
                path: PathBuf::from(&name),
                expected: n_rows,
                found: scores.len(),
            });
        }
        if let Some((row, &value)) = scores
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(NabError::ScoreRange {
                file: name,
                row,
                value,
            });
        }
        let mut prev_end: Option<usize> = None;
        for &(s, e) in &windows {
            let message = if s > e || e >= n_rows {
                Some(format!("window rows ({s}, {e}) invalid for {n_rows} rows"))
            } else if prev_end.is_some_and(|p| s <= p) {
                Some(format!(
                    "window rows ({s}, {e}) overlap or precede the previous window"
                ))
            } else {
                None
            };
            if let Some(message) = message {
                return Err(NabError::Window {
                    file: name,
                    message,
                });
            }
            prev_end = Some(e);
        }
        // `+ 0.0` turns -0.0 into 0.0 so that equal scores sort together.
        let scores = scores.into_iter().map(|v| v + 0.0).collect();
        Ok(Self {
            name,
            windows,
            scores,
        })
    }

    /// Corpus key, e.g. `realTraffic/speed_7578.csv`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of rows N.
    pub fn n_rows(&self) -> usize {
        self.scores.len()
    }

    /// Inclusive row ranges of the windows.
    pub fn windows(&self) -> &[(usize, usize)] {
        &self.windows
    }

    /// One anomaly score per row.
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }
}

/// Probationary rows of a file with `n_rows` rows: `min(floor(0.15·N), 750)`.
pub fn probation_rows(n_rows: usize) -> usize {
    // Same float expression as NAB, so rounding at exact multiples matches.
    let p = (PROBATION_FRACTION * n_rows as f64).floor() as usize;
    p.min(MAX_PROBATION_ROWS)
}

/// NAB's scaled sigmoid: `2/(1+e^{5y}) − 1`, and exactly `−1` for `y > 3`.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 * (1.0 / (1.0 + (5.0 * y).exp())) - 1.0
    }
}

/// Weight of the earliest detection in a window at row `i`, given the window's unweighted σ.
fn tp_weight(unweighted: f64, profile: &Profile) -> f64 {
    unweighted * profile.a_tp / scaled_sigmoid(-1.0)
}

/// Cost of a false positive, given its unweighted σ (negative).
fn fp_weight(unweighted: f64, profile: &Profile) -> f64 {
    unweighted * profile.a_fp
}

/// A non-probationary row: its window (local index) if inside one, and its unweighted σ.
#[derive(Debug, Clone, Copy)]
struct ScoredRow {
    row: usize,
    window: Option<usize>,
    unweighted: f64,
}

/// Visits every non-probationary row of `file` in order, with its window and unweighted σ.
fn visit_scored_rows(file: &FileInput, mut f: impl FnMut(ScoredRow)) {
    let windows = &file.windows;
    let mut next = 0;
    let mut prev: Option<(usize, usize)> = None; // (end row, width) of the last finished window
    for row in probation_rows(file.n_rows())..file.n_rows() {
        while next < windows.len() && windows[next].1 < row {
            let (s, e) = windows[next];
            prev = Some((e, e - s + 1));
            next += 1;
        }
        let scored = match windows.get(next) {
            Some(&(s, e)) if s <= row => {
                let y = -((e - row + 1) as f64) / ((e - s + 1) as f64);
                ScoredRow {
                    row,
                    window: Some(next),
                    unweighted: scaled_sigmoid(y),
                }
            }
            _ => {
                let unweighted = match prev {
                    Some((end, width)) if width > 1 => {
                        scaled_sigmoid((row - end) as f64 / (width - 1) as f64)
                    }
                    _ => -1.0,
                };
                ScoredRow {
                    row,
                    window: None,
                    unweighted,
                }
            }
        };
        f(scored);
    }
}

/// Score and row counts (non-probationary rows only) of one file at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FileScore {
    /// Raw score: window terms plus false-positive terms.
    pub score: f64,
    /// Rows inside a window at or above the threshold.
    pub tp: usize,
    /// Rows outside every window below the threshold.
    pub tn: usize,
    /// Rows outside every window at or above the threshold.
    pub fp: usize,
    /// Rows inside a window below the threshold.
    #[serde(rename = "fn")]
    pub fn_: usize,
}

/// Scores one file at `threshold` under `profile`.
pub fn score_file(file: &FileInput, threshold: f64, profile: &Profile) -> FileScore {
    let mut best: Vec<Option<f64>> = vec![None; file.windows.len()];
    let mut out = FileScore::default();
    let mut fp_sum = 0.0;
    visit_scored_rows(file, |r| {
        let detected = file.scores[r.row] >= threshold;
        match (r.window, detected) {
            (Some(w), true) => {
                out.tp += 1;
                // Rows come in order, so the first detection seen is the earliest.
                if best[w].is_none() {
                    best[w] = Some(tp_weight(r.unweighted, profile));
                }
            }
            (Some(_), false) => out.fn_ += 1,
            (None, true) => {
                out.fp += 1;
                fp_sum += fp_weight(r.unweighted, profile);
            }
            (None, false) => out.tn += 1,
        }
    });
    out.score = best
        .iter()
        .fold(fp_sum, |acc, b| acc + b.unwrap_or(-profile.a_fn));
    out
}

/// Profile-independent, score-sorted view of a corpus used by the threshold sweep.
struct Sweep {
    /// (score, global window index or None, unweighted σ), sorted by score descending (stable).
    entries: Vec<(f64, Option<usize>, f64)>,
    n_windows: usize,
}

/// Result of the threshold sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Optimum {
    threshold: f64,
    raw: f64,
    candidates: usize,
}

impl Sweep {
    fn new(files: &[FileInput]) -> Self {
        let mut entries = Vec::new();
        let mut offset = 0;
        for file in files {
            visit_scored_rows(file, |r| {
                entries.push((
                    file.scores[r.row],
                    r.window.map(|w| w + offset),
                    r.unweighted,
                ));
            });
            offset += file.windows.len();
        }
        entries.sort_by(|a, b| b.0.total_cmp(&a.0));
        Self {
            entries,
            n_windows: offset,
        }
    }

    /// Sweeps thresholds from high to low in O(rows); ties keep the higher threshold.
    fn optimize(&self, profile: &Profile) -> Optimum {
        let mut window_best: Vec<Option<f64>> = vec![None; self.n_windows];
        let mut fp_sum = 0.0;
        let mut window_sum = (0..self.n_windows).fold(0.0, |acc, _| acc - profile.a_fn);
        let mut best = Optimum {
            threshold: NO_DETECTION_THRESHOLD,
            raw: fp_sum + window_sum,
            candidates: 1,
        };
        let mut i = 0;
        while i < self.entries.len() {
            let threshold = self.entries[i].0;
            while let Some(&(score, window, unweighted)) = self.entries.get(i) {
                if score != threshold {
                    break;
                }
                match window {
                    Some(w) => {
                        // Earlier detections have a larger σ, so the maximum is the earliest.
                        let value = tp_weight(unweighted, profile);
                        let old = window_best[w];
                        if old.is_none_or(|o| value > o) {
                            window_sum += value - old.unwrap_or(-profile.a_fn);
                            window_best[w] = Some(value);
                        }
                    }
                    None => fp_sum += fp_weight(unweighted, profile),
                }
                i += 1;
            }
            best.candidates += 1;
            let raw = fp_sum + window_sum;
            if raw > best.raw {
                best.threshold = threshold;
                best.raw = raw;
            }
        }
        best
    }
}

/// Finds the corpus-wide threshold with the highest raw score; returns `(threshold, raw_score)`.
pub fn optimize_threshold(files: &[FileInput], profile: &Profile) -> (f64, f64) {
    let o = Sweep::new(files).optimize(profile);
    (o.threshold, o.raw)
}

/// NAB normalisation `100·(raw − null)/(perfect − null)`; NaN when `perfect_raw == null_raw`.
pub fn normalized(raw: f64, null_raw: f64, perfect_raw: f64) -> f64 {
    100.0 * (raw - null_raw) / (perfect_raw - null_raw)
}

/// One row of the per-file table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReport {
    /// Corpus key of the file.
    pub file: String,
    /// Its score and row counts at the profile's threshold.
    #[serde(flatten)]
    pub score: FileScore,
}

/// Results of one detector under one profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileReport {
    /// Profile used.
    pub profile: Profile,
    /// Optimised corpus-wide threshold.
    pub threshold: f64,
    /// Sum of the per-file scores at `threshold` (what NAB normalises).
    pub raw_score: f64,
    /// The optimizer's running corpus sum at `threshold` (equal up to rounding).
    pub optimizer_raw_score: f64,
    /// Null detector's raw score, `−A_FN·windows`.
    pub null_raw: f64,
    /// Perfect detector's raw score, `A_TP·windows`.
    pub perfect_raw: f64,
    /// Final NAB score (null = 0, perfect = 100).
    pub normalized: f64,
    /// Row counts summed over files (`score` equals `raw_score`).
    pub totals: FileScore,
    /// Per-file table, in input order.
    pub files: Vec<FileReport>,
}

/// Results of one detector over a corpus under every profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusReport {
    /// Detector name.
    pub detector: String,
    /// Number of files scored.
    pub n_files: usize,
    /// Number of windows in the corpus.
    pub n_windows: usize,
    /// One report per profile, in the given order.
    pub profiles: Vec<ProfileReport>,
}

/// Optimises, scores and normalises in-memory inputs under each profile.
pub fn score_files(detector: &str, files: &[FileInput], profiles: &[Profile]) -> CorpusReport {
    let sweep = Sweep::new(files);
    let n_windows = sweep.n_windows;
    let profiles = profiles
        .iter()
        .map(|profile| {
            let opt = sweep.optimize(profile);
            let mut totals = FileScore::default();
            let files: Vec<FileReport> = files
                .iter()
                .map(|f| {
                    let s = score_file(f, opt.threshold, profile);
                    totals.score += s.score;
                    totals.tp += s.tp;
                    totals.tn += s.tn;
                    totals.fp += s.fp;
                    totals.fn_ += s.fn_;
                    FileReport {
                        file: f.name.clone(),
                        score: s,
                    }
                })
                .collect();
            let null_raw = -profile.a_fn * n_windows as f64;
            let perfect_raw = profile.a_tp * n_windows as f64;
            ProfileReport {
                profile: profile.clone(),
                threshold: opt.threshold,
                raw_score: totals.score,
                optimizer_raw_score: opt.raw,
                null_raw,
                perfect_raw,
                normalized: normalized(totals.score, null_raw, perfect_raw),
                totals,
                files,
            }
        })
        .collect();
    CorpusReport {
        detector: detector.to_string(),
        n_files: files.len(),
        n_windows,
        profiles,
    }
}

/// Path of a detector's results file: `<results_dir>/<detector>/<family>/<detector>_<file>`.
pub fn results_path(results_dir: &Path, detector: &str, key: &str) -> PathBuf {
    let key = Path::new(key);
    let file = key
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let family = key.parent().unwrap_or(Path::new(""));
    results_dir
        .join(detector)
        .join(family)
        .join(format!("{detector}_{file}"))
}

/// Loads a detector's results for every file in `windows` (row counts checked against `data_dir`).
pub fn load_corpus(
    results_dir: &Path,
    detector: &str,
    data_dir: &Path,
    windows: &BTreeMap<String, Vec<(usize, usize)>>,
) -> NabResult<Vec<FileInput>> {
    if detector.is_empty() || detector.contains(['_', '/', '\\']) {
        return Err(NabError::DetectorName(detector.to_string()));
    }
    windows
        .iter()
        .map(|(key, rows)| {
            let n_rows = read_data_timestamps(&data_dir.join(key))?.len();
            let scores = read_anomaly_scores(&results_path(results_dir, detector, key), n_rows)?;
            FileInput::new(key.clone(), n_rows, rows.clone(), scores)
        })
        .collect()
}

/// Loads a detector's results and scores them under each profile (the full NAB pipeline).
pub fn score_corpus(
    results_dir: &Path,
    detector: &str,
    data_dir: &Path,
    windows: &BTreeMap<String, Vec<(usize, usize)>>,
    profiles: &[Profile],
) -> NabResult<CorpusReport> {
    let files = load_corpus(results_dir, detector, data_dir, windows)?;
    Ok(score_files(detector, &files, profiles))
}

fn read_text(path: &Path) -> NabResult<String> {
    fs::read_to_string(path).map_err(|source| NabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> NabResult<T> {
    serde_json::from_str(&read_text(path)?).map_err(|source| NabError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn csv_err(path: &Path, line: usize, message: &str) -> NabError {
    NabError::Csv {
        path: path.to_path_buf(),
        line,
        message: message.to_string(),
    }
}

/// Non-blank lines as (1-based line number, fields); quotes around fields are dropped.
fn csv_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let l = l.strip_prefix('\u{feff}').unwrap_or(l);
            (
                i + 1,
                l.split(',').map(|f| f.trim().trim_matches('"')).collect(),
            )
        })
}

/// Checks that a header exists and starts with `timestamp`; returns its fields.
fn check_header<'a>(path: &Path, header: Option<(usize, Vec<&'a str>)>) -> NabResult<Vec<&'a str>> {
    match header {
        Some((_, fields)) if fields.first() == Some(&"timestamp") => Ok(fields),
        Some((line, _)) => Err(csv_err(
            path,
            line,
            "header must start with a `timestamp` column",
        )),
        None => Err(csv_err(path, 1, "file is empty (no header)")),
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fraction]` (or with `T`) into a comparable key
/// `[year, month, day, hour, minute, second, nanos]`.
pub fn parse_timestamp(s: &str) -> Option<[u32; 7]> {
    fn num(s: &str, max_len: usize) -> Option<u32> {
        if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let (date, time) = s.trim().split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let (year, month, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let mut t = time.trim().split(':');
    let (hour, minute, sec) = (num(t.next()?, 2)?, num(t.next()?, 2)?, t.next()?);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    let (sec, frac) = sec.split_once('.').unwrap_or((sec, "0"));
    let sec = num(sec, 2)?;
    let nanos = num(frac, 9)? * 10u32.pow(9 - frac.len() as u32);
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && sec <= 60;
    valid.then_some([year, month, day, hour, minute, sec, nanos])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn nab_dir() -> PathBuf {
        std::env::var_os("NAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/nab"))
    }

    fn profile(name: &str, a_tp: f64, a_fp: f64, a_fn: f64) -> Profile {
        Profile {
            name: name.to_string(),
            a_tp,
            a_fp,
            a_fn,
        }
    }

    fn standard() -> Profile {
        profile("standard", 1.0, 0.11, 1.0)
    }

    struct Reference {
        windows: BTreeMap<String, Vec<(usize, usize)>>,
        profiles: Vec<Profile>,
    }

    fn reference() -> Reference {
        let dir = nab_dir();
        assert!(
            dir.join("README.md").is_file(),
            "NAB data not found at {}; set NAB_DIR",
            dir.display()
        );
        let windows = load_windows(&dir.join("labels/combined_windows.json"), &dir.join("data"))
            .expect("windows");
        let profiles = load_profiles(&dir.join("config/profiles.json")).expect("profiles");
        Reference { windows, profiles }
    }

    /// Real windows and row counts, with generated scores.
    fn synthetic(r: &Reference, score: impl Fn(usize, &[(usize, usize)]) -> f64) -> Vec<FileInput> {
        let data = nab_dir().join("data");
        r.windows
            .iter()
            .map(|(key, w)| {
                let n = read_data_timestamps(&data.join(key)).expect("data").len();
                let scores = (0..n).map(|i| score(i, w)).collect();
                FileInput::new(key.clone(), n, w.clone(), scores).expect("input")
            })
            .collect()
    }

    #[test]
    fn reference_detectors_reproduce_official_scores() {
        let started = Instant::now();
        let r = reference();
        let dir = nab_dir();
        assert_eq!(r.windows.len(), 41);
        assert_eq!(r.windows.values().map(Vec::len).sum::<usize>(), 64);
        let thresholds: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> =
            read_json(&dir.join("reference/thresholds.json")).expect("thresholds.json");
        // (detector, [normalized per profile], candidates, [(tp, tn, fp, fn) per profile])
        let expected = [
            (
                "numenta",
                [75.51872445355852, 70.6819592991455, 78.99164963570568],
                16_783,
                [(119, 105_477, 59, 11_131); 3],
            ),
            (
                "windowedGaussian",
                [41.424288126112835, 26.476877155122246, 48.44952541740856],
                110_867,
                [
                    (315, 105_341, 195, 10_935),
                    (299, 105_359, 177, 10_951),
                    (315, 105_341, 195, 10_935),
                ],
            ),
        ];
        for (detector, norms, candidates, counts) in expected {
            let files = load_corpus(
                &dir.join("reference/results"),
                detector,
                &dir.join("data"),
                &r.windows,
            )
            .expect("results");
            assert_eq!(
                files
                    .iter()
                    .map(|f| f.n_rows() - probation_rows(f.n_rows()))
                    .sum::<usize>(),
                116_786
            );
            let sweep = Sweep::new(&files);
            let report = score_files(detector, &files, &r.profiles);
            for (i, p) in report.profiles.iter().enumerate() {
                let name = &p.profile.name;
                let official = &thresholds[detector][name];
                println!(
                    "{detector:>16} {name:<18} thr {:<16} raw {:>20} (opt {:>20}, ref {:>20}) norm {:.6} (ref {:.6})",
                    p.threshold,
                    p.raw_score,
                    p.optimizer_raw_score,
                    official["score"],
                    p.normalized,
                    norms[i]
                );
                assert_eq!(
                    p.threshold, official["threshold"],
                    "{detector} {name} threshold"
                );
                assert!(
                    (p.normalized - norms[i]).abs() <= 0.01,
                    "{detector} {name} normalized"
                );
                assert!(
                    (p.optimizer_raw_score - official["score"]).abs() < 1e-9,
                    "{detector} {name} raw"
                );
                let t = p.totals;
                assert_eq!(
                    (t.tp, t.tn, t.fp, t.fn_),
                    counts[i],
                    "{detector} {name} counts"
                );
                assert_eq!(
                    sweep.optimize(&p.profile).candidates,
                    candidates,
                    "{detector} candidates"
                );
            }
        }
        println!("reference test took {:?}", started.elapsed());
    }

    #[test]
    fn numenta_standard_per_file_table() {
        let r = reference();
        let dir = nab_dir();
        let threshold: f64 = "0.543099145074".parse().expect("float");
        let files = load_corpus(
            &dir.join("reference/results"),
            "numenta",
            &dir.join("data"),
            &r.windows,
        )
        .expect("results");
        let table = read_text(&dir.join("reference/numenta_standard_per_file.csv")).expect("table");
        let mut rows = csv_lines(&table);
        assert_eq!(
            rows.next().map(|(_, h)| h),
            Some(vec!["file", "threshold", "score", "tp", "tn", "fp", "fn"])
        );
        let mut seen = 0;
        let mut sum = 0.0;
        for (_, f) in rows {
            let input = files
                .iter()
                .find(|x| x.name() == f[0])
                .expect("file in corpus");
            let s = score_file(input, threshold, &standard());
            let want: f64 = f[2].parse().expect("score");
            let n = |i: usize| f[i].parse::<usize>().expect("count");
            assert!(
                (s.score - want).abs() < 1e-9,
                "{}: {} vs {want}",
                f[0],
                s.score
            );
            assert_eq!(
                (s.tp, s.tn, s.fp, s.fn_),
                (n(3), n(4), n(5), n(6)),
                "{}",
                f[0]
            );
            sum += s.score;
            seen += 1;
        }
        assert_eq!(seen, 41);
        println!("per-file sum {sum} (ref 32.6639673005549)");
        assert!((sum - 32.6639673005549).abs() < 1e-9);
    }

    #[test]
    fn null_and_perfect_detectors_normalize_to_0_and_100() {
        let r = reference();
        let null = synthetic(&r, |_, _| 0.5);
        let perfect = synthetic(&r, |i, w| {
            if w.iter().any(|&(s, _)| s == i) {
                1.0
            } else {
                0.0
            }
        });
        for p in score_files("null", &null, &r.profiles).profiles {
            assert_eq!(p.threshold, NO_DETECTION_THRESHOLD);
            assert_eq!(p.normalized, 0.0, "null {}", p.profile.name);
        }
        for p in score_files("perfect", &perfect, &r.profiles).profiles {
            assert_eq!(p.threshold, 1.0);
            assert_eq!(p.normalized, 100.0, "perfect {}", p.profile.name);
        }
    }

    #[test]
    fn sigmoid_shape() {
        let s = scaled_sigmoid(-1.0);
        assert!((s - 0.986_614_298_151_430_3).abs() < 1e-12, "{s}");
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert_eq!(scaled_sigmoid(3.000_001), -1.0);
        assert!((scaled_sigmoid(3.0) + 1.0).abs() < 1e-6 && scaled_sigmoid(3.0) > -1.0);
        // 20-row window at rows 40..=59 in a 100-row file (probation 15).
        let p = standard();
        let one = |row: usize| {
            let mut scores = vec![0.0; 100];
            scores[row] = 1.0;
            let f = FileInput::new("t", 100, vec![(40, 59)], scores).expect("input");
            score_file(&f, 1.0, &p)
        };
        assert_eq!(one(40).score, 1.0); // left edge: full A_TP
        assert!(
            one(59).score > 0.0 && one(59).score < 0.13,
            "{}",
            one(59).score
        ); // right edge ≈ 0
        assert!((one(50).score - scaled_sigmoid(-0.5) / s).abs() < 1e-12);
        assert_eq!((one(40).tp, one(40).fn_, one(40).fp), (1, 19, 0));
    }

    #[test]
    fn false_positive_costs_and_earliest_detection() {
        let p = standard();
        // Windows (20, 29) and (60, 69) in a 200-row file (probation 30). Window terms: -1 each when missed.
        let score = |rows: &[usize]| {
            let mut scores = vec![0.0; 200];
            for &r in rows {
                scores[r] = 1.0;
            }
            score_file(
                &FileInput::new("t", 200, vec![(20, 29), (60, 69)], scores).expect("input"),
                0.5,
                &p,
            )
        };
        let base = -2.0;
        let just_after = score(&[70]).score - base;
        assert!(just_after < 0.0 && just_after > -0.11 * 0.3, "{just_after}");
        let far = score(&[199]).score - base;
        assert!((far + 0.11).abs() < 1e-12, "{far}");
        // Window 1 lies in probation; a FP after it uses it as previous window: y = (31-29)/9.
        let near_probation = score(&[31]).score - base;
        assert!((near_probation - 0.11 * scaled_sigmoid(2.0 / 9.0)).abs() < 1e-12);
        // Later detections in a window add nothing; the earliest counts.
        let early = score(&[60]).score;
        assert_eq!(score(&[60, 61, 65]).score, early);
        assert_eq!(score(&[60, 61, 65]).tp, 3);
        // Rows in probation are neither scored nor counted.
        let s = score(&[0, 5, 29]);
        assert_eq!(s.score, base);
        assert_eq!(s.tp + s.tn + s.fp + s.fn_, 200 - probation_rows(200));
        // No previous window: full cost.
        let f =
            FileInput::new("t", 100, vec![], [vec![0.0; 99], vec![1.0]].concat()).expect("input");
        assert_eq!(score_file(&f, 1.0, &p).score, -0.11);
    }

    #[test]
    fn probation_rule() {
        assert_eq!(probation_rows(100), 15);
        assert_eq!(probation_rows(4032), 604);
        assert_eq!(probation_rows(10_000), 750);
        // A detection inside probation is ignored by the optimizer too.
        let mut scores = vec![0.0; 100];
        scores[3] = 0.9;
        let f = FileInput::new("t", 100, vec![], scores).expect("input");
        assert_eq!(
            optimize_threshold(std::slice::from_ref(&f), &standard()),
            (NO_DETECTION_THRESHOLD, 0.0)
        );
    }

    #[test]
    fn optimizer_ties_keep_higher_threshold() {
        // Window (50, 59): detecting at row 50 with 0.9, a later row at 0.8 adds nothing → 0.9 kept.
        let mut scores = vec![0.0; 100];
        scores[50] = 0.9;
        scores[55] = 0.8;
        let f = FileInput::new("t", 100, vec![(50, 59)], scores).expect("input");
        assert_eq!(
            optimize_threshold(std::slice::from_ref(&f), &standard()),
            (0.9, 1.0)
        );
    }

    #[test]
    fn timestamps_and_windows_map_to_rows() {
        let ts: Vec<String> = (0..6)
            .map(|m| format!("2014-04-10 07:{:02}:00", m * 5))
            .collect();
        let w = vec![(
            "2014-04-10 07:05:00.000000".to_string(),
            "2014-04-10 07:15:00.000000".to_string(),
        )];
        assert_eq!(window_rows(&ts, &w).expect("rows"), vec![(1, 3)]);
        let missing = vec![(
            "2015-01-01 00:00:00".to_string(),
            "2015-01-02 00:00:00".to_string(),
        )];
        assert!(matches!(
            window_rows(&ts, &missing),
            Err(NabError::Window { .. })
        ));
        assert!(parse_timestamp("2014-04-10 07:15:00.5") > parse_timestamp("2014-04-10 07:15:00"));
        assert!(parse_timestamp("2014-13-10 07:15:00").is_none());
        // The real windows land on data rows whose timestamps equal the window bounds.
        let dir = nab_dir();
        let raw =
            load_window_timestamps(&dir.join("labels/combined_windows.json")).expect("windows");
        let rows = load_windows(&dir.join("labels/combined_windows.json"), &dir.join("data"))
            .expect("rows");
        for (key, windows) in &raw {
            let data = read_data_timestamps(&dir.join("data").join(key)).expect("data");
            for ((s, e), &(rs, re)) in windows.iter().zip(&rows[key]) {
                assert_eq!(parse_timestamp(&data[rs]), parse_timestamp(s), "{key}");
                assert_eq!(parse_timestamp(&data[re]), parse_timestamp(e), "{key}");
            }
        }
    }

    #[test]
    fn results_csv_validation() {
        let dir = std::env::temp_dir().join(format!("nab-csv-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp dir");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).expect("write");
            p
        };
        let ok = write(
            "ok.csv",
            "timestamp,value,anomaly_score,label\nt1,5,0.25,0\nt2,6,1.0,0\n",
        );
        assert_eq!(
            read_anomaly_scores(&ok, 2).expect("scores"),
            vec![0.25, 1.0]
        );
        let err = read_anomaly_scores(&ok, 3).expect_err("row count");
        assert!(matches!(
            err,
            NabError::RowCount {
                expected: 3,
                found: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("ok.csv"), "{err}");
        let no_col = write("nocol.csv", "timestamp,value\nt1,5\n");
        assert!(matches!(
            read_anomaly_scores(&no_col, 1),
            Err(NabError::Csv { line: 1, .. })
        ));
        let bad_header = write("hdr.csv", "value,timestamp,anomaly_score\n1,t1,0.5\n");
        assert!(matches!(
            read_anomaly_scores(&bad_header, 1),
            Err(NabError::Csv { .. })
        ));
        let bad_value = write("val.csv", "timestamp,anomaly_score\nt1,abc\n");
        assert!(matches!(
            read_anomaly_scores(&bad_value, 1),
            Err(NabError::Csv { line: 2, .. })
        ));
        assert!(matches!(
            read_anomaly_scores(&dir.join("missing.csv"), 1),
            Err(NabError::Io { .. })
        ));
        assert!(FileInput::new("x", 1, vec![], vec![1.5]).is_err());
        assert!(FileInput::new("x", 10, vec![(2, 5), (5, 7)], vec![0.0; 10]).is_err());
        assert!(load_corpus(&dir, "bad_name", &dir, &BTreeMap::new()).is_err());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
