//! Optional bearer-token auth of OTLP senders (`receiver.auth`): gRPC
//! `authorization` metadata and the HTTP `Authorization` header, checked
//! before the body is read. Tokens come from files, are compared in constant
//! time against every accepted token, and are never logged.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::telemetry::{Metrics, RejectLabels, RejectReason, Signal};

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization: Bearer …` header.
    Missing,
    /// A token that is not one of the accepted ones.
    Invalid,
}

impl AuthFailure {
    /// Message for the sender (names no secret).
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "missing bearer token: this receiver requires `authorization: Bearer <token>` (receiver.auth)"
            }
            AuthFailure::Invalid => "invalid bearer token (receiver.auth)",
        }
    }
}

/// The accepted tokens.
#[derive(Clone)]
pub struct ReceiverAuth {
    tokens: Arc<Vec<Secret>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ReceiverAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiverAuth({} tokens)", self.tokens.len())
    }
}

impl ReceiverAuth {
    /// Auth with these tokens; `None` when the list is empty (auth off).
    pub fn new(tokens: Vec<Secret>, metrics: Arc<Metrics>) -> Option<Self> {
        (!tokens.is_empty()).then(|| Self {
            tokens: Arc::new(tokens),
            metrics,
        })
    }

    /// Checks an `authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), AuthFailure> {
        let Some(presented) = header.and_then(bearer) else {
            return Err(AuthFailure::Missing);
        };
        // Every token is compared, so the time does not tell which one matched.
        let mut ok = subtle::Choice::from(0u8);
        for t in self.tokens.iter() {
            ok |= t.expose().as_bytes().ct_eq(presented);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(AuthFailure::Invalid)
        }
    }

    fn count(&self, signal: Signal) {
        self.metrics
            .rejected
            .get_or_create(&RejectLabels {
                signal,
                reason: RejectReason::unauthenticated,
            })
            .inc();
    }

    /// Checks a request's header; counts a refusal under `signal`.
    pub fn check_request(
        &self,
        headers: &axum::http::HeaderMap,
        signal: Signal,
    ) -> Result<(), AuthFailure> {
        let r = self.check(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        if let Err(f) = r {
            self.count(signal);
            tracing::debug!(signal = ?signal, reason = f.message(), "otlp request refused: not authenticated");
        }
        r
    }
}

/// The token after `Bearer ` (scheme case-insensitive, surrounding blanks trimmed).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let space = v.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = v.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The signal of an OTLP/gRPC path (`/opentelemetry.proto.collector.trace.v1.TraceService/Export`).
fn grpc_signal(path: &str) -> Signal {
    if path.contains(".metrics.") {
        Signal::metrics
    } else if path.contains(".logs.") {
        Signal::logs
    } else {
        Signal::traces
    }
}

/// A tower layer for the tonic server: refuses unauthenticated calls with
/// UNAUTHENTICATED before the message is decoded (passes all when `auth` is `None`).
pub fn grpc_layer<B>(
    auth: Option<ReceiverAuth>,
) -> tower::filter::FilterLayer<
    impl Fn(axum::http::Request<B>) -> Result<axum::http::Request<B>, tonic::Status> + Clone,
> {
    tower::filter::FilterLayer::new(move |req: axum::http::Request<B>| {
        let Some(auth) = &auth else { return Ok(req) };
        let signal = grpc_signal(req.uri().path());
        match auth.check_request(req.headers(), signal) {
            Ok(()) => Ok(req),
            Err(f) => Err(tonic::Status::unauthenticated(f.message())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, s).unwrap();
        crate::config::read_secret("t", &p).unwrap()
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = ReceiverAuth::new(
            vec![secret("old-token"), secret("new-token")],
            Arc::new(Metrics::default()),
        )
        .unwrap();
        assert_eq!(auth.check(Some(b"Bearer new-token")), Ok(()));
        assert_eq!(auth.check(Some(b"bearer   old-token ")), Ok(()));
        assert_eq!(auth.check(None), Err(AuthFailure::Missing));
        assert_eq!(
            auth.check(Some(b"Basic new-token")),
            Err(AuthFailure::Missing)
        );
        assert_eq!(auth.check(Some(b"Bearer ")), Err(AuthFailure::Missing));
        assert_eq!(
            auth.check(Some(b"Bearer new-toke")),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            auth.check(Some(b"Bearer new-tokenx")),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(auth.check(Some(b"Bearer \xff")), Err(AuthFailure::Invalid));
        assert!(ReceiverAuth::new(vec![], Arc::new(Metrics::default())).is_none());
        assert!(!format!("{auth:?}").contains("token\""));
    }

    #[test]
    fn grpc_paths_name_their_signal() {
        assert_eq!(
            grpc_signal("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"),
            Signal::metrics
        );
        assert_eq!(
            grpc_signal("/opentelemetry.proto.collector.logs.v1.LogsService/Export"),
            Signal::logs
        );
        assert_eq!(
            grpc_signal("/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
            Signal::traces
        );
    }
}
