//! The dashboard in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from tests/e2e/dashboard): seeded incidents of two
//! environments render ranked, the sidecar table and the live badge show, a
//! pushed event appears without a reload, and the incident page draws its
//! timeline chart. Screenshots go to `target/tmp/dashboard-*.png`.

mod agg;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use agg::*;
use otel_anomaly::push::proto::push_client::PushClient;
use otel_anomaly::push::proto::{HeartbeatRequest, ServiceEdge};

fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/dashboard")
}

async fn heartbeat(
    c: &mut PushClient<tonic::transport::Channel>,
    token: &str,
    env: &str,
    cluster: &str,
) {
    let mut req = tonic::Request::new(HeartbeatRequest {
        sidecar_id: format!("{env}-sidecar"),
        environment: env.into(),
        cluster: cluster.into(),
        version: "test".into(),
        keys_tracked: 12,
        queue_depth: 3,
        export_lag_seconds: 0.2,
        edges: vec![ServiceEdge {
            caller: "frontend".into(),
            callee: "payment".into(),
            calls: 5,
        }],
        events_buffered: 0,
        events_dropped: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.heartbeat(req).await.expect("heartbeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_incidents_live_in_headless_chromium() {
    let script = harness_dir().join("dashboard.mjs");
    assert!(
        harness_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/e2e/dashboard` (scripts/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} not found: install the Debian package chromium (scripts/test.sh does when run as root) or set CHROMIUM_BIN"
    );

    let dir = tempfile::tempdir().unwrap();
    let agg = Agg::start(&write_config(dir.path(), "")).await;
    let mut c = raw_client(agg.grpc_url()).await;
    heartbeat(&mut c, DEV_TOKEN, "dev", "").await;
    heartbeat(&mut c, PROD_TOKEN, "prod", "eu").await;
    // prod: a payment latency incident over three intervals; dev: a smaller one.
    let mut prod = Vec::new();
    for (i, (score, observed)) in [(70.0, 600.0), (96.0, 870.0), (88.0, 760.0)]
        .into_iter()
        .enumerate()
    {
        let mut e = event(
            &format!("p-{i}"),
            "prod",
            "payment",
            "payment / Charge",
            score,
        );
        e.cluster = "eu".into();
        let shift = (2 - i as u64) * 60_000_000_000;
        e.start_unix_nano -= shift;
        e.end_unix_nano -= shift;
        e.observed = observed;
        prod.push(e);
    }
    push(&mut c, Some(PROD_TOKEN), prod).await.unwrap();
    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event(
            "d-1",
            "dev",
            "checkout",
            "checkout / GET /cart",
            55.0,
        )],
    )
    .await
    .unwrap();

    // A maintenance window on dev/checkout, shown on the dashboard.
    let later = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600))
        .to_string();
    let r = agg
        .http
        .post(agg.url("/api/v1/silences"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"kind": "maintenance", "environment": "dev", "service": "checkout", "ends_at": later, "comment": "checkout db upgrade", "created_by": "sre"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut child = Command::new("node")
        .arg(&script)
        .arg(agg.url("/"))
        .arg(READER_USER)
        .arg(READER_PASSWORD)
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node (Node.js is needed for the dashboard test)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |want: &str| {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("browser script did not print {want}"));
        assert_eq!(line, want, "browser script said {line:?}");
    };
    wait_line("READY");
    let mut e = event(
        "p-live",
        "prod",
        "inventory",
        "inventory / GET /stock",
        80.0,
    );
    e.cluster = "eu".into();
    push(&mut c, Some(PROD_TOKEN), vec![e]).await.unwrap();
    child.stdin.as_mut().unwrap().write_all(b"GO\n").unwrap();
    wait_line("OK");
    let status = child.wait().unwrap();
    assert!(status.success(), "browser checks failed: {status}");
    for name in [
        "dashboard-overview.png",
        "dashboard-live.png",
        "dashboard-incident.png",
    ] {
        let len = std::fs::metadata(shots.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "screenshot {name} missing or empty");
    }
    eprintln!("screenshots in {}", shots.display());
    agg.stop().await;
}
