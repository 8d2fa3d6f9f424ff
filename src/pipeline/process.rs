//! Scoring workers: each request is scored record by record (detect), the
//! verdicts are put onto the records (enrich) and encoded as documents for
//! the exporter. Runs on plain threads, off the async runtime.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets as ExpBuckets;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{AnomalyFeed, AnomalyNote, Payload, Work};
use crate::config::Settings;
use crate::detect::histogram::{
    derived_series_key, summary_quantiles, Buckets, ExpSide, HistogramError, HistogramObs,
    BUCKET_STATE_SUFFIX, QUANTILES,
};
use crate::detect::interval::{AnomalyEvent, EventStatus};
use crate::detect::keys::{key_hash, KeyHash, MapSnapshot};
use crate::detect::log::LogDetector;
use crate::detect::metric::SeriesState;
use crate::detect::metric::{MetricDetector, MetricParams, PointValue};
use crate::detect::rate::RateParams;
use crate::detect::rate::RateState;
use crate::detect::snapshot;
use crate::detect::span::SpanKeyState;
use crate::detect::span::{SpanDetector, SpanObs, SpanParams};
use crate::detect::{Verdict, ANOMALOUS_SCORE};
use crate::export::document::{
    attr_str, encode_log, encode_point_with_attributes, encode_resource, encode_scope, encode_span,
    hex, hex_concat, span_is_error, DataStream, PointRef, Shared,
};
use crate::export::{Doc, DocBatch};
use crate::telemetry::{EventLabels, Metrics, Signal, SignalLabels};
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// Detector state is split into shards by key hash so workers rarely contend.
const SHARDS: usize = 16;

/// Room reserved per document in a request's shared buffer (a typical span document is ~1 KiB).
const DOC_BYTES: usize = 1024;

/// Service name used when a resource has none (the OTel SDK default prefix).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// All detectors of one sidecar.
#[derive(Debug)]
pub struct Detectors {
    spans: Vec<Mutex<SpanDetector>>,
    metrics: Vec<Mutex<MetricDetector>>,
    logs: Mutex<LogDetector>,
}

impl Detectors {
    /// Detectors configured from `settings.detect`.
    pub fn new(settings: &Settings) -> Self {
        let d = &settings.detect;
        let span_params = SpanParams {
            half_life_ns: d.spans.half_life.as_nanos() as u64,
            min_samples: d.spans.min_samples,
            interval_ns: d.spans.interval.as_nanos() as u64,
            max_keys: d.spans.max_keys.div_ceil(SHARDS),
            idle_eviction_ns: d.spans.idle_eviction.as_nanos() as u64,
        };
        let metric_params = MetricParams {
            min_samples: d.metrics.min_samples,
            window: d.metrics.window,
            max_series: d.metrics.max_series.div_ceil(SHARDS),
            ..MetricParams::default()
        };
        let log_params = RateParams {
            interval_ns: span_params.interval_ns,
            half_life_ns: span_params.half_life_ns,
            min_samples: d.spans.min_samples,
        };
        Self {
            spans: (0..SHARDS)
                .map(|_| Mutex::new(SpanDetector::new(span_params)))
                .collect(),
            metrics: (0..SHARDS)
                .map(|_| Mutex::new(MetricDetector::new(metric_params)))
                .collect(),
            logs: Mutex::new(LogDetector::new(log_params, d.logs.max_services)),
        }
    }

    /// Scores one span (and learns from it); interval events it closed go to `events`.
    pub fn span(&self, obs: &SpanObs<'_>, events: &mut Vec<AnomalyEvent>) -> Verdict {
        let key = obs.key();
        let shard = &self.spans[(key % SHARDS as u64) as usize];
        // A poisoned shard means a detector panicked: a bug. Keep serving with its state.
        let mut d = shard.lock().unwrap_or_else(|p| p.into_inner());
        let v = d.observe_key(key, obs);
        d.drain_events(events);
        v
    }

    /// Closes the span keys' intervals that ended by `now_ns` and returns
    /// the events that made.
    pub fn tick(&self, now_ns: u64) -> Vec<AnomalyEvent> {
        let mut events = Vec::new();
        for shard in &self.spans {
            let mut d = shard.lock().unwrap_or_else(|p| p.into_inner());
            d.tick(now_ns);
            d.drain_events(&mut events);
        }
        events
    }

    /// Encodes the state of every detector (one shard locked at a time).
    pub fn snapshot(&self, environment: &str, now_ns: u64) -> Vec<u8> {
        let spans = self
            .spans
            .iter()
            .map(|s| snapshot::encode_map(&s.lock().unwrap_or_else(|p| p.into_inner()).snapshot()))
            .collect();
        let metrics = self
            .metrics
            .iter()
            .map(|s| snapshot::encode_map(&s.lock().unwrap_or_else(|p| p.into_inner()).snapshot()))
            .collect();
        let logs = snapshot::encode_map(
            &self
                .logs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot(),
        );
        snapshot::encode(&snapshot::SnapshotBody {
            environment: environment.to_string(),
            created_unix_ns: now_ns,
            spans,
            metrics,
            logs,
        })
    }

    /// Restores detector state from snapshot bytes taken in `environment`.
    /// Returns (span keys, metric series, log services) restored.
    pub fn restore(
        &self,
        bytes: &[u8],
        environment: &str,
    ) -> Result<(usize, usize, usize), snapshot::SnapshotError> {
        let body = snapshot::decode(bytes, Some(environment))?;
        // Decode everything first: a damaged shard leaves the detectors untouched.
        let spans: Vec<MapSnapshot<SpanKeyState>> = body
            .spans
            .iter()
            .map(|b| snapshot::decode_map(b))
            .collect::<Result<_, _>>()?;
        let metrics: Vec<MapSnapshot<SeriesState>> = body
            .metrics
            .iter()
            .map(|b| snapshot::decode_map(b))
            .collect::<Result<_, _>>()?;
        let logs: MapSnapshot<RateState> = snapshot::decode_map(&body.logs)?;
        let mut counts = (0, 0, logs.entries.len());
        // Shards are chosen by key, so a snapshot taken with another shard count still lands right.
        counts.0 = restore_sharded(&self.spans, spans, |d, m| d.restore(m));
        counts.1 = restore_sharded(&self.metrics, metrics, |d, m| d.restore(m));
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(logs);
        // The stream continues after a gap (the restart itself).
        for shard in &self.spans {
            shard.lock().unwrap_or_else(|p| p.into_inner()).resume();
        }
        Ok(counts)
    }

    /// Marks every span key as continuing after a gap (a restart, or a
    /// stretch of history left out of training): the gap is neither decayed
    /// nor judged as empty intervals.
    pub fn resume(&self) {
        for shard in &self.spans {
            shard.lock().unwrap_or_else(|p| p.into_inner()).resume();
        }
    }

    /// Span keys evicted for being idle.
    pub fn evicted_span_keys(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).evicted())
            .sum()
    }

    /// Scores one metric point of series `key` (and learns from it).
    pub fn point(&self, key: KeyHash, time_ns: u64, v: PointValue) -> Option<Verdict> {
        let shard = &self.metrics[(key % SHARDS as u64) as usize];
        let mut d = shard.lock().unwrap_or_else(|p| p.into_inner());
        d.observe(key, time_ns, v)
    }

    /// Scores the quantile series derived from one histogram point of series
    /// `key` (see `detect::histogram`); their verdicts go to `out`. The
    /// bucket memory and each quantile series are keyed on their own, so
    /// each lands in the shard of its own key (as a restore puts them).
    pub fn histogram(
        &self,
        key: KeyHash,
        time_ns: u64,
        obs: &HistogramObs<'_>,
        out: &mut Vec<Verdict>,
    ) -> Result<(), HistogramError> {
        let bucket_key = derived_series_key(key, BUCKET_STATE_SUFFIX);
        let dist = {
            let shard = &self.metrics[(bucket_key % SHARDS as u64) as usize];
            let mut d = shard.lock().unwrap_or_else(|p| p.into_inner());
            d.histogram_interval(bucket_key, obs)?
        };
        if let Some(dist) = dist {
            let values = QUANTILES.map(|(q, _)| dist.quantile(q, obs.min, obs.max));
            self.quantiles(key, time_ns, values, out);
        }
        Ok(())
    }

    /// Scores the quantile series of series `key` with values at
    /// `histogram::QUANTILES` (a summary's, or a histogram's interval).
    pub fn quantiles(
        &self,
        key: KeyHash,
        time_ns: u64,
        values: [Option<f64>; 3],
        out: &mut Vec<Verdict>,
    ) {
        for ((_, what), value) in QUANTILES.iter().zip(values) {
            if let Some(value) = value {
                let v = PointValue::Derived { value, what };
                out.extend(self.point(derived_series_key(key, what), time_ns, v));
            }
        }
    }

    /// Scores one log record of `service` (and learns from it).
    pub fn log(&self, service: &str, time_ns: u64, severity: i32) -> Verdict {
        let mut d = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        d.observe(service, time_ns, severity)
    }

    /// (tracked span keys, span overflow records, tracked series, series overflow points).
    pub fn stats(&self) -> (usize, u64, usize, u64) {
        let mut out = (0, 0, 0, 0);
        for s in &self.spans {
            let d = s.lock().unwrap_or_else(|p| p.into_inner());
            out.0 += d.keys();
            out.1 += d.overflowed();
        }
        for s in &self.metrics {
            let d = s.lock().unwrap_or_else(|p| p.into_inner());
            out.2 += d.series();
            out.3 += d.overflowed();
        }
        out
    }
}

/// Puts restored entries into the shard their key belongs to; returns how many.
fn restore_sharded<D, V>(
    shards: &[Mutex<D>],
    maps: Vec<MapSnapshot<V>>,
    restore: impl Fn(&mut D, MapSnapshot<V>),
) -> usize {
    let mut per_shard: Vec<Vec<(KeyHash, V, u64)>> = shards.iter().map(|_| Vec::new()).collect();
    let mut n = 0;
    for entry in maps.into_iter().flat_map(|m| m.entries) {
        n += 1;
        per_shard[(entry.0 % shards.len() as u64) as usize].push(entry);
    }
    for (shard, entries) in shards.iter().zip(per_shard) {
        if !entries.is_empty() {
            let mut d = shard.lock().unwrap_or_else(|p| p.into_inner());
            restore(
                &mut d,
                MapSnapshot {
                    entries,
                    overflow: None,
                },
            );
        }
    }
    n
}

/// Sees each traces request before it is scored (the push client learns the
/// service graph from it).
pub type TracesListener = Box<
    dyn Fn(&opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest)
        + Send
        + Sync,
>;

/// Turns requests into scored documents.
pub struct Processor {
    detectors: Detectors,
    data_stream: DataStream,
    metrics: Arc<Metrics>,
    feed: Arc<AnomalyFeed>,
    traces_listener: std::sync::OnceLock<TracesListener>,
    /// Span keys with an open anomaly event, and the event's id (for `anomaly.event_id`).
    open_events: Mutex<std::collections::HashMap<KeyHash, u64>>,
    /// Encode documents (off when the OTLP hop is the only output).
    documents: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("detectors", &self.detectors)
            .finish_non_exhaustive()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn id128(parts: &[&[u8]]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u32).to_le_bytes());
        h.update(p);
    }
    hex(&h.digest128().to_be_bytes())
}

impl Processor {
    /// A processor for the sidecar's environment.
    pub fn new(
        settings: &Settings,
        dataset: &str,
        metrics: Arc<Metrics>,
        feed: Arc<AnomalyFeed>,
    ) -> Self {
        Self {
            detectors: Detectors::new(settings),
            data_stream: DataStream {
                dataset: dataset.to_string(),
                namespace: settings.environment.clone(),
            },
            metrics,
            feed,
            traces_listener: std::sync::OnceLock::new(),
            open_events: Mutex::new(std::collections::HashMap::new()),
            documents: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Stops encoding documents: no output takes them (processor mode with
    /// the OTLP hop as the only output). Records are still scored.
    pub fn without_documents(&self) {
        self.documents
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn documents(&self) -> bool {
        self.documents.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the listener that sees each traces request (once; later calls are ignored).
    pub fn on_traces(&self, listener: TracesListener) {
        let _ = self.traces_listener.set(listener);
    }

    /// The detectors (for stats).
    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

    fn note(&self, signal: Signal, service: &str, subject: &str, v: &Verdict) {
        if v.score < ANOMALOUS_SCORE {
            return;
        }
        self.metrics
            .anomalous
            .get_or_create(&SignalLabels { signal })
            .inc();
        let mut explanation = String::new();
        v.explanation.render(subject, &mut explanation);
        self.feed.push(AnomalyNote {
            at: SystemTime::now(),
            signal,
            service: service.to_string(),
            subject: subject.to_string(),
            score: v.score,
            severity: v.severity.as_str(),
            explanation,
        });
    }

    /// Scores and encodes one request.
    pub fn process(&self, payload: Payload) -> Vec<Doc> {
        self.process_enriching(payload, None)
    }

    /// Scores and encodes one request; with `adds`, also collects the
    /// `anomaly.*` attributes of each record, in wire order (the OTLP output).
    pub fn process_enriching(
        &self,
        payload: Payload,
        mut adds: Option<&mut Vec<Vec<KeyValue>>>,
    ) -> Vec<Doc> {
        let started = Instant::now();
        let signal = payload.signal();
        let before = adds.as_deref().map_or(0, Vec::len);
        let docs = match payload {
            Payload::Traces(req) => self.traces(req, adds.as_deref_mut()),
            Payload::Metrics(req) => self.metric_points(req, adds.as_deref_mut()),
            Payload::Logs(req) => self.logs(req, adds.as_deref_mut()),
            Payload::TracesWire(w) => self.traces_wire(w, adds.as_deref_mut()),
            Payload::MetricsWire(w) => match w.decode() {
                Ok(req) => self.metric_points(req, adds.as_deref_mut()),
                Err(e) => {
                    // `check_metrics` accepted it, so prost cannot refuse it (fuzzed).
                    tracing::error!(error = %e, points = w.points, "a checked metrics request did not decode; its points are not scored");
                    Vec::new()
                }
            },
        };
        let scored = match self.documents() {
            true => docs.len(),
            false => adds.as_deref().map_or(0, Vec::len) - before,
        };
        self.metrics
            .scored
            .get_or_create(&SignalLabels { signal })
            .inc_by(scored as u64);
        self.metrics
            .scoring_seconds
            .inc_by(started.elapsed().as_secs_f64());
        docs
    }

    /// The id of the open anomaly event of a span key, if any.
    fn open_event(&self, key: KeyHash) -> Option<u64> {
        let open = self.open_events.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&key).copied()
    }

    fn traces(
        &self,
        req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        mut adds: Option<&mut Vec<Vec<KeyValue>>>,
    ) -> Vec<Doc> {
        if let Some(listener) = self.traces_listener.get() {
            listener(&req);
        }
        let spans = req.resource_spans.iter().flat_map(|r| &r.scope_spans);
        let mut docs = DocBatch::with_capacity(spans.map(|s| s.spans.len()).sum(), DOC_BYTES);
        let mut events = Vec::new();
        // A span from the future (a skewed clock) must not run the key's
        // intervals ahead of real time: its end is capped for the detector.
        let latest_ns = now_ns().saturating_add(60_000_000_000);
        for rs in &req.resource_spans {
            let (service, res_json) = resource_parts(rs.resource.as_ref(), &rs.schema_url);
            for ss in &rs.scope_spans {
                let scope_json = encode_scope(ss.scope.as_ref(), &ss.schema_url);
                let shared = Shared {
                    resource: &res_json,
                    scope: &scope_json,
                };
                for s in &ss.spans {
                    let obs = SpanObs {
                        service,
                        name: &s.name,
                        kind: s.kind,
                        end_ns: s.end_time_unix_nano.min(latest_ns),
                        duration_ns: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                        is_error: span_is_error(s),
                        trace_id: &s.trace_id,
                    };
                    let verdict = self.detectors.span(&obs, &mut events);
                    self.note(Signal::traces, service, &s.name, &verdict);
                    if let Some(adds) = adds.as_deref_mut() {
                        let event = self.open_event(obs.key());
                        adds.push(crate::export::otlp::attributes_of(&verdict, &s.name, event));
                    }
                    if self.documents() {
                        let id = hex_concat(&[&s.trace_id, &s.span_id]);
                        docs.push(Signal::traces, id, |out| {
                            encode_span(out, s, &shared, &self.data_stream, &verdict, &s.name)
                        });
                    }
                }
            }
        }
        self.publish(events);
        docs.finish()
    }

    /// [`Processor::traces`] for a request kept as its protobuf bytes: the
    /// spans are read in place (`receiver::wire`), with the same verdicts and
    /// the same documents. Consumers of the prost types (the OTLP output's
    /// attributes, the traces listener) get the request decoded by prost.
    fn traces_wire(&self, w: super::WireTraces, adds: Option<&mut Vec<Vec<KeyValue>>>) -> Vec<Doc> {
        use crate::export::wire_document as wd;
        use crate::receiver::wire;
        if adds.is_some() || self.traces_listener.get().is_some() {
            return match w.decode() {
                Ok(req) => self.traces(req, adds),
                Err(e) => {
                    // check_traces accepts only what prost decodes (see its tests and fuzz target).
                    tracing::error!(error = %e, "a checked traces request failed to decode; its spans are not scored");
                    Vec::new()
                }
            };
        }
        let mut docs = DocBatch::with_capacity(w.spans, DOC_BYTES);
        let mut events = Vec::new();
        let latest_ns = now_ns().saturating_add(60_000_000_000);
        let documents = self.documents();
        for rs in wire::resource_spans(&w.bytes) {
            let service =
                wd::resource_attr_str(rs.resource, "service.name").unwrap_or(UNKNOWN_SERVICE);
            let res_json = wd::encode_resource(rs.resource, rs.schema_url);
            for ss in rs.scope_spans() {
                let scope_json = wd::encode_scope(ss.scope, ss.schema_url);
                let shared = Shared {
                    resource: &res_json,
                    scope: &scope_json,
                };
                for s in ss.spans() {
                    let name = s.name_str();
                    let obs = SpanObs {
                        service,
                        name,
                        kind: s.kind,
                        end_ns: s.end_time_unix_nano.min(latest_ns),
                        duration_ns: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                        is_error: wd::span_is_error(&s),
                        trace_id: s.trace_id,
                    };
                    let verdict = self.detectors.span(&obs, &mut events);
                    self.note(Signal::traces, service, name, &verdict);
                    if documents {
                        let id = hex_concat(&[s.trace_id, s.span_id]);
                        docs.push(Signal::traces, id, |out| {
                            wd::encode_span(out, &s, &shared, &self.data_stream, &verdict, name)
                        });
                    }
                }
            }
        }
        self.publish(events);
        docs.finish()
    }

    /// Closes the intervals that ended by `now_ns` on every span key and
    /// publishes the events.
    pub fn tick(&self, now_ns: u64) {
        let events = self.detectors.tick(now_ns);
        self.publish(events);
    }

    fn publish(&self, events: Vec<AnomalyEvent>) {
        if !events.is_empty() {
            let mut open = self.open_events.lock().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                let key = key_hash(&[
                    e.service.as_bytes(),
                    e.name.as_bytes(),
                    &e.kind.to_le_bytes(),
                ]);
                match e.status {
                    EventStatus::Closed => {
                        open.remove(&key);
                    }
                    EventStatus::Opened | EventStatus::Updated => {
                        open.insert(key, e.id);
                    }
                }
            }
        }
        for e in events {
            self.metrics
                .events
                .get_or_create(&EventLabels {
                    signal: e.signal.as_str(),
                    status: match e.status {
                        EventStatus::Opened => "opened",
                        EventStatus::Updated => "updated",
                        EventStatus::Closed => "closed",
                    },
                })
                .inc();
            if e.status == EventStatus::Opened {
                tracing::info!(
                    service = %e.service,
                    span = %e.name,
                    signal = e.signal.as_str(),
                    score = e.score,
                    "anomaly event opened: {}",
                    e.explanation
                );
            } else if e.status == EventStatus::Closed {
                tracing::info!(
                    service = %e.service,
                    span = %e.name,
                    signal = e.signal.as_str(),
                    learned = e.learned,
                    "anomaly event closed"
                );
            }
            self.feed.push_event(e);
        }
    }

    fn metric_points(
        &self,
        req: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
        mut adds: Option<&mut Vec<Vec<KeyValue>>>,
    ) -> Vec<Doc> {
        let mut docs = DocBatch::with_capacity(0, DOC_BYTES);
        let mut attrs_json = Vec::with_capacity(128);
        let mut derived = Vec::new();
        // One list of a metric's points for the whole request (most metrics hold one point).
        let mut points: Vec<(PointRef<'_>, PointValue)> = Vec::new();
        for rm in &req.resource_metrics {
            let (service, res_json) = resource_parts(rm.resource.as_ref(), &rm.schema_url);
            for sm in &rm.scope_metrics {
                let scope_json = encode_scope(sm.scope.as_ref(), &sm.schema_url);
                let shared = Shared {
                    resource: &res_json,
                    scope: &scope_json,
                };
                for m in &sm.metrics {
                    points.clear();
                    match &m.data {
                        Some(metric::Data::Gauge(g)) => points.extend(
                            g.data_points
                                .iter()
                                .map(|p| (PointRef::Number(p), PointValue::Gauge(number(p.value)))),
                        ),
                        Some(metric::Data::Sum(s)) => {
                            points.extend(s.data_points.iter().map(|p| {
                                let v = number(p.value);
                                let pv = if s.aggregation_temporality == 2 {
                                    PointValue::CumulativeSum {
                                        value: v,
                                        start_ns: p.start_time_unix_nano,
                                    }
                                } else {
                                    PointValue::DeltaSum(v)
                                };
                                (PointRef::Number(p), pv)
                            }))
                        }
                        Some(metric::Data::Histogram(h)) => {
                            points.extend(h.data_points.iter().map(|p| {
                                let pv = histogram_value(
                                    p.count,
                                    p.sum,
                                    h.aggregation_temporality == 2,
                                    p.start_time_unix_nano,
                                );
                                (PointRef::Histogram(p), pv)
                            }))
                        }
                        Some(metric::Data::ExponentialHistogram(h)) => {
                            points.extend(h.data_points.iter().map(|p| {
                                let pv = histogram_value(
                                    p.count,
                                    p.sum,
                                    h.aggregation_temporality == 2,
                                    p.start_time_unix_nano,
                                );
                                (PointRef::ExpHistogram(p), pv)
                            }))
                        }
                        Some(metric::Data::Summary(s)) => {
                            points.extend(s.data_points.iter().map(|p| {
                                // Summaries are cumulative by definition.
                                let pv = histogram_value(
                                    p.count,
                                    Some(p.sum),
                                    true,
                                    p.start_time_unix_nano,
                                );
                                (PointRef::Summary(p), pv)
                            }))
                        }
                        None => {}
                    }
                    for &(p, pv) in &points {
                        attrs_json.clear();
                        crate::export::document::attributes(&mut attrs_json, p.attributes());
                        let series = key_hash(&[&res_json, m.name.as_bytes(), &attrs_json]);
                        let mut verdict = self.detectors.point(series, p.times().1, pv);
                        // A histogram's quantile series: the point carries the
                        // most anomalous verdict of its mean and quantiles.
                        derived.clear();
                        self.derived_verdicts(m, &p, series, &mut derived);
                        for d in derived.drain(..) {
                            verdict = match verdict {
                                Some(v) if v.score >= d.score => Some(v),
                                _ => Some(d),
                            };
                        }
                        if let Some(v) = &verdict {
                            self.note(Signal::metrics, service, &m.name, v);
                        }
                        if let Some(adds) = adds.as_deref_mut() {
                            adds.push(match &verdict {
                                Some(v) => crate::export::otlp::attributes_of(v, &m.name, None),
                                None => crate::export::otlp::not_scored_attributes(
                                    crate::export::document::NOT_SCORED_POINT,
                                ),
                            });
                        }
                        if !self.documents() {
                            continue;
                        }
                        let (start, time) = p.times();
                        let id = id128(&[
                            &series.to_le_bytes(),
                            &res_json,
                            m.name.as_bytes(),
                            &attrs_json,
                            &start.to_le_bytes(),
                            &time.to_le_bytes(),
                        ]);
                        docs.push(Signal::metrics, id, |out| {
                            encode_point_with_attributes(
                                out,
                                m,
                                p,
                                &attrs_json,
                                &shared,
                                &self.data_stream,
                                verdict.as_ref(),
                            )
                        });
                    }
                }
            }
        }
        docs.finish()
    }

    /// Verdicts of the quantile series of a histogram or summary point (none
    /// for other points); a histogram whose buckets cannot give quantiles
    /// keeps only its mean, with a debug log saying why.
    fn derived_verdicts(
        &self,
        m: &opentelemetry_proto::tonic::metrics::v1::Metric,
        p: &PointRef<'_>,
        series: KeyHash,
        out: &mut Vec<Verdict>,
    ) {
        let time_ns = p.times().1;
        let obs = match (p, &m.data) {
            (PointRef::Histogram(hp), Some(metric::Data::Histogram(h))) => {
                if hp.bucket_counts.is_empty() {
                    return;
                }
                HistogramObs {
                    buckets: Buckets::Explicit {
                        bounds: &hp.explicit_bounds,
                        counts: &hp.bucket_counts,
                    },
                    cumulative: h.aggregation_temporality == 2,
                    start_ns: hp.start_time_unix_nano,
                    min: hp.min,
                    max: hp.max,
                }
            }
            (PointRef::ExpHistogram(ep), Some(metric::Data::ExponentialHistogram(h))) => {
                HistogramObs {
                    buckets: Buckets::Exponential {
                        scale: ep.scale,
                        zero_count: ep.zero_count,
                        zero_threshold: ep.zero_threshold,
                        positive: exp_side(ep.positive.as_ref()),
                        negative: exp_side(ep.negative.as_ref()),
                    },
                    cumulative: h.aggregation_temporality == 2,
                    start_ns: ep.start_time_unix_nano,
                    min: ep.min,
                    max: ep.max,
                }
            }
            (PointRef::Summary(sp), _) => {
                let values =
                    summary_quantiles(sp.quantile_values.iter().map(|q| (q.quantile, q.value)));
                self.detectors.quantiles(series, time_ns, values, out);
                return;
            }
            _ => return,
        };
        if let Err(e) = self.detectors.histogram(series, time_ns, &obs, out) {
            tracing::debug!(metric = %m.name, error = %e, "histogram point gives no quantiles; its mean is still scored");
        }
    }

    fn logs(
        &self,
        req: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
        mut adds: Option<&mut Vec<Vec<KeyValue>>>,
    ) -> Vec<Doc> {
        let mut docs = DocBatch::with_capacity(0, DOC_BYTES);
        let mut encoded = Vec::with_capacity(256);
        for rl in &req.resource_logs {
            let (service, res_json) = resource_parts(rl.resource.as_ref(), &rl.schema_url);
            for sl in &rl.scope_logs {
                let scope_json = encode_scope(sl.scope.as_ref(), &sl.schema_url);
                let shared = Shared {
                    resource: &res_json,
                    scope: &scope_json,
                };
                for r in &sl.log_records {
                    // Timestamp: the event time, else when it was observed, else now.
                    let time_ns = [r.time_unix_nano, r.observed_time_unix_nano]
                        .into_iter()
                        .find(|t| *t > 0)
                        .unwrap_or_else(now_ns);
                    let verdict = self.detectors.log(service, time_ns, r.severity_number);
                    self.note(Signal::logs, service, service, &verdict);
                    if let Some(adds) = adds.as_deref_mut() {
                        adds.push(crate::export::otlp::attributes_of(&verdict, service, None));
                    }
                    if !self.documents() {
                        continue;
                    }
                    encoded.clear();
                    // Encoding a prost message into a Vec cannot fail.
                    let _ = r.encode(&mut encoded);
                    let id = id128(&[&res_json, &scope_json, &encoded, &time_ns.to_le_bytes()]);
                    docs.push(Signal::logs, id, |out| {
                        encode_log(
                            out,
                            r,
                            time_ns,
                            &shared,
                            &self.data_stream,
                            &verdict,
                            service,
                        )
                    });
                }
            }
        }
        docs.finish()
    }
}

/// The service name and the encoded `resource` object of one resource.
fn resource_parts<'a>(resource: Option<&'a Resource>, schema_url: &str) -> (&'a str, Vec<u8>) {
    let service = resource
        .and_then(|r| attr_str(&r.attributes, "service.name"))
        .unwrap_or(UNKNOWN_SERVICE);
    (service, encode_resource(resource, schema_url))
}

fn exp_side(b: Option<&ExpBuckets>) -> ExpSide<'_> {
    b.map_or(ExpSide::default(), |b| ExpSide {
        offset: b.offset,
        counts: &b.bucket_counts,
    })
}

fn number(v: Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

/// Where a scoring worker sends its output.
#[derive(Debug, Clone)]
pub struct WorkerOutputs {
    /// The document output (Elasticsearch or NDJSON), when configured.
    pub documents: Option<flume::Sender<Vec<Doc>>>,
    /// The OTLP output and the signals it forwards (traces, metrics, logs).
    pub otlp: Option<(flume::Sender<crate::export::otlp::OtlpBatch>, [bool; 3])>,
    pub admission: Arc<super::Admission>,
}

impl WorkerOutputs {
    fn otlp_for(&self, signal: Signal) -> Option<&flume::Sender<crate::export::otlp::OtlpBatch>> {
        let i = match signal {
            Signal::traces => 0,
            Signal::metrics => 1,
            Signal::logs => 2,
        };
        self.otlp.as_ref().filter(|(_, on)| on[i]).map(|(tx, _)| tx)
    }
}

/// Data points of a metrics request, of every metric type.
pub fn metric_points(
    req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> usize {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Sum(g)) => g.data_points.len(),
            Some(metric::Data::Histogram(g)) => g.data_points.len(),
            Some(metric::Data::ExponentialHistogram(g)) => g.data_points.len(),
            Some(metric::Data::Summary(g)) => g.data_points.len(),
            None => 0,
        })
        .sum()
}

/// Records of a decoded request, in wire order.
fn records_of(payload: &Payload) -> usize {
    match payload {
        Payload::Traces(r) => r
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum(),
        Payload::TracesWire(w) => w.spans,
        Payload::MetricsWire(w) => w.points,
        Payload::Metrics(r) => metric_points(r),
        Payload::Logs(r) => r
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum(),
    }
}

fn encode_payload(payload: &Payload) -> Vec<u8> {
    match payload {
        Payload::Traces(r) => r.encode_to_vec(),
        Payload::Metrics(r) => r.encode_to_vec(),
        Payload::Logs(r) => r.encode_to_vec(),
        Payload::TracesWire(w) => w.bytes.to_vec(),
        Payload::MetricsWire(w) => w.bytes.to_vec(),
    }
}

/// The protobuf the OTLP output starts from: the sender's bytes when they
/// hold exactly the records that were decoded, else the decoded request
/// encoded again (JSON input, records removed by validation, or a request
/// whose bytes prost read differently, e.g. a repeated oneof).
fn base_wire(work: &Work) -> bytes::Bytes {
    let signal = work.payload.signal();
    if let Some(wire) = &work.wire {
        match crate::export::otlp::wire::count_records(signal, wire) {
            Ok(n) if n == records_of(&work.payload) => return wire.clone(),
            Ok(n) => tracing::debug!(
                on_wire = n,
                "request bytes differ from the decoded request; forwarding it re-encoded"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "request bytes not walkable; forwarding it re-encoded")
            }
        }
    }
    bytes::Bytes::from(encode_payload(&work.payload))
}

/// Scores one request and hands it to every configured output.
fn score_and_route(work: Work, outputs: &WorkerOutputs, processor: &Processor) -> Result<(), ()> {
    use crate::export::completion::{Outputs, Ticket};
    // A metrics request waited as its bytes; decoded here, on the thread
    // that scores it and frees it.
    let work = match work.payload {
        Payload::MetricsWire(w) => match w.decode() {
            Ok(req) => Work {
                payload: Payload::Metrics(req),
                ..work
            },
            Err(e) => {
                // Unreachable: `check_metrics` accepts only what prost decodes (fuzzed).
                // Its permits go back; its write-ahead record stays for the next start.
                tracing::error!(error = %e, points = w.points, "a checked metrics request did not decode; not scored");
                outputs.admission.release(w.points);
                return Ok(());
            }
        },
        _ => work,
    };
    let signal = work.payload.signal();
    let otlp = outputs.otlp_for(signal);
    let wire = otlp.map(|_| base_wire(&work));
    let records = records_of(&work.payload);
    // The write-ahead queue's token is settled once, by the ticket, when
    // every output has settled every record.
    let delivery = work.delivery.clone();
    if let Some(d) = &delivery {
        d.expect(usize::from(records > 0));
    }
    if records == 0 {
        return Ok(());
    }
    let mut adds = Vec::new();
    let mut docs = processor.process_enriching(work.payload, otlp.map(|_| &mut adds));
    debug_assert!(docs.len() == records || outputs.documents.is_none());
    let ticket = Ticket::with_delivery(
        records,
        Outputs {
            documents: outputs.documents.is_some(),
            otlp: otlp.is_some(),
        },
        outputs.admission.clone(),
        delivery,
    );
    if let (Some(tx), Some(wire)) = (otlp, wire) {
        let body = match crate::export::otlp::wire::enrich(signal, &wire, &adds) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                // Cannot happen for bytes that base_wire checked; keep the data all the same.
                tracing::error!(error = %e, "enriching the request bytes failed; forwarding it without anomaly attributes");
                wire
            }
        };
        let batch = crate::export::otlp::OtlpBatch {
            signal,
            body,
            records,
            ticket: ticket.clone(),
        };
        if tx.send(batch).is_err() {
            tracing::error!("otlp output stopped before the scoring workers; this batch is lost");
            return Err(());
        }
    }
    match &outputs.documents {
        Some(tx) => {
            for d in &mut docs {
                d.ticket = Some(ticket.clone());
            }
            if tx.send(docs).is_err() {
                tracing::error!(
                    "exporter stopped before the scoring workers; documents of this batch are lost"
                );
                return Err(());
            }
        }
        None if otlp.is_none() => {
            // No output takes this signal (export.otlp.<signal>.enabled: false, no document output).
            outputs.admission.release(records);
            if let Some(d) = &ticket.delivery() {
                d.done();
            }
        }
        None => {}
    }
    Ok(())
}

/// Runs a scoring worker that feeds every configured output, until the input closes.
pub fn worker_loop_outputs(
    input: flume::Receiver<Work>,
    outputs: WorkerOutputs,
    processor: Arc<Processor>,
) {
    while let Ok(work) = input.recv() {
        if score_and_route(work, &outputs, &processor).is_err() {
            break;
        }
    }
}

/// The value scored for a histogram, exponential histogram or summary point:
/// count and sum (NaN when the sum is absent, which leaves the point unscored).
fn histogram_value(count: u64, sum: Option<f64>, cumulative: bool, start_ns: u64) -> PointValue {
    PointValue::Histogram {
        count,
        sum: sum.unwrap_or(f64::NAN),
        cumulative,
        start_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        summary_data_point::ValueAtQuantile, ExponentialHistogram, ExponentialHistogramDataPoint,
        Metric, ResourceMetrics, ScopeMetrics, Summary, SummaryDataPoint,
    };

    const T0: u64 = 1_800_000_000_000_000_000;
    const STEP: u64 = 10_000_000_000;

    fn processor() -> Processor {
        Processor::new(
            &Settings::default(),
            "otel",
            Arc::new(Metrics::default()),
            Arc::new(AnomalyFeed::default()),
        )
    }

    fn request(data: metric::Data) -> Payload {
        Payload::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "rpc.duration".into(),
                        data: Some(data),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn anomaly(doc: &Doc) -> (f64, String) {
        let v: serde_json::Value = serde_json::from_slice(&doc.source).expect("json");
        (
            v["anomaly"]["score"].as_f64().unwrap_or(0.0),
            v["anomaly"]["explanation"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    #[test]
    fn a_summary_is_scored_on_its_own_quantiles() {
        let p = processor();
        let (mut count, mut sum) = (0u64, 0.0);
        let mut last = (0.0, String::new());
        for i in 0..61u64 {
            let p99 = if i == 60 {
                900.0
            } else {
                120.0 + (i % 4) as f64
            };
            count += 1000;
            sum += 1000.0 * 50.0;
            let point = SummaryDataPoint {
                start_time_unix_nano: T0,
                time_unix_nano: T0 + i * STEP,
                count,
                sum,
                quantile_values: vec![
                    ValueAtQuantile {
                        quantile: 0.5,
                        value: 45.0 + (i % 3) as f64,
                    },
                    ValueAtQuantile {
                        quantile: 0.99,
                        value: p99,
                    },
                ],
                ..Default::default()
            };
            let docs = p.process(request(metric::Data::Summary(Summary {
                data_points: vec![point],
            })));
            assert_eq!(docs.len(), 1);
            last = anomaly(&docs[0]);
            if (31..60).contains(&i) {
                assert!(last.0 < f64::from(ANOMALOUS_SCORE), "point {i}: {last:?}");
            }
        }
        assert!(last.0 >= f64::from(ANOMALOUS_SCORE), "{last:?}");
        assert!(last.1.contains("p99 900"), "{last:?}");
    }

    #[test]
    fn a_delta_exponential_histogram_is_scored_on_its_quantiles() {
        let p = processor();
        let mut last = (0.0, String::new());
        for i in 0..61u64 {
            // Scale 2 (buckets 2^(1/4) wide), values 64–128 ms; at the end a
            // tail of 20 requests near 4 s.
            let mut counts = vec![0u64; 40];
            for (k, c) in counts.iter_mut().enumerate().take(4) {
                *c = 240 + ((i + k as u64) % 5);
            }
            if i == 60 {
                counts[24] = 20;
            }
            let point = ExponentialHistogramDataPoint {
                start_time_unix_nano: T0 + i * STEP,
                time_unix_nano: T0 + (i + 1) * STEP,
                count: counts.iter().sum(),
                sum: Some(counts.iter().sum::<u64>() as f64 * 90.0),
                scale: 2,
                positive: Some(ExpBuckets {
                    offset: 24, // 2^(24/4) = 64
                    bucket_counts: counts,
                }),
                ..Default::default()
            };
            let docs = p.process(request(metric::Data::ExponentialHistogram(
                ExponentialHistogram {
                    aggregation_temporality: 1,
                    data_points: vec![point],
                },
            )));
            last = anomaly(&docs[0]);
            if (31..60).contains(&i) {
                assert!(last.0 < f64::from(ANOMALOUS_SCORE), "point {i}: {last:?}");
            }
        }
        assert!(last.0 >= f64::from(ANOMALOUS_SCORE), "{last:?}");
        assert!(last.1.contains("p99"), "{last:?}");
        // The series a histogram adds: bucket memory only for cumulative
        // points, so mean + p50 + p95 + p99 here.
        assert_eq!(p.detectors().stats().2, 4);
    }
}
