//! Puts scores and explanations onto records: the `anomaly` object of an
//! Elasticsearch document (`anomaly.score`, `anomaly.severity`,
//! `anomaly.explanation`).

use crate::detect::Verdict;
use crate::export::document::{json_f64, json_str};

/// Appends `"anomaly":{"score":…,"severity":…,"explanation":…}`.
pub fn write_anomaly_json(out: &mut Vec<u8>, v: &Verdict, subject: &str) {
    out.extend_from_slice(b"\"anomaly\":{\"score\":");
    // Two decimals are plenty for a 0–100 score and keep documents small.
    json_f64(out, (v.score as f64 * 100.0).round() / 100.0);
    out.extend_from_slice(b",\"severity\":");
    json_str(out, v.severity.as_str());
    out.extend_from_slice(b",\"explanation\":");
    let mut text = String::with_capacity(96);
    v.explanation.render(subject, &mut text);
    json_str(out, &text);
    out.push(b'}');
}

/// Appends the `anomaly` object of a record the detector could not score.
pub fn write_not_scored_json(out: &mut Vec<u8>, why: &str) {
    out.extend_from_slice(b"\"anomaly\":{\"score\":0,\"severity\":\"normal\",\"explanation\":");
    json_str(out, &format!("not scored: {why}"));
    out.push(b'}');
}
