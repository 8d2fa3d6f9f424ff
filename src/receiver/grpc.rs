//! OTLP/gRPC receiver (tonic): traces, metrics and logs services.

use std::future::Future;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{partial, RETRY_AFTER};
use crate::pipeline::{validate, Payload, Pipeline, Refusal};
use crate::telemetry::{Metrics, RejectLabels, RejectReason, Signal};

/// The gRPC services, sharing one pipeline.
#[derive(Debug, Clone)]
pub struct GrpcReceiver {
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
}

/// The gRPC status of a refusal. Queue-full answers carry `RetryInfo`:
/// OTel exporters retry RESOURCE_EXHAUSTED only when it is there.
pub fn refusal_status(r: &Refusal) -> Status {
    match r {
        Refusal::QueueFull { .. } | Refusal::WalFull { .. } => Status::with_error_details(
            Code::ResourceExhausted,
            r.to_string(),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        Refusal::ShuttingDown | Refusal::Storage { .. } => Status::unavailable(r.to_string()),
        Refusal::TooLarge { .. } => Status::invalid_argument(r.to_string()),
    }
}

impl GrpcReceiver {
    /// Services feeding `pipeline`.
    pub fn new(pipeline: Arc<Pipeline>, metrics: Arc<Metrics>) -> Self {
        Self { pipeline, metrics }
    }

    async fn submit(&self, payload: Payload, checked: &validate::Checked) -> Result<(), Status> {
        self.submit_with_wire(payload, checked, None).await
    }

    /// Submits a request with its own protobuf bytes (processor mode, `grpc_raw`).
    pub(crate) async fn submit_with_wire(
        &self,
        payload: Payload,
        checked: &validate::Checked,
        wire: Option<bytes::Bytes>,
    ) -> Result<(), Status> {
        let signal = payload.signal();
        if checked.rejected > 0 {
            self.count_rejected(signal, RejectReason::invalid_record, checked.rejected);
        }
        self.pipeline
            .accept_wire(payload, checked.accepted, wire)
            .await
            .map_err(|r| {
                let reason = match r {
                    Refusal::QueueFull { .. } => RejectReason::queue_full,
                    Refusal::ShuttingDown => RejectReason::shutting_down,
                    Refusal::TooLarge { .. } => RejectReason::too_large,
                    Refusal::WalFull { .. } => RejectReason::wal_full,
                    Refusal::Storage { .. } => RejectReason::storage_error,
                };
                self.count_rejected(signal, reason, checked.accepted);
                refusal_status(&r)
            })
    }

    fn count_rejected(&self, signal: Signal, reason: RejectReason, n: usize) {
        self.metrics
            .rejected
            .get_or_create(&RejectLabels { signal, reason })
            .inc_by(n as u64);
    }
}

#[async_trait::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut req = request.into_inner();
        let checked = validate::traces(&mut req);
        self.submit(Payload::Traces(req), &checked).await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: partial(&checked).map(|(rejected_spans, error_message)| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }
            }),
        }))
    }
}

#[async_trait::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut req = request.into_inner();
        let checked = validate::metrics(&mut req);
        self.submit(Payload::Metrics(req), &checked).await?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: partial(&checked).map(|(rejected_data_points, error_message)| {
                ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                }
            }),
        }))
    }
}

#[async_trait::async_trait]
impl LogsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let req = request.into_inner();
        let checked = validate::logs(&req);
        self.submit(Payload::Logs(req), &checked).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: partial(&checked).map(|(rejected_log_records, error_message)| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        }))
    }
}

/// Serves OTLP/gRPC on a bound listener until `shutdown` resolves; in-flight
/// calls finish first. `max_message_bytes` caps a message after decompression.
pub async fn serve(
    listener: TcpListener,
    receiver: GrpcReceiver,
    max_message_bytes: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(
        listener,
        receiver,
        max_message_bytes,
        Security::default(),
        shutdown,
    )
    .await
}

/// TLS and bearer-token auth of a receiver (both optional).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Serve TLS (mTLS when its settings name a client CA).
    pub tls: Option<Arc<crate::tls::TlsSource>>,
    /// Refuse calls without an accepted bearer token (UNAUTHENTICATED).
    pub auth: Option<super::auth::ReceiverAuth>,
}

/// [`serve`] with TLS and/or auth.
pub async fn serve_with(
    listener: TcpListener,
    receiver: GrpcReceiver,
    max_message_bytes: usize,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder =
        tonic::transport::Server::builder().layer(super::auth::grpc_layer(security.auth));
    let router = if receiver.pipeline.wants_wire() {
        // Processor mode or the write-ahead queue: services that keep each
        // request's bytes (see grpc_raw).
        use super::grpc_raw::{Logs, Metrics, Server, Traces};
        let max = max_message_bytes;
        builder
            .add_service(Server::<Traces>::new(receiver.clone(), max))
            .add_service(Server::<Metrics>::new(receiver.clone(), max))
            .add_service(Server::<Logs>::new(receiver, max))
    } else {
        let traces = TraceServiceServer::new(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message_bytes);
        let metrics = MetricsServiceServer::new(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message_bytes);
        let logs = LogsServiceServer::new(receiver)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message_bytes);
        builder
            .add_service(traces)
            .add_service(metrics)
            .add_service(logs)
    };
    match security.tls {
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Some(src) => match crate::tls::TlsListener::new(listener, src) {
            Ok(l) => {
                router
                    .serve_with_incoming_shutdown(l.into_incoming(), shutdown)
                    .await
            }
            // Only if the socket has no local address, which a bound one has.
            Err(e) => {
                tracing::error!(error = %e, "otlp/grpc receiver cannot serve tls");
                Ok(())
            }
        },
    }
}
