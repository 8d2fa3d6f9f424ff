//! Shared helpers of the integration tests: a real sidecar started in-process
//! on 127.0.0.1:0, OTLP request builders, polling with deadlines, and a
//! reader for the Prometheus text on the admin listener.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_anomaly::config::{self, Config, FlagOverrides};
use otel_anomaly::sidecar::{self, Running};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// Upper bound of any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Environment of the test sidecars (the data stream namespace).
pub const ENV: &str = "test";

/// `google.rpc.Status`, decoded independently of the crate's own type.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// A loopback port for a server started later (a child process, or a hop
/// brought up again on the same port). Taken from below the kernel's
/// ephemeral range (32768-60999): a port from `bind(0)` is an ephemeral one,
/// which any outgoing connection may take before the server binds it ("Address
/// already in use"). Below the range only listeners compete; each test process
/// starts at its own offset and never hands out a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LO: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LO + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LO}..{}", LO + SPAN)
}

/// Every document of the NDJSON files whose names start with `prefix`
/// (`traces-`, `metrics-`, `logs-`) in a sidecar's `data_dir/ndjson`, file by
/// file in name order. A last line without its newline is still being written
/// and is skipped; every complete line must be a JSON document.
pub fn ndjson_docs(dir: &Path, prefix: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("ndjson")) else {
        return out;
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{}: a complete line is not JSON ({e}): {line}", f.display())
            }));
        }
    }
    out
}

/// Process logs for debugging a failing test: `RUST_LOG=otel_anomaly=debug cargo test …`.
pub fn init_logs() {
    if let Ok(level) = std::env::var("RUST_LOG") {
        otel_anomaly::telemetry::init_logs(&config::LogSettings::default(), Some(&level));
    }
}

/// Default configuration, every listener on 127.0.0.1:0, output under `data_dir`.
pub fn base_config(data_dir: &Path) -> Config {
    let mut cfg =
        config::resolve(None, &BTreeMap::new(), &FlagOverrides::default()).expect("default config");
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let s = &mut cfg.settings;
    s.environment = ENV.into();
    s.receiver.grpc.listen = local;
    s.receiver.http.listen = local;
    s.admin.listen = local;
    s.data_dir = data_dir.to_path_buf();
    s.pipeline.workers = 1;
    s.shutdown_timeout = Duration::from_secs(5);
    cfg
}

/// A running sidecar and what a test needs to talk to it.
pub struct Sidecar {
    pub running: Running,
    pub token: CancellationToken,
    pub http: reqwest::Client,
    pub shutdown_timeout: Duration,
}

impl Sidecar {
    /// Starts the real sidecar.
    pub async fn start(cfg: Config) -> Self {
        init_logs();
        let shutdown_timeout = cfg.settings.shutdown_timeout;
        let token = CancellationToken::new();
        let running = tokio::time::timeout(WAIT, sidecar::start(cfg, token.clone()))
            .await
            .expect("sidecar start timed out")
            .expect("sidecar starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("http client");
        Self {
            running,
            token,
            http,
            shutdown_timeout,
        }
    }

    /// URL on the OTLP/HTTP listener.
    pub fn otlp_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.running.http_addr.expect("http enabled")
        )
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// A gRPC trace client connected to the sidecar.
    pub async fn grpc(&self) -> TraceServiceClient<tonic::transport::Channel> {
        let url = format!("http://{}", self.running.grpc_addr.expect("grpc enabled"));
        tokio::time::timeout(WAIT, TraceServiceClient::connect(url))
            .await
            .expect("grpc connect timed out")
            .expect("grpc connect")
    }

    /// POSTs `body` to the OTLP/HTTP listener.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.otlp_url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(e) = encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, e);
        }
        req.send().await.expect("OTLP/HTTP request sent")
    }

    /// POSTs a protobuf trace request.
    pub async fn post_traces(&self, req: &ExportTraceServiceRequest) -> reqwest::Response {
        self.post(
            "/v1/traces",
            "application/x-protobuf",
            None,
            req.encode_to_vec(),
        )
        .await
    }

    /// Status code of a GET on the admin listener.
    pub async fn admin_status(&self, path: &str) -> u16 {
        self.http
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin request")
            .status()
            .as_u16()
    }

    /// The Prometheus text of /metrics.
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(resp.status().as_u16(), 200);
        resp.text().await.expect("metrics body")
    }

    /// Asserts that a valid OTLP/HTTP protobuf trace request is accepted with 200
    /// and a response that decodes with nothing rejected.
    pub async fn assert_still_serving(&self, seed: u32) {
        let req = trace_request(vec![span(seed, "still-serving")]);
        let resp = self.post_traces(&req).await;
        assert_eq!(
            resp.status().as_u16(),
            200,
            "valid request after a bad one must be accepted"
        );
        let body = resp.bytes().await.expect("body");
        let decoded = ExportTraceServiceResponse::decode(body.as_ref()).expect("protobuf response");
        assert_eq!(decoded.partial_success, None, "nothing should be rejected");
    }

    /// Cancels the token and waits for the staged shutdown to complete.
    pub async fn shutdown(self) {
        self.token.cancel();
        let bound = self.shutdown_timeout + Duration::from_secs(10);
        let started = Instant::now();
        tokio::time::timeout(bound, self.running.done)
            .await
            .unwrap_or_else(|_| panic!("staged shutdown did not finish within {bound:?}"))
            .expect("shutdown task panicked");
        assert!(started.elapsed() < bound);
    }
}

/// Deterministic trace id of span number `i` (never all zero).
pub fn trace_id(i: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[0] = 0xa5;
    t[12..].copy_from_slice(&i.to_be_bytes());
    t
}

/// Deterministic span id of span number `i` (never all zero).
pub fn span_id(i: u32) -> [u8; 8] {
    let mut s = [0u8; 8];
    s[0] = 0x5a;
    s[4..].copy_from_slice(&i.to_be_bytes());
    s
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The Elasticsearch `_id` of span number `i`: hex(trace_id) + hex(span_id).
pub fn doc_id(i: u32) -> String {
    format!("{}{}", hex(&trace_id(i)), hex(&span_id(i)))
}

/// Span number `i` with deterministic ids.
pub fn span(i: u32, name: &str) -> Span {
    let start = 1_700_000_000_000_000_000u64 + u64::from(i) * 1_000_000;
    Span {
        trace_id: trace_id(i).to_vec(),
        span_id: span_id(i).to_vec(),
        name: name.to_string(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 3_000_000,
        ..Default::default()
    }
}

/// One resource (service "checkout") holding `spans`.
pub fn trace_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Value of the sample `name{labels…}` in Prometheus text, if present.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|line| {
            let Some(rest) = line.strip_prefix(name) else {
                return false;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return false;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` every 20 ms until it is true; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gzips `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Gunzips `data`.
pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}
