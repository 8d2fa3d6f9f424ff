//! The aggregator role: the push API for sidecars, the store and its
//! incidents, the REST API with a live stream and OpenAPI document, the
//! dashboard, and alerts to Alertmanager and webhooks.
//!
//! Start-up binds every listener first (a busy port fails at once), then
//! serves until the shutdown token is cancelled; shutdown stops the listeners,
//! ends live streams, and lets the alerter finish its current delivery.

pub mod alert;
pub mod api;
pub mod auth;
pub mod config;
pub mod demo;
pub mod grpc;
pub mod store;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::config::{AggregatorConfig, ApiAuth, TokenEntry};
use self::store::{now_ns, Rules, Store, StoreError};
use crate::push::proto::push_server::PushServer;

/// Metric names of the aggregator, defined once.
pub mod names {
    pub const EVENTS: &str = "otel_anomaly_aggregator_events";
    pub const REFUSED_CALLS: &str = "otel_anomaly_aggregator_refused_calls";
    pub const INCIDENTS_OPENED: &str = "otel_anomaly_aggregator_incidents_opened";
    pub const ALERT_DELIVERIES: &str = "otel_anomaly_aggregator_alert_deliveries";
}

/// What happened to pushed events.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventOutcome {
    accepted,
    duplicate,
}

/// Labels of the events counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub outcome: EventOutcome,
}

/// Labels of refused calls and alert deliveries.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The aggregator's metrics.
#[derive(Debug, Default, Clone)]
pub struct AggMetrics {
    pub events: Family<EventLabels, Counter>,
    pub refused_calls: Family<ReasonLabels, Counter>,
    pub incidents_opened: Counter,
    pub alert_deliveries: Family<ReasonLabels, Counter>,
}

impl AggMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            names::EVENTS,
            "Anomaly events received",
            self.events.clone(),
        );
        r.register(
            names::REFUSED_CALLS,
            "Push calls refused, by reason",
            self.refused_calls.clone(),
        );
        r.register(
            names::INCIDENTS_OPENED,
            "Incidents opened",
            self.incidents_opened.clone(),
        );
        r.register(
            names::ALERT_DELIVERIES,
            "Alert deliveries by target and result",
            self.alert_deliveries.clone(),
        );
    }

    fn refused(&self, reason: &str) {
        self.refused_calls
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    fn accepted(&self, accepted: u32, duplicates: u32, opened: usize) {
        self.events
            .get_or_create(&EventLabels {
                outcome: EventOutcome::accepted,
            })
            .inc_by(u64::from(accepted));
        self.events
            .get_or_create(&EventLabels {
                outcome: EventOutcome::duplicate,
            })
            .inc_by(u64::from(duplicates));
        self.incidents_opened.inc_by(opened as u64);
    }

    fn delivery(&self, reason: &str) {
        self.alert_deliveries
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// A change pushed to live streams (`GET /api/v1/stream`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveUpdate {
    /// An incident opened or gained events.
    Incident {
        id: i64,
        environment: String,
        opened: bool,
    },
    /// An incident resolved.
    Resolved { id: i64 },
    /// A sidecar sent a heartbeat.
    Sidecar { environment: String },
    /// A silence or maintenance window was created or ended.
    Silence { id: i64 },
}

/// State shared by the push API, the REST API and the background tasks.
pub struct AppState {
    pub store: Arc<Store>,
    pub tokens: Vec<TokenEntry>,
    pub max_batch_events: usize,
    pub updates: broadcast::Sender<LiveUpdate>,
    pub metrics: AggMetrics,
    pub registry: Registry,
    pub api_auth: ApiAuth,
    pub admin_token: Option<crate::config::Secret>,
    pub environments: BTreeSet<String>,
    pub stale_after: Duration,
    /// Cancelled at shutdown; ends live streams.
    pub shutdown: CancellationToken,
}

/// Errors starting the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot build the alert HTTP client: {0}")]
    Alerts(reqwest::Error),
}

/// A running aggregator.
pub struct Running {
    /// Bound push API address.
    pub grpc_addr: SocketAddr,
    /// Bound REST API / dashboard address.
    pub http_addr: SocketAddr,
    /// The store (for tests and the demo).
    pub store: Arc<Store>,
    /// Resolves when shutdown is complete.
    pub done: JoinHandle<()>,
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, key, source })
}

/// Starts the aggregator; it runs until `shutdown` is cancelled.
pub async fn start(
    cfg: AggregatorConfig,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let s = cfg.settings.clone();
    let grpc_listener = bind(s.grpc.listen, "grpc.listen").await?;
    let http_listener = bind(s.http.listen, "http.listen").await?;
    let addr_of = |l: &TcpListener, addr, key| {
        l.local_addr()
            .map_err(|source| StartError::Bind { addr, key, source })
    };
    let grpc_addr = addr_of(&grpc_listener, s.grpc.listen, "grpc.listen")?;
    let http_addr = addr_of(&http_listener, s.http.listen, "http.listen")?;

    let rules = Rules {
        resolve_after: s.incidents.resolve_after,
        max_duration: s.incidents.max_duration,
        retention: s.ingest.retention,
    };
    let store = Arc::new(Store::open(&cfg.store_path(), rules)?);

    let metrics = AggMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (updates, _) = broadcast::channel(1024);
    let environments = cfg.environments();
    let state = Arc::new(AppState {
        store: store.clone(),
        tokens: cfg.tokens.clone(),
        max_batch_events: s.ingest.max_batch_events,
        updates: updates.clone(),
        metrics: metrics.clone(),
        registry,
        api_auth: cfg.api_auth.clone(),
        admin_token: cfg.admin_token.clone(),
        environments,
        stale_after: s.ingest.sidecar_stale_after,
        shutdown: shutdown.clone(),
    });

    // Push API.
    let grpc_tls = match s.grpc.tls_settings() {
        Some(t) => Some(crate::tls::TlsSource::load(
            "grpc.tls",
            &t,
            crate::tls::ALPN_GRPC,
        )?),
        None => None,
    };
    let http_tls = match &s.http.tls {
        Some(t) => Some(crate::tls::TlsSource::load(
            "http.tls",
            t,
            crate::tls::ALPN_HTTP,
        )?),
        None => None,
    };
    let svc = PushServer::new(grpc::PushService {
        state: state.clone(),
    })
    .max_decoding_message_size(s.ingest.max_message_bytes);
    let grpc_stop = shutdown.clone();
    let tls_on = grpc_tls.is_some();
    let grpc_task = tokio::spawn(async move {
        let router = tonic::transport::Server::builder().add_service(svc);
        let stop = grpc_stop.cancelled_owned();
        let r = match grpc_tls {
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            Some(src) => match crate::tls::TlsListener::new(grpc_listener, src) {
                Ok(l) => {
                    router
                        .serve_with_incoming_shutdown(l.into_incoming(), stop)
                        .await
                }
                Err(e) => {
                    tracing::error!(error = %e, "push api failed");
                    return;
                }
            },
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "push api failed");
        }
    });

    // REST API and dashboard.
    let router = api::router(state.clone());
    let http_stop = shutdown.clone();
    let http_task = tokio::spawn(async move {
        let r =
            crate::tls::serve_http(http_listener, http_tls, router, http_stop.cancelled_owned())
                .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http api failed");
        }
    });

    // Resolution, persistence rule and retention.
    let sweep_store = store.clone();
    let sweep_updates = updates.clone();
    let sweep_stop = shutdown.clone();
    let sweep_every = s.incidents.sweep_interval;
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sweep_stop.cancelled() => break,
            }
            let st = sweep_store.clone();
            match tokio::task::spawn_blocking(move || st.sweep(now_ns())).await {
                Ok(Ok(resolved)) => {
                    for id in resolved {
                        let _ = sweep_updates.send(LiveUpdate::Resolved { id });
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "incident sweep failed"),
                Err(e) => tracing::error!(error = %e, "incident sweep task failed"),
            }
        }
    });

    // Alerts.
    let external_url = s
        .http
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    let alerter = alert::spawn(
        &s.alerts,
        store.clone(),
        metrics,
        external_url,
        shutdown.clone(),
    )
    .map_err(StartError::Alerts)?;

    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls_on,
        http_tls = s.http.tls.is_some(),
        sidecars = cfg.tokens.len(),
        store = %cfg.store_path().display(),
        config = %cfg.source,
        "aggregator started"
    );

    let deadline = s.shutdown_timeout;
    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        for task in [grpc_task, http_task, sweeper, alerter] {
            if tokio::time::timeout(deadline, task).await.is_err() {
                tracing::warn!("a task did not stop within shutdown_timeout");
            }
        }
        tracing::info!("aggregator stopped");
    });
    Ok(Running {
        grpc_addr,
        http_addr,
        store,
        done,
    })
}
