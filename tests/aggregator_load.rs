//! Load measurements of the push path (not run by default; they print, never
//! assert on time). Bounded in count and time; loopback only.
//!
//! ```sh
//! cargo test --release --test aggregator_load -- --ignored --nocapture
//! ```
//! A smoke version (small counts) runs in CI as `load_smoke`.

mod agg;
mod common;

use std::time::{Duration, Instant};

use agg::*;
use otel_anomaly::push::proto::AnomalyEvent;

const CAP: Duration = Duration::from_secs(120);

fn batch(b: usize, size: usize) -> Vec<AnomalyEvent> {
    (0..size)
        .map(|i| {
            let n = b * size + i;
            let service = format!("svc-{}", n % 20);
            let mut e = event(
                &format!("load-{n}"),
                "dev",
                &service,
                &format!("{service} / op-{}", n % 7),
                25.0 + (n % 75) as f64,
            );
            // Spread over time so grouping sees both joins and new incidents.
            let shift = ((n % 50) as u64) * 30_000_000_000;
            e.start_unix_nano -= shift;
            e.end_unix_nano -= shift;
            e
        })
        .collect()
}

async fn ingest(batches: usize, size: usize) -> (f64, Vec<Duration>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let agg = Agg::start(&write_config(
        dir.path(),
        "ingest: {max_batch_events: 1000}\n",
    ))
    .await;
    let mut c = raw_client(agg.grpc_url()).await;
    let all: Vec<Vec<AnomalyEvent>> = (0..batches).map(|b| batch(b, size)).collect();
    let started = Instant::now();
    let mut lat = Vec::with_capacity(batches);
    for b in all {
        if started.elapsed() > CAP {
            break;
        }
        let t = Instant::now();
        let r = push(&mut c, Some(DEV_TOKEN), b).await.unwrap();
        assert_eq!(r.accepted as usize, size);
        lat.push(t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let stored = agg.running.store.event_count().unwrap();
    let incidents = agg
        .get("/api/v1/incidents?limit=1000")
        .await
        .1
        .as_array()
        .unwrap()
        .len() as i64;
    agg.stop().await;
    lat.sort();
    (stored as f64 / secs, lat, incidents)
}

fn report(batches: usize, size: usize, (rate, lat, incidents): (f64, Vec<Duration>, i64)) {
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "push ingest: {batches} batches × {size} events: {rate:.0} events/s, batch latency p50 {:?} p99 {:?} max {:?}, {incidents} incidents",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
}

#[tokio::test]
async fn load_smoke() {
    let (rate, lat, incidents) = ingest(5, 100).await;
    assert_eq!(lat.len(), 5);
    assert!(rate > 0.0 && incidents > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement; run with --ignored --nocapture"]
async fn load_push_ingest() {
    for (batches, size) in [(200, 100), (100, 500)] {
        report(batches, size, ingest(batches, size).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement; run with --ignored --nocapture"]
async fn load_push_handle_send() {
    // The sidecar side with the aggregator down: what a detector pays per event.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "x").unwrap();
    let env: std::collections::BTreeMap<String, String> = [
        (
            "OTEL_ANOMALY_PUSH__URL".to_string(),
            format!("http://{dead}"),
        ),
        (
            "OTEL_ANOMALY_PUSH__TOKEN_FILE".to_string(),
            token.display().to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let cfg = otel_anomaly::config::resolve(None, &env, &Default::default()).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut reg = prometheus_client::registry::Registry::default();
    let (handle, _task) = otel_anomaly::push::start_from_config(&cfg, &mut reg, stop.clone())
        .unwrap()
        .unwrap();
    let n = 1_000_000;
    let ev = event("x", "default", "svc", "svc / op", 80.0);
    let started = Instant::now();
    for _ in 0..n {
        handle.send(ev.clone());
    }
    let per = started.elapsed() / n;
    println!(
        "PushHandle::send with the aggregator down: {per:?} per event (incl. clone), buffered {}, dropped {}",
        handle.buffered(),
        handle.metrics().get(otel_anomaly::push::PushOutcome::dropped)
    );
    stop.cancel();
}
