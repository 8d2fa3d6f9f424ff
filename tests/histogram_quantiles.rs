//! End to end: a real sidecar receives an OTLP cumulative histogram whose
//! p99 jumps while its mean stays within its usual range; the point's
//! document carries an anomaly on the p99 series.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use otel_anomaly::detect::ANOMALOUS_SCORE;
use prost::Message;

const BOUNDS: [f64; 7] = [25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];
const START_NS: u64 = 1_800_000_000_000_000_000;
const STEP_NS: u64 = 10_000_000_000;
const NORMAL_POINTS: u64 = 60;

fn request(time_ns: u64, counts: &[u64], sum: f64) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "http.server.duration".into(),
                    unit: "ms".into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        aggregation_temporality: 2,
                        data_points: vec![HistogramDataPoint {
                            start_time_unix_nano: START_NS,
                            time_unix_nano: time_ns,
                            count: counts.iter().sum(),
                            sum: Some(sum),
                            bucket_counts: counts.to_vec(),
                            explicit_bounds: BOUNDS.to_vec(),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Metric documents with an anomaly verdict the sidecar wrote.
fn metric_docs(dir: &Path) -> Vec<serde_json::Value> {
    ndjson_docs(dir, "metrics-")
        .into_iter()
        .filter(|v| v.get("anomaly").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p99_jump_is_an_anomaly_on_the_quantile_series_while_the_mean_barely_moves() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(base_config(dir.path())).await;

    // Each 10 s interval: 1,000 requests, ~60% in (25, 50] ms, the rest in
    // (50, 100] with a few in (100, 250]; the mean wanders between ~55 and
    // ~65 ms with the traffic mix.
    let mut cum = [0u64; 8];
    let mut sum = 0.0;
    let mut means = Vec::new();
    for i in 0..=NORMAL_POINTS {
        let jump = i == NORMAL_POINTS;
        let wobble = i % 5;
        let mut new = [0u64; 8];
        new[1] = 600 + 10 * wobble;
        new[2] = 392 - 10 * wobble + (i % 3);
        new[3] = 8 - (i % 3);
        // Interval mean from the traffic mix: 55–65 ms.
        let mut mean = 55.0 + 2.5 * wobble as f64;
        if jump {
            // 15 requests become 1–2.5 s slow; the rest got a little faster
            // (they no longer wait behind them), so the mean stays in range.
            new[2] -= 15;
            new[6] = 15;
            mean = 60.0;
        }
        means.push(mean);
        for (c, n) in cum.iter_mut().zip(new) {
            *c += n;
        }
        sum += mean * new.iter().sum::<u64>() as f64;
        let req = request(START_NS + i * STEP_NS, &cum, sum);
        let resp = sidecar
            .post(
                "/v1/metrics",
                "application/x-protobuf",
                None,
                req.encode_to_vec(),
            )
            .await;
        assert_eq!(resp.status(), 200, "point {i} accepted");
    }
    // The jump interval's mean is inside the range the normal ones covered.
    let normal = &means[..NORMAL_POINTS as usize];
    let (lo, hi) = normal
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &m| (a.min(m), b.max(m)));
    let last = *means.last().unwrap();
    assert!(lo <= last && last <= hi, "{last} outside {lo}..{hi}");

    let mut docs = Vec::new();
    eventually(
        "every metric point is written",
        Duration::from_secs(30),
        || {
            docs = metric_docs(dir.path());
            let n = docs.len();
            async move { n as u64 > NORMAL_POINTS }
        },
    )
    .await;
    docs.sort_by_key(|d| d["@timestamp"].as_str().unwrap_or_default().to_string());
    let (normal_docs, jump) = docs.split_at(docs.len() - 1);
    let jump = &jump[0];
    let score = jump["anomaly"]["score"].as_f64().unwrap();
    let explanation = jump["anomaly"]["explanation"].as_str().unwrap_or_default();
    assert!(
        score >= f64::from(ANOMALOUS_SCORE),
        "p99 jump scored {score}: {jump}"
    );
    assert!(explanation.contains("p99"), "{explanation}");
    // No normal point after the cold start was anomalous, on any of its series.
    for d in normal_docs {
        let s = d["anomaly"]["score"].as_f64().unwrap_or(0.0);
        assert!(s < f64::from(ANOMALOUS_SCORE), "normal point alerted: {d}");
    }
    sidecar.shutdown().await;
}
