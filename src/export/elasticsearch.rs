//! Elasticsearch output through the official client: index templates at
//! start, bulk `create` requests (gzip on a blocking thread), per-item
//! results: delivered and duplicate items are done, 429/5xx items are retried
//! with backoff and jitter, the rest go to the dead-letter file.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::auth::{ClientCertificate, Credentials};
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, Transport, TransportBuilder,
};
use elasticsearch::http::Method;
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::bulk::{
    build_body, build_body_gzip, classify_response, ActionPrefixes, ItemAction, RequestFailure,
};
use super::{stream_name, Doc};
use crate::config::{Compression, Config, ElasticsearchSettings, EsCredentials, IndexMode};
use crate::pipeline::ExportCtx;
use crate::telemetry::{BulkLabels, BulkOutcome, ExportLabels, ExportOutcome, Signal};

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    #[error("invalid Elasticsearch URL {url:?}: {source}")]
    Url {
        url: String,
        source: url::ParseError,
    },
    #[error("cannot read TLS file {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid CA certificate in {path}: {source}")]
    CaParse {
        path: String,
        source: elasticsearch::Error,
    },
    #[error("cannot build the Elasticsearch client: {0}")]
    Build(String),
}

/// The Elasticsearch exporter.
#[derive(Clone)]
pub struct EsExporter {
    transport: Transport,
    settings: ElasticsearchSettings,
    environment: String,
    prefixes: Arc<ActionPrefixes>,
}

impl std::fmt::Debug for EsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsExporter")
            .field("urls", &self.settings.urls)
            .finish()
    }
}

fn credentials(c: &Option<EsCredentials>) -> Option<Credentials> {
    match c {
        Some(EsCredentials::ApiKey(k)) => Some(Credentials::EncodedApiKey(k.expose().to_string())),
        Some(EsCredentials::Basic { username, password }) => Some(Credentials::Basic(
            username.clone(),
            password.expose().to_string(),
        )),
        None => None,
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, EsError> {
    std::fs::read(path).map_err(|source| EsError::Ca {
        path: path.display().to_string(),
        source,
    })
}

/// The `Authorization` value of API key or basic credentials, marked sensitive.
fn auth_header(
    c: &Option<EsCredentials>,
) -> Result<Option<elasticsearch::http::headers::HeaderValue>, EsError> {
    use base64::Engine;
    let text = match c {
        Some(EsCredentials::ApiKey(k)) => format!("ApiKey {}", k.expose()),
        Some(EsCredentials::Basic { username, password }) => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", password.expose()))
        ),
        None => return Ok(None),
    };
    let mut v = elasticsearch::http::headers::HeaderValue::from_str(&text).map_err(|_| {
        EsError::Build("the Elasticsearch credentials are not valid in a header".into())
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

impl EsExporter {
    /// Builds the client from the checked config (no network I/O).
    pub fn new(cfg: &Config, es: &ElasticsearchSettings) -> Result<Self, EsError> {
        let creds = credentials(&cfg.es_credentials);
        let mut builder = if let Some(cloud_id) = &es.cloud_id {
            let pool = elasticsearch::http::transport::CloudConnectionPool::new(cloud_id)
                .map_err(|e| EsError::Build(format!("invalid cloud_id: {e}")))?;
            TransportBuilder::new(pool)
        } else if es.urls.len() == 1 {
            let url = url::Url::parse(&es.urls[0]).map_err(|source| EsError::Url {
                url: es.urls[0].clone(),
                source,
            })?;
            TransportBuilder::new(SingleNodeConnectionPool::new(url))
        } else {
            let mut urls = Vec::new();
            for u in &es.urls {
                urls.push(url::Url::parse(u).map_err(|source| EsError::Url {
                    url: u.clone(),
                    source,
                })?);
            }
            TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
        };
        match (&es.client_cert_file, &es.client_key_file) {
            (Some(cert), Some(key)) => {
                // The client takes one `auth`: the certificate goes there and
                // the API key or password as a (sensitive) default header.
                let mut pem = read_file(cert)?;
                pem.push(b'\n');
                pem.extend(read_file(key)?);
                builder = builder.auth(ClientCertificate::Pem(pem).into());
                if let Some(value) = auth_header(&cfg.es_credentials)? {
                    let mut headers = elasticsearch::http::headers::HeaderMap::new();
                    headers.insert(elasticsearch::http::headers::AUTHORIZATION, value);
                    builder = builder.headers(headers);
                }
            }
            _ => {
                if let Some(c) = creds {
                    builder = builder.auth(c);
                }
            }
        }
        if let Some(ca) = &es.ca_file {
            let pem = std::fs::read(ca).map_err(|source| EsError::Ca {
                path: ca.display().to_string(),
                source,
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|source| EsError::CaParse {
                path: ca.display().to_string(),
                source,
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .timeout(es.bulk.timeout)
            .build()
            .map_err(|e| EsError::Build(e.to_string()))?;
        let environment = cfg.settings.environment.clone();
        let prefixes = Arc::new(ActionPrefixes::new(|signal| {
            stream_name(signal, &es.dataset, &environment)
        }));
        Ok(Self {
            transport,
            settings: es.clone(),
            environment,
            prefixes,
        })
    }

    /// Index or data stream a document goes to.
    pub fn index_of(&self, signal: Signal) -> String {
        stream_name(signal, &self.settings.dataset, &self.environment)
    }

    fn content_type(&self) -> &'static str {
        if self.settings.compatibility_header {
            "application/vnd.elasticsearch+x-ndjson; compatible-with=8"
        } else {
            "application/x-ndjson"
        }
    }

    /// Installs one index template per signal. `Err(Retry)` when the server
    /// could not be reached or answered 5xx; `Err(Rejected)` when it refused
    /// the template (the documents can still be written with dynamic mappings).
    pub async fn setup(&self) -> Result<(), SetupError> {
        for signal in [Signal::traces, Signal::metrics, Signal::logs] {
            let name = format!("otel-anomaly-{}-{}", signal.as_str(), self.settings.dataset);
            let body = template_body(signal, &self.settings);
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let resp = self
                .transport
                .send(
                    Method::Put,
                    &format!("/_index_template/{name}"),
                    headers,
                    None::<&()>,
                    Some(body.into_bytes()),
                    None,
                )
                .await
                .map_err(|e| SetupError::Retry(format!("cannot reach Elasticsearch: {e}")))?;
            let status = resp.status_code().as_u16();
            if !(200..300).contains(&status) {
                let text = resp.text().await.unwrap_or_default();
                let msg = format!(
                    "installing index template {name} failed ({status}): {}",
                    text.chars().take(300).collect::<String>()
                );
                // 403: the key may write documents but not manage templates;
                // go on without them rather than never becoming ready.
                return Err(match status {
                    408 | 429 | 500..=599 | 401 => SetupError::Retry(msg),
                    _ => SetupError::Rejected(msg),
                });
            }
        }
        Ok(())
    }

    /// Checks that the cluster answers (`GET /`), for readiness when the template setup is off.
    pub async fn ping(&self) -> Result<(), SetupError> {
        let resp = self
            .transport
            .send(
                Method::Get,
                "/",
                HeaderMap::new(),
                None::<&()>,
                None::<()>,
                None,
            )
            .await
            .map_err(|e| SetupError::Retry(format!("cannot reach Elasticsearch: {e}")))?;
        match resp.status_code().as_u16() {
            200..=299 => Ok(()),
            s @ (408 | 429 | 500..=599 | 401) => Err(SetupError::Retry(format!(
                "Elasticsearch answered {s} to GET /"
            ))),
            // Reached; a 403/404 on the root (restricted keys, proxies) does not stop bulk writes.
            s => Err(SetupError::Rejected(format!(
                "Elasticsearch answered {s} to GET /"
            ))),
        }
    }

    /// Sends one bulk body; returns the HTTP status and reply body.
    async fn send(&self, body: Bytes, gzipped: bool) -> Result<(u16, Bytes), String> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type()));
        if gzipped {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let resp = self
            .transport
            .send(
                Method::Post,
                "/_bulk",
                headers,
                None::<&()>,
                Some(body),
                None,
            )
            .await
            .map_err(|e| format!("bulk request failed: {e}"))?;
        let status = resp.status_code().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading bulk reply failed: {e}"))?;
        Ok((status, bytes))
    }
}

/// Why the template setup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// Not reached, or a transient/auth failure: try again.
    #[error("{0}")]
    Retry(String),
    /// The server refused the template itself: go on without it.
    #[error("{0}")]
    Rejected(String),
}

/// Index template for one signal: data stream (or plain index) with the
/// fields that must not be guessed by dynamic mapping.
pub fn template_body(signal: Signal, es: &ElasticsearchSettings) -> String {
    let pattern = format!("{}-{}-*", signal.as_str(), es.dataset);
    let mut properties = serde_json::json!({
        "@timestamp": {"type": "date_nanos"},
        "data_stream": {"properties": {
            "type": {"type": "keyword"}, "dataset": {"type": "keyword"}, "namespace": {"type": "keyword"}
        }},
        "attributes": {"type": "object"},
        "resource": {"properties": {"attributes": {"type": "object"}}},
        "anomaly": {"properties": {
            "score": {"type": "float"},
            "severity": {"type": "keyword"},
            "explanation": {"type": "text"}
        }}
    });
    let extra = match signal {
        Signal::traces => serde_json::json!({
            "trace_id": {"type": "keyword"}, "span_id": {"type": "keyword"},
            "parent_span_id": {"type": "keyword"}, "name": {"type": "keyword"},
            "kind": {"type": "keyword"}, "duration": {"type": "long"},
            "status": {"properties": {"code": {"type": "keyword"}}}
        }),
        Signal::metrics => serde_json::json!({
            "start_timestamp": {"type": "date_nanos"},
            "metric": {"properties": {"name": {"type": "keyword"}, "type": {"type": "keyword"}, "unit": {"type": "keyword"}}}
        }),
        Signal::logs => serde_json::json!({
            "observed_timestamp": {"type": "date_nanos"},
            "severity_text": {"type": "keyword"}, "severity_number": {"type": "integer"},
            "trace_id": {"type": "keyword"}, "span_id": {"type": "keyword"}
        }),
    };
    if let (Some(p), Some(e)) = (properties.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    let mut body = serde_json::json!({
        "index_patterns": [pattern],
        "priority": 250,
        "template": {"mappings": {"properties": properties}},
        "_meta": {"managed_by": "otel-anomaly"}
    });
    if es.mode == IndexMode::DataStream {
        body["data_stream"] = serde_json::json!({});
        // Attribute keys keep their dots ("http.method" stays one field, as
        // in Elastic's OTel layout), so "http" and "http.method" can both
        // exist. Elasticsearch 8.3+ only; OpenSearch (index mode) lacks it.
        for path in [&["attributes"][..], &["resource", "attributes"][..]] {
            let mut node = &mut body["template"]["mappings"]["properties"];
            for (i, seg) in path.iter().enumerate() {
                node = if i + 1 == path.len() {
                    &mut node[*seg]
                } else {
                    &mut node[*seg]["properties"]
                };
            }
            node["subobjects"] = serde_json::json!(false);
        }
    }
    body.to_string()
}

fn backoff(attempt: u32, es: &ElasticsearchSettings) -> Duration {
    let base = es.bulk.initial_backoff.as_millis() as u64;
    let cap = es.bulk.max_backoff.as_millis() as u64;
    let exp = base.saturating_mul(1u64 << attempt.min(16)).min(cap).max(1);
    // Full jitter on the upper half: spread retries without ever retrying instantly.
    let ms = rand::rng().random_range(exp / 2..=exp);
    Duration::from_millis(ms)
}

/// Gzips a bulk body at level 1.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    // Level 1: most of the size win for a fraction of the CPU of the default level.
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    enc.finish()
}

type BulkResult = (Vec<Doc>, Result<Vec<ItemAction>, RequestFailure>, bool);

async fn send_batch(exp: EsExporter, docs: Vec<Doc>) -> BulkResult {
    let compress = exp.settings.bulk.compression == Compression::Gzip;
    let prefixes = exp.prefixes.clone();
    let built = tokio::task::spawn_blocking(move || {
        let body = if compress {
            build_body_gzip(&docs, &prefixes)
        } else {
            let mut body = Vec::with_capacity(docs.iter().map(|d| d.source.len() + 96).sum());
            build_body(&docs, &prefixes, &mut body);
            Ok(body)
        };
        (docs, body)
    })
    .await;
    let (docs, body) = match built {
        Ok(v) => v,
        Err(e) => {
            // The blocking task panicked: a bug; keep the documents by failing the batch as retryable.
            tracing::error!(error = %e, "building bulk body failed");
            return (
                Vec::new(),
                Err(RequestFailure::Retry(format!("internal error: {e}"))),
                false,
            );
        }
    };
    let body = match body {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            return (
                docs,
                Err(RequestFailure::Retry(format!(
                    "compressing bulk body failed: {e}"
                ))),
                false,
            )
        }
    };
    match exp.send(body, compress).await {
        Ok((status, reply)) => {
            let reached = (200..300).contains(&status);
            let n = docs.len();
            (docs, classify_response(status, &reply, n), reached)
        }
        Err(e) => (docs, Err(RequestFailure::Retry(e)), false),
    }
}

/// Runs the exporter until `input` closes and everything is delivered, or
/// `hard_stop` fires (then what is still pending is logged as not delivered).
pub async fn run(
    exp: EsExporter,
    input: flume::Receiver<Vec<Doc>>,
    ctx: Arc<ExportCtx>,
    hard_stop: CancellationToken,
) {
    let es = exp.settings.clone();
    {
        let mut attempt = 0;
        loop {
            let check = async {
                if es.setup {
                    exp.setup().await
                } else {
                    exp.ping().await
                }
            };
            tokio::select! {
                r = check => match r {
                    Ok(()) => {
                        ctx.health.set_ready();
                        ctx.metrics.ready.set(1);
                        tracing::info!(urls = ?es.urls, mode = ?es.mode, "elasticsearch reached, index templates installed");
                        break;
                    }
                    Err(SetupError::Rejected(e)) => {
                        // Reached, but the request was refused: documents still index with dynamic mappings.
                        ctx.health.set_ready();
                        ctx.metrics.ready.set(1);
                        tracing::error!(error = %e, "elasticsearch reached but refused the start-up request; continuing (set export.elasticsearch.setup: false to skip templates)");
                        break;
                    }
                    Err(SetupError::Retry(e)) => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "elasticsearch not reached yet; retrying (data waits in the queue)");
                    }
                },
                _ = hard_stop.cancelled() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt, &es)) => {}
                _ = hard_stop.cancelled() => break,
            }
        }
    }

    let mut pending: VecDeque<Doc> = VecDeque::new();
    let mut retry: Vec<(Instant, Doc)> = Vec::new();
    let mut in_flight: JoinSet<BulkResult> = JoinSet::new();
    let mut first_pending_at: Option<Instant> = None;
    let mut paused_until: Option<Instant> = None;
    let mut consecutive_failures = 0u32;
    let mut input_open = true;
    let tick =
        (es.bulk.flush_interval / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));

    loop {
        let now = Instant::now();
        // Due retries go back to the front of the queue.
        if !retry.is_empty() {
            let (due, later): (Vec<_>, Vec<_>) = retry.drain(..).partition(|(t, _)| *t <= now);
            retry = later;
            for (_, d) in due.into_iter().rev() {
                pending.push_front(d);
            }
            if !pending.is_empty() && first_pending_at.is_none() {
                first_pending_at = Some(now);
            }
        }
        let paused = paused_until.is_some_and(|t| t > now);
        while !paused && in_flight.len() < es.bulk.max_in_flight && !pending.is_empty() {
            let flush_due =
                first_pending_at.is_some_and(|t| now.duration_since(t) >= es.bulk.flush_interval);
            // An idle exporter sends at once: waiting for a fuller request only
            // pays while another one is on the wire, and under load requests fill
            // up by themselves while the previous one is answered.
            let idle = es.bulk.send_when_idle && in_flight.is_empty();
            if pending.len() < es.bulk.max_docs && !flush_due && !idle && input_open {
                break;
            }
            let mut batch = Vec::with_capacity(es.bulk.max_docs.min(pending.len()));
            let mut bytes = 0usize;
            while let Some(d) = pending.front() {
                if batch.len() >= es.bulk.max_docs
                    || (!batch.is_empty() && bytes + d.source.len() > es.bulk.max_bytes)
                {
                    break;
                }
                bytes += d.source.len() + 96;
                if let Some(d) = pending.pop_front() {
                    batch.push(d);
                }
            }
            first_pending_at = if pending.is_empty() { None } else { Some(now) };
            in_flight.spawn(send_batch(exp.clone(), batch));
        }
        if !input_open && pending.is_empty() && retry.is_empty() && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            msg = input.recv_async(), if input_open => match msg {
                Ok(docs) => {
                    if pending.is_empty() {
                        first_pending_at = Some(Instant::now());
                    }
                    pending.extend(docs);
                }
                Err(_) => input_open = false,
            },
            Some(joined) = in_flight.join_next() => {
                let Ok((docs, result, reached)) = joined else { continue };
                if reached && !ctx.health.is_ready() {
                    ctx.health.set_ready();
                    ctx.metrics.ready.set(1);
                }
                match result {
                    Ok(actions) => {
                        consecutive_failures = 0;
                        paused_until = None;
                        let mut dead = Vec::new();
                        let mut delivered = Vec::new();
                        let (mut created, mut duplicate, mut retried) = (0u64, 0u64, 0usize);
                        for (mut doc, action) in docs.into_iter().zip(actions) {
                            match action {
                                ItemAction::Delivered => {
                                    created += 1;
                                    delivered.push(doc);
                                }
                                ItemAction::Duplicate => {
                                    duplicate += 1;
                                    delivered.push(doc);
                                }
                                ItemAction::Retry(reason) => {
                                    doc.attempts += 1;
                                    if doc.attempts > es.bulk.max_retries {
                                        dead.push((doc, format!("retries exhausted after {} attempts: {reason}", es.bulk.max_retries + 1)));
                                    } else {
                                        ctx.metrics.export_retries.inc();
                                        retried += 1;
                                        let at = Instant::now() + backoff(doc.attempts, &es);
                                        retry.push((at, doc));
                                    }
                                }
                                ItemAction::Reject(reason) => dead.push((doc, reason)),
                            }
                        }
                        // Counted once per reply: a labelled counter lookup per document showed in profiles.
                        for (outcome, n) in [(ExportOutcome::created, created), (ExportOutcome::duplicate, duplicate)] {
                            if n > 0 {
                                ctx.metrics.exported.get_or_create(&ExportLabels { outcome }).inc_by(n);
                            }
                        }
                        let outcome = if retried + dead.len() == 0 { BulkOutcome::ok } else { BulkOutcome::partial };
                        ctx.metrics.bulk_requests.get_or_create(&BulkLabels { outcome }).inc();
                        if retried > 0 {
                            tracing::debug!(retried, "bulk items will be retried");
                        }
                        ctx.settle_docs(&delivered);
                        ctx.dead_letter(dead).await;
                    }
                    Err(RequestFailure::Retry(reason)) => {
                        consecutive_failures += 1;
                        ctx.metrics.bulk_requests.get_or_create(&BulkLabels { outcome: BulkOutcome::failed }).inc();
                        let wait = backoff(consecutive_failures, &es);
                        tracing::warn!(error = %reason, docs = docs.len(), retry_in_ms = wait.as_millis() as u64, "bulk request failed; will retry");
                        paused_until = Some(Instant::now() + wait);
                        ctx.metrics.export_retries.inc_by(docs.len() as u64);
                        for d in docs.into_iter().rev() {
                            pending.push_front(d);
                        }
                        first_pending_at.get_or_insert(Instant::now());
                    }
                    Err(RequestFailure::Reject(reason)) => {
                        ctx.metrics.bulk_requests.get_or_create(&BulkLabels { outcome: BulkOutcome::failed }).inc();
                        let dead = docs.into_iter().map(|d| (d, reason.clone())).collect();
                        ctx.dead_letter(dead).await;
                    }
                }
            },
            _ = tokio::time::sleep(tick) => {}
            _ = hard_stop.cancelled() => {
                let lost = pending.len() + retry.len();
                if lost > 0 || !in_flight.is_empty() {
                    tracing::error!(pending = lost, in_flight_requests = in_flight.len(), "shutdown deadline reached before every document was delivered");
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_use_subobjects_only_for_data_streams() {
        let mut es = ElasticsearchSettings::default();
        let ds: serde_json::Value =
            serde_json::from_str(&template_body(Signal::traces, &es)).unwrap();
        assert_eq!(ds["index_patterns"][0], "traces-otel-*");
        assert!(ds.get("data_stream").is_some());
        assert_eq!(
            ds["template"]["mappings"]["properties"]["attributes"]["subobjects"],
            false
        );
        assert_eq!(
            ds["template"]["mappings"]["properties"]["resource"]["properties"]["attributes"]
                ["subobjects"],
            false
        );
        es.mode = IndexMode::Index;
        let idx: serde_json::Value =
            serde_json::from_str(&template_body(Signal::logs, &es)).unwrap();
        assert!(idx.get("data_stream").is_none());
        assert!(idx["template"]["mappings"]["properties"]["attributes"]
            .get("subobjects")
            .is_none());
    }
}
