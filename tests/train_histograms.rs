//! `train` rebuilds a histogram's quantile series: 15 minutes of cumulative
//! histogram history (documents encoded by the sidecar's own pipeline) on a
//! real Elasticsearch-compatible server started here on loopback; the model
//! holds the p50 / p95 / p99 series and the bucket memory under the live
//! path's keys, and a sidecar warm-started from it flags a p99 jump (the
//! mean staying in its range) in its first points, where a cold one cannot.

mod common;
#[path = "common/es_server.rs"]
mod es_server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use common::*;
use es_server::EsServer;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_anomaly::config::{self, FlagOverrides};
use otel_anomaly::detect::histogram::{derived_series_key, BUCKET_STATE_SUFFIX, QUANTILES};
use otel_anomaly::detect::keys::{key_hash, MapSnapshot};
use otel_anomaly::detect::metric::SeriesState;
use otel_anomaly::detect::{snapshot, ANOMALOUS_SCORE};
use otel_anomaly::export::document::{attributes, encode_resource};
use otel_anomaly::export::stream_name;
use otel_anomaly::pipeline::process::Processor;
use otel_anomaly::pipeline::{AnomalyFeed, Payload};
use otel_anomaly::telemetry::{Metrics, Signal};
use otel_anomaly::train::job::{self, TargetOverrides};
use prost::Message;

const S: u64 = 1_000_000_000;
const STEP: u64 = 10 * S;
const HISTORY_POINTS: u64 = 90;
const NAME: &str = "http.server.duration";
const BOUNDS: [f64; 7] = [25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// Attributes in sorted order: noida-db returns `_source` objects with sorted
/// keys (docs/train.md, "Keys"); the unsorted case is covered on
/// osmem-server by tests/train.rs.
fn resource() -> Resource {
    Resource {
        attributes: vec![
            kv("deployment.environment", "prod"),
            kv("service.name", "checkout"),
        ],
        ..Default::default()
    }
}

/// One cumulative stream: each 10 s, 1,000 requests mostly in (25, 100] ms;
/// the jump interval moves 15 of them to (1000, 2500] ms while the others
/// get a little faster, so the interval mean stays inside its usual range.
struct Stream {
    start_ns: u64,
    cum: [u64; 8],
    sum: f64,
}

impl Stream {
    fn point(&mut self, i: u64, time_ns: u64, jump: bool) -> ExportMetricsServiceRequest {
        let wobble = i % 5;
        let mut new = [0u64; 8];
        new[1] = 600 + 10 * wobble;
        new[2] = 392 - 10 * wobble + (i % 3);
        new[3] = 8 - (i % 3);
        let mut mean = 55.0 + 2.5 * wobble as f64;
        if jump {
            new[2] -= 15;
            new[6] = 15;
            mean = 60.0;
        }
        for (c, n) in self.cum.iter_mut().zip(new) {
            *c += n;
        }
        self.sum += mean * new.iter().sum::<u64>() as f64;
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource()),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: NAME.into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            aggregation_temporality: 2,
                            data_points: vec![HistogramDataPoint {
                                attributes: vec![kv("http.route", "/pay")],
                                start_time_unix_nano: self.start_ns,
                                time_unix_nano: time_ns,
                                count: self.cum.iter().sum(),
                                sum: Some(self.sum),
                                bucket_counts: self.cum.to_vec(),
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
}

/// Metric documents with an anomaly verdict the sidecar wrote, by time.
fn metric_docs(dir: &Path) -> Vec<serde_json::Value> {
    let mut out: Vec<_> = ndjson_docs(dir, "metrics-")
        .into_iter()
        .filter(|v| v.get("anomaly").is_some())
        .collect();
    out.sort_by_key(|d| d["@timestamp"].as_str().unwrap_or_default().to_string());
    out
}

/// Sends four live points continuing `stream` (the last one the p99 jump)
/// to a sidecar of `prod` (warm-started from `model` if given) and returns
/// the jump point's (score, explanation) and the normal points' scores.
async fn live(model: Option<&Path>, mut stream: Stream, from_ns: u64) -> ((f64, String), Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = base_config(dir.path());
    cfg.settings.environment = "prod".into();
    cfg.settings.detect.model = model.map(Path::to_path_buf);
    let sc = Sidecar::start(cfg).await;
    for i in 0..4u64 {
        let req = stream.point(HISTORY_POINTS + i, from_ns + i * STEP, i == 3);
        let resp = sc
            .post(
                "/v1/metrics",
                "application/x-protobuf",
                None,
                req.encode_to_vec(),
            )
            .await;
        assert_eq!(resp.status(), 200, "point {i} accepted");
    }
    eventually("four metric documents written", WAIT, || {
        let n = metric_docs(dir.path()).len();
        async move { n >= 4 }
    })
    .await;
    sc.shutdown().await;
    let docs = metric_docs(dir.path());
    assert_eq!(docs.len(), 4);
    let score = |d: &serde_json::Value| d["anomaly"]["score"].as_f64().unwrap_or(-1.0);
    let jump = &docs[3];
    let explanation = jump["anomaly"]["explanation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (
        (score(jump), explanation),
        docs[..3].iter().map(score).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trained_on_histogram_history_flags_a_p99_jump_a_cold_sidecar_cannot() {
    let es = EsServer::noida();
    let http = reqwest::Client::new();
    let now = otel_anomaly::train::now_ns();
    let first = now - 2 * 60 * S - HISTORY_POINTS * STEP;
    let mut stream = Stream {
        start_ns: first - STEP,
        cum: [0; 8],
        sum: 0.0,
    };
    let p = Processor::new(
        &config::Settings {
            environment: "prod".into(),
            ..Default::default()
        },
        "otel",
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    );
    let index = stream_name(Signal::metrics, "otel", "prod");
    let mut docs = Vec::new();
    for i in 0..HISTORY_POINTS {
        let req = stream.point(i, first + i * STEP, false);
        for d in p.process(Payload::Metrics(req)) {
            docs.push((index.clone(), d.source));
        }
    }
    assert_eq!(docs.len() as u64, HISTORY_POINTS);
    es.bulk(&http, &docs).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.snap");
    let mut flags = FlagOverrides::default();
    flags.set("environment", Some("prod"));
    flags.set("train.since", Some("1h"));
    flags.set("train.out", Some(model.display()));
    flags.set("data_dir", Some(dir.path().display()));
    let cfg = config::resolve(None, &BTreeMap::new(), &flags).expect("train config");
    let target = TargetOverrides {
        url: Some(es.url.clone()),
        ..Default::default()
    };
    let summary = job::train(&cfg, &target, false)
        .await
        .expect("train succeeds");
    assert_eq!(summary.total(), HISTORY_POINTS, "{summary}");

    // The model holds the live path's series: mean, p50 / p95 / p99 and the
    // bucket memory of the cumulative stream.
    let mut a = Vec::new();
    attributes(&mut a, &[kv("http.route", "/pay")]);
    let series = key_hash(&[&encode_resource(Some(&resource()), ""), NAME.as_bytes(), &a]);
    let body = snapshot::decode(&std::fs::read(&model).expect("model"), Some("prod"))
        .expect("model decodes");
    let mut keys = BTreeSet::new();
    for shard in &body.metrics {
        let m: MapSnapshot<SeriesState> = snapshot::decode_map(shard).expect("metric shard");
        keys.extend(m.entries.iter().map(|e| e.0));
    }
    let mut want: BTreeSet<u64> = QUANTILES
        .iter()
        .map(|(_, what)| derived_series_key(series, what))
        .collect();
    want.insert(series);
    want.insert(derived_series_key(series, BUCKET_STATE_SUFFIX));
    assert_eq!(keys, want, "the model's series are the live path's");

    let from = first + HISTORY_POINTS * STEP;
    let resume = |s: &Stream| Stream {
        start_ns: s.start_ns,
        cum: s.cum,
        sum: s.sum,
    };
    let ((warm, warm_why), warm_normal) = live(Some(&model), resume(&stream), from).await;
    let ((cold, cold_why), _) = live(None, resume(&stream), from).await;
    let anomalous = f64::from(ANOMALOUS_SCORE);
    assert!(
        warm >= anomalous,
        "warm sidecar missed the p99 jump: {warm} {warm_why}"
    );
    assert!(warm_why.contains("p99"), "{warm_why}");
    for s in warm_normal {
        assert!(
            s < anomalous,
            "warm sidecar alerted on a normal point ({s})"
        );
    }
    assert!(
        cold < anomalous,
        "a cold sidecar cannot judge its fourth point: {cold} {cold_why}"
    );
}
