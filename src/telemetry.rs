//! Self-telemetry: Prometheus metrics (names defined once, here, with their
//! units), `/healthz`, `/readyz` and `/metrics` on the admin listener, and the
//! process log setup.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Metric names, defined once (the registry adds `_total` to counters).
pub mod names {
    pub const RECEIVED_RECORDS: &str = "otel_anomaly_received_records";
    pub const REJECTED_RECORDS: &str = "otel_anomaly_rejected_records";
    pub const SCORED_RECORDS: &str = "otel_anomaly_scored_records";
    pub const ANOMALOUS_RECORDS: &str = "otel_anomaly_anomalous_records";
    pub const SCORING_SECONDS: &str = "otel_anomaly_scoring_seconds";
    pub const EXPORTED_DOCUMENTS: &str = "otel_anomaly_exported_documents";
    pub const EXPORT_RETRIES: &str = "otel_anomaly_export_retries";
    pub const DEAD_LETTERED_DOCUMENTS: &str = "otel_anomaly_dead_lettered_documents";
    pub const BULK_REQUESTS: &str = "otel_anomaly_bulk_requests";
    pub const QUEUED_RECORDS: &str = "otel_anomaly_queued_records";
    pub const QUEUE_CAPACITY_RECORDS: &str = "otel_anomaly_queue_capacity_records";
    pub const DETECTOR_KEYS: &str = "otel_anomaly_detector_keys";
    pub const DETECTOR_OVERFLOW_RECORDS: &str = "otel_anomaly_detector_overflow_records";
    pub const DETECTOR_EVICTED_KEYS: &str = "otel_anomaly_detector_evicted_keys";
    pub const ANOMALY_EVENTS: &str = "otel_anomaly_events";
    pub const READY: &str = "otel_anomaly_ready";
}

/// Telemetry signal.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Signal {
    traces,
    metrics,
    logs,
}

impl Signal {
    /// Lowercase name ("traces", "metrics", "logs").
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::traces => "traces",
            Signal::metrics => "metrics",
            Signal::logs => "logs",
        }
    }
}

/// Label set of per-signal metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: Signal,
}

/// Labels of anomaly-event counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `latency_p99`, `error_rate`, `throughput_drop`, …
    pub signal: &'static str,
    /// `opened`, `updated`, `closed`.
    pub status: &'static str,
}

/// Why records were refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    queue_full,
    shutting_down,
    too_large,
    malformed,
    invalid_record,
    unsupported_media_type,
    /// Missing or invalid bearer token (`receiver.auth`).
    unauthenticated,
    /// The write-ahead queue is at `wal.max_bytes`.
    wal_full,
    /// The write-ahead queue could not write (disk full, I/O error).
    storage_error,
}

/// Labels of rejected records.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub signal: Signal,
    pub reason: RejectReason,
}

/// Outcome of an exported document.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ExportOutcome {
    /// Newly written.
    created,
    /// Already there (409 on create): delivered by an earlier attempt.
    duplicate,
}

/// Labels of exported documents.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub outcome: ExportOutcome,
}

/// Outcome of a whole bulk request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum BulkOutcome {
    ok,
    partial,
    failed,
}

/// Labels of bulk requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BulkLabels {
    pub outcome: BulkOutcome,
}

/// All self-metrics of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub received: Family<SignalLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub scored: Family<SignalLabels, Counter>,
    pub anomalous: Family<SignalLabels, Counter>,
    pub scoring_seconds: Counter<f64>,
    pub exported: Family<ExportLabels, Counter>,
    pub export_retries: Counter,
    pub dead_lettered: Counter,
    pub bulk_requests: Family<BulkLabels, Counter>,
    pub queued: Gauge,
    pub queue_capacity: Gauge,
    pub detector_keys: Family<SignalLabels, Gauge>,
    pub detector_overflow: Family<SignalLabels, Counter>,
    pub detector_evicted: Family<SignalLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub ready: Gauge,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        use names::*;
        registry.register(
            RECEIVED_RECORDS,
            "Records accepted by the receivers",
            self.received.clone(),
        );
        registry.register(
            REJECTED_RECORDS,
            "Records refused, by reason",
            self.rejected.clone(),
        );
        registry.register(
            SCORED_RECORDS,
            "Records scored by a detector",
            self.scored.clone(),
        );
        registry.register(
            ANOMALOUS_RECORDS,
            "Records scored 50 or more",
            self.anomalous.clone(),
        );
        registry.register(
            SCORING_SECONDS,
            "CPU time spent scoring and encoding",
            self.scoring_seconds.clone(),
        );
        registry.register(
            EXPORTED_DOCUMENTS,
            "Documents delivered to the output",
            self.exported.clone(),
        );
        registry.register(
            EXPORT_RETRIES,
            "Documents sent again after a retryable failure",
            self.export_retries.clone(),
        );
        registry.register(
            DEAD_LETTERED_DOCUMENTS,
            "Documents rejected for good, written to the dead-letter file",
            self.dead_lettered.clone(),
        );
        registry.register(
            BULK_REQUESTS,
            "Bulk requests, by outcome",
            self.bulk_requests.clone(),
        );
        registry.register(
            QUEUED_RECORDS,
            "Records accepted but not yet exported",
            self.queued.clone(),
        );
        registry.register(
            QUEUE_CAPACITY_RECORDS,
            "Records that may be queued before intake is refused",
            self.queue_capacity.clone(),
        );
        registry.register(
            DETECTOR_KEYS,
            "Keys/series tracked by the detectors",
            self.detector_keys.clone(),
        );
        registry.register(
            DETECTOR_OVERFLOW_RECORDS,
            "Records scored on the shared overflow key because the key cap was reached",
            self.detector_overflow.clone(),
        );
        registry.register(
            DETECTOR_EVICTED_KEYS,
            "Keys evicted after being idle to make room for new keys under the key cap",
            self.detector_evicted.clone(),
        );
        registry.register(
            ANOMALY_EVENTS,
            "Anomaly events on span keys, by signal and status",
            self.events.clone(),
        );
        registry.register(READY, "1 once the output was reached", self.ready.clone());
    }
}

/// Shared health state.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the process ready (the output was reached once).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// True once ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub health: Arc<Health>,
}

/// The admin router: /metrics, /healthz, /readyz.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready_handler))
        .with_state(state)
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the output has not been reached yet\n",
        )
    }
}

/// Sets up process logs from the config (`RUST_LOG` wins when set).
pub fn init_logs(settings: &crate::config::LogSettings, rust_log: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(rust_log.unwrap_or(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}

/// Serves `router` on `listener` until `stop` is cancelled, on its own task;
/// a failure is logged as `what` failed.
pub fn spawn_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: tokio_util::sync::CancellationToken,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let r = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "{what} failed");
        }
    })
}
