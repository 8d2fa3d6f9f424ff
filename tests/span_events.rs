//! End to end: a latency fault on one span key of a real sidecar becomes an
//! interval-level anomaly event, pushed over the real push API to a real
//! aggregator, where it opens an incident for the sidecar's environment,
//! with the key, the explanation and exemplar trace ids.

mod agg;
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agg::*;
use common::{eventually, trace_request, Sidecar};
use opentelemetry_proto::tonic::trace::v1::Span;

const WAIT: Duration = Duration::from_secs(30);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `n` spans of "GET /cart" ending now, lasting about `ms` milliseconds each.
fn spans(seq: &mut u32, n: u32, ms: u64) -> Vec<Span> {
    let end = now_ns();
    (0..n)
        .map(|_| {
            *seq += 1;
            let i = *seq;
            let mut s = common::span(i, "GET /cart");
            let dur = (ms + u64::from(i % 7)) * 1_000_000;
            s.end_time_unix_nano = end;
            s.start_time_unix_nano = end - dur;
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_fault_becomes_an_incident_in_the_aggregator() {
    let dir = tempfile::tempdir().unwrap();
    let agg = Agg::start(&write_config(dir.path(), "")).await;

    let cfg = pushing_sidecar_config(
        dir.path(),
        "dev",
        DEV_TOKEN,
        &agg.grpc_url(),
        &[("OTEL_ANOMALY_DETECT__SPANS__INTERVAL", "1s")],
    );
    let sidecar = Sidecar::start(cfg).await;
    let mut grpc = sidecar.grpc().await;
    let mut seq = 0;

    // Three seconds of normal traffic (~10 ms), then two seconds at ~200 ms.
    for _ in 0..15 {
        grpc.export(trace_request(spans(&mut seq, 40, 10)))
            .await
            .expect("accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, before) = agg.get("/api/v1/events?environment=dev").await;
    assert_eq!(
        before.as_array().map(Vec::len),
        Some(0),
        "normal traffic makes no event: {before}"
    );
    for _ in 0..10 {
        grpc.export(trace_request(spans(&mut seq, 40, 200)))
            .await
            .expect("accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    eventually("the span event reaches the aggregator", WAIT, || async {
        agg.get("/api/v1/events?environment=dev")
            .await
            .1
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["signal"] == "traces"))
    })
    .await;
    let (_, events) = agg.get("/api/v1/events?environment=dev").await;
    let ev = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["signal"] == "traces")
        .unwrap()
        .clone();
    assert_eq!(ev["service"], "checkout", "{ev}");
    let key = ev["key"].as_str().unwrap();
    assert!(
        key.starts_with("checkout / GET /cart / server / latency_"),
        "{ev}"
    );
    let explanation = ev["explanation"].as_str().unwrap();
    assert!(explanation.contains("GET /cart"), "{ev}");
    assert!(ev["score"].as_f64().unwrap() >= 80.0, "{ev}");
    // Exemplars are trace ids of the slow spans (common::trace_id: a5 … then the span number).
    let exemplars = ev["exemplar_trace_ids"].as_array().unwrap();
    assert!(!exemplars.is_empty(), "{ev}");
    for t in exemplars {
        let t = t.as_str().unwrap();
        assert_eq!(t.len(), 32, "{ev}");
        let n = u32::from_str_radix(&t[24..], 16).unwrap();
        assert!(
            n > 15 * 40,
            "exemplar {t} is a span of the slow phase: {ev}"
        );
    }
    let (_, incidents) = agg.get("/api/v1/incidents?environment=dev").await;
    let incidents = incidents.as_array().unwrap().clone();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    sidecar.shutdown().await;
    agg.stop().await;
}
