//! OTLP/HTTP receiver (axum): `POST /v1/traces`, `/v1/metrics`, `/v1/logs`,
//! protobuf or JSON, optionally gzip. Errors are `google.rpc.Status` bodies
//! in the request's format, with the HTTP status the OTLP spec asks for.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;

use super::auth::ReceiverAuth;
use super::decode::{decode, decompress, format_of, DecodeError, Format};
use super::{partial, RETRY_AFTER};
use crate::pipeline::validate::{self, Checked};
use crate::pipeline::{Payload, Pipeline, Refusal, WireMetrics, WireTraces};
use crate::telemetry::{Metrics, RejectLabels, RejectReason, Signal};

/// Bodies larger than this are decoded on a blocking thread.
const INLINE_DECODE_BYTES: usize = 64 << 10;

/// `google.rpc.Status`, the OTLP/HTTP error body.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Limits of the HTTP receiver.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_decompressed_bytes: usize,
}

#[derive(Clone)]
struct AppState {
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    limits: Limits,
    auth: Option<ReceiverAuth>,
}

/// The OTLP/HTTP router.
pub fn router(pipeline: Arc<Pipeline>, metrics: Arc<Metrics>, limits: Limits) -> Router {
    router_with_auth(pipeline, metrics, limits, None)
}

/// The OTLP/HTTP router; with `auth`, requests without an accepted bearer
/// token get 401 before their body is read.
pub fn router_with_auth(
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    limits: Limits,
    auth: Option<ReceiverAuth>,
) -> Router {
    let state = AppState {
        pipeline,
        metrics,
        limits,
        auth,
    };
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics_handler))
        .route("/v1/logs", post(logs))
        .with_state(state)
}

/// Serves OTLP/HTTP on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn error_response(status: StatusCode, format: Format, message: String, retry: bool) -> Response {
    // gRPC code numbers for the body, as the spec's examples use.
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::UNAUTHORIZED => 16,
        _ => 3,
    };
    let st = RpcStatus { code, message };
    let (ct, body) = match format {
        Format::Protobuf => ("application/x-protobuf", st.encode_to_vec()),
        Format::Json => (
            "application/json",
            serde_json::to_vec(&st).unwrap_or_default(),
        ),
    };
    let mut resp = (status, [(header::CONTENT_TYPE, ct)], body).into_response();
    if retry {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER.as_secs()),
        );
    }
    resp
}

fn decode_status(e: &DecodeError) -> (StatusCode, RejectReason) {
    match e {
        DecodeError::BodyTooLarge { .. } | DecodeError::DecompressedTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, RejectReason::too_large)
        }
        DecodeError::UnsupportedEncoding(_) | DecodeError::UnsupportedMediaType(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RejectReason::unsupported_media_type,
        ),
        DecodeError::Gzip(_) | DecodeError::Protobuf(_) | DecodeError::Json(_) => {
            (StatusCode::BAD_REQUEST, RejectReason::malformed)
        }
    }
}

/// One signal's request and response types, and how to validate it.
pub trait Otlp: Message + Default + serde::de::DeserializeOwned + Send + 'static {
    type Response: Message + Serialize + Send + 'static;
    const SIGNAL: Signal;
    fn check(&mut self) -> Checked;
    fn into_payload(self) -> Payload;
    fn response(partial: Option<(i64, String)>) -> Self::Response;
    /// The request as a payload read from its protobuf bytes without prost,
    /// with its records, when the wire reader takes it (see `receiver::wire`
    /// for traces, `receiver::wire_metrics` for metrics).
    fn read_wire(_wire: &bytes::Bytes) -> Option<(Payload, usize)> {
        None
    }
}

impl Otlp for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::traces;
    fn check(&mut self) -> Checked {
        validate::traces(self)
    }
    fn into_payload(self) -> Payload {
        Payload::Traces(self)
    }
    fn read_wire(wire: &bytes::Bytes) -> Option<(Payload, usize)> {
        let spans = super::wire::check_traces(wire).ok()?;
        let payload = Payload::TracesWire(WireTraces {
            bytes: wire.clone(),
            spans,
        });
        Some((payload, spans))
    }
    fn response(partial: Option<(i64, String)>) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: partial.map(|(rejected_spans, error_message)| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }
            }),
        }
    }
}

impl Otlp for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: Signal = Signal::metrics;
    fn check(&mut self) -> Checked {
        validate::metrics(self)
    }
    fn into_payload(self) -> Payload {
        Payload::Metrics(self)
    }
    fn read_wire(wire: &bytes::Bytes) -> Option<(Payload, usize)> {
        let points = super::wire_metrics::check_metrics(wire).ok()?;
        let payload = Payload::MetricsWire(WireMetrics {
            bytes: wire.clone(),
            points,
        });
        Some((payload, points))
    }
    fn response(partial: Option<(i64, String)>) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: partial.map(|(rejected_data_points, error_message)| {
                ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                }
            }),
        }
    }
}

impl Otlp for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const SIGNAL: Signal = Signal::logs;
    fn check(&mut self) -> Checked {
        validate::logs(self)
    }
    fn into_payload(self) -> Payload {
        Payload::Logs(self)
    }
    fn response(partial: Option<(i64, String)>) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: partial.map(|(rejected_log_records, error_message)| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        }
    }
}

/// A received body: decoded by prost (with its bytes, when kept), or left as
/// its bytes for the wire reader (payload, records, bytes).
enum Received<T> {
    Prost(T, Option<bytes::Bytes>),
    Wire(Payload, usize, bytes::Bytes),
}

async fn handle<T: Otlp>(state: AppState, headers: HeaderMap, body: Body) -> Response {
    let reject = |reason: RejectReason, n: usize| {
        state
            .metrics
            .rejected
            .get_or_create(&RejectLabels {
                signal: T::SIGNAL,
                reason,
            })
            .inc_by(n.max(1) as u64);
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = match format_of(content_type) {
        Ok(f) => f,
        Err(e) => {
            reject(RejectReason::unsupported_media_type, 1);
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Format::Json,
                e.to_string(),
                false,
            );
        }
    };
    if let Some(auth) = &state.auth {
        if let Err(f) = auth.check_request(&headers, T::SIGNAL) {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                format,
                f.message().to_string(),
                false,
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"otlp\""),
            );
            return resp;
        }
    }
    let limits = state.limits;
    let fail = |e: DecodeError| {
        let (status, reason) = decode_status(&e);
        reject(reason, 1);
        error_response(status, format, e.to_string(), false)
    };
    let raw = match http_body_util::Limited::new(body, limits.max_request_bytes)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return fail(DecodeError::BodyTooLarge {
                    limit: limits.max_request_bytes,
                });
            }
            // The client went away or sent a broken body.
            reject(RejectReason::malformed, 1);
            return error_response(
                StatusCode::BAD_REQUEST,
                format,
                format!("reading request body failed: {e}"),
                false,
            );
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Decide on the bytes actually read, not on Content-Length (absent when chunked).
    let small = raw.len() <= INLINE_DECODE_BYTES;
    // Processor mode forwards the request's own bytes (see `Work::wire`);
    // the write-ahead queue stores them as they are.
    let keep_wire = format == Format::Protobuf && state.pipeline.wants_wire();
    let work = move || -> Result<Received<T>, DecodeError> {
        let body = decompress(raw, encoding.as_deref(), limits.max_decompressed_bytes)?;
        if format == Format::Protobuf {
            if let Some((payload, records)) = T::read_wire(&body) {
                return Ok(Received::Wire(payload, records, body));
            }
        }
        let req = decode::<T>(&body, format)?;
        Ok(Received::Prost(req, keep_wire.then_some(body)))
    };
    let decoded = if small {
        work()
    } else {
        match tokio::task::spawn_blocking(work).await {
            Ok(r) => r,
            Err(e) => Err(DecodeError::Protobuf(format!("decoder failed: {e}"))),
        }
    };
    let (payload, checked, wire) = match decoded {
        Ok(Received::Wire(payload, records, body)) => {
            let checked = Checked {
                accepted: records,
                ..Default::default()
            };
            // The pipeline keeps the bytes only where it wants them (see `Pipeline::accept_wire`).
            (payload, checked, keep_wire.then_some(body))
        }
        Ok(Received::Prost(mut req, wire)) => {
            let checked = req.check();
            if checked.rejected > 0 {
                reject(RejectReason::invalid_record, checked.rejected);
            }
            // Records removed by validation are still in the bytes: forward the decoded request then.
            let wire = wire.filter(|_| checked.rejected == 0);
            (req.into_payload(), checked, wire)
        }
        Err(e) => return fail(e),
    };
    if let Err(r) = state
        .pipeline
        .accept_wire(payload, checked.accepted, wire)
        .await
    {
        let (status, reason, retry) = match r {
            Refusal::QueueFull { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                RejectReason::queue_full,
                true,
            ),
            Refusal::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                RejectReason::shutting_down,
                true,
            ),
            Refusal::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                RejectReason::too_large,
                false,
            ),
            Refusal::WalFull { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, RejectReason::wal_full, true)
            }
            Refusal::Storage { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                RejectReason::storage_error,
                true,
            ),
        };
        reject(reason, checked.accepted);
        return error_response(status, format, r.to_string(), retry);
    }
    let resp = T::response(partial(&checked));
    match format {
        Format::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Format::Json => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response(),
    }
}

async fn traces(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle::<ExportTraceServiceRequest>(s, headers, body).await
}

async fn metrics_handler(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle::<ExportMetricsServiceRequest>(s, headers, body).await
}

async fn logs(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle::<ExportLogsServiceRequest>(s, headers, body).await
}
