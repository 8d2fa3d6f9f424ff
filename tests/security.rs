//! Auth and secrets: bearer tokens on the OTLP receivers (gRPC and HTTP),
//! every state-changing route of the aggregator's OpenAPI document refused
//! without the admin token, and no secret in the logs of real processes that
//! use every kind of secret.

mod agg;
mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use tonic::Code;

const OTLP_TOKEN: &str = "otlp-token-Q7s9d2Kx";
const OTLP_TOKEN_NEXT: &str = "otlp-token-next-L4m8";

fn auth_config(dir: &Path) -> otel_anomaly::config::Config {
    let a = dir.join("otlp.token");
    let b = dir.join("otlp-next.token");
    std::fs::write(&a, format!("{OTLP_TOKEN}\n")).unwrap();
    std::fs::write(&b, OTLP_TOKEN_NEXT).unwrap();
    let env = [
        ("OTEL_ANOMALY_ENVIRONMENT", ENV.to_string()),
        ("OTEL_ANOMALY_DATA_DIR", dir.display().to_string()),
        ("OTEL_ANOMALY_RECEIVER__GRPC__LISTEN", "127.0.0.1:0".into()),
        ("OTEL_ANOMALY_RECEIVER__HTTP__LISTEN", "127.0.0.1:0".into()),
        ("OTEL_ANOMALY_ADMIN__LISTEN", "127.0.0.1:0".into()),
        ("OTEL_ANOMALY_PIPELINE__WORKERS", "1".into()),
        (
            "OTEL_ANOMALY_RECEIVER__AUTH__TOKEN_FILES",
            format!(
                "[{:?}, {:?}]",
                a.display().to_string(),
                b.display().to_string()
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    otel_anomaly::config::resolve(None, &env, &Default::default())
        .expect("config with receiver.auth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_needs_a_bearer_token_when_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(auth_config(dir.path())).await;
    let body = trace_request(vec![span(1, "GET /auth")]).encode_to_vec();
    let send = |token: Option<&'static str>, ct: &'static str, body: Vec<u8>| {
        let mut r = sc
            .http
            .post(sc.otlp_url("/v1/traces"))
            .header("content-type", ct)
            .body(body);
        if let Some(t) = token {
            r = r.header("authorization", t);
        }
        r.send()
    };
    // No token: 401, a google.rpc.Status with UNAUTHENTICATED, and a challenge.
    let r = send(None, "application/x-protobuf", body.clone())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let st = RpcStatus::decode(r.bytes().await.unwrap().as_ref()).unwrap();
    assert_eq!(st.code, 16);
    assert!(
        st.message.contains("missing bearer token"),
        "{}",
        st.message
    );
    // Wrong token, in JSON.
    let r = send(Some("Bearer nope"), "application/json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], 16);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("invalid bearer token"));
    // Another scheme.
    let r = send(
        Some("Basic b3RscDp4"),
        "application/x-protobuf",
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Either configured token is accepted (rotation).
    for t in [
        format!("Bearer {OTLP_TOKEN}"),
        format!("bearer {OTLP_TOKEN_NEXT}"),
    ] {
        let r = sc
            .http
            .post(sc.otlp_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("authorization", t)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let text = sc.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "otel_anomaly_rejected_records_total",
            &[("signal", "traces"), ("reason", "unauthenticated")]
        ),
        Some(3.0),
        "{text}"
    );
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_before_the_body_is_read() {
    // An unauthenticated client gets 401, not 413/415/400: the body is not looked at.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = auth_config(dir.path());
    cfg.settings.receiver.max_request_bytes = 1024;
    cfg.settings.receiver.max_decompressed_bytes = 4096;
    let sc = Sidecar::start(cfg).await;
    for (ct, enc, body) in [
        ("application/x-protobuf", None, vec![0u8; 4096]),
        ("application/x-protobuf", Some("br"), vec![1, 2, 3]),
        ("application/x-protobuf", Some("gzip"), b"not gzip".to_vec()),
    ] {
        let r = sc.post("/v1/traces", ct, enc, body).await;
        assert_eq!(r.status().as_u16(), 401, "{ct} {enc:?}");
    }
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_needs_a_bearer_token_when_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(auth_config(dir.path())).await;
    let mut client = sc.grpc().await;
    let req = || tonic::Request::new(trace_request(vec![span(2, "GET /auth")]));
    let err = client.export(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing bearer token"), "{err:?}");
    let mut r = req();
    r.metadata_mut()
        .insert("authorization", "Bearer otlp-token-wrong".parse().unwrap());
    let err = client.export(r).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("invalid bearer token"), "{err:?}");
    let mut r = req();
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {OTLP_TOKEN}").parse().unwrap(),
    );
    client.export(r).await.expect("accepted with the token");
    sc.shutdown().await;
}

/// Every (path, method) in the aggregator's OpenAPI document, path parameters filled in.
fn documented_routes() -> Vec<(String, String, bool)> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../src/aggregator/openapi.yaml")).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths").iter() {
        let path = path.as_str().unwrap();
        let filled = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_mapping().unwrap() {
            let m = method.as_str().unwrap().to_ascii_uppercase();
            if ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) {
                let admin = op["security"]
                    .as_sequence()
                    .is_some_and(|s| s.iter().any(|x| x.get("admin").is_some()));
                out.push((filled.clone(), m, admin));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_aggregator_route_changes_state_without_the_admin_token() {
    let routes = documented_routes();
    assert!(
        routes.len() >= 15,
        "the document lists the routes: {routes:?}"
    );
    let writes: Vec<_> = routes.iter().filter(|(_, m, _)| m != "GET").collect();
    assert!(!writes.is_empty());
    let silence = serde_json::json!({"environment": "dev", "ends_at": "2099-01-01T00:00:00Z"});
    // With reader credentials required, and with anonymous readers.
    for anonymous in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = agg::write_config(dir.path(), "");
        if anonymous {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replace(
                &format!(
                    "username: {}, password_file: {}/reader.pw, ",
                    agg::READER_USER,
                    dir.path().display()
                ),
                "anonymous: true, ",
            );
            std::fs::write(&path, text).unwrap();
        }
        let a = agg::Agg::start(&path).await;
        let client = reqwest::Client::new();
        let reader =
            |r: reqwest::RequestBuilder| r.basic_auth(agg::READER_USER, Some(agg::READER_PASSWORD));
        let silences = || async {
            let r = reader(client.get(a.url("/api/v1/silences")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<serde_json::Value>()
                .await
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        };
        // Every documented and undocumented write on every documented path.
        for (path, _, _) in &routes {
            for m in ["POST", "PUT", "PATCH", "DELETE"] {
                let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
                let attempts: Vec<(&str, reqwest::RequestBuilder)> = vec![
                    ("none", client.request(method.clone(), a.url(path))),
                    (
                        "reader",
                        reader(client.request(method.clone(), a.url(path))),
                    ),
                    (
                        "reader token as bearer",
                        client
                            .request(method.clone(), a.url(path))
                            .bearer_auth(agg::READER_PASSWORD),
                    ),
                    (
                        "wrong admin token",
                        client
                            .request(method.clone(), a.url(path))
                            .bearer_auth("admin-token-abcdeX"),
                    ),
                ];
                for (who, req) in attempts {
                    let r = req.json(&silence).send().await.unwrap();
                    let status = r.status().as_u16();
                    assert!(
                        [401, 403, 405].contains(&status),
                        "{m} {path} as {who} (anonymous readers: {anonymous}) answered {status}"
                    );
                }
            }
        }
        assert_eq!(silences().await, 0, "nothing was created");
        // The documented writes do work with the admin token (the routes exist).
        for (path, m, admin) in &writes {
            assert!(admin, "{m} {path} is documented as needing the admin token");
        }
        let r = client
            .post(a.url("/api/v1/silences"))
            .bearer_auth(agg::ADMIN_TOKEN)
            .json(&silence)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        assert_eq!(silences().await, 1);
        for who in [None, Some("admin-token-abcdeX")] {
            let mut req = client.delete(a.url(&format!("/api/v1/silences/{id}")));
            if let Some(t) = who {
                req = req.bearer_auth(t);
            }
            let status = req.send().await.unwrap().status().as_u16();
            assert!([401, 403].contains(&status), "DELETE as {who:?}: {status}");
        }
        assert_eq!(silences().await, 1, "not ended without the admin token");
        let r = client
            .delete(a.url(&format!("/api/v1/silences/{id}")))
            .bearer_auth(agg::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        // Reads: without credentials refused unless readers are anonymous.
        for (path, m, _) in routes.iter().filter(|(_, m, _)| m == "GET") {
            if path == "/healthz" || path == "/api/v1/stream" {
                continue;
            }
            let status = client
                .get(a.url(path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if anonymous {
                assert_ne!(status, 401, "{m} {path}");
            } else {
                assert_eq!(status, 401, "{m} {path} without credentials");
            }
        }
        a.stop().await;
    }
}

// ---- secrets never reach the logs -------------------------------------

const ES_API_KEY: &str = "ESKEY-aW4tdGhlLWxvZ3M-5c1";
const PUSH_TOKEN: &str = "PUSHTOKEN-dev-7Hq2";
const PROD_PUSH_TOKEN: &str = "PUSHTOKEN-prod-0pLx";
const READER_PASSWORD: &str = "READERPW-s3cr3t-94";
const ADMIN_TOKEN: &str = "ADMINTOKEN-s3cr3t-31";
const RECEIVER_TOKEN: &str = "OTLPTOKEN-s3cr3t-58";
const WRONG_TOKEN: &str = "WRONGTOKEN-presented-77";

/// A child process killed if the test fails before it is stopped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then waits (bounded) for the staged shutdown.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_otel-anomaly"))
        .args(args)
        // Everything at debug, the project's own code at trace.
        .env("RUST_LOG", "debug,otel_anomaly=trace")
        .env_remove("OTEL_ANOMALY_ENVIRONMENT")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start the binary");
    Proc(child)
}

/// Waits for a JSON log line with `message` and returns its fields.
async fn wait_for_line(log: &Path, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut text);
        }
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["fields"]["message"] == message {
                    return v["fields"].clone();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?} in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addr_field(v: &serde_json::Value, key: &str) -> String {
    let s = v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"));
    s.trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_the_logs_of_a_run_that_uses_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        p.display().to_string()
    };
    // An Elasticsearch-compatible sink in this process, plain HTTP.
    let stats = Arc::new(otel_anomaly::bench_sink::SinkStats::default());
    let es_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let es_addr = es_listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let es_task = tokio::spawn(otel_anomaly::bench_sink::serve(
        es_listener,
        None,
        stats.clone(),
        stop.clone(),
    ));

    // The aggregator, with sidecar tokens, reader password and admin token.
    let agg_cfg = d.join("aggregator.yaml");
    std::fs::write(
        &agg_cfg,
        format!(
            "data_dir: {dd}/agg
grpc: {{listen: '127.0.0.1:0'}}
http: {{listen: '127.0.0.1:0', username: sre, password_file: {pw}, admin_token_file: {adm}}}
sidecars:
  - {{name: dev-1, environment: dev, token_file: {dev}}}
  - {{name: prod-1, environment: prod, token_file: {prod}}}
log: {{format: json}}
",
            dd = d.display(),
            pw = secret("reader.pw", READER_PASSWORD),
            adm = secret("admin.token", ADMIN_TOKEN),
            dev = secret("dev.token", PUSH_TOKEN),
            prod = secret("prod.token", PROD_PUSH_TOKEN),
        ),
    )
    .unwrap();
    let agg_log = d.join("aggregator.log");
    let agg_proc = spawn(&["aggregator", "-c", agg_cfg.to_str().unwrap()], &agg_log);
    let started = wait_for_line(&agg_log, "aggregator started").await;
    let agg_grpc = addr_field(&started, "grpc");
    let agg_http = addr_field(&started, "http");

    // The sidecar: ES API key, push token, receiver token.
    let sc_cfg = d.join("sidecar.yaml");
    std::fs::write(
        &sc_cfg,
        format!(
            "environment: dev
data_dir: {dd}/sidecar
receiver:
  grpc: {{listen: '127.0.0.1:0'}}
  http: {{listen: '127.0.0.1:0'}}
  auth: {{token_files: [{rt}]}}
admin: {{listen: '127.0.0.1:0'}}
pipeline: {{workers: 1}}
log: {{format: json}}
export:
  elasticsearch:
    urls: ['http://{es_addr}']
    api_key_file: {key}
    mode: index
    bulk: {{flush_interval: 50ms}}
push:
  url: 'http://{agg_grpc}'
  token_file: {push}
  heartbeat_interval: 200ms
",
            dd = d.display(),
            rt = secret("otlp.token", RECEIVER_TOKEN),
            key = secret("es.key", ES_API_KEY),
            push = secret("push.token", PUSH_TOKEN),
        ),
    )
    .unwrap();
    let sc_log = d.join("sidecar.log");
    let sc_proc = spawn(&["sidecar", "-c", sc_cfg.to_str().unwrap()], &sc_log);
    let started = wait_for_line(&sc_log, "sidecar started").await;
    let http = addr_field(&started, "http");
    let grpc = addr_field(&started, "grpc");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = trace_request(vec![span(1, "GET /secret"), span(2, "GET /secret")]).encode_to_vec();
    for (token, want) in [
        (Some(RECEIVER_TOKEN), 200),
        (Some(WRONG_TOKEN), 401),
        (None, 401),
    ] {
        let mut r = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        assert_eq!(r.send().await.unwrap().status().as_u16(), want);
    }
    let mut g = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    let mut req = tonic::Request::new(trace_request(vec![span(3, "GET /secret")]));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {WRONG_TOKEN}").parse().unwrap(),
    );
    assert_eq!(
        g.export(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A push with the wrong token, and with a token for another environment.
    let mut pc = agg::raw_client(format!("http://{agg_grpc}")).await;
    let e = agg::push(
        &mut pc,
        Some(WRONG_TOKEN),
        vec![agg::event("s1", "dev", "a", "k", 80.0)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = agg::push(
        &mut pc,
        Some(PROD_PUSH_TOKEN),
        vec![agg::event("s2", "dev", "a", "k", 80.0)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The REST API with right and wrong reader and admin credentials.
    let api = |p: &str| format!("http://{agg_http}{p}");
    let r = client
        .get(api("/api/v1/incidents"))
        .basic_auth("sre", Some(READER_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(api("/api/v1/incidents"))
        .basic_auth("sre", Some(WRONG_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let silence = serde_json::json!({"environment": "dev", "ends_at": "2099-01-01T00:00:00Z"});
    let r = client
        .post(api("/api/v1/silences"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // A wrong bearer is not a reader either: 401 before the admin check.
    let r = client
        .post(api("/api/v1/silences"))
        .bearer_auth(WRONG_TOKEN)
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The ES key and the push token were used: documents arrived, and the
    // sidecar's heartbeat reached the aggregator.
    eventually("documents reach Elasticsearch", WAIT, || async {
        stats.view().bulk_docs >= 2
    })
    .await;
    eventually("the sidecar shows up at the aggregator", WAIT, || async {
        let r = client
            .get(api("/api/v1/sidecars"))
            .basic_auth("sre", Some(READER_PASSWORD))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap().contains("dev")
    })
    .await;

    sc_proc.stop();
    agg_proc.stop();
    stop.cancel();
    let _ = es_task.await;

    // `check-config` and `aggregator --check` print the settings: no secret there either.
    let check = Command::new(env!("CARGO_BIN_EXE_otel-anomaly"))
        .args(["check-config", sc_cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success());
    let check2 = Command::new(env!("CARGO_BIN_EXE_otel-anomaly"))
        .args(["aggregator", "--check", "-c", agg_cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check2.status.success());

    let logs = [
        std::fs::read_to_string(&sc_log).unwrap(),
        std::fs::read_to_string(&agg_log).unwrap(),
        String::from_utf8_lossy(&check.stdout).into_owned(),
        String::from_utf8_lossy(&check2.stdout).into_owned(),
    ];
    // The logs are real and detailed: debug lines of refusals are there.
    assert!(
        logs[0].contains("otlp request refused: not authenticated"),
        "{}",
        logs[0]
    );
    assert!(
        logs[0].lines().count() > 20,
        "sidecar log too short to mean anything"
    );
    assert!(logs[1].lines().count() > 5, "aggregator log too short");
    assert!(
        logs[0].contains("shutdown complete"),
        "the sidecar stopped cleanly"
    );
    for s in [
        ES_API_KEY,
        PUSH_TOKEN,
        PROD_PUSH_TOKEN,
        READER_PASSWORD,
        ADMIN_TOKEN,
        RECEIVER_TOKEN,
        WRONG_TOKEN,
    ] {
        for (i, text) in logs.iter().enumerate() {
            assert!(!text.contains(s), "secret {s:?} appears in output {i}");
        }
    }
    // Base64 of basic credentials would hide the password from a plain search.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("sre:{READER_PASSWORD}"));
    assert!(logs.iter().all(|t| !t.contains(&b64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_bad_input_classes_get_their_documented_answer() {
    // OTLP/HTTP: an encoding the receiver does not speak.
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(base_config(dir.path())).await;
    let r = sc
        .post(
            "/v1/traces",
            "application/x-protobuf",
            Some("br"),
            vec![1, 2, 3],
        )
        .await;
    assert_eq!(r.status().as_u16(), 415);
    let st = RpcStatus::decode(r.bytes().await.unwrap().as_ref()).unwrap();
    assert!(
        st.message.contains("unsupported Content-Encoding"),
        "{}",
        st.message
    );
    let r = sc
        .post(
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            b"not gzip".to_vec(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 400);
    let st = RpcStatus::decode(r.bytes().await.unwrap().as_ref()).unwrap();
    assert!(st.message.contains("invalid gzip body"), "{}", st.message);
    sc.assert_still_serving(9).await;
    sc.shutdown().await;

    // Aggregator REST API.
    let dir = tempfile::tempdir().unwrap();
    let a = agg::Agg::start(&agg::write_config(dir.path(), "")).await;
    let client = reqwest::Client::new();
    let r = client
        .get(a.url("/api/v1/nope"))
        .basic_auth(agg::READER_USER, Some(agg::READER_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("no such route"));
    let r = client
        .post(a.url("/api/v1/silences"))
        .bearer_auth(agg::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"environment\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("invalid silence"));
    let r = client
        .post(a.url("/api/v1/silences"))
        .bearer_auth(agg::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    a.stop().await;

    // A detector snapshot of another environment is refused by name.
    let cfg = base_config(dir.path());
    let p = otel_anomaly::pipeline::process::Processor::new(
        &cfg.settings,
        "otel",
        Arc::new(otel_anomaly::telemetry::Metrics::default()),
        Arc::new(otel_anomaly::pipeline::AnomalyFeed::default()),
    );
    let snap = p.detectors().snapshot("prod", 1);
    let e = p.detectors().restore(&snap, "dev").unwrap_err().to_string();
    assert!(e.contains("prod"), "{e}");
}

#[test]
fn security_settings_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    for (yaml, key) in [
        ("receiver: {auth: {token_files: []}}", "receiver.auth.token_files"),
        (
            "receiver: {auth: {token_files: [/nonexistent/otlp.token]}}",
            "receiver.auth.token_files[0]",
        ),
        (
            "receiver: {http: {listen: '127.0.0.1:0', tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}}}",
            "receiver.http.tls.cert_file",
        ),
        (
            "admin: {listen: '127.0.0.1:0', tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}}",
            "admin.tls.cert_file",
        ),
        (
            "export: {elasticsearch: {urls: ['https://es:9200'], client_cert_file: /nonexistent/c.pem}}",
            "client_cert_file and client_key_file",
        ),
    ] {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, format!("environment: dev\ndata_dir: {d}\n{yaml}\n")).unwrap();
        let e = otel_anomaly::config::resolve(Some(&path), &Default::default(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{yaml}: {e}");
    }
}
