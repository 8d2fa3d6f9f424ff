//! The OTLP output (processor mode): every scored request is forwarded to a
//! next OTLP hop, its records carrying `anomaly.*` attributes, over gRPC or
//! HTTP/protobuf, with the OTLP spec's retry rules.
//!
//! The request body is the sender's own protobuf with the attributes spliced
//! in at the wire level ([`wire`]), so fields this build does not know
//! survive. Each batch settles its records on its [`Ticket`] once it is
//! delivered or dead-lettered; see [`crate::export::completion`].

pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::Code;
use tonic_types::StatusExt;

use crate::config::{OtlpCompression, OtlpProtocol, OtlpTarget};
use crate::detect::Verdict;
use crate::export::completion::{Output, Ticket};
use crate::telemetry::Signal;

/// Metric names of the OTLP output (counters get `_total` appended).
pub mod names {
    pub const EXPORTED_RECORDS: &str = "otel_anomaly_otlp_exported_records";
    pub const REQUESTS: &str = "otel_anomaly_otlp_requests";
    pub const REJECTED_RECORDS: &str = "otel_anomaly_otlp_partial_rejected_records";
    pub const DEAD_LETTERED_RECORDS: &str = "otel_anomaly_otlp_dead_lettered_records";
    pub const QUEUED_BATCHES: &str = "otel_anomaly_otlp_queued_batches";
}

/// Outcome of one export request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestOutcome {
    ok,
    partial,
    retry,
    failed,
}

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub signal: Signal,
    pub outcome: RequestOutcome,
}

/// Labels of the per-signal counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalOnly {
    pub signal: Signal,
}

/// Self-metrics of the OTLP output.
#[derive(Debug, Default, Clone)]
pub struct OtlpMetrics {
    pub exported: Family<SignalOnly, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub partial_rejected: Family<SignalOnly, Counter>,
    pub dead_lettered: Family<SignalOnly, Counter>,
    pub queued_batches: Gauge,
}

impl OtlpMetrics {
    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        use names::*;
        registry.register(
            EXPORTED_RECORDS,
            "Records delivered to the OTLP next hop",
            self.exported.clone(),
        );
        registry.register(
            REQUESTS,
            "OTLP export requests, by outcome",
            self.requests.clone(),
        );
        registry.register(
            REJECTED_RECORDS,
            "Records the next hop rejected in a partial_success answer",
            self.partial_rejected.clone(),
        );
        registry.register(
            DEAD_LETTERED_RECORDS,
            "Records given up on for the OTLP output and written to the dead-letter file",
            self.dead_lettered.clone(),
        );
        registry.register(
            QUEUED_BATCHES,
            "Scored batches waiting for the OTLP output",
            self.queued_batches.clone(),
        );
    }

    fn request(&self, signal: Signal, outcome: RequestOutcome) {
        self.requests
            .get_or_create(&RequestLabels { signal, outcome })
            .inc();
    }
}

/// One request's enriched records on their way to the next hop.
#[derive(Debug)]
pub struct OtlpBatch {
    pub signal: Signal,
    /// The export request, protobuf, uncompressed.
    pub body: Bytes,
    /// Records in the request.
    pub records: usize,
    pub ticket: Arc<Ticket>,
}

// ---- enrichment attributes -------------------------------------------------

fn kv(key: &str, value: AnyValueKind) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// The attributes added to a record: `anomaly.score` (double),
/// `anomaly.severity`, `anomaly.explanation` and, for a span whose key has an
/// open anomaly event, `anomaly.event_id`. The same values the Elasticsearch
/// documents carry in their `anomaly` object.
pub fn attributes_of(verdict: &Verdict, subject: &str, event_id: Option<u64>) -> Vec<KeyValue> {
    let mut explanation = String::with_capacity(96);
    verdict.explanation.render(subject, &mut explanation);
    let mut out = Vec::with_capacity(4);
    out.push(kv(
        "anomaly.score",
        AnyValueKind::DoubleValue((f64::from(verdict.score) * 100.0).round() / 100.0),
    ));
    out.push(kv(
        "anomaly.severity",
        AnyValueKind::StringValue(verdict.severity.as_str().to_string()),
    ));
    out.push(kv(
        "anomaly.explanation",
        AnyValueKind::StringValue(explanation),
    ));
    if let Some(id) = event_id {
        out.push(kv(
            "anomaly.event_id",
            AnyValueKind::StringValue(format!("{id:016x}")),
        ));
    }
    out
}

/// The attributes of a record the detector could not score (as in the documents).
pub fn not_scored_attributes(why: &str) -> Vec<KeyValue> {
    vec![
        kv("anomaly.score", AnyValueKind::DoubleValue(0.0)),
        kv(
            "anomaly.severity",
            AnyValueKind::StringValue("normal".into()),
        ),
        kv(
            "anomaly.explanation",
            AnyValueKind::StringValue(format!("not scored: {why}")),
        ),
    ]
}

// ---- replies and their classification ----------------------------------

/// The `partial_success` of any of the three export responses: they share
/// the layout (rejected count at tag 1, message at tag 2).
#[derive(Clone, PartialEq, Message)]
pub struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<PartialSuccess>,
}

/// `Export*PartialSuccess`.
#[derive(Clone, PartialEq, Message)]
pub struct PartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// What to do after a failed export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later: not before `after` when the server said so. `hop_away`
    /// marks a hop that cannot be reached (retried without a time limit).
    Retry {
        reason: String,
        after: Option<Duration>,
        hop_away: bool,
    },
    /// The next hop refused the data for good: dead-letter it.
    Drop(String),
}

/// Sorts a gRPC status as the OTLP spec does: `RESOURCE_EXHAUSTED` is
/// retried only with a `RetryInfo` (the server can recover), the transient
/// codes always, the rest never.
pub fn classify_grpc(status: &tonic::Status) -> Failure {
    let reason = format!("grpc {:?}: {}", status.code(), status.message());
    let after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    match status.code() {
        Code::Unavailable => Failure::Retry {
            reason,
            after,
            hop_away: true,
        },
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Failure::Retry {
            reason,
            after,
            hop_away: false,
        },
        Code::ResourceExhausted if after.is_some() => Failure::Retry {
            reason,
            after,
            hop_away: false,
        },
        _ => Failure::Drop(reason),
    }
}

/// Parses `Retry-After`: delay seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Sorts an HTTP status as the OTLP spec does: 429, 502, 503 and 504 are
/// retried (honouring `Retry-After`), other errors are not.
pub fn classify_http(status: u16, retry_after: Option<&str>, body: &[u8]) -> Failure {
    let message = match crate::receiver::http::RpcStatus::decode(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned(),
    };
    let reason = format!("http {status}: {message}");
    let after = retry_after.and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    match status {
        429 | 502 | 504 => Failure::Retry {
            reason,
            after,
            hop_away: false,
        },
        503 => Failure::Retry {
            reason,
            after,
            hop_away: true,
        },
        _ => Failure::Drop(reason),
    }
}

/// Delay before retry `attempt` (1-based): exponential with jitter, never
/// shorter than what the server asked for.
pub fn backoff(
    attempt: u32,
    initial: Duration,
    max: Duration,
    server: Option<Duration>,
) -> Duration {
    let base = initial.as_millis() as u64;
    let exp = base
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(max.as_millis() as u64)
        .max(1);
    let jittered = Duration::from_millis(rand::rng().random_range(exp / 2..=exp));
    match server {
        Some(s) => jittered.max(s),
        None => jittered,
    }
}

// ---- transports ------------------------------------------------------------

/// Sends pre-encoded request bytes as they are; decodes the reply's partial success.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Default)]
struct ReplyDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ReplyDecoder {
    type Item = ExportResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable export response: {e}")))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportResponse;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ReplyDecoder {
        ReplyDecoder
    }
}

fn grpc_path(signal: Signal) -> &'static str {
    match signal {
        Signal::traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

/// Errors building the OTLP output.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("export.otlp endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("export.otlp.ca_file: {0}")]
    Ca(String),
    #[error("export.otlp header {name}: {reason}")]
    Header { name: String, reason: String },
}

#[derive(Debug, Clone)]
enum Transport {
    Grpc {
        /// Channels of traces, metrics, logs.
        channels: Box<[Option<tonic::transport::Channel>; 3]>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
    },
}

fn signal_index(signal: Signal) -> usize {
    match signal {
        Signal::traces => 0,
        Signal::metrics => 1,
        Signal::logs => 2,
    }
}

/// The client of the next hop.
#[derive(Debug, Clone)]
pub struct OtlpClient {
    target: Arc<OtlpTarget>,
    transport: Transport,
}

/// What a delivered request reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    pub rejected: i64,
    pub message: String,
}

impl OtlpClient {
    /// A client for `target`. gRPC channels connect lazily (a hop that is down
    /// at start is retried like any other outage).
    pub fn new(target: &OtlpTarget) -> Result<Self, OtlpError> {
        let s = &target.settings;
        let transport = match s.protocol {
            OtlpProtocol::Grpc => {
                let mut channels: [Option<tonic::transport::Channel>; 3] = [None, None, None];
                for signal in [Signal::traces, Signal::metrics, Signal::logs] {
                    let Some(url) = target.endpoint(signal) else {
                        continue;
                    };
                    let endpoint_err = |reason: String| OtlpError::Endpoint {
                        url: url.to_string(),
                        reason,
                    };
                    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())
                        .map_err(|e| endpoint_err(e.to_string()))?
                        .timeout(s.timeout)
                        .connect_timeout(s.timeout.min(Duration::from_secs(5)))
                        .tcp_nodelay(true);
                    if url.starts_with("https://") {
                        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
                        if let Some(pem) = &target.ca_pem {
                            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                        }
                        ep = ep
                            .tls_config(tls)
                            .map_err(|e| endpoint_err(e.to_string()))?;
                    }
                    channels[signal_index(signal)] = Some(ep.connect_lazy());
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &target.headers {
                    let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|e| {
                        OtlpError::Header {
                            name: name.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    let value =
                        MetadataValue::try_from(value.expose()).map_err(|e| OtlpError::Header {
                            name: name.clone(),
                            reason: e.to_string(),
                        })?;
                    metadata.append(key, value);
                }
                Transport::Grpc {
                    channels: Box::new(channels),
                    metadata,
                }
            }
            OtlpProtocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &target.headers {
                    let header_err = |reason: String| OtlpError::Header {
                        name: name.clone(),
                        reason,
                    };
                    let key = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| header_err(e.to_string()))?;
                    let mut v = reqwest::header::HeaderValue::from_str(value.expose())
                        .map_err(|e| header_err(e.to_string()))?;
                    v.set_sensitive(true);
                    headers.append(key, v);
                }
                let mut b = reqwest::Client::builder()
                    .timeout(s.timeout)
                    .connect_timeout(s.timeout.min(Duration::from_secs(5)))
                    .default_headers(headers);
                if let Some(pem) = &target.ca_pem {
                    let cert = reqwest::Certificate::from_pem(pem)
                        .map_err(|e| OtlpError::Ca(e.to_string()))?;
                    b = b.add_root_certificate(cert);
                }
                Transport::Http {
                    client: b.build().map_err(|e| OtlpError::Ca(e.to_string()))?,
                }
            }
        };
        Ok(Self {
            target: Arc::new(target.clone()),
            transport,
        })
    }

    fn gzip(&self) -> bool {
        self.target.settings.compression == OtlpCompression::Gzip
    }

    /// Sends one export request.
    pub async fn send(&self, signal: Signal, body: Bytes) -> Result<Delivered, Failure> {
        let partial = |r: ExportResponse| {
            r.partial_success
                .map(|p| Delivered {
                    rejected: p.rejected,
                    message: p.error_message,
                })
                .unwrap_or_default()
        };
        match &self.transport {
            Transport::Grpc { channels, metadata } => {
                let Some(channel) = channels[signal_index(signal)].clone() else {
                    return Err(Failure::Drop(format!("{signal:?} is not forwarded")));
                };
                let mut grpc = tonic::client::Grpc::new(channel);
                if self.gzip() {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
                grpc.ready().await.map_err(|e| Failure::Retry {
                    reason: format!("next hop not reachable: {e}"),
                    after: None,
                    hop_away: true,
                })?;
                let mut req = tonic::Request::new(body);
                *req.metadata_mut() = metadata.clone();
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(grpc_path(signal));
                match grpc.unary(req, path, RawCodec).await {
                    Ok(resp) => Ok(partial(resp.into_inner())),
                    Err(status) => Err(classify_grpc(&status)),
                }
            }
            Transport::Http { client } => {
                let Some(url) = self.target.endpoint(signal) else {
                    return Err(Failure::Drop(format!("{signal:?} is not forwarded")));
                };
                let mut req = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if self.gzip() {
                    let zipped = tokio::task::spawn_blocking(move || {
                        crate::export::elasticsearch::gzip(&body)
                    })
                    .await;
                    match zipped {
                        Ok(Ok(z)) => {
                            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
                            Bytes::from(z)
                        }
                        Ok(Err(e)) => return Err(Failure::Drop(format!("gzip failed: {e}"))),
                        Err(e) => return Err(Failure::Drop(format!("gzip task failed: {e}"))),
                    }
                } else {
                    body
                };
                let resp = req.body(body).send().await.map_err(|e| Failure::Retry {
                    reason: format!("next hop not reachable: {e}"),
                    after: None,
                    hop_away: e.is_connect(),
                })?;
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let reply = resp.bytes().await.unwrap_or_default();
                if (200..300).contains(&status) {
                    // An empty or undecodable 2xx body is a full success.
                    return Ok(ExportResponse::decode(reply)
                        .map(partial)
                        .unwrap_or_default());
                }
                Err(classify_http(status, retry_after.as_deref(), &reply))
            }
        }
    }
}

// ---- the output task -------------------------------------------------------

/// What the OTLP output shares with the rest of the sidecar.
#[derive(Debug, Clone)]
pub struct OtlpCtx {
    pub metrics: OtlpMetrics,
    pub dead_letter_path: std::path::PathBuf,
}

/// Appends a batch to the dead-letter file: one JSON line with the reason and
/// the (enriched) request as base64 protobuf, so it can be replayed.
pub fn dead_letter_batch(
    path: &std::path::Path,
    batch: &OtlpBatch,
    endpoint: &str,
    reason: &str,
    attempts: u32,
) -> std::io::Result<()> {
    use base64::Engine as _;
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let line = serde_json::json!({
        "output": "otlp",
        "signal": batch.signal.as_str(),
        "endpoint": endpoint,
        "reason": reason,
        "records": batch.records,
        "attempts": attempts,
        "request_protobuf_base64": base64::engine::general_purpose::STANDARD.encode(&batch.body),
    });
    let mut text = line.to_string();
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()
}

async fn deliver(client: OtlpClient, ctx: OtlpCtx, batch: OtlpBatch, hard_stop: CancellationToken) {
    let r = &client.target.settings.retry;
    let started = Instant::now();
    let signal = batch.signal;
    let endpoint = client.target.endpoint(signal).unwrap_or("").to_string();
    let mut attempt = 0u32;
    let give_up = loop {
        attempt += 1;
        let sent = tokio::select! {
            s = client.send(signal, batch.body.clone()) => s,
            _ = hard_stop.cancelled() => {
                tracing::error!(signal = signal.as_str(), records = batch.records, "shutdown deadline reached before the batch reached the next otlp hop");
                return;
            }
        };
        match sent {
            Ok(d) => {
                let rejected = d.rejected.max(0) as u64;
                if rejected > 0 {
                    ctx.metrics.request(signal, RequestOutcome::partial);
                    ctx.metrics
                        .partial_rejected
                        .get_or_create(&SignalOnly { signal })
                        .inc_by(rejected);
                    tracing::warn!(signal = signal.as_str(), rejected, message = %d.message, "next otlp hop rejected part of a request (partial_success)");
                } else {
                    ctx.metrics.request(signal, RequestOutcome::ok);
                    if !d.message.is_empty() {
                        tracing::info!(signal = signal.as_str(), message = %d.message, "next otlp hop sent a warning");
                    }
                }
                ctx.metrics
                    .exported
                    .get_or_create(&SignalOnly { signal })
                    .inc_by((batch.records as u64).saturating_sub(rejected));
                batch.ticket.settle(Output::Otlp, batch.records);
                return;
            }
            Err(Failure::Drop(reason)) => {
                ctx.metrics.request(signal, RequestOutcome::failed);
                break reason;
            }
            Err(Failure::Retry {
                reason,
                after,
                hop_away,
            }) => {
                ctx.metrics.request(signal, RequestOutcome::retry);
                if !hop_away && started.elapsed() >= r.max_elapsed {
                    break format!(
                        "retries exhausted after {attempt} attempts in {:?} (export.otlp.retry.max_elapsed): {reason}",
                        started.elapsed()
                    );
                }
                let wait = backoff(attempt, r.initial_backoff, r.max_backoff, after);
                tracing::warn!(signal = signal.as_str(), error = %reason, attempt, retry_in_ms = wait.as_millis() as u64, "otlp export failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = hard_stop.cancelled() => {
                        tracing::error!(signal = signal.as_str(), records = batch.records, "shutdown deadline reached before the batch reached the next otlp hop");
                        return;
                    }
                }
            }
        }
    };
    tracing::warn!(signal = signal.as_str(), records = batch.records, reason = %give_up, "next otlp hop refused a batch; dead-lettered");
    let path = ctx.dead_letter_path.clone();
    let records = batch.records;
    let ticket = batch.ticket.clone();
    let written = tokio::task::spawn_blocking(move || {
        dead_letter_batch(&path, &batch, &endpoint, &give_up, attempt)
    })
    .await
    .unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "dead-letter task failed: {e}"
        )))
    });
    match written {
        Ok(()) => {
            ctx.metrics
                .dead_lettered
                .get_or_create(&SignalOnly { signal })
                .inc_by(records as u64);
        }
        Err(e) => {
            tracing::error!(error = %e, path = %ctx.dead_letter_path.display(), records, "writing the dead-letter file failed; these records are lost")
        }
    }
    ticket.settle(Output::Otlp, records);
}

/// Runs the OTLP output until `input` closes and every batch is settled, or
/// `hard_stop` fires.
pub async fn run(
    client: OtlpClient,
    input: flume::Receiver<OtlpBatch>,
    ctx: OtlpCtx,
    hard_stop: CancellationToken,
) {
    let max_in_flight = client.target.settings.max_in_flight;
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut input_open = true;
    loop {
        ctx.metrics.queued_batches.set(input.len() as i64);
        if !input_open && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            msg = input.recv_async(), if input_open && in_flight.len() < max_in_flight => match msg {
                Ok(batch) => {
                    in_flight.spawn(deliver(client.clone(), ctx.clone(), batch, hard_stop.clone()));
                }
                Err(_) => input_open = false,
            },
            Some(joined) = in_flight.join_next() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "otlp delivery task failed");
                }
            }
            _ = hard_stop.cancelled() => {
                let waiting = input.len();
                if waiting > 0 {
                    tracing::error!(batches = waiting, "shutdown deadline reached with batches still waiting for the next otlp hop");
                }
                in_flight.shutdown().await;
                break;
            }
        }
    }
    ctx.metrics.queued_batches.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn grpc_codes_follow_the_spec() {
        let retry = |s: &tonic::Status| matches!(classify_grpc(s), Failure::Retry { .. });
        assert!(retry(&tonic::Status::unavailable("down")));
        assert!(retry(&tonic::Status::deadline_exceeded("slow")));
        assert!(retry(&tonic::Status::aborted("x")));
        assert!(!retry(&tonic::Status::invalid_argument("bad")));
        assert!(!retry(&tonic::Status::unauthenticated("who")));
        // RESOURCE_EXHAUSTED only with RetryInfo, whose delay is honoured.
        assert!(!retry(&tonic::Status::resource_exhausted("full")));
        let st = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "full",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(
            classify_grpc(&st),
            Failure::Retry {
                reason: "grpc ResourceExhausted: full".into(),
                after: Some(Duration::from_secs(3)),
                hop_away: false
            }
        );
    }

    #[test]
    fn http_statuses_follow_the_spec() {
        let body = crate::receiver::http::RpcStatus {
            code: 8,
            message: "queue full".into(),
        }
        .encode_to_vec();
        assert_eq!(
            classify_http(429, Some("7"), &body),
            Failure::Retry {
                reason: "http 429: queue full".into(),
                after: Some(Duration::from_secs(7)),
                hop_away: false
            }
        );
        assert!(matches!(
            classify_http(503, None, b""),
            Failure::Retry { hop_away: true, .. }
        ));
        assert!(matches!(
            classify_http(502, None, b""),
            Failure::Retry { .. }
        ));
        assert!(
            matches!(classify_http(400, None, b"nope"), Failure::Drop(r) if r == "http 400: nope")
        );
        assert!(matches!(classify_http(401, None, b""), Failure::Drop(_)));
        assert!(matches!(classify_http(413, None, b""), Failure::Drop(_)));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 12 ", now),
            Some(Duration::from_secs(12))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_respects_the_server() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..30 {
            let d = backoff(attempt, i, m, None);
            let cap = (100u64 << (attempt - 1).min(20)).min(2000);
            assert!(
                d >= Duration::from_millis(cap / 2) && d <= Duration::from_millis(cap),
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff(1, i, m, Some(Duration::from_secs(9))) >= Duration::from_secs(9));
    }

    #[test]
    fn attributes_carry_score_severity_explanation_and_event() {
        let v = Verdict::cold_start(3, 30);
        let a = attributes_of(&v, "GET /", Some(0xabc));
        let keys: Vec<&str> = a.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "anomaly.score",
                "anomaly.severity",
                "anomaly.explanation",
                "anomaly.event_id"
            ]
        );
        assert_eq!(
            a[3].value,
            Some(AnyValue {
                value: Some(AnyValueKind::StringValue("0000000000000abc".into()))
            })
        );
        assert!(matches!(
            a[0].value.as_ref().and_then(|v| v.value.clone()),
            Some(AnyValueKind::DoubleValue(_))
        ));
        assert_eq!(attributes_of(&v, "x", None).len(), 3);
    }
}
