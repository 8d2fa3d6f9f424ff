//! Processor mode's extra per-request work (issue 9): splicing the anomaly
//! attributes into a request's own bytes (`wire::enrich`), against decoding
//! the same request (work the sidecar does anyway) and against the
//! alternative that loses unknown fields, re-encoding the decoded request.
//! Inputs are the load generator's realistic payloads, 500 spans each.
//!
//! `cargo bench --bench otlp_enrich`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_anomaly::detect::Verdict;
use otel_anomaly::export::otlp::{attributes_of, wire};
use otel_anomaly::loadgen::payload::{prepare, Encoding, SignalKind};
use otel_anomaly::telemetry::Signal;
use prost::Message;

const SPANS: usize = 500;

fn bench(c: &mut Criterion) {
    let bodies: Vec<Vec<u8>> = prepare(SignalKind::Traces, Encoding::Protobuf, 8, SPANS, 8, 1)
        .iter()
        .enumerate()
        .map(|(i, p)| p.stamped(1_800_000_000_000_000_000 + i as u64))
        .collect();
    let verdict = Verdict::cold_start(3, 30);
    let adds: Vec<Vec<_>> = (0..SPANS)
        .map(|i| attributes_of(&verdict, "GET /cart", (i % 7 == 0).then_some(i as u64)))
        .collect();
    let decoded: Vec<ExportTraceServiceRequest> = bodies
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(b.as_slice()).expect("valid"))
        .collect();
    let mut g = c.benchmark_group("otlp_enrich");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("decode_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(ExportTraceServiceRequest::decode(bodies[i].as_slice()).expect("valid"))
        })
    });
    g.bench_function("wire_enrich_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(wire::enrich(Signal::traces, &bodies[i], &adds).expect("enrich"))
        })
    });
    g.bench_function("count_records_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(wire::count_records(Signal::traces, &bodies[i]).expect("count"))
        })
    });
    g.bench_function("reencode_500_spans", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % decoded.len();
            black_box(decoded[i].encode_to_vec())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
