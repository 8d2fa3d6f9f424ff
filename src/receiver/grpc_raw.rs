//! OTLP/gRPC services that keep each request's own protobuf bytes, for
//! processor mode: the OTLP output splices the anomaly attributes into those
//! bytes, so fields prost does not know reach the next hop. Same paths,
//! answers, limits and compression as the generated services in `grpc.rs`;
//! used only when the pipeline keeps wire bytes.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::Status;

use super::grpc::GrpcReceiver;
use super::http::Otlp;
use super::partial;
use crate::pipeline::{validate, Payload};

/// A received request and its bytes.
#[derive(Debug)]
pub struct Captured<T> {
    pub message: Decoded<T>,
    pub wire: Bytes,
}

/// How a request was read.
#[derive(Debug)]
pub enum Decoded<T> {
    /// Decoded by prost.
    Prost(T),
    /// Left as its bytes, checked by the wire reader: the payload and its records.
    Wire(Payload, usize),
}

/// One signal's export service.
/// One OTLP service: its request type (validation, payload and response
/// come from the HTTP receiver's [`Otlp`]) and its gRPC names.
pub trait Signal: Send + Sync + 'static {
    type Request: Otlp;
    /// The gRPC service name.
    const NAME: &'static str;
    /// The method path.
    const PATH: &'static str;
}

/// The response type of a signal.
type Resp<S> = <<S as Signal>::Request as Otlp>::Response;

/// Traces.
#[derive(Debug)]
pub struct Traces;
/// Metrics.
#[derive(Debug)]
pub struct Metrics;
/// Logs.
#[derive(Debug)]
pub struct Logs;

impl Signal for Traces {
    type Request = ExportTraceServiceRequest;
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
}

impl Signal for Metrics {
    type Request = ExportMetricsServiceRequest;
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
}

impl Signal for Logs {
    type Request = ExportLogsServiceRequest;
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
}

/// Decodes with prost and keeps the bytes; encodes replies with prost.
struct CaptureCodec<S>(PhantomData<S>);

struct CaptureDecoder<S>(PhantomData<S>);

struct ReplyEncoder<S>(PhantomData<S>);

impl<S: Signal> Decoder for CaptureDecoder<S> {
    type Item = Captured<S::Request>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let wire = src.copy_to_bytes(src.remaining());
        // The wire reader's payload waits in the queue until it is scored: it
        // gets bytes of its own, not a slice that would keep the whole of
        // tonic's receive buffer allocated that long.
        if let Some((payload, records)) = S::Request::read_wire(&Bytes::copy_from_slice(&wire)) {
            return Ok(Some(Captured {
                message: Decoded::Wire(payload, records),
                wire,
            }));
        }
        let message = S::Request::decode(wire.clone())
            .map_err(|e| Status::invalid_argument(format!("malformed protobuf: {e}")))?;
        Ok(Some(Captured {
            message: Decoded::Prost(message),
            wire,
        }))
    }
}

impl<S: Signal> Encoder for ReplyEncoder<S> {
    type Item = Resp<S>;
    type Error = Status;
    fn encode(&mut self, item: Resp<S>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the reply failed: {e}")))
    }
}

impl<S: Signal> Codec for CaptureCodec<S> {
    type Encode = Resp<S>;
    type Decode = Captured<S::Request>;
    type Encoder = ReplyEncoder<S>;
    type Decoder = CaptureDecoder<S>;
    fn encoder(&mut self) -> Self::Encoder {
        ReplyEncoder(PhantomData)
    }
    fn decoder(&mut self) -> Self::Decoder {
        CaptureDecoder(PhantomData)
    }
}

/// The export service of signal `S`, keeping request bytes.
pub struct Server<S> {
    receiver: Arc<GrpcReceiver>,
    max_message_bytes: usize,
    _signal: PhantomData<S>,
}

impl<S> Clone for Server<S> {
    fn clone(&self) -> Self {
        Self {
            receiver: self.receiver.clone(),
            max_message_bytes: self.max_message_bytes,
            _signal: PhantomData,
        }
    }
}

impl<S: Signal> Server<S> {
    /// A service feeding `receiver`'s pipeline; `max_message_bytes` caps a message after decompression.
    pub fn new(receiver: GrpcReceiver, max_message_bytes: usize) -> Self {
        Self {
            receiver: Arc::new(receiver),
            max_message_bytes,
            _signal: PhantomData,
        }
    }
}

impl<S: Signal> NamedService for Server<S> {
    const NAME: &'static str = S::NAME;
}

struct Export<S> {
    receiver: Arc<GrpcReceiver>,
    _signal: PhantomData<S>,
}

impl<S: Signal> tonic::server::UnaryService<Captured<S::Request>> for Export<S> {
    type Response = Resp<S>;
    type Future = BoxFuture<tonic::Response<Resp<S>>, Status>;
    fn call(&mut self, request: tonic::Request<Captured<S::Request>>) -> Self::Future {
        let receiver = self.receiver.clone();
        Box::pin(async move {
            let Captured { message, wire } = request.into_inner();
            let mut message = match message {
                Decoded::Prost(m) => m,
                Decoded::Wire(payload, records) => {
                    let checked = validate::Checked {
                        accepted: records,
                        ..Default::default()
                    };
                    receiver
                        .submit_with_wire(payload, &checked, Some(wire))
                        .await?;
                    return Ok(tonic::Response::new(<S::Request as Otlp>::response(
                        partial(&checked),
                    )));
                }
            };
            let checked = message.check();
            // Records removed by validation are still in the bytes: forward the decoded request then.
            let wire = (checked.rejected == 0).then_some(wire);
            receiver
                .submit_with_wire(message.into_payload(), &checked, wire)
                .await?;
            Ok(tonic::Response::new(<S::Request as Otlp>::response(
                partial(&checked),
            )))
        })
    }
}

impl<S, B> Service<http::Request<B>> for Server<S>
where
    S: Signal,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != S::PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        let method = Export::<S> {
            receiver: self.receiver.clone(),
            _signal: PhantomData,
        };
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(CaptureCodec::<S>(PhantomData))
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max);
            Ok(grpc.unary(method, req).await)
        })
    }
}
