//! OTLP front doors: gRPC (tonic) on 4317 and HTTP (axum) on 4318, the
//! collector's ports and paths. Both bind first, then serve until a
//! shutdown future resolves.

pub mod auth;
pub mod decode;
pub mod grpc;
pub mod grpc_raw;
pub mod http;
pub mod wire;
pub mod wire_metrics;

use std::time::Duration;

use crate::pipeline::validate::Checked;

/// Delay clients are told to wait before retrying a refused request.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `partial_success` fields: (rejected count, message), or `None` when all were accepted.
pub fn partial(c: &Checked) -> Option<(i64, String)> {
    (c.rejected > 0).then(|| (c.rejected as i64, c.message.clone()))
}
