//! Shared by the OTLP targets: decoded requests go through validation and the
//! sidecar's processor (scoring, enrichment, document encoding), and every
//! document must be valid JSON with an id.

use std::collections::BTreeMap;
use std::sync::Arc;

use otel_anomaly::config::{self, FlagOverrides};
use otel_anomaly::pipeline::process::Processor;
use otel_anomaly::pipeline::{validate, AnomalyFeed, Payload};
use otel_anomaly::receiver::decode::{decode, Format};
use otel_anomaly::telemetry::Metrics;

fn processor() -> Processor {
    let mut cfg = config::resolve(None, &BTreeMap::new(), &FlagOverrides::default())
        .expect("default config");
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

/// `data[0]` picks the signal; the rest is the body in `format`.
pub fn run(data: &[u8], format: Format) {
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
    let p = processor();
    // Twice: the second pass scores against the state the first one built.
    let again = match &payload {
        Payload::Traces(r) => Payload::Traces(r.clone()),
        Payload::Metrics(r) => Payload::Metrics(r.clone()),
        Payload::Logs(r) => Payload::Logs(r.clone()),
    };
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
