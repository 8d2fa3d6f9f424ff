//! `backfill` end to end: history with an incident in a real
//! Elasticsearch-compatible server (noida-db), scored after the fact, the
//! events pushed to a real aggregator: stored and listed as backfilled, no
//! incident opened (nobody is paged about last week), and a second run
//! stores nothing twice.

mod agg;
mod common;
#[path = "common/es_server.rs"]
mod es_server;

use std::sync::Arc;
use std::time::Duration;

use agg::*;
use es_server::EsServer;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_anomaly::export::stream_name;
use otel_anomaly::pipeline::process::Processor;
use otel_anomaly::pipeline::{AnomalyFeed, Payload};
use otel_anomaly::telemetry::{Metrics, Signal};
use otel_anomaly::train::job::{self, TargetOverrides};

const S: u64 = 1_000_000_000;
const MIN: u64 = 60 * S;

fn resource() -> Resource {
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("checkout".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Three hours of one span key (a span every 3 s, 40 ms ± 10 %) and one
/// gauge (every 30 s); from `incident.0` to `incident.1` the spans take 8×
/// and the gauge is 10×.
fn history(end: u64, incident: (u64, u64)) -> Vec<(String, bytes::Bytes)> {
    let settings = otel_anomaly::config::Settings {
        environment: "prod".into(),
        ..Default::default()
    };
    let p = Processor::new(
        &settings,
        "otel",
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    );
    let start = end - 180 * MIN;
    let bad = |t: u64| t >= incident.0 && t < incident.1;
    let mut spans = Vec::new();
    let mut points = Vec::new();
    let mut t = start;
    let mut i = 0u64;
    while t < end {
        let jitter = 0.9 + (i.wrapping_mul(2_654_435_761) % 1000) as f64 / 5000.0;
        let ms = 40.0 * jitter * if bad(t) { 8.0 } else { 1.0 };
        let mut trace = [1u8; 16];
        trace[..8].copy_from_slice(&i.to_be_bytes());
        spans.push(Span {
            trace_id: trace.to_vec(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "GET /cart".into(),
            kind: 2,
            start_time_unix_nano: t,
            end_time_unix_nano: t + (ms * 1e6) as u64,
            ..Default::default()
        });
        if i.is_multiple_of(10) {
            points.push(NumberDataPoint {
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(
                    100.0 * jitter * if bad(t) { 10.0 } else { 1.0 },
                )),
                ..Default::default()
            });
        }
        i += 1;
        t += 3 * S;
    }
    let mut docs = Vec::new();
    for chunk in spans.chunks(1000) {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource()),
                scope_spans: vec![ScopeSpans {
                    spans: chunk.to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        for d in p.process(Payload::Traces(req)) {
            docs.push((stream_name(Signal::traces, "otel", "prod"), d.source));
        }
    }
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
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
    for d in p.process(Payload::Metrics(req)) {
        docs.push((stream_name(Signal::metrics, "otel", "prod"), d.source));
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_events_reach_the_aggregator_marked_and_without_incidents() {
    let es = EsServer::noida();
    let http = reqwest::Client::new();
    let end = otel_anomaly::train::now_ns() - MIN;
    let incident = (end - 50 * MIN, end - 20 * MIN);
    es.bulk(&http, &history(end, incident)).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Agg::start(&write_config(dir.path(), "")).await;
    let cfg = pushing_sidecar_config(
        dir.path(),
        "prod",
        PROD_TOKEN,
        &agg.grpc_url(),
        &[("OTEL_ANOMALY_CLUSTER", "eu")],
    );
    let target = TargetOverrides {
        url: Some(es.url.clone()),
        ..Default::default()
    };
    let range = (end - 170 * MIN, end);
    let (summary, events) = job::backfill(&cfg, &target, range, None, false)
        .await
        .expect("backfill scores the range");
    assert!(summary.total() > 3000, "{summary}");
    assert!(!events.is_empty(), "the incident makes events");
    assert!(events
        .iter()
        .all(|e| e.backfilled && e.event_id.ends_with("-b")));
    for signal in ["traces", "metrics"] {
        assert!(
            events.iter().any(|e| e.signal == signal
                && e.start_unix_nano >= incident.0 - MIN
                && e.start_unix_nano < incident.1),
            "no {signal} event inside the incident: {events:?}"
        );
    }
    // Nothing flagged long before the incident (history scored in order, no false alarm storm).
    assert!(
        events
            .iter()
            .all(|e| e.end_unix_nano >= incident.0 - 5 * MIN),
        "{:?}",
        events
            .iter()
            .filter(|e| e.end_unix_nano < incident.0 - 5 * MIN)
            .collect::<Vec<_>>()
    );
    let n = events.len();
    job::push_events(&cfg, events.clone(), Duration::from_secs(30))
        .await
        .expect("pushed");

    let (status, stored) = agg.get("/api/v1/events?environment=prod&limit=1000").await;
    assert_eq!(status, 200);
    let stored = stored.as_array().cloned().unwrap_or_default();
    assert_eq!(stored.len(), n, "{stored:?}");
    assert!(stored.iter().all(|e| e["backfilled"] == true));
    assert!(stored.iter().all(|e| e["incident_id"].is_null()));
    let (_, incidents) = agg.get("/api/v1/incidents?environment=prod").await;
    assert_eq!(incidents.as_array().map(Vec::len), Some(0), "{incidents}");

    // Backfilling the same range again stores nothing twice.
    job::push_events(&cfg, events, Duration::from_secs(30))
        .await
        .expect("pushed again");
    let (_, again) = agg.get("/api/v1/events?environment=prod&limit=1000").await;
    assert_eq!(again.as_array().map(Vec::len), Some(n));
    agg.stop().await;
}

fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Runs the real `otel-anomaly backfill` with `args` and `env` (nothing
/// else of this process's environment that configures it); returns (exit
/// code, stdout, stderr).
fn run_backfill(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_otel-anomaly"));
    cmd.arg("backfill").args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_ANOMALY_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `backfill` command itself (not only the library): `--print` shows
/// the events, a run without it pushes exactly those to the aggregator,
/// where they are stored as backfilled and open no incident; a bad range
/// is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_command_pushes_backfilled_events_and_prints_a_summary() {
    let es = EsServer::noida();
    let http = reqwest::Client::new();
    let end = otel_anomaly::train::now_ns() - MIN;
    let incident = (end - 50 * MIN, end - 20 * MIN);
    es.bulk(&http, &history(end, incident)).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Agg::start(&write_config(dir.path(), "")).await;
    let token_file = dir.path().join("prod-client.token");
    std::fs::write(&token_file, PROD_TOKEN).expect("token file");
    let env = [
        ("OTEL_ANOMALY_PUSH__URL", agg.grpc_url()),
        (
            "OTEL_ANOMALY_PUSH__TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("OTEL_ANOMALY_CLUSTER", "eu".to_string()),
    ];
    let (from, to) = (rfc3339(end - 170 * MIN), rfc3339(end));
    let source = [
        "--es",
        es.url.as_str(),
        "--environment",
        "prod",
        "--from",
        from.as_str(),
        "--to",
        to.as_str(),
    ];

    // --print: the events as JSON lines on stdout, nothing pushed.
    let mut args = source.to_vec();
    args.push("--print");
    let (code, stdout, stderr) = run_backfill(&args, &env);
    assert_eq!(code, 0, "{stderr}");
    let printed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!printed.is_empty(), "the incident makes events: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{} backfilled anomaly events printed",
            printed.len()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("read ") && stderr.contains("documents/s"),
        "{stderr}"
    );
    for e in &printed {
        assert_eq!(e["backfilled"], true, "{e}");
        assert!(
            e["event_id"].as_str().is_some_and(|id| id.ends_with("-b")),
            "{e}"
        );
        let start = e["start_unix_nano"].as_u64().expect("start");
        assert!(
            start + 5 * MIN >= incident.0 && start < incident.1,
            "outside the incident: {e}"
        );
    }
    let (_, none) = agg.get("/api/v1/events?environment=prod&limit=1000").await;
    assert_eq!(
        none.as_array().map(Vec::len),
        Some(0),
        "--print pushed: {none}"
    );

    // Pushing: exit 0, the summary, and exactly the printed events stored as backfilled.
    let (code, stdout, stderr) = run_backfill(&source, &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{} backfilled anomaly events pushed to the aggregator",
            printed.len()
        )),
        "{stderr}"
    );
    let (status, stored) = agg.get("/api/v1/events?environment=prod&limit=1000").await;
    assert_eq!(status, 200);
    let stored = stored.as_array().cloned().unwrap_or_default();
    let ids = |v: &[serde_json::Value]| {
        v.iter()
            .map(|e| e["event_id"].as_str().unwrap_or_default().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids(&stored), ids(&printed), "{stored:?}");
    assert!(stored.iter().all(|e| e["backfilled"] == true), "{stored:?}");
    assert!(
        stored.iter().all(|e| e["incident_id"].is_null()),
        "{stored:?}"
    );
    let (_, incidents) = agg.get("/api/v1/incidents?environment=prod").await;
    assert_eq!(incidents.as_array().map(Vec::len), Some(0), "{incidents}");

    // A range that ends before it starts: a usage error, exit 2.
    let (code, _, stderr) = run_backfill(
        &[
            "--es",
            es.url.as_str(),
            "--environment",
            "prod",
            "--from",
            to.as_str(),
            "--to",
            from.as_str(),
        ],
        &env,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--from must be before --to"), "{stderr}");
    agg.stop().await;
}
