//! `replay otlp`: score a recorded OTLP capture offline and list the anomaly
//! events, exactly as the sidecar would have judged the traffic live.
//!
//! The capture is NDJSON with one OTLP/JSON export request per line (the
//! format of the OpenTelemetry Collector's `file` exporter): traces
//! (`resourceSpans`), metrics (`resourceMetrics`) or logs (`resourceLogs`).
//! Every request goes through the sidecar's own processor (the same
//! detectors, key sharding and encoding); the clock is the data's own, so
//! intervals are closed by the spans' end times, and keys that go quiet are
//! judged as the sidecar's tick would.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::config::Settings;
use crate::detect::interval::AnomalyEvent;
use crate::pipeline::process::Processor;
use crate::pipeline::{AnomalyFeed, Payload};
use crate::receiver::decode::{decode, Format};
use crate::telemetry::Metrics;

/// Why a capture could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A line is not an OTLP/JSON request.
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct OtlpReport {
    /// Requests read.
    pub requests: usize,
    /// Records scored (spans, points, log records).
    pub records: usize,
    /// Records that scored 50 or more.
    pub anomalous_records: u64,
    /// Anomaly events, in the order they were made.
    pub events: Vec<AnomalyEvent>,
}

/// Replays the capture at `path` with the detector settings of `settings`.
pub fn replay(path: &Path, settings: &Settings) -> Result<OtlpReport, ReplayError> {
    let file = std::fs::File::open(path).map_err(|source| ReplayError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let feed = Arc::new(AnomalyFeed::default());
    let metrics = Arc::new(Metrics::default());
    let processor = Processor::new(settings, "otel", metrics.clone(), feed.clone());
    let interval_ns = settings.detect.spans.interval.as_nanos() as u64;
    let mut report = OtlpReport::default();
    let mut latest_ns = 0u64;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ReplayError::Line {
            path: path.display().to_string(),
            line: i + 1,
            message,
        };
        let payload = parse_line(&line).map_err(bad)?;
        if let Payload::Traces(req) = &payload {
            for s in req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                latest_ns = latest_ns.max(s.end_time_unix_nano);
            }
        }
        report.requests += 1;
        report.records += processor.process(payload).len();
        // Keys that went quiet are judged one interval after their end, as live.
        if latest_ns > interval_ns {
            processor.tick(latest_ns - interval_ns);
        }
    }
    // The end of the capture: close what is still open.
    if latest_ns > 0 {
        processor.tick(latest_ns + interval_ns);
    }
    // One guard at a time: a Family guard held while creating another label set deadlocks.
    for signal in [
        crate::telemetry::Signal::traces,
        crate::telemetry::Signal::metrics,
        crate::telemetry::Signal::logs,
    ] {
        let n = metrics
            .anomalous
            .get_or_create(&crate::telemetry::SignalLabels { signal })
            .get();
        report.anomalous_records += n;
    }
    report.events = feed.events_since(UNIX_EPOCH);
    Ok(report)
}

fn parse_line(line: &str) -> Result<Payload, String> {
    let probe: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let has = |k: &str| probe.get(k).is_some();
    let bytes = line.as_bytes();
    let err = |e: crate::receiver::decode::DecodeError| e.to_string();
    if has("resourceSpans") {
        decode::<ExportTraceServiceRequest>(bytes, Format::Json)
            .map(Payload::Traces)
            .map_err(err)
    } else if has("resourceMetrics") {
        decode::<ExportMetricsServiceRequest>(bytes, Format::Json)
            .map(Payload::Metrics)
            .map_err(err)
    } else if has("resourceLogs") {
        decode::<ExportLogsServiceRequest>(bytes, Format::Json)
            .map(Payload::Logs)
            .map_err(err)
    } else {
        Err(
            "not an OTLP/JSON export request (no resourceSpans, resourceMetrics or resourceLogs)"
                .into(),
        )
    }
}

/// The events as a human-readable table.
pub fn render(report: &OtlpReport) -> String {
    let mut out = format!(
        "{} requests, {} records scored, {} scored 50 or more, {} anomaly events\n",
        report.requests,
        report.records,
        report.anomalous_records,
        report.events.len()
    );
    for e in &report.events {
        let status = match e.status {
            crate::detect::interval::EventStatus::Opened => "opened",
            crate::detect::interval::EventStatus::Updated => "updated",
            crate::detect::interval::EventStatus::Closed => "closed",
        };
        let at = e.end_ns.unwrap_or(e.start_ns);
        out.push_str(&format!(
            "{} {:<7} {:>3.0} {:<8} {} / {} {}: {}\n",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_nanos(at)),
            status,
            e.score,
            e.severity.as_str(),
            e.service,
            e.name,
            e.signal.as_str(),
            e.explanation
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    /// One OTLP/JSON traces request of `n` spans of `name`, ending at `t`.
    fn request(t: u64, n: u64, name: &str, dur_ms: impl Fn(u64) -> u64, seq: &mut u64) -> String {
        let spans: Vec<serde_json::Value> = (0..n)
            .map(|j| {
                *seq += 1;
                let end = t + j * (S / n.max(1));
                serde_json::json!({
                    "traceId": format!("{:032x}", *seq),
                    "spanId": format!("{:016x}", *seq),
                    "name": name,
                    "kind": 2,
                    "startTimeUnixNano": (end - dur_ms(*seq) * MS).to_string(),
                    "endTimeUnixNano": end.to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cart"}}]},
                "scopeSpans": [{"spans": spans}]
            }]
        })
        .to_string()
    }

    #[test]
    fn a_capture_with_a_latency_fault_gives_one_event_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("capture.ndjson");
        let mut f = std::fs::File::create(&path).expect("create");
        let t0 = 1_700_000_000 * S;
        let mut seq = 0;
        // 20 minutes of 20 spans/s around 40 ms, then 2 minutes at ~200 ms, then normal again.
        for s in 0..1_500u64 {
            let slow = (1_200..1_320).contains(&s);
            let line = request(
                t0 + s * S,
                20,
                "GET /cart",
                |i| if slow { 180 + i % 40 } else { 30 + i % 20 },
                &mut seq,
            );
            writeln!(f, "{line}").expect("write");
        }
        drop(f);
        let report = replay(&path, &Settings::default()).expect("replays");
        assert_eq!(report.requests, 1_500);
        assert_eq!(report.records, 30_000);
        let opened: Vec<_> = report
            .events
            .iter()
            .filter(|e| e.status == crate::detect::interval::EventStatus::Opened)
            .collect();
        assert_eq!(opened.len(), 1, "{}", render(&report));
        assert_eq!(opened[0].name, "GET /cart");
        assert_eq!(opened[0].service, "cart");
        let fault_start = t0 + 1_200 * S;
        assert!(
            opened[0].start_ns >= fault_start - 10 * S
                && opened[0].start_ns <= fault_start + 10 * S
        );
        assert!(report
            .events
            .iter()
            .any(|e| e.status == crate::detect::interval::EventStatus::Closed));
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("capture.ndjson");
        std::fs::write(&path, "{\"resourceSpans\": []}\n{\"hello\": 1}\n").expect("write");
        let e = replay(&path, &Settings::default()).unwrap_err().to_string();
        assert!(e.ends_with(":2: not an OTLP/JSON export request (no resourceSpans, resourceMetrics or resourceLogs)"), "{e}");
        let e = replay(&dir.path().join("missing"), &Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
