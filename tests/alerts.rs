//! Alerts reach a real Prometheus Alertmanager (the Debian package, started
//! here on loopback) with the right labels, resolve when the incident ends,
//! and are suppressed by an Alertmanager silence; a webhook that fails twice
//! gets the notification on the third attempt (an in-process fake, for the
//! fault injection).

mod agg;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agg::*;
use common::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// The Alertmanager binary: `ALERTMANAGER_BIN`, else the Debian package's.
fn alertmanager_bin() -> PathBuf {
    let p = std::env::var_os("ALERTMANAGER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus-alertmanager"));
    assert!(
        p.is_file(),
        "{} not found: install the Debian package prometheus-alertmanager (scripts/test.sh does when run as root) or set ALERTMANAGER_BIN",
        p.display()
    );
    p
}

/// A child process killed when the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start_alertmanager(dir: &Path) -> (Proc, String) {
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let addr = free_addr();
    let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
    let child = Command::new(alertmanager_bin())
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start alertmanager");
    let proc = Proc(child);
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    eventually("alertmanager ready", WAIT, || async {
        http.get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    (proc, url)
}

async fn am_alerts(url: &str) -> Vec<serde_json::Value> {
    reqwest::get(format!("{url}/api/v2/alerts"))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn with_incident(alerts: &[serde_json::Value], id: i64) -> Option<&serde_json::Value> {
    let want = id.to_string();
    alerts
        .iter()
        .find(|a| a["labels"]["incident_id"].as_str() == Some(want.as_str()))
}

/// A webhook receiver that answers 500 to the first `fail_first` requests.
async fn fake_webhook(
    fail_first: usize,
) -> (
    String,
    Arc<Mutex<Vec<serde_json::Value>>>,
    Arc<Mutex<usize>>,
) {
    use axum::http::StatusCode;
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let calls: Arc<Mutex<usize>> = Arc::default();
    let (g, c) = (got.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                let n = {
                    let mut c = c.lock().unwrap();
                    *c += 1;
                    *c
                };
                if n <= fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                g.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), got, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_receives_resolves_and_silences() {
    let dir = tempfile::tempdir().unwrap();
    let (_am, am_url) = start_alertmanager(dir.path()).await;
    let (hook_url, hook_got, hook_calls) = fake_webhook(2).await;
    let extra = format!(
        "incidents: {{resolve_after: 3s, sweep_interval: 200ms}}
alerts:
  interval: 200ms
  alertmanager: {{url: '{am_url}', min_severity: major}}
  webhooks:
    - {{url: '{hook_url}', min_severity: critical, environments: [dev]}}
http: {{listen: '127.0.0.1:0', anonymous: true, external_url: 'http://dash.example:8080', admin_token_file: '{admin}'}}
",
        admin = dir.path().join("admin.token").display()
    );
    let path = write_config(dir.path(), &extra);
    // The extra `http:` replaces the default one (YAML keeps the last key).
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        &text
            .lines()
            .find(|l| l.starts_with("http:"))
            .unwrap()
            .to_string(),
        "",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let agg = Agg::start(&path).await;
    let mut c = raw_client(agg.grpc_url()).await;

    // A silence on dev/search, set in Alertmanager.
    let now = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let later = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600))
        .to_string();
    let silence = serde_json::json!({
        "matchers": [
            {"name": "environment", "value": "dev", "isRegex": false, "isEqual": true},
            {"name": "service", "value": "search", "isRegex": false, "isEqual": true}
        ],
        "startsAt": now, "endsAt": later, "createdBy": "test", "comment": "maintenance"
    });
    let r = reqwest::Client::new()
        .post(format!("{am_url}/api/v2/silences"))
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![
            event("a-1", "dev", "cart", "cart / GET /cart", 91.0),
            event("a-2", "dev", "search", "search / GET /q", 85.0),
            event("a-3", "dev", "ads", "ads / GET /ad", 30.0),
        ],
    )
    .await
    .unwrap();
    let list = agg.get("/api/v1/incidents").await.1;
    let id_of = |svc: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|i| i["service"] == svc)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (cart, search, ads) = (id_of("cart"), id_of("search"), id_of("ads"));

    eventually("cart and search alerts in alertmanager", WAIT, || async {
        let a = am_alerts(&am_url).await;
        with_incident(&a, cart).is_some() && with_incident(&a, search).is_some()
    })
    .await;
    let alerts = am_alerts(&am_url).await;
    let a = with_incident(&alerts, cart).unwrap();
    assert_eq!(a["labels"]["alertname"], "OtelAnomalyIncident");
    assert_eq!(a["labels"]["environment"], "dev");
    assert_eq!(a["labels"]["service"], "cart");
    assert_eq!(a["labels"]["signal"], "traces");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["status"]["state"], "active");
    assert_eq!(
        a["annotations"]["dashboard"],
        format!("http://dash.example:8080/#/incidents/{cart}")
    );
    assert!(a["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("870 ms"));
    // The silence holds the search alert.
    let s = with_incident(&alerts, search).unwrap();
    assert_eq!(s["status"]["state"], "suppressed", "{s:#}");
    assert!(!s["status"]["silencedBy"].as_array().unwrap().is_empty());
    // Minor is below min_severity: never sent.
    assert!(with_incident(&alerts, ads).is_none());

    // The webhook (critical, dev) got the firing cart notification on its third attempt.
    eventually("webhook firing notification", WAIT, || async {
        hook_got
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["status"] == "firing" && b["incident"]["id"] == cart)
    })
    .await;
    assert!(
        *hook_calls.lock().unwrap() >= 3,
        "two failures, then success"
    );

    // An escalation changes the severity label: the alert under the old label ends.
    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event("q-1", "dev", "queue", "queue / publish", 60.0)],
    )
    .await
    .unwrap();
    let queue = agg.get("/api/v1/incidents?service=queue").await.1[0]["id"]
        .as_i64()
        .unwrap();
    let sev_of = |alerts: &[serde_json::Value], sev: &str| {
        alerts.iter().any(|a| {
            a["labels"]["incident_id"].as_str() == Some(queue.to_string().as_str())
                && a["labels"]["severity"] == sev
                && a["status"]["state"] == "active"
        })
    };
    eventually("major queue alert", WAIT, || async {
        sev_of(&am_alerts(&am_url).await, "major")
    })
    .await;
    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event("q-2", "dev", "queue", "queue / publish", 95.0)],
    )
    .await
    .unwrap();
    eventually(
        "critical queue alert replaces the major one",
        WAIT,
        || async {
            let a = am_alerts(&am_url).await;
            sev_of(&a, "critical") && !sev_of(&a, "major")
        },
    )
    .await;

    // A maintenance window set through the aggregator's API holds dev/billing back.
    let window = serde_json::json!({
        "kind": "maintenance", "environment": "dev", "service": "billing",
        "ends_at": later, "comment": "db migration", "created_by": "test"
    });
    let http = reqwest::Client::new();
    let r = http
        .post(agg.url("/api/v1/silences"))
        .json(&window)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "writes need the admin token");
    let r = http
        .post(agg.url("/api/v1/silences"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&window)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(created["active"], true);
    let listed = agg.get("/api/v1/silences").await.1;
    assert_eq!(listed[0]["comment"], "db migration");
    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event("b-1", "dev", "billing", "billing / invoice", 97.0)],
    )
    .await
    .unwrap();
    let billing = agg.get("/api/v1/incidents?service=billing").await.1[0]["id"]
        .as_i64()
        .unwrap();
    // A later incident's alert arriving shows the alerter has run past billing's.
    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event("z-1", "dev", "zebra", "zebra / run", 90.0)],
    )
    .await
    .unwrap();
    let zebra = agg.get("/api/v1/incidents?service=zebra").await.1[0]["id"]
        .as_i64()
        .unwrap();
    eventually("zebra alert", WAIT, || async {
        with_incident(&am_alerts(&am_url).await, zebra).is_some()
    })
    .await;
    assert!(
        with_incident(&am_alerts(&am_url).await, billing).is_none(),
        "billing is in maintenance"
    );
    // Ending the window lets the alert out.
    let r = http
        .delete(agg.url(&format!("/api/v1/silences/{}", created["id"])))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("billing alert after the window", WAIT, || async {
        with_incident(&am_alerts(&am_url).await, billing)
            .is_some_and(|a| a["status"]["state"] == "active")
    })
    .await;

    // No more events: after resolve_after the incident resolves, and so does the alert.
    eventually("incident resolved", WAIT, || async {
        agg.get(&format!("/api/v1/incidents/{cart}")).await.1["incident"]["state"] == "resolved"
    })
    .await;
    eventually("alert resolved in alertmanager", WAIT, || async {
        let a = am_alerts(&am_url).await;
        with_incident(&a, cart).is_none_or(|x| x["status"]["state"] != "active")
    })
    .await;
    eventually("webhook resolved notification", WAIT, || async {
        hook_got
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["status"] == "resolved" && b["incident"]["id"] == cart)
    })
    .await;
    // Each state was delivered once (dedup), whatever the retries.
    let firing = hook_got
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["incident"]["id"] == cart && b["status"] == "firing")
        .count();
    assert_eq!(firing, 1);
    agg.stop().await;
}
