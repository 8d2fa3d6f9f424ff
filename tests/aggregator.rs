//! The aggregator over real gRPC and HTTP on loopback: push → store →
//! incident → REST and live stream; tokens bound to environments; bad input;
//! restart; TLS; the OpenAPI document against the router.

mod agg;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use agg::*;
use common::eventually;
use otel_anomaly::config::{self, FlagOverrides};
use otel_anomaly::push::{self, PushHandle, PushOutcome, SidecarStats};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

/// A sidecar configuration whose `push:` section is set through the environment overrides.
fn sidecar_config(
    dir: &Path,
    environment: &str,
    token: &str,
    url: &str,
    extra: &[(&str, &str)],
) -> config::Config {
    let token_file = dir.join(format!("{environment}-client.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut env = BTreeMap::new();
    env.insert(
        "OTEL_ANOMALY_ENVIRONMENT".to_string(),
        environment.to_string(),
    );
    env.insert("OTEL_ANOMALY_PUSH__URL".to_string(), url.to_string());
    env.insert(
        "OTEL_ANOMALY_PUSH__TOKEN_FILE".to_string(),
        token_file.display().to_string(),
    );
    env.insert(
        "OTEL_ANOMALY_PUSH__HEARTBEAT_INTERVAL".to_string(),
        "200ms".to_string(),
    );
    env.insert(
        "OTEL_ANOMALY_PUSH__INITIAL_BACKOFF".to_string(),
        "50ms".to_string(),
    );
    env.insert(
        "OTEL_ANOMALY_PUSH__MAX_BACKOFF".to_string(),
        "200ms".to_string(),
    );
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    config::resolve(None, &env, &FlagOverrides::default()).expect("sidecar config")
}

fn start_client(cfg: &config::Config) -> (PushHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let mut registry = Registry::default();
    let (handle, _task) = push::start_from_config(cfg, &mut registry, stop.clone())
        .expect("push client")
        .expect("push configured");
    (handle, stop)
}

async fn incidents(agg: &Agg, query: &str) -> Vec<serde_json::Value> {
    let (status, body) = agg.get(&format!("/api/v1/incidents{query}")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn push_store_incident_rest_and_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let agg = Agg::start(&write_config(dir.path(), "")).await;

    // A live reader, connected before anything happens.
    let mut stream = agg
        .http
        .get(agg.url("/api/v1/stream"))
        .basic_auth(READER_USER, Some(READER_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: hello"));

    let cfg = sidecar_config(dir.path(), "dev", DEV_TOKEN, &agg.grpc_url(), &[]);
    let (handle, stop) = start_client(&cfg);
    handle.set_stats(SidecarStats {
        keys_tracked: 42,
        queue_depth: 7,
        export_lag_seconds: 0.5,
    });
    handle.add_edge("frontend", "checkout", 10);
    // Heartbeat first, so the service graph is known when the events arrive.
    eventually("heartbeat stored", WAIT, || async {
        agg.get("/api/v1/sidecars")
            .await
            .1
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    handle.send(event("e1", "dev", "checkout", "checkout / POST /pay", 92.0));
    handle.send(event("e2", "dev", "frontend", "frontend / GET /cart", 60.0));
    handle.send(event("e3", "dev", "search", "search / GET /q", 40.0));

    eventually("three events stored", WAIT, || async {
        agg.running.store.event_count().unwrap() == 3
    })
    .await;
    // The client counts once the call returns, just after the store has them.
    eventually("client counted three sent", WAIT, || async {
        handle.metrics().get(PushOutcome::sent) == 3
    })
    .await;

    // checkout and frontend are linked by the graph: one incident; search is apart.
    let list = incidents(&agg, "?environment=dev").await;
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0]["max_score"], 92.0);
    assert_eq!(list[0]["sum_score"], 152.0);
    assert_eq!(list[0]["event_count"], 2);
    assert_eq!(list[0]["severity"], "critical");
    assert_eq!(list[0]["state"], "open");
    assert_eq!(
        list[0]["services"],
        serde_json::json!(["checkout", "frontend"])
    );
    assert_eq!(list[1]["services"], serde_json::json!(["search"]));

    // Filters.
    assert_eq!(incidents(&agg, "?environment=prod").await.len(), 0);
    assert_eq!(incidents(&agg, "?severity=critical").await.len(), 1);
    assert_eq!(incidents(&agg, "?service=search").await.len(), 1);
    assert_eq!(incidents(&agg, "?state=resolved").await.len(), 0);
    assert_eq!(
        incidents(&agg, "?since=2100-01-01T00:00:00Z").await.len(),
        0
    );
    let (status, body) = agg.get("/api/v1/incidents?severity=loud").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("severity"),
        "{body}"
    );

    // The incident page: members in time order with their values.
    let id = list[0]["id"].as_i64().unwrap();
    let (status, detail) = agg.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(status, 200);
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["baseline"], 120.0);
    assert_eq!(events[0]["observed"], 870.0);
    assert_eq!(
        events[0]["exemplar_trace_ids"][0],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(agg.get("/api/v1/incidents/999999").await.0, 404);
    let (_, evs) = agg.get("/api/v1/events?service=search").await;
    assert_eq!(evs.as_array().unwrap().len(), 1);

    // Environments and sidecars.
    let (_, envs) = agg.get("/api/v1/environments").await;
    let names: Vec<&str> = envs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev", "prod"]);
    assert_eq!(envs[0]["open_incidents"], 2);
    assert_eq!(envs[0]["sidecars_healthy"], 1);
    let (_, sidecars) = agg.get("/api/v1/sidecars").await;
    assert_eq!(sidecars[0]["sidecar_id"], "dev");
    assert_eq!(sidecars[0]["keys_tracked"], 42);
    assert_eq!(sidecars[0]["queue_depth"], 7);
    assert_eq!(sidecars[0]["healthy"], true);
    let (_, graph) = agg.get("/api/v1/environments/dev/graph").await;
    assert_eq!(graph[0]["caller"], "frontend");

    // The live stream saw the incidents open.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(seen.contains("\"type\":\"incident\"") && seen.contains("\"opened\":true")) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("live update in time")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: update"), "{seen}");

    // Readers need credentials; /healthz does not.
    let r = agg
        .http
        .get(agg.url("/api/v1/incidents"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = agg
        .http
        .get(agg.url("/api/v1/incidents"))
        .basic_auth(READER_USER, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        agg.http
            .get(agg.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    stop.cancel();
    drop(stream);
    agg.stop().await;
}

#[tokio::test]
async fn wrong_environment_bad_token_and_bad_input_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agg = Agg::start(&write_config(
        dir.path(),
        "ingest: {max_batch_events: 5, max_message_bytes: 4096}\n",
    ))
    .await;
    let mut c = raw_client(agg.grpc_url()).await;

    // A dev token sending a batch with one prod event: refused whole.
    let err = push(
        &mut c,
        Some(DEV_TOKEN),
        vec![
            event("ok-1", "dev", "cart", "k", 80.0),
            event("bad-1", "prod", "cart", "k", 80.0),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("\"prod\""), "{}", err.message());
    // The prod token is bound to cluster eu.
    let err = push(
        &mut c,
        Some(PROD_TOKEN),
        vec![event("c-1", "prod", "cart", "k", 80.0)],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("cluster"));

    for (token, expect) in [
        (None, "missing bearer token"),
        (Some("not-a-token"), "invalid token"),
        (Some(EXPIRED_TOKEN), "token expired"),
    ] {
        let err = push(&mut c, token, vec![event("t-1", "dev", "cart", "k", 80.0)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().starts_with(expect), "{}", err.message());
        // No token text is echoed back.
        assert!(!err.message().contains("not-a-token"));
    }

    let mut malformed = event("m-1", "dev", "cart", "k", 80.0);
    malformed.score = f64::NAN;
    let err = push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event("m-0", "dev", "cart", "k", 80.0), malformed],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("event 1 (\"m-1\"): score"),
        "{}",
        err.message()
    );

    let oversize: Vec<_> = (0..6)
        .map(|i| event(&format!("o-{i}"), "dev", "cart", "k", 80.0))
        .collect();
    let err = push(&mut c, Some(DEV_TOKEN), oversize).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("ingest.max_batch_events"),
        "{}",
        err.message()
    );

    // Over the message size limit: refused by the decoder before anything is looked at.
    let mut big = event("big-1", "dev", "cart", "k", 80.0);
    big.explanation = "x".repeat(4000);
    let err = push(&mut c, Some(DEV_TOKEN), vec![big.clone(), big])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("limit is: 4096 bytes"),
        "{}",
        err.message()
    );

    assert_eq!(
        agg.running.store.event_count().unwrap(),
        0,
        "nothing of a refused batch is stored"
    );
    assert_eq!(agg.get("/api/v1/incidents").await.1, serde_json::json!([]));

    // Nothing else lost: the next good batch goes through, and a retry of it is a duplicate.
    let good = vec![
        event("g-1", "dev", "cart", "k", 80.0),
        event("g-2", "dev", "cart", "k2", 30.0),
    ];
    let r = push(&mut c, Some(DEV_TOKEN), good.clone()).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (2, 0));
    let r = push(&mut c, Some(DEV_TOKEN), good).await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (0, 2));
    assert_eq!(agg.running.store.event_count().unwrap(), 2);

    let metrics = agg
        .http
        .get(agg.url("/metrics"))
        .basic_auth(READER_USER, Some(READER_PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric_value(
            &metrics,
            "otel_anomaly_aggregator_refused_calls_total",
            &[("reason", "permission_denied")]
        ),
        Some(2.0)
    );
    assert_eq!(
        common::metric_value(
            &metrics,
            "otel_anomaly_aggregator_events_total",
            &[("outcome", "duplicate")]
        ),
        Some(2.0)
    );
    agg.stop().await;
}

#[tokio::test]
async fn restart_keeps_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let agg = Agg::start(&cfg_path).await;
    let mut c = raw_client(agg.grpc_url()).await;
    let batch = vec![
        event("r-1", "dev", "cart", "cart / GET", 88.0),
        event("r-2", "dev", "cart", "cart / POST", 55.0),
    ];
    push(&mut c, Some(DEV_TOKEN), batch.clone()).await.unwrap();
    let before = agg.get("/api/v1/incidents").await.1;
    assert_eq!(before.as_array().unwrap().len(), 1);
    drop(c);
    agg.stop().await;

    let agg = Agg::start(&cfg_path).await;
    let after = agg.get("/api/v1/incidents").await.1;
    assert_eq!(after, before, "incidents survive the restart unchanged");
    let mut c = raw_client(agg.grpc_url()).await;
    let r = push(&mut c, Some(DEV_TOKEN), batch).await.unwrap();
    assert_eq!(r.duplicates, 2, "event ids are remembered across restarts");
    agg.stop().await;
}

#[tokio::test]
async fn push_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
    let path = write_config(d, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "grpc: {listen: '127.0.0.1:0'}",
        &format!(
            "grpc: {{listen: '127.0.0.1:0', cert_file: {0}/cert.pem, key_file: {0}/key.pem}}",
            d.display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    let agg = Agg::start(&path).await;
    let url = format!("https://localhost:{}", agg.running.grpc_addr.port());
    let ca_file = d.join("ca.pem").display().to_string();
    let cfg = sidecar_config(
        d,
        "dev",
        DEV_TOKEN,
        &url,
        &[("OTEL_ANOMALY_PUSH__CA_FILE", &ca_file)],
    );
    let (handle, stop) = start_client(&cfg);
    handle.send(event("tls-1", "dev", "cart", "k", 80.0));
    eventually("event over TLS", WAIT, || async {
        agg.running.store.event_count().unwrap() == 1
    })
    .await;
    // Plain text to the TLS listener fails.
    let mut plain = raw_client_lazy(format!("http://{}", agg.running.grpc_addr));
    assert!(push(
        &mut plain,
        Some(DEV_TOKEN),
        vec![event("p-1", "dev", "cart", "k", 80.0)]
    )
    .await
    .is_err());
    stop.cancel();
    agg.stop().await;
}

fn raw_client_lazy(
    url: String,
) -> otel_anomaly::push::proto::push_client::PushClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    otel_anomaly::push::proto::push_client::PushClient::new(ch)
}

#[tokio::test]
async fn openapi_documents_every_route_and_every_documented_path_answers() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(otel_anomaly::aggregator::api::OPENAPI_YAML).unwrap();
    let paths: Vec<String> = doc["paths"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for (route, _) in otel_anomaly::aggregator::api::routes() {
        assert!(
            paths.iter().any(|p| p == route),
            "route {route} is not in openapi.yaml"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let agg = Agg::start(&write_config(dir.path(), "")).await;
    let mut c = raw_client(agg.grpc_url()).await;
    push(
        &mut c,
        Some(DEV_TOKEN),
        vec![event("x-1", "dev", "cart", "k", 80.0)],
    )
    .await
    .unwrap();
    let id = agg.get("/api/v1/incidents").await.1[0]["id"]
        .as_i64()
        .unwrap();
    for p in &paths {
        if doc["paths"][p.as_str()].get("get").is_none() {
            continue;
        }
        let url = agg.url(&p.replace("{id}", &id.to_string()).replace("{name}", "dev"));
        let r = agg
            .http
            .get(&url)
            .basic_auth(READER_USER, Some(READER_PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {p}");
        if p != "/healthz" {
            let anon = agg.http.get(&url).send().await.unwrap();
            assert_eq!(anon.status(), 401, "GET {p} without credentials");
        }
    }
    agg.stop().await;
}
