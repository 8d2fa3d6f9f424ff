//! Detector state across restarts, against the real sidecar: what it learned
//! before a shutdown is there after the restart (no second cold start), a
//! snapshot of another environment stops start-up with a clear error, and a
//! damaged snapshot is moved aside instead of crashing the sidecar.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Every span document written so far, from all NDJSON trace files.
fn span_docs(dir: &Path) -> Vec<serde_json::Value> {
    ndjson_docs(dir, "traces-")
}

fn severity_of(dir: &Path, name: &str) -> Vec<String> {
    span_docs(dir)
        .iter()
        .filter(|d| d["name"] == name)
        .map(|d| d["anomaly"]["severity"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sc = Sidecar::start(base_config(dir.path())).await;
    // 100 spans: past the 50-span cold start.
    let spans: Vec<_> = (0..100).map(|i| span(i, "GET /learned")).collect();
    assert!(sc
        .post_traces(&trace_request(spans))
        .await
        .status()
        .is_success());
    eventually("100 documents written", Duration::from_secs(20), || {
        let n = severity_of(dir.path(), "GET /learned").len();
        async move { n == 100 }
    })
    .await;
    sc.shutdown().await;
    let snap = dir.path().join("detectors.snap");
    assert!(snap.exists(), "a snapshot is written at shutdown");

    let sc = Sidecar::start(base_config(dir.path())).await;
    assert!(sc
        .post_traces(&trace_request(vec![span(100, "GET /learned")]))
        .await
        .status()
        .is_success());
    eventually(
        "the 101st document written",
        Duration::from_secs(20),
        || {
            let n = severity_of(dir.path(), "GET /learned").len();
            async move { n == 101 }
        },
    )
    .await;
    sc.shutdown().await;
    let severities = severity_of(dir.path(), "GET /learned");
    // The first run: 50 spans of cold start, then scored; the span after the
    // restart is scored too, because the key kept its history.
    let cold = severities.iter().filter(|s| *s == "cold_start").count();
    assert_eq!(cold, 50, "{severities:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_another_environment_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = base_config(dir.path());
    cfg.settings.environment = "staging".into();
    let sc = Sidecar::start(cfg).await;
    sc.shutdown().await;

    let cfg = base_config(dir.path());
    let token = tokio_util::sync::CancellationToken::new();
    let err = match otel_anomaly::sidecar::start(cfg, token).await {
        Ok(_) => panic!("a snapshot of environment staging must not be used by {ENV}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"staging\"") && err.contains(ENV), "{err}");
    assert!(err.contains("detect.snapshot.path"), "{err}");
    assert!(
        dir.path().join("detectors.snap").exists(),
        "the other environment's state is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshot_is_moved_aside_and_the_sidecar_starts_cold() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("detectors.snap"),
        b"OTANSNAP\x01\x00\x00\x00garbage",
    )
    .expect("write");
    let sc = Sidecar::start(base_config(dir.path())).await;
    sc.assert_still_serving(7).await;
    sc.shutdown().await;
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("detectors.snap.unusable-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept for inspection");
    // And a fresh snapshot replaced it at shutdown.
    let fresh = std::fs::read(dir.path().join("detectors.snap")).expect("new snapshot");
    assert!(fresh.starts_with(b"OTANSNAP"));
}
