//! Micro-benchmarks of the sidecar's per-record work: OTLP decode, span and
//! point scoring, Elasticsearch document encoding, bulk body build (with and
//! without gzip), the whole scoring worker step on one request, and the
//! detector snapshot (encode, restore, atomic write).
//! Inputs are the load generator's realistic payloads; setup stays out of
//! the timing.
//!
//! `cargo bench --bench hot_path` (add `-- <filter>` for one group).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use otel_anomaly::config::Settings;
use otel_anomaly::detect::keys::key_hash;
use otel_anomaly::detect::metric::{MetricDetector, MetricParams, PointValue};
use otel_anomaly::detect::span::{SpanDetector, SpanObs, SpanParams};
use otel_anomaly::export::bulk::{build_body, build_body_gzip, ActionPrefixes};
use otel_anomaly::export::document::{
    encode_resource, encode_scope, encode_span, span_is_error, DataStream, Shared,
};
use otel_anomaly::export::elasticsearch::gzip;
use otel_anomaly::export::Doc;
use otel_anomaly::loadgen::payload::{prepare, Encoding, SignalKind};
use otel_anomaly::pipeline::process::{Detectors, Processor};
use otel_anomaly::pipeline::{AnomalyFeed, Payload, WireTraces};
use otel_anomaly::receiver::wire::check_traces;
use otel_anomaly::telemetry::Metrics;
use prost::Message;

const SPANS: usize = 500;
const NOW_NS: u64 = 1_800_000_000_000_000_000;

fn trace_bodies(n: usize) -> Vec<Vec<u8>> {
    prepare(SignalKind::Traces, Encoding::Protobuf, n, SPANS, 8, 1)
        .iter()
        .enumerate()
        .map(|(i, p)| p.stamped(NOW_NS + i as u64 * 1_000_000_000))
        .collect()
}

fn trace_requests(n: usize) -> Vec<ExportTraceServiceRequest> {
    trace_bodies(n)
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(b.as_slice()).expect("valid payload"))
        .collect()
}

fn otlp_decode(c: &mut Criterion) {
    let bodies = trace_bodies(16);
    let mut g = c.benchmark_group("otlp_decode");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("traces_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(ExportTraceServiceRequest::decode(bodies[i].as_slice()).expect("valid"))
        })
    });
    // What the receiver does instead on the hot path: check the bytes for the wire reader.
    g.bench_function("traces_500_spans_wire_check", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(check_traces(&bodies[i]).expect("accepted"))
        })
    });
    g.finish();
}

fn span_scoring(c: &mut Criterion) {
    let reqs = trace_requests(16);
    let mut det = SpanDetector::new(SpanParams::default());
    let obs: Vec<Vec<(u64, SpanObs<'_>)>> = reqs
        .iter()
        .map(|r| {
            let mut v = Vec::new();
            for rs in &r.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| {
                        otel_anomaly::export::document::attr_str(&r.attributes, "service.name")
                    })
                    .unwrap_or("unknown");
                for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                    let o = SpanObs {
                        service,
                        name: &s.name,
                        kind: s.kind,
                        end_ns: s.end_time_unix_nano,
                        duration_ns: s.end_time_unix_nano - s.start_time_unix_nano,
                        is_error: span_is_error(s),
                        trace_id: &s.trace_id,
                    };
                    v.push((o.key(), o));
                }
            }
            v
        })
        .collect();
    // Warm every key past its cold start.
    for batch in &obs {
        for (k, o) in batch {
            det.observe_key(*k, o);
        }
    }
    let mut g = c.benchmark_group("span_scoring");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("observe_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % obs.len();
            for (k, o) in &obs[i] {
                black_box(det.observe_key(*k, o));
            }
        })
    });
    g.bench_function("key_hash_500_spans", |b| {
        b.iter(|| {
            for (_, o) in &obs[0] {
                black_box(o.key());
            }
        })
    });
    g.finish();
}

fn point_scoring(c: &mut Criterion) {
    let bodies: Vec<ExportMetricsServiceRequest> =
        prepare(SignalKind::Metrics, Encoding::Protobuf, 4, 500, 8, 1)
            .iter()
            .map(|p| {
                ExportMetricsServiceRequest::decode(p.stamped(NOW_NS).as_slice()).expect("valid")
            })
            .collect();
    let mut points = Vec::new();
    for r in &bodies {
        for m in r
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            let key = key_hash(&[m.name.as_bytes()]);
            if let Some(metric::Data::Gauge(g)) = &m.data {
                for p in &g.data_points {
                    let v = match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => 0.0,
                    };
                    points.push((key ^ p.attributes.len() as u64, v));
                }
            }
        }
    }
    let mut det = MetricDetector::new(MetricParams {
        max_series: 50_000,
        ..MetricParams::default()
    });
    // One point per series every 10 s, as a metrics SDK exports.
    let mut t: u64 = 1_700_000_000_000_000_000;
    for _ in 0..50 {
        t += 10_000_000_000;
        for (k, v) in &points {
            det.observe(*k, t, PointValue::Gauge(*v));
        }
    }
    let mut g = c.benchmark_group("point_scoring");
    g.throughput(Throughput::Elements(points.len() as u64));
    g.bench_function("observe_gauges", |b| {
        b.iter(|| {
            t += 10_000_000_000;
            for (k, v) in &points {
                black_box(det.observe(*k, t, PointValue::Gauge(*v)));
            }
        })
    });
    g.finish();
    histogram_scoring(c);
}

/// Histogram points of 1,000 cumulative series with 16 explicit buckets each:
/// the mean series plus the p50 / p95 / p99 series (bucket deltas,
/// interpolation, three more detector series), as the pipeline scores them.
fn histogram_scoring(c: &mut Criterion) {
    use otel_anomaly::detect::histogram::{Buckets, HistogramObs};
    use otel_anomaly::pipeline::process::Detectors;
    const SERIES: u64 = 1000;
    let bounds: Vec<f64> = (0..15).map(|i| 2f64.powi(i)).collect();
    let detectors = Detectors::new(&Settings::default());
    let mut counts: Vec<Vec<u64>> = (0..SERIES).map(|_| vec![0u64; 16]).collect();
    let mut sums = vec![0.0f64; SERIES as usize];
    let mut t: u64 = NOW_NS;
    let mut out = Vec::new();
    let mut step = |t: u64, round: u64, out: &mut Vec<_>| {
        for (k, (c, sum)) in counts.iter_mut().zip(&mut sums).enumerate() {
            for (b, n) in c.iter_mut().enumerate() {
                *n += (1 + (b as u64 * 7 + k as u64 + round) % 13) * 10;
            }
            *sum += 1000.0 + (round % 7) as f64;
            let key = k as u64 + 1;
            let count: u64 = c.iter().sum();
            let mean = PointValue::Histogram {
                count,
                sum: *sum,
                cumulative: true,
                start_ns: 1,
            };
            black_box(detectors.point(key, t, mean));
            let obs = HistogramObs {
                buckets: Buckets::Explicit {
                    bounds: &bounds,
                    counts: c,
                },
                cumulative: true,
                start_ns: 1,
                min: None,
                max: None,
            };
            out.clear();
            black_box(detectors.histogram(key, t, &obs, out).is_ok());
        }
    };
    for round in 0..50 {
        t += 10_000_000_000;
        step(t, round, &mut out);
    }
    let mut g = c.benchmark_group("point_scoring");
    g.throughput(Throughput::Elements(SERIES));
    let mut round = 50;
    g.bench_function("observe_histograms_mean_and_quantiles", |b| {
        b.iter(|| {
            t += 10_000_000_000;
            round += 1;
            step(t, round, &mut out);
        })
    });
    g.finish();
}

fn es_document(c: &mut Criterion) {
    let reqs = trace_requests(4);
    let r = &reqs[0];
    let rs = &r.resource_spans[0];
    let res = encode_resource(rs.resource.as_ref(), "");
    let scope = encode_scope(rs.scope_spans[0].scope.as_ref(), "");
    let shared = Shared {
        resource: &res,
        scope: &scope,
    };
    let ds = DataStream {
        dataset: "otel".into(),
        namespace: "bench".into(),
    };
    let spans: Vec<_> = r
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let verdict = otel_anomaly::detect::Verdict::cold_start(3, 50);
    let mut g = c.benchmark_group("es_document");
    g.throughput(Throughput::Elements(spans.len() as u64));
    g.bench_function("encode_span_reused_buffer", |b| {
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            out.clear();
            for s in &spans {
                encode_span(&mut out, s, &shared, &ds, &verdict, &s.name);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn docs_for_bulk() -> Vec<Doc> {
    let settings = Settings::default();
    let p = Processor::new(
        &settings,
        "otel",
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    );
    let mut docs = Vec::new();
    for r in trace_requests(4) {
        docs.extend(p.process(Payload::Traces(r)));
    }
    docs
}

fn bulk_body(c: &mut Criterion) {
    let docs = docs_for_bulk();
    let prefixes = ActionPrefixes::new(|s| format!("{}-otel-bench", s.as_str()));
    let mut body = Vec::new();
    build_body(&docs, &prefixes, &mut body);
    let gz = gzip(&body).expect("gzip into memory");
    eprintln!(
        "bulk body: {} documents, {} bytes ({:.0} per document), gzip level 1: {} bytes ({:.1}x)",
        docs.len(),
        body.len(),
        body.len() as f64 / docs.len() as f64,
        gz.len(),
        body.len() as f64 / gz.len() as f64
    );
    let mut g = c.benchmark_group("bulk_body");
    g.throughput(Throughput::Elements(docs.len() as u64));
    g.bench_function("build", |b| {
        let mut out = Vec::with_capacity(4 << 20);
        b.iter(|| {
            out.clear();
            build_body(&docs, &prefixes, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("build_gzip_level1", |b| {
        let mut out = Vec::with_capacity(4 << 20);
        b.iter(|| {
            out.clear();
            build_body(&docs, &prefixes, &mut out);
            black_box(gzip(&out).expect("gzip into memory").len())
        })
    });
    // What the exporter does: gzip as the body is built, 64 KiB at a time.
    g.bench_function("build_gzip_level1_streamed", |b| {
        b.iter(|| {
            black_box(
                build_body_gzip(&docs, &prefixes)
                    .expect("gzip into memory")
                    .len(),
            )
        })
    });
    g.finish();
}

fn worker_step(c: &mut Criterion) {
    let settings = Settings::default();
    let p = Processor::new(
        &settings,
        "otel",
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    );
    let reqs = trace_requests(16);
    for r in &reqs {
        p.process(Payload::Traces(r.clone()));
    }
    let mut g = c.benchmark_group("worker_step");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("score_enrich_encode_500_spans", |b| {
        let mut i = 0;
        b.iter_batched(
            || {
                i = (i + 1) % reqs.len();
                reqs[i].clone()
            },
            |r| black_box(p.process(Payload::Traces(r))),
            BatchSize::SmallInput,
        )
    });
    // The two whole paths from the received bytes: prost decode + score +
    // documents + drop, against the wire reader's check + score + documents.
    let bodies: Vec<bytes::Bytes> = trace_bodies(16).into_iter().map(Into::into).collect();
    g.bench_function("prost_decode_score_encode_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            let r = ExportTraceServiceRequest::decode(bodies[i].clone()).expect("valid");
            black_box(p.process(Payload::Traces(r)))
        })
    });
    g.bench_function("wire_check_score_encode_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            let spans = check_traces(&bodies[i]).expect("accepted");
            black_box(p.process(Payload::TracesWire(WireTraces {
                bytes: bodies[i].clone(),
                spans,
            })))
        })
    });
    g.finish();
}

/// The detector snapshot the sidecar writes periodically and at shutdown:
/// 8,000 span keys and 8,000 gauge series (under the default caps of
/// 10,000 keys and 50,000 series), each past its cold start.
fn snapshot(c: &mut Criterion) {
    const KEYS: usize = 8_000;
    let det = Detectors::new(&Settings::default());
    let names: Vec<String> = (0..KEYS).map(|i| format!("GET /api/v1/item/{i}")).collect();
    let mut events = Vec::new();
    let mut t: u64 = NOW_NS;
    for round in 0..40u64 {
        t += 10_000_000_000;
        for (i, name) in names.iter().enumerate() {
            let dur = 2_000_000 + ((i as u64 * 7_919 + round * 104_729) % 1_000_000);
            let obs = SpanObs {
                service: "checkout",
                name,
                kind: 2,
                end_ns: t + i as u64,
                duration_ns: dur,
                is_error: (i as u64 + round).is_multiple_of(97),
                trace_id: &[7u8; 16],
            };
            black_box(det.span(&obs, &mut events));
            let v = 100.0 + ((i as u64 * 31 + round * 17) % 50) as f64;
            black_box(det.point(key_hash(&[name.as_bytes()]), t, PointValue::Gauge(v)));
        }
        events.clear();
    }
    let bytes = det.snapshot("bench", t);
    let (spans, _, series, _) = det.stats();
    eprintln!(
        "snapshot: {spans} span keys, {series} metric series, {} bytes ({:.0} per key or series)",
        bytes.len(),
        bytes.len() as f64 / (spans + series) as f64
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("detectors.snapshot");
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements((spans + series) as u64));
    g.sample_size(20);
    g.bench_function("encode_8k_keys_8k_series", |b| {
        b.iter(|| black_box(det.snapshot("bench", t).len()))
    });
    g.bench_function("restore_8k_keys_8k_series", |b| {
        let fresh = Detectors::new(&Settings::default());
        b.iter(|| black_box(fresh.restore(&bytes, "bench").expect("restores")))
    });
    // What `pipeline.snapshot_interval` costs: encode, then temporary file,
    // fsync, rename, fsync of the directory.
    g.bench_function("save_8k_keys_8k_series", |b| {
        b.iter(|| {
            let bytes = det.snapshot("bench", t);
            otel_anomaly::pipeline::snapshot::write_atomic(&path, &bytes).expect("writes");
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    otlp_decode,
    span_scoring,
    point_scoring,
    es_document,
    bulk_body,
    worker_step,
    snapshot
);
criterion_main!(benches);
