//! The sidecar's push client: anomaly events and heartbeats to the aggregator.
//!
//! [`PushHandle::send`] never waits: events go into a bounded buffer that a
//! background task drains in batches. While the aggregator is unreachable the
//! batch is retried with jittered exponential backoff and new events keep
//! arriving; once the buffer holds `push.buffer_events`, the oldest are dropped
//! and counted (`otel_anomaly_push_events_total{outcome="dropped"}`). Nothing
//! here touches the span pipeline, so an aggregator outage never slows it.

pub mod bridge;
pub mod config;
pub mod edges;

/// Generated types and client/server of `proto/otel_anomaly/push/v1/push.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("otel_anomaly.push.v1");
}

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use self::config::PushSettings;
use self::proto::push_client::PushClient;
use self::proto::{AnomalyEvent, HeartbeatRequest, PushEventsRequest, ServiceEdge};
use crate::config::Secret;

/// Metric names of the push client, defined once.
pub mod names {
    pub const PUSH_EVENTS: &str = "otel_anomaly_push_events";
    pub const PUSH_BUFFERED_EVENTS: &str = "otel_anomaly_push_buffered_events";
    pub const PUSH_HEARTBEATS: &str = "otel_anomaly_push_heartbeats";
}

/// What became of pushed events.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PushOutcome {
    /// Stored by the aggregator (or already stored: a duplicate).
    sent,
    /// Dropped from a full buffer, oldest first.
    dropped,
    /// Refused by the aggregator for good (bad token, wrong environment, malformed).
    rejected,
}

/// Labels of `otel_anomaly_push_events_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub outcome: PushOutcome,
}

/// Labels of `otel_anomaly_push_heartbeats_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeartbeatLabels {
    pub ok: bool,
}

/// The push client's metrics.
#[derive(Debug, Default, Clone)]
pub struct PushMetrics {
    pub events: Family<PushLabels, Counter>,
    pub buffered: Gauge,
    pub heartbeats: Family<HeartbeatLabels, Counter>,
}

impl PushMetrics {
    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            names::PUSH_EVENTS,
            "Anomaly events by what became of them",
            self.events.clone(),
        );
        registry.register(
            names::PUSH_BUFFERED_EVENTS,
            "Anomaly events waiting to be pushed",
            self.buffered.clone(),
        );
        registry.register(
            names::PUSH_HEARTBEATS,
            "Heartbeats sent to the aggregator",
            self.heartbeats.clone(),
        );
    }

    fn count(&self, outcome: PushOutcome, n: usize) {
        self.events
            .get_or_create(&PushLabels { outcome })
            .inc_by(n as u64);
    }

    /// Events counted with `outcome` so far.
    pub fn get(&self, outcome: PushOutcome) -> u64 {
        self.events.get_or_create(&PushLabels { outcome }).get()
    }
}

/// The sidecar's own health, reported with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarStats {
    pub keys_tracked: u64,
    pub queue_depth: u64,
    pub export_lag_seconds: f64,
}

/// Errors starting the push client.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("invalid push.url {url:?}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error(
        "cannot read push TLS file (ca_file, client_cert_file or client_key_file) {path}: {source}"
    )]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("push.token_file holds characters not allowed in a header")]
    Token,
}

struct Shared {
    buffer: Mutex<VecDeque<AnomalyEvent>>,
    capacity: usize,
    wake: Notify,
    edges: Mutex<HashMap<(String, String), u64>>,
    stats: Mutex<SidecarStats>,
    metrics: PushMetrics,
}

impl Shared {
    /// Appends events, dropping the oldest past the capacity; returns how many were dropped.
    fn enqueue_back(&self, events: impl IntoIterator<Item = AnomalyEvent>) -> usize {
        let mut dropped = 0;
        let Ok(mut buf) = self.buffer.lock() else {
            return 0;
        };
        for ev in events {
            if buf.len() == self.capacity {
                buf.pop_front();
                dropped += 1;
            }
            buf.push_back(ev);
        }
        self.metrics.buffered.set(buf.len() as i64);
        drop(buf);
        if dropped > 0 {
            self.metrics.count(PushOutcome::dropped, dropped);
        }
        dropped
    }

    /// Puts a failed batch back in front of newer events; the oldest go first if that overflows.
    fn requeue_front(&self, batch: Vec<AnomalyEvent>) {
        let Ok(mut buf) = self.buffer.lock() else {
            return;
        };
        let room = self.capacity.saturating_sub(buf.len());
        let keep_from = batch.len().saturating_sub(room);
        for ev in batch.into_iter().skip(keep_from).rev() {
            buf.push_front(ev);
        }
        self.metrics.buffered.set(buf.len() as i64);
        drop(buf);
        if keep_from > 0 {
            self.metrics.count(PushOutcome::dropped, keep_from);
        }
    }

    fn take_batch(&self, max: usize) -> Vec<AnomalyEvent> {
        let Ok(mut buf) = self.buffer.lock() else {
            return Vec::new();
        };
        let n = buf.len().min(max);
        let batch: Vec<AnomalyEvent> = buf.drain(..n).collect();
        self.metrics.buffered.set(buf.len() as i64);
        batch
    }

    fn buffered(&self) -> usize {
        self.buffer.lock().map(|b| b.len()).unwrap_or(0)
    }
}

/// Most service edges a heartbeat carries (the aggregator's limit).
pub const MAX_EDGES: usize = 10_000;

/// The producer side: cheap to clone, never blocks on the network.
#[derive(Clone)]
pub struct PushHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PushHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushHandle")
            .field("buffered", &self.buffered())
            .finish()
    }
}

impl PushHandle {
    /// Queues an event for the aggregator; if the buffer is full the oldest event is dropped.
    pub fn send(&self, event: AnomalyEvent) {
        self.shared.enqueue_back([event]);
        self.shared.wake.notify_one();
    }

    /// Counts calls on a caller → callee edge (from parent/child spans); sent with the next heartbeat.
    pub fn add_edge(&self, caller: &str, callee: &str, calls: u64) {
        if caller == callee {
            return;
        }
        if let Ok(mut edges) = self.shared.edges.lock() {
            let key = (caller.to_string(), callee.to_string());
            // The aggregator takes at most MAX_EDGES per heartbeat; beyond, new pairs are ignored.
            if edges.len() >= MAX_EDGES && !edges.contains_key(&key) {
                return;
            }
            *edges.entry(key).or_default() += calls;
        }
    }

    /// Sets the health figures sent with the next heartbeat.
    pub fn set_stats(&self, stats: SidecarStats) {
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = stats;
        }
    }

    /// Events waiting to be sent.
    pub fn buffered(&self) -> usize {
        self.shared.buffered()
    }

    /// The client's metrics.
    pub fn metrics(&self) -> &PushMetrics {
        &self.shared.metrics
    }
}

/// Whether a failed call is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient (aggregator down, overloaded, timed out): retry with backoff.
    Later,
    /// The aggregator refused the batch for good: drop it and count it.
    Never,
}

/// Classifies a gRPC status of a push call.
pub fn classify(code: Code) -> Retry {
    match code {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists => Retry::Never,
        _ => Retry::Later,
    }
}

/// Where the client sends, and as whom.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub settings: PushSettings,
    pub token: Secret,
    pub environment: String,
    pub cluster: Option<String>,
}

/// Starts the push client if the sidecar's `push.url` is set, registering its metrics.
pub fn start_from_config(
    cfg: &crate::config::Config,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> Result<Option<(PushHandle, JoinHandle<()>)>, PushError> {
    let (Some(_), Some(token)) = (&cfg.settings.push.url, &cfg.push_token) else {
        return Ok(None);
    };
    let (handle, task) = start(
        PushTarget {
            settings: cfg.settings.push.clone(),
            token: token.clone(),
            environment: cfg.settings.environment.clone(),
            cluster: cfg.settings.cluster.clone(),
        },
        shutdown,
    )?;
    handle.metrics().register(registry);
    Ok(Some((handle, task)))
}

/// Starts the push client; the task ends after `shutdown`, having tried one last flush.
pub fn start(
    target: PushTarget,
    shutdown: CancellationToken,
) -> Result<(PushHandle, JoinHandle<()>), PushError> {
    let s = &target.settings;
    let url = s.url.clone().unwrap_or_default();
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|source| PushError::Url {
            url: url.clone(),
            source,
        })?
        .timeout(s.timeout)
        .connect_timeout(s.timeout.min(Duration::from_secs(5)));
    if url.starts_with("https://") {
        let tls = match &s.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| PushError::Ca {
                    path: path.display().to_string(),
                    source,
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        let tls = match (&s.client_cert_file, &s.client_key_file) {
            (Some(cert), Some(key)) => {
                let read = |path: &std::path::PathBuf| {
                    std::fs::read(path).map_err(|source| PushError::Ca {
                        path: path.display().to_string(),
                        source,
                    })
                };
                tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ))
            }
            _ => tls,
        };
        endpoint = endpoint.tls_config(tls).map_err(|source| PushError::Url {
            url: url.clone(),
            source,
        })?;
    }
    let channel = endpoint.connect_lazy();
    let bearer: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {}", target.token.expose())
        .parse()
        .map_err(|_| PushError::Token)?;
    let shared = Arc::new(Shared {
        buffer: Mutex::new(VecDeque::new()),
        capacity: s.buffer_events,
        wake: Notify::new(),
        edges: Mutex::new(HashMap::new()),
        stats: Mutex::new(SidecarStats::default()),
        metrics: PushMetrics::default(),
    });
    let handle = PushHandle {
        shared: shared.clone(),
    };
    let sidecar_id = s
        .sidecar_id
        .clone()
        .unwrap_or_else(|| match &target.cluster {
            Some(c) => format!("{}/{c}", target.environment),
            None => target.environment.clone(),
        });
    let task = tokio::spawn(run(
        Client {
            channel,
            bearer,
            sidecar_id,
            target,
        },
        shared,
        shutdown,
    ));
    Ok((handle, task))
}

struct Client {
    channel: Channel,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    sidecar_id: String,
    target: PushTarget,
}

impl Client {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.bearer.clone());
        req
    }

    async fn push(&self, events: Vec<AnomalyEvent>) -> Result<(), tonic::Status> {
        let mut client = PushClient::new(self.channel.clone());
        client
            .push_events(self.request(PushEventsRequest {
                sidecar_id: self.sidecar_id.clone(),
                events,
            }))
            .await
            .map(|_| ())
    }

    async fn heartbeat(&self, shared: &Shared) -> Result<(), tonic::Status> {
        let stats = shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
        let edges = shared
            .edges
            .lock()
            .map(|e| {
                e.iter()
                    .map(|((caller, callee), calls)| ServiceEdge {
                        caller: caller.clone(),
                        callee: callee.clone(),
                        calls: *calls,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let req = HeartbeatRequest {
            sidecar_id: self.sidecar_id.clone(),
            environment: self.target.environment.clone(),
            cluster: self.target.cluster.clone().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            keys_tracked: stats.keys_tracked,
            queue_depth: stats.queue_depth,
            export_lag_seconds: stats.export_lag_seconds,
            edges,
            events_buffered: shared.buffered() as u64,
            events_dropped: shared.metrics.get(PushOutcome::dropped),
        };
        let mut client = PushClient::new(self.channel.clone());
        client.heartbeat(self.request(req)).await.map(|_| ())
    }
}

/// Backoff before attempt `attempt` (0-based), with jitter in [50 %, 100 %].
fn backoff(s: &PushSettings, attempt: u32) -> Duration {
    let exp = s
        .initial_backoff
        .saturating_mul(1u32 << attempt.min(16))
        .min(s.max_backoff);
    exp.mul_f64(rand::random_range(0.5..=1.0))
}

async fn run(client: Client, shared: Arc<Shared>, shutdown: CancellationToken) {
    let settings = client.target.settings.clone();
    let hb_client = Arc::new(client);
    let hb_shared = shared.clone();
    let hb_stop = shutdown.clone();
    let sender = hb_client.clone();
    let heartbeats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(sender.target.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = hb_stop.cancelled() => break,
            }
            let ok = match sender.heartbeat(&hb_shared).await {
                Ok(()) => true,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "heartbeat failed");
                    false
                }
            };
            hb_shared
                .metrics
                .heartbeats
                .get_or_create(&HeartbeatLabels { ok })
                .inc();
        }
    });
    let client = hb_client;
    let mut attempt: u32 = 0;
    loop {
        let batch = shared.take_batch(settings.batch_events);
        if batch.is_empty() {
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        let n = batch.len();
        match client.push(batch.clone()).await {
            Ok(()) => {
                attempt = 0;
                shared.metrics.count(PushOutcome::sent, n);
            }
            Err(status) if classify(status.code()) == Retry::Never => {
                attempt = 0;
                shared.metrics.count(PushOutcome::rejected, n);
                tracing::error!(code = ?status.code(), message = status.message(), events = n, "aggregator refused anomaly events; dropped");
            }
            Err(status) => {
                shared.requeue_front(batch);
                let wait = backoff(&settings, attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(code = ?status.code(), message = status.message(), retry_in_ms = wait.as_millis() as u64, buffered = shared.buffered(), "pushing anomaly events failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    // One last try for what is buffered, bounded by the call timeout.
    let rest = shared.take_batch(settings.batch_events);
    if !rest.is_empty() {
        let n = rest.len();
        match client.push(rest).await {
            Ok(()) => shared.metrics.count(PushOutcome::sent, n),
            Err(status) => {
                tracing::warn!(code = ?status.code(), events = n + shared.buffered(), "anomaly events not pushed before shutdown")
            }
        }
    }
    let _ = heartbeats.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> AnomalyEvent {
        AnomalyEvent {
            event_id: id.into(),
            ..Default::default()
        }
    }

    fn shared(cap: usize) -> Shared {
        Shared {
            buffer: Mutex::new(VecDeque::new()),
            capacity: cap,
            wake: Notify::new(),
            edges: Mutex::new(HashMap::new()),
            stats: Mutex::new(SidecarStats::default()),
            metrics: PushMetrics::default(),
        }
    }

    fn ids(s: &Shared) -> Vec<String> {
        s.buffer
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id.clone())
            .collect()
    }

    #[test]
    fn full_buffer_drops_oldest_and_counts() {
        let s = shared(3);
        assert_eq!(s.enqueue_back((0..5).map(|i| ev(&i.to_string()))), 2);
        assert_eq!(ids(&s), ["2", "3", "4"]);
        assert_eq!(s.metrics.get(PushOutcome::dropped), 2);
        assert_eq!(s.metrics.buffered.get(), 3);
    }

    #[test]
    fn requeued_batch_goes_first_and_its_oldest_drop_on_overflow() {
        let s = shared(4);
        s.enqueue_back([ev("a"), ev("b"), ev("c")]);
        let batch = s.take_batch(2);
        assert_eq!(ids(&s), ["c"]);
        s.enqueue_back([ev("d"), ev("e")]);
        s.requeue_front(batch);
        // room for one of the two: the older ("a") is dropped
        assert_eq!(ids(&s), ["b", "c", "d", "e"]);
        assert_eq!(s.metrics.get(PushOutcome::dropped), 1);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Code::Unavailable), Retry::Later);
        assert_eq!(classify(Code::ResourceExhausted), Retry::Later);
        assert_eq!(classify(Code::DeadlineExceeded), Retry::Later);
        assert_eq!(classify(Code::PermissionDenied), Retry::Never);
        assert_eq!(classify(Code::Unauthenticated), Retry::Never);
        assert_eq!(classify(Code::InvalidArgument), Retry::Never);
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let s = PushSettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        for _ in 0..20 {
            let b0 = backoff(&s, 0);
            assert!(b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100));
            let b9 = backoff(&s, 9);
            assert!(b9 >= Duration::from_millis(500) && b9 <= Duration::from_secs(1));
        }
    }
}
