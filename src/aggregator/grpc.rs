//! The push API server: authenticates each call, checks the whole batch
//! (environment and cluster of the token, well-formed events, size), and only
//! then stores it, so a refused batch leaves nothing behind.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::auth::{self, AuthError};
use super::config::TokenEntry;
use super::{AppState, LiveUpdate};
use crate::aggregator::store::now_ns;
use crate::push::proto::push_server::Push;
use crate::push::proto::{
    AnomalyEvent, HeartbeatRequest, HeartbeatResponse, PushEventsRequest, PushEventsResponse,
    Severity,
};

/// Longest accepted id, key, service or explanation, bytes.
const MAX_ID: usize = 128;
const MAX_NAME: usize = 512;
const MAX_TEXT: usize = 4096;
const MAX_EXEMPLARS: usize = 32;

/// The push API.
pub struct PushService {
    pub(super) state: Arc<AppState>,
}

fn authenticate<'a, T>(state: &'a AppState, req: &Request<T>) -> Result<&'a TokenEntry, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    auth::sidecar(&state.tokens, header, SystemTime::now()).map_err(|e| {
        state.metrics.refused(match e {
            AuthError::Missing | AuthError::Unknown => "unauthenticated",
            AuthError::Expired => "token_expired",
        });
        Status::unauthenticated(e.message())
    })
}

fn scope_error(who: &TokenEntry, what: &str, environment: &str, cluster: &str) -> Option<Status> {
    if environment != who.environment {
        return Some(Status::permission_denied(format!(
            "sidecar {} may push for environment {:?} only; {what} is for {:?}",
            who.name, who.environment, environment
        )));
    }
    if let Some(c) = &who.cluster {
        if cluster != c {
            return Some(Status::permission_denied(format!(
                "sidecar {} may push for cluster {:?} only; {what} is for {:?}",
                who.name, c, cluster
            )));
        }
    }
    None
}

/// Why an event is malformed, if it is.
pub fn malformed(ev: &AnomalyEvent) -> Option<String> {
    if ev.event_id.is_empty() || ev.event_id.len() > MAX_ID {
        return Some(format!("event_id must be 1 to {MAX_ID} bytes"));
    }
    for (field, v) in [("service", &ev.service), ("key", &ev.key)] {
        if v.is_empty() || v.len() > MAX_NAME {
            return Some(format!("{field} must be 1 to {MAX_NAME} bytes"));
        }
    }
    if ev.cluster.len() > MAX_NAME || ev.unit.len() > MAX_NAME {
        return Some(format!(
            "cluster and unit may have at most {MAX_NAME} bytes"
        ));
    }
    if !matches!(ev.signal.as_str(), "traces" | "metrics" | "logs") {
        return Some(format!(
            "signal {:?} is not traces, metrics or logs",
            ev.signal
        ));
    }
    if ev.start_unix_nano == 0 || ev.end_unix_nano < ev.start_unix_nano {
        return Some("start_unix_nano must be set and not after end_unix_nano".into());
    }
    if !(ev.score.is_finite() && (0.0..=100.0).contains(&ev.score)) {
        return Some(format!("score {} is not within 0 to 100", ev.score));
    }
    match Severity::try_from(ev.severity) {
        Ok(Severity::Minor | Severity::Major | Severity::Critical) => {}
        _ => {
            return Some(format!(
                "severity {} is not minor, major or critical",
                ev.severity
            ))
        }
    }
    if !ev.baseline.is_finite() || !ev.observed.is_finite() {
        return Some("baseline and observed must be finite".into());
    }
    if ev.explanation.len() > MAX_TEXT {
        return Some(format!("explanation may have at most {MAX_TEXT} bytes"));
    }
    if ev.exemplar_trace_ids.len() > MAX_EXEMPLARS
        || ev
            .exemplar_trace_ids
            .iter()
            .any(|t| t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Some(format!(
            "exemplar_trace_ids: at most {MAX_EXEMPLARS}, each 32 hex digits"
        ));
    }
    None
}

/// Checks a whole batch against the caller's scope and the limits.
pub fn check_batch(
    who: &TokenEntry,
    events: &[AnomalyEvent],
    max_events: usize,
) -> Result<(), Status> {
    if events.len() > max_events {
        return Err(Status::invalid_argument(format!(
            "batch of {} events exceeds the limit of {max_events} (ingest.max_batch_events); nothing stored",
            events.len()
        )));
    }
    for (i, ev) in events.iter().enumerate() {
        if let Some(s) = scope_error(
            who,
            &format!("event {i} ({:?})", ev.event_id),
            &ev.environment,
            &ev.cluster,
        ) {
            return Err(Status::permission_denied(format!(
                "{}; nothing of this batch was stored",
                s.message()
            )));
        }
    }
    for (i, ev) in events.iter().enumerate() {
        if let Some(reason) = malformed(ev) {
            return Err(Status::invalid_argument(format!(
                "event {i} ({:?}): {reason}; nothing of this batch was stored",
                ev.event_id
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Push for PushService {
    async fn push_events(
        &self,
        request: Request<PushEventsRequest>,
    ) -> Result<Response<PushEventsResponse>, Status> {
        let state = self.state.clone();
        let who = authenticate(&state, &request)?.clone();
        let req = request.into_inner();
        if let Err(status) = check_batch(&who, &req.events, state.max_batch_events) {
            state.metrics.refused(match status.code() {
                tonic::Code::PermissionDenied => "permission_denied",
                _ => "invalid",
            });
            tracing::warn!(sidecar = %who.name, code = ?status.code(), reason = status.message(), "push refused");
            return Err(status);
        }
        if req.events.is_empty() {
            return Ok(Response::new(PushEventsResponse::default()));
        }
        let store = state.store.clone();
        let name = who.name.clone();
        let events = req.events;
        let outcome = tokio::task::spawn_blocking(move || store.ingest(&name, &events, now_ns()))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "storing events failed");
                Status::unavailable(format!("store unavailable: {e}"))
            })?;
        state
            .metrics
            .accepted(outcome.accepted, outcome.duplicates, outcome.opened.len());
        for id in &outcome.updated {
            let _ = state.updates.send(LiveUpdate::Incident {
                id: *id,
                environment: who.environment.clone(),
                opened: outcome.opened.contains(id),
            });
        }
        Ok(Response::new(PushEventsResponse {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let state = self.state.clone();
        let who = authenticate(&state, &request)?.clone();
        let hb = request.into_inner();
        if let Some(s) = scope_error(&who, "the heartbeat", &hb.environment, &hb.cluster) {
            state.metrics.refused("permission_denied");
            return Err(s);
        }
        if hb.sidecar_id.is_empty()
            || hb.sidecar_id.len() > MAX_NAME
            || hb.edges.len() > crate::push::MAX_EDGES
        {
            return Err(Status::invalid_argument(format!(
                "sidecar_id must be 1 to {MAX_NAME} bytes and edges at most {}",
                crate::push::MAX_EDGES
            )));
        }
        let store = state.store.clone();
        let env = hb.environment.clone();
        tokio::task::spawn_blocking(move || store.heartbeat(&hb, now_ns()))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(|e| Status::unavailable(format!("store unavailable: {e}")))?;
        let _ = state.updates.send(LiveUpdate::Sidecar { environment: env });
        Ok(Response::new(HeartbeatResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> AnomalyEvent {
        AnomalyEvent {
            event_id: "e1".into(),
            environment: "prod".into(),
            service: "cart".into(),
            signal: "traces".into(),
            key: "cart / GET".into(),
            start_unix_nano: 1,
            end_unix_nano: 2,
            score: 80.0,
            severity: Severity::Critical as i32,
            exemplar_trace_ids: vec!["0af7651916cd43dd8448eb211c80319c".into()],
            ..Default::default()
        }
    }

    #[test]
    fn malformed_events_are_named() {
        assert_eq!(malformed(&good()), None);
        let cases: Vec<(AnomalyEvent, &str)> = vec![
            (
                AnomalyEvent {
                    event_id: String::new(),
                    ..good()
                },
                "event_id",
            ),
            (
                AnomalyEvent {
                    service: String::new(),
                    ..good()
                },
                "service",
            ),
            (
                AnomalyEvent {
                    signal: "spans".into(),
                    ..good()
                },
                "signal",
            ),
            (
                AnomalyEvent {
                    start_unix_nano: 5,
                    ..good()
                },
                "start_unix_nano",
            ),
            (
                AnomalyEvent {
                    score: f64::NAN,
                    ..good()
                },
                "score",
            ),
            (
                AnomalyEvent {
                    score: 101.0,
                    ..good()
                },
                "score",
            ),
            (
                AnomalyEvent {
                    severity: 0,
                    ..good()
                },
                "severity",
            ),
            (
                AnomalyEvent {
                    baseline: f64::INFINITY,
                    ..good()
                },
                "baseline",
            ),
            (
                AnomalyEvent {
                    exemplar_trace_ids: vec!["xyz".into()],
                    ..good()
                },
                "exemplar",
            ),
        ];
        for (ev, field) in cases {
            let m = malformed(&ev).unwrap_or_default();
            assert!(m.contains(field), "{field}: {m}");
        }
    }
}
