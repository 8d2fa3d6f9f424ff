//! Saved fuzz inputs run through the fuzz targets' own code
//! (`otel_anomaly::fuzzing`): every crash the fuzzer found, kept in
//! `fuzz/regressions/<target>/`, and the seed corpus in `fuzz/seeds/<target>/`.
//! `cargo test --test fuzz_inputs -- --ignored write_seeds` rewrites the seeds.

use std::io::Write;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use otel_anomaly::fuzzing::{self, TARGETS};
use prost::Message;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn run_all(kind: &str) -> usize {
    let mut n = 0;
    for target in TARGETS {
        for f in files(&fuzz_dir().join(kind).join(target)) {
            let data = std::fs::read(&f).unwrap();
            let ok = std::panic::catch_unwind(|| fuzzing::run(target, &data));
            assert!(
                matches!(ok, Ok(true)),
                "{target} panicked on {}",
                f.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn crashes_the_fuzzer_found_stay_fixed() {
    // Zero is a valid count (no crash found yet); the directory is read either way.
    let n = run_all("regressions");
    eprintln!("{n} regression inputs");
}

#[test]
fn seed_corpus_runs_cleanly() {
    let n = run_all("seeds");
    assert!(n >= TARGETS.len(), "every target has seeds ({n} found)");
}

#[test]
fn generated_valid_inputs_run_cleanly() {
    for (target, data) in seeds() {
        assert!(fuzzing::run(target, &data), "{target}");
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", "cart"), kv("host.name", "h1")],
        ..Default::default()
    })
}

fn traces() -> ExportTraceServiceRequest {
    let spans = (0..6u8)
        .map(|i| Span {
            trace_id: vec![i + 1; 16],
            span_id: vec![i + 1; 8],
            parent_span_id: if i > 0 { vec![i; 8] } else { vec![] },
            name: format!("GET /cart/{}", i % 2),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i) * 1_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000
                + u64::from(i) * 1_000_000
                + 5_000_000 * u64::from(i + 1),
            attributes: vec![kv("http.method", "GET")],
            status: Some(Status {
                code: if i == 5 { 2 } else { 0 },
                message: String::new(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    let point = |t: u64, v: f64| NumberDataPoint {
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsDouble(v)),
        attributes: vec![kv("route", "/cart")],
        ..Default::default()
    };
    let t0 = 1_700_000_000_000_000_000u64;
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "cpu".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![point(t0, 0.5), point(t0 + 1_000_000_000, 0.9)],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "requests".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![point(t0, 10.0), point(t0 + 1_000_000_000, 4.0)],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                time_unix_nano: t0,
                                count: 3,
                                sum: Some(0.3),
                                bucket_counts: vec![1, 1, 1],
                                explicit_bounds: vec![0.1, 0.2],
                                ..Default::default()
                            }],
                            aggregation_temporality: 1,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000,
                    severity_number: 17,
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("boom".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn with_tag(tag: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(body);
    out
}

/// Valid inputs of every target: the seed corpus.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use otel_anomaly::push::proto::{AnomalyEvent, PushEventsRequest};
    let mut out = vec![
        ("otlp_protobuf", with_tag(0, traces().encode_to_vec())),
        ("otlp_protobuf", with_tag(1, metrics().encode_to_vec())),
        ("otlp_protobuf", with_tag(2, logs().encode_to_vec())),
        ("otlp_json", with_tag(0, serde_json::to_vec(&traces()).unwrap())),
        ("otlp_json", with_tag(1, serde_json::to_vec(&metrics()).unwrap())),
        ("otlp_json", with_tag(2, serde_json::to_vec(&logs()).unwrap())),
        (
            "otlp_json",
            with_tag(
                0,
                br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000"}]}]}]}"#.to_vec(),
            ),
        ),
    ];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&traces().encode_to_vec()).unwrap();
    out.push(("gzip", gz.finish().unwrap()));
    out.push(("gzip", b"plain bytes".to_vec()));
    out.push((
        "config",
        b"environment: prod\nreceiver:\n  max_request_bytes: 1048576\n  grpc: {listen: '127.0.0.1:4317'}\nexport:\n  elasticsearch:\n    urls: ['https://es:9200']\n    bulk: {flush_interval: 250ms}\ndetect:\n  spans: {half_life: 10m, max_keys: 100}\n".to_vec(),
    ));
    out.push((
        "config",
        b"pipeline__workers=2\nenvironment: dev\nadmin: {listen: '0.0.0.0:8888'}\n".to_vec(),
    ));
    out.push((
        "config",
        b"data_dir: /tmp/x\nhttp: {anonymous: true}\nincidents: {resolve_after: 2m}\ningest: {max_batch_events: 10}\n".to_vec(),
    ));
    let end = 1_800_000_000_000_000_000u64;
    let ev = |id: &str, key: &str| AnomalyEvent {
        event_id: id.into(),
        environment: "dev".into(),
        cluster: String::new(),
        service: "cart".into(),
        signal: "traces".into(),
        key: key.into(),
        start_unix_nano: end - 60_000_000_000,
        end_unix_nano: end,
        score: 80.0,
        severity: 3,
        explanation: "p99 up".into(),
        baseline: 120.0,
        observed: 870.0,
        unit: "ms".into(),
        exemplar_trace_ids: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
        backfilled: false,
    };
    out.push((
        "push_api",
        PushEventsRequest {
            sidecar_id: "dev".into(),
            events: vec![ev("e1", "GET /cart"), ev("e2", "GET /pay")],
        }
        .encode_to_vec(),
    ));
    // A real snapshot of detectors that saw the trace seed (mode 0: raw file).
    let cfg =
        otel_anomaly::config::resolve(None, &Default::default(), &Default::default()).unwrap();
    let mut s = cfg.settings.clone();
    s.environment = "fuzz".into();
    s.detect.spans.min_samples = 1;
    let p = otel_anomaly::pipeline::process::Processor::new(
        &s,
        "otel",
        std::sync::Arc::new(otel_anomaly::telemetry::Metrics::default()),
        std::sync::Arc::new(otel_anomaly::pipeline::AnomalyFeed::default()),
    );
    let _ = p.process(otel_anomaly::pipeline::Payload::Traces(traces()));
    let _ = p.process(otel_anomaly::pipeline::Payload::Metrics(metrics()));
    out.push(("snapshot", with_tag(0, p.detectors().snapshot("fuzz", 1))));
    // A write-ahead queue segment: two whole records, then the same with a torn tail.
    use otel_anomaly::export::wal::segment::{encode_record, MAGIC};
    use otel_anomaly::telemetry::Signal;
    let mut segment = MAGIC.to_vec();
    segment.extend(encode_record(Signal::traces, 1, |b| {
        b.extend(traces().encode_to_vec())
    }));
    segment.extend(encode_record(Signal::logs, 1, |b| {
        b.extend(logs().encode_to_vec())
    }));
    out.push(("wal_segment", segment.clone()));
    let torn = encode_record(Signal::metrics, 1, |b| b.extend(metrics().encode_to_vec()));
    segment.extend(&torn[..torn.len() / 2]);
    out.push(("wal_segment", segment));
    out.push(("wire_traces", traces().encode_to_vec()));
    out.push(("wire_metrics", metrics().encode_to_vec()));
    out
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seeds() {
    for (i, (target, data)) in seeds().into_iter().enumerate() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i:02}")), data).unwrap();
    }
}
