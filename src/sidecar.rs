//! The sidecar role: wires receivers → pipeline → detectors → exporter, and
//! stops in stages: stop accepting → drain the queue → flush the output → exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::export::deadletter::DeadLetter;
use crate::export::elasticsearch::{self, EsExporter};
use crate::export::file::FileSink;
use crate::export::{stream_name, Doc};
use crate::pipeline::process::{worker_loop_outputs, Processor, WorkerOutputs};
use crate::pipeline::snapshot::{self, Restored};
use crate::pipeline::{Admission, AnomalyFeed, ExportCtx, Pipeline, Work};
use crate::receiver::{grpc, http};
use crate::telemetry::{self, AdminState, Health, Metrics, Signal, SignalLabels};

/// Errors starting the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot create output directory {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Elasticsearch(#[from] elasticsearch::EsError),
    #[error("cannot start scoring worker: {0}")]
    Worker(std::io::Error),
    #[error("detector snapshot {path} (detect.snapshot.path): {source}")]
    Snapshot {
        path: String,
        source: crate::detect::snapshot::SnapshotError,
    },
    #[error(transparent)]
    Push(#[from] crate::push::PushError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("model {path} (detect.model / --model): {reason}")]
    Model { path: String, reason: String },
    #[error("write-ahead queue (wal.dir, or set wal.enabled: false): {0}")]
    Wal(#[from] crate::export::wal::WalError),
    #[error(transparent)]
    Otlp(#[from] crate::export::otlp::OtlpError),
}

/// Batches that may wait for a scoring worker (records are capped separately by admission).
const WORK_QUEUE_BATCHES: usize = 4096;
/// Scored batches that may wait for the exporter.
const EXPORT_QUEUE_BATCHES: usize = 256;

/// A running sidecar.
pub struct Running {
    /// Bound OTLP/gRPC address, if enabled.
    pub grpc_addr: Option<SocketAddr>,
    /// Bound OTLP/HTTP address, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// Bound admin (metrics/health) address.
    pub admin_addr: SocketAddr,
    /// Recent anomalies.
    pub feed: Arc<AnomalyFeed>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
    /// Producer side of the aggregator push client, when `push.url` is set.
    pub push: Option<crate::push::PushHandle>,
    /// Resolves when the staged shutdown is complete.
    pub done: JoinHandle<()>,
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, key, source })
}

/// Starts the sidecar; it runs until `shutdown` is cancelled, then stops in stages.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let s = cfg.settings.clone();
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let push = crate::push::start_from_config(&cfg, &mut registry, shutdown.clone())?;
    let health = Arc::new(Health::default());
    let feed = Arc::new(AnomalyFeed::default());

    // Bind everything first, so a busy port fails start-up with a clear error.
    let grpc_listener = match s.receiver.grpc.enabled {
        true => Some(bind(s.receiver.grpc.listen, "receiver.grpc.listen").await?),
        false => None,
    };
    let http_listener = match s.receiver.http.enabled {
        true => Some(bind(s.receiver.http.listen, "receiver.http.listen").await?),
        false => None,
    };
    let admin_listener = bind(s.admin.listen, "admin.listen").await?;
    // TLS files are read and checked now, so a bad certificate fails start-up.
    let load_tls = |key: &str, t: &Option<crate::tls::TlsSettings>, alpn| match t {
        Some(t) => crate::tls::TlsSource::load(key, t, alpn).map(Some),
        None => Ok(None),
    };
    let grpc_tls = load_tls(
        "receiver.grpc.tls",
        &s.receiver.grpc.tls,
        crate::tls::ALPN_GRPC,
    )?;
    let http_tls = load_tls(
        "receiver.http.tls",
        &s.receiver.http.tls,
        crate::tls::ALPN_HTTP,
    )?;
    let admin_tls = load_tls("admin.tls", &s.admin.tls, crate::tls::ALPN_HTTP)?;
    let receiver_auth =
        crate::receiver::auth::ReceiverAuth::new(cfg.receiver_tokens.clone(), metrics.clone());
    let grpc_addr = grpc_listener.as_ref().and_then(|l| l.local_addr().ok());
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: s.admin.listen,
            key: "admin.listen",
            source,
        })?;

    let admission = Arc::new(Admission::new(
        s.pipeline.max_queued_records,
        metrics.clone(),
    ));
    let (work_tx, work_rx) = flume::bounded::<Work>(WORK_QUEUE_BATCHES);
    let (export_tx, export_rx) = flume::bounded::<Vec<Doc>>(EXPORT_QUEUE_BATCHES);
    let mut pipeline = Pipeline::new(admission.clone(), work_tx, metrics.clone());
    // The write-ahead queue: requests left by the last run are replayed first.
    let intake = if s.wal.enabled {
        let wal_metrics = crate::export::wal::WalMetrics::default();
        wal_metrics.register(&mut registry);
        let dir = cfg.wal_dir();
        let (wal, replay) = crate::export::wal::Wal::open(&dir, &s.wal, wal_metrics)?;
        if !replay.is_empty() {
            tracing::info!(dir = %dir.display(), requests = replay.len(), "replaying the write-ahead queue");
        }
        let intake = Arc::new(crate::export::wal::intake::Intake::new(wal, replay));
        pipeline = pipeline.with_wal(intake.clone());
        Some(intake)
    } else {
        None
    };
    let pipeline = Arc::new(pipeline);
    pipeline.set_keep_wire(cfg.otlp.is_some());
    let ctx = Arc::new(ExportCtx {
        admission: admission.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        dead_letter: DeadLetter::new(&cfg.dead_letter_path()),
    });

    // Output.
    let hard_stop = CancellationToken::new();
    let dataset = s
        .export
        .elasticsearch
        .as_ref()
        .map(|e| e.dataset.clone())
        .unwrap_or_else(|| "otel".into());
    // Documents go to Elasticsearch, or to NDJSON files unless the OTLP hop is the only output.
    let documents_on =
        s.export.elasticsearch.is_some() || s.export.file.enabled.unwrap_or(cfg.otlp.is_none());
    let exporter: JoinHandle<()> = match &s.export.elasticsearch {
        None if !documents_on => {
            health.set_ready();
            metrics.ready.set(1);
            tracing::info!("no document output: the otlp next hop is the only output");
            drop(export_rx);
            tokio::spawn(async {})
        }
        Some(es) => {
            let exp = EsExporter::new(&cfg, es)?;
            if !es.setup {
                tracing::info!(
                    "index template setup disabled; readiness follows GET / of the cluster"
                );
            }
            tokio::spawn(elasticsearch::run(
                exp,
                export_rx,
                ctx.clone(),
                hard_stop.clone(),
            ))
        }
        None => {
            let dir = cfg.file_dir();
            let sink = FileSink::new(&dir, s.export.file.max_file_bytes).map_err(|source| {
                StartError::Output {
                    path: dir.display().to_string(),
                    source,
                }
            })?;
            health.set_ready();
            metrics.ready.set(1);
            tracing::info!(dir = %dir.display(), "no elasticsearch configured: writing NDJSON files");
            let env = s.environment.clone();
            let ds = dataset.clone();
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || run_file_sink(sink, export_rx, ctx, &ds, &env))
        }
    };

    // The OTLP next hop (processor mode): its own queue, retries and metrics.
    let otlp = match &cfg.otlp {
        Some(target) => {
            let client = crate::export::otlp::OtlpClient::new(target)?;
            let otlp_metrics = crate::export::otlp::OtlpMetrics::default();
            otlp_metrics.register(&mut registry);
            let (tx, rx) = flume::bounded(target.settings.queue_batches);
            let ctx = crate::export::otlp::OtlpCtx {
                metrics: otlp_metrics,
                dead_letter_path: cfg.dead_letter_path(),
            };
            tracing::info!(
                protocol = ?target.settings.protocol,
                traces = ?target.endpoint(Signal::traces),
                metrics = ?target.endpoint(Signal::metrics),
                logs = ?target.endpoint(Signal::logs),
                "forwarding enriched records to the next otlp hop"
            );
            let on = [Signal::traces, Signal::metrics, Signal::logs]
                .map(|sig| target.endpoint(sig).is_some());
            let task = tokio::spawn(crate::export::otlp::run(client, rx, ctx, hard_stop.clone()));
            Some((tx, on, task))
        }
        None => None,
    };
    let outputs = WorkerOutputs {
        documents: documents_on.then_some(export_tx),
        otlp: otlp.as_ref().map(|(tx, on, _)| (tx.clone(), *on)),
        admission: admission.clone(),
    };
    let otlp_task = otlp.map(|(_, _, task)| task);

    // Scoring workers.
    let processor = Arc::new(Processor::new(&s, &dataset, metrics.clone(), feed.clone()));
    let snapshot_path = s.detect.snapshot.enabled.then(|| cfg.snapshot_path());
    // A trained model first: the sidecar's own snapshot, restored next,
    // replaces it key by key (it continues the live stream, so it is newer).
    if let Some(model) = &s.detect.model {
        let model_err = |reason: String| StartError::Model {
            path: model.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(model).map_err(|e| model_err(e.to_string()))?;
        let (keys, series, services) = processor
            .detectors()
            .restore(&bytes, &s.environment)
            .map_err(|e| model_err(e.to_string()))?;
        tracing::info!(
            path = %model.display(),
            span_keys = keys,
            metric_series = series,
            log_services = services,
            "trained model loaded"
        );
    }
    if let Some(path) = &snapshot_path {
        match snapshot::restore(&processor, &s.environment, path) {
            Ok(Restored::Missing) => {
                tracing::info!(path = %path.display(), "no detector snapshot: cold start")
            }
            Ok(Restored::Loaded(keys, series, services)) => tracing::info!(
                path = %path.display(),
                span_keys = keys,
                metric_series = series,
                log_services = services,
                "detector state restored"
            ),
            Ok(Restored::MovedAside(aside, why)) => tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                "detector snapshot unusable ({why}); starting cold"
            ),
            Err(source) => {
                return Err(StartError::Snapshot {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
    if !documents_on {
        processor.without_documents();
    }
    let n_workers = if s.pipeline.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        s.pipeline.workers
    };
    let mut workers = Vec::with_capacity(n_workers);
    for i in 0..n_workers {
        let (rx, out, p) = (work_rx.clone(), outputs.clone(), processor.clone());
        let handle = std::thread::Builder::new()
            .name(format!("score-{i}"))
            .spawn(move || worker_loop_outputs(rx, out, p))
            .map_err(StartError::Worker)?;
        workers.push(handle);
    }
    drop((work_rx, outputs));

    // Anomaly events and heartbeats to the aggregator.
    let push_handle = push.as_ref().map(|(handle, _)| handle.clone());
    let push_task = push.map(|(handle, task)| {
        let (p, a) = (processor.clone(), admission.clone());
        let stats = move || {
            let (span_keys, _, series, _) = p.detectors().stats();
            crate::push::SidecarStats {
                keys_tracked: (span_keys + series) as u64,
                queue_depth: a.queued() as u64,
                export_lag_seconds: a.export_lag(std::time::SystemTime::now()).as_secs_f64(),
            }
        };
        let cluster = s.cluster.clone().unwrap_or_default();
        // Span keys' interval-level events go out as they are made.
        {
            let (h, env, cl) = (handle.clone(), s.environment.clone(), cluster.clone());
            let interval_ns = s.detect.spans.interval.as_nanos() as u64;
            feed.listen(Box::new(move |e| {
                if let Some(ev) = crate::push::bridge::span_event(e, &env, &cl, interval_ns) {
                    h.send(ev);
                }
            }));
            // The service graph (caller → callee) from parent/child spans.
            let h = handle.clone();
            processor.on_traces(Box::new(move |req| {
                for ((caller, callee), calls) in crate::push::edges::edges_of(req) {
                    h.add_edge(&caller, &callee, calls);
                }
            }));
        }
        let every = s.push.heartbeat_interval.min(Duration::from_secs(10));
        crate::push::bridge::spawn(
            feed.clone(),
            handle,
            s.environment.clone(),
            cluster,
            every,
            stats,
            shutdown.clone(),
        );
        task
    });

    // Receivers and admin.
    let stop_accepting = shutdown.child_token();
    let feeder = intake.as_ref().map(|i| {
        tokio::spawn(
            i.clone()
                .run_feeder(pipeline.clone(), stop_accepting.clone()),
        )
    });
    let mut servers: Vec<JoinHandle<()>> = Vec::new();
    if let Some(l) = grpc_listener {
        let recv = grpc::GrpcReceiver::new(pipeline.clone(), metrics.clone());
        let token = stop_accepting.clone();
        let max = s.receiver.max_decompressed_bytes;
        let security = grpc::Security {
            tls: grpc_tls,
            auth: receiver_auth.clone(),
        };
        servers.push(tokio::spawn(async move {
            if let Err(e) = grpc::serve_with(l, recv, max, security, token.cancelled_owned()).await
            {
                tracing::error!(error = %e, "otlp/grpc receiver failed");
            }
        }));
    }
    if let Some(l) = http_listener {
        let router = http::router_with_auth(
            pipeline.clone(),
            metrics.clone(),
            http::Limits {
                max_request_bytes: s.receiver.max_request_bytes,
                max_decompressed_bytes: s.receiver.max_decompressed_bytes,
            },
            receiver_auth.clone(),
        );
        let token = stop_accepting.clone();
        servers.push(tokio::spawn(async move {
            if let Err(e) =
                crate::tls::serve_http(l, http_tls, router, token.cancelled_owned()).await
            {
                tracing::error!(error = %e, "otlp/http receiver failed");
            }
        }));
    }
    let admin_token = CancellationToken::new();
    let admin = {
        let router = telemetry::admin_router(AdminState {
            registry: Arc::new(registry),
            health: health.clone(),
        });
        let stop = admin_token.clone();
        tokio::spawn(async move {
            let r =
                crate::tls::serve_http(admin_listener, admin_tls, router, stop.cancelled_owned())
                    .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "admin listener failed");
            }
        })
    };

    // Detector gauges.
    let stats_token = shutdown.clone();
    let interval_ns = s.detect.spans.interval.as_nanos() as u64;
    let (stats_proc, stats_metrics) = (processor.clone(), metrics.clone());
    tokio::spawn(async move {
        let mut last_overflow = (0u64, 0u64);
        let mut last_evicted = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stats_token.cancelled() => break,
            }
            // Judge the intervals of keys that went quiet (a throughput drop
            // to zero), one interval of grace after their end for late spans.
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            stats_proc.tick(now_ns.saturating_sub(interval_ns));
            let evicted = stats_proc.detectors().evicted_span_keys();
            stats_metrics
                .detector_evicted
                .get_or_create(&SignalLabels {
                    signal: Signal::traces,
                })
                .inc_by(evicted.saturating_sub(last_evicted));
            last_evicted = evicted;
            let (span_keys, span_over, series, series_over) = stats_proc.detectors().stats();
            let m = &stats_metrics;
            m.detector_keys
                .get_or_create(&SignalLabels {
                    signal: Signal::traces,
                })
                .set(span_keys as i64);
            m.detector_keys
                .get_or_create(&SignalLabels {
                    signal: Signal::metrics,
                })
                .set(series as i64);
            m.detector_overflow
                .get_or_create(&SignalLabels {
                    signal: Signal::traces,
                })
                .inc_by(span_over.saturating_sub(last_overflow.0));
            m.detector_overflow
                .get_or_create(&SignalLabels {
                    signal: Signal::metrics,
                })
                .inc_by(series_over.saturating_sub(last_overflow.1));
            last_overflow = (span_over, series_over);
        }
    });

    // Periodic detector snapshots.
    if let Some(path) = snapshot_path.clone() {
        let (proc_, token, env) = (processor.clone(), shutdown.clone(), s.environment.clone());
        let every = s.detect.snapshot.interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = token.cancelled() => break,
                }
                let (p, e, path) = (proc_.clone(), env.clone(), path.clone());
                match tokio::task::spawn_blocking(move || snapshot::save(&p, &e, &path)).await {
                    Ok(Ok(bytes)) => tracing::debug!(bytes, "detector snapshot written"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "writing the detector snapshot failed; will retry")
                    }
                    Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
                }
            }
        });
    }

    tracing::info!(
        environment = %s.environment,
        grpc = ?grpc_addr,
        http = ?http_addr,
        admin = %admin_addr,
        tls_grpc = s.receiver.grpc.tls.is_some(),
        tls_http = s.receiver.http.tls.is_some(),
        tls_admin = s.admin.tls.is_some(),
        otlp_auth = !cfg.receiver_tokens.is_empty(),
        workers = n_workers,
        config = %cfg.source,
        "sidecar started"
    );

    let deadline = s.shutdown_timeout;
    let final_snapshot = (snapshot_path, processor.clone(), s.environment.clone());
    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        let started = Instant::now();
        tracing::info!("shutting down: no new requests");
        // 1. Stop accepting; in-flight requests finish.
        for srv in servers {
            let _ = tokio::time::timeout(deadline, srv).await;
        }
        // 2. Drain: workers score what is queued, then exit. Requests still
        // waiting on disk stay in the write-ahead queue for the next start.
        if let Some(f) = feeder {
            let _ = f.await;
        }
        pipeline.close();
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        // The workers are done: the detectors hold everything they saw.
        if let Some(path) = final_snapshot.0 {
            let (p, env) = (final_snapshot.1, final_snapshot.2);
            match tokio::task::spawn_blocking(move || snapshot::save(&p, &env, &path)).await {
                Ok(Ok(bytes)) => tracing::info!(bytes, "detector snapshot written"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "writing the detector snapshot at shutdown failed")
                }
                Err(e) => tracing::error!(error = %e, "snapshot task failed"),
            }
        }
        // 3. Flush the output within what is left of the deadline.
        let left = deadline.saturating_sub(started.elapsed());
        let mut exporter = exporter;
        let mut otlp_task = otlp_task;
        let flushed = async {
            let _ = (&mut exporter).await;
            if let Some(t) = otlp_task.as_mut() {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(left, flushed).await.is_err() {
            hard_stop.cancel();
            // A task that already finished may have been polled to completion: never await it again.
            if !exporter.is_finished() {
                let _ = tokio::time::timeout(Duration::from_secs(2), exporter).await;
            }
            if let Some(t) = otlp_task.filter(|t| !t.is_finished()) {
                let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
            }
        }
        let unsent = admission.queued();
        if unsent > 0 {
            tracing::error!(
                records = unsent,
                "records not delivered before the shutdown deadline (shutdown_timeout)"
            );
        }
        if let Some(intake) = &intake {
            let wal = intake.wal();
            wal.close();
            if unsent > 0 || intake.spilled() > 0 {
                tracing::info!(
                    bytes = wal.bytes(),
                    "undelivered requests stay in the write-ahead queue and are replayed at the next start"
                );
            }
        }
        if let Some(task) = push_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        admin_token.cancel();
        let _ = admin.await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown complete"
        );
    });

    Ok(Running {
        grpc_addr,
        http_addr,
        admin_addr,
        feed,
        metrics,
        health,
        push: push_handle,
        done,
    })
}

fn run_file_sink(
    mut sink: FileSink,
    input: flume::Receiver<Vec<Doc>>,
    ctx: Arc<ExportCtx>,
    dataset: &str,
    env: &str,
) {
    let names =
        [Signal::traces, Signal::metrics, Signal::logs].map(|s| stream_name(s, dataset, env));
    let stream_of = |d: &Doc| match d.signal {
        Signal::traces => names[0].clone(),
        Signal::metrics => names[1].clone(),
        Signal::logs => names[2].clone(),
    };
    loop {
        match input.recv_timeout(Duration::from_millis(500)) {
            Ok(docs) => {
                let n = docs.len();
                let mut written = sink.write(&docs, stream_of);
                if written.is_ok() {
                    written = sink.flush();
                }
                match written {
                    Ok(()) => {
                        ctx.metrics
                            .exported
                            .get_or_create(&crate::telemetry::ExportLabels {
                                outcome: crate::telemetry::ExportOutcome::created,
                            })
                            .inc_by(n as u64);
                        ctx.settle_docs(&docs);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, docs = n, "writing NDJSON output failed; dead-lettering the batch");
                        let entries: Vec<(Doc, String)> = docs
                            .iter()
                            .cloned()
                            .map(|d| (d, format!("file output failed: {e}")))
                            .collect();
                        if let Err(e2) = ctx.dead_letter.write(&entries) {
                            tracing::error!(error = %e2, docs = n, "dead-letter write failed too; these documents are lost unless the write-ahead queue replays them at the next start");
                            for t in docs.iter().filter_map(|d| d.ticket.as_ref()) {
                                t.keep_queued();
                            }
                        } else {
                            ctx.metrics.dead_lettered.inc_by(n as u64);
                        }
                        ctx.settle_docs(&docs);
                    }
                }
            }
            Err(flume::RecvTimeoutError::Timeout) => {
                let _ = sink.flush();
            }
            Err(flume::RecvTimeoutError::Disconnected) => {
                let _ = sink.flush();
                break;
            }
        }
    }
}
