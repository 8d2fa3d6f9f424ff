//! The detector snapshot loader: `data[0]` picks raw file bytes, a valid
//! header around fuzzed gzip content, or a valid file around a fuzzed
//! postcard body; a load either fails with a reason or leaves detectors
//! that still score.
#![no_main]
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_anomaly::config::{self, FlagOverrides};
use otel_anomaly::detect::snapshot::{MAGIC, VERSION};
use otel_anomaly::pipeline::process::Processor;
use otel_anomaly::pipeline::{AnomalyFeed, Payload};
use otel_anomaly::telemetry::Metrics;

const ENV: &str = "fuzz";

fn file_of(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(rest);
            out
        }
        _ => file_of(rest),
    };
    let mut cfg = config::resolve(None, &BTreeMap::new(), &FlagOverrides::default()).unwrap();
    cfg.settings.environment = ENV.into();
    cfg.settings.detect.spans.min_samples = 1;
    let p = Processor::new(
        &cfg.settings,
        "otel",
        Arc::new(Metrics::default()),
        Arc::new(AnomalyFeed::default()),
    );
    if p.detectors().restore(&bytes, ENV).is_err() {
        return;
    }
    // Restored state must still score and snapshot again.
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
    p.detectors().restore(&again, ENV).expect("a snapshot we wrote loads back");
});
