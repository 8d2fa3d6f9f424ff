//! The bodies of the fuzz targets in `fuzz/` (issue 10), here so that the
//! regression test (`tests/fuzz_inputs.rs`) runs saved inputs through exactly
//! the code the fuzzer ran. Each function takes arbitrary bytes; an error is
//! a fine answer, a panic is a bug.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use crate::aggregator::config::TokenEntry;
use crate::aggregator::store::{Rules, Store};
use crate::config::{self, FlagOverrides};
use crate::detect::snapshot::{MAGIC, VERSION};
use crate::pipeline::process::Processor;
use crate::pipeline::{validate, AnomalyFeed, Payload};
use crate::receiver::decode::{decode, decompress, Format};
use crate::telemetry::Metrics;

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[&str] = &[
    "otlp_protobuf",
    "otlp_json",
    "gzip",
    "config",
    "push_api",
    "snapshot",
    "wal_segment",
    "wire_traces",
    "wire_metrics",
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "otlp_protobuf" => otlp(data, Format::Protobuf),
        "otlp_json" => otlp(data, Format::Json),
        "gzip" => gzip(data),
        "config" => config_text(data),
        "push_api" => push_api(data),
        "snapshot" => snapshot(data),
        "wal_segment" => wal_segment(data),
        "wire_traces" => wire_traces(data),
        "wire_metrics" => wire_metrics(data),
        _ => return false,
    }
    true
}

fn scratch_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("otel-anomaly-fuzz-{what}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

fn processor(environment: &str) -> Processor {
    let mut cfg = config::resolve(None, &BTreeMap::new(), &FlagOverrides::default())
        .expect("the built-in defaults are valid");
    cfg.settings.environment = environment.into();
    // Score from the first sample, so short inputs reach the scoring paths.
    cfg.settings.detect.spans.min_samples = 1;
    cfg.settings.detect.metrics.min_samples = 1;
    cfg.settings.detect.spans.max_keys = 64;
    cfg.settings.detect.metrics.max_series = 64;
    Processor::new(
        &cfg.settings,
        "otel",
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    )
}

fn copy(p: &Payload) -> Payload {
    match p {
        Payload::Traces(r) => Payload::Traces(r.clone()),
        Payload::Metrics(r) => Payload::Metrics(r.clone()),
        Payload::Logs(r) => Payload::Logs(r.clone()),
        Payload::TracesWire(w) => Payload::TracesWire(w.clone()),
        Payload::MetricsWire(w) => Payload::MetricsWire(w.clone()),
    }
}

/// OTLP decode (`data[0]` picks the signal) + validation + scoring +
/// documents; every document must have an id and be valid JSON.
pub fn otlp(data: &[u8], format: Format) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let payload = match which % 3 {
        0 => match decode(body, format) {
            Ok(mut r) => {
                validate::traces(&mut r);
                Payload::Traces(r)
            }
            Err(_) => return,
        },
        1 => match decode(body, format) {
            Ok(mut r) => {
                validate::metrics(&mut r);
                Payload::Metrics(r)
            }
            Err(_) => return,
        },
        _ => match decode(body, format) {
            Ok(r) => {
                validate::logs(&r);
                Payload::Logs(r)
            }
            Err(_) => return,
        },
    };
    let p = processor("fuzz");
    // Twice: the second pass scores against the state the first one built.
    let again = copy(&payload);
    for payload in [payload, again] {
        for doc in p.process(payload) {
            assert!(!doc.id.is_empty(), "document without an id");
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&doc.source) {
                panic!(
                    "document is not valid JSON ({e}): {}",
                    String::from_utf8_lossy(&doc.source)
                );
            }
        }
    }
    p.tick(u64::MAX / 2);
}

/// The wire reader (`receiver::wire`) against prost: a traces request the
/// reader accepts must decode with prost, lose no span to validation, and
/// give the same documents, byte for byte, when scored twice (the second
/// time against the state the first built).
pub fn wire_traces(data: &[u8]) {
    let Ok(spans) = crate::receiver::wire::check_traces(data) else {
        return;
    };
    let mut req = match ExportTraceServiceRequest::decode(data) {
        Ok(r) => r,
        Err(e) => panic!("the wire reader accepted a request prost refuses: {e}"),
    };
    let checked = validate::traces(&mut req);
    assert_eq!(
        (checked.accepted, checked.rejected),
        (spans, 0),
        "the wire reader and validation disagree on the spans"
    );
    let wire = crate::pipeline::WireTraces {
        bytes: bytes::Bytes::copy_from_slice(data),
        spans,
    };
    same_documents(
        || Payload::Traces(req.clone()),
        || Payload::TracesWire(wire.clone()),
    );
}

/// Scores one request decoded by prost and the same request queued as its
/// bytes on two fresh processors, twice (the second time against the state
/// the first built), and asserts the documents are the same, byte for byte.
fn same_documents(decoded: impl Fn() -> Payload, as_bytes: impl Fn() -> Payload) {
    let (by_prost, by_wire) = (processor("fuzz"), processor("fuzz"));
    for _ in 0..2 {
        let a = by_prost.process(decoded());
        let b = by_wire.process(as_bytes());
        assert_eq!(a.len(), b.len(), "document count");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.id, y.id);
            assert!(
                x.source == y.source,
                "documents differ:\nprost: {}\nwire:  {}",
                String::from_utf8_lossy(&x.source),
                String::from_utf8_lossy(&y.source)
            );
        }
    }
}

/// The metrics check (`receiver::wire_metrics`) against prost: a request
/// the check accepts must decode with prost, lose no point to validation,
/// hold the points the check counted, and give the same documents queued
/// as bytes as queued decoded (scored twice, the second time against the
/// state the first built).
pub fn wire_metrics(data: &[u8]) {
    let Ok(points) = crate::receiver::wire_metrics::check_metrics(data) else {
        return;
    };
    let mut req = match ExportMetricsServiceRequest::decode(data) {
        Ok(r) => r,
        Err(e) => panic!("the metrics check accepted a request prost refuses: {e}"),
    };
    let checked = validate::metrics(&mut req);
    assert_eq!(
        (checked.accepted, checked.rejected),
        (points, 0),
        "the metrics check and validation disagree on the points"
    );
    let wire = crate::pipeline::WireMetrics {
        bytes: bytes::Bytes::copy_from_slice(data),
        points,
    };
    same_documents(
        || Payload::Metrics(req.clone()),
        || Payload::MetricsWire(wire.clone()),
    );
}

const GZIP_LIMIT: usize = 64 << 10;

/// Request decompression: never past the cap; what we compress comes back whole.
pub fn gzip(data: &[u8]) {
    if let Ok(out) = decompress(
        bytes::Bytes::copy_from_slice(data),
        Some("gzip"),
        GZIP_LIMIT,
    ) {
        assert!(
            out.len() <= GZIP_LIMIT,
            "inflated past the cap: {}",
            out.len()
        );
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(data);
    let packed = bytes::Bytes::from(gz.finish().unwrap_or_default());
    match decompress(packed, Some("gzip"), GZIP_LIMIT) {
        Ok(out) => assert_eq!(&out[..], data, "gzip round trip changed the bytes"),
        Err(e) => assert!(data.len() > GZIP_LIMIT, "valid gzip refused: {e}"),
    }
    if let Ok(out) = decompress(bytes::Bytes::copy_from_slice(data), None, GZIP_LIMIT) {
        assert_eq!(&out[..], data);
    }
}

/// Config parsing: the text as the sidecar's file (a first line `a__b=v`
/// becomes an `OTEL_ANOMALY_A__B` override) and as the aggregator's.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (env_line, yaml) = match text.split_once('\n') {
        Some((first, rest)) if first.contains('=') && !first.contains(':') => (Some(first), rest),
        _ => (None, text),
    };
    let mut env = BTreeMap::new();
    if let Some((k, v)) = env_line.and_then(|l| l.split_once('=')) {
        env.insert(
            format!("{}{}", config::ENV_PREFIX, k.to_ascii_uppercase()),
            v.to_string(),
        );
    }
    let dir = scratch_dir("config");
    let path = dir.join("sidecar.yaml");
    if std::fs::write(&path, yaml).is_ok() {
        let _ = config::resolve(Some(&path), &env, &FlagOverrides::default());
    }
    let path = dir.join("aggregator.yaml");
    if std::fs::write(&path, yaml).is_ok() {
        let _ = crate::aggregator::config::load(&path);
    }
}

struct PushFixture {
    dev: TokenEntry,
    store: Store,
}

fn push_fixture() -> &'static PushFixture {
    static F: OnceLock<PushFixture> = OnceLock::new();
    F.get_or_init(|| {
        let d = scratch_dir("push");
        std::fs::write(d.join("dev.token"), "fuzz-dev-token").expect("scratch dir");
        let cfg_path = d.join("aggregator.yaml");
        std::fs::write(
            &cfg_path,
            format!(
                "data_dir: {0}\nhttp: {{anonymous: true}}\nsidecars: [{{name: dev, environment: dev, token_file: {0}/dev.token}}]\n",
                d.display()
            ),
        )
        .expect("scratch dir");
        let cfg = crate::aggregator::config::load(&cfg_path).expect("fixture config");
        let rules = Rules {
            resolve_after: Duration::from_secs(120),
            max_duration: Duration::from_secs(3600),
            retention: Duration::from_secs(86_400),
        };
        let _ = std::fs::remove_file(d.join("store.sqlite"));
        let store = Store::open(&d.join("store.sqlite"), rules).expect("store");
        PushFixture {
            dev: cfg.tokens[0].clone(),
            store,
        }
    })
}

/// The push API's message handling: decode, check against a `dev` sidecar's
/// scope and limits, store; storing the same batch again adds nothing.
pub fn push_api(data: &[u8]) {
    use crate::push::proto::{HeartbeatRequest, PushEventsRequest};
    let _ = HeartbeatRequest::decode(data);
    let Ok(req) = PushEventsRequest::decode(data) else {
        return;
    };
    let f = push_fixture();
    if crate::aggregator::grpc::check_batch(&f.dev, &req.events, 50).is_err()
        || req.events.is_empty()
    {
        return;
    }
    let now = 1_800_000_000_000_000_000i64;
    let first = f
        .store
        .ingest("dev", &req.events, now)
        .expect("the store takes a checked batch");
    let again = f
        .store
        .ingest("dev", &req.events, now)
        .expect("the store takes a checked batch");
    assert_eq!(again.accepted, 0, "a repeated batch stored new events");
    assert!(first.accepted as usize + first.duplicates as usize <= req.events.len());
}

/// The snapshot loader: `data[0]` picks raw file bytes, a valid header before
/// fuzzed gzip, or a valid file around a fuzzed body. A load fails with a
/// reason or leaves detectors that still score and snapshot again.
pub fn snapshot(data: &[u8]) {
    const ENV: &str = "fuzz";
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let header = || {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut out = header();
            out.extend_from_slice(rest);
            out
        }
        _ => {
            let mut gz = flate2::write::GzEncoder::new(header(), flate2::Compression::fast());
            let _ = gz.write_all(rest);
            gz.finish().unwrap_or_default()
        }
    };
    let p = processor(ENV);
    if p.detectors().restore(&bytes, ENV).is_err() {
        return;
    }
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "GET /".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let _ = p.process(Payload::Traces(req));
    p.tick(1_700_000_100_000_000_000);
    let again = p.detectors().snapshot(ENV, 1);
    p.detectors()
        .restore(&again, ENV)
        .expect("a snapshot we wrote loads back");
}

/// The write-ahead queue's segment reader (what start-up runs on every
/// segment): the valid prefix holds exactly the records it lists, each of
/// which decodes again; scanning the valid prefix alone finds the same.
fn wal_segment(data: &[u8]) {
    use crate::export::wal::segment::{decode_record, scan};
    let Ok(found) = scan(data) else {
        return;
    };
    let valid = usize::try_from(found.valid_len).expect("fits");
    assert!(valid <= data.len(), "valid prefix past the end");
    let mut end = 0usize;
    for r in &found.records {
        let start = usize::try_from(r.offset).expect("fits");
        let stop = start + r.len as usize;
        assert!(
            start >= end && stop <= valid,
            "records overlap or leave the valid prefix"
        );
        end = stop;
        let (signal, records, body) =
            decode_record(&data[start..stop]).expect("a record the scan accepted decodes");
        assert_eq!((signal, records), (r.signal, r.records));
        let _ = crate::export::wal::decode_payload(signal, body);
    }
    let again = scan(&data[..valid]).expect("the valid prefix is a segment");
    assert_eq!(again.records.len(), found.records.len());
    assert_eq!(again.valid_len, found.valid_len);
}
