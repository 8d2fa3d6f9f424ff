//! A null output for benchmarks: answers `GET /` like Elasticsearch, takes
//! `_bulk` bodies (gzip or not), answers every item with success and counts
//! the documents; also takes OTLP (HTTP protobuf and gRPC) so a collector
//! can forward to it. It measures how old the records are on arrival
//! (`@timestamp` / span start time against the clock), which is the
//! sender's added latency when the load generator stamps records with the
//! send time. Not a database: nothing is stored.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;

/// Largest body accepted, compressed or not.
const MAX_BODY: usize = 256 << 20;
/// Records older than this on arrival are not stamped by the load generator.
const MAX_AGE_NS: u64 = 120_000_000_000;

/// Counters of the sink.
#[derive(Debug)]
pub struct SinkStats {
    pub bulk_requests: AtomicU64,
    pub bulk_docs: AtomicU64,
    pub bulk_bytes: AtomicU64,
    pub otlp_requests: AtomicU64,
    pub otlp_spans: AtomicU64,
    pub otlp_points: AtomicU64,
    pub otlp_logs: AtomicU64,
    /// Age on arrival, microseconds.
    latency: Mutex<Histogram<u64>>,
}

impl Default for SinkStats {
    fn default() -> Self {
        Self {
            bulk_requests: AtomicU64::new(0),
            bulk_docs: AtomicU64::new(0),
            bulk_bytes: AtomicU64::new(0),
            otlp_requests: AtomicU64::new(0),
            otlp_spans: AtomicU64::new(0),
            otlp_points: AtomicU64::new(0),
            otlp_logs: AtomicU64::new(0),
            latency: Mutex::new(new_hist()),
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("valid precision")))
}

/// The counters as JSON.
#[derive(Debug, Serialize)]
pub struct StatsView {
    pub bulk_requests: u64,
    pub bulk_docs: u64,
    pub bulk_bytes: u64,
    pub otlp_requests: u64,
    pub otlp_spans: u64,
    pub otlp_points: u64,
    pub otlp_logs: u64,
    /// Records in the latency histogram.
    pub latency_count: u64,
    pub latency_p50_us: u64,
    pub latency_p90_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
}

impl SinkStats {
    /// A snapshot of the counters.
    pub fn view(&self) -> StatsView {
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        StatsView {
            bulk_requests: self.bulk_requests.load(Ordering::Relaxed),
            bulk_docs: self.bulk_docs.load(Ordering::Relaxed),
            bulk_bytes: self.bulk_bytes.load(Ordering::Relaxed),
            otlp_requests: self.otlp_requests.load(Ordering::Relaxed),
            otlp_spans: self.otlp_spans.load(Ordering::Relaxed),
            otlp_points: self.otlp_points.load(Ordering::Relaxed),
            otlp_logs: self.otlp_logs.load(Ordering::Relaxed),
            latency_count: h.len(),
            latency_p50_us: h.value_at_quantile(0.5),
            latency_p90_us: h.value_at_quantile(0.9),
            latency_p99_us: h.value_at_quantile(0.99),
            latency_max_us: h.max(),
        }
    }

    fn record_ages(&self, ages_us: &[u64]) {
        if ages_us.is_empty() {
            return;
        }
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for a in ages_us {
            let _ = h.record((*a).max(1));
        }
    }

    /// Empties the latency histogram (start of a measured window).
    pub fn reset_latency(&self) {
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Age in µs of a record stamped `t_ns`, if it looks stamped by the load generator.
fn age_us(now: u64, t_ns: u64) -> Option<u64> {
    if t_ns == 0 || t_ns > now + 1_000_000_000 || now.saturating_sub(t_ns) > MAX_AGE_NS {
        return None;
    }
    Some(now.saturating_sub(t_ns) / 1000)
}

fn gunzip_if(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, String> {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gz {
        return Ok(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len() * 6);
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_BODY as u64)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip body: {e}"))?;
    Ok(out)
}

/// The reply items of a bulk body, and the ages of the stamped documents.
/// Each action line is answered with success (`create` → 201, `index` → 200).
pub fn answer_bulk(body: &[u8], now: u64) -> Result<(Vec<u8>, u64, Vec<u64>), String> {
    let mut reply = Vec::with_capacity(64 + body.len() / 40);
    reply.extend_from_slice(b"{\"took\":0,\"errors\":false,\"items\":[");
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let mut docs = 0u64;
    let mut ages = Vec::new();
    while let Some(action) = lines.next() {
        let (op, status): (&[u8], &[u8]) = if action.starts_with(b"{\"create\"") {
            (b"create", b"201")
        } else if action.starts_with(b"{\"index\"") {
            (b"index", b"200")
        } else {
            return Err(format!(
                "unsupported bulk action line: {}",
                String::from_utf8_lossy(&action[..action.len().min(80)])
            ));
        };
        let Some(source) = lines.next() else {
            return Err("bulk body ends after an action line without its document".into());
        };
        const TS: &[u8] = b"{\"@timestamp\":\"";
        if source.starts_with(TS) {
            let rest = &source[TS.len()..];
            if let Some(end) = rest.iter().position(|b| *b == b'"') {
                let ts = std::str::from_utf8(&rest[..end])
                    .ok()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos() as u64);
                if let Some(a) = ts.and_then(|t| age_us(now, t)) {
                    ages.push(a);
                }
            }
        }
        if docs > 0 {
            reply.push(b',');
        }
        reply.extend_from_slice(b"{\"");
        reply.extend_from_slice(op);
        reply.extend_from_slice(b"\":{\"status\":");
        reply.extend_from_slice(status);
        reply.extend_from_slice(b"}}");
        docs += 1;
    }
    reply.extend_from_slice(b"]}");
    Ok((reply, docs, ages))
}

async fn root() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"name":"bench-sink","cluster_name":"bench-sink","version":{"number":"8.15.0","build_flavor":"default"},"tagline":"You Know, for Search"}"#,
    )
}

async fn template() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"acknowledged":true}"#,
    )
}

async fn bulk(State(st): State<Arc<SinkStats>>, headers: HeaderMap, body: Bytes) -> Response {
    st.bulk_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let raw = match gunzip_if(&headers, &body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    match answer_bulk(&raw, now_ns()) {
        Ok((reply, docs, ages)) => {
            st.bulk_requests.fetch_add(1, Ordering::Relaxed);
            st.bulk_docs.fetch_add(docs, Ordering::Relaxed);
            st.record_ages(&ages);
            ([(header::CONTENT_TYPE, "application/json")], reply).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

fn count_traces(st: &SinkStats, req: &ExportTraceServiceRequest) {
    let now = now_ns();
    let mut ages = Vec::new();
    let mut n = 0u64;
    for s in req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        n += 1;
        if let Some(a) = age_us(now, s.start_time_unix_nano) {
            ages.push(a);
        }
    }
    st.otlp_requests.fetch_add(1, Ordering::Relaxed);
    st.otlp_spans.fetch_add(n, Ordering::Relaxed);
    st.record_ages(&ages);
}

fn count_metrics(st: &SinkStats, req: &ExportMetricsServiceRequest) {
    let n = crate::pipeline::process::metric_points(req);
    st.otlp_requests.fetch_add(1, Ordering::Relaxed);
    st.otlp_points.fetch_add(n as u64, Ordering::Relaxed);
}

fn count_logs(st: &SinkStats, req: &ExportLogsServiceRequest) {
    let n: usize = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    st.otlp_requests.fetch_add(1, Ordering::Relaxed);
    st.otlp_logs.fetch_add(n as u64, Ordering::Relaxed);
}

fn protobuf_ok() -> Response {
    // An empty message is a valid Export*ServiceResponse without partial success.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

async fn otlp_traces(
    State(st): State<Arc<SinkStats>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match gunzip_if(&headers, &body)
        .and_then(|b| ExportTraceServiceRequest::decode(b.as_slice()).map_err(|e| e.to_string()))
    {
        Ok(req) => {
            count_traces(&st, &req);
            protobuf_ok()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn otlp_metrics(
    State(st): State<Arc<SinkStats>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match gunzip_if(&headers, &body)
        .and_then(|b| ExportMetricsServiceRequest::decode(b.as_slice()).map_err(|e| e.to_string()))
    {
        Ok(req) => {
            count_metrics(&st, &req);
            protobuf_ok()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn otlp_logs(State(st): State<Arc<SinkStats>>, headers: HeaderMap, body: Bytes) -> Response {
    match gunzip_if(&headers, &body)
        .and_then(|b| ExportLogsServiceRequest::decode(b.as_slice()).map_err(|e| e.to_string()))
    {
        Ok(req) => {
            count_logs(&st, &req);
            protobuf_ok()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

fn json_view(st: &SinkStats) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&st.view()).unwrap_or_default(),
    )
        .into_response()
}

async fn stats(State(st): State<Arc<SinkStats>>) -> Response {
    json_view(&st)
}

async fn reset(State(st): State<Arc<SinkStats>>) -> Response {
    st.reset_latency();
    json_view(&st)
}

/// The sink's HTTP routes (Elasticsearch subset, OTLP/HTTP, `/_sink/stats`).
pub fn router(stats_: Arc<SinkStats>) -> Router {
    Router::new()
        .route("/", get(root).head(root))
        .route("/_index_template/{name}", put(template))
        .route("/_bulk", post(bulk))
        .route("/{index}/_bulk", post(bulk))
        .route("/v1/traces", post(otlp_traces))
        .route("/v1/metrics", post(otlp_metrics))
        .route("/v1/logs", post(otlp_logs))
        .route("/_sink/stats", get(stats))
        .route("/_sink/reset", post(reset))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(stats_)
}

#[derive(Debug, Clone)]
struct GrpcSink(Arc<SinkStats>);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        count_traces(&self.0, request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        count_metrics(&self.0, request.get_ref());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        count_logs(&self.0, request.get_ref());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Serves the sink on bound listeners until `shutdown` resolves.
pub async fn serve(
    http: TcpListener,
    grpc: Option<TcpListener>,
    stats_: Arc<SinkStats>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let grpc_task = grpc.map(|l| {
        let sink = GrpcSink(stats_.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            use tonic::codec::CompressionEncoding::Gzip;
            tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(sink.clone())
                        .accept_compressed(Gzip)
                        .max_decoding_message_size(MAX_BODY),
                )
                .add_service(
                    MetricsServiceServer::new(sink.clone())
                        .accept_compressed(Gzip)
                        .max_decoding_message_size(MAX_BODY),
                )
                .add_service(
                    LogsServiceServer::new(sink)
                        .accept_compressed(Gzip)
                        .max_decoding_message_size(MAX_BODY),
                )
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                    token.cancelled_owned(),
                )
                .await
        })
    });
    let token = shutdown.clone();
    axum::serve(http, router(stats_))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await?;
    if let Some(t) = grpc_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_are_answered_in_order_and_stamped_docs_timed() {
        let now = 1_800_000_000_000_000_000u64;
        let t = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(now - 3_000_000));
        let body = format!(
            "{{\"create\":{{\"_index\":\"t\",\"_id\":\"1\"}}}}\n{{\"@timestamp\":\"{t}\",\"x\":1}}\n{{\"index\":{{}}}}\n{{\"@timestamp\":\"2001-01-01T00:00:00Z\"}}\n"
        );
        let (reply, docs, ages) = answer_bulk(body.as_bytes(), now).unwrap();
        assert_eq!(docs, 2);
        assert_eq!(ages, vec![3000]);
        let actions =
            crate::export::bulk::classify_response(200, &reply, 2).expect("a valid bulk reply");
        assert_eq!(actions.len(), 2);
        assert!(actions
            .iter()
            .all(|a| *a == crate::export::bulk::ItemAction::Delivered));
        assert!(answer_bulk(b"{\"create\":{}}\n", now).is_err());
        assert!(answer_bulk(b"{\"delete\":{}}\n", now).is_err());
    }
}
