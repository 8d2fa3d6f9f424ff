//! `train` against real Elasticsearch-compatible servers started here on
//! loopback: two weeks of synthetic history for two environments (daily
//! seasonality, one known incident window) are written with the bulk API in
//! exactly the sidecar's document format (encoded by the sidecar's own
//! pipeline), then `train` reads one environment back. Shown: a sidecar
//! warm-started from the model flags an injected fault in its first minute
//! where a cold one cannot; the excluded incident did not become baseline
//! (the model trained without the exclusion has learned it and stays
//! quiet); the other environment was not read; the keys read back from
//! Elasticsearch are the live path's keys (point in time on noida-db,
//! scroll on osmem-server).

mod common;
#[path = "common/es_server.rs"]
mod es_server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use es_server::EsServer;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use otel_anomaly::config::{self, Config, FlagOverrides};
use otel_anomaly::detect::keys::MapSnapshot;
use otel_anomaly::detect::metric::SeriesState;
use otel_anomaly::detect::snapshot;
use otel_anomaly::detect::span::{SpanKeyState, SpanObs};
use otel_anomaly::export::stream_name;
use otel_anomaly::pipeline::process::Processor;
use otel_anomaly::pipeline::{AnomalyFeed, Payload};
use otel_anomaly::telemetry::{Metrics, Signal};
use otel_anomaly::train::job::{self, TargetOverrides};
use otel_anomaly::train::reader::Paging;

const S: u64 = 1_000_000_000;
const MIN: u64 = 60 * S;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
const DATASET: &str = "otel";

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// Resource attributes deliberately not in alphabetical order: the series
/// key depends on their order, so reading them back must keep it.
fn resource(service: &str, env: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", service),
            kv("host.name", "node-1"),
            kv("deployment.environment", env),
        ],
        ..Default::default()
    }
}

/// Latency of the synthetic service at `t`: 40 ms, ±10 % over the day.
/// (The span baseline has a 10-minute half-life: the excluded two hours
/// separate the learned baseline from the live spans, and a steeper daily
/// swing would move the live latency by more than the jitter at some hours
/// of the day. The gauge carries the larger daily swing.)
fn base_ms(t_ns: u64) -> f64 {
    let hour = (t_ns % DAY) as f64 / HOUR as f64;
    40.0 * (1.0 + 0.1 * (std::f64::consts::TAU * hour / 24.0).sin())
}

/// Deterministic jitter in [0.9, 1.1).
fn jitter(i: u64) -> f64 {
    0.9 + (i.wrapping_mul(2_654_435_761) % 1000) as f64 / 5000.0
}

/// How much history, and where its incident is.
struct History {
    env: &'static str,
    end_ns: u64,
    /// Latency factor of this environment (staging is slower).
    factor: f64,
    /// [start, end) of the incident (8× latency, some errors).
    incident: Option<(u64, u64)>,
    /// A span name only this environment has.
    own_span: &'static str,
}

const INCIDENT_FACTOR: f64 = 8.0;

/// Seeded documents of one environment: (index, source) and their times.
struct Seeded {
    docs: Vec<(String, bytes::Bytes)>,
    times: Vec<u64>,
    processor: Processor,
}

fn span_at(i: u64, start: u64, dur_ms: f64, name: &str, error: bool) -> Span {
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&i.to_be_bytes());
    trace[15] = 1;
    let mut id = [0u8; 8];
    id.copy_from_slice(&(i + 1).to_be_bytes());
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_vec(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + (dur_ms * 1e6) as u64,
        status: error.then(|| Status {
            code: status::StatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn processor(env: &str) -> Processor {
    let settings = config::Settings {
        environment: env.into(),
        ..Default::default()
    };
    Processor::new(
        &settings,
        DATASET,
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    )
}

/// Two weeks: a span every 5 min, and one every 3 s over the last 3 hours;
/// a gauge point every 10 min; a log record every 20 min.
fn seed(h: &History) -> Seeded {
    let p = processor(h.env);
    let start = h.end_ns - 14 * DAY;
    let dense_from = h.end_ns - 3 * HOUR;
    let mut docs = Vec::new();
    let mut times = Vec::new();
    let index = |s: Signal| stream_name(s, DATASET, h.env);
    let in_incident = |t: u64| h.incident.is_some_and(|(a, b)| t >= a && t < b);

    let mut spans = Vec::new();
    let mut t = start;
    let mut i = 0u64;
    while t < h.end_ns {
        let mut ms = base_ms(t) * jitter(i) * h.factor;
        let mut error = false;
        if in_incident(t) {
            ms *= INCIDENT_FACTOR;
            error = i.is_multiple_of(5);
        }
        let name = if i.is_multiple_of(50) {
            h.own_span
        } else {
            "GET /cart"
        };
        spans.push(span_at(i, t, ms, name, error));
        times.push(t);
        i += 1;
        t += if t >= dense_from { 3 * S } else { 5 * MIN };
    }
    for chunk in spans.chunks(500) {
        let req = checkout_request(h.env, chunk.to_vec());
        for d in p.process(Payload::Traces(req)) {
            docs.push((index(Signal::traces), d.source));
        }
    }

    let mut points = Vec::new();
    let mut t = start;
    while t < h.end_ns {
        let hour = (t % DAY) as f64 / HOUR as f64;
        let v = 100.0 * (1.0 + 0.5 * (std::f64::consts::TAU * hour / 24.0).sin());
        points.push(NumberDataPoint {
            attributes: vec![kv("queue", "orders"), kv("priority", "high")],
            time_unix_nano: t,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        });
        times.push(t);
        t += 10 * MIN;
    }
    for chunk in points.chunks(500) {
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource("checkout", h.env)),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "queue.depth".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: chunk.to_vec(),
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        for d in p.process(Payload::Metrics(req)) {
            docs.push((index(Signal::metrics), d.source));
        }
    }

    let mut logs = Vec::new();
    let mut t = start;
    let mut i = 0u64;
    while t < h.end_ns {
        logs.push(LogRecord {
            time_unix_nano: t,
            severity_number: if i.is_multiple_of(7) { 17 } else { 9 },
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("line {i}"))),
            }),
            ..Default::default()
        });
        times.push(t);
        i += 1;
        t += 20 * MIN;
    }
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource("checkout", h.env)),
            scope_logs: vec![ScopeLogs {
                log_records: logs,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    for d in p.process(Payload::Logs(req)) {
        docs.push((index(Signal::logs), d.source));
    }
    assert_eq!(docs.len(), times.len());
    Seeded {
        docs,
        times,
        processor: p,
    }
}

/// The `train` configuration for `env`, reading `url`.
fn train_config(dir: &Path, env: &str, out: &Path, exclude: Option<&Path>) -> Config {
    let mut flags = FlagOverrides::default();
    flags.set("environment", Some(env));
    flags.set("train.since", Some("15d"));
    flags.set("train.page_size", Some(1000));
    flags.set("train.out", Some(out.display()));
    flags.set("train.exclude_file", exclude.map(|p| p.display()));
    flags.set("data_dir", Some(dir.display()));
    config::resolve(None, &BTreeMap::new(), &flags).expect("train config")
}

fn to(url: &str) -> TargetOverrides {
    TargetOverrides {
        url: Some(url.to_string()),
        ..Default::default()
    }
}

fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// (span keys, metric series keys) in a snapshot file's bytes.
fn keys_of(bytes: &[u8], env: &str) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let body = snapshot::decode(bytes, Some(env)).expect("model decodes");
    let mut spans = BTreeSet::new();
    for shard in &body.spans {
        let m: MapSnapshot<SpanKeyState> = snapshot::decode_map(shard).expect("span shard");
        spans.extend(m.entries.iter().map(|e| e.0));
    }
    let mut series = BTreeSet::new();
    for shard in &body.metrics {
        let m: MapSnapshot<SeriesState> = snapshot::decode_map(shard).expect("metric shard");
        series.extend(m.entries.iter().map(|e| e.0));
    }
    (spans, series)
}

fn span_key(service: &str, name: &str) -> u64 {
    SpanObs {
        service,
        name,
        kind: 2,
        end_ns: 0,
        duration_ns: 0,
        is_error: false,
        trace_id: &[],
    }
    .key()
}

/// One OTLP trace request: `spans` of service `checkout` in environment `env`.
fn checkout_request(env: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource("checkout", env)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends `spans` of `checkout` in `prod` to the sidecar writing to `dir`,
/// waits until `n` span documents are written, stops the sidecar and
/// returns every span document.
async fn send_and_stop(
    sc: Sidecar,
    dir: &Path,
    spans: Vec<Span>,
    n: usize,
) -> Vec<serde_json::Value> {
    let req = checkout_request("prod", spans);
    assert!(sc.post_traces(&req).await.status().is_success());
    eventually(&format!("{n} span documents written"), WAIT, || {
        let written = span_docs(dir).len();
        async move { written >= n }
    })
    .await;
    sc.shutdown().await;
    span_docs(dir)
}

/// Every span document the sidecar wrote, from its NDJSON files.
fn span_docs(dir: &Path) -> Vec<serde_json::Value> {
    ndjson_docs(dir, "traces-")
}

/// Starts a sidecar of environment `prod` (with `model` if given), sends 30
/// normal spans then 20 with 8× latency, and returns the scores of (normal, fault) spans.
async fn live_scores(model: Option<&Path>) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = base_config(dir.path());
    cfg.settings.environment = "prod".into();
    cfg.settings.detect.model = model.map(Path::to_path_buf);
    let sc = Sidecar::start(cfg).await;
    let now = otel_anomaly::train::now_ns();
    let spans: Vec<Span> = (0..50u64)
        .map(|i| {
            let t = now - 25 * S + i * 500_000_000;
            let fault = i >= 30;
            let ms = base_ms(t) * jitter(i + 7) * if fault { INCIDENT_FACTOR } else { 1.0 };
            span_at(1_000_000 + i, t, ms, "GET /cart", false)
        })
        .collect();
    let docs = send_and_stop(sc, dir.path(), spans, 50).await;
    let mut normal = Vec::new();
    let mut fault = Vec::new();
    for d in docs {
        let score = d["anomaly"]["score"].as_f64().unwrap_or(-1.0);
        let ms = d["duration"].as_f64().unwrap_or(0.0) / 1e6;
        if ms > 150.0 {
            fault.push(score);
        } else {
            normal.push(score);
        }
    }
    assert_eq!((normal.len(), fault.len()), (30, 20));
    (normal, fault)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trained_on_history_warm_starts_the_sidecar() {
    let es = EsServer::noida();
    let http = reqwest::Client::new();
    let end = otel_anomaly::train::now_ns() - 2 * MIN;
    let incident = (end - 130 * MIN, end - 10 * MIN);
    let prod = seed(&History {
        env: "prod",
        end_ns: end,
        factor: 1.0,
        incident: Some(incident),
        own_span: "GET /prod-only",
    });
    let staging = seed(&History {
        env: "staging",
        end_ns: end,
        factor: 5.0,
        incident: None,
        own_span: "GET /staging-only",
    });
    es.bulk(&http, &prod.docs).await;
    es.bulk(&http, &staging.docs).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let exclude = dir.path().join("incidents.txt");
    std::fs::write(
        &exclude,
        format!(
            "# known incidents of prod\n{} {} checkout slow (INC-1)\n",
            rfc3339(incident.0),
            rfc3339(incident.1)
        ),
    )
    .expect("write exclude file");
    let model = dir.path().join("prod.snap");
    let cfg = train_config(dir.path(), "prod", &model, Some(&exclude));
    let summary = job::train(&cfg, &to(&es.url), false)
        .await
        .expect("train succeeds");

    // (c) Exactly prod's documents were read: none of staging's.
    assert_eq!(summary.total(), prod.docs.len() as u64, "{summary}");
    let in_window = prod
        .times
        .iter()
        .filter(|t| **t >= incident.0 && **t < incident.1)
        .count() as u64;
    assert!(in_window > 1000, "the incident has data: {in_window}");
    assert_eq!(summary.excluded, in_window, "{summary}");
    assert!(summary
        .paging
        .iter()
        .all(|(_, p)| *p == Paging::PointInTime));
    let bytes = std::fs::read(&model).expect("model written");
    let (span_keys, series) = keys_of(&bytes, "prod");
    assert!(span_keys.contains(&span_key("checkout", "GET /cart")));
    assert!(span_keys.contains(&span_key("checkout", "GET /prod-only")));
    assert!(!span_keys.contains(&span_key("checkout", "GET /staging-only")));
    // The keys read back are the keys the live path made from the same OTLP.
    // (noida-db returns `_source` objects with sorted keys, so only the span
    // keys can be compared here; the series keys are compared on
    // osmem-server, which keeps them as indexed, as Elasticsearch does.)
    let live = prod.processor.detectors().snapshot("prod", 0);
    let (live_spans, live_series) = keys_of(&live, "prod");
    assert_eq!(span_keys, live_spans);
    assert_eq!(series.len(), live_series.len());

    // The same history without the exclusion: the 2-hour incident is learned.
    let learned = dir.path().join("prod-learned.snap");
    let cfg = train_config(dir.path(), "prod", &learned, None);
    let s2 = job::train(&cfg, &to(&es.url), false)
        .await
        .expect("train succeeds");
    assert_eq!(s2.excluded, 0);

    // (a) Warm from the model: the fault is flagged at once, normal spans are not.
    let (normal, fault) = live_scores(Some(&model)).await;
    assert!(max(&normal) < 50.0, "normal spans flagged: {normal:?}");
    let flagged = fault.iter().filter(|s| **s >= 50.0).count();
    assert!(flagged >= 15, "warm sidecar missed the fault: {fault:?}");
    // Cold: the same spans are all inside the cold start; nothing can be flagged.
    let (normal, fault) = live_scores(None).await;
    assert!(max(&normal).max(max(&fault)) < 50.0, "{normal:?} {fault:?}");
    // (b) With the incident learned as normal, the same fault passes: the
    // exclusion is what kept it out of the first model's baseline.
    let (_, fault) = live_scores(Some(&learned)).await;
    assert!(
        max(&fault) < 50.0,
        "a model that learned the incident should not flag it: {fault:?}"
    );

    // A model of another environment is refused by the sidecar.
    let staging_model = dir.path().join("staging.snap");
    let cfg = train_config(dir.path(), "staging", &staging_model, None);
    let s3 = job::train(&cfg, &to(&es.url), false)
        .await
        .expect("train staging");
    assert_eq!(s3.total(), staging.docs.len() as u64);
    let sdir = tempfile::tempdir().expect("tempdir");
    let mut cfg = base_config(sdir.path());
    cfg.settings.environment = "prod".into();
    cfg.settings.detect.model = Some(staging_model.clone());
    let err =
        match otel_anomaly::sidecar::start(cfg, tokio_util::sync::CancellationToken::new()).await {
            Ok(_) => panic!("a staging model must not start a prod sidecar"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains("\"staging\"") && err.contains("detect.model"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_read_back_with_scroll_match_the_live_path() {
    let es = EsServer::osmem();
    let http = reqwest::Client::new();
    let end = otel_anomaly::train::now_ns() - MIN;
    // A short history is enough for keys (osmem-server indexes slowly).
    let p = processor("prod");
    let mut docs = Vec::new();
    let mut spans = Vec::new();
    let mut points = Vec::new();
    for i in 0..120u64 {
        let t = end - HOUR + i * 30 * S;
        for (j, name) in ["GET /cart", "POST /pay", "GET /item/{id}"]
            .iter()
            .enumerate()
        {
            spans.push(span_at(
                i * 3 + j as u64,
                t,
                20.0 + j as f64,
                name,
                i % 9 == 0,
            ));
        }
        for q in ["orders", "refunds"] {
            points.push(NumberDataPoint {
                attributes: vec![kv("queue", q), kv("priority", "high"), kv("az", "b")],
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsInt(i as i64 % 17)),
                ..Default::default()
            });
        }
    }
    let treq = checkout_request("prod", spans);
    for d in p.process(Payload::Traces(treq)) {
        docs.push((stream_name(Signal::traces, DATASET, "prod"), d.source));
    }
    let mreq = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("cart", "prod")),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: points,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    for d in p.process(Payload::Metrics(mreq)) {
        docs.push((stream_name(Signal::metrics, DATASET, "prod"), d.source));
    }
    es.bulk(&http, &docs).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m.snap");
    let mut cfg = train_config(dir.path(), "prod", &model, None);
    cfg.settings.train.page_size = 100;
    let summary = job::train(&cfg, &to(&es.url), false)
        .await
        .expect("train succeeds");
    assert_eq!(summary.total(), docs.len() as u64, "{summary}");
    assert!(
        summary.paging.iter().all(|(_, p)| *p == Paging::Scroll),
        "osmem-server has no Elasticsearch point in time: {:?}",
        summary.paging
    );
    let (spans, series) = keys_of(&std::fs::read(&model).expect("model"), "prod");
    let (live_spans, live_series) = keys_of(&p.detectors().snapshot("prod", 0), "prod");
    assert_eq!(spans.len(), 3);
    assert_eq!(series.len(), 2);
    assert_eq!(spans, live_spans, "span keys differ from the live path's");
    assert_eq!(
        series, live_series,
        "series keys differ from the live path's"
    );
}

/// Runs the real binary's `train` and returns (exit code, stderr).
fn run_train(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otel-anomaly"))
        .arg("train")
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_missing_and_badly_mapped_indices_are_clear_errors() {
    let es = EsServer::noida();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.snap");
    let out_s = out.display().to_string();

    // Nothing at all for this environment.
    let (code, err) = run_train(&[
        "--es",
        &es.url,
        "--environment",
        "prod",
        "--since",
        "1d",
        "--out",
        &out_s,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no documents of environment \"prod\"")
            && err.contains("traces-otel-prod")
            && err.contains("--environment"),
        "{err}"
    );
    assert!(!out.exists(), "no model is written from nothing");

    // Documents, but all older than --since: empty as well.
    let old = processor("prod").process(Payload::Traces(checkout_request(
        "prod",
        vec![span_at(1, 1_600_000_000 * S, 10.0, "GET /", false)],
    )));
    let docs: Vec<_> = old
        .into_iter()
        .map(|d| (stream_name(Signal::traces, DATASET, "prod"), d.source))
        .collect();
    es.bulk(&http, &docs).await;
    let (code, err) = run_train(&[
        "--es",
        &es.url,
        "--environment",
        "prod",
        "--since",
        "1d",
        "--out",
        &out_s,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no documents"), "{err}");

    // An index whose duration is text: not the sidecar's documents.
    let r = http
        .put(format!("{}/traces-otel-dev", es.url))
        .json(&serde_json::json!({"mappings": {"properties": {
            "@timestamp": {"type": "date"}, "duration": {"type": "keyword"}}}}))
        .send()
        .await
        .expect("create index");
    assert!(r.status().is_success(), "{}", r.status());
    let (code, err) = run_train(&[
        "--es",
        &es.url,
        "--environment",
        "dev",
        "--since",
        "1d",
        "--out",
        &out_s,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("traces-otel-dev maps duration as keyword") && err.contains("expected long"),
        "{err}"
    );

    // A document the reader cannot use is named, not skipped silently.
    let now = otel_anomaly::train::now_ns();
    let bad = serde_json::json!({"@timestamp": rfc3339(now - MIN), "name": "GET /", "kind": "Server", "resource": {}});
    let good = processor("qa").process(Payload::Traces(checkout_request(
        "qa",
        vec![span_at(2, now - 2 * MIN, 10.0, "GET /", false)],
    )));
    let mut docs: Vec<_> = good
        .into_iter()
        .map(|d| (stream_name(Signal::traces, DATASET, "qa"), d.source))
        .collect();
    docs.push((
        stream_name(Signal::traces, DATASET, "qa"),
        bytes::Bytes::from(bad.to_string()),
    ));
    es.bulk(&http, &docs).await;
    let (code, err) = run_train(&[
        "--es",
        &es.url,
        "--environment",
        "qa",
        "--since",
        "1d",
        "--out",
        &out_s,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot be read: missing field `duration`")
            && err.contains("skip_bad_documents"),
        "{err}"
    );

    // Unreachable: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, err) = run_train(&[
        "--es",
        &url,
        "--environment",
        "prod",
        "--since",
        "1d",
        "--out",
        &out_s,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach Elasticsearch at {url}")) && err.contains("--es"),
        "{err}"
    );

    // A key given as a flag value is not an option: only a file.
    let (code, err) = run_train(&["--api-key", "secret", "--es", &es.url]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = run_train(&[
        "--es",
        &es.url,
        "--api-key-file",
        &dir.path().join("missing").display().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--api-key-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_of_an_older_or_newer_format_version_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = processor("prod").detectors().snapshot("prod", 0);
    for version in [0u8, 9] {
        let mut bytes = good.clone();
        bytes[8] = version;
        let path: PathBuf = dir.path().join(format!("v{version}.snap"));
        std::fs::write(&path, &bytes).expect("write");
        // backfill --model
        let d = otel_anomaly::pipeline::process::Detectors::new(&config::Settings::default());
        let err = job::load_model(&d, &path, "prod").unwrap_err().to_string();
        assert!(
            err.contains(&format!("version {version} is not supported")) && err.contains("retrain"),
            "{err}"
        );
        // sidecar --model: start-up stops with the reason, naming the option.
        let sdir = tempfile::tempdir().expect("tempdir");
        let mut cfg = base_config(sdir.path());
        cfg.settings.environment = "prod".into();
        cfg.settings.detect.model = Some(path.clone());
        let err =
            match otel_anomaly::sidecar::start(cfg, tokio_util::sync::CancellationToken::new())
                .await
            {
                Ok(_) => panic!("a model of format version {version} must be refused"),
                Err(e) => e.to_string(),
            };
        assert!(
            err.contains(&format!("version {version} is not supported"))
                && err.contains("detect.model / --model"),
            "{err}"
        );
    }
    // The current version loads.
    let path = dir.path().join("ok.snap");
    std::fs::write(&path, &good).expect("write");
    let d = otel_anomaly::pipeline::process::Detectors::new(&config::Settings::default());
    job::load_model(&d, &path, "prod").expect("current version loads");
}

/// Detector state after `n` spans of each (name, latency) pair of service
/// `checkout`, one every 3 s per name, the last one a minute ago.
fn learned(pairs: &[(&str, f64)], n: u64) -> Vec<u8> {
    let p = processor("prod");
    let now = otel_anomaly::train::now_ns();
    let mut spans = Vec::new();
    for (k, (name, ms)) in pairs.iter().enumerate() {
        for i in 0..n {
            let t = now - MIN - (n - i) * 3 * S;
            let id = (k as u64 + 1) * 100_000 + i;
            spans.push(span_at(id, t, ms * jitter(id), name, false));
        }
    }
    spans.sort_by_key(|s| s.start_time_unix_nano);
    let req = checkout_request("prod", spans);
    p.process(Payload::Traces(req));
    p.detectors().snapshot("prod", now)
}

/// `--model` together with the sidecar's own restored snapshot
/// (`<data_dir>/detectors.snap`): the own state wins per key, and keys
/// only one side knows are kept from that side (docs/train.md, "Starting
/// from a model, and merging").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_own_snapshot_merge_per_key_with_the_own_state_winning() {
    // "GET /both" is 40 ms in the model but 400 ms in the sidecar's own
    // state; "GET /model-only" (40 ms) only in the model; "GET /own-only"
    // (40 ms) only in the own snapshot; "GET /neither" nowhere.
    let model_bytes = learned(&[("GET /both", 40.0), ("GET /model-only", 40.0)], 300);
    let own_bytes = learned(&[("GET /both", 400.0), ("GET /own-only", 40.0)], 300);
    let (model_keys, _) = keys_of(&model_bytes, "prod");
    let (own_keys, _) = keys_of(&own_bytes, "prod");
    let both = span_key("checkout", "GET /both");
    assert!(model_keys.contains(&both) && own_keys.contains(&both));
    assert!(!own_keys.contains(&span_key("checkout", "GET /model-only")));
    assert!(!model_keys.contains(&span_key("checkout", "GET /own-only")));

    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.snap");
    std::fs::write(&model, &model_bytes).expect("write model");
    let mut cfg = base_config(dir.path());
    cfg.settings.environment = "prod".into();
    cfg.settings.detect.model = Some(model.clone());
    assert!(cfg.settings.detect.snapshot.enabled);
    let own = cfg.snapshot_path();
    std::fs::create_dir_all(own.parent().expect("parent")).expect("data dir");
    std::fs::write(&own, &own_bytes).expect("write own snapshot");

    let sc = Sidecar::start(cfg).await;
    // 20 spans of each name at 400 ms, in the sidecar's first seconds.
    let now = otel_anomaly::train::now_ns();
    let names = [
        "GET /both",
        "GET /model-only",
        "GET /own-only",
        "GET /neither",
    ];
    let mut spans = Vec::new();
    for (k, name) in names.iter().enumerate() {
        for i in 0..20u64 {
            let id = 5_000_000 + k as u64 * 1000 + i;
            spans.push(span_at(
                id,
                now - 20 * S + i * S,
                400.0 * jitter(id),
                name,
                false,
            ));
        }
    }
    let docs = send_and_stop(sc, dir.path(), spans, 80).await;
    let mut scores: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for d in docs {
        let name = d["name"].as_str().unwrap_or_default().to_string();
        scores
            .entry(name)
            .or_default()
            .push(d["anomaly"]["score"].as_f64().unwrap_or(-1.0));
    }
    let flagged = |name: &str| scores[name].iter().filter(|s| **s >= 50.0).count();
    assert!(scores.values().all(|v| v.len() == 20), "{scores:?}");
    // The key both know: the own snapshot's 400 ms baseline, not the model's 40 ms.
    assert_eq!(
        flagged("GET /both"),
        0,
        "the model won over the own snapshot: {scores:?}"
    );
    // A key only the model knows keeps the model's baseline: 400 ms is flagged.
    assert!(
        flagged("GET /model-only") >= 15,
        "model-only key lost: {scores:?}"
    );
    // A key only the own snapshot knows survives the model being loaded first.
    assert!(
        flagged("GET /own-only") >= 15,
        "own-only key lost: {scores:?}"
    );
    // A key neither knows is in its cold start: nothing can be flagged, so
    // the flags above come from the restored baselines.
    assert_eq!(flagged("GET /neither"), 0, "{scores:?}");
}

/// One config file with an Elasticsearch target per environment
/// (`export.elasticsearch_targets`) and a central default: the prod sidecar
/// writes to prod's cluster, and `train` given the same file (no `--es`)
/// reads prod from there; an environment without an entry (staging) is read
/// from the central cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_and_train_share_the_per_environment_targets() {
    let (prod_es, central) = (EsServer::noida(), EsServer::noida());
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("otel-anomaly.yaml");
    std::fs::write(
        &file,
        format!(
            "environment: prod\nexport:\n  elasticsearch:\n    urls: [\"{}\"]\n  elasticsearch_targets:\n    prod:\n      urls: [\"{}\"]\n",
            central.url, prod_es.url
        ),
    )
    .expect("config file");

    // The prod sidecar, configured by that file.
    let mut cfg =
        config::resolve(Some(&file), &BTreeMap::new(), &FlagOverrides::default()).expect("config");
    let base = base_config(dir.path());
    cfg.settings.receiver = base.settings.receiver.clone();
    cfg.settings.admin = base.settings.admin.clone();
    cfg.settings.data_dir = base.settings.data_dir.clone();
    cfg.settings.pipeline.workers = 1;
    cfg.settings.shutdown_timeout = Duration::from_secs(5);
    let sc = Sidecar::start(cfg).await;
    let now = otel_anomaly::train::now_ns();
    let spans: Vec<Span> = (0..30u64)
        .map(|i| {
            span_at(
                7_000_000 + i,
                now - 60 * S + i * S,
                40.0 * jitter(i),
                "GET /cart",
                false,
            )
        })
        .collect();
    let req = checkout_request("prod", spans);
    assert!(sc.post_traces(&req).await.status().is_success());
    let prod_traces = stream_name(Signal::traces, DATASET, "prod");
    let count = |url: String| {
        let (http, index) = (http.clone(), prod_traces.clone());
        async move {
            let _ = http.post(format!("{url}/{index}/_refresh")).send().await;
            match http.get(format!("{url}/{index}/_count")).send().await {
                Ok(r) if r.status().is_success() => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["count"].as_u64())
                    .unwrap_or(0),
                _ => 0,
            }
        }
    };
    eventually("30 spans in prod's cluster", WAIT, || {
        let c = count(prod_es.url.clone());
        async move { c.await >= 30 }
    })
    .await;
    sc.shutdown().await;
    assert_eq!(
        count(central.url.clone()).await,
        0,
        "prod wrote to the central cluster"
    );

    // Staging's history only in the central cluster.
    let staging = processor("staging");
    let req = checkout_request(
        "staging",
        (0..40u64)
            .map(|i| {
                span_at(
                    8_000_000 + i,
                    now - 60 * S + i * S,
                    200.0,
                    "GET /cart",
                    false,
                )
            })
            .collect(),
    );
    let docs: Vec<(String, bytes::Bytes)> = staging
        .process(Payload::Traces(req))
        .into_iter()
        .map(|d| (stream_name(Signal::traces, DATASET, "staging"), d.source))
        .collect();
    assert_eq!(docs.len(), 40);
    central.bulk(&http, &docs).await;

    // `train` with the same file and no --es: prod from prod's cluster...
    let file_arg = file.display().to_string();
    let run = |env: &str| {
        let out_file = dir.path().join(format!("{env}.snap"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_otel-anomaly"))
            .args([
                "train",
                "--config",
                &file_arg,
                "--environment",
                env,
                "--since",
                "1h",
            ])
            .arg("--out")
            .arg(&out_file)
            .output()
            .expect("binary runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out_file,
        )
    };
    let (code, stdout, stderr, model) = run("prod");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("read 30 documents (30 spans"), "{stdout}");
    let (spans, _) = keys_of(&std::fs::read(&model).expect("model"), "prod");
    assert!(spans.contains(&span_key("checkout", "GET /cart")));
    // ...and staging, which has no entry, from the central one.
    let (code, stdout, stderr, model) = run("staging");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("read 40 documents (40 spans"), "{stdout}");
    std::fs::read(&model).expect("staging model");
}

/// Runs the real `otel-anomaly sidecar --model MODEL` of environment prod
/// (listeners on loopback port 0, data under `dir`); it must exit by itself
/// within 30 s. Returns (exit code, stdout + stderr).
fn run_sidecar_with_model(dir: &Path, model: &Path) -> (i32, String) {
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_otel-anomaly"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_ANOMALY_")) {
        cmd.env_remove(k);
    }
    let data = dir.join("data");
    let mut child = cmd
        .arg("sidecar")
        .arg("--model")
        .arg(model)
        .env("OTEL_ANOMALY_ENVIRONMENT", "prod")
        .env("OTEL_ANOMALY_DATA_DIR", &data)
        .env("OTEL_ANOMALY_RECEIVER__GRPC__LISTEN", "127.0.0.1:0")
        .env("OTEL_ANOMALY_RECEIVER__HTTP__LISTEN", "127.0.0.1:0")
        .env("OTEL_ANOMALY_ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sidecar --model {} did not stop by itself", model.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    (
        status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `sidecar --model` flag of the real binary: a model of another
/// environment or of an unknown format version stops start-up with the
/// documented message naming the file and the option.
#[test]
fn the_sidecar_command_refuses_a_model_of_another_environment_or_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = dir.path().join("staging.snap");
    std::fs::write(
        &staging,
        processor("staging").detectors().snapshot("staging", 0),
    )
    .expect("write");
    let (code, out) = run_sidecar_with_model(dir.path(), &staging);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "model {} (detect.model / --model)",
            staging.display()
        )) && out.contains("snapshot is for environment \"staging\"")
            && out.contains("\"prod\""),
        "{out}"
    );

    let mut bytes = processor("prod").detectors().snapshot("prod", 0);
    bytes[8] = 9;
    let future = dir.path().join("v9.snap");
    std::fs::write(&future, &bytes).expect("write");
    let (code, out) = run_sidecar_with_model(dir.path(), &future);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("(detect.model / --model)")
            && out.contains("version 9 is not supported")
            && out.contains("retrain"),
        "{out}"
    );
}
