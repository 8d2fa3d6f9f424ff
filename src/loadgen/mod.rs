//! OTLP load for benchmarks: pre-encoded realistic payloads sent over gRPC
//! or HTTP (protobuf or JSON) at a target rate or flat out, bounded by a
//! duration and an optional request count, with a report of the achieved
//! rate, errors and latency percentiles.

pub mod payload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde::Serialize;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

pub use payload::{Encoding, Prepared, SignalKind};

/// How the load is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies.
    HttpJson,
}

/// What to send, how fast and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of the OTLP receiver.
    pub target: String,
    pub protocol: Protocol,
    pub signal: SignalKind,
    /// Records (spans or points) per second; `None` sends flat out.
    pub rate: Option<f64>,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many requests (if sooner).
    pub max_requests: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Records per request.
    pub records_per_request: usize,
    /// Different pre-encoded requests to rotate through.
    pub payloads: usize,
    /// Services the records are spread over.
    pub services: usize,
    /// Seed of the payload generator.
    pub seed: u64,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Errors that stop the load before it starts.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error(
        "cannot reach the OTLP receiver at {target}: {reason} (is it running and listening there?)"
    )]
    Unreachable { target: String, reason: String },
    #[error("invalid target {0:?}: expected host:port")]
    BadTarget(String),
    #[error("invalid options: {0}")]
    Options(String),
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What the run achieved.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: Protocol,
    pub signal: SignalKind,
    pub payloads: usize,
    pub records_per_request: usize,
    pub avg_request_bytes: u64,
    pub avg_record_bytes: f64,
    pub elapsed_s: f64,
    pub requests_ok: u64,
    /// Requests refused with a retryable answer (429/503, RESOURCE_EXHAUSTED/UNAVAILABLE).
    pub requests_refused: u64,
    /// Other failures (timeouts, connection errors, 4xx/5xx).
    pub requests_failed: u64,
    /// Records in accepted requests minus those the receiver reported rejected.
    pub records_acked: u64,
    /// Records a receiver accepted the request of but reported rejected (partial success).
    pub records_rejected: u64,
    pub records_per_s: f64,
    pub target_records_per_s: Option<f64>,
    pub latency: Latency,
    /// A few distinct error messages, for the operator.
    pub error_samples: Vec<String>,
}

impl Report {
    /// A short human-readable summary.
    pub fn human(&self) -> String {
        format!(
            "{} {:?} {:?}: {:.1}s, {} ok / {} refused / {} failed requests, {} records acked ({} rejected), {:.0} records/s{}; request {} B ({:.0} B/record); latency p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs{}",
            self.target,
            self.protocol,
            self.signal,
            self.elapsed_s,
            self.requests_ok,
            self.requests_refused,
            self.requests_failed,
            self.records_acked,
            self.records_rejected,
            self.records_per_s,
            self.target_records_per_s
                .map(|r| format!(" (target {r:.0})"))
                .unwrap_or_default(),
            self.avg_request_bytes,
            self.avg_record_bytes,
            self.latency.p50_us,
            self.latency.p90_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            if self.error_samples.is_empty() {
                String::new()
            } else {
                format!("\nerrors: {}", self.error_samples.join(" | "))
            }
        )
    }
}

/// A tonic codec that sends pre-encoded bytes and returns the raw reply.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// The outcome of one request.
enum Outcome {
    Ok { rejected: u64 },
    Refused(String),
    Failed(String),
}

/// Rejected records reported by an OTLP response body (protobuf).
fn rejected_in(signal: SignalKind, body: &[u8]) -> u64 {
    let n = match signal {
        SignalKind::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_spans),
        SignalKind::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_data_points),
    };
    n.unwrap_or(0).max(0) as u64
}

/// Rejected records reported by an OTLP/JSON response body.
fn rejected_in_json(signal: SignalKind, body: &[u8]) -> u64 {
    let n = match signal {
        SignalKind::Traces => serde_json::from_slice::<ExportTraceServiceResponse>(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_spans),
        SignalKind::Metrics => serde_json::from_slice::<ExportMetricsServiceResponse>(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_data_points),
    };
    n.unwrap_or(0).max(0) as u64
}

enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http(reqwest::Client),
}

struct Shared {
    opts: Options,
    payloads: Vec<Prepared>,
    /// Next request number (also the index into the schedule and the payload rotation).
    next: AtomicU64,
    stop: AtomicBool,
    started: Instant,
    /// Seconds between scheduled requests, when rate-limited.
    interval_s: Option<f64>,
    url: String,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

const GRPC_TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const GRPC_METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

async fn send_one(client: &mut Client, sh: &Shared, body: Vec<u8>) -> Outcome {
    let signal = sh.opts.signal;
    match client {
        Client::Grpc(grpc) => {
            if let Err(e) = grpc.ready().await {
                return Outcome::Failed(format!("gRPC channel not ready: {e}"));
            }
            let path = match signal {
                SignalKind::Traces => GRPC_TRACES,
                SignalKind::Metrics => GRPC_METRICS,
            };
            let mut req = tonic::Request::new(Bytes::from(body));
            req.set_timeout(sh.opts.timeout);
            match grpc
                .unary(
                    req,
                    tonic::codegen::http::uri::PathAndQuery::from_static(path),
                    RawCodec,
                )
                .await
            {
                Ok(resp) => Outcome::Ok {
                    rejected: rejected_in(signal, resp.get_ref()),
                },
                Err(s) => match s.code() {
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                        Outcome::Refused(format!("{:?}: {}", s.code(), s.message()))
                    }
                    c => Outcome::Failed(format!("{c:?}: {}", s.message())),
                },
            }
        }
        Client::Http(http) => {
            let json = sh.opts.protocol == Protocol::HttpJson;
            let ct = if json {
                "application/json"
            } else {
                "application/x-protobuf"
            };
            let sent = http
                .post(&sh.url)
                .header(reqwest::header::CONTENT_TYPE, ct)
                .body(body)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(format!("HTTP request failed: {e}")),
            };
            let status = resp.status().as_u16();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return Outcome::Failed(format!("reading HTTP reply failed: {e}")),
            };
            match status {
                200..=299 => Outcome::Ok {
                    rejected: if json {
                        rejected_in_json(signal, &bytes)
                    } else {
                        rejected_in(signal, &bytes)
                    },
                },
                429 | 503 => Outcome::Refused(format!("HTTP {status}")),
                s => Outcome::Failed(format!(
                    "HTTP {s}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )),
            }
        }
    }
}

struct WorkerResult {
    hist: Histogram<u64>,
    ok: u64,
    refused: u64,
    failed: u64,
    acked: u64,
    rejected: u64,
    bytes: u64,
    errors: Vec<String>,
}

async fn worker(mut client: Client, sh: Arc<Shared>) -> WorkerResult {
    let mut r = WorkerResult {
        // 1 µs to 100 s, 3 significant digits.
        hist: Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| {
            Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
        }),
        ok: 0,
        refused: 0,
        failed: 0,
        acked: 0,
        rejected: 0,
        bytes: 0,
        errors: Vec::new(),
    };
    let deadline = sh.started + sh.opts.duration;
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if sh.opts.max_requests.is_some_and(|m| i >= m) {
            break;
        }
        if let Some(iv) = sh.interval_s {
            let at = sh.started + Duration::from_secs_f64(iv * i as f64);
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let p = &sh.payloads[(i as usize) % sh.payloads.len()];
        let body = p.stamped(now_ns());
        r.bytes += body.len() as u64;
        let t0 = Instant::now();
        let outcome = send_one(&mut client, &sh, body).await;
        let us = t0.elapsed().as_micros() as u64;
        let _ = r.hist.record(us.max(1));
        let note = |e: String, errors: &mut Vec<String>| {
            if errors.len() < 5 && !errors.contains(&e) {
                errors.push(e);
            }
        };
        match outcome {
            Outcome::Ok { rejected } => {
                r.ok += 1;
                r.rejected += rejected;
                r.acked += p.records.saturating_sub(rejected);
            }
            Outcome::Refused(e) => {
                r.refused += 1;
                note(e, &mut r.errors);
            }
            Outcome::Failed(e) => {
                r.failed += 1;
                note(e, &mut r.errors);
            }
        }
    }
    r
}

async fn preflight(target: &str) -> Result<SocketAddr, LoadgenError> {
    let addr = tokio::net::lookup_host(target)
        .await
        .map_err(|_| LoadgenError::BadTarget(target.to_string()))?
        .next()
        .ok_or_else(|| LoadgenError::BadTarget(target.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(addr),
        Ok(Err(e)) => Err(LoadgenError::Unreachable {
            target: target.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(LoadgenError::Unreachable {
            target: target.to_string(),
            reason: "connect timed out after 5s".into(),
        }),
    }
}

/// Pre-encodes the payloads for `opts`.
pub fn prepare(opts: &Options) -> Vec<Prepared> {
    let encoding = match opts.protocol {
        Protocol::HttpJson => Encoding::Json,
        _ => Encoding::Protobuf,
    };
    payload::prepare(
        opts.signal,
        encoding,
        opts.payloads,
        opts.records_per_request,
        opts.services,
        opts.seed,
    )
}

/// Runs the load and reports what it achieved.
pub async fn run(opts: Options) -> Result<Report, LoadgenError> {
    if opts.concurrency == 0 || opts.records_per_request == 0 || opts.payloads == 0 {
        return Err(LoadgenError::Options(
            "concurrency, records per request and payloads must be at least 1".into(),
        ));
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(LoadgenError::Options(
            "rate must be a positive number".into(),
        ));
    }
    let addr = preflight(&opts.target).await?;
    let payloads = prepare(&opts);
    let records_per_request =
        payloads.iter().map(|p| p.records).sum::<u64>() as f64 / payloads.len() as f64;
    let path = match opts.signal {
        SignalKind::Traces => "/v1/traces",
        SignalKind::Metrics => "/v1/metrics",
    };
    let mut clients = Vec::with_capacity(opts.concurrency);
    let http = reqwest::Client::builder()
        .timeout(opts.timeout)
        .pool_max_idle_per_host(opts.concurrency)
        .build()
        .map_err(|e| LoadgenError::Options(format!("HTTP client: {e}")))?;
    for _ in 0..opts.concurrency {
        clients.push(match opts.protocol {
            Protocol::Grpc => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|_| LoadgenError::BadTarget(opts.target.clone()))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| LoadgenError::Unreachable {
                        target: opts.target.clone(),
                        reason: format!("gRPC connect failed: {e}"),
                    })?;
                Client::Grpc(
                    tonic::client::Grpc::new(ch)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
            }
            _ => Client::Http(http.clone()),
        });
    }
    let interval_s = opts.rate.map(|r| records_per_request / r);
    let sh = Arc::new(Shared {
        url: format!("http://{addr}{path}"),
        payloads,
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        started: Instant::now(),
        interval_s,
        opts: opts.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        tasks.spawn(worker(c, sh.clone()));
    }
    let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 100_000_000, 3)
        .map_err(|e| LoadgenError::Options(e.to_string()))?;
    let (mut ok, mut refused, mut failed, mut acked, mut rejected, mut bytes) = (0, 0, 0, 0, 0, 0);
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok(w) = joined else { continue };
        let _ = hist.add(&w.hist);
        ok += w.ok;
        refused += w.refused;
        failed += w.failed;
        acked += w.acked;
        rejected += w.rejected;
        bytes += w.bytes;
        for e in w.errors {
            if errors.len() < 5 && !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    let elapsed = sh.started.elapsed().as_secs_f64();
    let sent = ok + refused + failed;
    let avg_request_bytes = bytes.checked_div(sent).unwrap_or(0);
    Ok(Report {
        target: opts.target.clone(),
        protocol: opts.protocol,
        signal: opts.signal,
        payloads: opts.payloads,
        records_per_request: opts.records_per_request,
        avg_request_bytes,
        avg_record_bytes: avg_request_bytes as f64 / records_per_request.max(1.0),
        elapsed_s: elapsed,
        requests_ok: ok,
        requests_refused: refused,
        requests_failed: failed,
        records_acked: acked,
        records_rejected: rejected,
        records_per_s: acked as f64 / elapsed.max(1e-9),
        target_records_per_s: opts.rate,
        latency: Latency {
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        },
        error_samples: errors,
    })
}
