//! Sources of pushed anomaly events. Span keys have interval-level events of
//! their own (`detect::interval`), converted by `span_event`; metric and log
//! anomalies are folded from the sidecar's recent-anomaly feed into one event
//! per (signal, service, subject) and interval. The task also keeps the
//! heartbeat's health figures current.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::proto::{AnomalyEvent, Severity};
use super::{PushHandle, SidecarStats};
use crate::pipeline::{AnomalyFeed, AnomalyNote};

/// Severity of a score on the push API (scores under 25 are not events).
pub fn severity_of(score: f64) -> Option<Severity> {
    if score >= 75.0 {
        Some(Severity::Critical)
    } else if score >= 50.0 {
        Some(Severity::Major)
    } else if score >= 25.0 {
        Some(Severity::Minor)
    } else {
        None
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Folds the notes of one interval into events, one per key, keeping the worst note's score.
pub fn events_of(
    notes: &[AnomalyNote],
    environment: &str,
    cluster: &str,
    interval_start: SystemTime,
) -> Vec<AnomalyEvent> {
    let mut by_key: HashMap<(&'static str, &str, &str), AnomalyEvent> = HashMap::new();
    for n in notes {
        let score = f64::from(n.score);
        let Some(severity) = severity_of(score) else {
            continue;
        };
        let signal = n.signal.as_str();
        let at = nanos(n.at);
        let e = by_key
            .entry((signal, n.service.as_str(), n.subject.as_str()))
            .or_insert_with(|| {
                let key = format!("{} / {}", n.service, n.subject);
                let start = nanos(interval_start);
                let id = xxhash_rust::xxh3::xxh3_128(
                    format!("{environment}\u{0}{cluster}\u{0}{signal}\u{0}{key}\u{0}{start}")
                        .as_bytes(),
                );
                AnomalyEvent {
                    event_id: format!("{id:032x}"),
                    environment: environment.to_string(),
                    cluster: cluster.to_string(),
                    service: n.service.clone(),
                    signal: signal.to_string(),
                    key,
                    start_unix_nano: at,
                    end_unix_nano: at,
                    score,
                    severity: severity as i32,
                    explanation: n.explanation.clone(),
                    ..Default::default()
                }
            });
        e.start_unix_nano = e.start_unix_nano.min(at);
        e.end_unix_nano = e.end_unix_nano.max(at);
        if score > e.score {
            e.score = score;
            e.severity = severity as i32;
            e.explanation = n.explanation.clone();
        }
    }
    let mut out: Vec<AnomalyEvent> = by_key.into_values().collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Every `interval`: pushes the feed's new anomalies as events and refreshes the heartbeat's stats.
pub fn spawn(
    feed: Arc<AnomalyFeed>,
    handle: PushHandle,
    environment: String,
    cluster: String,
    interval: Duration,
    stats: impl Fn() -> SidecarStats + Send + 'static,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut since = SystemTime::now();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            handle.set_stats(stats());
            let now = SystemTime::now();
            // Span keys make their own interval-level events (see `span_event`);
            // metric and log anomalies are folded here, per interval.
            let notes: Vec<AnomalyNote> = feed
                .since(since)
                .into_iter()
                .filter(|n| n.at < now && n.signal != crate::telemetry::Signal::traces)
                .collect();
            for ev in events_of(&notes, &environment, &cluster, since) {
                handle.send(ev);
            }
            since = now;
        }
    })
}

/// The push-API form of a span key's anomaly event. An event's updates share
/// the detector's id, but the aggregator stores each pushed id once, so the
/// opening, each rise and the close are pushed under ids of their own
/// (they land in the same incident: same service, overlapping time).
pub fn span_event(
    e: &crate::detect::interval::AnomalyEvent,
    environment: &str,
    cluster: &str,
    interval_ns: u64,
) -> Option<AnomalyEvent> {
    use crate::detect::interval::EventStatus;
    let severity = severity_of(f64::from(e.score))?;
    let (suffix, end) = match e.status {
        EventStatus::Opened => ("o".to_string(), e.start_ns + interval_ns),
        EventStatus::Updated => (format!("u{:.0}", e.score), e.start_ns + interval_ns),
        EventStatus::Closed => ("c".to_string(), e.end_ns.unwrap_or(e.start_ns)),
    };
    let kind = match e.kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    };
    let unit = match e.signal {
        crate::detect::interval::IntervalSignal::LatencyP99
        | crate::detect::interval::IntervalSignal::LatencyP50
        | crate::detect::interval::IntervalSignal::ErrorRate => "ratio",
        crate::detect::interval::IntervalSignal::LatencyDrift => "factor",
        _ => "spans per interval",
    };
    Some(AnomalyEvent {
        event_id: format!("{:016x}{suffix}", e.id),
        environment: environment.to_string(),
        cluster: cluster.to_string(),
        service: e.service.clone(),
        signal: "traces".to_string(),
        key: format!(
            "{} / {} / {kind} / {}",
            e.service,
            e.name,
            e.signal.as_str()
        ),
        start_unix_nano: e.start_ns,
        end_unix_nano: end.max(e.start_ns),
        score: f64::from(e.score),
        severity: severity as i32,
        explanation: e.explanation.clone(),
        baseline: e.baseline,
        observed: e.observed,
        unit: unit.to_string(),
        exemplar_trace_ids: e
            .exemplars
            .iter()
            .map(|t| t.iter().map(|b| format!("{b:02x}")).collect())
            .collect(),
        backfilled: false,
    })
}
