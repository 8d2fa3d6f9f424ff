//! The aggregator is down: the sidecar's span pipeline carries on unaffected,
//! anomaly events wait in the push buffer up to its cap, the oldest are
//! dropped and counted, and the rest arrive once the aggregator is up.

mod agg;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agg::*;
use common::{eventually, metric_value, span, trace_request, Sidecar};
use otel_anomaly::config::{self, FlagOverrides};

const WAIT: Duration = Duration::from_secs(20);

fn span_docs(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("ndjson").join("traces-otel-dev.000001.ndjson"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_down_spans_flow_events_buffer_then_drop_oldest() {
    let dir = tempfile::tempdir().unwrap();
    // An address nobody listens on (yet).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let token_file = dir.path().join("push.token");
    std::fs::write(&token_file, DEV_TOKEN).unwrap();
    let env: BTreeMap<String, String> = [
        ("OTEL_ANOMALY_PUSH__URL", format!("http://{dead}")),
        (
            "OTEL_ANOMALY_PUSH__TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("OTEL_ANOMALY_PUSH__BUFFER_EVENTS", "5".into()),
        ("OTEL_ANOMALY_PUSH__BATCH_EVENTS", "2".into()),
        ("OTEL_ANOMALY_PUSH__HEARTBEAT_INTERVAL", "200ms".into()),
        ("OTEL_ANOMALY_PUSH__INITIAL_BACKOFF", "50ms".into()),
        ("OTEL_ANOMALY_PUSH__MAX_BACKOFF", "200ms".into()),
        ("OTEL_ANOMALY_PUSH__TIMEOUT", "2s".into()),
        ("OTEL_ANOMALY_PUSH__SIDECAR_ID", "dev-sidecar".into()),
        // No detector events of its own in this test: only the ones sent below.
        ("OTEL_ANOMALY_DETECT__SPANS__MIN_SAMPLES", "1000000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut cfg = config::resolve(None, &env, &FlagOverrides::default()).unwrap();
    let base = common::base_config(dir.path());
    cfg.settings.receiver = base.settings.receiver.clone();
    cfg.settings.admin = base.settings.admin.clone();
    cfg.settings.data_dir = base.settings.data_dir.clone();
    cfg.settings.pipeline.workers = 1;
    cfg.settings.shutdown_timeout = Duration::from_secs(5);
    // The aggregator's dev token is for environment "dev".
    cfg.settings.environment = "dev".into();
    let sidecar = Sidecar::start(cfg).await;
    let handle = sidecar.running.push.clone().expect("push configured");

    // Spans are accepted and written while the aggregator is unreachable.
    let mut grpc = sidecar.grpc().await;
    for batch in 0..10u32 {
        let spans = (0..20).map(|i| span(batch * 20 + i, "GET /cart")).collect();
        let resp = grpc
            .export(trace_request(spans))
            .await
            .expect("spans accepted");
        assert_eq!(resp.into_inner().partial_success, None);
    }
    eventually("200 spans written", WAIT, || async {
        span_docs(dir.path()) == 200
    })
    .await;
    let text = sidecar.metrics_text().await;
    assert_eq!(
        metric_value(&text, "otel_anomaly_rejected_records_total", &[]),
        None,
        "{text}"
    );

    // Twelve events into a buffer of five: the seven oldest are dropped and counted.
    for i in 0..12 {
        handle.send(event(
            &format!("e{i:02}"),
            "dev",
            "cart",
            "cart / GET /cart",
            80.0,
        ));
    }
    eventually(
        "buffer full, 7 dropped (metric on /metrics)",
        WAIT,
        || async {
            let text = sidecar.metrics_text().await;
            handle.buffered() == 5
                && metric_value(
                    &text,
                    "otel_anomaly_push_events_total",
                    &[("outcome", "dropped")],
                ) == Some(7.0)
                && metric_value(&text, "otel_anomaly_push_buffered_events", &[]) == Some(5.0)
        },
    )
    .await;
    // The pipeline still takes spans at once.
    let resp = grpc
        .export(trace_request(vec![span(9999, "GET /cart")]))
        .await
        .expect("spans accepted");
    assert_eq!(resp.into_inner().partial_success, None);
    eventually("span 201 written", WAIT, || async {
        span_docs(dir.path()) == 201
    })
    .await;

    // The aggregator comes up on that address: the five newest arrive, the heartbeat reports the drops.
    let cfg_path = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg_path).unwrap().replace(
        "grpc: {listen: '127.0.0.1:0'}",
        &format!("grpc: {{listen: '{dead}'}}"),
    );
    std::fs::write(&cfg_path, text).unwrap();
    let agg = Agg::start(&cfg_path).await;
    eventually("buffered events delivered", WAIT, || async {
        agg.running.store.event_count().unwrap() == 5
    })
    .await;
    let (_, events) = agg.get("/api/v1/events?environment=dev").await;
    let mut ids: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["e07", "e08", "e09", "e10", "e11"]);
    eventually("heartbeat with the drop count", WAIT, || async {
        let (_, s) = agg.get("/api/v1/sidecars").await;
        s[0]["sidecar_id"] == "dev-sidecar"
            && s[0]["events_dropped"] == 7
            && s[0]["events_buffered"] == 0
    })
    .await;
    assert_eq!(handle.buffered(), 0);

    sidecar.shutdown().await;
    agg.stop().await;
}
