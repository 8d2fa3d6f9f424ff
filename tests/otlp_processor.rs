//! Processor mode: the sidecar forwards every record, with `anomaly.*`
//! attributes, to a next OTLP hop.
//!
//! - The next hop is a real second sidecar that is down for a while, then
//!   comes back: nothing within the admission cap is lost, and beyond it the
//!   sender is refused (429 / RESOURCE_EXHAUSTED), never silently dropped.
//! - The next hop is a small in-process HTTP fake for fault injection
//!   (429 with Retry-After, partial_success, 400): retries, counting and
//!   dead-lettering; it also shows the bytes on the wire keep unknown fields.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use otel_anomaly::config::{self, Config, FlagOverrides};
use otel_anomaly::export::otlp::wire;
use otel_anomaly::telemetry::Signal;
use prost::Message;

/// `base_config` plus an `export.otlp` section given as `OTEL_ANOMALY_*` variables.
fn processor_config(dir: &Path, otlp_env: &[(&str, &str)]) -> Config {
    let env: BTreeMap<String, String> = otlp_env
        .iter()
        .map(|(k, v)| (format!("OTEL_ANOMALY_EXPORT__OTLP__{k}"), v.to_string()))
        .collect();
    let resolved = config::resolve(None, &env, &FlagOverrides::default()).expect("otlp config");
    let mut cfg = base_config(dir);
    cfg.settings.export.otlp = resolved.settings.export.otlp.clone();
    cfg.otlp = resolved.otlp;
    cfg
}

fn str_attr(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// Spans `from..to`, each with an attribute of its own.
fn spans(from: u32, to: u32) -> ExportTraceServiceRequest {
    trace_request(
        (from..to)
            .map(|i| {
                let mut s = span(i, "GET /cart");
                s.attributes = vec![str_attr("test.seq", &i.to_string())];
                s
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_down_then_back_loses_nothing_and_pushes_back_beyond_the_cap() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hop_port = common::free_port();
    let hop = format!("http://127.0.0.1:{hop_port}");
    let mut cfg_a = processor_config(
        dir_a.path(),
        &[
            ("ENDPOINT", hop.as_str()),
            ("RETRY__INITIAL_BACKOFF", "50ms"),
            ("RETRY__MAX_BACKOFF", "200ms"),
        ],
    );
    cfg_a.settings.pipeline.max_queued_records = 350;
    // The in-memory cap alone: with the write-ahead queue on, a request past
    // it is spilled to disk and accepted (its own cap is tested in
    // tests/e2e/test_wal_faults.py).
    cfg_a.settings.wal.enabled = false;
    let a = Sidecar::start(cfg_a).await;

    // The next hop is down: 300 spans are accepted and wait (within the cap).
    for k in 0..3 {
        let r = a.post_traces(&spans(k * 100, k * 100 + 100)).await;
        assert_eq!(
            r.status(),
            200,
            "request {k} accepted while the hop is down"
        );
    }
    eventually("the otlp output retries the hop", WAIT, || async {
        metric_value(
            &a.metrics_text().await,
            "otel_anomaly_otlp_requests_total",
            &[("signal", "traces"), ("outcome", "retry")],
        )
        .unwrap_or(0.0)
            >= 3.0
    })
    .await;
    // Beyond the cap the sender is refused, over both transports, with a retry hint.
    let refused = a.post_traces(&spans(300, 400)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let mut grpc = a.grpc().await;
    let status = grpc.export(spans(300, 400)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let text = a.metrics_text().await;
    assert_eq!(
        metric_value(&text, "otel_anomaly_queued_records", &[]),
        Some(300.0)
    );

    // The hop comes back: a real sidecar writing NDJSON.
    let mut cfg_b = base_config(dir_b.path());
    cfg_b.settings.receiver.grpc.listen = format!("127.0.0.1:{hop_port}").parse().unwrap();
    let b = Sidecar::start(cfg_b).await;
    eventually("all 300 waiting spans reach the hop", WAIT, || async {
        ndjson_docs(dir_b.path(), "traces-").len() >= 300
    })
    .await;
    eventually("the admission permits come back", WAIT, || async {
        metric_value(&a.metrics_text().await, "otel_anomaly_queued_records", &[]) == Some(0.0)
    })
    .await;
    // The refused request, sent again, now goes through.
    assert_eq!(a.post_traces(&spans(300, 400)).await.status(), 200);
    eventually("the resent spans reach the hop", WAIT, || async {
        ndjson_docs(dir_b.path(), "traces-").len() >= 400
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let docs = ndjson_docs(dir_b.path(), "traces-");
    assert_eq!(docs.len(), 400, "every span exactly once");
    let seqs: HashSet<String> = docs
        .iter()
        .map(|d| d["attributes"]["test.seq"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seqs, (0..400).map(|i| i.to_string()).collect());
    for d in &docs {
        let attrs = &d["attributes"];
        assert!(attrs["anomaly.score"].is_number(), "{d}");
        assert!(attrs["anomaly.severity"].is_string(), "{d}");
        assert!(attrs["anomaly.explanation"].is_string(), "{d}");
        assert_eq!(d["resource"]["attributes"]["service.name"], "checkout");
    }
    let text = a.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "otel_anomaly_otlp_exported_records_total",
            &[("signal", "traces")]
        ),
        Some(400.0)
    );
    assert!(!dir_a.path().join("dead-letter.ndjson").exists());
    a.shutdown().await;
    b.shutdown().await;
}

/// What the fault-injecting next hop saw.
#[derive(Default)]
struct Seen {
    traces: Vec<(Instant, HeaderMap, Vec<u8>)>,
    logs: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn body_of(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => gunzip(body).expect("gzip body"),
        _ => body.to_vec(),
    }
}

/// 1st request: 429 with Retry-After: 1; 2nd: partial success (2 rejected); then 200.
async fn fake_traces(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let plain = body_of(&headers, &body);
    let n = {
        let mut s = seen.lock().unwrap();
        s.traces.push((Instant::now(), headers, plain));
        s.traces.len()
    };
    match n {
        1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        2 => {
            let reply = otel_anomaly::export::otlp::ExportResponse {
                partial_success: Some(otel_anomaly::export::otlp::PartialSuccess {
                    rejected: 2,
                    error_message: "two spans too old".into(),
                }),
            };
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                reply.encode_to_vec(),
            )
                .into_response()
        }
        _ => (StatusCode::OK, [("content-type", "application/x-protobuf")]).into_response(),
    }
}

async fn fake_logs(State(seen): State<Shared>) -> Response {
    seen.lock().unwrap().logs += 1;
    (StatusCode::BAD_REQUEST, "schema violation").into_response()
}

/// An unknown field (number 9001, length-delimited) appended to every span and to the request.
fn with_unknown_fields(req: &ExportTraceServiceRequest) -> (Vec<u8>, Vec<u8>) {
    let marker = b"future-field".to_vec();
    let mut field = Vec::new();
    wire::put_varint(&mut field, 9001 << 3 | 2);
    wire::put_varint(&mut field, marker.len() as u64);
    field.extend_from_slice(&marker);
    let mut out = Vec::new();
    let f = field.clone();
    wire::rewrite(
        &req.encode_to_vec(),
        wire::Level::root(Signal::traces),
        &mut out,
        &mut |level, out| {
            if matches!(level, wire::Level::Span | wire::Level::TracesRequest) {
                out.extend_from_slice(&f);
            }
            Ok(())
        },
    )
    .unwrap();
    (out, field)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hop_retry_after_partial_success_dead_letter_headers_and_unknown_fields() {
    let seen: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(fake_traces))
        .route("/v1/logs", post(fake_logs))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let headers_file = dir.path().join("headers");
    std::fs::write(&headers_file, "X-Tenant: acme\n").unwrap();
    let auth_file = dir.path().join("auth");
    std::fs::write(&auth_file, "Bearer t0k\n").unwrap();
    let cfg = processor_config(
        dir.path(),
        &[
            ("PROTOCOL", "http"),
            ("ENDPOINT", hop.as_str()),
            ("HEADERS_FILE", headers_file.to_str().unwrap()),
            ("AUTHORIZATION_FILE", auth_file.to_str().unwrap()),
            ("RETRY__INITIAL_BACKOFF", "20ms"),
            ("RETRY__MAX_BACKOFF", "50ms"),
        ],
    );
    let a = Sidecar::start(cfg).await;

    let req = spans(0, 10);
    let (bytes, unknown) = with_unknown_fields(&req);
    let r = a
        .post("/v1/traces", "application/x-protobuf", None, bytes)
        .await;
    assert_eq!(r.status(), 200);
    eventually("the hop gets the request a second time", WAIT, || async {
        seen.lock().unwrap().traces.len() >= 2
    })
    .await;
    eventually("the partial success is counted", WAIT, || async {
        metric_value(
            &a.metrics_text().await,
            "otel_anomaly_otlp_partial_rejected_records_total",
            &[("signal", "traces")],
        ) == Some(2.0)
    })
    .await;
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.traces.len(), 2, "a partial success is not retried");
        let (t1, _, first) = &s.traces[0];
        let (t2, headers, second) = &s.traces[1];
        // The server's Retry-After (1 s) is honoured, not the 20 ms backoff.
        assert!(*t2 - *t1 >= Duration::from_millis(950), "{:?}", *t2 - *t1);
        assert_eq!(first, second, "the retry resends the same request");
        assert_eq!(headers["authorization"], "Bearer t0k");
        assert_eq!(headers["x-tenant"], "acme");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["content-encoding"], "gzip");
        // Unknown fields survive: the request's and each span's, byte for byte.
        let found = second
            .windows(unknown.len())
            .filter(|w| *w == unknown.as_slice())
            .count();
        assert_eq!(found, 11);
        let back = ExportTraceServiceRequest::decode(&second[..]).unwrap();
        let got: Vec<&opentelemetry_proto::tonic::trace::v1::Span> =
            back.resource_spans[0].scope_spans[0].spans.iter().collect();
        assert_eq!(got.len(), 10);
        for (i, s) in got.iter().enumerate() {
            let keys: Vec<&str> = s.attributes.iter().map(|k| k.key.as_str()).collect();
            assert_eq!(
                &keys[..4],
                [
                    "test.seq",
                    "anomaly.score",
                    "anomaly.severity",
                    "anomaly.explanation"
                ]
            );
            let mut original = (*s).clone();
            original.attributes.truncate(1);
            let want = &req.resource_spans[0].scope_spans[0].spans[i];
            assert_eq!(&original, want, "nothing else of the span changed");
        }
        assert_eq!(
            back.resource_spans[0].resource,
            req.resource_spans[0].resource
        );
    }

    // A non-retryable answer: the batch is dead-lettered, its permits come back.
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: (0..5)
                    .map(|i| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000 + i,
                        severity_number: 9,
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("line {i}"))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = a
        .post(
            "/v1/logs",
            "application/x-protobuf",
            None,
            logs.encode_to_vec(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let dl = dir.path().join("dead-letter.ndjson");
    eventually("the refused logs are dead-lettered", WAIT, || async {
        dl.exists()
    })
    .await;
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dl).unwrap().trim()).unwrap();
    assert_eq!(line["output"], "otlp");
    assert_eq!(line["signal"], "logs");
    assert_eq!(line["records"], 5);
    assert!(line["reason"]
        .as_str()
        .unwrap()
        .starts_with("http 400: schema violation"));
    assert_eq!(seen.lock().unwrap().logs, 1, "a 400 is not retried");
    eventually("every permit is back", WAIT, || async {
        let t = a.metrics_text().await;
        metric_value(&t, "otel_anomaly_queued_records", &[]) == Some(0.0)
            && metric_value(
                &t,
                "otel_anomaly_otlp_dead_lettered_records_total",
                &[("signal", "logs")],
            ) == Some(5.0)
    })
    .await;
    a.shutdown().await;
    server.abort();
}

async fn capture_ok(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let plain = body_of(&headers, &body);
    seen.lock()
        .unwrap()
        .traces
        .push((Instant::now(), headers, plain));
    (StatusCode::OK, [("content-type", "application/x-protobuf")]).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_input_keeps_unknown_fields_on_the_way_to_the_next_hop() {
    let seen: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(capture_ok))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let a = Sidecar::start(processor_config(
        dir.path(),
        &[("PROTOCOL", "http"), ("ENDPOINT", hop.as_str())],
    ))
    .await;

    // The sender: the sidecar's own OTLP client, sending raw bytes over gRPC to A.
    let to_a = processor_config(
        dir.path(),
        &[(
            "ENDPOINT",
            format!("http://{}", a.running.grpc_addr.unwrap()).as_str(),
        )],
    );
    let client = otel_anomaly::export::otlp::OtlpClient::new(to_a.otlp.as_ref().unwrap()).unwrap();
    let req = spans(0, 10);
    let (bytes, unknown) = with_unknown_fields(&req);
    let reply = client
        .send(Signal::traces, Bytes::from(bytes))
        .await
        .expect("A accepts the request");
    assert_eq!(reply.rejected, 0);
    eventually("the hop gets the request", WAIT, || async {
        !seen.lock().unwrap().traces.is_empty()
    })
    .await;
    let body = seen.lock().unwrap().traces[0].2.clone();
    let found = body
        .windows(unknown.len())
        .filter(|w| *w == unknown.as_slice())
        .count();
    assert_eq!(found, 11, "the request's and every span's unknown field");
    let back = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    for sp in &back.resource_spans[0].scope_spans[0].spans {
        assert!(sp.attributes.iter().any(|k| k.key == "anomaly.score"));
    }
    a.shutdown().await;
    server.abort();
}

/// (Authorization header, spans with anomaly attributes) of each request.
type Received = Vec<(Option<String>, usize)>;

/// A gRPC next hop behind TLS that records what it got (an observer).
#[derive(Clone, Default)]
struct TlsHop {
    got: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for TlsHop
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let req = request.into_inner();
        let spans = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .filter(|s| s.attributes.iter().any(|k| k.key == "anomaly.score"))
            .count();
        self.got.lock().unwrap().push((auth, spans));
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_hop_over_tls_with_a_private_ca_and_auth_from_env() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();

    let hop = TlsHop::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = {
        let hop = hop.clone();
        let identity = tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(
                    opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(hop)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        })
    };
    let url = format!("https://localhost:{port}");
    let ca_file = d.join("ca.pem").display().to_string();

    // Trusting the private CA: delivered, with the Authorization header from the environment.
    let mut env: BTreeMap<String, String> = [
        ("ENDPOINT", url.as_str()),
        ("CA_FILE", ca_file.as_str()),
        ("HEADERS_FROM_ENV__AUTHORIZATION", "HOP_TOKEN"),
    ]
    .iter()
    .map(|(k, v)| (format!("OTEL_ANOMALY_EXPORT__OTLP__{k}"), v.to_string()))
    .collect();
    env.insert("HOP_TOKEN".into(), "Bearer from-env".into());
    let resolved = config::resolve(None, &env, &FlagOverrides::default()).expect("config");
    let mut cfg = base_config(d);
    cfg.settings.export.otlp = resolved.settings.export.otlp.clone();
    cfg.otlp = resolved.otlp;
    let a = Sidecar::start(cfg).await;
    assert_eq!(a.post_traces(&spans(0, 20)).await.status(), 200);
    eventually("the spans reach the TLS hop", WAIT, || async {
        hop.got.lock().unwrap().iter().map(|g| g.1).sum::<usize>() == 20
    })
    .await;
    assert!(hop
        .got
        .lock()
        .unwrap()
        .iter()
        .all(|g| g.0.as_deref() == Some("Bearer from-env")));
    a.shutdown().await;

    // Without the CA the hop is not trusted: nothing is sent, the batch waits and is retried.
    let dir2 = tempfile::tempdir().unwrap();
    let a = Sidecar::start(processor_config(
        dir2.path(),
        &[
            ("ENDPOINT", url.as_str()),
            ("RETRY__INITIAL_BACKOFF", "50ms"),
        ],
    ))
    .await;
    let before = hop.got.lock().unwrap().len();
    assert_eq!(a.post_traces(&spans(20, 30)).await.status(), 200);
    eventually("the untrusted hop is retried", WAIT, || async {
        metric_value(
            &a.metrics_text().await,
            "otel_anomaly_otlp_requests_total",
            &[("signal", "traces"), ("outcome", "retry")],
        )
        .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    assert_eq!(hop.got.lock().unwrap().len(), before);
    assert_eq!(
        metric_value(&a.metrics_text().await, "otel_anomaly_queued_records", &[]),
        Some(10.0),
        "the records wait; they are not dropped"
    );
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_documents_flow_while_the_hop_is_down_and_permits_wait_for_both() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hop_port = common::free_port();
    let hop = format!("http://127.0.0.1:{hop_port}");
    let mut cfg_a = processor_config(
        dir_a.path(),
        &[
            ("ENDPOINT", hop.as_str()),
            ("RETRY__INITIAL_BACKOFF", "50ms"),
            ("RETRY__MAX_BACKOFF", "200ms"),
        ],
    );
    // Both outputs: NDJSON documents and the OTLP hop.
    cfg_a.settings.export.file.enabled = Some(true);
    cfg_a.settings.pipeline.max_queued_records = 250;
    // The in-memory cap alone: with the write-ahead queue on, a request past
    // it is spilled to disk and accepted (its own cap is tested in
    // tests/e2e/test_wal_faults.py).
    cfg_a.settings.wal.enabled = false;
    let a = Sidecar::start(cfg_a).await;
    for k in 0..2 {
        assert_eq!(
            a.post_traces(&spans(k * 100, k * 100 + 100)).await.status(),
            200
        );
    }
    // The document output is not held up by the OTLP output that cannot deliver...
    eventually("A's own documents are written", WAIT, || async {
        ndjson_docs(dir_a.path(), "traces-").len() == 200
    })
    .await;
    // ...but the records stay admitted until the hop has them too.
    let text = a.metrics_text().await;
    assert_eq!(
        metric_value(&text, "otel_anomaly_queued_records", &[]),
        Some(200.0)
    );
    assert_eq!(a.post_traces(&spans(200, 300)).await.status(), 429);

    let mut cfg_b = base_config(dir_b.path());
    cfg_b.settings.receiver.grpc.listen = format!("127.0.0.1:{hop_port}").parse().unwrap();
    let b = Sidecar::start(cfg_b).await;
    eventually("the hop gets the 200 spans", WAIT, || async {
        ndjson_docs(dir_b.path(), "traces-").len() == 200
    })
    .await;
    eventually(
        "permits come back once both outputs settled",
        WAIT,
        || async {
            metric_value(&a.metrics_text().await, "otel_anomaly_queued_records", &[]) == Some(0.0)
        },
    )
    .await;
    assert_eq!(ndjson_docs(dir_a.path(), "traces-").len(), 200);
    a.shutdown().await;
    b.shutdown().await;
}

/// The HTTP next hop of the replay tests, bound on `port` (from `free_port`).
async fn capture_hop_on(port: u16, seen: Shared) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new()
        .route("/v1/traces", post(capture_ok))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the next hop");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// Each request the hop got holds `unknown` `per_request` times and the
/// anomaly attributes on every span; returns the `test.seq` values seen.
fn check_forwarded(seen: &Shared, unknown: &[u8], per_request: usize) -> Vec<String> {
    let s = seen.lock().unwrap();
    let mut seqs = Vec::new();
    for (_, _, body) in &s.traces {
        let found = body
            .windows(unknown.len())
            .filter(|w| *w == unknown)
            .count();
        assert_eq!(
            found, per_request,
            "the request's and every span's unknown field"
        );
        let back = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        for sp in &back.resource_spans[0].scope_spans[0].spans {
            let keys: Vec<&str> = sp.attributes.iter().map(|k| k.key.as_str()).collect();
            assert_eq!(keys[0], "test.seq");
            assert!(keys.contains(&"anomaly.score"), "{keys:?}");
            assert!(keys.contains(&"anomaly.severity"), "{keys:?}");
            seqs.push(match &sp.attributes[0].value {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v)),
                }) => v.clone(),
                other => panic!("test.seq is {other:?}"),
            });
        }
    }
    seqs.sort();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_replayed_from_the_wal_after_a_restart_keeps_its_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let hop_port = common::free_port();
    let hop = format!("http://127.0.0.1:{hop_port}");
    let env = [
        ("PROTOCOL", "http"),
        ("ENDPOINT", hop.as_str()),
        ("RETRY__INITIAL_BACKOFF", "20ms"),
        ("RETRY__MAX_BACKOFF", "100ms"),
    ];
    let mut cfg = processor_config(dir.path(), &env);
    assert!(cfg.settings.wal.enabled, "the WAL is on by default");
    cfg.settings.shutdown_timeout = Duration::from_secs(1);

    // The next hop is down: the request is durable in the WAL, not delivered.
    let a = Sidecar::start(cfg.clone()).await;
    let req = spans(0, 10);
    let (bytes, unknown) = with_unknown_fields(&req);
    let r = a
        .post("/v1/traces", "application/x-protobuf", None, bytes)
        .await;
    assert_eq!(r.status(), 200);
    eventually("the hop is tried", WAIT, || async {
        metric_value(
            &a.metrics_text().await,
            "otel_anomaly_otlp_requests_total",
            &[("signal", "traces"), ("outcome", "retry")],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    a.shutdown().await;

    // The hop is up; the restarted sidecar replays the request from disk.
    let seen: Shared = Arc::default();
    let server = capture_hop_on(hop_port, seen.clone()).await;
    let a = Sidecar::start(cfg).await;
    eventually("the replayed request reaches the hop", WAIT, || async {
        !seen.lock().unwrap().traces.is_empty()
    })
    .await;
    let replayed = metric_value(
        &a.metrics_text().await,
        "otel_anomaly_wal_replayed_requests_total",
        &[],
    );
    assert_eq!(replayed, Some(1.0), "it came from the WAL");
    let seqs = check_forwarded(&seen, &unknown, 11);
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(seqs, want, "every span once");
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_spilled_to_the_wal_and_read_back_keeps_its_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let hop_port = common::free_port();
    let hop = format!("http://127.0.0.1:{hop_port}");
    let mut cfg = processor_config(
        dir.path(),
        &[
            ("PROTOCOL", "http"),
            ("ENDPOINT", hop.as_str()),
            ("RETRY__INITIAL_BACKOFF", "20ms"),
            ("RETRY__MAX_BACKOFF", "100ms"),
        ],
    );
    assert!(cfg.settings.wal.enabled, "the WAL is on by default");
    // Room for one request: the second waits on disk while the hop is down.
    cfg.settings.pipeline.max_queued_records = 10;
    let a = Sidecar::start(cfg).await;
    let (first, unknown) = with_unknown_fields(&spans(0, 10));
    let (second, _) = with_unknown_fields(&spans(10, 20));
    for body in [first, second] {
        let r = a
            .post("/v1/traces", "application/x-protobuf", None, body)
            .await;
        assert_eq!(r.status(), 200);
    }
    eventually("the second request is spilled to disk", WAIT, || async {
        metric_value(
            &a.metrics_text().await,
            "otel_anomaly_wal_spilled_requests",
            &[],
        ) == Some(1.0)
    })
    .await;

    let seen: Shared = Arc::default();
    let server = capture_hop_on(hop_port, seen.clone()).await;
    eventually("both requests reach the hop", WAIT, || async {
        seen.lock().unwrap().traces.len() >= 2
    })
    .await;
    let seqs = check_forwarded(&seen, &unknown, 11);
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(seqs, want, "every span once");
    a.shutdown().await;
    server.abort();
}
